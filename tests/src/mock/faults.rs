//! Deterministic fault injection, keyed on the 1-based index of the generation request.

/// A fault a mock injects. Request numbers count generation requests only (not `/health` or
/// `/v1/models`), 1-based, in arrival order. When several faults match a request, the first one
/// added wins. Faults are applied after the body was read and before any protocol logic, so an
/// injected fault on an SGLang prefill never joins its bootstrap room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The n-th request gets this HTTP status with an OpenAI-style JSON error body.
    StatusNth { n: usize, status: u16 },
    /// Every request gets this HTTP status with an OpenAI-style JSON error body.
    StatusAlways { status: u16 },
    /// The n-th request never answers (until the client goes away: then it counts as cancelled).
    HangNth { n: usize },
    /// The n-th request: a stream sends its leading role chunk (chat) and `after_tokens` token
    /// chunks, then the connection is aborted (no finish chunk, no `[DONE]`, no terminating HTTP
    /// chunk). A non-stream request gets its headers and then the abort.
    DropMidStreamNth { n: usize, after_tokens: usize },
    /// The n-th request: the connection is closed without any response.
    ConnectionResetNth { n: usize },
    /// The n-th request's first token is EOS: one token, finish reason `stop`. On a vLLM
    /// prefill this means no `kv_transfer_params` (the decode must then prefill locally).
    EosFirstNth { n: usize },
}

/// What the handler must do instead of (or while) serving normally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FaultAction {
    Status(u16),
    Hang,
    DropMidStream { after_tokens: usize },
    Reset,
    EosFirst,
}

/// The action for the `index`-th (1-based) generation request, if any fault matches.
pub(crate) fn decide(faults: &[Fault], index: usize) -> Option<FaultAction> {
    faults.iter().find_map(|f| match *f {
        Fault::StatusNth { n, status } if n == index => Some(FaultAction::Status(status)),
        Fault::StatusAlways { status } => Some(FaultAction::Status(status)),
        Fault::HangNth { n } if n == index => Some(FaultAction::Hang),
        Fault::DropMidStreamNth { n, after_tokens } if n == index => {
            Some(FaultAction::DropMidStream { after_tokens })
        }
        Fault::ConnectionResetNth { n } if n == index => Some(FaultAction::Reset),
        Fault::EosFirstNth { n } if n == index => Some(FaultAction::EosFirst),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_matching_fault_wins() {
        let faults = [Fault::HangNth { n: 2 }, Fault::StatusAlways { status: 503 }];
        assert_eq!(decide(&faults, 1), Some(FaultAction::Status(503)));
        assert_eq!(decide(&faults, 2), Some(FaultAction::Hang));
        assert_eq!(decide(&[Fault::ConnectionResetNth { n: 3 }], 2), None);
    }
}
