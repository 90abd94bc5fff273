//! Where `ecsd deploy`'s settings come from, first found wins: a flag, an `ECSD_DEPLOY_<FLAG>`
//! variable, the `[env.NAME]` table of `ecsd-deploy.toml` (selected by `--environment NAME`),
//! that file's top level, the default. The file's keys are the long flags; a key it does not
//! know is an error naming it (a typo must not silently deploy with a default).
//!
//! `--environment NAME` also picks the overlay `NAME.json` (or `.yaml`/`.yml`) in `--env-dir`,
//! merged before the `--env` files. Paths in the file are relative to the file. In TOML a
//! top-level `env = [...]` and `[env.NAME]` tables cannot both be: with environments, the
//! overlay list goes into their tables.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::ValueEnum;

use super::args::{Flags, Output, SecretsLookup, WaitUntil, parse_duration};
use super::merge::Mode;

/// The file looked for in the working directory when neither `--config` nor
/// `ECSD_DEPLOY_CONFIG` names one.
pub const FILE: &str = "ecsd-deploy.toml";

/// What kind of value a key takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    /// Text naming a file or directory: relative to the config file when it comes from there.
    Path,
    List,
    PathList,
    Bool,
}

/// The long flags a variable or the file may set.
const KEYS: [(&str, Kind); 32] = [
    ("endpoint-url", Kind::Text),
    ("region", Kind::Text),
    ("profile", Kind::Text),
    ("cluster", Kind::Text),
    ("service", Kind::Text),
    ("image", Kind::Text),
    ("registry", Kind::Text),
    ("app", Kind::Text),
    ("tag", Kind::Text),
    ("template", Kind::Path),
    ("template-label", Kind::Text),
    ("env", Kind::PathList),
    ("env-dir", Kind::Path),
    ("set", Kind::List),
    ("merge", Kind::Text),
    ("execution-role", Kind::Text),
    ("task-role", Kind::Text),
    ("secret-prefix", Kind::Text),
    ("secrets-lookup", Kind::Text),
    ("account-id", Kind::Text),
    ("insecure-registry", Kind::List),
    ("platform", Kind::Text),
    ("pin-digest", Kind::Bool),
    ("indent", Kind::Text),
    ("dry-run", Kind::Bool),
    ("force-new-deployment", Kind::Bool),
    ("no-wait", Kind::Bool),
    ("wait-until", Kind::Text),
    ("desired-count", Kind::Text),
    ("rollback-on-failure", Kind::Bool),
    ("timeout", Kind::Text),
    ("output", Kind::Text),
];

/// A setting as a variable or the file gives it.
#[derive(Debug, Clone, PartialEq)]
enum Raw {
    Text(String),
    List(Vec<String>),
    Bool(bool),
}

/// Why a configuration is unusable (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file '{}' not found (from {from}; looked in {})", .path.display(), .looked_in.display())]
    Missing { path: PathBuf, from: &'static str, looked_in: PathBuf },
    #[error("cannot read '{}': {cause}", .path.display())]
    Unreadable { path: PathBuf, cause: std::io::Error },
    #[error("{}:{line}:{column}: {message}", .path.display())]
    Syntax { path: PathBuf, line: usize, column: usize, message: String },
    #[error(
        "{}: unknown key '{key}'{} (the keys are ecsd deploy's long flags, e.g. cluster, execution-role, env; \
         environments are [env.NAME] tables)",
        .path.display(), in_table(.table)
    )]
    UnknownKey { path: PathBuf, table: Option<String>, key: String },
    /// A value of the wrong type or form: `ECSD_DEPLOY_TIMEOUT=soon: …`, `ecsd-deploy.toml
    /// [env.staging] timeout: …`.
    #[error("{origin}: {problem}")]
    Value { origin: String, problem: ValueProblem },
    #[error(
        "--environment {name}: no {name}.json, {name}.yaml or {name}.yml in {} and no [env.{name}] table{}",
        .dir.display(), .file.as_ref().map(|f| format!(" in {}", f.display())).unwrap_or_else(|| format!(" (no {FILE})"))
    )]
    NoEnvironment { name: String, dir: PathBuf, file: Option<PathBuf> },
}

fn in_table(table: &Option<String>) -> String {
    table.as_ref().map(|t| format!(" in [env.{t}]")).unwrap_or_default()
}

/// What is wrong with one value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueProblem {
    #[error("expected a string")]
    NotText,
    #[error("expected a string or an array of strings")]
    NotList,
    #[error("expected true or false")]
    NotBool,
    #[error("expected a whole number of at least 0")]
    NotCount,
    #[error("expected one of {}", .0.join(", "))]
    NotOneOf(Vec<String>),
    #[error("not a duration such as 90s, 15m or 1h")]
    NotDuration,
    #[error("expected a table of settings")]
    NotTable,
}

/// Where a value came from, for its error.
#[derive(Debug, Clone)]
enum Origin<'a> {
    Variable { name: &'a str, value: &'a str },
    File { path: &'a Path, table: Option<&'a str>, key: &'a str },
}

impl std::fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Variable { name, value } => write!(f, "{name}={value}"),
            Origin::File { path, table: Some(t), key } => write!(f, "{} [env.{t}] {key}", path.display()),
            Origin::File { path, table: None, key } => write!(f, "{} {key}", path.display()),
        }
    }
}

/// The variable of a long flag: `execution-role` → `ECSD_DEPLOY_EXECUTION_ROLE`.
pub fn variable(key: &str) -> String {
    format!("ECSD_DEPLOY_{}", key.to_ascii_uppercase().replace('-', "_"))
}

/// The flags with every one not given filled from the variables and the file, and
/// `--environment`'s overlay put first among the `--env` files.
pub fn resolve(
    mut flags: Flags,
    env: &dyn Fn(&str) -> Option<String>,
    cwd: &Path,
) -> Result<Flags, ConfigError> {
    let var = |name: &str| env(name).filter(|v| !v.is_empty());
    if flags.environment.is_none() {
        flags.environment = var("ECSD_DEPLOY_ENVIRONMENT");
    }
    let mut taken = BTreeSet::new();
    for (key, kind) in KEYS {
        let name = variable(key);
        let Some(value) = var(&name) else { continue };
        let raw = match kind {
            // One `--set` per variable: a JSON value may hold commas.
            Kind::List if key == "set" => Raw::List(vec![value.clone()]),
            Kind::List | Kind::PathList => Raw::List(
                value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect(),
            ),
            Kind::Bool => Raw::Bool(parse_bool(&value).ok_or_else(|| ConfigError::Value {
                origin: Origin::Variable { name: &name, value: &value }.to_string(),
                problem: ValueProblem::NotBool,
            })?),
            _ => Raw::Text(value.clone()),
        };
        set(&mut flags, key, raw, None, &Origin::Variable { name: &name, value: &value })?;
        taken.insert(key.to_owned());
    }
    let file = match (&flags.config, var("ECSD_DEPLOY_CONFIG")) {
        (Some(path), _) => Some((path.clone(), "--config")),
        (None, Some(path)) => Some((PathBuf::from(path), "ECSD_DEPLOY_CONFIG")),
        (None, None) => cwd.join(FILE).is_file().then(|| (PathBuf::from(FILE), "the working directory")),
    };
    let mut environment_table = false;
    let mut file_path = None;
    if let Some((path, from)) = file {
        let full = if path.is_absolute() { path.clone() } else { cwd.join(&path) };
        let table = load(&path, &full, from)?;
        let base = full.parent().unwrap_or(cwd).to_owned();
        let environments = match table.get("env") {
            Some(toml::Value::Table(t)) => Some(t),
            _ => None,
        };
        if let (Some(name), Some(environments)) = (flags.environment.clone(), environments)
            && let Some(selected) = environments.get(&name)
        {
            let toml::Value::Table(selected) = selected else {
                return Err(ConfigError::Value {
                    origin: format!("{} [env.{name}]", path.display()),
                    problem: ValueProblem::NotTable,
                });
            };
            environment_table = true;
            apply_table(&mut flags, selected, &path, Some(&name), &base, &mut taken)?;
        }
        if let Some(environments) = environments {
            // Check every environment's keys, not only the one selected today.
            for (name, t) in environments {
                if let toml::Value::Table(t) = t {
                    check_keys(t, &path, Some(name))?;
                }
            }
        }
        let top: toml::Table = table
            .iter()
            .filter(|(k, v)| !(*k == "env" && v.is_table()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        apply_table(&mut flags, &top, &path, None, &base, &mut taken)?;
        file_path = Some(path);
    }
    if let Some(name) = flags.environment.clone() {
        let dir = flags.env_dir.clone().unwrap_or_else(|| PathBuf::from("."));
        let full_dir = if dir.is_absolute() { dir.clone() } else { cwd.join(&dir) };
        let found = ["json", "yaml", "yml"].iter().map(|ext| format!("{name}.{ext}")).find_map(|file| {
            full_dir
                .join(&file)
                .is_file()
                .then(|| if dir == Path::new(".") { file.into() } else { dir.join(file) })
        });
        match found {
            Some(overlay) => flags.env_files.insert(0, overlay),
            None if environment_table => {}
            None => return Err(ConfigError::NoEnvironment { name, dir: full_dir, file: file_path }),
        }
    }
    Ok(flags)
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn load(path: &Path, full: &Path, from: &'static str) -> Result<toml::Table, ConfigError> {
    let text = match std::fs::read_to_string(full) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ConfigError::Missing { path: path.to_owned(), from, looked_in: full.to_owned() });
        }
        Err(cause) => return Err(ConfigError::Unreadable { path: path.to_owned(), cause }),
    };
    text.parse::<toml::Table>().map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        let before = &text[..offset.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        ConfigError::Syntax { path: path.to_owned(), line, column, message: e.message().to_owned() }
    })
}

fn kind_of(key: &str) -> Option<Kind> {
    KEYS.iter().find(|(k, _)| *k == key).map(|(_, kind)| *kind)
}

fn check_keys(table: &toml::Table, path: &Path, env: Option<&str>) -> Result<(), ConfigError> {
    match table.keys().find(|k| kind_of(k).is_none()) {
        Some(key) => Err(ConfigError::UnknownKey {
            path: path.to_owned(),
            table: env.map(str::to_owned),
            key: key.clone(),
        }),
        None => Ok(()),
    }
}

/// Sets each key of `table` not taken by a layer above.
fn apply_table(
    flags: &mut Flags,
    table: &toml::Table,
    path: &Path,
    env: Option<&str>,
    base: &Path,
    taken: &mut BTreeSet<String>,
) -> Result<(), ConfigError> {
    check_keys(table, path, env)?;
    for (key, value) in table {
        let Some(kind) = kind_of(key) else { continue };
        if taken.contains(key) {
            continue;
        }
        let origin = Origin::File { path, table: env, key };
        let bad = |problem| ConfigError::Value { origin: origin.to_string(), problem };
        let raw = match (kind, value) {
            (Kind::Bool, toml::Value::Boolean(b)) => Raw::Bool(*b),
            (Kind::Bool, _) => return Err(bad(ValueProblem::NotBool)),
            (Kind::List | Kind::PathList, toml::Value::String(s)) => Raw::List(vec![s.clone()]),
            (Kind::List | Kind::PathList, toml::Value::Array(items)) => Raw::List(
                items
                    .iter()
                    .map(|i| i.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| bad(ValueProblem::NotList))?,
            ),
            (Kind::List | Kind::PathList, _) => return Err(bad(ValueProblem::NotList)),
            (_, toml::Value::String(s)) => Raw::Text(s.clone()),
            // indent, desired-count and timeout (seconds) may be numbers.
            (_, toml::Value::Integer(n))
                if matches!(key.as_str(), "indent" | "desired-count" | "timeout") =>
            {
                Raw::Text(n.to_string())
            }
            _ => return Err(bad(ValueProblem::NotText)),
        };
        set(flags, key, raw, Some(base), &origin)?;
        taken.insert(key.clone());
    }
    Ok(())
}

/// Sets the flag `key` to `raw` unless it is set already. `base`: the directory relative
/// paths are relative to (the config file's), `None` for the working directory.
fn set(
    flags: &mut Flags,
    key: &str,
    raw: Raw,
    base: Option<&Path>,
    origin: &Origin<'_>,
) -> Result<(), ConfigError> {
    let bad = |problem| ConfigError::Value { origin: origin.to_string(), problem };
    let path = |s: &str| match base {
        Some(base) if Path::new(s).is_relative() => base.join(s),
        _ => PathBuf::from(s),
    };
    fn fill<T>(
        field: &mut Option<T>,
        value: impl FnOnce() -> Result<T, ConfigError>,
    ) -> Result<(), ConfigError> {
        if field.is_none() {
            *field = Some(value()?);
        }
        Ok(())
    }
    fn choice<T: ValueEnum>(s: &str) -> Result<T, ValueProblem> {
        T::from_str(s, false).map_err(|_| {
            ValueProblem::NotOneOf(
                T::value_variants()
                    .iter()
                    .filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_owned()))
                    .collect(),
            )
        })
    }
    match raw {
        Raw::Bool(b) => {
            let field = match key {
                "dry-run" => &mut flags.dry_run,
                "force-new-deployment" => &mut flags.force_new_deployment,
                "no-wait" => &mut flags.no_wait,
                "rollback-on-failure" => &mut flags.rollback_on_failure,
                "pin-digest" => &mut flags.pin_digest,
                _ => return Err(bad(ValueProblem::NotText)),
            };
            // A flag given stays; false cannot be given as a flag.
            *field = *field || b;
        }
        Raw::List(items) => {
            let field_empty = match key {
                "env" => flags.env_files.is_empty(),
                "set" => flags.sets.is_empty(),
                "insecure-registry" => flags.insecure_registry.is_empty(),
                _ => return Err(bad(ValueProblem::NotText)),
            };
            if field_empty {
                match key {
                    "env" => flags.env_files = items.iter().map(|s| path(s)).collect(),
                    "set" => flags.sets = items,
                    _ => flags.insecure_registry = items,
                }
            }
        }
        Raw::Text(s) => {
            let text = || Ok(s.clone());
            match key {
                "endpoint-url" => fill(&mut flags.endpoint_url, text)?,
                "region" => fill(&mut flags.region, text)?,
                "profile" => fill(&mut flags.profile, text)?,
                "cluster" => fill(&mut flags.cluster, text)?,
                "service" => fill(&mut flags.service, text)?,
                "image" => fill(&mut flags.image, text)?,
                "registry" => fill(&mut flags.registry, text)?,
                "app" => fill(&mut flags.app, text)?,
                "tag" => fill(&mut flags.tag, text)?,
                "template" => fill(&mut flags.template, || Ok(path(&s)))?,
                "template-label" => fill(&mut flags.template_label, text)?,
                "env-dir" => fill(&mut flags.env_dir, || Ok(path(&s)))?,
                "merge" => fill(&mut flags.merge, || choice::<Mode>(&s).map_err(bad))?,
                "execution-role" => fill(&mut flags.execution_role, text)?,
                "task-role" => fill(&mut flags.task_role, text)?,
                "secret-prefix" => fill(&mut flags.secret_prefix, text)?,
                "secrets-lookup" => {
                    fill(&mut flags.secrets_lookup, || choice::<SecretsLookup>(&s).map_err(bad))?
                }
                "account-id" => fill(&mut flags.account_id, text)?,
                "platform" => fill(&mut flags.platform, text)?,
                "indent" => fill(&mut flags.indent, || s.parse().map_err(|_| bad(ValueProblem::NotCount)))?,
                "wait-until" => fill(&mut flags.wait_until, || choice::<WaitUntil>(&s).map_err(bad))?,
                "desired-count" => fill(&mut flags.desired_count, || {
                    s.parse::<i32>().ok().filter(|n| *n >= 0).ok_or_else(|| bad(ValueProblem::NotCount))
                })?,
                "timeout" => fill(&mut flags.timeout, || {
                    parse_duration(&s).map_err(|_| bad(ValueProblem::NotDuration))
                })?,
                "output" => fill(&mut flags.output, || choice::<Output>(&s).map_err(bad))?,
                _ => return Err(bad(ValueProblem::NotList)),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        flags: Flags,
    }

    fn resolved(
        args: &[&str],
        vars: &[(&str, &str)],
        toml: Option<&str>,
    ) -> (Result<Flags, ConfigError>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        if let Some(toml) = toml {
            std::fs::write(dir.path().join(FILE), toml).unwrap();
        }
        let vars: BTreeMap<String, String> =
            vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let flags = Cli::parse_from(std::iter::once("deploy").chain(args.iter().copied())).flags;
        (resolve(flags, &|k| vars.get(k).cloned(), dir.path()), dir)
    }

    const FILE_TEXT: &str = r#"
cluster = "from-file"
service = "web"
secret-prefix = "file/"
timeout = 60
rollback-on-failure = true

[env.staging]
cluster = "staging-cluster"
execution-role = "stagingRole"
env = ["common.json"]
"#;

    #[test]
    fn flags_beat_variables_beat_the_environment_table_beat_the_file_beat_defaults() {
        let (flags, dir) = resolved(
            &["--cluster", "from-flag", "--environment", "staging"],
            &[
                ("ECSD_DEPLOY_CLUSTER", "from-variable"),
                ("ECSD_DEPLOY_SECRET_PREFIX", "variable/"),
                ("ECSD_DEPLOY_ROLLBACK_ON_FAILURE", "false"),
                ("ECSD_DEPLOY_REGION", "eu-west-1"),
            ],
            Some(FILE_TEXT),
        );
        let flags = flags.unwrap();
        assert_eq!(flags.cluster.as_deref(), Some("from-flag"));
        assert_eq!(flags.secret_prefix(), "variable/");
        assert_eq!(flags.region.as_deref(), Some("eu-west-1"));
        // A variable's false is not overridden by the file's true.
        assert!(!flags.rollback_on_failure);
        assert_eq!(flags.execution_role.as_deref(), Some("stagingRole"), "[env.staging]");
        assert_eq!(flags.service.as_deref(), Some("web"), "the file's top level");
        assert_eq!(flags.timeout(), Duration::from_secs(60));
        assert_eq!(flags.env_files, [dir.path().join("common.json")], "relative to the file");
        assert_eq!(flags.merge(), Mode::Strategic, "the default");
        assert_eq!(flags.template_label(), "ECS_TASK_TEMPLATE");

        // Without the flag, the variable; without both, the table; no environment, the top level.
        let (flags, _dir) =
            resolved(&["--environment", "staging"], &[("ECSD_DEPLOY_CLUSTER", "v")], Some(FILE_TEXT));
        assert_eq!(flags.unwrap().cluster.as_deref(), Some("v"));
        let (flags, _dir) = resolved(&["--environment", "staging"], &[], Some(FILE_TEXT));
        let flags = flags.unwrap();
        assert_eq!(flags.cluster.as_deref(), Some("staging-cluster"));
        assert!(flags.rollback_on_failure);
        let (flags, _dir) = resolved(&[], &[], Some(FILE_TEXT));
        let flags = flags.unwrap();
        assert_eq!((flags.cluster.as_deref(), flags.execution_role), (Some("from-file"), None));
        // --env on the command line replaces the file's list.
        let (flags, _dir) = resolved(&["--env", "a.json", "--environment", "staging"], &[], Some(FILE_TEXT));
        assert_eq!(flags.unwrap().env_files, [PathBuf::from("a.json")]);
        // No file at all: defaults.
        let (flags, _dir) = resolved(&[], &[], None);
        let flags = flags.unwrap();
        assert_eq!((flags.cluster.as_deref(), flags.timeout()), (None, Duration::from_secs(900)));
    }

    #[test]
    fn the_environment_picks_its_overlay_file_before_the_env_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("envs")).unwrap();
        std::fs::write(dir.path().join("envs/prod.yaml"), "{}").unwrap();
        let flags =
            Cli::parse_from(["deploy", "--environment", "prod", "--env-dir", "envs", "--env", "x.json"])
                .flags;
        let flags = resolve(flags, &|_| None, dir.path()).unwrap();
        assert_eq!(flags.env_files, [PathBuf::from("envs/prod.yaml"), PathBuf::from("x.json")]);
        let flags = Cli::parse_from(["deploy", "--environment", "qa", "--env-dir", "envs"]).flags;
        let e = resolve(flags, &|_| None, dir.path()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "--environment qa: no qa.json, qa.yaml or qa.yml in {} and no [env.qa] table (no {FILE})",
                dir.path().join("envs").display()
            )
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors_that_name_them() {
        let (e, dir) = resolved(&[], &[], Some("clustr = \"x\"\n"));
        assert_eq!(
            e.unwrap_err().to_string(),
            format!(
                "{FILE}: unknown key 'clustr' (the keys are ecsd deploy's long flags, e.g. cluster, execution-role, \
                 env; environments are [env.NAME] tables)"
            )
        );
        drop(dir);
        // In a table not selected today too.
        let (e, _dir) = resolved(&[], &[], Some("[env.prod]\nexecution_role = \"x\"\n"));
        assert!(
            e.unwrap_err()
                .to_string()
                .starts_with(&format!("{FILE}: unknown key 'execution_role' in [env.prod] "))
        );
        let (e, _dir) = resolved(&[], &[("ECSD_DEPLOY_TIMEOUT", "soon")], None);
        assert_eq!(
            e.unwrap_err().to_string(),
            "ECSD_DEPLOY_TIMEOUT=soon: not a duration such as 90s, 15m or 1h"
        );
        let (e, _dir) = resolved(&[], &[], Some("merge = \"deep\"\n"));
        assert_eq!(
            e.unwrap_err().to_string(),
            format!("{FILE} merge: expected one of strategic, lodash, merge-patch")
        );
        let (e, _dir) = resolved(&[], &[], Some("no-wait = \"yes\"\n"));
        assert_eq!(e.unwrap_err().to_string(), format!("{FILE} no-wait: expected true or false"));
        let (e, _dir) = resolved(&[], &[], Some("cluster = \n"));
        assert!(e.unwrap_err().to_string().starts_with(&format!("{FILE}:1:")));
        // Positive control: the same keys spelled right.
        let (flags, _dir) = resolved(&[], &[], Some("cluster = \"x\"\nmerge = \"lodash\"\nno-wait = true\n"));
        let flags = flags.unwrap();
        assert_eq!((flags.cluster.as_deref(), flags.merge(), flags.no_wait), (Some("x"), Mode::Lodash, true));
    }
}
