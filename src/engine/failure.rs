//! Why a task could not start, typed until it is recorded: the record keeps the reason as ECS
//! shows it (`stoppedReason`, a container's `reason`), rendered here in the agent's words.

use crate::endpoints::{OpenError, ResolveError};
use crate::network::NetworkError;
use crate::runtime::RuntimeError;
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
    #[error("CannotPullContainerError: {0}{hint}", hint = pull_hint(.0))]
    Pull(RuntimeError),
    #[error("CannotCreateContainerError: {0}")]
    Create(CreateFailure),
    #[error("CannotStartContainerError: {0}")]
    Start(RuntimeError),
    #[error("CannotStartContainerError: container '{container}' {why}")]
    Dependency { container: String, why: DependencyFailure },
}

/// What the agent says for an image that is not present: ecsd has no registry pulls yet.
fn pull_hint(e: &RuntimeError) -> &'static str {
    match e {
        RuntimeError::ImageNotFound { .. } | RuntimeError::InvalidReference { .. } => {
            "; ecsd does not pull from registries yet: import the image with `ecsd image import FILE`"
        }
        _ => "",
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
        let missing = RuntimeError::ImageNotFound {
            reference: "docker.io/library/x:1".into(),
            namespace: "ecs".into(),
        };
        assert_eq!(
            StartFailure::Pull(missing).to_string(),
            "CannotPullContainerError: image docker.io/library/x:1 is not present in containerd namespace ecs; \
             ecsd does not pull from registries yet: import the image with `ecsd image import FILE`"
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
