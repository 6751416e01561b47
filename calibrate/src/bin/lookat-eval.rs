use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use lookat_calibrate::collect::{check_original, ModelLimits, Probe};
use lookat_calibrate::eval::{
    exact_scores, scalar_roundtrip, KeyWindow, Metrics, Reference, Scheme, StoredKeys,
};
use lookat_calibrate::model::{lookat_layers, read_floats, LookatLayer};
use lookat_calibrate::tokenizer::Tokenizer;
use lookat_calibrate::{progress_bar, runtime};
use lookat_op::kernels::{KeyTransforms, PreparedCodebook};
use rayon::prelude::*;

/// Attention-level fidelity of calibrated LOOKAT models (any levers: m, transforms, key window,
/// per-layer m) against fp16 and scalar INT8/INT4 keys, on every layer and query head of the
/// original model, at several lengths: output cosine, KL of the attention distribution, Spearman ρ
/// of the scores and top-5 overlap, each against exact attention in f64. Every scheme is measured
/// as it is and, with --sinks/--window, with that full-precision key window too.
/// Writes results.json and results.md to --out.
#[derive(Parser)]
#[command(name = "lookat-eval", version)]
struct Cli {
    /// The original exported model (with KV cache I/O).
    #[arg(long)]
    original: PathBuf,
    /// A calibrated model of --original (lookat-rewrite, then lookat-calibrate), as LABEL=PATH
    /// (the last `=` ends the label).
    /// Repeat for several; none measures only the scalar schemes.
    #[arg(long = "model", value_name = "LABEL=PATH")]
    models: Vec<String>,
    /// Held-out text files, one per domain (named by their file stem).
    #[arg(long = "eval-text", num_args = 1.., required = true)]
    eval_texts: Vec<PathBuf>,
    /// The model's tokenizer (a Hugging Face tokenizer.json); default: GPT-2's BPE.
    #[arg(long, value_name = "tokenizer.json")]
    tokenizer: Option<PathBuf>,
    #[arg(long, default_value = "out/eval")]
    out: PathBuf,
    /// Lengths T: the queries at positions T-q..T of a window score the keys before them. One
    /// forward pass of the longest serves every length.
    #[arg(long, num_args = 1.., default_values_t = [256usize, 1024, 2048])]
    lengths: Vec<usize>,
    /// Windows per domain (consecutive, each of the longest length).
    #[arg(long, default_value_t = 1)]
    windows: usize,
    /// Queries per window and length (the last ones, which see the most keys).
    #[arg(long, default_value_t = 16)]
    queries: usize,
    /// The key window added to every scheme as a second variant ("+ window"): the first
    /// --sinks tokens and each query's --window most recent tokens scored exactly. 0 and 0: none.
    #[arg(long, default_value_t = 4)]
    sinks: usize,
    #[arg(long, default_value_t = 64)]
    window: usize,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long)]
    quiet: bool,
}

const SCALAR: [Scheme; 5] = [
    Scheme::Fp16,
    Scheme::Int8PerTensor,
    Scheme::Int8PerChannel,
    Scheme::Int4PerTensor,
    Scheme::Int4PerChannel,
];

fn main() -> ExitCode {
    lookat_rewrite::cli::main::<Cli>("lookat-eval", |cli| run(&cli))
}

/// The layers of the original as a rewrite sees them: which tensors hold each layer's queries,
/// keys and values, its heads and its softmax scale.
fn original_layers(mut model: onnx_protobuf::ModelProto, path: &Path) -> Result<Vec<LookatLayer>> {
    let opts = lookat_rewrite::Options {
        subspaces: 1,
        centroids: 256,
        value_dtype: lookat_rewrite::ValueDtype::F32,
        sinks: 0,
        window: 0,
        transforms: false,
        shared_cache: false,
    };
    lookat_rewrite::rewrite(&mut model, &opts)
        .with_context(|| format!("cannot find the attention of '{}'", path.display()))?;
    lookat_layers(&model)
}

/// One layer of a calibrated model: each kv head's codebook laid out for the kernels, and its
/// transforms.
struct CalibratedLayer {
    books: Vec<PreparedCodebook>,
    transforms: Option<KeyTransforms>,
    window: KeyWindow,
    subspaces: usize,
}

struct CalibratedModel {
    label: String,
    layers: Vec<CalibratedLayer>,
    /// Bytes of one element of the model's key window (its value cache's type): 2 means its
    /// window keys are float16, and they are scored so.
    window_elem_bytes: usize,
}

impl CalibratedModel {
    fn load(spec: &str, base: &[LookatLayer]) -> Result<CalibratedModel> {
        let (label, path) = spec
            .rsplit_once('=')
            .filter(|(l, p)| !l.is_empty() && !p.is_empty())
            .with_context(|| format!("--model '{spec}' is not LABEL=PATH"))?;
        let path = Path::new(path);
        let model = lookat_onnx::io::load(path)?;
        let layers = lookat_layers(&model)
            .with_context(|| format!("--model '{label}' ('{}')", path.display()))?;
        if layers.len() != base.len() {
            bail!(
                "--model '{label}' has {} LookatAttention nodes, the original has {} attention layers",
                layers.len(),
                base.len()
            );
        }
        let window_elem_bytes = layers[0].value_type.window().elem_bytes();
        let layers = layers
            .iter()
            .zip(base)
            .map(|(l, b)| {
                let same = (
                    &l.query_tensor,
                    &l.key_tensor,
                    &l.value_tensor,
                    l.query_heads,
                ) == (
                    &b.query_tensor,
                    &b.key_tensor,
                    &b.value_tensor,
                    b.query_heads,
                );
                if !same || l.heads() != b.heads() || l.head_dim() != b.head_dim() {
                    bail!(
                        "node '{}' of --model '{label}' does not read the tensors or heads of the \
                         original's layer '{}': was it rewritten from --original?",
                        l.node,
                        b.node
                    );
                }
                let s = l.shape;
                let books = read_floats(&model, &l.codebooks)?;
                let transforms = match &l.transforms {
                    Some((a, b)) => Some(
                        KeyTransforms::new(
                            &read_floats(&model, a)?,
                            &read_floats(&model, b)?,
                            s.heads,
                            s.head_dim(),
                        )
                        .with_context(|| {
                            format!("transforms of node '{}' have the wrong size", l.node)
                        })?,
                    ),
                    None => None,
                };
                if books.len() != s.len() {
                    bail!(
                        "codebooks '{}' hold {} floats, not {}",
                        l.codebooks,
                        books.len(),
                        s.len()
                    );
                }
                Ok(CalibratedLayer {
                    books: (0..s.heads)
                        .map(|h| {
                            PreparedCodebook::new(
                                &books[s.head(h)],
                                s.subspaces,
                                s.centroids,
                                s.sub_dim,
                            )
                        })
                        .collect(),
                    transforms,
                    window: KeyWindow {
                        sinks: l.sinks,
                        recent: l.window,
                    },
                    subspaces: s.subspaces,
                })
            })
            .collect::<Result<_>>()?;
        Ok(CalibratedModel {
            label: label.to_string(),
            layers,
            window_elem_bytes,
        })
    }

    /// Key bytes per token and kv head: the mean of the layers' m.
    fn codes(&self) -> f64 {
        self.layers.iter().map(|l| l.subspaces as f64).sum::<f64>() / self.layers.len() as f64
    }
}

/// What one row of the report measures.
struct Row {
    label: String,
    store: Store,
    /// The window of a scheme or of a model without its own (a model that has one is measured
    /// with it only).
    window: KeyWindow,
    key_bytes: f64,
    /// Tokens kept in full precision per sequence (the model's own window, or `window`).
    window_tokens: usize,
    /// Bytes of one of their elements: float32 for `window`, the model's type for its own (a
    /// float16 window scores keys rounded to float16).
    window_elem_bytes: usize,
}

#[derive(Clone, Copy)]
enum Store {
    Scalar(Scheme),
    Model(usize),
}

fn json_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn run(cli: &Cli) -> Result<()> {
    let start = Instant::now();
    if cli.lengths.is_empty() || cli.lengths.contains(&0) || cli.queries == 0 || cli.windows == 0 {
        bail!("--lengths, --queries and --windows must be positive");
    }
    let longest = *cli.lengths.iter().max().expect("nonempty");
    let original = lookat_onnx::io::load(&cli.original)?;
    let base = original_layers(original.clone(), &cli.original)?;
    check_original(&original, &cli.original, &base)?;
    let limits = ModelLimits::read(&original);
    if let Some(positions) = limits.positions.filter(|&p| p < longest) {
        bail!(
            "--lengths {longest} exceeds the {positions} positions of the model '{}'",
            cli.original.display()
        );
    }
    let models: Vec<CalibratedModel> = cli
        .models
        .iter()
        .map(|s| CalibratedModel::load(s, &base))
        .collect::<Result<_>>()?;
    let (n_layers, d) = (base.len(), base[0].head_dim());
    let extra = KeyWindow {
        sinks: cli.sinks,
        recent: cli.window,
    };
    let with_window = |label: &str| format!("{label} + window");

    let mut rows = vec![];
    let mut add = |label: String, store: Store, window: KeyWindow, key_bytes: f64, own: usize| {
        let window_elem_bytes = match store {
            Store::Model(i) if own > 0 => models[i].window_elem_bytes,
            _ => 4,
        };
        rows.push(Row {
            label,
            store,
            window,
            key_bytes,
            window_tokens: own.max(window.tokens()),
            window_elem_bytes,
        });
    };
    for s in SCALAR {
        add(
            s.name(),
            Store::Scalar(s),
            KeyWindow::default(),
            s.key_bytes(d),
            0,
        );
        if extra.tokens() > 0 {
            add(
                with_window(&s.name()),
                Store::Scalar(s),
                extra,
                s.key_bytes(d),
                0,
            );
        }
    }
    for (i, m) in models.iter().enumerate() {
        let own = m
            .layers
            .iter()
            .map(|l| l.window.tokens())
            .max()
            .unwrap_or(0);
        add(
            m.label.clone(),
            Store::Model(i),
            KeyWindow::default(),
            m.codes(),
            own,
        );
        if extra.tokens() > 0 && own == 0 {
            add(with_window(&m.label), Store::Model(i), extra, m.codes(), 0);
        }
    }

    let tok = Tokenizer::load(cli.tokenizer.as_deref())?;
    let mut windows = vec![];
    for p in &cli.eval_texts {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("cannot read '{}'", p.display()))?;
        let ids = tok.encode(&text)?;
        limits.check(&cli.original, &ids, 0)?;
        for w in 0..cli.windows {
            let Some(window) = ids.get(w * longest..(w + 1) * longest) else {
                bail!(
                    "'{}' has {} tokens, fewer than {} windows of {longest}",
                    p.display(),
                    ids.len(),
                    cli.windows
                );
            };
            windows.push(window.to_vec());
        }
    }

    std::fs::create_dir_all(&cli.out)
        .with_context(|| format!("cannot create '{}'", cli.out.display()))?;
    let env = runtime::init(None)?;
    let names: Vec<String> = base
        .iter()
        .flat_map(|l| {
            [
                l.query_tensor.clone(),
                l.key_tensor.clone(),
                l.value_tensor.clone(),
            ]
        })
        .collect();
    let mut probe = Probe::from_model(env, original, &cli.original, &names, cli.threads)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cli.threads.max(1))
        .build()?;
    // results[row][length][layer]
    let mut results = vec![vec![vec![Metrics::default(); n_layers]; cli.lengths.len()]; rows.len()];
    let bar = progress_bar(cli.quiet, "attention");
    bar.set_length(windows.len() as u64);
    for ids in &windows {
        let out = probe.run(ids, 1, longest)?;
        let per_layer: Vec<Vec<Vec<Metrics>>> = pool.install(|| {
            out.par_chunks_exact(3)
                .enumerate()
                .map(|(layer, qkv)| {
                    layer_metrics(
                        layer,
                        qkv,
                        &base[layer],
                        &models,
                        &rows,
                        &cli.lengths,
                        cli.queries,
                    )
                })
                .collect::<Result<_>>()
        })?;
        for (layer, per_row) in per_layer.iter().enumerate() {
            for (r, per_len) in per_row.iter().enumerate() {
                for (li, m) in per_len.iter().enumerate() {
                    results[r][li][layer].add(m);
                }
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    report(cli, &base, &rows, &results, windows.len(), start)
}

/// Metrics of every row at every length for one layer of one window: `[row][length]`.
fn layer_metrics(
    layer: usize,
    qkv: &[lookat_calibrate::collect::Probed],
    base: &LookatLayer,
    models: &[CalibratedModel],
    rows: &[Row],
    lengths: &[usize],
    queries: usize,
) -> Result<Vec<Vec<Metrics>>> {
    let (heads, query_heads, d) = (base.heads(), base.query_heads, base.head_dim());
    let group = query_heads / heads;
    let mut out = vec![vec![Metrics::default(); lengths.len()]; rows.len()];
    // Each row's window in this layer: a model's own, else the row's.
    let windows: Vec<KeyWindow> = rows
        .iter()
        .map(|row| match row.store {
            Store::Model(i) if models[i].layers[layer].window.tokens() > 0 => {
                models[i].layers[layer].window
            }
            _ => row.window,
        })
        .collect();
    let any_f16_window = rows.iter().any(|r| r.window_elem_bytes == 2);
    for h in 0..heads {
        let (keys, values) = (qkv[1].head(h, heads, d)?, qkv[2].head(h, heads, d)?);
        // A float16 key window stores its keys rounded.
        let keys_f16 = if any_f16_window {
            scalar_roundtrip(&keys, d, Scheme::Fp16)
        } else {
            vec![]
        };
        let window_keys = |row: &Row| {
            if row.window_elem_bytes == 2 {
                &keys_f16
            } else {
                &keys
            }
        };
        // Each row's stored keys for this kv head, encoded once for every length and query.
        let stored: Vec<StoredKeys> = rows
            .iter()
            .map(|row| match row.store {
                Store::Scalar(s) => StoredKeys::scalar(&keys, d, s),
                Store::Model(i) => {
                    let l = &models[i].layers[layer];
                    StoredKeys::encode(&keys, d, &l.books[h], l.transforms.as_ref().map(|t| (t, h)))
                }
            })
            .collect();
        for qh in h * group..(h + 1) * group {
            let q = qkv[0].head(qh, query_heads, d)?;
            for (li, &len) in lengths.iter().enumerate() {
                for pos in len.saturating_sub(queries)..len {
                    let query = &q[pos * d..(pos + 1) * d];
                    let exact = exact_scores(query, &keys, d, pos + 1, base.scale);
                    let reference = Reference::new(&exact, &values, d);
                    for (r, row) in rows.iter().enumerate() {
                        let approx = stored[r].scores(
                            query,
                            window_keys(row),
                            d,
                            pos,
                            base.scale,
                            windows[r],
                        );
                        out[r][li].add(&reference.compare(&approx, &values, d));
                    }
                }
            }
        }
    }
    Ok(out)
}

fn report(
    cli: &Cli,
    base: &[LookatLayer],
    rows: &[Row],
    results: &[Vec<Vec<Metrics>>],
    windows: usize,
    start: Instant,
) -> Result<()> {
    let (n_layers, heads, query_heads, d) = (
        base.len(),
        base[0].heads(),
        base[0].query_heads,
        base[0].head_dim(),
    );
    let mut js = String::from("{\n");
    writeln!(
        js,
        "  \"model\": {},",
        json_str(&cli.original.display().to_string())
    )?;
    writeln!(js, "  \"layers\": {n_layers}, \"kv_heads\": {heads}, \"query_heads\": {query_heads}, \"head_dim\": {d},")?;
    writeln!(
        js,
        "  \"windows\": {windows}, \"queries_per_window_and_length\": {}, \"key_window\": {{\"sinks\": {}, \"recent\": {}}},",
        cli.queries, cli.sinks, cli.window
    )?;
    js.push_str("  \"rows\": [\n");
    let mut json_rows = vec![];
    let mut md = String::new();
    writeln!(
        md,
        "Attention fidelity, all {n_layers} layers × {query_heads} query heads ({heads} kv heads), {windows} held-out windows, the last {} queries before each length; \"+ window\": the first {} and each query's {} most recent tokens scored exactly.\n",
        cli.queries, cli.sinks, cli.window
    )?;
    writeln!(
        md,
        "| keys | key B/token/kv head (codes) | length | cosine | KL | Spearman ρ | top-5 |"
    )?;
    writeln!(md, "|---|---:|---:|---:|---:|---:|---:|")?;
    for (r, row) in rows.iter().enumerate() {
        let mut per_length = vec![];
        for (li, &len) in cli.lengths.iter().enumerate() {
            let mut all = Metrics::default();
            results[r][li].iter().for_each(|m| all.add(m));
            let [c, k, rho, t] = all.mean();
            let per_layer_kl: Vec<String> = results[r][li]
                .iter()
                .map(|m| format!("{:.6}", m.mean()[1]))
                .collect();
            per_length.push(format!(
                "\"{len}\": {{\"cosine\": {c:.6}, \"kl\": {k:.6}, \"spearman\": {rho:.6}, \"top5\": {t:.6}, \"per_layer_kl\": [{}]}}",
                per_layer_kl.join(", ")
            ));
            writeln!(
                md,
                "| {} | {:.1} | {len} | {c:.4} | {k:.4} | {rho:.4} | {t:.3} |",
                row.label, row.key_bytes
            )?;
        }
        json_rows.push(format!(
            "    {{\"label\": {}, \"key_bytes\": {:.3}, \"window_tokens\": {}, \"window_bytes\": {}, \"metrics\": {{{}}}}}",
            json_str(&row.label),
            row.key_bytes,
            row.window_tokens,
            row.window_tokens * d * row.window_elem_bytes,
            per_length.join(", ")
        ));
    }
    js.push_str(&json_rows.join(",\n"));
    writeln!(
        js,
        "\n  ],\n  \"seconds\": {:.1}\n}}",
        start.elapsed().as_secs_f64()
    )?;
    lookat_onnx::io::write_atomic(&cli.out.join("results.json"), js.as_bytes())?;
    lookat_onnx::io::write_atomic(&cli.out.join("results.md"), md.as_bytes())?;
    if !cli.quiet {
        print!("{md}");
        println!(
            "wrote {}/results.json and results.md in {:.0} s",
            cli.out.display(),
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
