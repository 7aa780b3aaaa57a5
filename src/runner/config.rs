//! The scenario file: the original brief's JSON fields, accepted unchanged, plus optional new ones.
//!
//! Unknown fields are refused (a typo must not silently run a different scenario), and every
//! value is range-checked with a message naming the field.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::storage::StorageSpec;

/// What the clients do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// Read-modify-write increments of counters (the default): checked by the linearizability
    /// checker and by the exact invariant final value == final version == acknowledged writes.
    #[default]
    Counter,
    /// Random gets and compare-and-set puts of unique values.
    Mixed,
}

/// One simulated client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The client's name in reports.
    pub name: String,
    /// The keys it works on.
    pub keys: Vec<String>,
    /// Percent of its requests dropped before they leave the client.
    #[serde(default)]
    pub client_packet_loss_rate: f64,
    /// Pause after a successful operation, in milliseconds (overrides the scenario's).
    #[serde(default)]
    pub success_sleep_ms: Option<u64>,
    /// Pause after a failed operation, in milliseconds (overrides the scenario's).
    #[serde(default)]
    pub error_sleep_ms: Option<u64>,
}

/// A chaos scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioConfig {
    /// The clients to run concurrently.
    pub clients: Vec<ClientConfig>,
    /// How long the clients run, in seconds.
    pub test_duration_seconds: f64,
    /// Percent of Put responses the server drops after applying the write.
    #[serde(default)]
    pub server_packet_loss_rate: f64,
    /// Network retries per call before the client gives up (attempts = retries + 1).
    #[serde(default = "default_max_retries")]
    pub max_retries_server_packet_loss: u32,
    /// Pause after a successful operation, in milliseconds.
    #[serde(default)]
    pub success_sleep_ms: u64,
    /// Pause after a failed operation, in milliseconds.
    #[serde(default)]
    pub error_sleep_ms: u64,
    /// Seed of every fault and workload decision (default: random, printed).
    #[serde(default)]
    pub seed: Option<u64>,
    /// What the clients do.
    #[serde(default)]
    pub workload: Workload,
    /// The backend, as `--storage` spells it (used by the example; the runner takes a store).
    #[serde(default)]
    pub storage: Option<String>,
    /// Stop each client after this many operations, even before the time is up.
    #[serde(default)]
    pub ops_per_client: Option<u64>,
    /// How many frontends (servers over one shared store) to start, default 1. Client `i`
    /// talks to frontend `i mod frontends` and fails over to the others. More than one needs a
    /// store several servers can share: `etcd:` (the example opens one client per frontend).
    #[serde(default)]
    pub frontends: Option<usize>,
    /// Fault phases in time, on top of the steady rates: e.g. `{"at": 5, "for": 3,
    /// "drop_responses": 50}`, or `{"at": 10, "for": 2, "pause": true}` (all traffic held,
    /// as in a partition that heals). Applied by a proxy in front of each server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedule: Vec<Phase>,
}

/// One phase of a fault schedule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    /// When it starts, seconds after the clients start.
    pub at: f64,
    /// How long it lasts, seconds.
    #[serde(rename = "for")]
    pub duration: f64,
    /// Percent of write answers dropped after the server applied the write.
    #[serde(default)]
    pub drop_responses: f64,
    /// Percent of requests dropped before they reach the server.
    #[serde(default)]
    pub drop_requests: f64,
    /// Hold every call that arrives until the phase ends (a partition that heals; answers to
    /// calls already sent still arrive). A call whose deadline passes meanwhile ends with
    /// DEADLINE_EXCEEDED; the others reach the server with what is left of their deadline.
    /// Not combined with drop rates in one phase: use two phases.
    #[serde(default)]
    pub pause: bool,
}

impl Phase {
    /// Whether the phase is in force `secs` seconds after the start.
    pub fn covers(&self, secs: f64) -> bool {
        secs >= self.at && secs < self.at + self.duration
    }
}

fn default_max_retries() -> u32 {
    10
}

/// A scenario that cannot be read or is out of range.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read scenario {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The JSON is malformed or has unknown fields.
    #[error("invalid scenario: {0}")]
    Parse(#[from] serde_json::Error),
    /// A field's value is out of range.
    #[error("invalid scenario: {field}: {reason}")]
    Invalid {
        /// The field, e.g. `clients[2].client_packet_loss_rate`.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

fn check_rate(field: String, rate: f64) -> Result<(), ConfigError> {
    if (0.0..=100.0).contains(&rate) {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{rate} is not a percentage in 0..=100"),
        ))
    }
}

impl ScenarioConfig {
    /// Reads and validates a scenario file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        text.parse()
    }

    /// How many frontends the scenario asks for (`frontends`, default 1).
    pub fn frontend_count(&self) -> usize {
        self.frontends.unwrap_or(1)
    }

    /// Checks every range; called by `from_file` and `parse`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.clients.is_empty() {
            return Err(invalid("clients", "at least one client is needed"));
        }
        if !(self.test_duration_seconds > 0.0 && self.test_duration_seconds <= 86_400.0) {
            return Err(invalid("test_duration_seconds", "must be in (0, 86400]"));
        }
        check_rate(
            "server_packet_loss_rate".into(),
            self.server_packet_loss_rate,
        )?;
        if self.max_retries_server_packet_loss > 1000 {
            return Err(invalid("max_retries_server_packet_loss", "at most 1000"));
        }
        if let Some(spec) = &self.storage {
            spec.parse::<StorageSpec>()
                .map_err(|e| invalid("storage", e.to_string()))?;
        }
        if !(1..=64).contains(&self.frontend_count()) {
            return Err(invalid("frontends", "must be 1 to 64"));
        }
        let mut names = std::collections::HashSet::new();
        for (i, client) in self.clients.iter().enumerate() {
            if !names.insert(&client.name) {
                return Err(invalid(
                    format!("clients[{i}].name"),
                    format!("{:?} is used twice", client.name),
                ));
            }
            if client.keys.is_empty() {
                return Err(invalid(
                    format!("clients[{i}].keys"),
                    "at least one key is needed",
                ));
            }
            if let Some(j) = client
                .keys
                .iter()
                .position(|k| k.is_empty() || k.len() > crate::limits::MAX_KEY_BYTES)
            {
                return Err(invalid(
                    format!("clients[{i}].keys[{j}]"),
                    "keys must be 1 to 1024 bytes",
                ));
            }
            check_rate(
                format!("clients[{i}].client_packet_loss_rate"),
                client.client_packet_loss_rate,
            )?;
        }
        for (i, phase) in self.schedule.iter().enumerate() {
            if !(phase.at >= 0.0 && phase.at.is_finite()) {
                return Err(invalid(
                    format!("schedule[{i}].at"),
                    "must be 0 or more seconds",
                ));
            }
            if !(phase.duration > 0.0 && phase.duration <= 86_400.0) {
                return Err(invalid(
                    format!("schedule[{i}].for"),
                    "must be in (0, 86400]",
                ));
            }
            check_rate(
                format!("schedule[{i}].drop_responses"),
                phase.drop_responses,
            )?;
            check_rate(format!("schedule[{i}].drop_requests"), phase.drop_requests)?;
            let drops = phase.drop_responses > 0.0 || phase.drop_requests > 0.0;
            if phase.pause && drops {
                return Err(invalid(
                    format!("schedule[{i}]"),
                    "a pause holds every call, so its drop rates would never apply: use two \
                     phases",
                ));
            }
            if !phase.pause && !drops {
                return Err(invalid(
                    format!("schedule[{i}]"),
                    "does nothing: give pause, drop_responses or drop_requests",
                ));
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for ScenarioConfig {
    type Err = ConfigError;

    fn from_str(json: &str) -> Result<Self, Self::Err> {
        let config: Self = serde_json::from_str(json)?;
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED_BRIEF: &str = r#"{
      "clients": [
        { "name": "client_1", "keys": ["key1", "key2"], "client_packet_loss_rate": 3.0 }
      ],
      "test_duration_seconds": 30,
      "server_packet_loss_rate": 5.0,
      "max_retries_server_packet_loss": 10
    }"#;

    /// The original brief's config parses unchanged, with defaults for the new fields.
    #[test]
    fn accepts_the_seed_brief_config() {
        let config: ScenarioConfig = SEED_BRIEF.parse().unwrap();
        assert_eq!(config.clients[0].keys, ["key1", "key2"]);
        assert_eq!(config.workload, Workload::Counter);
        assert_eq!(config.seed, None);
    }

    /// Unknown fields and out-of-range values are refused, naming the field.
    #[test]
    fn rejects_bad_fields_by_name() {
        let cases = [
            (
                SEED_BRIEF.replace("\"test_duration_seconds\"", "\"test_duration\""),
                "unknown field `test_duration`",
            ),
            (
                SEED_BRIEF.replace("3.0", "300.0"),
                "clients[0].client_packet_loss_rate",
            ),
            (SEED_BRIEF.replace("5.0", "-1"), "server_packet_loss_rate"),
            (SEED_BRIEF.replace(": 30", ": 0"), "test_duration_seconds"),
            (
                SEED_BRIEF.replace("[\"key1\", \"key2\"]", "[]"),
                "clients[0].keys",
            ),
            (
                SEED_BRIEF.replace("\"clients\"", "\"storage\": \"disk:x\", \"clients\""),
                "storage",
            ),
            (
                SEED_BRIEF.replace("\"clients\"", "\"frontends\": 0, \"clients\""),
                "frontends",
            ),
            (
                SEED_BRIEF.replace(
                    "\"clients\"",
                    "\"schedule\": [{\"at\": 1, \"for\": 0, \"pause\": true}], \"clients\"",
                ),
                "schedule[0].for",
            ),
            (
                SEED_BRIEF.replace(
                    "\"clients\"",
                    "\"schedule\": [{\"at\": 1, \"for\": 2}], \"clients\"",
                ),
                "schedule[0]: does nothing",
            ),
            (
                SEED_BRIEF.replace(
                    "\"clients\"",
                    "\"schedule\": [{\"at\": 1, \"for\": 2, \"drop_responses\": 101}], \"clients\"",
                ),
                "schedule[0].drop_responses",
            ),
        ];
        for (json, field) in cases {
            let err = json.parse::<ScenarioConfig>().unwrap_err().to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
    }
}
