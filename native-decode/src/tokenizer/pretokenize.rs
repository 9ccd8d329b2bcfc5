//! Pre-tokenizers: split text into pieces that BPE encodes independently (the regexes of llama.cpp / HF).

use fancy_regex::Regex;

use crate::error::{Error, Result};

const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer named by `tokenizer.ggml.pre`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizerKind {
    Gpt2,
    /// Every digit split off on its own, then GPT-2's regex (SmolLM).
    SmolLm,
    LlamaBpe,
    Qwen2,
}

impl PreTokenizerKind {
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "gpt2" | "default" => Self::Gpt2,
            "smollm" => Self::SmolLm,
            "llama-bpe" | "llama3" => Self::LlamaBpe,
            "qwen2" => Self::Qwen2,
            other => {
                return Err(Error::Tokenizer(format!(
                    "unsupported pre-tokenizer `{other}`"
                )))
            }
        })
    }
}

#[derive(Debug)]
pub struct PreTokenizer {
    kind: PreTokenizerKind,
    regex: Regex,
}

impl PreTokenizer {
    pub fn new(kind: PreTokenizerKind) -> Result<Self> {
        let pattern = match kind {
            PreTokenizerKind::Gpt2 | PreTokenizerKind::SmolLm => GPT2,
            PreTokenizerKind::LlamaBpe => LLAMA3,
            PreTokenizerKind::Qwen2 => QWEN2,
        };
        let regex = Regex::new(pattern)
            .map_err(|e| Error::Tokenizer(format!("pre-tokenizer regex: {e}")))?;
        Ok(Self { kind, regex })
    }

    /// Splits `text` into pieces, appending them to `out`.
    pub fn split<'a>(&self, text: &'a str, out: &mut Vec<&'a str>) -> Result<()> {
        if self.kind == PreTokenizerKind::SmolLm {
            // Digits(individual_digits): each digit is its own piece; runs of non-digits go to the regex.
            let mut start = 0;
            for (i, c) in text.char_indices() {
                if c.is_numeric() {
                    self.split_regex(&text[start..i], out)?;
                    out.push(&text[i..i + c.len_utf8()]);
                    start = i + c.len_utf8();
                }
            }
            return self.split_regex(&text[start..], out);
        }
        self.split_regex(text, out)
    }

    fn split_regex<'a>(&self, text: &'a str, out: &mut Vec<&'a str>) -> Result<()> {
        let mut last = 0;
        for m in self.regex.find_iter(text) {
            let m = m.map_err(|e| Error::Tokenizer(format!("pre-tokenizer: {e}")))?;
            if m.start() > last {
                out.push(&text[last..m.start()]);
            }
            if !m.as_str().is_empty() {
                out.push(m.as_str());
            }
            last = m.end();
        }
        if last < text.len() {
            out.push(&text[last..]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(kind: PreTokenizerKind, s: &str) -> Vec<String> {
        let p = PreTokenizer::new(kind).unwrap();
        let mut out = Vec::new();
        p.split(s, &mut out).unwrap();
        out.into_iter().map(String::from).collect()
    }

    #[test]
    fn gpt2_keeps_leading_space_and_trailing_whitespace_rule() {
        assert_eq!(
            split(PreTokenizerKind::Gpt2, "Hello world  x"),
            ["Hello", " world", " ", " x"]
        );
        assert_eq!(
            split(PreTokenizerKind::Gpt2, "it's 123"),
            ["it", "'s", " 123"]
        );
    }

    #[test]
    fn smollm_splits_digits() {
        assert_eq!(
            split(PreTokenizerKind::SmolLm, "a 123b"),
            ["a", " ", "1", "2", "3", "b"]
        );
    }

    #[test]
    fn llama3_groups_three_digits() {
        assert_eq!(split(PreTokenizerKind::LlamaBpe, "12345"), ["123", "45"]);
        assert_eq!(split(PreTokenizerKind::Qwen2, "123"), ["1", "2", "3"]);
    }
}
