//! Token-by-token decoding through a GPT-2 export's cache I/O (`past_key_values.*` in,
//! `present.*` out), for any cache element type (float32/float16 values, uint8 key codes).
//! Exports without a cache are run on the whole sequence at every step.

use std::borrow::Cow;
use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor, TensorElementType};

pub struct Decoder {
    session: Session,
    /// (input name, element type, dims) of each cache input.
    cache_inputs: Vec<(String, TensorElementType, Vec<i64>)>,
    other_inputs: Vec<String>,
    past: HashMap<String, DynValue>,
    history: Vec<i64>,
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
    pub fn new(session: Session) -> Result<Decoder> {
        let mut cache_inputs = vec![];
        let mut other_inputs = vec![];
        for o in session.inputs() {
            if o.name().starts_with("past_key_values.") {
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
        let mut d = Decoder {
            session,
            cache_inputs,
            other_inputs,
            past: HashMap::new(),
            history: vec![],
        };
        d.reset()?;
        Ok(d)
    }

    pub fn reset(&mut self) -> Result<()> {
        self.history.clear();
        self.past.clear();
        for (name, ty, dims) in &self.cache_inputs {
            self.past.insert(name.clone(), empty_cache(*ty, dims)?);
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
