//! What is sent: prompt and output lengths drawn from distributions (fixed, uniform, clipped
//! lognormal), prompts read from a JSONL file, or weighted mixtures of those; presets shaped like
//! chat and like long-prompt summarization. Synthetic prompts are deterministic text of about N
//! tokens (one common English word ≈ one token).

use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal};
use serde::Deserialize;

/// A workload spec that can't be used.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("unknown workload {0:?} (expected chat, summarization, mixed, fixed:IN:OUT, uniform:A:B:C:D, lognormal:IN_MEAN:IN_SIGMA:OUT_MEAN:OUT_SIGMA, jsonl:PATH or mix:SPEC@W,SPEC@W)")]
    Unknown(String),
    #[error("bad number {0:?} in workload {1:?}")]
    Number(String, String),
    #[error("bad lengths in workload {0:?}: {1}")]
    Lengths(String, &'static str),
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} line {line}: {message}")]
    Jsonl {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{0} has no prompts")]
    EmptyJsonl(String),
}

/// A distribution of token counts.
#[derive(Clone, Debug, PartialEq)]
pub enum LengthDist {
    Fixed(u32),
    /// Uniform on `[lo, hi]`, both included.
    Uniform {
        lo: u32,
        hi: u32,
    },
    /// Lognormal with this *mean* (not median) and log-space sigma, clipped to `[min, max]`.
    LogNormal {
        mean: f64,
        sigma: f64,
        min: u32,
        max: u32,
    },
}

impl LengthDist {
    fn validate(&self, spec: &str) -> Result<(), WorkloadError> {
        let bad = |m| Err(WorkloadError::Lengths(spec.to_owned(), m));
        match *self {
            Self::Fixed(0) => bad("a length must be ≥ 1"),
            Self::Uniform { lo, hi } if lo == 0 || lo > hi => bad("uniform needs 1 ≤ lo ≤ hi"),
            Self::LogNormal {
                mean,
                sigma,
                min,
                max,
            } if !(mean.is_finite() && mean >= 1.0 && sigma.is_finite() && sigma >= 0.0)
                || min == 0
                || min > max =>
            {
                bad("lognormal needs mean ≥ 1, sigma ≥ 0")
            }
            _ => Ok(()),
        }
    }

    pub fn sample(&self, rng: &mut impl Rng) -> u32 {
        match *self {
            Self::Fixed(n) => n,
            Self::Uniform { lo, hi } => rng.random_range(lo..=hi),
            Self::LogNormal {
                mean,
                sigma,
                min,
                max,
            } => {
                // E[X] = exp(mu + sigma²/2).
                let mu = mean.ln() - sigma * sigma / 2.0;
                let x = LogNormal::new(mu, sigma).map_or(mean, |d| d.sample(rng));
                (x.round().clamp(f64::from(min), f64::from(max))) as u32
            }
        }
    }
}

/// One line of a prompts file: `{"prompt": "...", "output_len": N}` (`output_len` defaults to
/// [`DEFAULT_JSONL_OUTPUT_LEN`]; an optional `input_len` overrides the word-count estimate).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct PromptEntry {
    pub prompt: String,
    #[serde(default)]
    pub output_len: Option<u32>,
    #[serde(default)]
    pub input_len: Option<u32>,
}

/// Output length of a JSONL prompt without `output_len` (vLLM's random dataset default).
pub const DEFAULT_JSONL_OUTPUT_LEN: u32 = 128;

/// A source of requests.
#[derive(Clone, Debug)]
pub enum Workload {
    Synthetic {
        input: LengthDist,
        output: LengthDist,
    },
    /// Prompts from a file, sent in file order and cycled.
    Prompts {
        entries: Vec<PromptEntry>,
        cursor: usize,
    },
    /// Each request picks a component with probability proportional to its weight.
    Mixture(Vec<Component>),
}

#[derive(Clone, Debug)]
pub struct Component {
    pub label: String,
    pub weight: f64,
    pub workload: Workload,
}

/// One request to send.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestSpec {
    pub prompt: String,
    /// Prompt length in tokens, as intended (synthetic) or estimated (whitespace words).
    pub prompt_len: u32,
    pub output_len: u32,
    /// Which mixture component produced it (the workload's own label otherwise).
    pub label: String,
}

impl Workload {
    /// Short prompts (lognormal, mean 256 tokens) with 128–256 token answers.
    pub fn chat() -> Self {
        Self::Synthetic {
            input: LengthDist::LogNormal {
                mean: 256.0,
                sigma: 0.6,
                min: 16,
                max: 2048,
            },
            output: LengthDist::Uniform { lo: 128, hi: 256 },
        }
    }

    /// Long prompts (2000–4000 tokens) with 128–256 token answers.
    pub fn summarization() -> Self {
        Self::Synthetic {
            input: LengthDist::Uniform { lo: 2000, hi: 4000 },
            output: LengthDist::Uniform { lo: 128, hi: 256 },
        }
    }

    /// 80% chat, 20% summarization.
    pub fn mixed() -> Self {
        Self::Mixture(vec![
            Component {
                label: "chat".into(),
                weight: 0.8,
                workload: Self::chat(),
            },
            Component {
                label: "summarization".into(),
                weight: 0.2,
                workload: Self::summarization(),
            },
        ])
    }

    /// Parses a CLI spec; `jsonl:PATH` reads the file.
    pub fn parse(spec: &str) -> Result<Self, WorkloadError> {
        let (kind, rest) = spec.split_once(':').unwrap_or((spec, ""));
        let nums = |n: usize| -> Result<Vec<f64>, WorkloadError> {
            let parts: Vec<&str> = rest.split(':').collect();
            if parts.len() != n {
                return Err(WorkloadError::Unknown(spec.to_owned()));
            }
            parts
                .iter()
                .map(|p| {
                    p.trim()
                        .parse::<f64>()
                        .ok()
                        .filter(|x| x.is_finite() && *x >= 0.0)
                        .ok_or_else(|| WorkloadError::Number(p.to_string(), spec.to_owned()))
                })
                .collect()
        };
        let len = |x: f64| x.min(f64::from(u32::MAX)) as u32;
        let w = match kind {
            "chat" if rest.is_empty() => Self::chat(),
            "summarization" if rest.is_empty() => Self::summarization(),
            "mixed" if rest.is_empty() => Self::mixed(),
            "fixed" => {
                let n = nums(2)?;
                Self::Synthetic {
                    input: LengthDist::Fixed(len(n[0])),
                    output: LengthDist::Fixed(len(n[1])),
                }
            }
            "uniform" => {
                let n = nums(4)?;
                Self::Synthetic {
                    input: LengthDist::Uniform {
                        lo: len(n[0]),
                        hi: len(n[1]),
                    },
                    output: LengthDist::Uniform {
                        lo: len(n[2]),
                        hi: len(n[3]),
                    },
                }
            }
            "lognormal" => {
                let n = nums(4)?;
                let ln = |mean: f64, sigma: f64| LengthDist::LogNormal {
                    mean,
                    sigma,
                    min: 1,
                    max: len((mean * 8.0).ceil()).max(1),
                };
                Self::Synthetic {
                    input: ln(n[0], n[1]),
                    output: ln(n[2], n[3]),
                }
            }
            "jsonl" if !rest.is_empty() => Self::Prompts {
                entries: read_jsonl(Path::new(rest))?,
                cursor: 0,
            },
            "mix" if !rest.is_empty() => {
                let mut parts = Vec::new();
                for part in rest.split(',') {
                    let (sub, weight) = match part.rsplit_once('@') {
                        Some((s, w)) => (
                            s,
                            w.trim()
                                .parse::<f64>()
                                .ok()
                                .filter(|w| w.is_finite() && *w > 0.0)
                                .ok_or_else(|| {
                                    WorkloadError::Number(w.to_owned(), spec.to_owned())
                                })?,
                        ),
                        None => (part, 1.0),
                    };
                    parts.push(Component {
                        label: sub.to_owned(),
                        weight,
                        workload: Self::parse(sub)?,
                    });
                }
                Self::Mixture(parts)
            }
            _ => return Err(WorkloadError::Unknown(spec.to_owned())),
        };
        w.validate(spec)?;
        Ok(w)
    }

    fn validate(&self, spec: &str) -> Result<(), WorkloadError> {
        match self {
            Self::Synthetic { input, output } => {
                input.validate(spec)?;
                output.validate(spec)
            }
            Self::Prompts { .. } => Ok(()),
            Self::Mixture(parts) if parts.is_empty() => {
                Err(WorkloadError::Unknown(spec.to_owned()))
            }
            Self::Mixture(parts) => parts.iter().try_for_each(|c| c.workload.validate(spec)),
        }
    }

    /// Draws the next request.
    pub fn sample(&mut self, label: &str, rng: &mut StdRng) -> RequestSpec {
        match self {
            Self::Synthetic { input, output } => {
                let prompt_len = input.sample(rng);
                let output_len = output.sample(rng);
                RequestSpec {
                    prompt: synthetic_prompt(prompt_len, rng),
                    prompt_len,
                    output_len,
                    label: label.to_owned(),
                }
            }
            Self::Prompts { entries, cursor } => {
                let Some(e) = entries.get(*cursor % entries.len().max(1)) else {
                    return RequestSpec {
                        prompt: String::new(),
                        prompt_len: 0,
                        output_len: DEFAULT_JSONL_OUTPUT_LEN,
                        label: label.to_owned(),
                    };
                };
                *cursor = (*cursor + 1) % entries.len().max(1);
                RequestSpec {
                    prompt_len: e
                        .input_len
                        .unwrap_or_else(|| e.prompt.split_whitespace().count() as u32),
                    prompt: e.prompt.clone(),
                    output_len: e.output_len.unwrap_or(DEFAULT_JSONL_OUTPUT_LEN).max(1),
                    label: label.to_owned(),
                }
            }
            Self::Mixture(parts) => {
                let total: f64 = parts.iter().map(|c| c.weight).sum();
                let mut x = rng.random::<f64>() * total;
                let mut pick = parts.len().saturating_sub(1);
                for (i, c) in parts.iter().enumerate() {
                    if x < c.weight {
                        pick = i;
                        break;
                    }
                    x -= c.weight;
                }
                match parts.get_mut(pick) {
                    Some(c) => c.workload.sample(&c.label, rng),
                    None => Self::Synthetic {
                        input: LengthDist::Fixed(1),
                        output: LengthDist::Fixed(1),
                    }
                    .sample(label, rng),
                }
            }
        }
    }
}

/// Draws requests from a workload, deterministically from a seed.
pub struct Sampler {
    workload: Workload,
    label: String,
    rng: StdRng,
}

impl Sampler {
    pub fn new(workload: Workload, label: &str, seed: u64) -> Self {
        Self {
            workload,
            label: label.to_owned(),
            // Independent of the arrival stream seeded with the same number.
            rng: StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15),
        }
    }
}

impl Iterator for Sampler {
    type Item = RequestSpec;
    fn next(&mut self) -> Option<RequestSpec> {
        Some(self.workload.sample(&self.label, &mut self.rng))
    }
}

/// Common English words that are one token each in the usual BPE vocabularies (with the
/// leading space).
const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by",
    "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an",
    "had", "they", "you", "were", "their", "one", "all", "we", "can", "her", "has", "there",
    "been", "if", "more", "when", "will", "would", "who", "so", "no", "time", "people", "year",
    "way", "day", "man", "thing", "world", "life", "hand", "part", "child", "eye", "place", "work",
    "week", "case", "point", "number", "group", "fact", "good", "new", "first", "last", "long",
    "great", "little", "own", "other", "old", "right", "big", "high", "small", "large", "next",
    "early", "young", "few", "public", "bad", "same", "able", "city", "water", "house", "school",
    "story", "money", "night", "river", "light", "music", "paper", "table",
];

/// About `tokens` tokens of text: that many words drawn from [`WORDS`].
pub fn synthetic_prompt(tokens: u32, rng: &mut impl Rng) -> String {
    let mut s = String::with_capacity(tokens as usize * 6);
    for i in 0..tokens {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(WORDS[rng.random_range(0..WORDS.len())]);
    }
    s
}

fn read_jsonl(path: &Path) -> Result<Vec<PromptEntry>, WorkloadError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| WorkloadError::Io {
        path: name.clone(),
        source,
    })?;
    let entries = parse_jsonl(&text, &name)?;
    if entries.is_empty() {
        return Err(WorkloadError::EmptyJsonl(name));
    }
    Ok(entries)
}

/// Parses prompt lines; blank lines are skipped.
pub fn parse_jsonl(text: &str, name: &str) -> Result<Vec<PromptEntry>, WorkloadError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str::<PromptEntry>(l).map_err(|e| WorkloadError::Jsonl {
                path: name.to_owned(),
                line: i + 1,
                message: e.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draw(spec: &str, n: usize) -> Vec<RequestSpec> {
        Sampler::new(Workload::parse(spec).unwrap(), spec, 1)
            .take(n)
            .collect()
    }

    #[test]
    fn fixed_and_uniform_lengths() {
        for r in draw("fixed:100:20", 10) {
            assert_eq!((r.prompt_len, r.output_len), (100, 20));
            assert_eq!(r.prompt.split_whitespace().count(), 100);
        }
        let rs = draw("uniform:10:20:1:3", 2000);
        assert!(rs.iter().all(|r| (10..=20).contains(&r.prompt_len)));
        assert!(rs.iter().all(|r| (1..=3).contains(&r.output_len)));
        for v in 1..=3 {
            assert!(rs.iter().any(|r| r.output_len == v));
        }
    }

    #[test]
    fn chat_preset_mean_and_clip() {
        let rs = draw("chat", 5000);
        let mean = rs.iter().map(|r| f64::from(r.prompt_len)).sum::<f64>() / 5000.0;
        assert!((mean - 256.0).abs() < 256.0 * 0.05, "mean {mean}");
        assert!(rs.iter().all(|r| (16..=2048).contains(&r.prompt_len)));
        assert!(rs.iter().all(|r| (128..=256).contains(&r.output_len)));
    }

    #[test]
    fn summarization_preset() {
        let rs = draw("summarization", 200);
        assert!(rs.iter().all(|r| (2000..=4000).contains(&r.prompt_len)));
        assert!(rs
            .iter()
            .all(|r| r.prompt.split_whitespace().count() == r.prompt_len as usize));
    }

    #[test]
    fn mixture_weights_and_labels() {
        let rs = draw("mix:fixed:10:1@3,fixed:20:2@1", 4000);
        let a = rs.iter().filter(|r| r.label == "fixed:10:1").count();
        assert!((a as f64 / 4000.0 - 0.75).abs() < 0.03, "{a}");
        assert!(rs
            .iter()
            .all(|r| r.label == "fixed:10:1" || r.prompt_len == 20));
        let mixed = draw("mixed", 1000);
        assert!(mixed.iter().any(|r| r.label == "summarization"));
        assert!(mixed.iter().any(|r| r.label == "chat"));
    }

    #[test]
    fn deterministic_from_seed() {
        let w = Workload::parse("chat").unwrap();
        let a: Vec<_> = Sampler::new(w.clone(), "c", 5).take(5).collect();
        let b: Vec<_> = Sampler::new(w.clone(), "c", 5).take(5).collect();
        let c: Vec<_> = Sampler::new(w, "c", 6).take(5).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn jsonl_prompts_cycle_in_order() {
        let text = "{\"prompt\": \"a b c\", \"output_len\": 7}\n\n{\"prompt\": \"d\"}\n";
        let entries = parse_jsonl(text, "x").unwrap();
        let mut s = Sampler::new(Workload::Prompts { entries, cursor: 0 }, "j", 0);
        let got: Vec<_> = (0..3).map(|_| s.next().unwrap()).collect();
        assert_eq!(got[0].prompt, "a b c");
        assert_eq!((got[0].prompt_len, got[0].output_len), (3, 7));
        assert_eq!(got[1].output_len, DEFAULT_JSONL_OUTPUT_LEN);
        assert_eq!(got[2].prompt, "a b c");
        let err = parse_jsonl("{\"prompt\": 1}\n", "f.jsonl").unwrap_err();
        assert!(err.to_string().starts_with("f.jsonl line 1"), "{err}");
    }

    #[test]
    fn bad_specs_are_errors() {
        for s in [
            "nope",
            "fixed:1",
            "fixed:0:5",
            "fixed:a:5",
            "uniform:5:1:1:1",
            "mix:",
            "mix:chat@-1",
            "mix:bogus@1",
            "jsonl:/nonexistent/x.jsonl",
            "chat:1",
            "lognormal:0:1:1:1",
        ] {
            assert!(Workload::parse(s).is_err(), "{s}");
        }
    }
}
