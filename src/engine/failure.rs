//! Why a task could not start, typed until it is recorded: the record keeps the reason as ECS
//! shows it (`stoppedReason`, a container's `reason`), rendered here in the agent's words.

use crate::endpoints::{OpenError, ResolveError};
use crate::network::NetworkError;
use crate::runtime::RuntimeError;
use crate::runtime::registry::RegistryError;
use crate::spec::SpecError;

/// A container that did not start, or a task that could not get what it needs first.
#[derive(Debug, thiserror::Error)]
pub enum StartFailure {
    #[error("ResourceInitializationError: cannot create the task's network: {}", crate::error_chain(.0))]
    Network(NetworkError),
    #[error("{0}")]
    Endpoints(OpenError),
    #[error("{0}")]
    Secrets(ResolveError),
    #[error("{}", pull_reason(.0))]
    Pull(RuntimeError),
    /// The registry credentials could not be had (ECR, Secrets Manager, a credential helper).
    #[error("{0}")]
    RegistryAuth(crate::engine::registry_auth::AuthError),
    #[error("CannotCreateContainerError: {0}")]
    Create(CreateFailure),
    #[error("CannotStartContainerError: {0}")]
    Start(RuntimeError),
    #[error("CannotStartContainerError: container '{container}' {why}")]
    Dependency { container: String, why: DependencyFailure },
}

/// A failed pull in the agent's words, by cause. Since 2024 the agent starts three known
/// causes with a hint (note its typographic apostrophe).
fn pull_reason(e: &RuntimeError) -> String {
    const EXISTS: &str = "The task can\u{2019}t pull the image. Check whether the image exists. ";
    const NETWORK: &str = "The task can\u{2019}t pull the image. Check your network configuration. ";
    let RuntimeError::Pull { error, .. } = e else {
        return format!("CannotPullContainerError: {e}");
    };
    match error.as_ref() {
        RegistryError::PullTimeout { .. } => format!("DockerTimeoutError: {error}"),
        RegistryError::NotFound { .. } | RegistryError::Denied { .. } => {
            format!("CannotPullContainerError: {EXISTS}{error}")
        }
        RegistryError::Unreachable { .. } | RegistryError::Timeout { .. } => {
            format!("CannotPullContainerError: {NETWORK}{error}")
        }
        _ => format!("CannotPullContainerError: {error}"),
    }
}

/// A step of making a container that failed.
#[derive(Debug, thiserror::Error)]
pub enum CreateFailure {
    #[error("{0}")]
    Runtime(RuntimeError),
    #[error("{0}")]
    Spec(SpecError),
    #[error("cannot write {what} in {dir}: {source}")]
    Files { what: &'static str, dir: String, source: std::io::Error },
    #[error("volume '{0}' needs EFS or FSx, which ecsd cannot mount on this host")]
    UnsupportedVolume(String),
    #[error("cannot create volume '{name}' at {path}: {source}")]
    Volume { name: String, path: String, source: std::io::Error },
}

/// Why a container's `dependsOn` can never be met.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DependencyFailure {
    #[error("depends on container '{0}', which is not in the task")]
    NotInTask(String),
    #[error("depends on '{0}' starting, but it never started")]
    NeverStarted(String),
    #[error("depends on '{0}' completing, but it never started")]
    NeverCompleted(String),
    #[error("depends on '{target}' exiting successfully, but it exited with {}", .code.map_or("no exit code".to_owned(), |c| format!("code {c}")))]
    Unsuccessful { target: String, code: Option<i32> },
    #[error("depends on '{0}' being healthy, but it stopped")]
    StoppedUnhealthy(String),
    #[error("has an unknown dependency condition {0}")]
    UnknownCondition(String),
    #[error(
        "timed out waiting for its dependencies (ContainerRuntimeTimeoutError: Could not transition to running)"
    )]
    TimedOut,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_read_as_the_agent_writes_them() {
        let missing = RuntimeError::pull(
            "127.0.0.1:5000/x:1",
            RegistryError::NotFound {
                reference: "127.0.0.1:5000/x:1".into(),
                code: Some("MANIFEST_UNKNOWN".into()),
                message: Some("manifest unknown".into()),
            },
        );
        assert_eq!(
            StartFailure::Pull(missing).to_string(),
            "CannotPullContainerError: The task can\u{2019}t pull the image. Check whether the image exists. \
             failed to resolve reference \"127.0.0.1:5000/x:1\": 127.0.0.1:5000/x:1: not found: manifest unknown: \
             manifest unknown"
        );
        let slow = RuntimeError::pull(
            "x",
            RegistryError::PullTimeout { after: std::time::Duration::from_secs(7200) },
        );
        assert_eq!(
            StartFailure::Pull(slow).to_string(),
            "DockerTimeoutError: Could not transition to pulled; timed out after waiting 2h0m0s"
        );
        let stalled = RuntimeError::pull(
            "x",
            RegistryError::Inactivity {
                digest: "sha256:1".into(),
                after: std::time::Duration::from_secs(60),
            },
        );
        assert_eq!(
            StartFailure::Pull(stalled).to_string(),
            "CannotPullContainerError: inactivity time exceeded timeout while pulling image"
        );
        let dep = StartFailure::Dependency {
            container: "app".into(),
            why: DependencyFailure::Unsuccessful { target: "init".into(), code: Some(3) },
        };
        assert_eq!(
            dep.to_string(),
            "CannotStartContainerError: container 'app' depends on 'init' exiting successfully, but it exited with code 3"
        );
        let why = DependencyFailure::Unsuccessful { target: "init".into(), code: None };
        assert_eq!(
            why.to_string(),
            "depends on 'init' exiting successfully, but it exited with no exit code"
        );
    }
}
