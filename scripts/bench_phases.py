"""Benchmark diagnostic (not a test): how one bench.py cell's timings drift over time on a shared
machine. A few variants of one decode cell take turns, burst by burst (each burst as bench.py
times a round: a pause, three untimed runs, ten timed runs), for a number of rounds; printed per
round: each variant's burst median and its ratio to the first variant (MultiHeadAttention fp32)
in the same round; then the spread over rounds. Threads are pinned as in bench.py
(`bench.pinned_session`); with `--no-pin` they are not, which shows the slow phases pinning
removes. Usage:
    .venv/bin/python scripts/bench_phases.py [--no-pin] [--shape gpt2] [--tokens 4096] [--batch 1]
        [--rounds 30] [--variants "mha fp32,gqa int4 shared,lookat m=2 int8 shared"] [--json out.json]
"""

import argparse
import json
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import bench  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="gpt2", choices=sorted(bench.SHAPES))
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", default="mha fp32,gqa int4 shared,lookat m=2 int8 shared,lookat m=4 int8 shared")
    ap.add_argument("--no-pin", action="store_true", help="leave threads where Linux puts them")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if not args.no_pin:
        bench.pin_main_thread()
    names = args.variants.split(",")
    by_name = {v.name: v for v in bench.variants_for(args.shape)}
    missing = [n for n in names if n not in by_name]
    if missing:
        sys.exit(f"unknown variant(s) for shape {args.shape}: {missing}; known: {sorted(by_name)}")
    rng = np.random.default_rng(0)
    ring = 2 * bench.largest_cache_bytes(bench.cache_sizes())
    runs = []
    for n in names:
        v = by_name[n]
        feeds = bench.feeds_for(v, args.shape, args.batch, args.tokens - 1, 1, rng)
        sess = bench.pinned_session(v.model, args.threads, pin=not args.no_pin)
        runs.append(bench.Runner(sess, v, feeds, ring))
    bursts = [[] for _ in names]
    print(f"{args.shape}, decode, T = {args.tokens}, B = {args.batch}: burst medians, ms (ratio to {names[0]})")
    for r in range(args.rounds):
        for run, out in zip(runs, bursts):
            time.sleep(0.1)
            for _ in range(3):
                run()
            ts = []
            for _ in range(10):
                t0 = time.perf_counter()
                run()
                ts.append(time.perf_counter() - t0)
            out.append(statistics.median(ts) * 1e3)
        print(f"round {r:3}: " + "  ".join(
            f"{n} {b[-1]:.3f} ({bursts[0][-1] / b[-1]:.2f}x)" for n, b in zip(names, bursts)))

    def spread(xs):
        return [float(np.percentile(xs, q)) for q in (10, 50, 90)]

    summary = []
    for n, b in zip(names, bursts):
        ratios = [m / x for m, x in zip(bursts[0], b)]
        summary.append(dict(variant=n, ms_p10_p50_p90=spread(b), ratio_p10_p50_p90=spread(ratios)))
        print(f"{n:26} ms p10/p50/p90 {'/'.join(f'{x:.3f}' for x in spread(b))}   "
              f"ratio to {names[0]} p10/p50/p90 {'/'.join(f'{x:.2f}' for x in spread(ratios))}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(shape=args.shape, tokens=args.tokens, batch=args.batch, rounds=args.rounds,
                           pinned=not args.no_pin, cpu=bench.cpu_name(), caches=bench.cache_sizes(),
                           bursts=dict(zip(names, bursts)), summary=summary), fh, indent=1)


if __name__ == "__main__":
    main()
