//! `lookat-calibrate`: learns the codebooks of a rewritten model from the keys its original
//! produces on calibration text, and writes them into the model as initializers.
//!
//! tokenize (GPT-2 BPE) → run the original in ONNX Runtime, keeping a reservoir of keys per
//! (layer, head) → seeded k-means per (layer, head, subspace), in parallel but deterministic →
//! codebooks + metadata into the rewritten model, written atomically.
//!
//! Quantization errors are measured through the op's own encoding (`PreparedCodebook`), the
//! arithmetic that runs at inference.

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

use lookat_contract::metadata;
use lookat_onnx::io;
use lookat_op::kernels::PreparedCodebook;

use crate::collect::{collect_keys, CollectOptions, Reservoir};
use crate::kmeans::{job_seed, kmeans};
use crate::model::{lookat_layers, set_metadata, write_codebooks, LookatLayer};

pub struct CalibrateOptions {
    pub original: PathBuf,
    pub rewritten: PathBuf,
    pub output: PathBuf,
    pub texts: Vec<PathBuf>,
    /// Token ids to calibrate on instead of `texts` (a `--token-ids` file).
    pub token_ids: Option<PathBuf>,
    /// A Hugging Face tokenizer.json for `texts` (default: GPT-2's BPE).
    pub tokenizer: Option<PathBuf>,
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

#[derive(Debug)]
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

/// Tokens of the calibration files, an equal share of `limit` from each (the tokenizer's
/// document separator, when it has one, between files), and a hash of the bytes read.
pub fn tokenize_corpus(
    tokenizer: &tokenizer::Tokenizer,
    texts: &[PathBuf],
    limit: usize,
    quiet: bool,
) -> Result<(Vec<u32>, String)> {
    if texts.is_empty() {
        bail!("give at least one calibration text file (--text FILE) or --token-ids FILE");
    }
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
            tokens.extend(tokenizer.separator());
        }
        let mut ids = tokenizer.encode(&text)?;
        ids.truncate(share);
        tokens.extend(ids);
        bar.inc(1);
    }
    bar.finish_and_clear();
    tokens.truncate(limit);
    Ok((tokens, hex(&hash.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The calibration tokens of `opts`: its `--token-ids` file (at most `tokens` of them), else its
/// texts through its tokenizer. Returns the tokens, the corpus hash and the tokenizer's name.
pub fn calibration_tokens(opts: &CalibrateOptions) -> Result<(Vec<u32>, String, String)> {
    if let Some(path) = &opts.token_ids {
        if !opts.texts.is_empty() {
            bail!("give calibration --text files or --token-ids, not both");
        }
        let mut ids = tokenizer::read_token_ids(path)?;
        ids.truncate(opts.tokens);
        let bytes = std::fs::read(path)?;
        return Ok((
            ids,
            hex(&Sha256::digest(&bytes)),
            format!("token ids from {}", path.display()),
        ));
    }
    let tok = tokenizer::Tokenizer::load(opts.tokenizer.as_deref())?;
    let (ids, sha) = tokenize_corpus(&tok, &opts.texts, opts.tokens, opts.quiet)?;
    Ok((ids, sha, tok.name()))
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
            (0..layer.shape.heads)
                .flat_map(move |h| (0..layer.shape.subspaces).map(move |j| (l, h, j)))
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
            let (d, sub) = (layer.head_dim(), layer.shape.sub_dim);
            let mut points = Vec::with_capacity(keys[l][h].len() * sub);
            for key in keys[l][h].data.chunks_exact(d) {
                points.extend_from_slice(&key[j * sub..(j + 1) * sub]);
            }
            let c = kmeans(
                &points,
                sub,
                layer.shape.centroids,
                iters,
                job_seed(seed, &[l as u64, h as u64, j as u64]),
            );
            bar.inc(1);
            c
        })
        .collect();
    // Jobs run in (head, subspace) order: the [H, m, K, d'] layout of the codebooks tensor.
    let mut out = vec![];
    let mut it = books.into_iter();
    for layer in layers {
        let mut book = Vec::with_capacity(layer.shape.len());
        for _ in 0..layer.shape.heads * layer.shape.subspaces {
            book.extend(it.next().context("missing k-means job")?);
        }
        out.push(book);
    }
    Ok(out)
}

/// Quantization error of the collected keys under the learned codebooks, each key encoded the way
/// the op encodes it.
pub fn key_errors(
    layers: &[LookatLayer],
    keys: &[Vec<Reservoir>],
    books: &[Vec<f32>],
) -> Vec<HeadError> {
    let mut out = vec![];
    for (l, layer) in layers.iter().enumerate() {
        let shape = layer.shape;
        let d = shape.head_dim();
        for (h, res) in keys[l].iter().enumerate() {
            let book = &books[l][shape.head(h)];
            let prepared =
                PreparedCodebook::new(book, shape.subspaces, shape.centroids, shape.sub_dim);
            let n = res.len();
            let mut codes = vec![0u8; n * shape.subspaces];
            prepared.encode_keys(n, |i| &res.data[i * d..(i + 1) * d], &mut codes);
            let (mut err, mut norm) = (0f64, 0f64);
            for (key, key_codes) in res
                .data
                .chunks_exact(d)
                .zip(codes.chunks_exact(shape.subspaces))
            {
                for (j, &c) in key_codes.iter().enumerate() {
                    let x = &key[j * shape.sub_dim..(j + 1) * shape.sub_dim];
                    let centroid = &books[l][shape.offset(h, j, c as usize)..][..shape.sub_dim];
                    for (a, b) in x.iter().zip(centroid) {
                        err += (*a as f64 - *b as f64).powi(2);
                        norm += (*a as f64).powi(2);
                    }
                }
            }
            out.push(HeadError {
                layer: l,
                head: h,
                keys: n,
                mse: err / (n.max(1) * d) as f64,
                relative: if norm > 0.0 { err / norm } else { 0.0 },
            });
        }
    }
    out
}

pub fn calibrate(opts: &CalibrateOptions) -> Result<Summary> {
    // Everything that can fail cheaply fails before the forward passes and k-means.
    io::check_distinct(&opts.rewritten, &opts.output)?;
    io::check_distinct(&opts.original, &opts.output)?;
    io::check_writable(&opts.output)?;
    let mut model = io::load(&opts.rewritten)?;
    let layers = lookat_layers(&model)?;
    let original = io::load(&opts.original)?;
    collect::check_original(&original, &opts.original, &layers)?;
    let (tokens, corpus_sha256, tokenizer_name) = calibration_tokens(opts)?;

    let env = runtime::init(opts.ort_lib.as_deref())?;
    let bar = progress_bar(opts.quiet, "forward");
    let keys = collect_keys(
        env,
        original,
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
        (metadata::SUBSPACES, first.shape.subspaces.to_string()),
        (metadata::CENTROIDS, first.shape.centroids.to_string()),
        (metadata::SEED, opts.seed.to_string()),
        (metadata::TOKENS, tokens_used.to_string()),
        (metadata::WINDOW, opts.window.to_string()),
        (metadata::ITERS, opts.iters.to_string()),
        (metadata::RESERVOIR, opts.reservoir.to_string()),
        (metadata::CORPUS_SHA256, corpus_sha256.clone()),
        (metadata::TOKENIZER, tokenizer_name),
        (
            metadata::TOOL_VERSION,
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
    io::save(&model, dir, &opts.output)?;
    Ok(Summary {
        layers,
        tokens_used,
        corpus_sha256,
        errors,
    })
}
