use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use lookat_rewrite::{io, rewrite, Options, ValueDtype};

#[derive(Clone, Copy, ValueEnum)]
enum ValueDtypeArg {
    F32,
    F16,
    /// Int8 rows, one float32 scale per token and head (the key window stays float16).
    I8,
}

/// Replace the attention of an exported ONNX model (GPT-2 or Llama family) with
/// com.lookat::LookatAttention.
///
/// The key cache inputs/outputs `past_key_values.N.key` / `present.N.key` become uint8 code tensors
/// `past_key_values.N.key_codes` / `present.N.key_codes` of shape [batch, heads, tokens, M]. The
/// codebooks `lookat.codebooks.N` are written as NaN: run lookat-calibrate before using the model
/// (onnxruntime refuses to create a session with uncalibrated codebooks).
///
/// Exit status: 0 rewritten, 1 error, 2 nothing to rewrite (no attention found, or already
/// rewritten), 64 bad usage.
#[derive(Parser)]
#[command(name = "lookat-rewrite", version)]
struct Cli {
    /// The exported model (.onnx); never modified.
    input: PathBuf,
    /// Where to write the rewritten model (must differ from the input; written atomically).
    #[arg(short, long)]
    output: PathBuf,
    /// Subspaces per key (m): key codes per token and head; must divide the head size.
    #[arg(long, value_name = "M")]
    subspaces: usize,
    /// Centroids per subspace (K), 1..=256.
    #[arg(long, value_name = "K", default_value_t = 256)]
    centroids: usize,
    /// Element type of the value cache in the rewritten model.
    #[arg(long, value_enum, default_value = "f32")]
    value_dtype: ValueDtypeArg,
    /// Keep the keys of the first SINKS tokens of every sequence in full precision (value type)
    /// and score them exactly (attention sinks).
    #[arg(long, value_name = "SINKS", default_value_t = 0)]
    sinks: usize,
    /// Score each query's WINDOW most recent tokens exactly, from full-precision keys kept in a
    /// window cache beside the codes (`<key>_window` inputs and outputs).
    #[arg(long, value_name = "WINDOW", default_value_t = 0)]
    window: usize,
    /// Give every node a key/query transform pair (key_transform / query_transform initializers,
    /// NaN until lookat-calibrate chooses them, e.g. a query-whitened PCA rotation).
    #[arg(long)]
    transform: bool,
    /// Shared max-length cache buffers: the cache I/O gets `max_sequence_length` rows and the
    /// model a `past_sequence_length` input (int64 scalar, the valid rows); a host that binds
    /// one buffer as both past and present (IOBinding) decodes without copying the cache.
    #[arg(long)]
    shared_cache: bool,
    /// Print, for every candidate that did not match, which pattern failed and why.
    #[arg(long)]
    explain: bool,
}

fn main() -> ExitCode {
    lookat_rewrite::cli::main::<Cli>("lookat-rewrite", |cli| run(&cli))
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    io::check_distinct(&cli.input, &cli.output)?;
    let mut model = io::load(&cli.input)?;
    if cli.explain {
        if let Some(g) = model.graph.as_ref() {
            let (blocks, misses) = lookat_rewrite::find_blocks(g);
            println!("explain: {} block(s) matched", blocks.len());
            for b in &blocks {
                println!(
                    "  + {} at '{}': H={} H_kv={} D={} rotary={} scale={:?} cache={} mask={:?}",
                    b.pattern,
                    b.anchor,
                    b.heads,
                    b.kv_heads,
                    b.head_dim,
                    b.rotary,
                    b.scale,
                    b.cache.is_some(),
                    b.mask
                );
            }
            for m in &misses {
                println!("  - {m}");
            }
        }
    }
    let opts = Options {
        subspaces: cli.subspaces,
        centroids: cli.centroids,
        value_dtype: match cli.value_dtype {
            ValueDtypeArg::F32 => ValueDtype::F32,
            ValueDtypeArg::F16 => ValueDtype::F16,
            ValueDtypeArg::I8 => ValueDtype::I8,
        },
        sinks: cli.sinks,
        window: cli.window,
        transforms: cli.transform,
        shared_cache: cli.shared_cache,
    };
    let report = rewrite(&mut model, &opts)?;
    let input_dir = cli
        .input
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    io::save(&model, input_dir, &cli.output)?;

    println!(
        "rewrote {} attention block(s) of '{}':",
        report.blocks.len(),
        cli.input.display()
    );
    for (p, n) in &report.patterns {
        println!("  pattern {p}: {n}");
    }
    println!(
        "  nodes: {} -> {} ({} removed, {} added: {} LookatAttention)",
        report.nodes_before,
        report.nodes_after,
        report.nodes_removed,
        report.nodes_added,
        report.blocks.len()
    );
    if report.cache_io.is_empty() {
        println!("  no cache I/O (export without past/present)");
    }
    for c in &report.cache_io {
        println!(
            "  cache {:<6} {}: {} {}",
            c.direction, c.name, c.elem, c.dims
        );
    }
    let (kb, vb) = report.bytes_before();
    let (ka, va) = report.bytes_after();
    println!(
        "  cache bytes per token (all layers): keys {kb} -> {ka}, values {vb} -> {va}, total {} -> {} ({:.2}x)",
        kb + vb,
        ka + va,
        (kb + vb) as f64 / (ka + va) as f64
    );
    println!(
        "  codebooks: {} bytes fp32 (amortised over T tokens: {:.1} B/token at T=1024); NaN until lookat-calibrate",
        report.codebook_bytes(),
        report.codebook_bytes() as f64 / 1024.0
    );
    println!("wrote '{}'", cli.output.display());
    Ok(())
}
