//! Token-by-token decoding through an export's cache I/O (`past_key_values.*` in, `present.*`
//! out), for any cache element type (float32/float16 values, uint8 key codes). Exports without a
//! cache are run on the whole sequence at every step.
//!
//! A model rewritten with shared cache buffers (`lookat-rewrite --shared-cache`: an input
//! `past_sequence_length`, cache I/O of `max_sequence_length` rows) is driven through an
//! IOBinding: one buffer per code/value cache tensor, bound as both the past input and the
//! present output, so LookatAttention appends each step in place and nothing is copied.

use std::borrow::Cow;
use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use lookat_contract::naming;
use ort::memory::{Allocator, MemoryInfo};
use ort::session::IoBinding;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynTensor, DynValue, Tensor, TensorElementType};

pub struct Decoder {
    session: Session,
    /// (input name, element type, dims) of each cache input.
    cache_inputs: Vec<(String, TensorElementType, Vec<i64>)>,
    other_inputs: Vec<String>,
    past: HashMap<String, DynValue>,
    history: Vec<i64>,
    shared: Option<SharedBuffers>,
}

/// The IOBinding of a shared-buffer model and its buffers (`max_length` rows each).
struct SharedBuffers {
    binding: IoBinding,
    max_length: usize,
    /// Cache inputs bound once to their buffer (as past and present); the others (key windows)
    /// are rebound from the previous step's outputs.
    buffered: Vec<String>,
    buffers: Vec<DynTensor>,
}

fn present_name(past: &str) -> String {
    past.replacen("past_key_values.", "present.", 1)
}

fn empty_cache(ty: TensorElementType, dims: &[i64]) -> Result<DynValue> {
    let shape = [1usize, dims[1].max(0) as usize, 0, dims[3].max(0) as usize];
    Ok(match ty {
        TensorElementType::Float32 => Tensor::from_array((shape, Vec::<f32>::new()))?.into_dyn(),
        TensorElementType::Float16 => {
            Tensor::from_array((shape, Vec::<half::f16>::new()))?.into_dyn()
        }
        TensorElementType::Uint8 => Tensor::from_array((shape, Vec::<u8>::new()))?.into_dyn(),
        other => bail!("cache input of element type {other:?} is not supported"),
    })
}

impl Decoder {
    /// A decoder for `session`; a model with shared cache buffers needs [`Decoder::with_max_length`].
    pub fn new(session: Session) -> Result<Decoder> {
        Decoder::with_max_length(session, None)
    }

    /// A decoder whose sequences hold at most `max_length` tokens: the size of the shared
    /// buffers of a model that has them (required there), ignored otherwise.
    pub fn with_max_length(session: Session, max_length: Option<usize>) -> Result<Decoder> {
        let mut cache_inputs = vec![];
        let mut other_inputs = vec![];
        let mut shared_rows = false;
        for o in session.inputs() {
            if o.name() == naming::PAST_SEQUENCE_LENGTH {
                shared_rows = true;
            } else if o.name().starts_with("past_key_values.") {
                let dims = o
                    .dtype()
                    .tensor_shape()
                    .map(|s| s.to_vec())
                    .unwrap_or_default();
                let ty = o
                    .dtype()
                    .tensor_type()
                    .context("cache input is not a tensor")?;
                if dims.len() != 4 {
                    bail!("cache input '{}' is not 4-D", o.name());
                }
                cache_inputs.push((o.name().to_string(), ty, dims));
            } else {
                other_inputs.push(o.name().to_string());
            }
        }
        let shared = match (shared_rows, max_length) {
            (false, _) => None,
            (true, None) => bail!(
                "the model has shared cache buffers (input '{}'): give the decoder a maximum length",
                naming::PAST_SEQUENCE_LENGTH
            ),
            (true, Some(max_length)) => {
                // Code and value caches have max_sequence_length rows (symbolic: -1 here); the
                // key windows grow with the sequence, named 'past_window'.
                let buffered: Vec<String> = session
                    .inputs()
                    .iter()
                    .filter(|o| {
                        o.name().starts_with("past_key_values.")
                            && !o.name().ends_with(naming::WINDOW_SUFFIX)
                    })
                    .map(|o| o.name().to_string())
                    .collect();
                Some(SharedBuffers {
                    binding: session.create_binding()?,
                    max_length,
                    buffered,
                    buffers: vec![],
                })
            }
        };
        let mut d = Decoder {
            session,
            cache_inputs,
            other_inputs,
            past: HashMap::new(),
            history: vec![],
            shared,
        };
        d.reset()?;
        Ok(d)
    }

    pub fn reset(&mut self) -> Result<()> {
        self.history.clear();
        self.past.clear();
        if let Some(shared) = &mut self.shared {
            shared.binding.clear();
            shared.buffers.clear();
        }
        for (name, ty, dims) in &self.cache_inputs {
            match &mut self.shared {
                Some(shared) if shared.buffered.contains(name) => {
                    let shape = [1, dims[1], shared.max_length as i64, dims[3]];
                    let mut buffer = DynTensor::new(&Allocator::default(), *ty, shape)?;
                    let bytes =
                        shape.iter().product::<i64>() as usize * ty.byte_size(1).unwrap_or(1);
                    // SAFETY: a freshly allocated CPU tensor of `bytes` bytes that nothing else
                    // references yet; zeros are a valid bit pattern of every cache element type.
                    unsafe { std::ptr::write_bytes(buffer.data_ptr_mut() as *mut u8, 0, bytes) };
                    shared.binding.bind_input(name.as_str(), &buffer)?;
                    shared
                        .binding
                        .bind_output(present_name(name), &mut buffer)?;
                    shared.buffers.push(buffer);
                }
                _ => {
                    self.past.insert(name.clone(), empty_cache(*ty, dims)?);
                }
            }
        }
        Ok(())
    }

    fn has_cache(&self) -> bool {
        !self.cache_inputs.is_empty()
    }

    /// Appends `ids` and returns the logits of every new position (`ids.len() × vocab`).
    pub fn step(&mut self, ids: &[u32]) -> Result<Vec<Vec<f32>>> {
        let past_len = if self.has_cache() {
            self.history.len()
        } else {
            0
        };
        self.history.extend(ids.iter().map(|&t| t as i64));
        let fed: Vec<i64> = if self.has_cache() {
            ids.iter().map(|&t| t as i64).collect()
        } else {
            self.history.clone()
        };
        let s = fed.len();
        let total = past_len + s;
        let mut feed: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = vec![];
        for name in &self.other_inputs {
            let v: SessionInputValue<'_> = match name.as_str() {
                "input_ids" => Tensor::from_array(([1, s], fed.clone()))?.into(),
                "attention_mask" => Tensor::from_array(([1, total], vec![1i64; total]))?.into(),
                "position_ids" => Tensor::from_array((
                    [1, s],
                    (past_len as i64..total as i64).collect::<Vec<_>>(),
                ))?
                .into(),
                other => bail!("model input '{other}' is not one a GPT-2 export has"),
            };
            feed.push((Cow::Owned(name.clone()), v));
        }
        if let Some(shared) = &mut self.shared {
            if total > shared.max_length {
                bail!(
                    "{total} tokens exceed the decoder's maximum length {}",
                    shared.max_length
                );
            }
            let past_len = Tensor::from_array(((), vec![past_len as i64]))?;
            feed.push((Cow::Borrowed(naming::PAST_SEQUENCE_LENGTH), past_len.into()));
            return self.step_shared(feed, s, ids.len());
        }
        for (name, _, _) in &self.cache_inputs {
            let v = self.past.remove(name).context("cache value missing")?;
            feed.push((Cow::Owned(name.clone()), v.into()));
        }
        let mut outputs = self.session.run(feed)?;
        let (shape, logits) = outputs["logits"].try_extract_tensor::<f32>()?;
        let vocab = *shape.last().context("logits have no shape")? as usize;
        let rows: Vec<Vec<f32>> = logits
            .chunks_exact(vocab)
            .skip(s - ids.len())
            .map(<[f32]>::to_vec)
            .collect();
        let present: Vec<String> = outputs
            .keys()
            .filter(|k| k.starts_with("present."))
            .map(str::to_string)
            .collect();
        for name in present {
            let v = outputs.remove(&name).context("present output vanished")?;
            self.past
                .insert(name.replacen("present.", "past_key_values.", 1), v);
        }
        Ok(rows)
    }
}

impl Decoder {
    /// One step through the IOBinding: the fed inputs and the rebound caches (key windows) are
    /// bound for this step, the shared buffers stay bound, and the logits and rebound presents
    /// come back.
    fn step_shared(
        &mut self,
        feed: Vec<(Cow<'_, str>, SessionInputValue<'_>)>,
        s: usize,
        new: usize,
    ) -> Result<Vec<Vec<f32>>> {
        let shared = self.shared.as_mut().context("no shared buffers")?;
        let cpu = MemoryInfo::default();
        for (name, value) in &feed {
            let SessionInputValue::Owned(v) = value else {
                bail!("input '{name}' is not an owned tensor");
            };
            shared.binding.bind_input(name.as_ref(), v)?;
        }
        let rebound: Vec<String> = self
            .cache_inputs
            .iter()
            .map(|(n, _, _)| n.clone())
            .filter(|n| !shared.buffered.contains(n))
            .collect();
        for name in &rebound {
            let v = self.past.remove(name).context("cache value missing")?;
            shared.binding.bind_input(name.as_str(), &v)?;
        }
        shared.binding.bind_output_to_device("logits", &cpu)?;
        for name in &rebound {
            shared
                .binding
                .bind_output_to_device(present_name(name), &cpu)?;
        }
        let mut outputs = self.session.run_binding(&shared.binding)?;
        let (shape, logits) = outputs["logits"].try_extract_tensor::<f32>()?;
        let vocab = *shape.last().context("logits have no shape")? as usize;
        let rows: Vec<Vec<f32>> = logits
            .chunks_exact(vocab)
            .skip(s - new)
            .map(<[f32]>::to_vec)
            .collect();
        for name in rebound {
            let v = outputs
                .remove(present_name(&name).as_str())
                .context("present output vanished")?;
            self.past.insert(name, v);
        }
        Ok(rows)
    }
}

pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

/// log-softmax of a logit row, in f64.
pub fn log_softmax(x: &[f32]) -> Vec<f64> {
    let max = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = x.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
    x.iter().map(|&v| v as f64 - lse).collect()
}

/// Original against LOOKAT on the same tokens, one decode step per token from an empty cache.
#[derive(Debug, Clone, Copy)]
pub struct Comparison {
    pub steps: usize,
    pub ppl_original: f64,
    pub ppl_lookat: f64,
    /// Fraction of steps whose top-1 next tokens agree.
    pub top1_agreement: f64,
    /// Mean KL(original ‖ lookat) of the next-token distributions, in nats.
    pub kl: f64,
}

/// Feeds `ids` token by token to both decoders (after a reset) and compares their predictions of
/// the next token.
pub fn teacher_forced(
    original: &mut Decoder,
    lookat: &mut Decoder,
    ids: &[u32],
) -> Result<Comparison> {
    teacher_forced_chunked(original, lookat, ids, 1)
}

/// [`teacher_forced`] feeding `chunk` tokens per call through the cache (a chunked prefill): every
/// position's logits come back, so a long text costs `len / chunk` calls. LookatAttention scores a
/// token by its position alone (codes, or exactly inside the key window), so chunks of any size
/// give the token-by-token result up to float summation order; `exact_current = 1` models are
/// the exception (their current tokens are scored exactly), so compare those with `chunk = 1`.
pub fn teacher_forced_chunked(
    original: &mut Decoder,
    lookat: &mut Decoder,
    ids: &[u32],
    chunk: usize,
) -> Result<Comparison> {
    if ids.len() < 2 {
        bail!("need at least two tokens to compare next-token predictions");
    }
    original.reset()?;
    lookat.reset()?;
    let (mut nll_o, mut nll_l, mut agree, mut kl) = (0f64, 0f64, 0usize, 0f64);
    let steps = ids.len() - 1;
    for first in (0..steps).step_by(chunk.max(1)) {
        let fed = &ids[first..(first + chunk.max(1)).min(steps)];
        let (rows_o, rows_l) = (original.step(fed)?, lookat.step(fed)?);
        for (i, (lo, ll)) in rows_o.iter().zip(&rows_l).enumerate() {
            let (po, pl) = (log_softmax(lo), log_softmax(ll));
            let target = ids[first + i + 1] as usize;
            nll_o -= po[target];
            nll_l -= pl[target];
            agree += usize::from(argmax(lo) == argmax(ll));
            kl += po
                .iter()
                .zip(&pl)
                .map(|(a, b)| a.exp() * (a - b))
                .sum::<f64>();
        }
    }
    let n = steps as f64;
    Ok(Comparison {
        steps,
        ppl_original: (nll_o / n).exp(),
        ppl_lookat: (nll_l / n).exp(),
        top1_agreement: agree as f64 / n,
        kl: kl / n,
    })
}
