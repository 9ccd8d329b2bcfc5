/// The generation endpoints the gateway proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `POST /v1/chat/completions` (OpenAI chat).
    ChatCompletions,
    /// `POST /v1/completions` (OpenAI legacy completions).
    Completions,
    /// `POST /generate` (SGLang native).
    Generate,
}

impl Endpoint {
    /// Maps a request path to an endpoint.
    pub fn from_path(path: &str) -> Option<Self> {
        match path {
            "/v1/chat/completions" => Some(Self::ChatCompletions),
            "/v1/completions" => Some(Self::Completions),
            "/generate" => Some(Self::Generate),
            _ => None,
        }
    }

    /// The path the upstream call uses.
    pub fn path(self) -> &'static str {
        match self {
            Self::ChatCompletions => "/v1/chat/completions",
            Self::Completions => "/v1/completions",
            Self::Generate => "/generate",
        }
    }

    /// Short label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat",
            Self::Completions => "completions",
            Self::Generate => "generate",
        }
    }
}
