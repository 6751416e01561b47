use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use lookat_calibrate::tokenizer::Tokenizer;

/// Token ids of text files, one line of space-separated ids per file: what --token-ids and
/// --eval-token-ids read, and what scripts use to tokenize with exactly the tools' tokenizers.
#[derive(Parser)]
#[command(name = "lookat-tokenize", version)]
struct Cli {
    /// Text files (UTF-8).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// A Hugging Face tokenizer.json; default: GPT-2's BPE.
    #[arg(long, value_name = "tokenizer.json")]
    tokenizer: Option<PathBuf>,
}

fn main() -> ExitCode {
    lookat_rewrite::cli::main::<Cli>("lookat-tokenize", |cli| run(&cli))
}

fn run(cli: &Cli) -> Result<()> {
    let tok = Tokenizer::load(cli.tokenizer.as_deref())?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for path in &cli.files {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read '{}'", path.display()))?;
        let ids: Vec<String> = tok.encode(&text)?.iter().map(u32::to_string).collect();
        writeln!(out, "{}", ids.join(" "))?;
    }
    Ok(())
}
