//! Turning text into the token ids a model was trained on: GPT-2's byte-level BPE (tiktoken's
//! `r50k_base`, embedded: works offline), any Hugging Face `tokenizer.json` (the `tokenizers`
//! crate), or ids given directly (`--token-ids`).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use tiktoken_rs::CoreBPE;

/// GPT-2's end-of-text token.
pub const END_OF_TEXT: u32 = 50256;

/// A tokenizer the tools can use.
pub enum Tokenizer {
    /// GPT-2's BPE, embedded.
    Gpt2(Box<CoreBPE>),
    /// A Hugging Face `tokenizer.json`.
    HuggingFace {
        tokenizer: Box<tokenizers::Tokenizer>,
        path: PathBuf,
    },
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

impl Tokenizer {
    pub fn gpt2() -> Result<Tokenizer> {
        Ok(Tokenizer::Gpt2(Box::new(
            tiktoken_rs::r50k_base().context("load the GPT-2 (r50k_base) tokenizer")?,
        )))
    }

    /// A Hugging Face `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Tokenizer> {
        let tokenizer = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| anyhow!("cannot load the tokenizer '{}': {e}", path.display()))?;
        Ok(Tokenizer::HuggingFace {
            tokenizer: Box::new(tokenizer),
            path: path.to_path_buf(),
        })
    }

    /// `path` when given, else GPT-2's.
    pub fn load(path: Option<&Path>) -> Result<Tokenizer> {
        match path {
            Some(p) => Tokenizer::from_file(p),
            None => Tokenizer::gpt2(),
        }
    }

    /// For messages and metadata: "gpt2 (r50k_base)" or the file.
    pub fn name(&self) -> String {
        match self {
            Tokenizer::Gpt2(_) => "gpt2 (r50k_base, embedded)".into(),
            Tokenizer::HuggingFace { path, .. } => path.display().to_string(),
        }
    }

    /// Ids of plain text; special-token strings in the text are encoded as text, and no
    /// begin/end-of-sequence tokens are added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Tokenizer::Gpt2(bpe) => Ok(bpe.encode_ordinary(text)),
            Tokenizer::HuggingFace { tokenizer, path } => Ok(tokenizer
                .encode(text, false)
                .map_err(|e| anyhow!("tokenizer '{}' failed: {e}", path.display()))?
                .get_ids()
                .to_vec()),
        }
    }

    /// Text of `ids`; a sequence that splits a UTF-8 character is decoded lossily.
    pub fn decode(&self, ids: &[u32]) -> String {
        match self {
            Tokenizer::Gpt2(bpe) => match bpe.decode_bytes(ids) {
                Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                Err(_) => String::from("<invalid token>"),
            },
            Tokenizer::HuggingFace { tokenizer, .. } => tokenizer
                .decode(ids, false)
                .unwrap_or_else(|_| String::from("<invalid token>")),
        }
    }

    /// The token that separates documents, when the tokenizer has one: GPT-2's `<|endoftext|>`,
    /// or the first of `<|endoftext|>`, `</s>`, `<|im_end|>`, `<eos>` in a tokenizer.json.
    pub fn separator(&self) -> Option<u32> {
        match self {
            Tokenizer::Gpt2(_) => Some(END_OF_TEXT),
            Tokenizer::HuggingFace { tokenizer, .. } => {
                ["<|endoftext|>", "</s>", "<|im_end|>", "<eos>"]
                    .iter()
                    .find_map(|t| tokenizer.token_to_id(t))
            }
        }
    }
}

/// Token ids from a file: integers separated by whitespace or commas (a `--token-ids` file).
pub fn read_token_ids(path: &Path) -> Result<Vec<u32>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read token ids '{}'", path.display()))?;
    let ids = text
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .enumerate()
        .map(|(i, s)| {
            s.parse::<u32>().with_context(|| {
                format!(
                    "'{}': entry {i} ('{s}') is not a token id (non-negative integer)",
                    path.display()
                )
            })
        })
        .collect::<Result<Vec<u32>>>()?;
    if ids.is_empty() {
        bail!("'{}' holds no token ids", path.display());
    }
    Ok(ids)
}
