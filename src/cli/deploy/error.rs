//! What `ecsd deploy` can fail with, and the exit code of each failure (reference
//! deploy.md §7.8): 2 bad input, 3 unresolvable, 4 rejected by ECS, 1 anything else.

use std::path::PathBuf;

use crate::aws::AwsError;
use crate::engine::registry_auth::AuthError;
use crate::runtime::RuntimeError;

use super::config::ConfigError;
use super::merge::MergeError;

/// Exit codes users and CI scripts rely on.
pub mod exit {
    pub const UNEXPECTED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const RESOLUTION: u8 = 3;
    pub const REJECTED: u8 = 4;
    pub const FAILED: u8 = 5;
    pub const TIMEOUT: u8 = 6;
    /// The deployment failed and `--rollback-on-failure`'s rollback did not complete.
    pub const ROLLBACK_FAILED: u8 = 7;
    /// SIGINT while waiting (the deployment goes on).
    pub const INTERRUPTED: u8 = 130;
    /// SIGTERM while waiting (the deployment goes on).
    pub const TERMINATED: u8 = 143;
}

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("environment file '{}' not found (from --env; looked in {})", .path.display(), .looked_in.display())]
    EnvFileMissing { path: PathBuf, looked_in: PathBuf },
    #[error("template file '{}' not found (from --template; looked in {})", .path.display(), .looked_in.display())]
    TemplateMissing { path: PathBuf, looked_in: PathBuf },
    #[error("cannot read '{}': {cause}", .path.display())]
    Unreadable { path: PathBuf, cause: std::io::Error },
    /// A malformed JSON or YAML file, at its line and column.
    #[error("{}:{line}:{column}: {message}", .path.display())]
    Syntax { path: PathBuf, line: usize, column: usize, message: String },
    #[error("{}: {what} must be a JSON object, not {kind}", .path.display())]
    NotAnObject { path: PathBuf, what: &'static str, kind: &'static str },
    #[error(transparent)]
    Merge(#[from] MergeError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("--set {arg}: {reason}")]
    Set { arg: String, reason: SetProblem },
    #[error(
        "no template: pass --template FILE, or --image (or --registry/--app/--tag) to read the image's '{label}' label"
    )]
    NoTemplate { label: String },
    #[error("--platform {0}: not a linux platform such as linux/amd64 or linux/arm64/v8")]
    Platform(String),
    #[error("--pin-digest needs --image (or --registry/--app/--tag): the image to pin")]
    PinWithoutImage,
    #[error("{verb} needs --service")]
    NoService { verb: &'static str },
    /// The registry could not give the image's config.
    #[error("cannot read the template label of {image}: {cause}")]
    Registry { image: String, cause: Box<RuntimeError> },
    /// The registry's credentials could not be had (an ECR login, a credential helper).
    #[error("cannot get credentials for the registry of {image}: {cause}")]
    RegistryAuth { image: String, cause: Box<AuthError> },
    /// The registry or AWS settings in the environment are unusable.
    #[error("{0}")]
    Settings(crate::config::ConfigError),
    #[error(
        "image {image} has no label '{label}' (labels: {}); build with --build-arg {label}=\"$(cat ecs_task_template.json)\" and LABEL {label}=${label}, or pass --template",
        if .labels.is_empty() { "none".to_owned() } else { .labels.join(", ") }
    )]
    NoLabel { image: String, label: String, labels: Vec<String> },
    #[error("label '{label}' of {image} is not valid JSON: line {line} column {column}: {message}")]
    LabelNotJson { image: String, label: String, line: usize, column: usize, message: String },
    #[error("role '{name}' not found (iam:GetRole: {cause})")]
    Role { name: String, cause: Box<AwsError> },
    /// A secret or parameter a container names does not exist (or could not be looked up).
    #[error(transparent)]
    Unresolved(Box<Unresolved>),
    /// ECS refused a request about the rendered definition or the service.
    #[error("{operation} rejected {what}: {cause}{}", kept_note(.kept))]
    Rejected { operation: &'static str, what: &'static str, cause: Box<AwsError>, kept: Option<PathBuf> },
    /// A call that could not be made or answered (transport, throttling, 5xx).
    #[error("{operation}: {cause}")]
    Call { operation: &'static str, cause: Box<AwsError> },
    #[error("service '{service}' not found in cluster '{cluster}'")]
    ServiceNotFound { cluster: String, service: String },
    #[error(
        "{service} runs {current} and no earlier revision completed a deployment; pass --to FAMILY:REVISION"
    )]
    NothingToRollBackTo { service: String, current: String },
    #[error("cannot write the output: {0}")]
    Output(std::io::Error),
}

fn kept_note(kept: &Option<PathBuf>) -> String {
    kept.as_ref().map(|p| format!("\nrendered input kept at {}", p.display())).unwrap_or_default()
}

/// A container's secret whose ARN could not be found.
#[derive(Debug, thiserror::Error)]
pub enum Unresolved {
    #[error(
        "containerDefinitions[{container}] ('{container_name}').{field}[{index}] '{name}': no Secrets Manager secret named '{secret}' in {region} (DescribeSecret: {cause})"
    )]
    Secret {
        container: usize,
        container_name: String,
        field: &'static str,
        index: usize,
        name: String,
        secret: String,
        region: String,
        cause: Box<AwsError>,
    },
    #[error(
        "containerDefinitions[{container}] ('{container_name}').{field}[{index}] '{name}': no Secrets Manager secret named '{secret}' in {region} (ListSecrets: {cause})"
    )]
    Listed {
        container: usize,
        container_name: String,
        field: &'static str,
        index: usize,
        name: String,
        secret: String,
        region: String,
        cause: ListProblem,
    },
    #[error(
        "containerDefinitions[{container}] ('{container_name}').{field}[{index}] '{name}': parameter '{parameter}' not found in {region} (ssm:GetParameters: {cause})"
    )]
    Parameter {
        container: usize,
        container_name: String,
        field: &'static str,
        index: usize,
        name: String,
        parameter: String,
        region: String,
        cause: ParameterProblem,
    },
}

/// Why a `--set` argument is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetProblem {
    #[error("expected POINTER=JSON, e.g. /containerDefinitions/0/cpu=256")]
    Shape,
    #[error("the pointer must start with '/'")]
    Pointer,
    #[error("the value is not JSON ({0}); quote strings: /family='\"web\"'")]
    Value(String),
    #[error("{0} does not exist")]
    Missing(String),
    #[error("{0} is not an object or an array")]
    NotContainer(String),
}

/// Why `--secrets-lookup list` found no secret of a name.
#[derive(Debug, thiserror::Error)]
pub enum ListProblem {
    #[error(
        "no secret of exactly that name{}",
        if .similar.is_empty() { String::new() } else { format!("; longer names that start with it: {}", .similar.join(", ")) }
    )]
    NoExactName { similar: Vec<String> },
    #[error("{0}")]
    Call(Box<AwsError>),
}

/// Why an `ssm:` reference did not resolve.
#[derive(Debug, thiserror::Error)]
pub enum ParameterProblem {
    #[error("ParameterNotFound")]
    NotFound,
    #[error("{0}")]
    Call(Box<AwsError>),
}

impl DeployError {
    pub fn exit_code(&self) -> u8 {
        use DeployError::*;
        match self {
            EnvFileMissing { .. }
            | TemplateMissing { .. }
            | Unreadable { .. }
            | Syntax { .. }
            | NotAnObject { .. }
            | Merge(_)
            | Config(_)
            | Settings(_)
            | Set { .. }
            | NoTemplate { .. }
            | Platform(_)
            | NoService { .. }
            | PinWithoutImage => exit::USAGE,
            Registry { .. }
            | RegistryAuth { .. }
            | NoLabel { .. }
            | LabelNotJson { .. }
            | Role { .. }
            | Unresolved(_)
            | NothingToRollBackTo { .. } => exit::RESOLUTION,
            Rejected { .. } | ServiceNotFound { .. } => exit::REJECTED,
            Call { .. } | Output(_) => exit::UNEXPECTED,
        }
    }
}

/// Whether ECS answered a request with a client error about it (4xx), as opposed to a
/// failure to call (transport, throttling, 5xx).
pub fn is_rejection(e: &AwsError) -> bool {
    matches!(e, AwsError::Service { status, code, .. }
        if (400..500).contains(status) && code.as_deref() != Some("ThrottlingException"))
}
