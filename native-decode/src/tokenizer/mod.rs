//! Byte-level BPE tokenizer built from GGUF metadata (`tokenizer.ggml.*`) or an HF `tokenizer.json`.
//!
//! Special tokens (GGUF token type 3 = control, 4 = user-defined; HF `added_tokens`) are recognized in the input
//! text and never split.

mod bpe;
pub mod byte_level;
mod hf;
pub mod pretokenize;
pub mod stream;

use std::collections::HashMap;
use std::sync::Mutex;

use aho_corasick::{AhoCorasick, MatchKind};

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, Value};
use bpe::Merges;
use pretokenize::{PreTokenizer, PreTokenizerKind};

/// Longest pre-tokenized piece whose BPE result is cached, in bytes.
const MAX_CACHED_PIECE: usize = 64;
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

#[derive(Debug)]
pub struct Tokenizer {
    tokens: Vec<String>,
    vocab: HashMap<String, u32>,
    merges: Merges,
    byte_to_char: [char; 256],
    char_to_byte: HashMap<char, u8>,
    /// Finds special token texts in one pass (earliest, then longest); pattern i is `special_ids[i]`.
    specials: Option<AhoCorasick>,
    special_ids: Vec<u32>,
    is_special: Vec<bool>,
    /// The most text bytes one token stands for.
    max_token_bytes: usize,
    pre: PreTokenizer,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub add_bos: bool,
    pub chat_template: Option<String>,
    cache: Mutex<HashMap<String, Vec<u32>>>,
}

/// The raw pieces a tokenizer is built from.
#[derive(Debug, Default, Clone)]
pub struct TokenizerParts {
    pub tokens: Vec<String>,
    pub merges: Vec<(String, String)>,
    /// Ids of tokens matched literally in text.
    pub special_ids: Vec<u32>,
    pub pre: Option<PreTokenizerKind>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub add_bos: bool,
    pub chat_template: Option<String>,
}

fn merge_pair(s: &str) -> Result<(String, String)> {
    let (a, b) = s
        .split_once(' ')
        .ok_or_else(|| Error::Tokenizer(format!("merge `{s}` has no space")))?;
    Ok((a.to_string(), b.to_string()))
}

impl Tokenizer {
    pub fn from_parts(p: TokenizerParts) -> Result<Self> {
        let vocab: HashMap<String, u32> = p
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let mut merges = Merges::default();
        for (rank, (a, b)) in p.merges.iter().enumerate() {
            let id = |s: &str| vocab.get(s).copied();
            if let (Some(l), Some(r), Some(m)) = (id(a), id(b), id(&format!("{a}{b}"))) {
                merges.insert(l, r, rank as u32, m);
            }
        }
        let byte_to_char = byte_level::bytes_to_unicode();
        let mut is_special = vec![false; p.tokens.len()];
        let mut specials = Vec::new();
        for &id in &p.special_ids {
            let text = p
                .tokens
                .get(id as usize)
                .ok_or_else(|| Error::Tokenizer(format!("special token id {id} out of range")))?;
            is_special[id as usize] = true;
            if !text.is_empty() {
                specials.push((text.clone(), id));
            }
        }
        let special_ids: Vec<u32> = specials.iter().map(|s| s.1).collect();
        let specials = if specials.is_empty() {
            None
        } else {
            Some(
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(specials.iter().map(|s| s.0.as_str()))
                    .map_err(|e| Error::Tokenizer(format!("special tokens: {e}")))?,
            )
        };
        let check = |id: Option<u32>, what: &str| match id {
            Some(i) if i as usize >= p.tokens.len() => {
                Err(Error::Tokenizer(format!("{what} id {i} out of range")))
            }
            _ => Ok(id),
        };
        let mut t = Self {
            bos_id: check(p.bos_id, "BOS")?,
            eos_id: check(p.eos_id, "EOS")?,
            add_bos: p.add_bos,
            chat_template: p.chat_template,
            pre: PreTokenizer::new(p.pre.unwrap_or(PreTokenizerKind::Gpt2))?,
            tokens: p.tokens,
            vocab,
            merges,
            byte_to_char,
            char_to_byte: byte_level::unicode_to_bytes(),
            specials,
            special_ids,
            is_special,
            max_token_bytes: 1,
            cache: Mutex::new(HashMap::new()),
        };
        t.max_token_bytes = (0..t.tokens.len() as u32)
            .map(|id| t.token_bytes(id).len())
            .max()
            .unwrap_or(1)
            .max(1);
        Ok(t)
    }

    /// The most text bytes one token stands for: a text of `n` bytes encodes to at least `n / max_token_bytes()`
    /// tokens (every byte belongs to exactly one token).
    pub fn max_token_bytes(&self) -> usize {
        self.max_token_bytes
    }

    /// Reads `tokenizer.ggml.*` (model `gpt2` only).
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let model = file
            .metadata("tokenizer.ggml.model")
            .and_then(Value::as_str);
        if model != Some("gpt2") {
            return Err(Error::Tokenizer(format!(
                "unsupported tokenizer model {model:?} (only byte-level BPE `gpt2`)"
            )));
        }
        let strings = |key: &str| -> Result<Vec<String>> {
            let arr = file
                .metadata(key)
                .ok_or_else(|| Error::MissingKey(key.to_string()))?
                .as_array()
                .ok_or(Error::WrongType {
                    key: key.to_string(),
                    expected: "array",
                })?;
            arr.iter()
                .map(|v| {
                    v.as_str().map(str::to_string).ok_or(Error::WrongType {
                        key: key.to_string(),
                        expected: "array of strings",
                    })
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?
            .iter()
            .map(|s| merge_pair(s))
            .collect::<Result<Vec<_>>>()?;
        let special_ids = match file
            .metadata("tokenizer.ggml.token_type")
            .and_then(Value::as_array)
        {
            Some(types) => types
                .iter()
                .enumerate()
                .filter(|(_, t)| {
                    matches!(
                        t.as_i64(),
                        Some(TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED)
                    )
                })
                .map(|(i, _)| i as u32)
                .collect(),
            None => Vec::new(),
        };
        let id = |k: &str| {
            file.metadata(k)
                .and_then(Value::as_u64)
                .and_then(|v| u32::try_from(v).ok())
        };
        let pre = match file.metadata("tokenizer.ggml.pre").and_then(Value::as_str) {
            Some(name) => Some(PreTokenizerKind::from_name(name)?),
            None => None,
        };
        Self::from_parts(TokenizerParts {
            tokens,
            merges,
            special_ids,
            pre,
            bos_id: id("tokenizer.ggml.bos_token_id"),
            eos_id: id("tokenizer.ggml.eos_token_id"),
            add_bos: file
                .metadata("tokenizer.ggml.add_bos_token")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            chat_template: file
                .metadata("tokenizer.chat_template")
                .and_then(Value::as_str)
                .map(str::to_string),
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.is_special.get(id as usize).copied().unwrap_or(false)
    }

    /// The id of a token's exact vocabulary string.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.vocab.get(text).copied()
    }

    /// Encodes text, recognizing special tokens; adds BOS when the model asks for it and `add_special` is set.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if add_special && self.add_bos {
            ids.extend(self.bos_id);
        }
        // Special tokens: the earliest, the longest at a position; one pass over the text whatever their number
        // (a search per special token and occurrence was quadratic in the text).
        let mut done = 0;
        if let Some(specials) = &self.specials {
            for m in specials.find_iter(text) {
                self.encode_ordinary(&text[done..m.start()], &mut ids)?;
                ids.push(self.special_ids[m.pattern().as_usize()]);
                done = m.end();
            }
        }
        self.encode_ordinary(&text[done..], &mut ids)?;
        Ok(ids)
    }

    fn encode_ordinary(&self, text: &str, ids: &mut Vec<u32>) -> Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        let mut pieces = Vec::new();
        self.pre.split(text, &mut pieces)?;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        for piece in pieces {
            if let Some(hit) = cache.get(piece) {
                ids.extend_from_slice(hit);
                continue;
            }
            let mut symbols = Vec::with_capacity(piece.len());
            for b in piece.bytes() {
                let c = self.byte_to_char[b as usize];
                let mut buf = [0u8; 4];
                let id = self
                    .vocab
                    .get(&*c.encode_utf8(&mut buf))
                    .copied()
                    .ok_or_else(|| Error::Tokenizer(format!("byte {b:#04x} has no token")))?;
                symbols.push(id);
            }
            let merged = self.merges.apply(symbols);
            // Words repeat; long pieces (a hostile prompt's megabyte "word") would only fill memory.
            if cache.len() < 100_000 && piece.len() <= MAX_CACHED_PIECE {
                cache.insert(piece.to_string(), merged.clone());
            }
            ids.extend(merged);
        }
        Ok(())
    }

    /// The bytes a token stands for (special tokens: their text).
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let Some(t) = self.tokens.get(id as usize) else {
            return Vec::new();
        };
        if self.is_special(id) {
            return t.as_bytes().to_vec();
        }
        let mut out = Vec::with_capacity(t.len());
        for c in t.chars() {
            match self.char_to_byte.get(&c) {
                Some(&b) => out.push(b),
                None => {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        out
    }

    /// Decodes ids to text (invalid UTF-8 replaced), optionally leaving out special tokens.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            if skip_special && self.is_special(id) {
                continue;
            }
            bytes.extend(self.token_bytes(id));
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The token's vocabulary text, decoded to a string (used for `top_logprobs` keys).
    pub fn token_text(&self, id: u32) -> String {
        String::from_utf8_lossy(&self.token_bytes(id)).into_owned()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tiny tokenizer: all 256 byte tokens, a few merges and two special tokens.
    pub(crate) fn tiny() -> Tokenizer {
        let b2u = byte_level::bytes_to_unicode();
        let mut tokens: Vec<String> = vec![
            "<|endoftext|>".into(),
            "<|im_start|>".into(),
            "<|im_end|>".into(),
        ];
        tokens.extend(b2u.iter().map(|c| c.to_string()));
        let merges = vec![
            ("h", "e"),
            ("l", "l"),
            ("he", "ll"),
            ("Ġ", "w"),
            ("hell", "o"),
        ];
        for (a, b) in &merges {
            tokens.push(format!("{a}{b}"));
        }
        Tokenizer::from_parts(TokenizerParts {
            tokens,
            merges: merges
                .into_iter()
                .map(|(a, b)| (a.into(), b.into()))
                .collect(),
            special_ids: vec![0, 1, 2],
            pre: Some(PreTokenizerKind::SmolLm),
            bos_id: Some(1),
            eos_id: Some(2),
            add_bos: false,
            chat_template: None,
        })
        .unwrap()
    }

    #[test]
    fn merges_by_rank_and_round_trips() {
        let t = tiny();
        let ids = t.encode("hello world", true).unwrap();
        assert_eq!(t.token_text(ids[0]), "hello");
        assert_eq!(t.token_text(ids[1]), " w");
        assert_eq!(t.decode(&ids, false), "hello world");
    }

    #[test]
    fn specials_are_parsed_and_skippable() {
        let t = tiny();
        let ids = t.encode("<|im_start|>hi<|im_end|>", false).unwrap();
        assert_eq!(ids[0], 1);
        assert_eq!(*ids.last().unwrap(), 2);
        assert_eq!(t.decode(&ids, true), "hi");
        assert_eq!(t.decode(&ids, false), "<|im_start|>hi<|im_end|>");
    }

    #[test]
    fn specials_match_earliest_then_longest() {
        let tokens: Vec<String> = ["<a>", "<a>b", "b<", "x"]
            .into_iter()
            .map(String::from)
            .chain(byte_level::bytes_to_unicode().iter().map(|c| c.to_string()))
            .collect();
        let t = Tokenizer::from_parts(TokenizerParts {
            tokens,
            special_ids: vec![0, 1, 2],
            ..Default::default()
        })
        .unwrap();
        // "<a>b" beats "<a>" at the same place; "b<" starts later than "<a>b" and loses.
        let ids = t.encode("x<a>b<a>x<a>", false).unwrap();
        let x = t.token_id("x").unwrap();
        assert_eq!(ids, vec![x, 1, 0, x, 0]);
        assert_eq!(t.decode(&ids, false), "x<a>b<a>x<a>");
        let many = "<a>".repeat(10_000);
        assert_eq!(t.encode(&many, false).unwrap(), vec![0; 10_000]);
    }

    #[test]
    fn max_token_bytes_bounds_the_token_count() {
        let t = tiny();
        assert_eq!(t.max_token_bytes(), "<|endoftext|>".len());
        for s in ["hello world", "<|im_end|><|im_end|>", "Café 😀 日本語"] {
            assert!(t.encode(s, false).unwrap().len() >= s.len() / t.max_token_bytes());
        }
    }

    #[test]
    fn any_unicode_round_trips() {
        let t = tiny();
        let s = "Café 😀 日本語\t\n 12";
        assert_eq!(t.decode(&t.encode(s, false).unwrap(), false), s);
    }
}
