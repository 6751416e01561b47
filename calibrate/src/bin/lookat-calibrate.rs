use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use lookat_calibrate::{calibrate, CalibrateOptions, ScalarGrid, TransformKind};
use lookat_contract::CacheBytes;

/// Learn LookatAttention codebooks from the keys the original model produces on calibration
/// text, and write them (with metadata) into the rewritten model.
#[derive(Parser)]
#[command(name = "lookat-calibrate", version)]
struct Cli {
    /// The original exported model (run in ONNX Runtime to collect keys).
    #[arg(long)]
    original: PathBuf,
    /// The model rewritten by lookat-rewrite (its NaN codebooks get replaced).
    #[arg(long)]
    rewritten: PathBuf,
    /// Where to write the calibrated model (atomic write; never one of the inputs).
    #[arg(short, long)]
    output: PathBuf,
    /// Calibration text files (UTF-8); each file contributes an equal share of --tokens.
    #[arg(long = "text", value_name = "FILE", num_args = 1.., required_unless_present = "token_ids")]
    texts: Vec<PathBuf>,
    /// The model's tokenizer (a Hugging Face tokenizer.json) for --text; default: GPT-2's BPE.
    #[arg(long, value_name = "tokenizer.json")]
    tokenizer: Option<PathBuf>,
    /// Calibrate on these token ids (integers separated by spaces, newlines or commas) instead of
    /// --text.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["texts", "tokenizer"])]
    token_ids: Option<PathBuf>,
    /// Calibration tokens to use (at most).
    #[arg(long, default_value_t = 50_000)]
    tokens: usize,
    /// Tokens per forward window (at most the model's position limit, checked).
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Seed of reservoir sampling and k-means.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Lloyd iterations of k-means.
    #[arg(long, default_value_t = 25)]
    iters: usize,
    /// Keys kept per (layer, head) for k-means (reservoir sample).
    #[arg(long, default_value_t = 16_384)]
    reservoir: usize,
    /// Threads for ONNX Runtime and k-means (results do not depend on it).
    #[arg(long, default_value_t = std::thread::available_parallelism().map_or(1, |n| n.get()))]
    threads: usize,
    /// No progress bars or report (for scripts).
    #[arg(long)]
    quiet: bool,
    /// How to choose the key/query transforms of a model rewritten with --transform: fsa
    /// (query-whitened balanced PCA), pca, or identity.
    #[arg(long, value_enum, default_value = "fsa")]
    transform: TransformKind,
    /// Scalar per-channel INT8 / INT4 keys instead of k-means codebooks (a uniform grid per kv head
    /// and dimension; needs a model rewritten with --subspaces = head size and --centroids 256 /
    /// 16): the baselines, run by the same op.
    #[arg(long, value_enum)]
    grid: Option<ScalarGrid>,
    /// Mean bytes of codes per key and kv head over the layers: each layer gets the number of
    /// subspaces (the rewrite's --subspaces, halved up to three times) that minimises the summed
    /// measured score error within the budget. Calibrates every candidate.
    #[arg(long, value_name = "BYTES")]
    budget: Option<f64>,
    /// Count the full-precision key window in --budget: its bytes per sequence ((sinks + window)
    /// keys per kv head, in the value cache's type), amortised over this many tokens, come out
    /// of the budget before the codes are allocated, so --budget is the whole key cache per
    /// token and kv head at that length.
    #[arg(long, value_name = "TOKENS", requires = "budget")]
    budget_length: Option<usize>,
    /// Keep the collected keys in this directory and reuse them when the original, tokens,
    /// window, reservoir and seed are the same (sweeps over m, K or transforms then share one
    /// set of forward passes; the codebooks are identical to an uncached run).
    #[arg(long, value_name = "DIR")]
    keys_cache: Option<PathBuf>,
    /// libonnxruntime.so (default: ORT_DYLIB_PATH, else the one in python3's onnxruntime package).
    #[arg(long)]
    ort_lib: Option<PathBuf>,
}

fn main() -> ExitCode {
    lookat_rewrite::cli::main::<Cli>("lookat-calibrate", run)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let start = Instant::now();
    let opts = CalibrateOptions {
        original: cli.original,
        rewritten: cli.rewritten,
        output: cli.output.clone(),
        texts: cli.texts,
        token_ids: cli.token_ids,
        tokenizer: cli.tokenizer,
        tokens: cli.tokens,
        window: cli.window,
        batch: cli.batch,
        seed: cli.seed,
        iters: cli.iters,
        reservoir: cli.reservoir,
        threads: cli.threads,
        quiet: cli.quiet,
        ort_lib: cli.ort_lib,
        transform: cli.transform,
        grid: cli.grid,
        budget: cli.budget,
        budget_length: cli.budget_length,
        keys_cache: cli.keys_cache,
    };
    let summary = calibrate(&opts)?;
    if !cli.quiet {
        println!(
            "calibrated {} layer(s) on {} tokens (corpus sha256 {}…) in {:.1} s, seed {}",
            summary.layers.len(),
            summary.tokens_used,
            &summary.corpus_sha256[..12],
            start.elapsed().as_secs_f64(),
            cli.seed
        );
        println!(
            "{:>5} {:>4} {:>7} {:>11} {:>9}",
            "layer", "head", "keys", "MSE", "rel.err"
        );
        for e in &summary.errors {
            println!(
                "{:>5} {:>4} {:>7} {:>11.3e} {:>9.4}",
                e.layer, e.head, e.keys, e.mse, e.relative
            );
        }
        if let Some(sens) = &summary.sensitivities {
            println!(
                "--budget: expected squared score error (logits²) per layer and m; * = chosen"
            );
            for (l, (s, layer)) in sens.iter().zip(&summary.layers).enumerate() {
                let cells: Vec<String> = s
                    .errors
                    .iter()
                    .map(|&(m, e)| {
                        let mark = if m == layer.shape.subspaces { "*" } else { " " };
                        format!("m={m:<2} {e:>10.3e}{mark}")
                    })
                    .collect();
                println!("{l:>5}  {}", cells.join("  "));
            }
            let heads: usize = summary.layers.iter().map(|l| l.heads()).sum();
            let spent: usize = summary
                .layers
                .iter()
                .map(|l| l.heads() * l.shape.subspaces)
                .sum();
            println!(
                "  mean codes per key and kv head: {:.2} B (codes budget {:.2})",
                spent as f64 / heads as f64,
                summary.codes_budget.unwrap_or_default()
            );
        }
        let bytes: Vec<CacheBytes> = summary.layers.iter().map(|l| l.cache_bytes()).collect();
        let key_fp32: usize = bytes.iter().map(CacheBytes::float_keys).sum();
        let codes: usize = bytes.iter().map(CacheBytes::key_codes).sum();
        println!("key cache bytes per token, all layers: fp32 {key_fp32}, codes {codes} (values unchanged)");
        for t in [256usize, 1024, 4096] {
            let amortised: f64 = bytes.iter().map(|b| b.keys_amortised(t)).sum();
            println!(
                "  with fp32 codebooks (and any key window) amortised over T={t}: {amortised:.1} B/token ({:.2}x smaller than fp32 keys)",
                key_fp32 as f64 / amortised
            );
        }
        println!("wrote '{}'", cli.output.display());
    }
    Ok(())
}
