//! `lookat-calibrate`: learns the codebooks of a rewritten model from the keys its original
//! produces on calibration text, and writes them into the model as initializers.
//!
//! tokenize (GPT-2 BPE) → run the original in ONNX Runtime, keeping a reservoir of keys per
//! (layer, head) → seeded k-means per (layer, head, subspace), in parallel but deterministic →
//! codebooks + metadata into the rewritten model, written atomically.
//!
//! Quantization errors are measured through the op's own encoding (`PreparedCodebook`), the
//! arithmetic that runs at inference.

pub mod budget;
pub mod collect;
pub mod decode;
pub mod eval;
pub mod kmeans;
pub mod linalg;
pub mod model;
pub mod runtime;
pub mod tokenizer;

use std::borrow::Cow;
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
use lookat_contract::CodebookShape;

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
    /// How the key/query transforms are chosen, for models rewritten with `--transform`.
    pub transform: TransformKind,
    /// A directory where collected keys are kept and reused by later calibrations of the same
    /// original, tokens, window, reservoir and seed (`--keys-cache`).
    pub keys_cache: Option<PathBuf>,
    /// Mean codes bytes per key and kv head over the layers (`--budget`): each layer's number of
    /// subspaces chosen from its measured sensitivity, at most the rewritten model's.
    pub budget: Option<f64>,
    /// With `budget`: the key window's bytes, amortised over this many tokens, count against it
    /// (`--budget-length`).
    pub budget_length: Option<usize>,
    /// Instead of k-means: a uniform symmetric grid per (kv head, dimension) — scalar INT8 / INT4
    /// per-channel quantization of the keys, run by the same op (needs m = D, K = 256 / 16).
    pub grid: Option<ScalarGrid>,
}

/// Scalar per-channel key quantization expressed as codebooks: with one dimension per subspace,
/// the nearest of a uniform symmetric grid of levels is round-to-nearest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScalarGrid {
    /// 255 levels `i·s`, |i| ≤ 127, `s = max|x| / 127` per channel (K = 256).
    Int8,
    /// 15 levels, |i| ≤ 7 (K = 16).
    Int4,
}

impl ScalarGrid {
    pub fn levels(self) -> i32 {
        match self {
            ScalarGrid::Int8 => 127,
            ScalarGrid::Int4 => 7,
        }
    }
    pub fn centroids(self) -> usize {
        match self {
            ScalarGrid::Int8 => 256,
            ScalarGrid::Int4 => 16,
        }
    }
}

/// Grid codebooks of every layer: per (kv head, dimension) the levels `i·max|x|/L`, `|i| ≤ L`
/// (the last slot repeats the top level).
pub fn grid_codebooks(
    layers: &[LookatLayer],
    keys: &[Vec<Reservoir>],
    grid: ScalarGrid,
) -> Result<Vec<Vec<f32>>> {
    let mut out = vec![];
    for (l, layer) in layers.iter().enumerate() {
        let shape = layer.shape;
        if shape.sub_dim != 1 || shape.centroids != grid.centroids() {
            bail!(
                "layer '{}': a {grid:?} grid needs --subspaces equal to the head size and --centroids {} \
                 (the model has {} subspaces of {} and {} centroids)",
                layer.node,
                grid.centroids(),
                shape.subspaces,
                shape.sub_dim,
                shape.centroids
            );
        }
        let d = shape.head_dim();
        let levels = grid.levels();
        let mut book = Vec::with_capacity(shape.len());
        for r in &keys[l] {
            for j in 0..d {
                let max = r
                    .data
                    .chunks_exact(d)
                    .map(|k| k[j].abs())
                    .fold(0f32, f32::max);
                let step = if max > 0.0 { max / levels as f32 } else { 1.0 };
                book.extend((-levels..=levels).map(|i| i as f32 * step));
                book.push(levels as f32 * step);
            }
        }
        out.push(book);
    }
    Ok(out)
}

/// How lookat-calibrate chooses a layer's key/query transforms (`A`, `B` per kv head).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TransformKind {
    /// Whiten by the second moment Σq of the queries that read the kv head, then a PCA rotation
    /// with the variance balanced over the subspaces: `A = Σq^½·R`, `B = Σq^-½·R`. The
    /// quantizer's Euclidean error on `k·A` is then the expected squared score error.
    Fsa,
    /// The balanced PCA rotation of the keys alone: `A = B = R`.
    Pca,
    /// `A = B = I` (as without transforms; for comparisons).
    Identity,
}

impl TransformKind {
    pub fn name(self) -> &'static str {
        match self {
            TransformKind::Fsa => "fsa (query-whitened balanced PCA)",
            TransformKind::Pca => "pca (balanced PCA rotation)",
            TransformKind::Identity => "identity",
        }
    }
}

/// Second moment `E[x xᵀ]` (`centered`: the covariance) of a reservoir's vectors, in f64.
fn moment(r: &Reservoir, d: usize, centered: bool) -> Vec<f64> {
    let n = r.len().max(1) as f64;
    let mut mean = vec![0f64; d];
    if centered {
        for x in r.data.chunks_exact(d) {
            for (m, &v) in mean.iter_mut().zip(x) {
                *m += v as f64 / n;
            }
        }
    }
    let mut out = vec![0f64; d * d];
    for x in r.data.chunks_exact(d) {
        let c: Vec<f64> = x.iter().zip(&mean).map(|(&v, m)| v as f64 - m).collect();
        for i in 0..d {
            for j in i..d {
                out[i * d + j] += c[i] * c[j];
            }
        }
    }
    for i in 0..d {
        for j in i..d {
            out[i * d + j] /= n;
            out[j * d + i] = out[i * d + j];
        }
    }
    out
}

/// The key and query transforms `[H_kv, D, D]` of one layer, from its collected keys and the
/// second moments of its queries per kv head; `B·Aᵀ = I` by construction.
pub fn choose_transforms(
    layer: &LookatLayer,
    keys: &[Reservoir],
    query_moments: &[Vec<f64>],
    kind: TransformKind,
) -> (Vec<f32>, Vec<f32>) {
    let (d, m) = (layer.head_dim(), layer.shape.subspaces);
    let (mut a_all, mut b_all) = (vec![], vec![]);
    for (h, k) in keys.iter().enumerate() {
        let identity: Vec<f64> = (0..d * d)
            .map(|i| f64::from(u8::from(i / d == i % d)))
            .collect();
        let (a, b) = match kind {
            TransformKind::Identity => (identity.clone(), identity),
            TransformKind::Pca => {
                let r = linalg::balanced_pca_rotation(&moment(k, d, true), d, m);
                (r.clone(), r)
            }
            TransformKind::Fsa => {
                let sigma = &query_moments[h];
                let half = linalg::spd_power(sigma, d, 0.5, 1e-6);
                let inv_half = linalg::spd_power(sigma, d, -0.5, 1e-6);
                // Keys in the whitened space k·Σq^½, then their balanced PCA rotation.
                let mut moved = Reservoir::new(k.len(), d, 0);
                for x in k.data.chunks_exact(d) {
                    let y: Vec<f32> = (0..d)
                        .map(|j| (0..d).map(|i| x[i] as f64 * half[i * d + j]).sum::<f64>() as f32)
                        .collect();
                    moved.offer(&y);
                }
                let r = linalg::balanced_pca_rotation(&moment(&moved, d, true), d, m);
                (
                    linalg::matmul(&half, &r, d),
                    linalg::matmul(&inv_half, &r, d),
                )
            }
        };
        a_all.extend(a.iter().map(|&x| x as f32));
        b_all.extend(b.iter().map(|&x| x as f32));
    }
    (a_all, b_all)
}

/// Replaces every key of the reservoirs by `k·A` of its kv head (`a`: `[H_kv, D, D]`).
pub fn transform_keys(keys: &mut [Reservoir], a: &[f32], d: usize) {
    for (h, r) in keys.iter_mut().enumerate() {
        let m = &a[h * d * d..(h + 1) * d * d];
        for x in r.data.chunks_exact_mut(d) {
            let y: Vec<f32> = (0..d)
                .map(|j| (0..d).map(|i| x[i] * m[i * d + j]).sum())
                .collect();
            x.copy_from_slice(&y);
        }
    }
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
    /// With `--budget`: each layer's measured score error per candidate m.
    pub sensitivities: Option<Vec<budget::Sensitivity>>,
    /// With `--budget`: the mean bytes of codes per key and kv head allowed (the budget less the
    /// amortised key window under `--budget-length`).
    pub codes_budget: Option<f64>,
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

/// `key - q(key)` for every collected key of head `h`, each key encoded the way the op encodes it.
fn residuals(shape: CodebookShape, h: usize, book: &[f32], res: &Reservoir) -> Vec<f32> {
    let d = shape.head_dim();
    let prepared = PreparedCodebook::new(
        &book[shape.head(h)],
        shape.subspaces,
        shape.centroids,
        shape.sub_dim,
    );
    let n = res.len();
    let mut codes = vec![0u8; n * shape.subspaces];
    prepared.encode_keys(n, |i| &res.data[i * d..(i + 1) * d], &mut codes);
    let mut out = Vec::with_capacity(n * d);
    for (key, key_codes) in res
        .data
        .chunks_exact(d)
        .zip(codes.chunks_exact(shape.subspaces))
    {
        for (j, &c) in key_codes.iter().enumerate() {
            let x = &key[j * shape.sub_dim..(j + 1) * shape.sub_dim];
            let centroid = &book[shape.offset(h, j, c as usize)..][..shape.sub_dim];
            out.extend(x.iter().zip(centroid).map(|(a, b)| a - b));
        }
    }
    out
}

/// Second moments `E[q qᵀ]` of the queries reading each kv head of every layer (empty for layers
/// whose queries were not collected): computed once, shared by the transforms and the score errors
/// of every candidate m.
fn query_moments(layers: &[LookatLayer], queries: &[Vec<Reservoir>]) -> Vec<Vec<Vec<f64>>> {
    layers
        .par_iter()
        .zip(queries)
        .map(|(layer, q)| {
            q.iter()
                .map(|r| moment(r, layer.head_dim(), false))
                .collect()
        })
        .collect()
}

/// What a layer's score errors are measured against: the second moments of the queries reading
/// each kv head and the layer's query transform `B`, if it has one (its keys are then already
/// transformed, and the moments are moved by `B`).
#[derive(Clone, Copy)]
struct ScoreBasis<'a> {
    moments: &'a [Vec<f64>],
    query_transform: Option<&'a [f32]>,
}

/// Quantization error of the collected keys of `layer` (its index `l`) under its codebooks, each
/// key encoded the way the op encodes it, and with `scores` its expected squared score error in
/// logits, averaged over its kv heads.
fn measure_layer(
    l: usize,
    layer: &LookatLayer,
    keys: &[Reservoir],
    book: &[f32],
    scores: Option<ScoreBasis<'_>>,
) -> (Vec<HeadError>, Option<f64>) {
    let d = layer.head_dim();
    let mut score_sum = 0f64;
    let errors = keys
        .iter()
        .enumerate()
        .map(|(h, res)| {
            let e = residuals(layer.shape, h, book, res);
            if let Some(ScoreBasis {
                moments,
                query_transform,
            }) = scores
            {
                let s = match query_transform {
                    Some(b) => Cow::Owned(budget::moved_moment(
                        &moments[h],
                        &b[h * d * d..(h + 1) * d * d],
                        d,
                    )),
                    None => Cow::Borrowed(&moments[h]),
                };
                score_sum += budget::mean_score_error(e.chunks_exact(d), &s, d, layer.scale);
            }
            let err: f64 = e.iter().map(|&x| (x as f64).powi(2)).sum();
            let norm: f64 = res.data.iter().map(|&x| (x as f64).powi(2)).sum();
            HeadError {
                layer: l,
                head: h,
                keys: res.len(),
                mse: err / (res.len().max(1) * d) as f64,
                relative: if norm > 0.0 { err / norm } else { 0.0 },
            }
        })
        .collect();
    (errors, scores.map(|_| score_sum / keys.len().max(1) as f64))
}

/// What one calibration of `layers` produces: per layer its codebooks, its key/query transforms
/// (for layers that have them), its head errors and, when its queries were collected, its
/// expected squared score error.
struct Quantized {
    books: Vec<Vec<f32>>,
    transforms: Vec<Option<(Vec<f32>, Vec<f32>)>>,
    errors: Vec<Vec<HeadError>>,
    score_errors: Vec<Option<f64>>,
}

/// Chooses the transforms, learns the codebooks and measures them, for `layers` as they are
/// shaped (`keys` are consumed: layers with transforms are quantized in the transformed space;
/// `moments`: the queries' second moments, from [`query_moments`]); `scores`: also each layer's
/// score error (needs its queries).
fn quantize(
    layers: &[LookatLayer],
    mut keys: Vec<Vec<Reservoir>>,
    moments: &[Vec<Vec<f64>>],
    scores: bool,
    opts: &CalibrateOptions,
    pool: &rayon::ThreadPool,
) -> Result<Quantized> {
    let mut transforms = vec![];
    for (l, layer) in layers.iter().enumerate() {
        transforms.push(layer.transforms.as_ref().map(|_| {
            let (a, b) = choose_transforms(layer, &keys[l], &moments[l], opts.transform);
            transform_keys(&mut keys[l], &a, layer.head_dim());
            (a, b)
        }));
    }
    let bar = progress_bar(opts.quiet, "k-means");
    let books = match opts.grid {
        Some(grid) => grid_codebooks(layers, &keys, grid)?,
        None => pool.install(|| learn_codebooks(layers, &keys, opts.iters, opts.seed, &bar))?,
    };
    bar.finish_and_clear();
    let measured: Vec<(Vec<HeadError>, Option<f64>)> = pool.install(|| {
        layers
            .par_iter()
            .enumerate()
            .map(|(l, layer)| {
                let with_scores = (scores && !moments[l].is_empty()).then_some(ScoreBasis {
                    moments: &moments[l],
                    query_transform: transforms[l].as_ref().map(|(_, b)| b.as_slice()),
                });
                measure_layer(l, layer, &keys[l], &books[l], with_scores)
            })
            .collect()
    });
    let (errors, score_errors) = measured.into_iter().unzip();
    Ok(Quantized {
        books,
        transforms,
        errors,
        score_errors,
    })
}

/// The mean bytes of codes per key and kv head that `--budget` allows (with `--budget-length`,
/// less the key window amortised over that many tokens); fails before any work when the budget
/// cannot be met or does not apply.
fn codes_budget(layers: &[LookatLayer], opts: &CalibrateOptions) -> Result<Option<f64>> {
    let Some(bytes) = opts.budget else {
        if opts.budget_length.is_some() {
            bail!("--budget-length only applies with --budget");
        }
        return Ok(None);
    };
    if opts.grid.is_some() {
        bail!("--budget chooses the number of subspaces of k-means codebooks; it does not apply to --grid");
    }
    let max_m = layers[0].shape.subspaces;
    if let Some(l) = layers.iter().find(|l| l.shape.subspaces != max_m) {
        bail!(
            "--budget needs one number of subspaces in every layer of the rewritten model (the \
             rewrite's --subspaces, the most a layer may get): node '{}' has {}, node '{}' {max_m}",
            l.node,
            l.shape.subspaces,
            layers[0].node
        );
    }
    let window = match opts.budget_length {
        None => 0.0,
        Some(0) => bail!("--budget-length must be at least 1 token"),
        Some(t) => {
            let heads: usize = layers.iter().map(|l| l.heads()).sum();
            let window: usize = layers.iter().map(|l| l.cache_bytes().key_window()).sum();
            window as f64 / heads as f64 / t as f64
        }
    };
    let codes = bytes - window;
    let smallest = budget::candidates(max_m)[0];
    if !codes.is_finite() || codes < smallest as f64 {
        let spent = if window > 0.0 {
            format!(
                " once the key window's {window:.2} B/token/kv head at --budget-length {} is taken \
                 (a shorter --window or --sinks in the rewrite frees it)",
                opts.budget_length.unwrap_or_default()
            )
        } else {
            String::new()
        };
        bail!(
            "--budget {bytes} leaves {codes:.2} B/key/head for codes{spent}, below the fewest a \
             layer can have with this rewrite, {smallest} B/key/head (--subspaces {max_m}, halved \
             up to three times)"
        );
    }
    Ok(Some(codes))
}

/// `--budget`: every layer calibrated at each candidate m, then each layer's m allocated from its
/// measured score errors (module `budget`). Returns the layers reshaped to their m and the
/// calibration of each at its m, with the sensitivities measured.
fn quantize_under_budget(
    layers: &[LookatLayer],
    mut keys: Vec<Vec<Reservoir>>,
    moments: &[Vec<Vec<f64>>],
    budget_bytes: f64,
    opts: &CalibrateOptions,
    pool: &rayon::ThreadPool,
) -> Result<(Vec<LookatLayer>, Quantized, Vec<budget::Sensitivity>)> {
    let ms = budget::candidates(layers[0].shape.subspaces);
    let mut runs = vec![];
    for (i, &m) in ms.iter().enumerate() {
        let shaped = layers
            .iter()
            .map(|l| {
                let shape = budget::with_subspaces(l.shape, m)
                    .with_context(|| format!("node '{}': {m} subspaces do not fit", l.node))?;
                Ok(LookatLayer { shape, ..l.clone() })
            })
            .collect::<Result<Vec<LookatLayer>>>()?;
        // The last candidate takes the collected keys; the others quantize a copy.
        let keys = if i + 1 == ms.len() {
            std::mem::take(&mut keys)
        } else {
            keys.clone()
        };
        let q = quantize(&shaped, keys, moments, true, opts, pool)?;
        runs.push((shaped, q));
    }
    let sensitivities: Vec<budget::Sensitivity> = (0..layers.len())
        .map(|l| budget::Sensitivity {
            kv_heads: layers[l].heads(),
            errors: ms
                .iter()
                .zip(&runs)
                .map(|(&m, (_, q))| (m, q.score_errors[l].unwrap_or(f64::INFINITY)))
                .collect(),
        })
        .collect();
    let chosen = budget::allocate(&sensitivities, budget_bytes)?;
    let mut out_layers = vec![];
    let mut out = Quantized {
        books: vec![],
        transforms: vec![],
        errors: vec![],
        score_errors: vec![],
    };
    for (l, m) in chosen.into_iter().enumerate() {
        let (shaped, q) = ms
            .iter()
            .position(|&c| c == m)
            .and_then(|i| runs.get_mut(i))
            .context("the allocation chose a number of subspaces that was not calibrated")?;
        out_layers.push(shaped[l].clone());
        out.books.push(std::mem::take(&mut q.books[l]));
        out.transforms.push(q.transforms[l].take());
        out.errors.push(std::mem::take(&mut q.errors[l]));
        out.score_errors.push(q.score_errors[l]);
    }
    Ok((out_layers, out, sensitivities))
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
    let codes_budget = codes_budget(&layers, opts)?;
    let (tokens, corpus_sha256, tokenizer_name) = calibration_tokens(opts)?;

    let env = runtime::init(opts.ort_lib.as_deref())?;
    let bar = progress_bar(opts.quiet, "forward");
    let collect_opts = CollectOptions {
        window: opts.window,
        batch: opts.batch,
        reservoir: opts.reservoir,
        seed: opts.seed,
        threads: opts.threads,
        all_queries: opts.budget.is_some(),
    };
    let cache = match &opts.keys_cache {
        Some(dir) => Some(collect::KeysCache::new(
            dir,
            &opts.original,
            &layers,
            &tokens,
            &collect_opts,
        )?),
        None => None,
    };
    let collected = match cache.as_ref().and_then(|c| c.load()) {
        Some(c) => c,
        None => {
            let c = collect_keys(
                env,
                original,
                &opts.original,
                &layers,
                &tokens,
                &collect_opts,
                &bar,
            )?;
            if let Some(cache) = &cache {
                cache.store(&c)?;
            }
            c
        }
    };
    bar.finish_and_clear();
    let tokens_used = (tokens.len() / opts.window) * opts.window;

    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads.max(1))
        .build()?;
    let moments = pool.install(|| query_moments(&layers, &collected.queries));
    let (layers, quantized, sensitivities) = match codes_budget {
        Some(bytes) => {
            let (layers, q, s) =
                quantize_under_budget(&layers, collected.keys, &moments, bytes, opts, &pool)?;
            (layers, q, Some(s))
        }
        None => {
            let q = quantize(&layers, collected.keys, &moments, false, opts, &pool)?;
            (layers, q, None)
        }
    };

    if sensitivities.is_some() {
        for layer in &layers {
            model::set_subspaces(&mut model, layer)?;
        }
    }
    write_codebooks(&mut model, &layers, &quantized.books)?;
    for (layer, t) in layers.iter().zip(&quantized.transforms) {
        if let (Some((key_name, query_name)), Some((a, b))) = (&layer.transforms, t) {
            model::write_floats(&mut model, key_name, a)?;
            model::write_floats(&mut model, query_name, b)?;
        }
    }
    let has_transforms = quantized.transforms.iter().any(Option::is_some);
    let first = &layers[0];
    let subspaces: Vec<String> = layers
        .iter()
        .map(|l| l.shape.subspaces.to_string())
        .collect();
    let uniform = subspaces.iter().all(|m| *m == subspaces[0]);
    for (k, v) in [
        (
            metadata::SUBSPACES,
            if uniform {
                subspaces[0].clone()
            } else {
                subspaces.join(",")
            },
        ),
        (metadata::CENTROIDS, first.shape.centroids.to_string()),
        (metadata::SEED, opts.seed.to_string()),
        (metadata::TOKENS, tokens_used.to_string()),
        (metadata::WINDOW, opts.window.to_string()),
        (metadata::ITERS, opts.iters.to_string()),
        (metadata::RESERVOIR, opts.reservoir.to_string()),
        (metadata::CORPUS_SHA256, corpus_sha256.clone()),
        (metadata::TOKENIZER, tokenizer_name),
        (
            metadata::TRANSFORM,
            if !has_transforms {
                "none".to_string()
            } else {
                opts.transform.name().to_string()
            },
        ),
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
        errors: quantized.errors.into_iter().flatten().collect(),
        sensitivities,
        codes_budget,
    })
}
