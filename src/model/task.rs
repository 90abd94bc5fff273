//! A task as ecsd knows it: the domain record the engine keeps, the store persists and the API
//! and the task endpoints show, each in their own shape. Pure data and the rules that derive
//! from it (the effective container definitions, the task's health); no I/O, no wire shapes of
//! a task here.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::network::NetworkMode;
use crate::model::shapes::{
    ContainerDefinition, KeyValuePair, NetworkBinding, NetworkConfiguration, TaskDefinition, TaskOverride,
};

/// ECS task statuses, in lifecycle order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskStatus {
    Provisioning,
    Pending,
    Activating,
    Running,
    Deactivating,
    Stopping,
    Deprovisioning,
    Stopped,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Provisioning => "PROVISIONING",
            TaskStatus::Pending => "PENDING",
            TaskStatus::Activating => "ACTIVATING",
            TaskStatus::Running => "RUNNING",
            TaskStatus::Deactivating => "DEACTIVATING",
            TaskStatus::Stopping => "STOPPING",
            TaskStatus::Deprovisioning => "DEPROVISIONING",
            TaskStatus::Stopped => "STOPPED",
        }
    }

    /// Whether ECS counts the task as pending (before RUNNING).
    pub fn is_pending(self) -> bool {
        self < TaskStatus::Running
    }
}

/// Container statuses as ECS reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ContainerStatus {
    Pending,
    /// Created in the runtime, not started (reported as PENDING).
    Created,
    Running,
    Stopped,
}

impl ContainerStatus {
    pub fn wire(self) -> &'static str {
        match self {
            ContainerStatus::Pending | ContainerStatus::Created => "PENDING",
            ContainerStatus::Running => "RUNNING",
            ContainerStatus::Stopped => "STOPPED",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HealthStatus {
    Unknown,
    Healthy,
    Unhealthy,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Unknown => "UNKNOWN",
            HealthStatus::Healthy => "HEALTHY",
            HealthStatus::Unhealthy => "UNHEALTHY",
        }
    }
}

/// The last verdict of a container's health check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    pub status: HealthStatus,
    pub since: Option<f64>,
    pub exit_code: Option<i32>,
    pub output: String,
    pub failing_streak: u32,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            status: HealthStatus::Unknown,
            since: None,
            exit_code: None,
            output: String::new(),
            failing_streak: 0,
        }
    }
}

/// One container of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRecord {
    pub name: String,
    /// The runtime's container id (`runtimeId`), 64 hex characters like Docker's.
    pub runtime_id: String,
    pub arn: String,
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    pub status: ContainerStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<f64>,
    /// When the stop signal was sent, so a restarted engine keeps the SIGKILL deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_sent_at: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub killed: Option<bool>,
    /// The signal that asks it to stop (the image's StopSignal, else SIGTERM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// Host ports published for it (bridge; host mode: its container ports), chosen at
    /// placement, shown as `networkBindings` once it runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_bindings: Vec<NetworkBinding>,
    /// Its own namespace and address in bridge mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<String>,
    /// The id in its metadata URIs (`/v4/<id>`): a random UUID, as the agent's V3EndpointID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_id: Option<String>,
}

/// The lifecycle of an awsvpc task's network interface, as ECS reports its attachment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AttachmentStatus {
    Precreated,
    Attached,
    Detached,
}

impl AttachmentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AttachmentStatus::Precreated => "PRECREATED",
            AttachmentStatus::Attached => "ATTACHED",
            AttachmentStatus::Detached => "DETACHED",
        }
    }
}

/// An awsvpc task's interface: ECS's `ElasticNetworkInterface` attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EniAttachment {
    pub id: String,
    pub status: AttachmentStatus,
    /// The configured network the task's subnet picked.
    pub network: String,
    pub subnet_id: String,
    pub network_interface_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ipv4_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_dns_name: Option<String>,
}

impl EniAttachment {
    /// The interface an awsvpc task will get on `network` (whose subnet id is `subnet_id`),
    /// before the network attaches it.
    pub fn precreated(network: &str, subnet_id: String) -> EniAttachment {
        EniAttachment {
            id: uuid::Uuid::new_v4().to_string(),
            status: AttachmentStatus::Precreated,
            network: network.to_owned(),
            subnet_id,
            network_interface_id: format!("eni-{}", &uuid::Uuid::new_v4().simple().to_string()[..17]),
            mac_address: None,
            private_ipv4_address: None,
            private_dns_name: None,
        }
    }
}

/// Why a task stopped, as ECS codes it (`stopCode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StopCode {
    TaskFailedToStart,
    EssentialContainerExited,
    UserInitiated,
    ServiceSchedulerInitiated,
    SpotInterruption,
    TerminationNotice,
}

impl StopCode {
    pub fn as_str(self) -> &'static str {
        match self {
            StopCode::TaskFailedToStart => "TaskFailedToStart",
            StopCode::EssentialContainerExited => "EssentialContainerExited",
            StopCode::UserInitiated => "UserInitiated",
            StopCode::ServiceSchedulerInitiated => "ServiceSchedulerInitiated",
            StopCode::SpotInterruption => "SpotInterruption",
            StopCode::TerminationNotice => "TerminationNotice",
        }
    }
}

impl fmt::Display for StopCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request to stop a task: its code and the `stoppedReason` text ECS shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopReason {
    pub code: StopCode,
    pub reason: String,
}

impl StopReason {
    pub fn new(code: StopCode, reason: impl Into<String>) -> Self {
        StopReason { code, reason: reason.into() }
    }

    /// StopTask's default reason.
    pub fn user(reason: Option<String>) -> Self {
        StopReason::new(StopCode::UserInitiated, reason.unwrap_or_else(|| "Task stopped by user".to_owned()))
    }

    pub fn essential_exited() -> Self {
        StopReason::new(StopCode::EssentialContainerExited, "Essential container in task exited")
    }
}

/// Everything ecsd knows about a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskRecord {
    pub id: String,
    pub cluster: String,
    pub arn: String,
    /// The task definition as registered when the task was launched.
    pub definition: TaskDefinition,
    /// The definition's containers with RunTask overrides applied: what actually runs.
    pub containers_effective: Vec<ContainerDefinition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overrides: Option<TaskOverride>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_by: Option<String>,
    pub group: String,
    pub launch_type: String,
    #[serde(default)]
    pub enable_execute_command: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_configuration: Option<NetworkConfiguration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_instance_arn: Option<String>,
    /// Fargate tasks' platform version (`1.4.0` for `LATEST`); `None` for other launch types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_version: Option<String>,
    /// Task-level cpu and memory as shown (overrides applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    pub desired: TaskStatus,
    pub last: TaskStatus,
    pub version: i64,
    pub created_at: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_started_at: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_stopped_at: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connectivity_at: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopping_at: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_stopped_at: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_code: Option<StopCode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_reason: Option<String>,
    /// The task's network namespace, once created (awsvpc, none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// The awsvpc task's interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<EniAttachment>,
    /// The id of the task role's credentials (`/v2/credentials/<id>`), when it has a role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_id: Option<String>,
    pub containers: Vec<ContainerRecord>,
}

impl TaskRecord {
    /// The task role: the RunTask override, else the task definition's.
    pub fn task_role_arn(&self) -> Option<&str> {
        self.overrides
            .as_ref()
            .and_then(|o| o.task_role_arn.as_deref())
            .or(self.definition.task_role_arn.as_deref())
            .filter(|r| !r.is_empty())
    }

    /// The execution role (secrets, image pulls): the RunTask override, else the definition's.
    pub fn execution_role_arn(&self) -> Option<&str> {
        self.overrides
            .as_ref()
            .and_then(|o| o.execution_role_arn.as_deref())
            .or(self.definition.execution_role_arn.as_deref())
            .filter(|r| !r.is_empty())
    }

    pub fn network_mode(&self) -> NetworkMode {
        NetworkMode::of(&self.definition)
    }

    /// The stop reason the task was given, once it was asked to stop.
    pub fn stop_reason(&self) -> Option<StopReason> {
        Some(StopReason { code: self.stop_code?, reason: self.stopped_reason.clone().unwrap_or_default() })
    }

    pub fn container(&self, name: &str) -> Option<&ContainerRecord> {
        self.containers.iter().find(|c| c.name == name)
    }

    pub fn effective(&self, name: &str) -> Option<&ContainerDefinition> {
        self.containers_effective.iter().find(|c| c.name.as_deref() == Some(name))
    }

    pub fn is_essential(&self, name: &str) -> bool {
        self.effective(name).is_none_or(|c| c.essential.unwrap_or(true))
    }

    /// The task's health as ECS derives it: from essential containers with health checks.
    pub fn health(&self) -> HealthStatus {
        let mut checked = self
            .containers
            .iter()
            .filter(|c| self.is_essential(&c.name))
            .filter_map(|c| c.health.as_ref().map(|h| h.status))
            .peekable();
        if checked.peek().is_none() {
            return HealthStatus::Unknown;
        }
        let all: Vec<HealthStatus> = checked.collect();
        if all.contains(&HealthStatus::Unhealthy) {
            HealthStatus::Unhealthy
        } else if all.iter().all(|h| *h == HealthStatus::Healthy) {
            HealthStatus::Healthy
        } else {
            HealthStatus::Unknown
        }
    }
}

/// Why overrides cannot apply to a task definition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverrideError {
    #[error("Override for container named {0} is not a container in the TaskDefinition.")]
    UnknownContainer(String),
}

/// The container definitions with RunTask's container overrides applied, as ECS applies them:
/// command replaces, environment merges by name (the override wins), environment files add,
/// cpu, memory, memory reservation and resource requirements replace.
pub fn effective_containers(
    definition: &TaskDefinition,
    overrides: Option<&TaskOverride>,
) -> Result<Vec<ContainerDefinition>, OverrideError> {
    let mut containers = definition.container_definitions.clone().unwrap_or_default();
    for o in overrides.and_then(|o| o.container_overrides.as_deref()).unwrap_or_default() {
        let name = o.name.clone().unwrap_or_default();
        let Some(c) = containers.iter_mut().find(|c| c.name.as_deref() == Some(name.as_str())) else {
            return Err(OverrideError::UnknownContainer(name));
        };
        if let Some(cmd) = &o.command {
            c.command = Some(cmd.clone());
        }
        if let Some(env) = &o.environment {
            let mut merged: Vec<KeyValuePair> = c.environment.clone().unwrap_or_default();
            for kv in env {
                match merged.iter_mut().find(|e| e.name == kv.name) {
                    Some(e) => e.value = kv.value.clone(),
                    None => merged.push(kv.clone()),
                }
            }
            c.environment = Some(merged);
        }
        if let Some(files) = &o.environment_files {
            c.environment_files.get_or_insert_with(Vec::new).extend(files.iter().cloned());
        }
        if let Some(cpu) = o.cpu {
            c.cpu = cpu;
        }
        if o.memory.is_some() {
            c.memory = o.memory;
        }
        if o.memory_reservation.is_some() {
            c.memory_reservation = o.memory_reservation;
        }
        if let Some(rr) = &o.resource_requirements {
            c.resource_requirements = Some(rr.clone());
        }
    }
    Ok(containers)
}

/// A task's scale-in protection (UpdateTaskProtection, or the agent API from inside it).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskProtection {
    pub enabled: bool,
    /// When it lapses (seconds since the epoch); set whenever `enabled` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<f64>,
}

impl TaskProtection {
    /// ECS's default protection time when `expiresInMinutes` is not given (2 hours).
    pub const DEFAULT_MINUTES: i64 = 120;
    /// The longest protection time (48 hours).
    pub const MAX_MINUTES: i64 = 2880;

    /// Protection turned on at `now` for `minutes`, or off.
    pub fn set(enabled: bool, minutes: Option<i64>, now: f64) -> TaskProtection {
        let minutes = minutes.unwrap_or(Self::DEFAULT_MINUTES);
        TaskProtection { enabled, expires_at: enabled.then(|| (now + minutes as f64 * 60.0).floor()) }
    }

    /// The protection as it stands at `now`: an expired one is off.
    pub fn at(self, now: f64) -> TaskProtection {
        match self.expires_at {
            Some(t) if self.enabled && t > now => self,
            _ => TaskProtection { enabled: false, expires_at: None },
        }
    }
}
