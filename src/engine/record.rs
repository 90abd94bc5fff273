//! The engine's durable picture of a task, and how DescribeTasks shows it.

use serde::{Deserialize, Serialize};

use crate::model::shapes::{
    Attachment, Container, ContainerDefinition, KeyValuePair, NetworkBinding, NetworkConfiguration,
    NetworkInterface, Task, TaskDefinition, TaskOverride,
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
    fn to_wire(&self) -> Attachment {
        let mut details =
            vec![kv("subnetId", &self.subnet_id), kv("networkInterfaceId", &self.network_interface_id)];
        if let Some(v) = &self.mac_address {
            details.push(kv("macAddress", v));
        }
        if let Some(v) = &self.private_dns_name {
            details.push(kv("privateDnsName", v));
        }
        if let Some(v) = &self.private_ipv4_address {
            details.push(kv("privateIPv4Address", v));
        }
        Attachment {
            id: Some(self.id.clone()),
            r#type: Some("ElasticNetworkInterface".into()),
            status: Some(self.status.as_str().into()),
            details: Some(details),
        }
    }
}

fn kv(name: &str, value: &str) -> KeyValuePair {
    KeyValuePair { name: Some(name.into()), value: Some(value.into()) }
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
    pub stop_code: Option<String>,
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

    pub fn network_mode(&self) -> &str {
        self.definition.network_mode.as_deref().unwrap_or("bridge")
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

    /// The task as DescribeTasks shows it (without tags, which live with the ARN).
    pub fn to_wire(&self, cluster_arn: &str, availability_zone: &str) -> Task {
        let td = &self.definition;
        Task {
            attachments: Some(self.attachment.iter().map(EniAttachment::to_wire).collect()),
            attributes: Some(vec![crate::model::shapes::Attribute {
                name: Some("ecs.cpu-architecture".into()),
                value: Some(
                    if std::env::consts::ARCH == "aarch64" { "arm64" } else { std::env::consts::ARCH }
                        .to_owned(),
                ),
                ..Default::default()
            }]),
            availability_zone: Some(availability_zone.to_owned()),
            cluster_arn: Some(cluster_arn.to_owned()),
            connectivity: self.connectivity_at.map(|_| "CONNECTED".to_owned()),
            connectivity_at: self.connectivity_at,
            container_instance_arn: self.container_instance_arn.clone(),
            containers: Some(self.containers.iter().map(|c| self.container_wire(c)).collect()),
            cpu: self.cpu.clone(),
            created_at: Some(self.created_at),
            desired_status: Some(self.desired.as_str().to_owned()),
            enable_execute_command: self.enable_execute_command,
            execution_stopped_at: self.execution_stopped_at,
            group: Some(self.group.clone()),
            health_status: Some(self.health().as_str().to_owned()),
            last_status: Some(self.last.as_str().to_owned()),
            launch_type: Some(self.launch_type.clone()),
            memory: self.memory.clone(),
            overrides: Some(self.overrides.clone().unwrap_or_else(|| TaskOverride {
                container_overrides: Some(vec![]),
                inference_accelerator_overrides: Some(vec![]),
                ..Default::default()
            })),
            platform_family: Some("Linux".into()),
            pull_started_at: self.pull_started_at,
            pull_stopped_at: self.pull_stopped_at,
            started_at: self.started_at,
            started_by: self.started_by.clone(),
            stop_code: self.stop_code.clone(),
            stopped_at: self.stopped_at,
            stopped_reason: self.stopped_reason.clone(),
            stopping_at: self.stopping_at,
            task_arn: Some(self.arn.clone()),
            task_definition_arn: td.task_definition_arn.clone(),
            version: self.version,
            ephemeral_storage: None,
            ..Default::default()
        }
    }

    fn container_wire(&self, c: &ContainerRecord) -> Container {
        let def = self.effective(&c.name);
        Container {
            container_arn: Some(c.arn.clone()),
            task_arn: Some(self.arn.clone()),
            name: Some(c.name.clone()),
            image: Some(c.image.clone()),
            image_digest: c.image_digest.clone(),
            runtime_id: Some(c.runtime_id.clone()),
            last_status: Some(c.status.wire().to_owned()),
            exit_code: c.exit_code,
            reason: c.reason.clone(),
            network_bindings: Some(if c.started_at.is_some() && c.status != ContainerStatus::Stopped {
                c.network_bindings.clone()
            } else {
                vec![]
            }),
            network_interfaces: Some(
                self.attachment
                    .iter()
                    .filter(|a| a.private_ipv4_address.is_some())
                    .map(|a| NetworkInterface {
                        attachment_id: Some(a.id.clone()),
                        private_ipv4_address: a.private_ipv4_address.clone(),
                        ipv6_address: None,
                    })
                    .collect(),
            ),
            health_status: Some(
                c.health.as_ref().map_or(HealthStatus::Unknown, |h| h.status).as_str().to_owned(),
            ),
            managed_agents: None,
            cpu: def.map(|d| d.cpu.to_string()),
            memory: def.and_then(|d| d.memory).map(|m| m.to_string()),
            memory_reservation: def.and_then(|d| d.memory_reservation).map(|m| m.to_string()),
            ..Default::default()
        }
    }
}
