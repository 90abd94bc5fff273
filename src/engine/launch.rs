//! What it takes to launch a task: the request as the engine takes it from RunTask,
//! StartTask or the service scheduler, ECS's checks of it, and the new task's record.

use std::sync::Arc;

use crate::model::arn::Identity;
use crate::model::network::NetworkMode;
use crate::model::shapes::{ContainerDefinition, NetworkConfiguration, Tag, TaskDefinition, TaskOverride};
use crate::model::task::{
    ContainerRecord, ContainerStatus, EniAttachment, Health, OverrideError, TaskRecord, TaskStatus,
    effective_containers,
};
use crate::network::{NetworkDef, Settings};

/// A task to launch, resolved by the caller: an ACTIVE definition in an ACTIVE cluster.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub cluster: String,
    pub definition: TaskDefinition,
    pub overrides: Option<TaskOverride>,
    pub started_by: Option<String>,
    /// `None`: `family:<family>`.
    pub group: Option<String>,
    pub launch_type: String,
    /// The task's tags, already merged with what `propagateTags` brings.
    pub tags: Vec<Tag>,
    pub enable_execute_command: bool,
    pub network_configuration: Option<NetworkConfiguration>,
    /// This host's container instance in the cluster (not shown for FARGATE tasks).
    pub container_instance_arn: String,
    /// The Fargate platform version RunTask asked for (`LATEST` when `None`); ignored for
    /// other launch types.
    pub platform_version: Option<String>,
}

/// The platform version Fargate tasks run on when `LATEST` (or nothing) is asked for.
pub const FARGATE_LATEST_PLATFORM_VERSION: &str = "1.4.0";

/// The platform version a task of `launch_type` shows: Fargate's, with `LATEST` resolved.
pub fn platform_version(launch_type: &str, requested: Option<&str>) -> Option<String> {
    (launch_type == "FARGATE").then(|| match requested {
        None | Some("LATEST") | Some("") => FARGATE_LATEST_PLATFORM_VERSION.to_owned(),
        Some(v) => v.to_owned(),
    })
}

/// Why ECS refuses to launch a task as asked. The text is ECS's; [`LaunchError::kind`] says
/// which exception carries it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Override(#[from] OverrideError),
    #[error("Network Configuration is not valid for the given networkMode of this task definition.")]
    NetworkConfigurationNotAllowed,
    #[error("Network Configuration must be provided when networkMode 'awsvpc' is specified.")]
    NetworkConfigurationMissing,
    #[error("subnets can have at most 16 items.")]
    TooManySubnets,
    #[error("securityGroups can have at most 5 items.")]
    TooManySecurityGroups,
    #[error("Assign public IP is not supported for this launch type.")]
    PublicIpNotSupported,
    #[error(
        "Error retrieving subnet information for [{}]: The subnet ID '{unknown}' does not exist (ecsd networks: {})",
        .subnets.join(", "), .have.join(", ")
    )]
    UnknownSubnet { subnets: Vec<String>, unknown: String, have: Vec<String> },
    #[error(
        "{field} 'task' is not supported by ecsd yet: use 'host', or leave {field} out for a namespace per container"
    )]
    NamespaceModeTask { field: &'static str },
    #[error("Task definition does not support launch_type {0}.")]
    IncompatibleLaunchType(String),
    #[error(
        "hostPort {port} is below net.ipv4.ip_unprivileged_port_start ({start}) and ecsd runs rootless, so it cannot be bound: use a hostPort of {start} or more, or have root lower the sysctl (sysctl -w net.ipv4.ip_unprivileged_port_start={port})"
    )]
    PrivilegedHostPort { port: u16, start: u16 },
    #[error(
        "containerPort {port}/udp cannot be published on the host by a rootless ecsd: it forwards published ports from the host to task networks for TCP only; remove the UDP port mapping (the task's network still reaches it), use networkMode host, or run ecsd as root"
    )]
    RootlessUdpHostPort { port: u16 },
}

/// Which ECS exception a [`LaunchError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaunchErrorKind {
    Client,
    InvalidParameter,
    UnsupportedFeature,
}

impl LaunchError {
    pub fn kind(&self) -> LaunchErrorKind {
        match self {
            LaunchError::IncompatibleLaunchType(_) => LaunchErrorKind::Client,
            LaunchError::NamespaceModeTask { .. } | LaunchError::RootlessUdpHostPort { .. } => {
                LaunchErrorKind::UnsupportedFeature
            }
            _ => LaunchErrorKind::InvalidParameter,
        }
    }
}

/// What a checked [`LaunchSpec`] brings: the containers as they will run and the network an
/// awsvpc task's subnet picked.
#[derive(Debug, Clone)]
pub(crate) struct Checked {
    pub effective: Vec<ContainerDefinition>,
    pub network: Option<NetworkDef>,
}

/// ECS's checks of a launch, in ECS's order: the network configuration against the network
/// mode, features ecsd lacks, the overrides against the containers. The launch type's
/// compatibility is the caller's to check (StartTask has none to check).
pub(crate) fn check(spec: &LaunchSpec, settings: &Settings) -> Result<Checked, LaunchError> {
    let network =
        check_network(&spec.definition, spec.network_configuration.as_ref(), &spec.launch_type, settings)?;
    check_supported(&spec.definition)?;
    let effective = effective_containers(&spec.definition, spec.overrides.as_ref())?;
    Ok(Checked { effective, network })
}

/// Whether the task definition lists `launch_type` among its compatibilities.
pub fn check_launch_type(definition: &TaskDefinition, launch_type: &str) -> Result<(), LaunchError> {
    let compatible =
        definition.compatibilities.as_deref().unwrap_or_default().iter().any(|c| c == launch_type);
    if compatible { Ok(()) } else { Err(LaunchError::IncompatibleLaunchType(launch_type.to_owned())) }
}

/// Checks the network configuration against the network mode and, for awsvpc, returns the
/// configured network the first subnet picks.
fn check_network(
    td: &TaskDefinition,
    nc: Option<&NetworkConfiguration>,
    launch_type: &str,
    settings: &Settings,
) -> Result<Option<NetworkDef>, LaunchError> {
    let vpc = nc.and_then(|n| n.awsvpc_configuration.as_ref());
    let subnets = vpc.and_then(|a| a.subnets.as_deref()).unwrap_or_default();
    if NetworkMode::of(td) != NetworkMode::Awsvpc {
        return match nc {
            Some(_) => Err(LaunchError::NetworkConfigurationNotAllowed),
            None => Ok(None),
        };
    }
    let Some(vpc) = vpc.filter(|_| !subnets.is_empty()) else {
        return Err(LaunchError::NetworkConfigurationMissing);
    };
    if subnets.len() > 16 {
        return Err(LaunchError::TooManySubnets);
    }
    if vpc.security_groups.as_ref().is_some_and(|g| g.len() > 5) {
        return Err(LaunchError::TooManySecurityGroups);
    }
    if vpc.assign_public_ip.as_deref() == Some("ENABLED") && launch_type != "FARGATE" {
        return Err(LaunchError::PublicIpNotSupported);
    }
    if let Some(unknown) = subnets.iter().find(|id| settings.network_for_subnet(id).is_none()) {
        return Err(LaunchError::UnknownSubnet {
            subnets: subnets.to_vec(),
            unknown: unknown.clone(),
            have: settings.networks.iter().map(NetworkDef::subnet_id).collect(),
        });
    }
    Ok(settings.network_for_subnet(&subnets[0]).cloned())
}

/// Task-shared PID and IPC namespaces need a process holding them for the task's life (the
/// agent's pause container); ecsd does not keep one yet, so it says so up front rather than
/// failing every container at creation.
fn check_supported(td: &TaskDefinition) -> Result<(), LaunchError> {
    for (field, value) in [("pidMode", &td.pid_mode), ("ipcMode", &td.ipc_mode)] {
        if value.as_deref() == Some("task") {
            return Err(LaunchError::NamespaceModeTask { field });
        }
    }
    Ok(())
}

fn random_hex(n_uuids: usize) -> String {
    (0..n_uuids).map(|_| uuid::Uuid::new_v4().simple().to_string()).collect()
}

/// A new task id: 32 hex characters, as ECS's.
pub(crate) fn new_task_id() -> String {
    random_hex(1)
}

/// The record of a new task in PROVISIONING.
pub(crate) fn new_record(
    identity: &Identity,
    id: String,
    spec: &LaunchSpec,
    checked: &Checked,
    now: f64,
) -> TaskRecord {
    let arn = identity.task_arn(&spec.cluster, &id);
    let containers = checked
        .effective
        .iter()
        .map(|c| ContainerRecord {
            name: c.name.clone().unwrap_or_default(),
            runtime_id: random_hex(2),
            arn: identity.container_arn(&spec.cluster, &id, &uuid::Uuid::new_v4().to_string()),
            image: c.image.clone().unwrap_or_default(),
            image_digest: None,
            image_id: None,
            status: ContainerStatus::Pending,
            exit_code: None,
            reason: None,
            created_at: None,
            started_at: None,
            finished_at: None,
            stop_sent_at: None,
            killed: None,
            stop_signal: None,
            health: c.health_check.as_ref().map(|_| Health::default()),
            network_bindings: vec![],
            netns: None,
            ipv4: None,
            endpoint_id: Some(uuid::Uuid::new_v4().to_string()),
        })
        .collect();
    let family = spec.definition.family.clone().unwrap_or_default();
    let o = spec.overrides.as_ref();
    TaskRecord {
        id,
        cluster: spec.cluster.clone(),
        arn,
        definition: spec.definition.clone(),
        containers_effective: checked.effective.clone(),
        overrides: spec.overrides.clone(),
        started_by: spec.started_by.clone(),
        group: spec.group.clone().unwrap_or_else(|| format!("family:{family}")),
        launch_type: spec.launch_type.clone(),
        enable_execute_command: spec.enable_execute_command,
        network_configuration: spec.network_configuration.clone(),
        container_instance_arn: (spec.launch_type != "FARGATE").then(|| spec.container_instance_arn.clone()),
        platform_version: platform_version(&spec.launch_type, spec.platform_version.as_deref()),
        cpu: o.and_then(|o| o.cpu.clone()).or_else(|| spec.definition.cpu.clone()),
        memory: o.and_then(|o| o.memory.clone()).or_else(|| spec.definition.memory.clone()),
        desired: TaskStatus::Running,
        last: TaskStatus::Provisioning,
        version: 1,
        created_at: now,
        pull_started_at: None,
        pull_stopped_at: None,
        connectivity_at: None,
        started_at: None,
        stopping_at: None,
        execution_stopped_at: None,
        stopped_at: None,
        stop_code: None,
        stopped_reason: None,
        netns: None,
        attachment: checked.network.as_ref().map(|n| EniAttachment::precreated(&n.name, n.subnet_id())),
        credentials_id: None,
        containers,
    }
}

/// The outcome of placing one task: launched, or not placed for a reason ECS reports in
/// `failures[]` (never an error of the call).
#[derive(Debug, Clone)]
pub enum Placed {
    Launched(Arc<TaskRecord>),
    /// `RESOURCE:CPU`, `RESOURCE:MEMORY`, `RESOURCE:PORTS`, `RESOURCE:PORTS_UDP`.
    Unplaced(super::placement::Shortfall),
    /// The container runtime does not answer: ECS's `AGENT` failure, with why.
    AgentUnavailable(crate::runtime::RuntimeError),
}
