//! Key collection: run the original model in ONNX Runtime on token windows, pruned to the key
//! projections the LookatAttention nodes will read, and keep a seeded reservoir sample of at most
//! N keys per (layer, head) so memory stays bounded whatever the corpus size.

use std::borrow::Cow;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use lookat_onnx::edit::prune_to_outputs;
use lookat_onnx::io;
use onnx_protobuf::{Message, ModelProto, ValueInfoProto};
use ort::environment::Environment;
use ort::session::SessionInputValue;
use ort::value::Tensor;

use crate::kmeans::{job_seed, Rng};
use crate::model::LookatLayer;

/// Algorithm R over key vectors of `dim` floats.
#[derive(Clone)]
pub struct Reservoir {
    capacity: usize,
    dim: usize,
    pub data: Vec<f32>,
    pub seen: u64,
    rng: Rng,
}

impl Reservoir {
    pub fn new(capacity: usize, dim: usize, seed: u64) -> Reservoir {
        Reservoir {
            capacity,
            dim,
            data: Vec::with_capacity(capacity.min(1 << 16) * dim),
            seen: 0,
            rng: Rng::new(seed),
        }
    }
    pub fn offer(&mut self, x: &[f32]) {
        self.seen += 1;
        if self.data.len() < self.capacity * self.dim {
            self.data.extend_from_slice(x);
        } else {
            let j = (self.rng.next_u64() % self.seen) as usize;
            if j < self.capacity {
                self.data[j * self.dim..(j + 1) * self.dim].copy_from_slice(x);
            }
        }
    }
    pub fn len(&self) -> usize {
        self.data.len() / self.dim
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

pub struct CollectOptions {
    pub window: usize,
    pub batch: usize,
    pub reservoir: usize,
    pub seed: u64,
    pub threads: usize,
    /// Collect the queries of every layer, not only of layers with transforms (`--budget`
    /// weighs each layer's key errors by its queries).
    pub all_queries: bool,
}

impl CollectOptions {
    /// Whether the queries reading `layer`'s kv heads are collected.
    pub fn wants_queries(&self, layer: &LookatLayer) -> bool {
        self.all_queries || layer.transforms.is_some()
    }
}

/// The original model pruned to some intermediate tensors, fed token windows.
pub struct Probe {
    session: ort::session::Session,
    inputs: Vec<(String, Vec<i64>)>,
    outputs: Vec<String>,
}

impl Probe {
    /// Loads `original` and opens it pruned to `outputs`.
    pub fn new(
        env: &Environment,
        original: &Path,
        outputs: &[String],
        threads: usize,
    ) -> Result<Probe> {
        Probe::from_model(env, io::load(original)?, original, outputs, threads)
    }

    /// Prunes `model` (loaded from `path`) to `outputs` (no logits, no later layers' work) and
    /// opens it from memory; its external data is read from `path`'s directory, and nothing is
    /// written to disk.
    pub fn from_model(
        env: &Environment,
        mut model: ModelProto,
        path: &Path,
        outputs: &[String],
        threads: usize,
    ) -> Result<Probe> {
        let graph = model
            .graph
            .as_mut()
            .context("the original model has no graph")?;
        graph.output.clear();
        for name in outputs {
            let mut vi = ValueInfoProto::new();
            vi.name = name.clone();
            graph.output.push(vi);
        }
        prune_to_outputs(graph);
        let session = crate::runtime::session_from_memory(
            env,
            &model.write_to_bytes()?,
            io::model_dir(path),
            threads,
        )
        .with_context(|| format!("cannot open the original model '{}'", path.display()))?;
        let inputs = session
            .inputs()
            .iter()
            .map(|o| {
                (
                    o.name().to_string(),
                    o.dtype()
                        .tensor_shape()
                        .map(|s| s.to_vec())
                        .unwrap_or_default(),
                )
            })
            .collect();
        Ok(Probe {
            session,
            inputs,
            outputs: outputs.to_vec(),
        })
    }

    /// Runs `b` windows of `w` tokens (`ids` is `b × w`), each from position 0 with an empty
    /// cache; returns each output tensor, in the order given to [`Probe::new`].
    pub fn run(&mut self, ids: &[u32], b: usize, w: usize) -> Result<Vec<Probed>> {
        let ids: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
        let mut feed: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = vec![];
        for (name, shape) in &self.inputs {
            let value: SessionInputValue<'_> = match name.as_str() {
                "input_ids" => Tensor::from_array(([b, w], ids.clone()))?.into(),
                "attention_mask" => Tensor::from_array(([b, w], vec![1i64; b * w]))?.into(),
                "position_ids" => Tensor::from_array(([b, w], (0..b).flat_map(|_| 0..w as i64).collect::<Vec<_>>()))?.into(),
                n if n.starts_with("past_key_values.") && shape.len() == 4 => {
                    Tensor::from_array(([b, shape[1].max(0) as usize, 0, shape[3].max(0) as usize], Vec::<f32>::new()))?.into()
                }
                other => bail!("the original model has an input '{other}' that the probe does not know how to feed"),
            };
            feed.push((Cow::Owned(name.clone()), value));
        }
        let outputs = self
            .session
            .run(feed)
            .context("forward pass of the original model")?;
        self.outputs
            .iter()
            .map(|name| {
                let (shape, v) = outputs[name.as_str()]
                    .try_extract_tensor::<f32>()
                    .with_context(|| format!("tensor '{name}'"))?;
                Ok(Probed {
                    name: name.clone(),
                    shape: shape.iter().map(|&d| d.max(0) as usize).collect(),
                    data: v.to_vec(),
                })
            })
            .collect()
    }
}

/// One tensor the probe returned: a query, key or value projection of the new tokens, laid out
/// `[B, S, heads·D]` or `[B, heads, S, D]` (the layouts LookatAttention reads).
#[derive(Debug, Clone)]
pub struct Probed {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Probed {
    /// The D-float rows of head `h`, batch row after batch row, tokens in order.
    pub fn head(&self, h: usize, heads: usize, d: usize) -> Result<Vec<f32>> {
        let rows = |b: usize, s: usize, stride_b: usize, stride_s: usize, offset: usize| {
            let mut out = Vec::with_capacity(b * s * d);
            for bi in 0..b {
                for si in 0..s {
                    out.extend_from_slice(
                        &self.data[bi * stride_b + si * stride_s + offset..][..d],
                    );
                }
            }
            out
        };
        match self.shape[..] {
            [b, s, e] if e == heads * d => Ok(rows(b, s, s * e, e, h * d)),
            [b, hh, s, dd] if hh == heads && dd == d => Ok(rows(b, s, hh * s * d, d, h * s * d)),
            _ => bail!(
                "tensor '{}' of the original model has shape {:?}, not [B, S, {heads}*{d}] or \
                 [B, {heads}, S, {d}]: --original must be the model that was given to lookat-rewrite",
                self.name,
                self.shape
            ),
        }
    }
}

/// Checks that `original` computes every tensor the rewritten model's LookatAttention nodes read
/// (query, key, value), so that a wrong `--original` fails before any work.
pub fn check_original(original: &ModelProto, path: &Path, layers: &[LookatLayer]) -> Result<()> {
    let graph = original
        .graph
        .as_ref()
        .with_context(|| format!("the original model '{}' has no graph", path.display()))?;
    let known: HashSet<&str> = graph
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(String::as_str))
        .chain(graph.input.iter().map(|i| i.name.as_str()))
        .collect();
    for l in layers {
        for t in [&l.query_tensor, &l.key_tensor, &l.value_tensor] {
            if !known.contains(t.as_str()) {
                bail!(
                    "the original model '{}' does not compute tensor '{t}', which the rewritten \
                     model's LookatAttention node '{}' reads: --original must be the model that was \
                     given to lookat-rewrite",
                    path.display(),
                    l.node
                );
            }
        }
    }
    Ok(())
}

/// What the original model can be fed: its vocabulary size and, for models with a learned
/// position table (GPT-2), the number of positions. Read from the embedding `Gather`s of the
/// `input_ids` / `position_ids` graph inputs; `None` where the graph does not say (e.g. rotary
/// position embeddings have no table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModelLimits {
    pub vocab: Option<usize>,
    pub positions: Option<usize>,
}

impl ModelLimits {
    pub fn read(model: &ModelProto) -> ModelLimits {
        let Some(graph) = model.graph.as_ref() else {
            return ModelLimits::default();
        };
        // The ids may pass through a Reshape or Cast (dynamo's `view`) before the lookup.
        let table_rows = |ids: &str| {
            let mut frontier = vec![ids.to_string()];
            for _ in 0..4 {
                let mut next = vec![];
                for t in &frontier {
                    for n in graph.node.iter().filter(|n| n.input.contains(t)) {
                        let table = graph
                            .initializer
                            .iter()
                            .find(|init| Some(&init.name) == n.input.first());
                        match (n.op_type.as_str(), table) {
                            ("Gather", Some(table))
                                if n.input.get(1) == Some(t) && table.dims.len() == 2 =>
                            {
                                return Some(table.dims[0].max(0) as usize);
                            }
                            ("Reshape" | "Cast" | "Unsqueeze" | "Squeeze" | "Flatten", _)
                                if n.input.first() == Some(t) =>
                            {
                                next.extend(n.output.iter().cloned())
                            }
                            _ => {}
                        }
                    }
                }
                frontier = next;
            }
            None
        };
        ModelLimits {
            vocab: table_rows("input_ids"),
            positions: table_rows("position_ids"),
        }
    }

    /// Fails, naming the limit, when `tokens` hold an id beyond the vocabulary or a window of
    /// `window` tokens would run past the position table.
    pub fn check(&self, path: &Path, tokens: &[u32], window: usize) -> Result<()> {
        if let (Some(vocab), Some(&max)) = (self.vocab, tokens.iter().max()) {
            if max as usize >= vocab {
                bail!(
                    "the tokenizer produced token id {max}, but the model '{}' has a vocabulary of \
                     {vocab}: use the model's own tokenizer (--tokenizer tokenizer.json or --token-ids)",
                    path.display()
                );
            }
        }
        if let Some(positions) = self.positions {
            if window > positions {
                bail!(
                    "--window {window} exceeds the {positions} positions of the model '{}'",
                    path.display()
                );
            }
        }
        Ok(())
    }
}

/// What calibration collects from the original model: a reservoir of keys per (layer, kv head)
/// and, for layers with key/query transforms (every layer with `--budget`), a reservoir of the
/// queries that read each kv head (all its query heads; their second moment weights the key
/// quantization error).
pub struct Collected {
    pub keys: Vec<Vec<Reservoir>>,
    /// `queries[layer]` is empty for layers whose queries were not wanted.
    pub queries: Vec<Vec<Reservoir>>,
}

impl Collected {
    /// Little-endian: per layer, the key and query reservoirs (count, then per reservoir: dim,
    /// seen, vectors, floats).
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![];
        let mut put = |v: u64| out.extend_from_slice(&v.to_le_bytes());
        put(self.keys.len() as u64);
        for part in self.keys.iter().chain(&self.queries) {
            put(part.len() as u64);
            for r in part {
                put(r.dim as u64);
                put(r.seen);
                put(r.len() as u64);
            }
        }
        for part in self.keys.iter().chain(&self.queries) {
            for r in part {
                out.extend(r.data.iter().flat_map(|x| x.to_le_bytes()));
            }
        }
        out
    }

    fn from_bytes(bytes: &[u8]) -> Option<Collected> {
        struct Reader<'a>(&'a [u8]);
        impl<'a> Reader<'a> {
            fn take(&mut self, n: usize) -> Option<&'a [u8]> {
                if n > self.0.len() {
                    return None;
                }
                let (head, rest) = self.0.split_at(n);
                self.0 = rest;
                Some(head)
            }
            fn u64(&mut self) -> Option<u64> {
                Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
            }
        }
        let mut r = Reader(bytes);
        let layers = r.u64()? as usize;
        let mut shapes = vec![];
        for _ in 0..2 * layers {
            let n = r.u64()? as usize;
            let mut part = vec![];
            for _ in 0..n {
                part.push((r.u64()? as usize, r.u64()?, r.u64()? as usize));
            }
            shapes.push(part);
        }
        let mut parts = vec![];
        for part in shapes {
            let mut rs = vec![];
            for (dim, seen, len) in part {
                let raw = r.take(dim.checked_mul(len)?.checked_mul(4)?)?;
                let mut res = Reservoir::new(len, dim, 0);
                res.data = raw
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                res.seen = seen;
                rs.push(res);
            }
            parts.push(rs);
        }
        if !r.0.is_empty() {
            return None;
        }
        let queries = parts.split_off(layers);
        Some(Collected {
            keys: parts,
            queries,
        })
    }
}

/// A directory of collected keys, so that calibrations that differ only in what they do with the
/// keys (m, K, transforms, grids) share one set of forward passes. An entry is named by a hash of
/// everything collection depends on: the original model file (path, size, modification time), the
/// tokens, the window, the reservoir size, the seed and the tensors collected.
pub struct KeysCache {
    path: PathBuf,
}

impl KeysCache {
    pub fn new(
        dir: &Path,
        original: &Path,
        layers: &[LookatLayer],
        tokens: &[u32],
        opts: &CollectOptions,
    ) -> Result<KeysCache> {
        use sha2::{Digest, Sha256};
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the keys cache '{}'", dir.display()))?;
        let meta = std::fs::metadata(original)?;
        let mut h = Sha256::new();
        h.update(original.canonicalize()?.to_string_lossy().as_bytes());
        h.update(meta.len().to_le_bytes());
        if let Ok(t) = meta.modified()?.duration_since(std::time::UNIX_EPOCH) {
            h.update(t.as_nanos().to_le_bytes());
        }
        for t in tokens {
            h.update(t.to_le_bytes());
        }
        for v in [opts.window, opts.reservoir, opts.seed as usize] {
            h.update((v as u64).to_le_bytes());
        }
        for l in layers {
            h.update(l.key_tensor.as_bytes());
            h.update([0, u8::from(opts.wants_queries(l))]);
            h.update(l.query_tensor.as_bytes());
            h.update((l.heads() as u64).to_le_bytes());
        }
        let name: String = h
            .finalize()
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(KeysCache {
            path: dir.join(format!("keys-{name}.bin")),
        })
    }

    pub fn load(&self) -> Option<Collected> {
        Collected::from_bytes(&std::fs::read(&self.path).ok()?)
    }

    /// Stores `c` (written to a temporary file, then renamed).
    pub fn store(&self, c: &Collected) -> Result<()> {
        let tmp = self
            .path
            .with_extension(format!("tmp-{}", std::process::id()));
        std::fs::write(&tmp, c.to_bytes())
            .with_context(|| format!("cannot write '{}'", tmp.display()))?;
        std::fs::rename(&tmp, &self.path)?;
        Ok(())
    }
}

/// Queries kept per kv head for the query statistics.
const QUERY_RESERVOIR: usize = 8192;

/// Keys (and, where needed, queries) of every (layer, kv head). `original` was loaded from
/// `path`.
pub fn collect_keys(
    env: &Environment,
    original: ModelProto,
    path: &Path,
    layers: &[LookatLayer],
    tokens: &[u32],
    opts: &CollectOptions,
    progress: &indicatif::ProgressBar,
) -> Result<Collected> {
    if opts.window == 0 || opts.batch == 0 {
        bail!("--window and --batch must be positive");
    }
    if tokens.len() < opts.window {
        bail!(
            "{} calibration tokens are fewer than one window of {}",
            tokens.len(),
            opts.window
        );
    }
    ModelLimits::read(&original).check(path, tokens, opts.window)?;
    // Probe outputs: every layer's key tensor, then the query tensors of the layers that want them.
    let mut names: Vec<String> = layers.iter().map(|l| l.key_tensor.clone()).collect();
    let with_queries: Vec<usize> = (0..layers.len())
        .filter(|&l| opts.wants_queries(&layers[l]))
        .collect();
    names.extend(with_queries.iter().map(|&l| layers[l].query_tensor.clone()));
    let mut probe = Probe::from_model(env, original, path, &names, opts.threads)?;
    let reservoirs = |capacity: usize, salt: u64, needed: &dyn Fn(usize) -> bool| {
        layers
            .iter()
            .enumerate()
            .map(|(li, l)| {
                if !needed(li) {
                    return vec![];
                }
                (0..l.heads())
                    .map(|h| {
                        Reservoir::new(
                            capacity,
                            l.head_dim(),
                            job_seed(opts.seed, &[li as u64, h as u64, salt]),
                        )
                    })
                    .collect()
            })
            .collect::<Vec<Vec<Reservoir>>>()
    };
    let mut keys = reservoirs(opts.reservoir, 0xC011, &|_| true);
    let mut queries = reservoirs(QUERY_RESERVOIR, 0x9E7, &|l| with_queries.contains(&l));

    let (w, windows) = (opts.window, tokens.len() / opts.window);
    progress.set_length(windows as u64);
    for first in (0..windows).step_by(opts.batch) {
        let b = opts.batch.min(windows - first);
        let outputs = probe.run(&tokens[first * w..(first + b) * w], b, w)?;
        for ((li, l), out) in layers.iter().enumerate().zip(&outputs) {
            let d = l.head_dim();
            for (h, reservoir) in keys[li].iter_mut().enumerate() {
                for key in out.head(h, l.heads(), d)?.chunks_exact(d) {
                    reservoir.offer(key);
                }
            }
        }
        for (&li, out) in with_queries.iter().zip(&outputs[layers.len()..]) {
            let (l, d) = (&layers[li], layers[li].head_dim());
            let group = l.query_heads / l.heads();
            for qh in 0..l.query_heads {
                for q in out.head(qh, l.query_heads, d)?.chunks_exact(d) {
                    queries[li][qh / group].offer(q);
                }
            }
        }
        progress.inc(b as u64);
    }
    Ok(Collected { keys, queries })
}
