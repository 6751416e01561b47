//! Key collection: run the original model in ONNX Runtime on token windows, pruned to the key
//! projections the LookatAttention nodes will read, and keep a seeded reservoir sample of at most
//! N keys per (layer, head) so memory stays bounded whatever the corpus size.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use onnx_protobuf::{Message, ValueInfoProto};
use ort::environment::Environment;
use ort::session::SessionInputValue;
use ort::value::Tensor;

use crate::kmeans::{job_seed, Rng};
use crate::model::LookatLayer;

/// Algorithm R over key vectors of `dim` floats.
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

/// Removes a temporary file when dropped.
struct TempFile(PathBuf);
impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub struct CollectOptions {
    pub window: usize,
    pub batch: usize,
    pub reservoir: usize,
    pub seed: u64,
    pub threads: usize,
}

/// The original model pruned to some intermediate tensors, fed token windows.
pub struct Probe {
    session: ort::session::Session,
    inputs: Vec<(String, Vec<i64>)>,
    outputs: Vec<String>,
}

impl Probe {
    /// Prunes `original` to `outputs` (no logits, no later layers' work) and opens it.
    pub fn new(
        env: &Environment,
        original: &Path,
        outputs: &[String],
        threads: usize,
    ) -> Result<Probe> {
        let mut model = lookat_rewrite::io::load(original)?;
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
        lookat_rewrite::prune_to_outputs(graph);
        // Next to the original, so that its external data resolves.
        let dir = original
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = TempFile(dir.join(format!(".lookat-probe-{}.onnx", std::process::id())));
        std::fs::write(&tmp.0, model.write_to_bytes()?)
            .with_context(|| format!("cannot write '{}'", tmp.0.display()))?;
        let session = crate::runtime::session(env, &tmp.0, None, threads)?;
        drop(tmp);
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
    /// cache; returns each output tensor's values, in the order given to [`Probe::new`].
    pub fn run(&mut self, ids: &[u32], b: usize, w: usize) -> Result<Vec<Vec<f32>>> {
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
                let (_, v) = outputs[name.as_str()]
                    .try_extract_tensor::<f32>()
                    .with_context(|| format!("tensor '{name}'"))?;
                Ok(v.to_vec())
            })
            .collect()
    }
}

/// Keys of every (layer, head): `result[layer][head]`.
pub fn collect_keys(
    env: &Environment,
    original: &Path,
    layers: &[LookatLayer],
    tokens: &[u32],
    opts: &CollectOptions,
    progress: &indicatif::ProgressBar,
) -> Result<Vec<Vec<Reservoir>>> {
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
    let names: Vec<String> = layers.iter().map(|l| l.key_tensor.clone()).collect();
    let mut probe = Probe::new(env, original, &names, opts.threads)?;
    let mut reservoirs: Vec<Vec<Reservoir>> = layers
        .iter()
        .enumerate()
        .map(|(li, l)| {
            (0..l.heads)
                .map(|h| {
                    Reservoir::new(
                        opts.reservoir,
                        l.head_dim(),
                        job_seed(opts.seed, &[li as u64, h as u64, 0xC011]),
                    )
                })
                .collect()
        })
        .collect();

    let (w, windows) = (opts.window, tokens.len() / opts.window);
    progress.set_length(windows as u64);
    for first in (0..windows).step_by(opts.batch) {
        let b = opts.batch.min(windows - first);
        let outputs = probe.run(&tokens[first * w..(first + b) * w], b, w)?;
        for ((li, l), keys) in layers.iter().enumerate().zip(&outputs) {
            let (d, e) = (l.head_dim(), l.heads * l.head_dim());
            if keys.len() != b * w * e {
                bail!(
                    "key tensor '{}' holds {} values, expected {}x{}x{}",
                    l.key_tensor,
                    keys.len(),
                    b,
                    w,
                    e
                );
            }
            for token in keys.chunks_exact(e) {
                for (h, key) in token.chunks_exact(d).enumerate() {
                    reservoirs[li][h].offer(key);
                }
            }
        }
        progress.inc(b as u64);
    }
    Ok(reservoirs)
}
