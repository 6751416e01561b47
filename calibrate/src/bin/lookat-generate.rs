use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use lookat_calibrate::collect::ModelLimits;
use lookat_calibrate::decode::{argmax, teacher_forced_chunked, Decoder};
use lookat_calibrate::runtime;
use lookat_calibrate::tokenizer::{self, Tokenizer};

/// Greedy generation with the original and the calibrated model side by side, then
/// teacher-forced decoding of held-out text through the cache path of both: perplexity,
/// next-token agreement and KL between their next-token distributions.
#[derive(Parser)]
#[command(name = "lookat-generate", version)]
struct Cli {
    /// The original exported model.
    #[arg(long)]
    original: PathBuf,
    /// The calibrated LookatAttention model.
    #[arg(long)]
    model: PathBuf,
    /// Prompt text for greedy generation.
    #[arg(long, default_value = "The Python interpreter")]
    prompt: String,
    /// Tokens to generate.
    #[arg(long, default_value_t = 32)]
    new_tokens: usize,
    /// The model's tokenizer (a Hugging Face tokenizer.json); default: GPT-2's BPE.
    #[arg(long, value_name = "tokenizer.json")]
    tokenizer: Option<PathBuf>,
    /// Held-out text for the teacher-forced comparison (skipped when absent).
    #[arg(long, conflicts_with = "eval_token_ids")]
    eval_text: Option<PathBuf>,
    /// Held-out token ids (integers separated by spaces, newlines or commas) instead of
    /// --eval-text.
    #[arg(long, value_name = "FILE")]
    eval_token_ids: Option<PathBuf>,
    /// Tokens of held-out text to decode (from an empty cache).
    #[arg(long, default_value_t = 512)]
    eval_tokens: usize,
    /// Held-out tokens fed per call through the cache: 1 decodes token by token; more is a
    /// chunked prefill, much faster on long texts and equal up to float summation order (not for
    /// models rewritten with exact_current).
    #[arg(long, default_value_t = 1)]
    eval_chunk: usize,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// libonnxruntime.so (default: ORT_DYLIB_PATH, else the one in python3's onnxruntime package).
    #[arg(long)]
    ort_lib: Option<PathBuf>,
    /// The LookatAttention plugin (default: LOOKAT_OP_LIB, or next to this program).
    #[arg(long)]
    op_lib: Option<PathBuf>,
}

fn main() -> ExitCode {
    lookat_rewrite::cli::main::<Cli>("lookat-generate", |cli| run(&cli))
}

fn run(cli: &Cli) -> Result<()> {
    let env = runtime::init(cli.ort_lib.as_deref())?;
    let plugin = runtime::plugin_path(cli.op_lib.as_deref())?;
    let tok = Tokenizer::load(cli.tokenizer.as_deref())?;
    let prompt = tok.encode(&cli.prompt)?;
    if prompt.is_empty() {
        bail!("the prompt is empty");
    }
    // The longest sequence either phase decodes: the size of shared cache buffers, if the model
    // has them (lookat-rewrite --shared-cache).
    let max_length = (prompt.len() + cli.new_tokens).max(cli.eval_tokens + 1);
    let mut original = Decoder::new(runtime::session(env, &cli.original, None, cli.threads)?)?;
    let mut lookat = Decoder::with_max_length(
        runtime::session(env, &cli.model, Some(&plugin), cli.threads)?,
        Some(max_length),
    )?;
    let limits = ModelLimits::read(&lookat_onnx::io::load(&cli.original)?);
    limits.check(&cli.original, &prompt, prompt.len() + cli.new_tokens)?;

    let mut texts = vec![];
    for dec in [&mut original, &mut lookat] {
        let mut logits = dec.step(&prompt)?;
        let mut out = vec![];
        for _ in 0..cli.new_tokens {
            let next = argmax(logits.last().map(Vec::as_slice).unwrap_or(&[]));
            out.push(next);
            logits = dec.step(&[next])?;
        }
        texts.push(out);
    }
    let same = texts[0]
        .iter()
        .zip(&texts[1])
        .take_while(|(a, b)| a == b)
        .count();
    println!("prompt:   {:?}", cli.prompt);
    println!("original: {:?}", tok.decode(&texts[0]));
    println!("lookat:   {:?}", tok.decode(&texts[1]));
    println!(
        "greedy continuations agree on the first {same} of {} tokens",
        cli.new_tokens
    );

    let (mut ids, source) = match (&cli.eval_text, &cli.eval_token_ids) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read '{}'", path.display()))?;
            (tok.encode(&text)?, path)
        }
        (None, Some(path)) => (tokenizer::read_token_ids(path)?, path),
        (None, None) => return Ok(()),
    };
    ids.truncate(cli.eval_tokens + 1);
    if ids.len() < 2 {
        bail!("held-out '{}' is too short", source.display());
    }
    limits.check(&cli.original, &ids, ids.len())?;
    let path = source;
    let c = teacher_forced_chunked(&mut original, &mut lookat, &ids, cli.eval_chunk)?;
    println!(
        "held-out '{}', {} tokens from an empty cache ({} per call): perplexity original {:.2}, \
         lookat {:.2}; next-token top-1 agreement {:.4}; mean KL(original || lookat) {:.5} nats",
        path.display(),
        c.steps,
        cli.eval_chunk,
        c.ppl_original,
        c.ppl_lookat,
        c.top1_agreement,
        c.kl
    );
    Ok(())
}
