//! GPT-2's byte-level BPE (tiktoken's `r50k_base`, embedded in the crate: works offline).

use anyhow::{Context, Result};
use tiktoken_rs::CoreBPE;

/// GPT-2's end-of-text token.
pub const END_OF_TEXT: u32 = 50256;

pub fn gpt2() -> Result<CoreBPE> {
    tiktoken_rs::r50k_base().context("load the GPT-2 (r50k_base) tokenizer")
}

/// Tokens of plain text; special-token strings in the text are encoded as text.
pub fn encode(bpe: &CoreBPE, text: &str) -> Vec<u32> {
    bpe.encode_ordinary(text)
}

/// Text of `ids`; a token sequence that splits a UTF-8 character is decoded lossily.
pub fn decode(bpe: &CoreBPE, ids: &[u32]) -> String {
    match bpe.decode_bytes(ids) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => String::from("<invalid token>"),
    }
}
