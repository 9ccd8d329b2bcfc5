use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::pipeline::{PipelineConfig, PluginError};
use crate::{
    CacheAware, CacheAwareConfig, LeastLoad, PowerOfTwo, Random, RoundRobin, RoutingPolicy,
};

/// The routing policies Baton ships, as named in configuration and on the
/// command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    #[serde(alias = "round-robin")]
    RoundRobin,
    Random,
    #[serde(alias = "power-of-two")]
    PowerOfTwo,
    #[serde(alias = "least-load")]
    LeastLoad,
    #[serde(alias = "cache-aware")]
    CacheAware,
    /// Filters → scorers → picker from `PolicyConfig::pipeline`.
    Pipeline,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 6] = [
        PolicyKind::RoundRobin,
        PolicyKind::Random,
        PolicyKind::PowerOfTwo,
        PolicyKind::LeastLoad,
        PolicyKind::CacheAware,
        PolicyKind::Pipeline,
    ];

    /// The canonical (snake_case) name; matches [`RoutingPolicy::name`].
    pub const fn as_str(self) -> &'static str {
        match self {
            PolicyKind::RoundRobin => "round_robin",
            PolicyKind::Random => "random",
            PolicyKind::PowerOfTwo => "power_of_two",
            PolicyKind::LeastLoad => "least_load",
            PolicyKind::CacheAware => "cache_aware",
            PolicyKind::Pipeline => "pipeline",
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A policy name that is not one of [`PolicyKind::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown routing policy {name:?}; expected one of: \
     round_robin, random, power_of_two, least_load, cache_aware, pipeline"
)]
pub struct UnknownPolicy {
    pub name: String,
}

impl FromStr for PolicyKind {
    type Err = UnknownPolicy;

    /// Accepts the canonical names, case-insensitively, with `-` for `_`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let normalized = s.trim().to_ascii_lowercase().replace('-', "_");
        PolicyKind::ALL
            .into_iter()
            .find(|k| k.as_str() == normalized)
            .ok_or_else(|| UnknownPolicy { name: s.to_owned() })
    }
}

/// Per-policy settings (cache-aware tunables, the pipeline composition).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct PolicyConfig {
    pub cache_aware: CacheAwareConfig,
    pub pipeline: PipelineConfig,
}

/// Builds a fresh policy instance (each with its own state: counters, RNG,
/// prefix tree), so one per worker pool.
pub fn build(
    kind: PolicyKind,
    config: &PolicyConfig,
) -> Result<Box<dyn RoutingPolicy>, PluginError> {
    Ok(match kind {
        PolicyKind::RoundRobin => Box::new(RoundRobin::new()),
        PolicyKind::Random => Box::new(Random::new()),
        PolicyKind::PowerOfTwo => Box::new(PowerOfTwo::new()),
        PolicyKind::LeastLoad => Box::new(LeastLoad::new()),
        PolicyKind::CacheAware => Box::new(CacheAware::new(config.cache_aware.clone())),
        PolicyKind::Pipeline => config.pipeline.build_policy()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RequestFeatures, WorkerView};

    #[test]
    fn parse_display_round_trip() {
        for kind in PolicyKind::ALL {
            assert_eq!(kind.to_string().parse::<PolicyKind>(), Ok(kind));
        }
    }

    #[test]
    fn parse_accepts_hyphens_and_case() {
        assert_eq!("round-robin".parse(), Ok(PolicyKind::RoundRobin));
        assert_eq!("Power-Of-Two".parse(), Ok(PolicyKind::PowerOfTwo));
        assert_eq!(" cache_aware ".parse(), Ok(PolicyKind::CacheAware));
    }

    #[test]
    fn unknown_lists_valid_names() {
        let err = "fastest".parse::<PolicyKind>().unwrap_err();
        assert_eq!(err.name, "fastest");
        let msg = err.to_string();
        for kind in PolicyKind::ALL {
            assert!(msg.contains(kind.as_str()), "{msg}");
        }
        assert!("".parse::<PolicyKind>().is_err());
    }

    #[test]
    fn deserialize_snake_case_and_hyphenated() {
        let kinds: Vec<PolicyKind> =
            serde_json::from_str(r#"["least_load", "cache-aware", "random"]"#).unwrap();
        assert_eq!(
            kinds,
            [
                PolicyKind::LeastLoad,
                PolicyKind::CacheAware,
                PolicyKind::Random
            ]
        );
        assert!(serde_json::from_str::<PolicyKind>(r#""LeastLoad""#).is_err());
    }

    #[test]
    fn config_defaults_and_partial_override() {
        let empty: PolicyConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, PolicyConfig::default());
        let d = &empty.cache_aware;
        assert_eq!(d.cache_threshold, 0.3);
        assert_eq!(d.balance_abs_threshold, 64);
        assert_eq!(d.balance_rel_threshold, 1.5);

        let partial: PolicyConfig =
            serde_json::from_str(r#"{"cache_aware": {"balance_abs_threshold": 8}}"#).unwrap();
        assert_eq!(partial.cache_aware.balance_abs_threshold, 8);
        assert_eq!(partial.cache_aware.cache_threshold, 0.3);
    }

    #[test]
    fn build_gives_each_kind_its_name_and_a_working_policy() {
        let ws = [
            WorkerView {
                url: "a",
                available: false,
                in_flight: 0,
            },
            WorkerView {
                url: "b",
                available: true,
                in_flight: 3,
            },
        ];
        let req = RequestFeatures { text: Some("hi") };
        for kind in PolicyKind::ALL {
            let policy = build(kind, &PolicyConfig::default()).expect("builds");
            assert_eq!(policy.name(), kind.as_str());
            assert_eq!(policy.pick(&ws, &req), Some(1), "{kind}");
            assert_eq!(policy.pick(&[], &req), None, "{kind}");
        }
    }
}
