use thiserror::Error;

/// Why a client request or an upstream reply could not be understood.
///
/// Every variant is the *client's* fault except [`ProtocolError::UpstreamReply`],
/// which blames the engine that sent it.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("request body must be a JSON object")]
    NotAnObject,
    #[error("invalid value for '{field}': {reason}")]
    InvalidField { field: &'static str, reason: String },
    #[error("missing required field '{0}'")]
    MissingField(&'static str),
    #[error("{0}")]
    Unsupported(String),
    #[error("upstream reply could not be parsed: {0}")]
    UpstreamReply(String),
}

impl ProtocolError {
    /// The request field the error is about, for the OpenAI `param` member.
    pub fn param(&self) -> Option<&'static str> {
        match self {
            Self::InvalidField { field, .. } | Self::MissingField(field) => Some(field),
            _ => None,
        }
    }
}
