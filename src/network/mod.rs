//! Task networking: one network namespace per task, created before its containers and
//! removed after them. Interfaces, addresses and port mappings join in the networking issue.
//!
//! This module knows nothing of ECS wire types; the engine asks for a namespace per task.

use std::path::PathBuf;

use async_trait::async_trait;
use tokio::process::Command;

/// How a task is networked, from the task definition's `networkMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Awsvpc,
    Bridge,
    Host,
    None,
}

impl Mode {
    pub fn parse(network_mode: Option<&str>) -> Mode {
        match network_mode {
            Some("awsvpc") => Mode::Awsvpc,
            Some("host") => Mode::Host,
            Some("none") => Mode::None,
            _ => Mode::Bridge,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("cannot run {command}")]
    Spawn { command: String, source: std::io::Error },
    #[error("{command} failed: {stderr}")]
    Command { command: String, stderr: String },
}

/// The network side of a task's lifecycle.
#[async_trait]
pub trait Network: Send + Sync + std::fmt::Debug + 'static {
    /// Creates the task's namespace (loopback up) and returns its path; `None` in host mode.
    async fn create(&self, task_id: &str, mode: Mode) -> Result<Option<PathBuf>, NetworkError>;
    /// Removes whatever `create` made for the task. Removing what is gone succeeds.
    async fn remove(&self, task_id: &str) -> Result<(), NetworkError>;
    /// The task ids that have a namespace now (to find leaks after a crash).
    async fn list(&self) -> Result<Vec<String>, NetworkError>;
}

/// Named network namespaces under `/run/netns`, made with iproute2, so `ip netns` shows them
/// and other tools (netavark, `ip netns exec`) can join them by path.
#[derive(Debug, Clone)]
pub struct Namespaces {
    prefix: String,
    dir: PathBuf,
}

impl Namespaces {
    /// `prefix` names this daemon's namespaces (`<prefix><task id>`).
    pub fn new(prefix: &str) -> Namespaces {
        Namespaces { prefix: prefix.to_owned(), dir: PathBuf::from("/run/netns") }
    }

    fn name(&self, task_id: &str) -> String {
        format!("{}{task_id}", self.prefix)
    }

    pub fn path(&self, task_id: &str) -> PathBuf {
        self.dir.join(self.name(task_id))
    }
}

async fn ip(args: &[&str]) -> Result<(), NetworkError> {
    let command = format!("ip {}", args.join(" "));
    let out = Command::new("ip")
        .args(args)
        .output()
        .await
        .map_err(|source| NetworkError::Spawn { command: command.clone(), source })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetworkError::Command { command, stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned() })
    }
}

#[async_trait]
impl Network for Namespaces {
    async fn create(&self, task_id: &str, mode: Mode) -> Result<Option<PathBuf>, NetworkError> {
        if mode == Mode::Host {
            return Ok(None);
        }
        let name = self.name(task_id);
        if !self.path(task_id).exists() {
            ip(&["netns", "add", &name]).await?;
        }
        if let Err(e) = ip(&["-n", &name, "link", "set", "lo", "up"]).await {
            let _ = ip(&["netns", "delete", &name]).await;
            return Err(e);
        }
        Ok(Some(self.path(task_id)))
    }

    async fn remove(&self, task_id: &str) -> Result<(), NetworkError> {
        if !self.path(task_id).exists() {
            return Ok(());
        }
        ip(&["netns", "delete", &self.name(task_id)]).await
    }

    async fn list(&self) -> Result<Vec<String>, NetworkError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(source) => {
                return Err(NetworkError::Spawn { command: format!("read {}", self.dir.display()), source });
            }
        };
        Ok(entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|n| n.strip_prefix(&self.prefix).map(str::to_owned))
            // Only task ids: another daemon's longer prefix (`ecsd-ecs-blue-…`) is not ours.
            .filter(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .collect())
    }
}

/// A network that makes nothing: for engine tests without root.
#[derive(Debug, Default)]
pub struct NoNetwork;

#[async_trait]
impl Network for NoNetwork {
    async fn create(&self, _task_id: &str, _mode: Mode) -> Result<Option<PathBuf>, NetworkError> {
        Ok(None)
    }

    async fn remove(&self, _task_id: &str) -> Result<(), NetworkError> {
        Ok(())
    }

    async fn list(&self) -> Result<Vec<String>, NetworkError> {
        Ok(vec![])
    }
}
