//! Stop strings on streamed text: text that might still turn into a stop string is held back until it can't.

#[derive(Debug, Default)]
pub struct StopStrings {
    stops: Vec<String>,
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
    pub fn new(stops: Vec<String>) -> Self {
        let stops: Vec<String> = stops.into_iter().filter(|s| !s.is_empty()).collect();
        let hold = stops
            .iter()
            .map(String::len)
            .max()
            .unwrap_or(0)
            .saturating_sub(1);
        Self {
            stops,
            held: String::new(),
            hold,
        }
    }

    pub fn push(&mut self, delta: &str) -> StopOutcome {
        if self.stops.is_empty() {
            return StopOutcome {
                emit: delta.to_string(),
                matched: None,
            };
        }
        self.held.push_str(delta);
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()).map(|p| (p, s)))
            .min_by_key(|(p, _)| *p);
        if let Some((p, s)) = first {
            let emit = self.held[..p].to_string();
            let matched = Some(s.clone());
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
        let mut s = StopStrings::new(vec!["END".into()]);
        assert_eq!(s.push("abcE").emit, "ab");
        assert_eq!(s.push("N").emit, "c");
        let o = s.push("Dxyz");
        assert_eq!(o.emit, "");
        assert_eq!(o.matched.as_deref(), Some("END"));
    }

    #[test]
    fn releases_at_finish_and_passes_through_without_stops() {
        let mut s = StopStrings::new(vec!["##".into()]);
        assert_eq!(s.push("a#").emit, "a");
        assert_eq!(s.finish(), "#");
        let mut none = StopStrings::new(vec![]);
        assert_eq!(none.push("é").emit, "é");
    }
}
