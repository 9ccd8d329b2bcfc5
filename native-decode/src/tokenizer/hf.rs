//! Building a [`Tokenizer`] from an HF `tokenizer.json` (+ `tokenizer_config.json`).

use std::collections::HashMap;

use serde::Deserialize;

use super::pretokenize::PreTokenizerKind;
use super::{merge_pair, Tokenizer, TokenizerParts};
use crate::error::{Error, Result};

impl Tokenizer {
    /// Reads an HF `tokenizer.json` (BPE model) plus, optionally, `tokenizer_config.json` for BOS/EOS and the
    /// chat template.
    pub fn from_hf_json(tokenizer_json: &str, config_json: Option<&str>) -> Result<Self> {
        #[derive(Deserialize)]
        struct Added {
            id: u32,
            content: String,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Merge {
            Str(String),
            Pair(String, String),
        }
        #[derive(Deserialize)]
        struct Model {
            #[serde(rename = "type")]
            ty: Option<String>,
            vocab: HashMap<String, u32>,
            #[serde(default)]
            merges: Vec<Merge>,
        }
        #[derive(Deserialize)]
        struct Tj {
            model: Model,
            #[serde(default)]
            added_tokens: Vec<Added>,
            #[serde(default)]
            pre_tokenizer: Option<serde_json::Value>,
        }
        let tj: Tj = serde_json::from_str(tokenizer_json)
            .map_err(|e| Error::Tokenizer(format!("tokenizer.json: {e}")))?;
        if tj.model.ty.as_deref().is_some_and(|t| t != "BPE") {
            return Err(Error::Tokenizer(
                "tokenizer.json: only BPE models are supported".into(),
            ));
        }
        let n = tj
            .model
            .vocab
            .values()
            .chain(tj.added_tokens.iter().map(|a| &a.id))
            .max()
            .map_or(0, |m| *m as usize + 1);
        let mut tokens = vec![String::new(); n];
        for (t, &i) in &tj.model.vocab {
            tokens[i as usize] = t.clone();
        }
        for a in &tj.added_tokens {
            tokens[a.id as usize] = a.content.clone();
        }
        let merges = tj
            .model
            .merges
            .into_iter()
            .map(|m| match m {
                Merge::Str(s) => merge_pair(&s),
                Merge::Pair(a, b) => Ok((a, b)),
            })
            .collect::<Result<Vec<_>>>()?;
        let pre_text = tj.pre_tokenizer.map(|p| p.to_string()).unwrap_or_default();
        let pre = if pre_text.contains("\"Digits\"") {
            PreTokenizerKind::SmolLm
        } else if pre_text.contains("\\\\p{N}{1,3}") {
            PreTokenizerKind::LlamaBpe
        } else {
            PreTokenizerKind::Gpt2
        };
        let config: serde_json::Value = match config_json {
            Some(c) => serde_json::from_str(c)
                .map_err(|e| Error::Tokenizer(format!("tokenizer_config.json: {e}")))?,
            None => serde_json::Value::Null,
        };
        let special_text = |key: &str| -> Option<String> {
            match &config[key] {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Object(o) => o
                    .get("content")
                    .and_then(|c| c.as_str())
                    .map(str::to_string),
                _ => None,
            }
        };
        let lookup = |key: &str| {
            special_text(key).and_then(|t| tokens.iter().position(|x| *x == t).map(|i| i as u32))
        };
        Self::from_parts(TokenizerParts {
            special_ids: tj.added_tokens.iter().map(|a| a.id).collect(),
            bos_id: lookup("bos_token"),
            eos_id: lookup("eos_token"),
            add_bos: config["add_bos_token"].as_bool().unwrap_or(false),
            chat_template: config["chat_template"].as_str().map(str::to_string),
            tokens,
            merges,
            pre: Some(pre),
        })
    }
}
