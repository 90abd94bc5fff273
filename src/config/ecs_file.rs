//! `/etc/ecs/ecs.config`, read as ecs-init and systemd's `EnvironmentFile=` read it: one
//! `KEY=value` a line, split at the first `=`, no shell expansion.
//!
//! Its values sit below the real environment and above ecsd's own config file:
//! [`EcsConfig::under`] is the lookup the rest of [`crate::config`] reads through.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The file ecs-init's users already have.
pub const DEFAULT_PATH: &str = "/etc/ecs/ecs.config";

/// The ECS agent's and ecs-init's variables that ecsd honours; the README lists each.
pub const HONOURED: &[&str] = &[
    "ECS_ALLOW_OFFHOST_INTROSPECTION_ACCESS",
    "ECS_CLUSTER",
    "ECS_CONTAINER_START_TIMEOUT",
    "ECS_CONTAINER_STOP_TIMEOUT",
    "ECS_DISABLE_IMAGE_CLEANUP",
    "ECS_DYNAMIC_HOST_PORT_RANGE",
    "ECS_ENABLE_UNTRACKED_IMAGE_CLEANUP",
    "ECS_ENGINE_AUTH_DATA",
    "ECS_ENGINE_AUTH_TYPE",
    "ECS_ENGINE_TASK_CLEANUP_WAIT_DURATION",
    "ECS_EXCLUDE_UNTRACKED_IMAGE",
    "ECS_IMAGE_CLEANUP_INTERVAL",
    "ECS_IMAGE_MINIMUM_CLEANUP_AGE",
    "ECS_IMAGE_PULL_BEHAVIOR",
    "ECS_IMAGE_PULL_INACTIVITY_TIMEOUT",
    "ECS_IMAGE_PULL_TIMEOUT",
    "ECS_INSTANCE_ATTRIBUTES",
    "ECS_LOGLEVEL",
    "ECS_MANIFEST_PULL_TIMEOUT",
    "ECS_NUM_IMAGES_DELETE_PER_CYCLE",
    "ECS_RESERVED_MEMORY",
    "ECS_RESERVED_PORTS",
    "ECS_RESERVED_PORTS_UDP",
    "ECS_SKIP_LOCALHOST_TRAFFIC_FILTER",
    "ECS_TASK_METADATA_RPS_LIMIT",
    // ecsd's own, named like the agent's.
    "ECS_ENDPOINT_URL",
    "ECS_ENDPOINT_AWS_REGION",
    "ECS_ENDPOINT_AWS_ACCESS_KEY_ID",
    "ECS_ENDPOINT_AWS_SECRET_ACCESS_KEY",
    "ECS_ENDPOINT_AWS_SESSION_TOKEN",
    "ECS_ENDPOINT_AWS_PROFILE",
    "ECS_EXTERNAL_NETWORKS",
];

/// Agent variables ecsd knows but does not act on (yet): a file that sets one is told so,
/// rather than left to believe it took effect.
pub const NOT_HONOURED: &[&str] = &[
    "ECS_AGENT_LABELS",
    "ECS_AVAILABLE_LOGGING_DRIVERS",
    "ECS_AWSVPC_ADDITIONAL_LOCAL_ROUTES",
    "ECS_AWSVPC_BLOCK_IMDS",
    "ECS_CGROUP_CPU_PERIOD",
    "ECS_CHECKPOINT",
    "ECS_CNI_PLUGINS_PATH",
    "ECS_CONTAINER_CREATE_TIMEOUT",
    "ECS_DATADIR",
    "ECS_DISABLE_PRIVILEGED",
    "ECS_ENABLE_AWSLOGS_EXECUTIONROLE_OVERRIDE",
    "ECS_ENABLE_CONTAINER_METADATA",
    "ECS_ENABLE_GPU_SUPPORT",
    "ECS_ENABLE_RUNTIME_STATS",
    "ECS_ENABLE_SPOT_INSTANCE_DRAINING",
    "ECS_ENABLE_TASK_CPU_MEM_LIMIT",
    "ECS_ENABLE_TASK_ENI",
    "ECS_ENABLE_TASK_IAM_ROLE",
    "ECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST",
    "ECS_ENGINE_TASK_CLEANUP_WAIT_DURATION_JITTER",
    "ECS_LOGFILE",
    "ECS_LOG_DRIVER",
    "ECS_LOG_OPTS",
    "ECS_PULL_DEPENDENT_CONTAINERS_UPFRONT",
    "ECS_SELINUX_CAPABLE",
    "ECS_TASK_PIDS_LIMIT",
    "ECS_UPDATES_ENABLED",
    "ECS_UPDATE_DOWNLOAD_DIR",
    "ECS_WARM_POOLS_CHECK",
];

/// A line that is not `KEY=value` with a usable key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    pub line: usize,
    pub reason: String,
}

/// The file's variables and what a reader should be warned about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EcsConfig {
    pub path: Option<PathBuf>,
    pub values: BTreeMap<String, String>,
    /// One per key, in file order: unknown `ECS_*` keys and agent variables ecsd ignores.
    pub warnings: Vec<String>,
}

impl EcsConfig {
    /// Reads `path`; a missing file is an empty config unless `required`.
    pub fn read(path: &Path, required: bool) -> Result<EcsConfig, std::io::Error> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(EcsConfig::default());
            }
            Err(e) => return Err(e),
        };
        let mut config = parse(&text).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        config.path = Some(path.to_owned());
        Ok(config)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }
}

/// Parses the file's text. Blank lines and lines starting with `#` or `;` are comments (as
/// systemd reads them); a value wholly inside matching quotes loses them; `$` is literal.
/// A line without `=` is ignored with a warning, as ecs-init ignores it; a key that is not a
/// variable name (letters, digits and `_`, not starting with a digit) is an error, since
/// neither ecs-init's agent nor systemd would see what its author meant.
pub fn parse(text: &str) -> Result<EcsConfig, ParseError> {
    let mut config = EcsConfig::default();
    let mut warned = std::collections::BTreeSet::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            config.warnings.push(format!("line {}: no '=' in {line:?}; ignored", i + 1));
            continue;
        };
        let key = key.trim();
        if !is_variable_name(key) {
            return Err(ParseError {
                line: i + 1,
                reason: format!(
                    "{key:?} is not a variable name (letters, digits and _, not starting with a digit)"
                ),
            });
        }
        let value = unquote(value.trim());
        if key.starts_with("ECS_") && warned.insert(key.to_owned()) {
            if NOT_HONOURED.contains(&key) {
                config
                    .warnings
                    .push(format!("{key}: an ECS agent variable ecsd does not honour yet; ignored"));
            } else if !HONOURED.contains(&key) {
                config.warnings.push(format!("{key}: not an ECS agent variable ecsd knows; ignored"));
            }
        }
        // A later line wins, as in an environment file.
        config.values.insert(key.to_owned(), value.to_owned());
    }
    Ok(config)
}

fn is_variable_name(key: &str) -> bool {
    let mut bytes = key.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn unquote(value: &str) -> &str {
    for q in ['"', '\''] {
        if value.len() >= 2 && value.starts_with(q) && value.ends_with(q) {
            return &value[1..value.len() - 1];
        }
    }
    value
}

impl EcsConfig {
    /// The lookup the config reads: the real environment `env` first (a blank variable
    /// counts as unset), then this file.
    pub fn under(&self, env: &dyn Fn(&str) -> Option<String>, key: &str) -> Option<String> {
        env(key).filter(|v| !v.is_empty()).or_else(|| self.get(key).map(str::to_owned))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_values_comments_and_quotes() {
        let c = parse(
            "# the cluster\n\
             ECS_CLUSTER=prod\n\
             \n\
             ; systemd's other comment\n\
             \x20 ECS_RESERVED_PORTS = [22, 8080]  \n\
             ECS_ENGINE_AUTH_DATA={\"https://r\":{\"auth\":\"a=b==\"}}\n\
             ECS_LOGLEVEL=\"debug\"\n\
             ECSD_TASK_RETENTION='2h'\n\
             ECSD_EXEC_URL=$HOME/x\n\
             ECS_CONTAINER_STOP_TIMEOUT=\"10s'\n",
        )
        .unwrap();
        assert_eq!(c.get("ECS_CLUSTER"), Some("prod"));
        assert_eq!(c.get("ECS_RESERVED_PORTS"), Some("[22, 8080]"));
        // Split at the first '=' only.
        assert_eq!(c.get("ECS_ENGINE_AUTH_DATA"), Some("{\"https://r\":{\"auth\":\"a=b==\"}}"));
        assert_eq!(c.get("ECS_LOGLEVEL"), Some("debug"));
        assert_eq!(c.get("ECSD_TASK_RETENTION"), Some("2h"));
        // No expansion; unmatched quotes stay.
        assert_eq!(c.get("ECSD_EXEC_URL"), Some("$HOME/x"));
        assert_eq!(c.get("ECS_CONTAINER_STOP_TIMEOUT"), Some("\"10s'"));
        assert_eq!(c.values.len(), 7);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn a_later_line_wins_and_an_empty_value_is_kept() {
        let c = parse("ECS_CLUSTER=a\nECS_CLUSTER=b\nECS_LOGLEVEL=\n").unwrap();
        assert_eq!(c.get("ECS_CLUSTER"), Some("b"));
        assert_eq!(c.get("ECS_LOGLEVEL"), Some(""));
    }

    #[test]
    fn bad_keys_are_errors_naming_the_line() {
        let e = parse("ECS_CLUSTER=a\nexport ECS_LOGLEVEL=debug\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert_eq!(
            e.to_string(),
            "line 2: \"export ECS_LOGLEVEL\" is not a variable name (letters, digits and _, not starting with a digit)"
        );
        assert_eq!(parse("=x\n").unwrap_err().line, 1);
        assert_eq!(parse("1ECS=x\n").unwrap_err().line, 1);
        assert_eq!(parse("ECS-CLUSTER=x\n").unwrap_err().line, 1);
    }

    #[test]
    fn unknown_and_ignored_agent_keys_are_warned_once_each() {
        let c = parse(
            "ECS_CLUSTER=a\nECS_NO_SUCH=1\nECS_NO_SUCH=2\nECS_ENABLE_GPU_SUPPORT=true\nJUST A LINE\nOTHER=1\n",
        )
        .unwrap();
        assert_eq!(
            c.warnings,
            [
                "ECS_NO_SUCH: not an ECS agent variable ecsd knows; ignored",
                "ECS_ENABLE_GPU_SUPPORT: an ECS agent variable ecsd does not honour yet; ignored",
                "line 5: no '=' in \"JUST A LINE\"; ignored",
            ]
        );
        // Non-ECS keys (AWS_REGION, ECSD_*) are passed on without a word.
        assert_eq!(c.get("OTHER"), Some("1"));
    }

    #[test]
    fn the_environment_wins_over_the_file_unless_blank() {
        let file = parse("ECS_CLUSTER=file\nECS_LOGLEVEL=warn\nECSD_LISTEN=127.0.0.1:1\n").unwrap();
        let env = |k: &str| match k {
            "ECS_CLUSTER" => Some("env".to_owned()),
            "ECSD_LISTEN" => Some(String::new()),
            _ => None,
        };
        assert_eq!(file.under(&env, "ECS_CLUSTER").as_deref(), Some("env"));
        assert_eq!(file.under(&env, "ECS_LOGLEVEL").as_deref(), Some("warn"));
        assert_eq!(file.under(&env, "ECSD_LISTEN").as_deref(), Some("127.0.0.1:1"));
        assert_eq!(file.under(&env, "ECS_NONE"), None);
    }

    #[test]
    fn read_tolerates_a_missing_default_file_only() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("ecs.config");
        assert_eq!(EcsConfig::read(&missing, false).unwrap(), EcsConfig::default());
        assert_eq!(EcsConfig::read(&missing, true).unwrap_err().kind(), std::io::ErrorKind::NotFound);
        std::fs::write(&missing, "ECS_CLUSTER=x\n").unwrap();
        let c = EcsConfig::read(&missing, true).unwrap();
        assert_eq!(c.path.as_deref(), Some(missing.as_path()));
        assert_eq!(c.get("ECS_CLUSTER"), Some("x"));
    }
}
