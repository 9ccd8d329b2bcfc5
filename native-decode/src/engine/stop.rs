//! Stop strings on streamed text: text that might still turn into a stop string is held back until it can't.
//!
//! All stop strings are matched at once by one Aho-Corasick automaton, and only the held-back tail (shorter than
//! the longest stop string) plus the new delta is scanned per token: the cost per token does not grow with the
//! output length, and grows with the number of stop strings only through the (bounded) automaton size.

use aho_corasick::{AhoCorasick, MatchKind};

/// Most stop strings one request may give (OpenAI allows 4; generous for compatible clients).
pub const MAX_STOP_STRINGS: usize = 16;
/// Longest stop string, in bytes.
pub const MAX_STOP_BYTES: usize = 256;

#[derive(Debug, Default)]
pub struct StopStrings {
    stops: Vec<String>,
    /// None when there are no stop strings.
    matcher: Option<AhoCorasick>,
    held: String,
    hold: usize,
}

/// What to emit after a text delta.
#[derive(Debug, PartialEq, Eq)]
pub struct StopOutcome {
    pub emit: String,
    /// The stop string that matched (the text is cut before it).
    pub matched: Option<String>,
}

impl StopStrings {
    /// Fails only if the automaton cannot be built (not for inputs within the API's bounds).
    pub fn new(stops: Vec<String>) -> Result<Self, String> {
        let stops: Vec<String> = stops.into_iter().filter(|s| !s.is_empty()).collect();
        let hold = stops
            .iter()
            .map(String::len)
            .max()
            .unwrap_or(0)
            .saturating_sub(1);
        // Leftmost-first: the earliest match wins, and among matches starting at the same place the stop string
        // listed first (the order a per-string scan taking the smallest position gives).
        let matcher = if stops.is_empty() {
            None
        } else {
            Some(
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostFirst)
                    .build(&stops)
                    .map_err(|e| format!("invalid stop strings: {e}"))?,
            )
        };
        Ok(Self {
            stops,
            matcher,
            held: String::new(),
            hold,
        })
    }

    pub fn push(&mut self, delta: &str) -> StopOutcome {
        let Some(matcher) = &self.matcher else {
            return StopOutcome {
                emit: delta.to_string(),
                matched: None,
            };
        };
        // `held` had no match before this delta, so any match now ends inside the delta and starts within
        // `held`: scanning `held` (at most `hold` bytes + the delta) finds every new match.
        self.held.push_str(delta);
        if let Some(m) = matcher.find(self.held.as_str()) {
            let emit = self.held[..m.start()].to_string();
            let matched = Some(self.stops[m.pattern().as_usize()].clone());
            self.held.clear();
            return StopOutcome { emit, matched };
        }
        let mut cut = self.held.len().saturating_sub(self.hold);
        while !self.held.is_char_boundary(cut) {
            cut -= 1;
        }
        let emit: String = self.held.drain(..cut).collect();
        StopOutcome {
            emit,
            matched: None,
        }
    }

    /// Passes text on without looking for stop strings (while `min_tokens` forbids stopping), with whatever was
    /// held back before it. Stop strings are then looked for only in text that comes later.
    pub fn pass(&mut self, delta: &str) -> String {
        let mut out = std::mem::take(&mut self.held);
        out.push_str(delta);
        out
    }

    /// Releases the held-back text at the end of generation.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_partial_matches_and_cuts_at_stop() {
        let mut s = StopStrings::new(vec!["END".into()]).unwrap();
        assert_eq!(s.push("abcE").emit, "ab");
        assert_eq!(s.push("N").emit, "c");
        let o = s.push("Dxyz");
        assert_eq!(o.emit, "");
        assert_eq!(o.matched.as_deref(), Some("END"));
    }

    #[test]
    fn releases_at_finish_and_passes_through_without_stops() {
        let mut s = StopStrings::new(vec!["##".into()]).unwrap();
        assert_eq!(s.push("a#").emit, "a");
        assert_eq!(s.finish(), "#");
        let mut none = StopStrings::new(vec![]).unwrap();
        assert_eq!(none.push("é").emit, "é");
    }

    #[test]
    fn passed_text_is_kept_whole_and_not_matched_later() {
        let mut s = StopStrings::new(vec!["END".into()]).unwrap();
        assert_eq!(s.push("aE").emit, "");
        // Stopping not allowed yet: the held "aE" and the delta, stop string included, pass on.
        assert_eq!(s.pass("NDb"), "aENDb");
        let o = s.push("cEN");
        assert_eq!((o.emit.as_str(), o.matched), ("c", None));
        let o = s.push("Dd");
        assert_eq!((o.emit.as_str(), o.matched.as_deref()), ("", Some("END")));
    }

    #[test]
    fn matches_across_token_boundaries() {
        // "STOP" arrives split over four deltas, one of them carrying a multi-byte character before it.
        let mut s = StopStrings::new(vec!["xx".into(), "STOP".into()]).unwrap();
        let mut out = String::new();
        for d in ["héS", "T", "O"] {
            let o = s.push(d);
            assert_eq!(o.matched, None);
            out.push_str(&o.emit);
        }
        let o = s.push("Pafter");
        out.push_str(&o.emit);
        assert_eq!(o.matched.as_deref(), Some("STOP"));
        assert_eq!(out, "hé");
    }

    /// What the engine did before: after every delta, search the whole output so far for every stop string and
    /// cut at the earliest match (ties: the first listed).
    fn naive(stops: &[String], deltas: &[String]) -> (String, Option<(usize, String)>) {
        let mut text = String::new();
        for (i, d) in deltas.iter().enumerate() {
            text.push_str(d);
            let first = stops
                .iter()
                .filter(|s| !s.is_empty())
                .filter_map(|s| text.find(s.as_str()).map(|p| (p, s)))
                .min_by_key(|(p, _)| *p);
            if let Some((p, s)) = first {
                return (text[..p].to_string(), Some((i, s.clone())));
            }
        }
        (text, None)
    }

    fn incremental(stops: &[String], deltas: &[String]) -> (String, Option<(usize, String)>) {
        let mut m = StopStrings::new(stops.to_vec()).unwrap();
        let mut out = String::new();
        for (i, d) in deltas.iter().enumerate() {
            let o = m.push(d);
            out.push_str(&o.emit);
            if let Some(s) = o.matched {
                return (out, Some((i, s)));
            }
        }
        out.push_str(&m.finish());
        (out, None)
    }

    #[test]
    fn equals_the_naive_matcher_on_random_inputs() {
        // A small alphabet (with a multi-byte character) makes overlapping and repeated matches common.
        const ALPHABET: [&str; 4] = ["a", "b", "é", "c"];
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut rand = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut matched = 0;
        for _ in 0..5000 {
            let word = |rand: &mut dyn FnMut(usize) -> usize, max: usize| -> String {
                (0..rand(max) + 1).map(|_| ALPHABET[rand(4)]).collect()
            };
            let stops: Vec<String> = (0..rand(4)).map(|_| word(&mut rand, 4)).collect();
            let deltas: Vec<String> = (0..rand(12) + 1)
                .map(|_| {
                    if rand(8) == 0 {
                        String::new()
                    } else {
                        word(&mut rand, 3)
                    }
                })
                .collect();
            let want = naive(&stops, &deltas);
            assert_eq!(
                incremental(&stops, &deltas),
                want,
                "stops {stops:?} deltas {deltas:?}"
            );
            matched += usize::from(want.1.is_some());
        }
        assert!(matched > 1000, "the inputs exercise matches ({matched})");
    }
}
