//! `lookat-calibrate`: learns the codebooks of a rewritten model from the keys its original
//! produces on calibration text, and writes them into the model as initializers.
//!
//! tokenize (GPT-2 BPE) → run the original in ONNX Runtime, keeping a reservoir of keys per
//! (layer, head) → seeded k-means per (layer, head, subspace), in parallel but deterministic →
//! codebooks + metadata into the rewritten model, written atomically.

pub mod collect;
pub mod decode;
pub mod eval;
pub mod kmeans;
pub mod model;
pub mod runtime;
pub mod tokenizer;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::collect::{collect_keys, CollectOptions, Reservoir};
use crate::kmeans::{job_seed, kmeans, nearest};
use crate::model::{lookat_layers, set_metadata, write_codebooks, LookatLayer};

pub struct CalibrateOptions {
    pub original: PathBuf,
    pub rewritten: PathBuf,
    pub output: PathBuf,
    pub texts: Vec<PathBuf>,
    pub tokens: usize,
    pub window: usize,
    pub batch: usize,
    pub seed: u64,
    pub iters: usize,
    pub reservoir: usize,
    pub threads: usize,
    pub quiet: bool,
    pub ort_lib: Option<PathBuf>,
}

/// Quantization error of one head on its collected keys.
#[derive(Debug, Clone)]
pub struct HeadError {
    pub layer: usize,
    pub head: usize,
    pub keys: usize,
    /// Mean over keys and dimensions of (k - q(k))².
    pub mse: f64,
    /// Σ‖k - q(k)‖² / Σ‖k‖².
    pub relative: f64,
}

pub struct Summary {
    pub layers: Vec<LookatLayer>,
    pub tokens_used: usize,
    pub corpus_sha256: String,
    pub errors: Vec<HeadError>,
}

pub fn progress_bar(quiet: bool, what: &str) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// Tokens of the calibration files, an equal share of `limit` from each (an end-of-text token
/// between files), and a hash of the bytes read.
pub fn tokenize_corpus(texts: &[PathBuf], limit: usize, quiet: bool) -> Result<(Vec<u32>, String)> {
    if texts.is_empty() {
        bail!("give at least one calibration text file (--text FILE)");
    }
    let bpe = tokenizer::gpt2()?;
    let bar = progress_bar(quiet, "tokenize");
    bar.set_length(texts.len() as u64);
    let share = limit.div_ceil(texts.len());
    let mut hash = Sha256::new();
    let mut tokens = vec![];
    for path in texts {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read calibration text '{}'", path.display()))?;
        hash.update(text.as_bytes());
        if !tokens.is_empty() {
            tokens.push(tokenizer::END_OF_TEXT);
        }
        let mut ids = tokenizer::encode(&bpe, &text);
        ids.truncate(share);
        tokens.extend(ids);
        bar.inc(1);
    }
    bar.finish_and_clear();
    tokens.truncate(limit);
    let digest = hash.finalize();
    Ok((tokens, digest.iter().map(|b| format!("{b:02x}")).collect()))
}

/// Codebooks of every layer (`[H, m, K, D/m]` each), one k-means job per (layer, head, subspace).
pub fn learn_codebooks(
    layers: &[LookatLayer],
    keys: &[Vec<Reservoir>],
    iters: usize,
    seed: u64,
    bar: &indicatif::ProgressBar,
) -> Result<Vec<Vec<f32>>> {
    let jobs: Vec<(usize, usize, usize)> = layers
        .iter()
        .enumerate()
        .flat_map(|(l, layer)| {
            (0..layer.heads).flat_map(move |h| (0..layer.subspaces).map(move |j| (l, h, j)))
        })
        .collect();
    bar.set_length(jobs.len() as u64);
    for (l, layer) in layers.iter().enumerate() {
        if let Some(h) = keys[l].iter().position(|r| r.is_empty()) {
            bail!(
                "no keys were collected for layer {l} ('{}') head {h}",
                layer.node
            );
        }
    }
    // Each job is sequential and seeded by its coordinates: the result does not depend on the
    // number of threads or on the order jobs run in.
    let books: Vec<Vec<f32>> = jobs
        .par_iter()
        .map(|&(l, h, j)| {
            let layer = &layers[l];
            let (d, sub) = (layer.head_dim(), layer.sub_dim);
            let points: Vec<f32> = keys[l][h]
                .data
                .chunks_exact(d)
                .flat_map(|k| k[j * sub..(j + 1) * sub].to_vec())
                .collect();
            let c = kmeans(
                &points,
                sub,
                layer.centroids,
                iters,
                job_seed(seed, &[l as u64, h as u64, j as u64]),
            );
            bar.inc(1);
            c
        })
        .collect();
    let mut out = vec![];
    let mut it = books.into_iter();
    for layer in layers {
        let mut book =
            Vec::with_capacity(layer.heads * layer.subspaces * layer.centroids * layer.sub_dim);
        for _ in 0..layer.heads * layer.subspaces {
            book.extend(it.next().context("missing k-means job")?);
        }
        out.push(book);
    }
    Ok(out)
}

/// Quantization error of the collected keys under the learned codebooks.
pub fn key_errors(
    layers: &[LookatLayer],
    keys: &[Vec<Reservoir>],
    books: &[Vec<f32>],
) -> Vec<HeadError> {
    let mut out = vec![];
    for (l, layer) in layers.iter().enumerate() {
        let (d, sub, k, m) = (
            layer.head_dim(),
            layer.sub_dim,
            layer.centroids,
            layer.subspaces,
        );
        for (h, res) in keys[l].iter().enumerate() {
            let (mut err, mut norm) = (0f64, 0f64);
            for key in res.data.chunks_exact(d) {
                for j in 0..m {
                    let cents = &books[l][((h * m + j) * k) * sub..((h * m + j + 1) * k) * sub];
                    let x = &key[j * sub..(j + 1) * sub];
                    err += nearest(x, cents, sub).1 as f64;
                    norm += x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>();
                }
            }
            let n = res.len().max(1);
            out.push(HeadError {
                layer: l,
                head: h,
                keys: res.len(),
                mse: err / (n * d) as f64,
                relative: if norm > 0.0 { err / norm } else { 0.0 },
            });
        }
    }
    out
}

pub fn calibrate(opts: &CalibrateOptions) -> Result<Summary> {
    lookat_rewrite::io::check_distinct(&opts.rewritten, &opts.output)?;
    lookat_rewrite::io::check_distinct(&opts.original, &opts.output)?;
    let mut model = lookat_rewrite::io::load(&opts.rewritten)?;
    let layers = lookat_layers(&model)?;
    let (tokens, corpus_sha256) = tokenize_corpus(&opts.texts, opts.tokens, opts.quiet)?;

    let env = runtime::init(opts.ort_lib.as_deref())?;
    let bar = progress_bar(opts.quiet, "forward");
    let keys = collect_keys(
        env,
        &opts.original,
        &layers,
        &tokens,
        &CollectOptions {
            window: opts.window,
            batch: opts.batch,
            reservoir: opts.reservoir,
            seed: opts.seed,
            threads: opts.threads,
        },
        &bar,
    )?;
    bar.finish_and_clear();
    let tokens_used = (tokens.len() / opts.window) * opts.window;

    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads.max(1))
        .build()?;
    let bar = progress_bar(opts.quiet, "k-means");
    let books = pool.install(|| learn_codebooks(&layers, &keys, opts.iters, opts.seed, &bar))?;
    bar.finish_and_clear();
    let errors = key_errors(&layers, &keys, &books);

    write_codebooks(&mut model, &layers, &books)?;
    let first = &layers[0];
    for (k, v) in [
        ("lookat.subspaces", first.subspaces.to_string()),
        ("lookat.centroids", first.centroids.to_string()),
        ("lookat.seed", opts.seed.to_string()),
        ("lookat.tokens", tokens_used.to_string()),
        ("lookat.window", opts.window.to_string()),
        ("lookat.iters", opts.iters.to_string()),
        ("lookat.reservoir", opts.reservoir.to_string()),
        ("lookat.corpus_sha256", corpus_sha256.clone()),
        (
            "lookat.tool_version",
            format!("lookat-calibrate {}", env!("CARGO_PKG_VERSION")),
        ),
    ] {
        set_metadata(&mut model, k, v);
    }
    let dir = opts
        .rewritten
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    lookat_rewrite::io::save(&model, dir, &opts.output)?;
    Ok(Summary {
        layers,
        tokens_used,
        corpus_sha256,
        errors,
    })
}
