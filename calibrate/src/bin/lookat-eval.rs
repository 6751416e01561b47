use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use lookat_calibrate::collect::{collect_keys, CollectOptions, Probe};
use lookat_calibrate::decode::{teacher_forced, Decoder};
use lookat_calibrate::eval::{head_metrics, Metrics, Scheme};
use lookat_calibrate::model::{lookat_layers, write_codebooks, LookatLayer};
use lookat_calibrate::tokenizer::Tokenizer;
use lookat_calibrate::{learn_codebooks, progress_bar, runtime, tokenize_corpus};
use lookat_contract::{CacheBytes, CodebookShape};
use lookat_op::kernels::PreparedCodebook;

/// Fidelity of LOOKAT (m = 1, 2, 4, 8, 16; K = 256) against fp16 and scalar INT8/INT4 keys on every
/// layer and head of a model, at several lengths, plus end-to-end decoding through onnxruntime.
/// Writes results.json and results.md to --out.
#[derive(Parser)]
#[command(name = "lookat-eval", version)]
struct Cli {
    /// The original exported model (with KV cache I/O).
    #[arg(long)]
    original: PathBuf,
    /// Calibration text files (codebooks are learned from the model's keys on them).
    #[arg(long = "calib-text", num_args = 1.., required = true)]
    calib_texts: Vec<PathBuf>,
    /// Held-out text files, one per domain (named by their file stem).
    #[arg(long = "eval-text", num_args = 1.., required = true)]
    eval_texts: Vec<PathBuf>,
    /// The model's tokenizer (a Hugging Face tokenizer.json); default: GPT-2's BPE.
    #[arg(long, value_name = "tokenizer.json")]
    tokenizer: Option<PathBuf>,
    #[arg(long, default_value = "out/eval")]
    out: PathBuf,
    #[arg(long, default_value_t = 30_000)]
    calib_tokens: usize,
    #[arg(long, default_value_t = 8192)]
    reservoir: usize,
    #[arg(long, default_value_t = 15)]
    iters: usize,
    /// Window lengths for the attention-level metrics.
    #[arg(long, num_args = 1.., default_values_t = [64usize, 128, 256, 512, 1024])]
    lengths: Vec<usize>,
    /// Windows per domain and length.
    #[arg(long, default_value_t = 2)]
    windows: usize,
    /// Queries per window (the last ones, which see the most keys).
    #[arg(long, default_value_t = 32)]
    queries: usize,
    /// Subspace counts whose calibrated models are decoded end to end.
    #[arg(long, num_args = 1.., default_values_t = [2usize, 4])]
    e2e_subspaces: Vec<usize>,
    /// Held-out tokens decoded per domain, end to end.
    #[arg(long, default_value_t = 256)]
    e2e_tokens: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long)]
    quiet: bool,
}

const SUBSPACES: [usize; 5] = [1, 2, 4, 8, 16];
const K: usize = 256;

fn main() -> ExitCode {
    lookat_rewrite::cli::main::<Cli>("lookat-eval", |cli| run(&cli))
}

fn rewritten(original: &Path, m: usize) -> Result<onnx_protobuf::ModelProto> {
    let mut model = lookat_onnx::io::load(original)?;
    let opts = lookat_rewrite::Options {
        subspaces: m,
        centroids: K,
        value_dtype: lookat_rewrite::ValueDtype::F32,
        sinks: 0,
        window: 0,
        transforms: false,
    };
    lookat_rewrite::rewrite(&mut model, &opts)?;
    Ok(model)
}

fn with_subspaces(layers: &[LookatLayer], m: usize) -> Result<Vec<LookatLayer>> {
    layers
        .iter()
        .map(|l| {
            let shape = CodebookShape::new(l.heads(), l.head_dim(), m, K)
                .with_context(|| format!("{m} subspaces do not divide the head size"))?;
            Ok(LookatLayer { shape, ..l.clone() })
        })
        .collect()
}

fn json_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn run(cli: &Cli) -> Result<()> {
    let start = Instant::now();
    std::fs::create_dir_all(&cli.out)?;
    let env = runtime::init(None)?;
    let base = lookat_layers(&rewritten(&cli.original, 1)?)?;
    let (n_layers, heads, d) = (base.len(), base[0].heads(), base[0].head_dim());

    // 1. Codebooks for every m, from the same calibration keys.
    let tok = Tokenizer::load(cli.tokenizer.as_deref())?;
    let (calib, corpus_sha) = tokenize_corpus(&tok, &cli.calib_texts, cli.calib_tokens, cli.quiet)?;
    let bar = progress_bar(cli.quiet, "forward");
    let keys = collect_keys(
        env,
        lookat_onnx::io::load(&cli.original)?,
        &cli.original,
        &base,
        &calib,
        &CollectOptions {
            window: 256,
            batch: 4,
            reservoir: cli.reservoir,
            seed: cli.seed,
            threads: cli.threads,
            all_queries: false,
        },
        &bar,
    )?;
    bar.finish_and_clear();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cli.threads.max(1))
        .build()?;
    let mut books = vec![];
    for m in SUBSPACES {
        let bar = progress_bar(cli.quiet, &format!("k-means m={m}"));
        let layers = with_subspaces(&base, m)?;
        books.push(
            pool.install(|| learn_codebooks(&layers, &keys.keys, cli.iters, cli.seed, &bar))?,
        );
        bar.finish_and_clear();
    }

    // Every head's codebook laid out for the op's kernels: prepared[m][layer][head].
    let prepared: Vec<Vec<Vec<PreparedCodebook>>> = SUBSPACES
        .iter()
        .zip(&books)
        .map(|(&m, per_layer)| {
            per_layer
                .iter()
                .map(|book| {
                    let shape = CodebookShape::new(heads, d, m, K).expect("m divides D");
                    (0..heads)
                        .map(|h| PreparedCodebook::new(&book[shape.head(h)], m, K, shape.sub_dim))
                        .collect()
                })
                .collect()
        })
        .collect();

    // 2. Attention-level metrics on held-out windows.
    let domains: Vec<(String, Vec<u32>)> = cli
        .eval_texts
        .iter()
        .map(|p| -> Result<_> {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read '{}'", p.display()))?;
            Ok((
                p.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                tok.encode(&text)?,
            ))
        })
        .collect::<Result<_>>()?;
    let mut schemes = vec![
        Scheme::Fp16,
        Scheme::Int8PerTensor,
        Scheme::Int8PerChannel,
        Scheme::Int4PerTensor,
        Scheme::Int4PerChannel,
    ];
    schemes.extend(SUBSPACES.map(|m| Scheme::Lookat { subspaces: m }));
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
    let mut probe = Probe::new(env, &cli.original, &names, cli.threads)?;
    // results[scheme][length][layer]
    let mut results =
        vec![vec![vec![Metrics::default(); n_layers]; cli.lengths.len()]; schemes.len()];
    let bar = progress_bar(cli.quiet, "attention");
    bar.set_length((cli.lengths.len() * domains.len() * cli.windows) as u64);
    for (li, &len) in cli.lengths.iter().enumerate() {
        for (domain, toks) in &domains {
            for w in 0..cli.windows {
                let Some(ids) = toks.get(w * len..(w + 1) * len) else {
                    bail!(
                        "held-out '{domain}' has fewer than {} tokens for {} windows of {len}",
                        (w + 1) * len,
                        cli.windows
                    );
                };
                let out = probe.run(ids, 1, len)?;
                let positions: Vec<usize> = (len.saturating_sub(cli.queries)..len).collect();
                for (layer, qkv) in out.chunks_exact(3).enumerate() {
                    let query_heads = base[layer].query_heads;
                    let group = query_heads / heads;
                    // Every query head against its kv head's keys and values (h / G).
                    for qh in 0..query_heads {
                        let h = qh / group;
                        let q = qkv[0].head(qh, query_heads, d)?;
                        let (k, v) = (qkv[1].head(h, heads, d)?, qkv[2].head(h, heads, d)?);
                        let queries: Vec<&[f32]> =
                            positions.iter().map(|&p| &q[p * d..(p + 1) * d]).collect();
                        for (si, scheme) in schemes.iter().enumerate() {
                            let book = match scheme {
                                Scheme::Lookat { subspaces } => {
                                    let mi =
                                        SUBSPACES.iter().position(|x| x == subspaces).unwrap_or(0);
                                    Some(&prepared[mi][layer][h])
                                }
                                _ => None,
                            };
                            let m = head_metrics(&queries, &positions, &k, &v, d, *scheme, book);
                            results[si][li][layer].add(&m);
                        }
                    }
                }
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();

    // 3. End to end: the rewritten model with calibrated codebooks, decoded token by token.
    let plugin = runtime::plugin_path(None)?;
    let mut e2e = vec![];
    for &m in &cli.e2e_subspaces {
        let mi = SUBSPACES
            .iter()
            .position(|&x| x == m)
            .context("--e2e-subspaces must be among 1, 2, 4, 8, 16")?;
        let mut model = rewritten(&cli.original, m)?;
        let layers = lookat_layers(&model)?;
        write_codebooks(&mut model, &layers, &books[mi])?;
        let path = cli.out.join(format!("calibrated-m{m}.onnx"));
        let dir = cli
            .original
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        lookat_onnx::io::save(&model, dir, &path)?;
        for (domain, toks) in &domains {
            let ids = &toks[..(cli.e2e_tokens + 1).min(toks.len())];
            let mut orig = Decoder::new(runtime::session(env, &cli.original, None, cli.threads)?)?;
            let mut look = Decoder::new(runtime::session(env, &path, Some(&plugin), cli.threads)?)?;
            let c = teacher_forced(&mut orig, &mut look, ids)?;
            e2e.push((
                m,
                domain.clone(),
                c.ppl_original,
                c.ppl_lookat,
                c.top1_agreement,
                c.kl,
                c.steps,
            ));
        }
    }

    // 4. Report.
    let bytes = |s: &Scheme, t: f64| -> f64 {
        match s {
            Scheme::Lookat { subspaces } => {
                let layer = CacheBytes {
                    kv_heads: heads,
                    head_dim: d,
                    subspaces: *subspaces,
                    centroids: K,
                    value_elem_bytes: 4,
                    window_tokens: 0,
                };
                n_layers as f64 * layer.keys_amortised_f64(t)
            }
            _ => (n_layers * heads) as f64 * s.key_bytes(d),
        }
    };
    let mut md = String::new();
    let mut js = String::from("{\n");
    writeln!(
        js,
        "  \"model\": {},",
        json_str(&cli.original.display().to_string())
    )?;
    writeln!(
        js,
        "  \"layers\": {n_layers}, \"heads\": {heads}, \"head_dim\": {d}, \"centroids\": {K},"
    )?;
    writeln!(
        js,
        "  \"calib_tokens\": {}, \"calib_sha256\": {}, \"seed\": {},",
        calib.len(),
        json_str(&corpus_sha),
        cli.seed
    )?;
    writeln!(
        js,
        "  \"queries_per_window\": {}, \"windows_per_domain\": {},",
        cli.queries, cli.windows
    )?;
    writeln!(
        js,
        "  \"value_bytes_per_token\": {},",
        n_layers * heads * d * 4
    )?;
    js.push_str("  \"attention\": [\n");
    let mut rows = vec![];
    for (si, s) in schemes.iter().enumerate() {
        for (li, &len) in cli.lengths.iter().enumerate() {
            let mut all = Metrics::default();
            let per_layer: Vec<String> = results[si][li]
                .iter()
                .map(|m| {
                    all.add(m);
                    let [c, k, r, t] = m.mean();
                    format!("[{c:.6}, {k:.6}, {r:.6}, {t:.6}]")
                })
                .collect();
            let [c, k, r, t] = all.mean();
            rows.push(format!(
                "    {{\"scheme\": {}, \"length\": {len}, \"cosine\": {c:.6}, \"kl\": {k:.6}, \"spearman\": {r:.6}, \"top5\": {t:.6}, \
                 \"key_bytes_per_token\": {:.1}, \"key_bytes_per_token_T1024\": {:.1}, \"per_layer_cos_kl_rho_top5\": [{}]}}",
                json_str(&s.name()),
                bytes(s, f64::INFINITY),
                bytes(s, 1024.0),
                per_layer.join(", ")
            ));
        }
    }
    js.push_str(&rows.join(",\n"));
    js.push_str("\n  ],\n  \"end_to_end\": [\n");
    let e2e_rows: Vec<String> = e2e
        .iter()
        .map(|(m, dom, po, pl, a, k, n)| {
            format!(
                "    {{\"subspaces\": {m}, \"domain\": {}, \"tokens\": {n}, \"ppl_original\": {po:.4}, \"ppl_lookat\": {pl:.4}, \"top1_agreement\": {a:.6}, \"kl\": {k:.6}}}",
                json_str(dom)
            )
        })
        .collect();
    js.push_str(&e2e_rows.join(",\n"));
    writeln!(
        js,
        "\n  ],\n  \"seconds\": {:.1}\n}}",
        start.elapsed().as_secs_f64()
    )?;
    std::fs::write(cli.out.join("results.json"), &js)?;

    writeln!(md, "Attention fidelity, all {n_layers} layers × {heads} heads, mean over {} held-out windows per length ({} domains) and the last {} queries of each window.\n", cli.windows * domains.len(), domains.len(), cli.queries)?;
    writeln!(md, "| scheme | length | cosine | KL | Spearman ρ | top-5 | key B/token (all layers) | + codebooks at T=1024 |")?;
    writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|")?;
    for (si, s) in schemes.iter().enumerate() {
        for (li, &len) in cli.lengths.iter().enumerate() {
            let mut all = Metrics::default();
            results[si][li].iter().for_each(|m| all.add(m));
            let [c, k, r, t] = all.mean();
            writeln!(
                md,
                "| {} | {len} | {c:.4} | {k:.4} | {r:.4} | {t:.3} | {:.0} | {:.0} |",
                s.name(),
                bytes(s, f64::INFINITY),
                bytes(s, 1024.0)
            )?;
        }
    }
    writeln!(
        md,
        "\nfp32 keys: {} B/token (all layers); values (fp32, every scheme): {} B/token.\n",
        n_layers * heads * d * 4,
        n_layers * heads * d * 4
    )?;
    writeln!(md, "End to end (onnxruntime, teacher-forced decoding token by token through the cache, from an empty cache):\n")?;
    writeln!(md, "| m | domain | tokens | perplexity original | perplexity LOOKAT | next-token top-1 agreement | mean KL (nats) |")?;
    writeln!(md, "|---:|---|---:|---:|---:|---:|---:|")?;
    for (m, dom, po, pl, a, k, n) in &e2e {
        writeln!(
            md,
            "| {m} | {dom} | {n} | {po:.2} | {pl:.2} | {a:.4} | {k:.5} |"
        )?;
    }
    std::fs::write(cli.out.join("results.md"), &md)?;
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
