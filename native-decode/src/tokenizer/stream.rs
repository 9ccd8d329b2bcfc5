//! Incremental detokenization: turns a stream of token ids into text deltas that are always valid UTF-8.

use crate::tokenizer::Tokenizer;

#[derive(Debug, Default)]
pub struct DetokStream {
    pending: Vec<u8>,
}

impl DetokStream {
    /// Adds one token and returns the newly completed text (possibly empty while a character is split).
    pub fn push(&mut self, tok: &Tokenizer, id: u32, skip_special: bool) -> String {
        if !(skip_special && tok.is_special(id)) {
            self.pending.extend(tok.token_bytes(id));
        }
        match std::str::from_utf8(&self.pending) {
            Ok(s) => {
                let s = s.to_string();
                self.pending.clear();
                s
            }
            Err(e) if e.error_len().is_none() => {
                // An incomplete character at the end: emit the valid prefix, keep the rest.
                let valid = e.valid_up_to();
                let s = String::from_utf8_lossy(&self.pending[..valid]).into_owned();
                self.pending.drain(..valid);
                s
            }
            Err(_) => {
                let s = String::from_utf8_lossy(&self.pending).into_owned();
                self.pending.clear();
                s
            }
        }
    }

    /// Whatever is left (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}
