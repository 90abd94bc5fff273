//! Running a command inside a task's container: the engine's one entry point for it, used by
//! ECS Exec (streams, a terminal, resize, exit code) and, through the same runtime call, by
//! health checks. The command runs as the container's own process does: same user,
//! environment and working directory.

use std::sync::Arc;

use super::Engine;
use crate::model::shapes::ContainerDefinition;
use crate::model::task::{ContainerStatus, TaskRecord, TaskStatus};
use crate::runtime::{ConsoleSize, ExecProcess, ExecSpec, RuntimeError};

/// What to run in a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Whether the process gets a terminal (stdout and stderr are then one stream).
    pub tty: bool,
    /// Whether the caller writes to its stdin.
    pub stdin: bool,
    /// The terminal's size from the start.
    pub console_size: Option<ConsoleSize>,
    /// `NAME=value` pairs added to the container's environment (replacing a variable of the
    /// same name), e.g. the terminal type of an ECS Exec session.
    pub env: Vec<String>,
}

/// Why a command cannot run in a container.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("task {0} does not exist")]
    TaskNotFound(String),
    #[error("task {task} is {status}, not RUNNING")]
    TaskNotRunning { task: String, status: &'static str },
    #[error("task {task} has no container named {name} (it has {})", .have.join(", "))]
    ContainerNotFound { task: String, name: String, have: Vec<String> },
    #[error("container {name} of task {task} is {status}, not RUNNING")]
    ContainerNotRunning { task: String, name: String, status: &'static str },
    #[error("the command is empty")]
    EmptyCommand,
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// The process a container's own command runs as, for execs made before the engine saw it
/// start (a task re-adopted after a restart): the definition's environment and working
/// directory, the image's PATH.
pub(crate) fn process_from_definition(def: &ContainerDefinition) -> oci_spec::runtime::Process {
    let env: Vec<String> = def
        .environment
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter_map(|kv| Some(format!("{}={}", kv.name.as_deref()?, kv.value.as_deref().unwrap_or_default())))
        .chain(std::iter::once(
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
        ))
        .collect();
    let mut p = oci_spec::runtime::Process::default();
    p.set_env(Some(env)).set_cwd(def.working_directory.clone().unwrap_or_else(|| "/".into()).into());
    p
}

impl Engine {
    /// Starts `request` in container `container` of a RUNNING task, as the container's own
    /// process runs (user, environment, working directory). The caller owns the returned
    /// process: its streams, resize, signals and exit code; dropping it kills the process.
    pub async fn exec(
        &self,
        cluster: &str,
        task_id: &str,
        container: &str,
        request: ExecRequest,
    ) -> Result<ExecProcess, ExecError> {
        let task = self.task(cluster, task_id).ok_or_else(|| ExecError::TaskNotFound(task_id.to_owned()))?;
        let runtime_id = running_container(&task, container)?;
        if request.command.is_empty() {
            return Err(ExecError::EmptyCommand);
        }
        let mut process = self.process_of(&task, container, &runtime_id);
        if !request.env.is_empty() {
            let env = with_env(process.env().clone().unwrap_or_default(), &request.env);
            process.set_env(Some(env));
        }
        process.set_args(Some(request.command)).set_terminal(Some(request.tty)).set_console_size(None);
        let spec = ExecSpec {
            process,
            stdin: request.stdin,
            console_size: request.console_size.filter(|_| request.tty),
        };
        Ok(self.runtime.exec(&runtime_id, spec).await?)
    }

    /// The process template of a container: what the engine started it with, else rebuilt
    /// from its definition.
    pub(crate) fn process_of(
        &self,
        task: &TaskRecord,
        container: &str,
        runtime_id: &str,
    ) -> oci_spec::runtime::Process {
        let known = self.processes.lock().unwrap_or_else(|e| e.into_inner()).get(runtime_id).cloned();
        known.unwrap_or_else(|| task.effective(container).map(process_from_definition).unwrap_or_default())
    }

    pub(crate) fn remember_process(&self, runtime_id: &str, process: oci_spec::runtime::Process) {
        self.processes.lock().unwrap_or_else(|e| e.into_inner()).insert(runtime_id.to_owned(), process);
    }

    pub(crate) fn forget_processes(&self, task: &TaskRecord) {
        let mut p = self.processes.lock().unwrap_or_else(|e| e.into_inner());
        for c in &task.containers {
            p.remove(&c.runtime_id);
        }
    }
}

/// `env` with `extra` set in it: a variable of the same name is replaced, a new one added.
fn with_env(mut env: Vec<String>, extra: &[String]) -> Vec<String> {
    for kv in extra {
        let name = kv.split('=').next().unwrap_or_default();
        match env.iter_mut().find(|e| e.split('=').next() == Some(name)) {
            Some(e) => e.clone_from(kv),
            None => env.push(kv.clone()),
        }
    }
    env
}

/// The runtime id of `name` when the task and the container run.
fn running_container(task: &Arc<TaskRecord>, name: &str) -> Result<String, ExecError> {
    if task.last != TaskStatus::Running || task.desired != TaskStatus::Running {
        let status = if task.desired == TaskStatus::Running { task.last.as_str() } else { "stopping" };
        return Err(ExecError::TaskNotRunning { task: task.arn.clone(), status });
    }
    let c = task.container(name).ok_or_else(|| ExecError::ContainerNotFound {
        task: task.arn.clone(),
        name: name.to_owned(),
        have: task.containers.iter().map(|c| c.name.clone()).collect(),
    })?;
    if c.status != ContainerStatus::Running {
        return Err(ExecError::ContainerNotRunning {
            task: task.arn.clone(),
            name: name.to_owned(),
            status: c.status.wire(),
        });
    }
    Ok(c.runtime_id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_variables_replace_or_join_the_environment() {
        let env = vec!["PATH=/bin".to_owned(), "TERM=dumb".to_owned(), "TERMINFO=/x".to_owned()];
        let extra = vec!["TERM=xterm-256color".to_owned(), "LANG=C.UTF-8".to_owned()];
        assert_eq!(
            with_env(env, &extra),
            ["PATH=/bin", "TERM=xterm-256color", "TERMINFO=/x", "LANG=C.UTF-8"].map(String::from).to_vec()
        );
    }
}
