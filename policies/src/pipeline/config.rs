//! Pipelines as configuration (TOML in the gateway's config file).

use serde::Deserialize;

use super::builtin::{
    Available, LeastLoadScorer, MaxInFlight, MaxScorePicker, QueueCap, WeightedRandomPicker,
};
use super::script::{ScriptAdmission, ScriptFilter, ScriptScorer, DEFAULT_BUDGET};
use super::{Pipeline, PluginError};

/// ```toml
/// [policy_config.pipeline]
/// filters = [{ kind = "max_in_flight", max = 64 }]
/// scorers = [{ kind = "least_load", weight = 1.0 },
///            { kind = "script", path = "plugins/prefer_even.rhai", weight = 0.5 }]
/// picker = "max_score"
/// admission = [{ kind = "queue_cap", max_in_flight = 256, retry_after_ms = 500 }]
/// time_limit_ms = 100
/// reload_interval_ms = 1000
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    pub filters: Vec<FilterConfig>,
    pub scorers: Vec<ScorerConfig>,
    pub picker: PickerConfig,
    pub admission: Vec<AdmissionConfig>,
    /// Wall-clock limit of one decision of a pipeline with scripts (the
    /// gateway runs those off its async workers and, past this, routes by
    /// least load / admits, as for a failing stage).
    pub time_limit_ms: u64,
    /// How often the gateway looks for changed script files and reloads the
    /// pipeline (see [`super::reload`]); 0 turns reloading off.
    pub reload_interval_ms: u64,
}

/// Default [`PipelineConfig::time_limit_ms`].
pub const DEFAULT_TIME_LIMIT_MS: u64 = 100;
/// Default [`PipelineConfig::reload_interval_ms`].
pub const DEFAULT_RELOAD_INTERVAL_MS: u64 = 1000;

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            filters: Vec::new(),
            scorers: Vec::new(),
            picker: PickerConfig::default(),
            admission: Vec::new(),
            time_limit_ms: DEFAULT_TIME_LIMIT_MS,
            reload_interval_ms: DEFAULT_RELOAD_INTERVAL_MS,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FilterConfig {
    Available,
    MaxInFlight {
        max: u64,
    },
    Script {
        path: String,
        #[serde(default)]
        budget: Option<u64>,
    },
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ScorerConfig {
    LeastLoad {
        #[serde(default = "one")]
        weight: f64,
    },
    Script {
        path: String,
        #[serde(default = "one")]
        weight: f64,
        #[serde(default)]
        budget: Option<u64>,
    },
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PickerConfig {
    #[default]
    MaxScore,
    WeightedRandom,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AdmissionConfig {
    QueueCap {
        max_in_flight: u64,
        #[serde(default = "half_second")]
        retry_after_ms: u64,
    },
    Script {
        path: String,
        #[serde(default)]
        budget: Option<u64>,
    },
}

fn half_second() -> u64 {
    500
}

impl PipelineConfig {
    /// The script files the pipeline loads, in stage order.
    pub fn script_paths(&self) -> Vec<String> {
        let filters = self.filters.iter().filter_map(|f| match f {
            FilterConfig::Script { path, .. } => Some(path.clone()),
            _ => None,
        });
        let scorers = self.scorers.iter().filter_map(|s| match s {
            ScorerConfig::Script { path, .. } => Some(path.clone()),
            _ => None,
        });
        let admission = self.admission.iter().filter_map(|a| match a {
            AdmissionConfig::Script { path, .. } => Some(path.clone()),
            _ => None,
        });
        filters.chain(scorers).chain(admission).collect()
    }

    /// The routing policy for this config: the pipeline, reloaded when its
    /// scripts change if it has scripts and `reload_interval_ms` is not 0.
    pub fn build_policy(&self) -> Result<Box<dyn crate::RoutingPolicy>, PluginError> {
        if self.reload_interval_ms > 0 && !self.script_paths().is_empty() {
            Ok(Box::new(super::Reloading::new(self.clone())?))
        } else {
            Ok(Box::new(self.build()?))
        }
    }

    /// Builds the pipeline, loading and compiling scripts (errors name the file).
    pub fn build(&self) -> Result<Pipeline, PluginError> {
        self.build_inner(None)
    }

    /// [`Self::build`] with a `weighted_random` picker drawing from a fixed seed (reproducible decisions, as the
    /// twin needs; the gateway seeds from the OS).
    pub fn build_seeded(&self, seed: u64) -> Result<Pipeline, PluginError> {
        self.build_inner(Some(seed))
    }

    fn build_inner(&self, seed: Option<u64>) -> Result<Pipeline, PluginError> {
        if self.time_limit_ms == 0 {
            return Err(PluginError::Load(
                "pipeline time_limit_ms must be at least 1".into(),
            ));
        }
        let picker: Box<dyn super::Picker> = match self.picker {
            PickerConfig::MaxScore => Box::new(MaxScorePicker::default()),
            PickerConfig::WeightedRandom => Box::new(seed.map_or_else(
                WeightedRandomPicker::default,
                WeightedRandomPicker::with_seed,
            )),
        };
        let mut p =
            Pipeline::new(picker).time_limit(std::time::Duration::from_millis(self.time_limit_ms));
        for f in &self.filters {
            p = p.filter(match f {
                FilterConfig::Available => Box::new(Available),
                FilterConfig::MaxInFlight { max } => Box::new(MaxInFlight { max: *max }),
                FilterConfig::Script { path, budget } => {
                    Box::new(ScriptFilter::load(path, budget.unwrap_or(DEFAULT_BUDGET))?)
                }
            });
        }
        for s in &self.scorers {
            p = match s {
                ScorerConfig::LeastLoad { weight } => p.scorer(*weight, Box::new(LeastLoadScorer)),
                ScorerConfig::Script {
                    path,
                    weight,
                    budget,
                } => p.scorer(
                    *weight,
                    Box::new(ScriptScorer::load(path, budget.unwrap_or(DEFAULT_BUDGET))?),
                ),
            };
        }
        for a in &self.admission {
            p = p.admission(match a {
                AdmissionConfig::QueueCap {
                    max_in_flight,
                    retry_after_ms,
                } => Box::new(QueueCap {
                    max_in_flight: *max_in_flight,
                    retry_after_ms: *retry_after_ms,
                }),
                AdmissionConfig::Script { path, budget } => Box::new(ScriptAdmission::load(
                    path,
                    budget.unwrap_or(DEFAULT_BUDGET),
                )?),
            });
        }
        Ok(p)
    }
}
