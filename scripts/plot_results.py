"""PNG plots of lookat-eval's results.json: fidelity against key bytes per token (the paper's
Pareto view, codebooks amortised at T=1024) and LOOKAT cosine/KL against length."""

import json
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

src = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "docs/results/results.json")
out = src.parent
data = json.loads(src.read_text())
rows = data["attention"]
longest = max(r["length"] for r in rows)

fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
for ax, metric, label in zip(axes, ["kl", "spearman", "top5"], ["KL of attention (lower is better)", "Spearman ρ of scores", "top-5 overlap"]):
    for r in rows:
        if r["length"] != longest:
            continue
        lookat = r["scheme"].startswith("lookat")
        ax.scatter(r["key_bytes_per_token_T1024"], r[metric], marker="o" if lookat else "s", color="C0" if lookat else "C1")
        ax.annotate(r["scheme"].replace("lookat ", ""), (r["key_bytes_per_token_T1024"], r[metric]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("key B/token, all layers (LOOKAT incl. codebooks @ T=1024)")
    ax.set_title(f"{label}, length {longest}")
    if metric == "kl":
        ax.set_yscale("symlog", linthresh=1e-3)
fig.suptitle(f"{data['model']}: fidelity vs key cache size (all {data['layers']} layers × {data['heads']} heads)")
fig.tight_layout()
fig.savefig(out / "fidelity_vs_bytes.png", dpi=110)

fig, axes = plt.subplots(1, 2, figsize=(11, 4))
schemes = sorted({r["scheme"] for r in rows}, key=lambda s: (not s.startswith("lookat"), s))
for scheme in schemes:
    pts = sorted((r["length"], r["cosine"], r["kl"]) for r in rows if r["scheme"] == scheme)
    style = "-o" if scheme.startswith("lookat") else "--s"
    axes[0].plot([p[0] for p in pts], [p[1] for p in pts], style, label=scheme, markersize=4)
    axes[1].plot([p[0] for p in pts], [p[2] for p in pts], style, label=scheme, markersize=4)
for ax, title in zip(axes, ["output cosine vs length", "attention KL vs length"]):
    ax.set_xscale("log", base=2)
    ax.set_xlabel("window length (tokens)")
    ax.set_title(title)
axes[1].set_yscale("symlog", linthresh=1e-4)
axes[1].legend(fontsize=7, ncol=2)
fig.tight_layout()
fig.savefig(out / "quality_vs_length.png", dpi=110)
print(f"wrote {out / 'fidelity_vs_bytes.png'} and {out / 'quality_vs_length.png'}")
