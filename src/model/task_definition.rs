//! ECS's own rules for task definitions, beyond what the model states: validation of
//! RegisterTaskDefinition (names, references between containers and volumes, ports, sizes,
//! Fargate) and the TaskDefinition ECS stores and echoes back, with its defaults and derived
//! fields (`compatibilities`, `requiresAttributes`).
//!
//! Pure: no I/O. Required members, enum values and string lengths are checked generically by
//! `check` before this module runs and are not repeated here.

use std::fmt;
use std::ops::RangeInclusive;

use super::arn::Identity;
use super::network::{NetworkMode, PortRange};
use super::shapes::{
    Attribute, ContainerDefinition, PortMapping, RegisterTaskDefinitionRequest, TaskDefinition,
};

/// What the store decides for a new revision; everything else comes from the request.
#[derive(Debug, Clone, Copy)]
pub struct Registration<'a> {
    pub identity: &'a Identity,
    pub revision: i32,
    pub registered_at: f64,
}

const MAX_CONTAINERS: usize = 10;
const MAX_PORT_RANGES: usize = 100;
/// Docker 20.10 and later reserve 6 MiB for every container.
const MIN_CONTAINER_MEMORY_MIB: i32 = 6;
const TASK_CPU_UNITS: RangeInclusive<u64> = 128..=196_608;
const FARGATE_LOG_DRIVERS: [&str; 3] = ["awslogs", "splunk", "awsfirelens"];
const FARGATE_MAX_STOP_TIMEOUT: i32 = 120;
/// The ephemeral storage (GiB) a task definition may ask for; without one Fargate gives
/// [`DEFAULT_EPHEMERAL_STORAGE_GIB`].
pub const EPHEMERAL_STORAGE_GIB: RangeInclusive<i32> = 21..=200;
/// Fargate's ephemeral storage when the task definition names none.
pub const DEFAULT_EPHEMERAL_STORAGE_GIB: i32 = 20;
/// Task memory (MiB) Fargate accepts with cpu 256; larger sizes follow `FARGATE_SIZES`.
const FARGATE_256_MEMORY: [u32; 3] = [512, 1024, 2048];
/// (task cpu, lowest memory, highest memory, step), all memory in MiB.
const FARGATE_SIZES: [(u32, u32, u32, u32); 6] = [
    (512, 1024, 4096, 1024),
    (1024, 2048, 8192, 1024),
    (2048, 4096, 16384, 1024),
    (4096, 8192, 30720, 1024),
    (8192, 16384, 61440, 4096),
    (16384, 32768, 122880, 8192),
];
/// What ECS echoes for health check members left out.
const HEALTH_CHECK_INTERVAL: i32 = 30;
const HEALTH_CHECK_TIMEOUT: i32 = 5;
const HEALTH_CHECK_RETRIES: i32 = 3;

/// Where a container sits in the request, as messages name it: `containerDefinitions[1] ('sidecar')`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerAt {
    pub index: usize,
    pub name: String,
}

impl fmt::Display for ContainerAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "containerDefinitions[{}] ('{}')", self.index, self.name)
    }
}

/// A RegisterTaskDefinition request ECS would refuse. Each message is the full text the client
/// sees: ECS's own sentence where it is known, then the exact field and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskDefinitionError {
    #[error(
        "Family contains invalid characters. family '{family}' must be 1 to 255 letters, numbers, hyphens and underscores."
    )]
    InvalidFamily { family: String },
    #[error("Container list cannot be empty. containerDefinitions must hold 1 to 10 container definitions.")]
    NoContainers,
    #[error(
        "Too many containers. containerDefinitions holds {count} container definitions; a task definition can have at most 10."
    )]
    TooManyContainers { count: usize },
    #[error(
        "Container.name should not be null or empty. containerDefinitions[{index}].name must be 1 to 255 letters, numbers, hyphens and underscores."
    )]
    MissingContainerName { index: usize },
    #[error(
        "Container.name contains invalid characters. containerDefinitions[{index}].name '{name}' must be 1 to 255 letters, numbers, hyphens and underscores."
    )]
    InvalidContainerName { index: usize, name: String },
    #[error(
        "Container names must be unique within a Task Definition. containerDefinitions[{index}].name '{name}' is already the name of containerDefinitions[{first}]."
    )]
    DuplicateContainerName { index: usize, name: String, first: usize },
    #[error(
        "Container.image should not be null or empty. {at}.image must name the image to run, e.g. 'nginx:latest'."
    )]
    MissingImage { at: ContainerAt },
    #[error(
        "Invalid 'cpu' setting for container '{}'. {at}.cpu is {cpu}; container CPU units must be 0 or more.",
        .at.name
    )]
    NegativeContainerCpu { at: ContainerAt, cpu: i32 },
    #[error(
        "Invalid setting for container '{}'. At least one of 'memory' or 'memoryReservation' must be specified.",
        .at.name
    )]
    MemoryRequired { at: ContainerAt },
    #[error(
        "Invalid setting for container '{}'. {at}.{field} is {value} MiB; it must be at least {min} MiB.",
        .at.name
    )]
    ContainerMemoryTooSmall { at: ContainerAt, field: &'static str, value: i32, min: i32 },
    #[error(
        "Invalid setting for container '{}'. {at}.memoryReservation ({reservation} MiB) must not be greater than memory ({memory} MiB).",
        .at.name
    )]
    ReservationAboveMemory { at: ContainerAt, reservation: i32, memory: i32 },
    #[error(
        "Links are not supported when networkMode={mode}. {at}.links can only be used with networkMode=bridge, the default."
    )]
    LinksNotSupported { at: ContainerAt, mode: &'static str },
    #[error(
        "Invalid link '{link}' for container '{}'. {at}.links[{link_index}] must be 'name' or 'name:alias', where name is another container of this task definition.",
        .at.name
    )]
    UnknownLink { at: ContainerAt, link_index: usize, link: String },
    #[error(
        "Container links should not have a cycle. The links of containerDefinitions form the cycle {cycle}."
    )]
    LinkCycle { cycle: String },
    #[error(
        "Port mappings are not supported when networkMode=none. {at}.portMappings must be empty; use another networkMode to publish ports."
    )]
    PortMappingsWithoutNetwork { at: ContainerAt },
    #[error(
        "Too many port ranges for container '{}'. {at}.portMappings has {count} containerPortRange entries; a container can have at most 100.",
        .at.name
    )]
    TooManyPortRanges { at: ContainerAt, count: usize },
    #[error(
        "Container port ranges are not supported when networkMode={mode}. {at}.portMappings[{mapping}].containerPortRange can only be used with networkMode=awsvpc or networkMode=bridge."
    )]
    PortRangeNotSupported { at: ContainerAt, mapping: usize, mode: &'static str },
    #[error(
        "Invalid port mapping for container '{}'. {at}.portMappings[{mapping}] sets containerPortRange together with {other}; use either containerPortRange alone or containerPort with an optional hostPort.",
        .at.name
    )]
    PortRangeWithPort { at: ContainerAt, mapping: usize, other: &'static str },
    #[error(
        "Invalid 'containerPortRange' setting for container '{}'. {at}.portMappings[{mapping}].containerPortRange '{range}' must be 'start-end' with 1 <= start < end <= 65535.",
        .at.name
    )]
    InvalidPortRange { at: ContainerAt, mapping: usize, range: String },
    #[error(
        "Invalid 'containerPort' setting for container '{}'. {at}.portMappings[{mapping}].containerPort is {value}; it must be 1 to 65535.",
        .at.name
    )]
    InvalidContainerPort { at: ContainerAt, mapping: usize, value: String },
    #[error(
        "Invalid 'hostPort' setting for container '{}'. {at}.portMappings[{mapping}].hostPort is {value}; it must be 0 to 65535.",
        .at.name
    )]
    InvalidHostPort { at: ContainerAt, mapping: usize, value: i32 },
    #[error(
        "When networkMode={mode}, the host ports and container ports in port mappings must match. {at}.portMappings[{mapping}] maps hostPort {host_port} to containerPort {container_port}; omit hostPort or set it to {container_port}."
    )]
    HostPortMismatch {
        at: ContainerAt,
        mapping: usize,
        mode: &'static str,
        host_port: i32,
        container_port: i32,
    },
    #[error(
        "Container port {port}/{protocol} is used in more than one port mapping for container '{}'. {at}.portMappings[{mapping}] repeats portMappings[{first}].",
        .at.name
    )]
    DuplicateContainerPort {
        at: ContainerAt,
        mapping: usize,
        first: usize,
        port: i32,
        protocol: &'static str,
    },
    #[error(
        "{protocol} host port '{host_port}' is mapped multiple times in task. {at}.portMappings[{mapping}] maps it again after {first_at}.portMappings[{first_mapping}]."
    )]
    DuplicateHostPort {
        at: ContainerAt,
        mapping: usize,
        first_at: ContainerAt,
        first_mapping: usize,
        host_port: i32,
        protocol: &'static str,
    },
    #[error(
        "Invalid 'environment' setting for container '{}'. {at}.environment[{variable}].name must not be empty.",
        .at.name
    )]
    EmptyEnvironmentName { at: ContainerAt, variable: usize },
    #[error(
        "Unknown volume '{volume}'. {at}.mountPoints[{mount}].sourceVolume must name a volume declared in the task definition's volumes."
    )]
    UnknownVolume { at: ContainerAt, mount: usize, volume: String },
    #[error(
        "Invalid 'containerPath' setting for container '{}'. {at}.mountPoints[{mount}].containerPath '{path}' must be an absolute path, e.g. '/data'.",
        .at.name
    )]
    RelativeContainerPath { at: ContainerAt, mount: usize, path: String },
    #[error(
        "Invalid 'sourceContainer' setting for container '{}'. {at}.volumesFrom[{entry}].sourceContainer '{source_container}' must name another container of this task definition.",
        .at.name
    )]
    UnknownVolumesFromSource { at: ContainerAt, entry: usize, source_container: String },
    #[error(
        "Invalid 'secrets' setting for container '{}'. {at}.secrets[{secret}].name '{name}' repeats secrets[{first}].name; secret names must be unique within a container.",
        .at.name
    )]
    DuplicateSecretName { at: ContainerAt, secret: usize, first: usize, name: String },
    // ECS's own sentence, stray '+' included.
    #[error(
        "Cannot depend on container + '{target}' because it does not exist. {at}.dependsOn[{dependency}].containerName must name another container of this task definition."
    )]
    UnknownDependency { at: ContainerAt, dependency: usize, target: String },
    #[error(
        "Container '{}' cannot depend on itself. {at}.dependsOn[{dependency}].containerName must name another container of this task definition.",
        .at.name
    )]
    SelfDependency { at: ContainerAt, dependency: usize },
    #[error(
        "A dependency container with SUCCESS or COMPLETE condition cannot be an essential container. {at}.dependsOn[{dependency}] waits for '{target}' with condition {condition}, but '{target}' is essential; set essential to false on '{target}' or use condition START or HEALTHY."
    )]
    EssentialDependency { at: ContainerAt, dependency: usize, target: String, condition: String },
    #[error(
        "A dependency container with HEALTHY condition must have a health check. {at}.dependsOn[{dependency}] waits for '{target}' to be HEALTHY, but '{target}' has no healthCheck."
    )]
    DependencyWithoutHealthCheck { at: ContainerAt, dependency: usize, target: String },
    #[error(
        "Container dependencies should not have a cycle. The dependsOn of containerDefinitions form the cycle {cycle}."
    )]
    DependencyCycle { cycle: String },
    #[error(
        "Invalid '{field}' setting for container '{}'. {at}.{field} is {value}; it must be 0 seconds or more.",
        .at.name
    )]
    NegativeTimeout { at: ContainerAt, field: &'static str, value: i32 },
    #[error(
        "hostname is not supported on container when networkMode=awsvpc. {at}.hostname must be omitted; the task's network interface sets the hostname."
    )]
    HostnameInAwsvpc { at: ContainerAt },
    #[error(
        "Invalid 'ulimits' setting for container '{}'. {at}.ulimits[{ulimit}] ('{name}') has {field} {value}; limits must be -1 (unlimited) or more.",
        .at.name
    )]
    NegativeUlimit { at: ContainerAt, ulimit: usize, name: String, field: &'static str, value: i32 },
    #[error(
        "Invalid 'ulimits' setting for container '{}'. {at}.ulimits[{ulimit}] ('{name}') has softLimit {soft} greater than hardLimit {hard}; softLimit must not exceed hardLimit.",
        .at.name
    )]
    SoftLimitAboveHardLimit { at: ContainerAt, ulimit: usize, name: String, soft: i32, hard: i32 },
    #[error(
        "Invalid 'ulimits' setting for container '{}'. {at}.ulimits[{ulimit}] repeats the ulimit '{name}' of ulimits[{first}]; each ulimit name may appear once.",
        .at.name
    )]
    DuplicateUlimit { at: ContainerAt, ulimit: usize, first: usize, name: String },
    #[error(
        "Log driver awslogs requires options: {missing}. {at}.logConfiguration.options must set {missing}."
    )]
    AwslogsOptionsMissing { at: ContainerAt, missing: String },
    #[error(
        "{problem}. {at}.logConfiguration.options may set only awslogs-group, awslogs-region, awslogs-stream-prefix, awslogs-create-group, awslogs-datetime-format or awslogs-multiline-pattern, mode and max-buffer-size."
    )]
    AwslogsOption { at: ContainerAt, problem: crate::model::awslogs::AwslogsOptionError },
    #[error(
        "{driver} is not a valid log driver. Must be one of [awslogs,json-file]. {at}.logConfiguration.logDriver: ecsd ships container output to CloudWatch Logs (awslogs) or keeps it on the host (json-file)."
    )]
    UnsupportedLogDriver { at: ContainerAt, driver: String },
    #[error(
        "Invalid 'healthCheck' setting for container '{}'. {at}.healthCheck.command must start with 'CMD' or 'CMD-SHELL' followed by the command, e.g. ['CMD-SHELL', 'curl -f http://localhost/ || exit 1'], or be ['NONE'].",
        .at.name
    )]
    InvalidHealthCheckCommand { at: ContainerAt },
    #[error(
        "Health check {field} must be greater than or equal to the minimum allowed value {min} for container '{}'. {at}.healthCheck.{field} is {value}; allowed values are {min} to {max}.",
        .at.name
    )]
    HealthCheckTooLow { at: ContainerAt, field: &'static str, value: i32, min: i32, max: i32 },
    #[error(
        "Health check {field} must be less than or equal to the maximum allowed value {max} for container '{}'. {at}.healthCheck.{field} is {value}; allowed values are {min} to {max}.",
        .at.name
    )]
    HealthCheckTooHigh { at: ContainerAt, field: &'static str, value: i32, min: i32, max: i32 },
    #[error(
        "Invalid 'systemControls' setting for container '{}'. {at}.systemControls[{control}].namespace must not be empty; name a kernel parameter such as 'net.core.somaxconn'.",
        .at.name
    )]
    EmptySystemControlNamespace { at: ContainerAt, control: usize },
    #[error(
        "Task definition doesn't have any essential container. Set essential to true (the default when omitted) on at least one of containerDefinitions."
    )]
    NoEssentialContainer,
    #[error(
        "Invalid volume name '{name}'. volumes[{index}].name must be 1 to 255 letters, numbers, hyphens and underscores."
    )]
    InvalidVolumeName { index: usize, name: String },
    #[error(
        "Duplicate volume name '{name}'. volumes[{index}].name repeats volumes[{first}].name; volume names must be unique within a task definition."
    )]
    DuplicateVolumeName { index: usize, first: usize, name: String },
    #[error(
        "Invalid 'sourcePath' setting for volume '{name}'. volumes[{index}].host.sourcePath '{path}' must be an absolute path on the host, e.g. '/var/data'."
    )]
    RelativeSourcePath { index: usize, name: String, path: String },
    // ECS writes the quotes around awsvpc as typographic quotes.
    #[error(
        "Fargate only supports network mode \u{2018}awsvpc\u{2019}. networkMode is {current}; set networkMode to 'awsvpc' when requiresCompatibilities includes FARGATE."
    )]
    FargateNetworkMode { current: String },
    #[error(
        "Fargate compatible task definitions do not support privileged. {at}.privileged must be false or omitted when requiresCompatibilities includes FARGATE."
    )]
    FargatePrivileged { at: ContainerAt },
    #[error(
        "{driver} is not a valid log driver. Must be one of [awslogs,splunk,awsfirelens]. {at}.logConfiguration.logDriver must be one of these when requiresCompatibilities includes FARGATE."
    )]
    FargateLogDriver { at: ContainerAt, driver: String },
    #[error(
        "Fargate requires task definition to have execution role ARN to support log driver awslogs. {at}.logConfiguration uses awslogs; set executionRoleArn."
    )]
    FargateAwslogsWithoutRole { at: ContainerAt },
    #[error(
        "Invalid 'stopTimeout' setting for container '{}'. {at}.stopTimeout is {value}; tasks using the Fargate launch type allow at most 120 seconds.",
        .at.name
    )]
    FargateStopTimeout { at: ContainerAt, value: i32 },
    #[error(
        "Fargate compatible task definitions do not support sourcePath. volumes[{index}] ('{name}').host.sourcePath must be omitted when requiresCompatibilities includes FARGATE."
    )]
    FargateSourcePath { index: usize, name: String },
    #[error("Fargate requires that 'cpu' be defined at the task level. Set cpu, e.g. '256' or '0.25 vCPU'.")]
    FargateCpuRequired,
    #[error("Fargate requires that 'memory' be defined at the task level. Set memory, e.g. '512' or '1 GB'.")]
    FargateMemoryRequired,
    #[error(
        "No Fargate configuration exists for given values: {cpu} CPU, {memory} memory. See the Amazon ECS documentation for the valid values. {allowed}"
    )]
    FargateSize { cpu: u32, memory: u32, allowed: String },
    #[error(
        "Tasks using the Fargate launch type do not support ipcMode. Omit ipcMode when requiresCompatibilities includes FARGATE."
    )]
    FargateIpcMode,
    #[error(
        "Tasks using the Fargate launch type do not support pidMode 'host'. Use pidMode 'task' or omit pidMode when requiresCompatibilities includes FARGATE."
    )]
    FargateHostPidMode,
    #[error(
        "Tasks using the EXTERNAL launch type do not support networkMode=awsvpc. Use networkMode bridge, host or none when requiresCompatibilities includes EXTERNAL."
    )]
    ExternalAwsvpc,
    #[error(
        "Invalid 'cpu' setting for task. cpu '{value}' must be CPU units from 128 to 196608 (e.g. '1024') or vCPUs (e.g. '1 vCPU' or '0.25 vcpu')."
    )]
    InvalidTaskCpu { value: String },
    #[error(
        "Invalid 'memory' setting for task. memory '{value}' must be a positive whole number of MiB (e.g. '1024') or of GB (e.g. '1GB' or '1 GB')."
    )]
    InvalidTaskMemory { value: String },
    #[error(
        "The sum of all container 'cpu' values cannot be greater than the value of the task 'cpu'. containerDefinitions reserve {total} CPU units in total, but the task cpu is {task}."
    )]
    ContainerCpuAboveTask { total: i64, task: u32 },
    #[error(
        "The 'memory' setting for container '{}' is greater than for the task. {at}.memory is {memory} MiB, but the task memory is {task} MiB.",
        .at.name
    )]
    ContainerMemoryAboveTask { at: ContainerAt, memory: i32, task: u32 },
    #[error(
        "The ephemeral storage size must be between 21 and 200 GiB. ephemeralStorage.sizeInGiB is {size}; leave ephemeralStorage out for the default of 20 GiB."
    )]
    EphemeralStorageSize { size: i32 },
    #[error("The task definition cannot be read as a registration: {reason}")]
    NotARegistration { reason: String },
    #[error(
        "Unknown container '{name}' in proxyConfiguration. proxyConfiguration.containerName must name a container of this task definition."
    )]
    UnknownProxyContainer { name: String },
}

use TaskDefinitionError as E;

/// Family (and container and volume) name syntax: 1-255 of [A-Za-z0-9_-].
pub fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Validates a RegisterTaskDefinition request as ECS does.
pub fn validate(req: &RegisterTaskDefinitionRequest) -> Result<(), TaskDefinitionError> {
    checked(req).map(|_| ())
}

/// Validates, then builds the TaskDefinition ECS would store and echo back.
pub fn build(
    req: &RegisterTaskDefinitionRequest,
    reg: &Registration<'_>,
) -> Result<TaskDefinition, TaskDefinitionError> {
    let ctx = checked(req)?;
    let family = req.family.clone().unwrap_or_default();
    Ok(TaskDefinition {
        task_definition_arn: Some(reg.identity.task_definition_arn(&family, reg.revision)),
        container_definitions: Some(ctx.containers.iter().map(|c| echoed_container(c, ctx.mode)).collect()),
        family: Some(family),
        task_role_arn: req.task_role_arn.clone(),
        execution_role_arn: req.execution_role_arn.clone(),
        network_mode: req.network_mode.clone(),
        revision: reg.revision,
        volumes: Some(req.volumes.clone().unwrap_or_default()),
        status: Some("ACTIVE".to_owned()),
        requires_attributes: Some(requires_attributes(&ctx)),
        placement_constraints: Some(req.placement_constraints.clone().unwrap_or_default()),
        compatibilities: Some(compatibilities(&ctx)),
        runtime_platform: req.runtime_platform.clone(),
        requires_compatibilities: req.requires_compatibilities.clone(),
        cpu: ctx.task_cpu.map(|c| c.to_string()),
        memory: ctx.task_memory.map(|m| m.to_string()),
        inference_accelerators: req.inference_accelerators.clone(),
        pid_mode: req.pid_mode.clone(),
        ipc_mode: req.ipc_mode.clone(),
        proxy_configuration: req.proxy_configuration.clone(),
        registered_at: Some(reg.registered_at),
        deregistered_at: None,
        delete_requested_at: None,
        registered_by: Some(reg.identity.root_principal()),
        ephemeral_storage: req.ephemeral_storage.clone(),
        enable_fault_injection: req.enable_fault_injection,
        trusted_execution_configuration: req.trusted_execution_configuration.clone(),
    })
}

/// The local copy of a task definition another ECS (the upstream) registered: checked by
/// ECS's rules and echoed with ECS's defaults, as a registration here would be, but keeping
/// the upstream's ARN, revision, status and registration time.
pub fn adopt(upstream: &TaskDefinition, identity: &Identity) -> Result<TaskDefinition, TaskDefinitionError> {
    let as_request: RegisterTaskDefinitionRequest = serde_json::to_value(upstream)
        .and_then(serde_json::from_value)
        .map_err(|e| E::NotARegistration { reason: e.to_string() })?;
    let reg = Registration {
        identity,
        revision: upstream.revision,
        registered_at: upstream.registered_at.unwrap_or_default(),
    };
    let mut td = build(&as_request, &reg)?;
    td.task_definition_arn = upstream.task_definition_arn.clone();
    td.status = upstream.status.clone().or(td.status);
    td.registered_by = upstream.registered_by.clone();
    td.registered_at = upstream.registered_at;
    td.deregistered_at = upstream.deregistered_at;
    Ok(td)
}

/// A request under validation, with the task size parsed once.
struct Ctx<'a> {
    req: &'a RegisterTaskDefinitionRequest,
    containers: &'a [ContainerDefinition],
    mode: NetworkMode,
    /// Normalised task cpu units; `None` when absent or not parsable (reported at `cpu`).
    task_cpu: Option<u32>,
    /// Normalised task memory in MiB; `None` when absent or not parsable (reported at `memory`).
    task_memory: Option<u32>,
}

impl Ctx<'_> {
    fn index_of(&self, name: &str) -> Option<usize> {
        self.containers.iter().position(|c| c.name.as_deref() == Some(name))
    }

    fn requires(&self, compatibility: &str) -> bool {
        self.req.requires_compatibilities.as_deref().unwrap_or_default().iter().any(|c| c == compatibility)
    }

    fn declares_volume(&self, name: &str) -> bool {
        self.req.volumes.as_deref().unwrap_or_default().iter().any(|v| v.name.as_deref() == Some(name))
    }

    fn has_execution_role(&self) -> bool {
        self.req.execution_role_arn.as_deref().is_some_and(|r| !r.is_empty())
    }
}

fn at(index: usize, c: &ContainerDefinition) -> ContainerAt {
    ContainerAt { index, name: c.name.clone().unwrap_or_default() }
}

fn essential(c: &ContainerDefinition) -> bool {
    c.essential.unwrap_or(true)
}

/// Runs every rule in request field order and stops at the first violation.
fn checked(req: &RegisterTaskDefinitionRequest) -> Result<Ctx<'_>, TaskDefinitionError> {
    let ctx = Ctx {
        req,
        containers: req.container_definitions.as_deref().unwrap_or_default(),
        mode: NetworkMode::parse(req.network_mode.as_deref()),
        task_cpu: req.cpu.as_deref().and_then(parse_task_cpu),
        task_memory: req.memory.as_deref().and_then(parse_task_memory),
    };
    check_family(req)?;
    check_container_count(&ctx)?;
    for (i, c) in ctx.containers.iter().enumerate() {
        check_container(&ctx, i, c)?;
    }
    check_essential(&ctx)?;
    check_dependency_cycles(&ctx)?;
    check_link_cycles(&ctx)?;
    check_host_ports(&ctx)?;
    check_volumes(req)?;
    check_compatibilities(&ctx)?;
    check_task_cpu(&ctx)?;
    check_task_memory(&ctx)?;
    check_ephemeral_storage(req)?;
    check_proxy(&ctx)?;
    Ok(ctx)
}

fn check_family(req: &RegisterTaskDefinitionRequest) -> Result<(), E> {
    let family = req.family.as_deref().unwrap_or_default();
    if valid_name(family) { Ok(()) } else { Err(E::InvalidFamily { family: family.to_owned() }) }
}

fn check_container_count(ctx: &Ctx<'_>) -> Result<(), E> {
    match ctx.containers.len() {
        0 => Err(E::NoContainers),
        n if n > MAX_CONTAINERS => Err(E::TooManyContainers { count: n }),
        _ => Ok(()),
    }
}

fn check_container(ctx: &Ctx<'_>, i: usize, c: &ContainerDefinition) -> Result<(), E> {
    check_container_name(ctx, i, c)?;
    if c.image.as_deref().is_none_or(|image| image.trim().is_empty()) {
        return Err(E::MissingImage { at: at(i, c) });
    }
    if c.cpu < 0 {
        return Err(E::NegativeContainerCpu { at: at(i, c), cpu: c.cpu });
    }
    check_container_memory(ctx, i, c)?;
    check_links(ctx, i, c)?;
    check_port_mappings(ctx, i, c)?;
    check_environment(i, c)?;
    check_mount_points(ctx, i, c)?;
    check_volumes_from(ctx, i, c)?;
    check_secrets(i, c)?;
    check_depends_on(ctx, i, c)?;
    check_timeouts(i, c)?;
    if ctx.mode == NetworkMode::Awsvpc && c.hostname.as_deref().is_some_and(|h| !h.is_empty()) {
        return Err(E::HostnameInAwsvpc { at: at(i, c) });
    }
    check_ulimits(i, c)?;
    check_log_configuration(i, c)?;
    check_health_check(i, c)?;
    check_system_controls(i, c)
}

fn check_container_name(ctx: &Ctx<'_>, i: usize, c: &ContainerDefinition) -> Result<(), E> {
    let Some(name) = c.name.as_deref().filter(|n| !n.is_empty()) else {
        return Err(E::MissingContainerName { index: i });
    };
    if !valid_name(name) {
        return Err(E::InvalidContainerName { index: i, name: name.to_owned() });
    }
    match ctx.index_of(name) {
        Some(first) if first < i => Err(E::DuplicateContainerName { index: i, name: name.to_owned(), first }),
        _ => Ok(()),
    }
}

fn check_container_memory(ctx: &Ctx<'_>, i: usize, c: &ContainerDefinition) -> Result<(), E> {
    // Task-level memory sizes the containers that name none; a present but unparsable task
    // memory is reported at `memory`, not here.
    if c.memory.is_none() && c.memory_reservation.is_none() && ctx.req.memory.is_none() {
        return Err(E::MemoryRequired { at: at(i, c) });
    }
    let too_small = |field, value, min| E::ContainerMemoryTooSmall { at: at(i, c), field, value, min };
    if let Some(memory) = c.memory
        && memory < MIN_CONTAINER_MEMORY_MIB
    {
        return Err(too_small("memory", memory, MIN_CONTAINER_MEMORY_MIB));
    }
    if let Some(reservation) = c.memory_reservation
        && reservation < 1
    {
        return Err(too_small("memoryReservation", reservation, 1));
    }
    match (c.memory, c.memory_reservation) {
        (Some(memory), Some(reservation)) if reservation > memory => {
            Err(E::ReservationAboveMemory { at: at(i, c), reservation, memory })
        }
        _ => Ok(()),
    }
}

fn check_links(ctx: &Ctx<'_>, i: usize, c: &ContainerDefinition) -> Result<(), E> {
    let links = c.links.as_deref().unwrap_or_default();
    if links.is_empty() {
        return Ok(());
    }
    if ctx.mode != NetworkMode::Bridge {
        return Err(E::LinksNotSupported { at: at(i, c), mode: ctx.mode.as_str() });
    }
    for (k, link) in links.iter().enumerate() {
        let target = link_target(link);
        if c.name.as_deref() == Some(target) || ctx.index_of(target).is_none() {
            return Err(E::UnknownLink { at: at(i, c), link_index: k, link: link.clone() });
        }
    }
    Ok(())
}

/// The container a link names: `name` or `name:alias`.
fn link_target(link: &str) -> &str {
    link.split_once(':').map_or(link, |(name, _)| name)
}

fn protocol(m: &PortMapping) -> &'static str {
    match m.protocol.as_deref() {
        Some("udp") => "udp",
        _ => "tcp",
    }
}

fn check_port_mappings(ctx: &Ctx<'_>, i: usize, c: &ContainerDefinition) -> Result<(), E> {
    let mappings = c.port_mappings.as_deref().unwrap_or_default();
    if mappings.is_empty() {
        return Ok(());
    }
    if ctx.mode == NetworkMode::None {
        return Err(E::PortMappingsWithoutNetwork { at: at(i, c) });
    }
    let ranges = mappings.iter().filter(|m| m.container_port_range.is_some()).count();
    if ranges > MAX_PORT_RANGES {
        return Err(E::TooManyPortRanges { at: at(i, c), count: ranges });
    }
    // (protocol, first port, last port, mapping index) of the mappings seen so far.
    let mut taken: Vec<(&str, i32, i32, usize)> = Vec::new();
    for (j, m) in mappings.iter().enumerate() {
        let (start, end) = match &m.container_port_range {
            Some(range) => port_range(ctx, i, c, j, m, range)?,
            None => {
                let port = single_port(ctx, i, c, j, m)?;
                (port, port)
            }
        };
        let proto = protocol(m);
        if let Some(&(_, first_start, _, first)) =
            taken.iter().find(|(p, s, e, _)| *p == proto && start <= *e && *s <= end)
        {
            return Err(E::DuplicateContainerPort {
                at: at(i, c),
                mapping: j,
                first,
                port: start.max(first_start),
                protocol: proto,
            });
        }
        taken.push((proto, start, end, j));
    }
    Ok(())
}

fn port_range(
    ctx: &Ctx<'_>,
    i: usize,
    c: &ContainerDefinition,
    j: usize,
    m: &PortMapping,
    range: &str,
) -> Result<(i32, i32), E> {
    if !matches!(ctx.mode, NetworkMode::Awsvpc | NetworkMode::Bridge) {
        return Err(E::PortRangeNotSupported { at: at(i, c), mapping: j, mode: ctx.mode.as_str() });
    }
    let other = if m.container_port.is_some() {
        Some("containerPort")
    } else if m.host_port.is_some() {
        Some("hostPort")
    } else {
        None
    };
    if let Some(other) = other {
        return Err(E::PortRangeWithPort { at: at(i, c), mapping: j, other });
    }
    parse_port_range(range).ok_or_else(|| E::InvalidPortRange {
        at: at(i, c),
        mapping: j,
        range: range.to_owned(),
    })
}

/// A `containerPortRange`: two ports, the first below the second.
fn parse_port_range(range: &str) -> Option<(i32, i32)> {
    let r = PortRange::parse(range).ok().filter(|r| r.start < r.end)?;
    Some((i32::from(r.start), i32::from(r.end)))
}

fn single_port(
    ctx: &Ctx<'_>,
    i: usize,
    c: &ContainerDefinition,
    j: usize,
    m: &PortMapping,
) -> Result<i32, E> {
    let port = match m.container_port {
        Some(p) if (1..=65535).contains(&p) => p,
        other => {
            let value = other.map_or_else(|| "missing".to_owned(), |p| p.to_string());
            return Err(E::InvalidContainerPort { at: at(i, c), mapping: j, value });
        }
    };
    if let Some(host_port) = m.host_port {
        if !(0..=65535).contains(&host_port) {
            return Err(E::InvalidHostPort { at: at(i, c), mapping: j, value: host_port });
        }
        if ctx.mode.shares_ports() && host_port != port {
            return Err(E::HostPortMismatch {
                at: at(i, c),
                mapping: j,
                mode: ctx.mode.as_str(),
                host_port,
                container_port: port,
            });
        }
    }
    Ok(port)
}

fn check_environment(i: usize, c: &ContainerDefinition) -> Result<(), E> {
    let variables = c.environment.as_deref().unwrap_or_default();
    match variables.iter().position(|v| v.name.as_deref().is_none_or(str::is_empty)) {
        Some(variable) => Err(E::EmptyEnvironmentName { at: at(i, c), variable }),
        None => Ok(()),
    }
}

fn check_mount_points(ctx: &Ctx<'_>, i: usize, c: &ContainerDefinition) -> Result<(), E> {
    for (k, mount) in c.mount_points.as_deref().unwrap_or_default().iter().enumerate() {
        let volume = mount.source_volume.as_deref();
        if !volume.is_some_and(|v| ctx.declares_volume(v)) {
            // ECS prints a missing name as 'null'.
            let volume = volume.unwrap_or("null").to_owned();
            return Err(E::UnknownVolume { at: at(i, c), mount: k, volume });
        }
        let path = mount.container_path.as_deref().unwrap_or_default();
        if !is_absolute(path) {
            return Err(E::RelativeContainerPath { at: at(i, c), mount: k, path: path.to_owned() });
        }
    }
    Ok(())
}

/// Linux paths, and the drive paths Windows container definitions use (`C:\data`).
fn is_absolute(path: &str) -> bool {
    let b = path.as_bytes();
    path.starts_with('/')
        || (b.len() >= 3 && b[0].is_ascii_alphabetic() && b[1] == b':' && matches!(b[2], b'\\' | b'/'))
}

fn check_volumes_from(ctx: &Ctx<'_>, i: usize, c: &ContainerDefinition) -> Result<(), E> {
    for (k, entry) in c.volumes_from.as_deref().unwrap_or_default().iter().enumerate() {
        let source = entry.source_container.as_deref().unwrap_or_default();
        if c.name.as_deref() == Some(source) || ctx.index_of(source).is_none() {
            return Err(E::UnknownVolumesFromSource {
                at: at(i, c),
                entry: k,
                source_container: source.to_owned(),
            });
        }
    }
    Ok(())
}

fn check_secrets(i: usize, c: &ContainerDefinition) -> Result<(), E> {
    let secrets = c.secrets.as_deref().unwrap_or_default();
    for (k, secret) in secrets.iter().enumerate() {
        if let Some(first) = secrets[..k].iter().position(|s| s.name == secret.name) {
            let name = secret.name.clone().unwrap_or_default();
            return Err(E::DuplicateSecretName { at: at(i, c), secret: k, first, name });
        }
    }
    Ok(())
}

fn check_depends_on(ctx: &Ctx<'_>, i: usize, c: &ContainerDefinition) -> Result<(), E> {
    for (k, dependency) in c.depends_on.as_deref().unwrap_or_default().iter().enumerate() {
        let target_name = dependency.container_name.as_deref().unwrap_or_default();
        if c.name.as_deref() == Some(target_name) {
            return Err(E::SelfDependency { at: at(i, c), dependency: k });
        }
        let Some(t) = ctx.index_of(target_name) else {
            let target = target_name.to_owned();
            return Err(E::UnknownDependency { at: at(i, c), dependency: k, target });
        };
        let target = &ctx.containers[t];
        match dependency.condition.as_deref() {
            // An essential container that exits stops the task, so nothing could wait for it.
            Some(condition @ ("COMPLETE" | "SUCCESS")) if essential(target) => {
                return Err(E::EssentialDependency {
                    at: at(i, c),
                    dependency: k,
                    target: target_name.to_owned(),
                    condition: condition.to_owned(),
                });
            }
            Some("HEALTHY") if target.health_check.is_none() => {
                return Err(E::DependencyWithoutHealthCheck {
                    at: at(i, c),
                    dependency: k,
                    target: target_name.to_owned(),
                });
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_timeouts(i: usize, c: &ContainerDefinition) -> Result<(), E> {
    for (field, value) in [("startTimeout", c.start_timeout), ("stopTimeout", c.stop_timeout)] {
        if let Some(value) = value
            && value < 0
        {
            return Err(E::NegativeTimeout { at: at(i, c), field, value });
        }
    }
    Ok(())
}

fn check_ulimits(i: usize, c: &ContainerDefinition) -> Result<(), E> {
    let ulimits = c.ulimits.as_deref().unwrap_or_default();
    for (k, ulimit) in ulimits.iter().enumerate() {
        let name = || ulimit.name.clone().unwrap_or_default();
        // -1 is how Docker spells "unlimited" (memlock for Elasticsearch, typically).
        for (field, value) in [("softLimit", ulimit.soft_limit), ("hardLimit", ulimit.hard_limit)] {
            if value < -1 {
                return Err(E::NegativeUlimit { at: at(i, c), ulimit: k, name: name(), field, value });
            }
        }
        let (soft, hard) = (ulimit.soft_limit, ulimit.hard_limit);
        if hard != -1 && (soft == -1 || soft > hard) {
            return Err(E::SoftLimitAboveHardLimit { at: at(i, c), ulimit: k, name: name(), soft, hard });
        }
        if let Some(first) = ulimits[..k].iter().position(|u| u.name == ulimit.name) {
            return Err(E::DuplicateUlimit { at: at(i, c), ulimit: k, first, name: name() });
        }
    }
    Ok(())
}

fn check_log_configuration(i: usize, c: &ContainerDefinition) -> Result<(), E> {
    use crate::model::awslogs::{AwslogsOptionError, AwslogsOptions};
    let Some(log) = &c.log_configuration else {
        return Ok(());
    };
    match log.log_driver.as_deref() {
        None | Some("json-file") => Ok(()),
        Some("awslogs") => match AwslogsOptions::parse(&log.options.clone().unwrap_or_default()) {
            Ok(_) => Ok(()),
            Err(AwslogsOptionError::Missing(missing)) => {
                Err(E::AwslogsOptionsMissing { at: at(i, c), missing })
            }
            Err(problem) => Err(E::AwslogsOption { at: at(i, c), problem }),
        },
        Some(other) => Err(E::UnsupportedLogDriver { at: at(i, c), driver: other.to_owned() }),
    }
}

fn check_health_check(i: usize, c: &ContainerDefinition) -> Result<(), E> {
    let Some(h) = &c.health_check else {
        return Ok(());
    };
    let first = h.command.as_deref().unwrap_or_default().first().map(String::as_str);
    if !matches!(first, Some("CMD" | "CMD-SHELL" | "NONE")) {
        return Err(E::InvalidHealthCheckCommand { at: at(i, c) });
    }
    let ranges = [
        ("interval", h.interval, 5, 300),
        ("timeout", h.timeout, 2, 120),
        ("retries", h.retries, 1, 10),
        ("startPeriod", h.start_period, 0, 300),
    ];
    for (field, value, min, max) in ranges {
        match value {
            Some(value) if value < min => {
                return Err(E::HealthCheckTooLow { at: at(i, c), field, value, min, max });
            }
            Some(value) if value > max => {
                return Err(E::HealthCheckTooHigh { at: at(i, c), field, value, min, max });
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_system_controls(i: usize, c: &ContainerDefinition) -> Result<(), E> {
    let controls = c.system_controls.as_deref().unwrap_or_default();
    match controls.iter().position(|s| s.namespace.as_deref().is_none_or(|n| n.trim().is_empty())) {
        Some(control) => Err(E::EmptySystemControlNamespace { at: at(i, c), control }),
        None => Ok(()),
    }
}

fn check_essential(ctx: &Ctx<'_>) -> Result<(), E> {
    if ctx.containers.iter().any(essential) { Ok(()) } else { Err(E::NoEssentialContainer) }
}

fn check_dependency_cycles(ctx: &Ctx<'_>) -> Result<(), E> {
    let edges = |v: usize| -> Vec<usize> {
        let deps = ctx.containers[v].depends_on.as_deref().unwrap_or_default();
        deps.iter().filter_map(|d| ctx.index_of(d.container_name.as_deref()?)).collect()
    };
    match find_cycle(ctx, &edges) {
        Some(cycle) => Err(E::DependencyCycle { cycle }),
        None => Ok(()),
    }
}

fn check_link_cycles(ctx: &Ctx<'_>) -> Result<(), E> {
    let edges = |v: usize| -> Vec<usize> {
        let links = ctx.containers[v].links.as_deref().unwrap_or_default();
        links.iter().filter_map(|l| ctx.index_of(link_target(l))).collect()
    };
    match find_cycle(ctx, &edges) {
        Some(cycle) => Err(E::LinkCycle { cycle }),
        None => Ok(()),
    }
}

/// The first cycle among the containers, as `a -> b -> a`, searching in container order.
fn find_cycle(ctx: &Ctx<'_>, edges: &dyn Fn(usize) -> Vec<usize>) -> Option<String> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    fn visit(
        v: usize,
        edges: &dyn Fn(usize) -> Vec<usize>,
        marks: &mut [Mark],
        path: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        marks[v] = Mark::OnPath;
        path.push(v);
        for w in edges(v) {
            match marks[w] {
                Mark::OnPath => {
                    let from = path.iter().position(|&x| x == w)?;
                    let mut cycle = path[from..].to_vec();
                    cycle.push(w);
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(cycle) = visit(w, edges, marks, path) {
                        return Some(cycle);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks[v] = Mark::Done;
        None
    }
    let mut marks = vec![Mark::New; ctx.containers.len()];
    for v in 0..ctx.containers.len() {
        if marks[v] == Mark::New
            && let Some(cycle) = visit(v, edges, &mut marks, &mut Vec::new())
        {
            let names: Vec<&str> =
                cycle.iter().map(|&i| ctx.containers[i].name.as_deref().unwrap_or_default()).collect();
            return Some(names.join(" -> "));
        }
    }
    None
}

/// The port each mapping takes on the host; 0 (dynamic) takes none.
fn host_port(mode: NetworkMode, m: &PortMapping) -> i32 {
    match (m.host_port, m.container_port) {
        (Some(host), _) => host,
        (None, Some(container)) if mode.shares_ports() => container,
        _ => 0,
    }
}

fn check_host_ports(ctx: &Ctx<'_>) -> Result<(), E> {
    // (protocol, host port, container index, mapping index) of the ports taken so far.
    let mut taken: Vec<(&str, i32, usize, usize)> = Vec::new();
    for (i, c) in ctx.containers.iter().enumerate() {
        for (j, m) in c.port_mappings.as_deref().unwrap_or_default().iter().enumerate() {
            let port = host_port(ctx.mode, m);
            if port == 0 || m.container_port_range.is_some() {
                continue;
            }
            let proto = protocol(m);
            if let Some(&(_, _, first_container, first_mapping)) =
                taken.iter().find(|(p, h, _, _)| *p == proto && *h == port)
            {
                return Err(E::DuplicateHostPort {
                    at: at(i, c),
                    mapping: j,
                    first_at: at(first_container, &ctx.containers[first_container]),
                    first_mapping,
                    host_port: port,
                    protocol: if proto == "udp" { "UDP" } else { "TCP" },
                });
            }
            taken.push((proto, port, i, j));
        }
    }
    Ok(())
}

fn check_volumes(req: &RegisterTaskDefinitionRequest) -> Result<(), E> {
    let volumes = req.volumes.as_deref().unwrap_or_default();
    for (k, volume) in volumes.iter().enumerate() {
        let name = volume.name.as_deref();
        if let Some(name) = name {
            if !valid_name(name) {
                return Err(E::InvalidVolumeName { index: k, name: name.to_owned() });
            }
            if let Some(first) = volumes[..k].iter().position(|v| v.name.as_deref() == Some(name)) {
                return Err(E::DuplicateVolumeName { index: k, first, name: name.to_owned() });
            }
        }
        if let Some(path) = volume.host.as_ref().and_then(|h| h.source_path.as_deref())
            && !is_absolute(path)
        {
            return Err(E::RelativeSourcePath {
                index: k,
                name: name.unwrap_or_default().to_owned(),
                path: path.to_owned(),
            });
        }
    }
    Ok(())
}

fn check_compatibilities(ctx: &Ctx<'_>) -> Result<(), E> {
    if ctx.requires("FARGATE")
        && let Some(violation) = fargate_violation(ctx)
    {
        return Err(violation);
    }
    if ctx.requires("EXTERNAL") && ctx.mode == NetworkMode::Awsvpc {
        return Err(E::ExternalAwsvpc);
    }
    Ok(())
}

/// The first rule of Fargate's the definition breaks. ECS enforces these when FARGATE is
/// required and otherwise uses them to decide whether FARGATE joins `compatibilities`.
fn fargate_violation(ctx: &Ctx<'_>) -> Option<E> {
    let req = ctx.req;
    if ctx.mode != NetworkMode::Awsvpc {
        let current = match req.network_mode.as_deref() {
            Some(mode) => format!("'{mode}'"),
            None => "not set (bridge)".to_owned(),
        };
        return Some(E::FargateNetworkMode { current });
    }
    for (i, c) in ctx.containers.iter().enumerate() {
        if c.privileged == Some(true) {
            return Some(E::FargatePrivileged { at: at(i, c) });
        }
        if let Some(driver) = c.log_configuration.as_ref().and_then(|l| l.log_driver.as_deref()) {
            if !FARGATE_LOG_DRIVERS.contains(&driver) {
                return Some(E::FargateLogDriver { at: at(i, c), driver: driver.to_owned() });
            }
            if driver == "awslogs" && !ctx.has_execution_role() {
                return Some(E::FargateAwslogsWithoutRole { at: at(i, c) });
            }
        }
        if let Some(value) = c.stop_timeout
            && value > FARGATE_MAX_STOP_TIMEOUT
        {
            return Some(E::FargateStopTimeout { at: at(i, c), value });
        }
    }
    for (k, volume) in req.volumes.as_deref().unwrap_or_default().iter().enumerate() {
        if volume.host.as_ref().is_some_and(|h| h.source_path.is_some()) {
            let name = volume.name.clone().unwrap_or_default();
            return Some(E::FargateSourcePath { index: k, name });
        }
    }
    if req.cpu.is_none() {
        return Some(E::FargateCpuRequired);
    }
    if req.memory.is_none() {
        return Some(E::FargateMemoryRequired);
    }
    if let (Some(cpu), Some(memory)) = (ctx.task_cpu, ctx.task_memory)
        && !fargate_size_exists(cpu, memory)
    {
        return Some(E::FargateSize { cpu, memory, allowed: fargate_sizes_for(cpu) });
    }
    if req.ipc_mode.is_some() {
        return Some(E::FargateIpcMode);
    }
    if req.pid_mode.as_deref() == Some("host") {
        return Some(E::FargateHostPidMode);
    }
    None
}

fn fargate_size_exists(cpu: u32, memory: u32) -> bool {
    if cpu == 256 {
        return FARGATE_256_MEMORY.contains(&memory);
    }
    FARGATE_SIZES.iter().any(|&(c, min, max, step)| {
        c == cpu && (min..=max).contains(&memory) && (memory - min).is_multiple_of(step)
    })
}

/// What Fargate would accept instead, for the error message.
fn fargate_sizes_for(cpu: u32) -> String {
    if cpu == 256 {
        return "With cpu 256, memory must be 512, 1024 or 2048.".to_owned();
    }
    match FARGATE_SIZES.iter().find(|&&(c, ..)| c == cpu) {
        Some(&(_, min, max, step)) => {
            format!("With cpu {cpu}, memory must be {min} to {max} in steps of {step}.")
        }
        None => "cpu must be one of 256, 512, 1024, 2048, 4096, 8192 or 16384.".to_owned(),
    }
}

fn check_task_cpu(ctx: &Ctx<'_>) -> Result<(), E> {
    let Some(value) = ctx.req.cpu.as_deref() else {
        return Ok(());
    };
    let Some(task) = ctx.task_cpu else {
        return Err(E::InvalidTaskCpu { value: value.to_owned() });
    };
    let total: i64 = ctx.containers.iter().map(|c| i64::from(c.cpu)).sum();
    if total > i64::from(task) {
        return Err(E::ContainerCpuAboveTask { total, task });
    }
    Ok(())
}

fn check_task_memory(ctx: &Ctx<'_>) -> Result<(), E> {
    let Some(value) = ctx.req.memory.as_deref() else {
        return Ok(());
    };
    let Some(task) = ctx.task_memory else {
        return Err(E::InvalidTaskMemory { value: value.to_owned() });
    };
    for (i, c) in ctx.containers.iter().enumerate() {
        if let Some(memory) = c.memory
            && i64::from(memory) > i64::from(task)
        {
            return Err(E::ContainerMemoryAboveTask { at: at(i, c), memory, task });
        }
    }
    Ok(())
}

fn check_ephemeral_storage(req: &RegisterTaskDefinitionRequest) -> Result<(), E> {
    match &req.ephemeral_storage {
        Some(e) if !EPHEMERAL_STORAGE_GIB.contains(&e.size_in_gi_b) => {
            Err(E::EphemeralStorageSize { size: e.size_in_gi_b })
        }
        _ => Ok(()),
    }
}

fn check_proxy(ctx: &Ctx<'_>) -> Result<(), E> {
    let Some(proxy) = &ctx.req.proxy_configuration else {
        return Ok(());
    };
    let name = proxy.container_name.as_deref().unwrap_or_default();
    match ctx.index_of(name) {
        Some(_) => Ok(()),
        None => Err(E::UnknownProxyContainer { name: name.to_owned() }),
    }
}

/// Task cpu as ECS stores it, in CPU units: "1024", "1 vCPU", "0.25 vcpu".
fn parse_task_cpu(text: &str) -> Option<u32> {
    let text = text.trim();
    let units = match text.to_ascii_lowercase().strip_suffix("vcpu") {
        Some(vcpus) => scaled(vcpus.trim_end(), 1024)?,
        None => whole(text)?,
    };
    TASK_CPU_UNITS.contains(&units).then(|| u32::try_from(units).ok()).flatten()
}

/// Task memory as ECS stores it, in MiB: "512", "1GB", "1 GB", "0.5 gb".
fn parse_task_memory(text: &str) -> Option<u32> {
    let text = text.trim();
    let mib = match text.to_ascii_lowercase().strip_suffix("gb") {
        Some(gb) => scaled(gb.trim_end(), 1024)?,
        None => whole(text)?,
    };
    (mib > 0).then(|| u32::try_from(mib).ok().filter(|m| i32::try_from(*m).is_ok())).flatten()
}

fn whole(text: &str) -> Option<u64> {
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    digits.then(|| text.parse().ok()).flatten()
}

/// A decimal number times `scale`, when that is a whole number: "0.25" × 1024 = 256.
fn scaled(text: &str, scale: u64) -> Option<u64> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) || frac.len() > 9 {
        return None;
    }
    let denominator = 10u64.pow(u32::try_from(frac.len()).ok()?);
    let int: u64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let frac: u64 = if frac.is_empty() { 0 } else { frac.parse().ok()? };
    let numerator = int.checked_mul(denominator)?.checked_add(frac)?.checked_mul(scale)?;
    (numerator % denominator == 0).then_some(numerator / denominator)
}

/// A container as DescribeTaskDefinition shows it: the members ECS fills in when absent.
fn echoed_container(c: &ContainerDefinition, mode: NetworkMode) -> ContainerDefinition {
    let mut c = c.clone();
    c.essential.get_or_insert(true);
    for m in c.port_mappings.get_or_insert_with(Vec::new) {
        m.protocol.get_or_insert_with(|| "tcp".to_owned());
        if m.container_port_range.is_none() && m.host_port.is_none() {
            m.host_port = Some(host_port(mode, m));
        }
    }
    c.environment.get_or_insert_with(Vec::new);
    c.mount_points.get_or_insert_with(Vec::new);
    c.volumes_from.get_or_insert_with(Vec::new);
    c.system_controls.get_or_insert_with(Vec::new);
    if let Some(h) = &mut c.health_check {
        h.interval.get_or_insert(HEALTH_CHECK_INTERVAL);
        h.timeout.get_or_insert(HEALTH_CHECK_TIMEOUT);
        h.retries.get_or_insert(HEALTH_CHECK_RETRIES);
    }
    c
}

/// Launch types the definition validates against, in ECS's order. EXTERNAL (ECS Anywhere)
/// cannot give a task its own network interface, so awsvpc excludes it.
fn compatibilities(ctx: &Ctx<'_>) -> Vec<String> {
    let mut out = Vec::new();
    if ctx.mode != NetworkMode::Awsvpc {
        out.push("EXTERNAL");
    }
    out.push("EC2");
    if fargate_violation(ctx).is_none() {
        out.push("FARGATE");
    }
    if ctx.requires("MANAGED_INSTANCES") {
        out.push("MANAGED_INSTANCES");
    }
    out.into_iter().map(str::to_owned).collect()
}

/// Private ECR images (`<account>.dkr.ecr.<region>.amazonaws.com/...`) need ECR auth on the
/// instance; public images do not.
fn is_private_ecr(image: &str) -> bool {
    image.split_once('/').is_some_and(|(host, _)| {
        host.contains(".dkr.ecr.")
            && (host.ends_with(".amazonaws.com") || host.ends_with(".amazonaws.com.cn"))
    })
}

/// "asm" for Secrets Manager ARNs, "ssm" for Parameter Store ARNs and names.
fn secret_store(value_from: Option<&str>) -> &'static str {
    if value_from.is_some_and(|v| v.contains(":secretsmanager:")) { "asm" } else { "ssm" }
}

/// The container instance attributes a task of this definition needs, derived as ECS does
/// from what the definition uses. Names are the agent's capability names. ECS's own order is
/// not stable between definitions; this one is fixed and close to what ECS usually shows.
fn requires_attributes(ctx: &Ctx<'_>) -> Vec<Attribute> {
    let containers = ctx.containers;
    let any = |f: &dyn Fn(&ContainerDefinition) -> bool| containers.iter().any(f);
    let mut names: Vec<String> = Vec::new();
    let mut add = |name: String| {
        if !names.contains(&name) {
            names.push(name);
        }
    };
    let drivers: Vec<&str> =
        containers.iter().filter_map(|c| c.log_configuration.as_ref()?.log_driver.as_deref()).collect();
    for driver in &drivers {
        add(format!("com.amazonaws.ecs.capability.logging-driver.{driver}"));
    }
    let role = ctx.has_execution_role();
    if role && drivers.contains(&"awslogs") {
        add("ecs.capability.execution-role-awslogs".into());
    }
    let ecr = any(&|c| c.image.as_deref().is_some_and(is_private_ecr));
    if ecr {
        add("com.amazonaws.ecs.capability.ecr-auth".into());
    }
    if !drivers.is_empty() {
        add("com.amazonaws.ecs.capability.docker-remote-api.1.19".into());
    }
    if any(&|c| c.memory_reservation.is_some()) {
        add("com.amazonaws.ecs.capability.docker-remote-api.1.21".into());
    }
    if ctx.req.task_role_arn.as_deref().is_some_and(|r| !r.is_empty()) {
        add("com.amazonaws.ecs.capability.task-iam-role".into());
    }
    if any(&|c| c.health_check.is_some()) {
        add("ecs.capability.container-health-check".into());
    }
    if role && ecr {
        add("ecs.capability.execution-role-ecr-pull".into());
    }
    if any(&|c| c.repository_credentials.is_some()) {
        add("ecs.capability.private-registry-authentication.secretsmanager".into());
    }
    for c in containers {
        for secret in c.secrets.as_deref().unwrap_or_default() {
            let store = secret_store(secret.value_from.as_deref());
            add(format!("ecs.capability.secrets.{store}.environment-variables"));
        }
        let log_secrets = c.log_configuration.as_ref().and_then(|l| l.secret_options.as_deref());
        for secret in log_secrets.unwrap_or_default() {
            let store = secret_store(secret.value_from.as_deref());
            add(format!("ecs.capability.secrets.{store}.bootstrap.log-driver"));
        }
    }
    if ctx.mode == NetworkMode::Awsvpc {
        add("com.amazonaws.ecs.capability.docker-remote-api.1.18".into());
        add("ecs.capability.task-eni".into());
    }
    if any(&|c| c.depends_on.as_deref().is_some_and(|d| !d.is_empty())) {
        add("ecs.capability.container-ordering".into());
    }
    for c in containers {
        if let Some(kind @ ("fluentd" | "fluentbit")) =
            c.firelens_configuration.as_ref().and_then(|f| f.r#type.as_deref())
        {
            add(format!("ecs.capability.firelens.{kind}"));
        }
    }
    let volumes = ctx.req.volumes.as_deref().unwrap_or_default();
    if volumes.iter().any(|v| v.efs_volume_configuration.is_some()) {
        add("ecs.capability.efsAuth".into());
        add("ecs.capability.efs".into());
        add("com.amazonaws.ecs.capability.docker-remote-api.1.25".into());
    }
    names.into_iter().map(|name| Attribute { name: Some(name), ..Attribute::default() }).collect()
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn request(td: &Value) -> RegisterTaskDefinitionRequest {
        serde_json::from_value(td.clone()).expect("a RegisterTaskDefinition request")
    }

    /// `td` with `value` at the JSON pointer `at` (the last key or array slot may be new).
    fn with(mut td: Value, at: &str, value: Value) -> Value {
        let (parent, key) = at.rsplit_once('/').expect("a JSON pointer");
        match td.pointer_mut(parent).expect("an existing parent") {
            Value::Object(map) => {
                map.insert(key.to_owned(), value);
            }
            Value::Array(items) => {
                let i: usize = key.parse().expect("an array index");
                if i == items.len() { items.push(value) } else { items[i] = value }
            }
            other => panic!("cannot set {at} inside {other}"),
        }
        td
    }

    fn without(mut td: Value, at: &str) -> Value {
        let (parent, key) = at.rsplit_once('/').expect("a JSON pointer");
        td.pointer_mut(parent).and_then(Value::as_object_mut).expect("an object").remove(key);
        td
    }

    #[track_caller]
    fn assert_rejects(td: Value, message: &str) {
        match validate(&request(&td)) {
            Ok(()) => panic!("accepted, expected: {message}"),
            Err(e) => assert_eq!(e.to_string(), message),
        }
    }

    #[track_caller]
    fn assert_accepts(td: Value) {
        if let Err(e) = validate(&request(&td)) {
            panic!("rejected: {e}");
        }
    }

    fn identity() -> Identity {
        Identity { region: "us-east-1".into(), account: "000000000000".into() }
    }

    fn built(td: &Value) -> TaskDefinition {
        let identity = identity();
        let reg = Registration { identity: &identity, revision: 1, registered_at: 1_700_000_000.5 };
        build(&request(td), &reg).expect("a valid definition")
    }

    /// One bridge-mode container on EC2, valid.
    fn ec2() -> Value {
        json!({
            "family": "app",
            "containerDefinitions": [{"name": "web", "image": "nginx:latest", "memory": 128}]
        })
    }

    /// `web` and `db` in bridge mode, valid.
    fn pair() -> Value {
        with(ec2(), "/containerDefinitions/1", json!({"name": "db", "image": "postgres:16", "memory": 256}))
    }

    /// One container on Fargate, valid.
    fn fargate() -> Value {
        json!({
            "family": "api",
            "networkMode": "awsvpc",
            "requiresCompatibilities": ["FARGATE"],
            "cpu": "256",
            "memory": "512",
            "containerDefinitions": [{"name": "api", "image": "nginx:latest"}]
        })
    }

    const WEB: &str = "/containerDefinitions/0";

    #[test]
    fn valid_name_allows_1_to_255_letters_digits_hyphens_underscores() {
        assert!(valid_name("Web_1-a"));
        assert!(valid_name(&"x".repeat(255)));
        for bad in ["", "a.b", "a b", "a:b", "é"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert!(!valid_name(&"x".repeat(256)));
    }

    #[test]
    fn family_must_be_a_valid_name() {
        assert_rejects(
            with(ec2(), "/family", json!("my app")),
            "Family contains invalid characters. family 'my app' must be 1 to 255 letters, numbers, hyphens and underscores.",
        );
        assert_accepts(with(ec2(), "/family", json!("my_app-2")));
    }

    #[test]
    fn needs_one_to_ten_containers() {
        let empty =
            "Container list cannot be empty. containerDefinitions must hold 1 to 10 container definitions.";
        assert_rejects(with(ec2(), "/containerDefinitions", json!([])), empty);
        assert_rejects(without(ec2(), "/containerDefinitions"), empty);
        let many = |n: usize| -> Value {
            (0..n).map(|i| json!({"name": format!("c{i}"), "image": "busybox", "memory": 32})).collect()
        };
        assert_rejects(
            with(ec2(), "/containerDefinitions", many(11)),
            "Too many containers. containerDefinitions holds 11 container definitions; a task definition can have at most 10.",
        );
        assert_accepts(with(ec2(), "/containerDefinitions", many(10)));
    }

    #[test]
    fn container_name_is_required() {
        assert_rejects(
            without(ec2(), "/containerDefinitions/0/name"),
            "Container.name should not be null or empty. containerDefinitions[0].name must be 1 to 255 letters, numbers, hyphens and underscores.",
        );
        assert_accepts(ec2());
    }

    #[test]
    fn container_name_must_be_a_valid_name() {
        assert_rejects(
            with(ec2(), "/containerDefinitions/0/name", json!("web app")),
            "Container.name contains invalid characters. containerDefinitions[0].name 'web app' must be 1 to 255 letters, numbers, hyphens and underscores.",
        );
        assert_accepts(with(ec2(), "/containerDefinitions/0/name", json!("web_app-1")));
    }

    #[test]
    fn container_names_are_unique() {
        assert_rejects(
            with(pair(), "/containerDefinitions/1/name", json!("web")),
            "Container names must be unique within a Task Definition. containerDefinitions[1].name 'web' is already the name of containerDefinitions[0].",
        );
        assert_accepts(pair());
    }

    #[test]
    fn image_is_required() {
        let message = "Container.image should not be null or empty. containerDefinitions[0] ('web').image must name the image to run, e.g. 'nginx:latest'.";
        assert_rejects(without(ec2(), "/containerDefinitions/0/image"), message);
        assert_rejects(with(ec2(), "/containerDefinitions/0/image", json!("")), message);
        assert_accepts(with(ec2(), "/containerDefinitions/0/image", json!("busybox")));
    }

    #[test]
    fn container_cpu_is_not_negative() {
        assert_rejects(
            with(ec2(), "/containerDefinitions/0/cpu", json!(-1)),
            "Invalid 'cpu' setting for container 'web'. containerDefinitions[0] ('web').cpu is -1; container CPU units must be 0 or more.",
        );
        assert_accepts(with(ec2(), "/containerDefinitions/0/cpu", json!(0)));
    }

    #[test]
    fn containers_need_memory_unless_the_task_has_it() {
        let no_memory = without(ec2(), "/containerDefinitions/0/memory");
        assert_rejects(
            no_memory.clone(),
            "Invalid setting for container 'web'. At least one of 'memory' or 'memoryReservation' must be specified.",
        );
        assert_accepts(with(no_memory.clone(), "/containerDefinitions/0/memoryReservation", json!(64)));
        assert_accepts(with(no_memory, "/memory", json!("512")));
        // The Fargate base definition sizes only the task.
        assert_accepts(fargate());
    }

    #[test]
    fn container_memory_has_a_minimum() {
        assert_rejects(
            with(ec2(), "/containerDefinitions/0/memory", json!(4)),
            "Invalid setting for container 'web'. containerDefinitions[0] ('web').memory is 4 MiB; it must be at least 6 MiB.",
        );
        assert_rejects(
            with(ec2(), "/containerDefinitions/0/memoryReservation", json!(0)),
            "Invalid setting for container 'web'. containerDefinitions[0] ('web').memoryReservation is 0 MiB; it must be at least 1 MiB.",
        );
        assert_accepts(with(ec2(), "/containerDefinitions/0/memory", json!(6)));
    }

    #[test]
    fn memory_reservation_is_at_most_memory() {
        assert_rejects(
            with(ec2(), "/containerDefinitions/0/memoryReservation", json!(256)),
            "Invalid setting for container 'web'. containerDefinitions[0] ('web').memoryReservation (256 MiB) must not be greater than memory (128 MiB).",
        );
        assert_accepts(with(ec2(), "/containerDefinitions/0/memoryReservation", json!(128)));
    }

    #[test]
    fn needs_an_essential_container() {
        assert_rejects(
            with(ec2(), "/containerDefinitions/0/essential", json!(false)),
            "Task definition doesn't have any essential container. Set essential to true (the default when omitted) on at least one of containerDefinitions.",
        );
        assert_accepts(with(pair(), "/containerDefinitions/1/essential", json!(false)));
    }

    #[test]
    fn links_only_in_bridge_mode() {
        let linked = with(pair(), "/containerDefinitions/0/links", json!(["db:database"]));
        for mode in ["awsvpc", "host", "none"] {
            assert_rejects(
                with(linked.clone(), "/networkMode", json!(mode)),
                &format!(
                    "Links are not supported when networkMode={mode}. containerDefinitions[0] ('web').links can only be used with networkMode=bridge, the default."
                ),
            );
        }
        assert_accepts(linked.clone());
        assert_accepts(with(linked, "/networkMode", json!("bridge")));
        let empty_links = with(pair(), "/containerDefinitions/0/links", json!([]));
        assert_accepts(with(empty_links, "/networkMode", json!("awsvpc")));
    }

    #[test]
    fn links_name_another_container() {
        for link in ["cache", "cache:c", "web"] {
            assert_rejects(
                with(pair(), "/containerDefinitions/0/links", json!([link])),
                &format!(
                    "Invalid link '{link}' for container 'web'. containerDefinitions[0] ('web').links[0] must be 'name' or 'name:alias', where name is another container of this task definition."
                ),
            );
        }
        assert_accepts(with(pair(), "/containerDefinitions/0/links", json!(["db"])));
    }

    #[test]
    fn links_have_no_cycle() {
        let one_way = with(pair(), "/containerDefinitions/0/links", json!(["db"]));
        assert_rejects(
            with(one_way.clone(), "/containerDefinitions/1/links", json!(["web:frontend"])),
            "Container links should not have a cycle. The links of containerDefinitions form the cycle web -> db -> web.",
        );
        assert_accepts(one_way);
    }

    #[test]
    fn volumes_from_names_another_container() {
        for source in ["data", "web"] {
            assert_rejects(
                with(pair(), "/containerDefinitions/0/volumesFrom", json!([{"sourceContainer": source}])),
                &format!(
                    "Invalid 'sourceContainer' setting for container 'web'. containerDefinitions[0] ('web').volumesFrom[0].sourceContainer '{source}' must name another container of this task definition."
                ),
            );
        }
        assert_accepts(with(
            pair(),
            "/containerDefinitions/0/volumesFrom",
            json!([{"sourceContainer": "db"}]),
        ));
    }

    #[test]
    fn mount_points_use_declared_volumes() {
        let td = with(ec2(), "/volumes", json!([{"name": "data"}]));
        let mount = |volume: Value| {
            with(
                td.clone(),
                "/containerDefinitions/0/mountPoints",
                json!([{"sourceVolume": volume, "containerPath": "/data"}]),
            )
        };
        assert_rejects(
            mount(json!("logs")),
            "Unknown volume 'logs'. containerDefinitions[0] ('web').mountPoints[0].sourceVolume must name a volume declared in the task definition's volumes.",
        );
        assert_rejects(
            mount(Value::Null),
            "Unknown volume 'null'. containerDefinitions[0] ('web').mountPoints[0].sourceVolume must name a volume declared in the task definition's volumes.",
        );
        assert_accepts(mount(json!("data")));
    }

    #[test]
    fn mount_points_use_absolute_container_paths() {
        let td = with(ec2(), "/volumes", json!([{"name": "data"}]));
        let mount = |path: &str| {
            with(
                td.clone(),
                "/containerDefinitions/0/mountPoints",
                json!([{"sourceVolume": "data", "containerPath": path}]),
            )
        };
        assert_rejects(
            mount("data"),
            "Invalid 'containerPath' setting for container 'web'. containerDefinitions[0] ('web').mountPoints[0].containerPath 'data' must be an absolute path, e.g. '/data'.",
        );
        assert_accepts(mount("/var/lib/data"));
        assert_accepts(mount("C:\\data"));
    }

    #[test]
    fn volume_names_are_valid_and_unique() {
        assert_rejects(
            with(ec2(), "/volumes", json!([{"name": "my data"}])),
            "Invalid volume name 'my data'. volumes[0].name must be 1 to 255 letters, numbers, hyphens and underscores.",
        );
        assert_rejects(
            with(ec2(), "/volumes", json!([{"name": "data"}, {"name": "data"}])),
            "Duplicate volume name 'data'. volumes[1].name repeats volumes[0].name; volume names must be unique within a task definition.",
        );
        assert_accepts(with(ec2(), "/volumes", json!([{"name": "data"}, {"name": "logs"}])));
    }

    #[test]
    fn host_source_paths_are_absolute() {
        let volume = |host: Value| with(ec2(), "/volumes", json!([{"name": "data", "host": host}]));
        assert_rejects(
            volume(json!({"sourcePath": "srv/data"})),
            "Invalid 'sourcePath' setting for volume 'data'. volumes[0].host.sourcePath 'srv/data' must be an absolute path on the host, e.g. '/var/data'.",
        );
        assert_accepts(volume(json!({"sourcePath": "/srv/data"})));
        assert_accepts(volume(json!({})));
    }

    fn ports(td: Value, mappings: Value) -> Value {
        with(td, "/containerDefinitions/0/portMappings", mappings)
    }

    #[test]
    fn container_port_is_1_to_65535() {
        for (mapping, value) in [(json!({"containerPort": 0}), "0"), (json!({"hostPort": 80}), "missing")] {
            assert_rejects(
                ports(ec2(), json!([mapping])),
                &format!(
                    "Invalid 'containerPort' setting for container 'web'. containerDefinitions[0] ('web').portMappings[0].containerPort is {value}; it must be 1 to 65535."
                ),
            );
        }
        assert_accepts(ports(ec2(), json!([{"containerPort": 65535}])));
    }

    #[test]
    fn host_port_is_0_to_65535() {
        assert_rejects(
            ports(ec2(), json!([{"containerPort": 80, "hostPort": 70000}])),
            "Invalid 'hostPort' setting for container 'web'. containerDefinitions[0] ('web').portMappings[0].hostPort is 70000; it must be 0 to 65535.",
        );
        assert_accepts(ports(ec2(), json!([{"containerPort": 80, "hostPort": 0}])));
        assert_accepts(ports(ec2(), json!([{"containerPort": 80, "hostPort": 8080}])));
    }

    #[test]
    fn host_port_matches_container_port_in_awsvpc_and_host_modes() {
        for mode in ["awsvpc", "host"] {
            let td = with(ec2(), "/networkMode", json!(mode));
            assert_rejects(
                ports(td.clone(), json!([{"containerPort": 80, "hostPort": 8080}])),
                &format!(
                    "When networkMode={mode}, the host ports and container ports in port mappings must match. containerDefinitions[0] ('web').portMappings[0] maps hostPort 8080 to containerPort 80; omit hostPort or set it to 80."
                ),
            );
            assert_accepts(ports(td.clone(), json!([{"containerPort": 80, "hostPort": 80}])));
            assert_accepts(ports(td, json!([{"containerPort": 80}])));
        }
    }

    #[test]
    fn container_ports_are_unique_per_protocol() {
        assert_rejects(
            ports(ec2(), json!([{"containerPort": 80}, {"containerPort": 80, "hostPort": 8080}])),
            "Container port 80/tcp is used in more than one port mapping for container 'web'. containerDefinitions[0] ('web').portMappings[1] repeats portMappings[0].",
        );
        assert_accepts(ports(
            ec2(),
            json!([{"containerPort": 53, "protocol": "tcp"}, {"containerPort": 53, "protocol": "udp"}]),
        ));
    }

    #[test]
    fn host_ports_are_unique_in_the_task() {
        let td = ports(pair(), json!([{"containerPort": 80, "hostPort": 8080}]));
        let td_db =
            |mapping: Value| with(td.clone(), "/containerDefinitions/1/portMappings", json!([mapping]));
        assert_rejects(
            td_db(json!({"containerPort": 5432, "hostPort": 8080})),
            "TCP host port '8080' is mapped multiple times in task. containerDefinitions[1] ('db').portMappings[0] maps it again after containerDefinitions[0] ('web').portMappings[0].",
        );
        assert_accepts(td_db(json!({"containerPort": 5432, "hostPort": 8080, "protocol": "udp"})));
        assert_accepts(td_db(json!({"containerPort": 80})));
        // In awsvpc every container shares the task's address, so equal container ports collide.
        let awsvpc = with(ports(pair(), json!([{"containerPort": 80}])), "/networkMode", json!("awsvpc"));
        assert_rejects(
            with(awsvpc, "/containerDefinitions/1/portMappings", json!([{"containerPort": 80}])),
            "TCP host port '80' is mapped multiple times in task. containerDefinitions[1] ('db').portMappings[0] maps it again after containerDefinitions[0] ('web').portMappings[0].",
        );
    }

    #[test]
    fn no_port_mappings_without_a_network() {
        let none = with(ec2(), "/networkMode", json!("none"));
        assert_rejects(
            ports(none.clone(), json!([{"containerPort": 80}])),
            "Port mappings are not supported when networkMode=none. containerDefinitions[0] ('web').portMappings must be empty; use another networkMode to publish ports.",
        );
        assert_accepts(ports(none, json!([])));
    }

    #[test]
    fn container_port_ranges_are_start_to_end() {
        for range in ["9000", "9100-9000", "0-10", "9000-70000", "a-b"] {
            assert_rejects(
                ports(ec2(), json!([{"containerPortRange": range}])),
                &format!(
                    "Invalid 'containerPortRange' setting for container 'web'. containerDefinitions[0] ('web').portMappings[0].containerPortRange '{range}' must be 'start-end' with 1 <= start < end <= 65535."
                ),
            );
        }
        assert_accepts(ports(ec2(), json!([{"containerPortRange": "9000-9100"}])));
        assert_accepts(ports(
            with(ec2(), "/networkMode", json!("awsvpc")),
            json!([{"containerPortRange": "9000-9100"}]),
        ));
    }

    #[test]
    fn container_port_ranges_only_in_awsvpc_and_bridge() {
        assert_rejects(
            ports(with(ec2(), "/networkMode", json!("host")), json!([{"containerPortRange": "9000-9100"}])),
            "Container port ranges are not supported when networkMode=host. containerDefinitions[0] ('web').portMappings[0].containerPortRange can only be used with networkMode=awsvpc or networkMode=bridge.",
        );
        assert_accepts(ports(
            with(ec2(), "/networkMode", json!("bridge")),
            json!([{"containerPortRange": "9000-9100"}]),
        ));
    }

    #[test]
    fn container_port_ranges_stand_alone() {
        for (other, mapping) in [
            ("containerPort", json!({"containerPortRange": "9000-9100", "containerPort": 9000})),
            ("hostPort", json!({"containerPortRange": "9000-9100", "hostPort": 9000})),
        ] {
            assert_rejects(
                ports(ec2(), json!([mapping])),
                &format!(
                    "Invalid port mapping for container 'web'. containerDefinitions[0] ('web').portMappings[0] sets containerPortRange together with {other}; use either containerPortRange alone or containerPort with an optional hostPort."
                ),
            );
        }
        assert_rejects(
            ports(ec2(), json!([{"containerPortRange": "9000-9100"}, {"containerPort": 9050}])),
            "Container port 9050/tcp is used in more than one port mapping for container 'web'. containerDefinitions[0] ('web').portMappings[1] repeats portMappings[0].",
        );
        assert_accepts(ports(ec2(), json!([{"containerPortRange": "9000-9100"}, {"containerPort": 9101}])));
    }

    #[test]
    fn at_most_100_port_ranges() {
        let ranges = |n: i32| -> Value {
            (0..n)
                .map(|i| json!({"containerPortRange": format!("{}-{}", 1000 + 2 * i, 1001 + 2 * i)}))
                .collect()
        };
        assert_rejects(
            ports(ec2(), ranges(101)),
            "Too many port ranges for container 'web'. containerDefinitions[0] ('web').portMappings has 101 containerPortRange entries; a container can have at most 100.",
        );
        assert_accepts(ports(ec2(), ranges(100)));
    }

    #[test]
    fn environment_names_are_not_empty() {
        let message = "Invalid 'environment' setting for container 'web'. containerDefinitions[0] ('web').environment[1].name must not be empty.";
        for bad in [json!({"name": "", "value": "x"}), json!({"value": "x"})] {
            assert_rejects(
                with(ec2(), "/containerDefinitions/0/environment", json!([{"name": "A", "value": "1"}, bad])),
                message,
            );
        }
        assert_accepts(with(
            ec2(),
            "/containerDefinitions/0/environment",
            json!([{"name": "A", "value": ""}]),
        ));
    }

    #[test]
    fn secret_names_are_unique_in_a_container() {
        let secrets = |second: &str| {
            with(
                ec2(),
                "/containerDefinitions/0/secrets",
                json!([{"name": "DB", "valueFrom": "/app/db"}, {"name": second, "valueFrom": "/app/other"}]),
            )
        };
        assert_rejects(
            secrets("DB"),
            "Invalid 'secrets' setting for container 'web'. containerDefinitions[0] ('web').secrets[1].name 'DB' repeats secrets[0].name; secret names must be unique within a container.",
        );
        assert_accepts(secrets("API_KEY"));
    }

    fn depends(td: Value, target: &str, condition: &str) -> Value {
        with(
            td,
            "/containerDefinitions/0/dependsOn",
            json!([{"containerName": target, "condition": condition}]),
        )
    }

    #[test]
    fn dependencies_name_an_existing_container() {
        assert_rejects(
            depends(pair(), "cache", "START"),
            "Cannot depend on container + 'cache' because it does not exist. containerDefinitions[0] ('web').dependsOn[0].containerName must name another container of this task definition.",
        );
        assert_accepts(depends(pair(), "db", "START"));
    }

    #[test]
    fn containers_do_not_depend_on_themselves() {
        assert_rejects(
            depends(pair(), "web", "START"),
            "Container 'web' cannot depend on itself. containerDefinitions[0] ('web').dependsOn[0].containerName must name another container of this task definition.",
        );
    }

    #[test]
    fn complete_and_success_wait_only_for_non_essential_containers() {
        for condition in ["COMPLETE", "SUCCESS"] {
            assert_rejects(
                depends(pair(), "db", condition),
                &format!(
                    "A dependency container with SUCCESS or COMPLETE condition cannot be an essential container. containerDefinitions[0] ('web').dependsOn[0] waits for 'db' with condition {condition}, but 'db' is essential; set essential to false on 'db' or use condition START or HEALTHY."
                ),
            );
            let init = with(pair(), "/containerDefinitions/1/essential", json!(false));
            assert_accepts(depends(init, "db", condition));
        }
    }

    #[test]
    fn healthy_waits_only_for_containers_with_a_health_check() {
        assert_rejects(
            depends(pair(), "db", "HEALTHY"),
            "A dependency container with HEALTHY condition must have a health check. containerDefinitions[0] ('web').dependsOn[0] waits for 'db' to be HEALTHY, but 'db' has no healthCheck.",
        );
        let checked_db =
            with(pair(), "/containerDefinitions/1/healthCheck", json!({"command": ["CMD", "pg_isready"]}));
        assert_accepts(depends(checked_db, "db", "HEALTHY"));
    }

    #[test]
    fn dependencies_have_no_cycle() {
        let start = |target: &str| json!([{"containerName": target, "condition": "START"}]);
        let chain = json!({
            "family": "app",
            "containerDefinitions": [
                {"name": "a", "image": "busybox", "memory": 32, "dependsOn": start("b")},
                {"name": "b", "image": "busybox", "memory": 32, "dependsOn": start("c")},
                {"name": "c", "image": "busybox", "memory": 32}
            ]
        });
        assert_accepts(chain.clone());
        assert_rejects(
            with(chain, "/containerDefinitions/2/dependsOn", start("a")),
            "Container dependencies should not have a cycle. The dependsOn of containerDefinitions form the cycle a -> b -> c -> a.",
        );
    }

    #[test]
    fn timeouts_are_not_negative() {
        for field in ["startTimeout", "stopTimeout"] {
            assert_rejects(
                with(ec2(), &format!("{WEB}/{field}"), json!(-1)),
                &format!(
                    "Invalid '{field}' setting for container 'web'. containerDefinitions[0] ('web').{field} is -1; it must be 0 seconds or more."
                ),
            );
            assert_accepts(with(ec2(), &format!("{WEB}/{field}"), json!(300)));
        }
    }

    #[test]
    fn no_hostname_in_awsvpc_mode() {
        let named = with(ec2(), "/containerDefinitions/0/hostname", json!("web.local"));
        assert_rejects(
            with(named.clone(), "/networkMode", json!("awsvpc")),
            "hostname is not supported on container when networkMode=awsvpc. containerDefinitions[0] ('web').hostname must be omitted; the task's network interface sets the hostname.",
        );
        assert_accepts(named);
    }

    fn ulimits(limits: Value) -> Value {
        with(ec2(), "/containerDefinitions/0/ulimits", limits)
    }

    #[test]
    fn ulimit_soft_limit_is_at_most_hard_limit() {
        assert_rejects(
            ulimits(json!([{"name": "nofile", "softLimit": 2048, "hardLimit": 1024}])),
            "Invalid 'ulimits' setting for container 'web'. containerDefinitions[0] ('web').ulimits[0] ('nofile') has softLimit 2048 greater than hardLimit 1024; softLimit must not exceed hardLimit.",
        );
        assert_accepts(ulimits(json!([{"name": "nofile", "softLimit": 1024, "hardLimit": 4096}])));
        assert_accepts(ulimits(json!([{"name": "memlock", "softLimit": -1, "hardLimit": -1}])));
    }

    #[test]
    fn ulimits_are_minus_one_or_more() {
        assert_rejects(
            ulimits(json!([{"name": "nofile", "softLimit": -2, "hardLimit": 1024}])),
            "Invalid 'ulimits' setting for container 'web'. containerDefinitions[0] ('web').ulimits[0] ('nofile') has softLimit -2; limits must be -1 (unlimited) or more.",
        );
    }

    #[test]
    fn ulimit_names_are_unique() {
        assert_rejects(
            ulimits(json!([
                {"name": "nofile", "softLimit": 1024, "hardLimit": 1024},
                {"name": "nofile", "softLimit": 2048, "hardLimit": 2048}
            ])),
            "Invalid 'ulimits' setting for container 'web'. containerDefinitions[0] ('web').ulimits[1] repeats the ulimit 'nofile' of ulimits[0]; each ulimit name may appear once.",
        );
        assert_accepts(ulimits(json!([
            {"name": "nofile", "softLimit": 1024, "hardLimit": 1024},
            {"name": "nproc", "softLimit": 512, "hardLimit": 512}
        ])));
    }

    #[test]
    fn awslogs_needs_region_and_group() {
        let logs = |options: Value| {
            with(
                ec2(),
                "/containerDefinitions/0/logConfiguration",
                json!({"logDriver": "awslogs", "options": options}),
            )
        };
        assert_rejects(
            logs(json!({"awslogs-group": "/ecs/web"})),
            "Log driver awslogs requires options: awslogs-region. containerDefinitions[0] ('web').logConfiguration.options must set awslogs-region.",
        );
        assert_rejects(
            logs(json!({})),
            "Log driver awslogs requires options: awslogs-region, awslogs-group. containerDefinitions[0] ('web').logConfiguration.options must set awslogs-region, awslogs-group.",
        );
        assert_accepts(logs(json!({"awslogs-group": "/ecs/web", "awslogs-region": "us-east-1"})));
    }

    fn health(check: Value) -> Value {
        with(ec2(), "/containerDefinitions/0/healthCheck", check)
    }

    #[test]
    fn health_check_command_starts_with_cmd_cmd_shell_or_none() {
        let message = "Invalid 'healthCheck' setting for container 'web'. containerDefinitions[0] ('web').healthCheck.command must start with 'CMD' or 'CMD-SHELL' followed by the command, e.g. ['CMD-SHELL', 'curl -f http://localhost/ || exit 1'], or be ['NONE'].";
        assert_rejects(health(json!({"command": ["curl", "-f", "http://localhost/"]})), message);
        assert_rejects(health(json!({"command": []})), message);
        for command in [json!(["CMD", "true"]), json!(["CMD-SHELL", "exit 0"]), json!(["NONE"])] {
            assert_accepts(health(json!({"command": command})));
        }
    }

    #[test]
    fn health_check_timings_are_in_range() {
        assert_rejects(
            health(json!({"command": ["CMD", "true"], "retries": 11})),
            "Health check retries must be less than or equal to the maximum allowed value 10 for container 'web'. containerDefinitions[0] ('web').healthCheck.retries is 11; allowed values are 1 to 10.",
        );
        assert_rejects(
            health(json!({"command": ["CMD", "true"], "interval": 4})),
            "Health check interval must be greater than or equal to the minimum allowed value 5 for container 'web'. containerDefinitions[0] ('web').healthCheck.interval is 4; allowed values are 5 to 300.",
        );
        for (field, min, max) in
            [("interval", 5, 300), ("timeout", 2, 120), ("retries", 1, 10), ("startPeriod", 0, 300)]
        {
            let check = |value: i32| health(json!({"command": ["CMD", "true"], field: value}));
            assert_accepts(check(min));
            assert_accepts(check(max));
            let low = validate(&request(&check(min - 1))).unwrap_err();
            assert!(matches!(low, E::HealthCheckTooLow { .. }), "{field}: {low}");
            let high = validate(&request(&check(max + 1))).unwrap_err();
            assert!(matches!(high, E::HealthCheckTooHigh { .. }), "{field}: {high}");
        }
    }

    #[test]
    fn system_control_namespaces_are_not_empty() {
        let controls = |namespace: &str| {
            with(
                ec2(),
                "/containerDefinitions/0/systemControls",
                json!([{"namespace": namespace, "value": "1024"}]),
            )
        };
        assert_rejects(
            controls(""),
            "Invalid 'systemControls' setting for container 'web'. containerDefinitions[0] ('web').systemControls[0].namespace must not be empty; name a kernel parameter such as 'net.core.somaxconn'.",
        );
        assert_accepts(controls("net.core.somaxconn"));
    }

    #[test]
    fn proxy_configuration_names_a_container() {
        let proxy = |name: &str| {
            with(ec2(), "/proxyConfiguration", json!({"type": "APPMESH", "containerName": name}))
        };
        assert_rejects(
            proxy("envoy"),
            "Unknown container 'envoy' in proxyConfiguration. proxyConfiguration.containerName must name a container of this task definition.",
        );
        assert_accepts(proxy("web"));
    }

    #[test]
    fn task_cpu_accepts_units_and_vcpus() {
        let cases = [
            ("256", Some(256)),
            ("1 vCPU", Some(1024)),
            ("0.25 vcpu", Some(256)),
            ("2vCPU", Some(2048)),
            (" 512 ", Some(512)),
        ];
        for (text, units) in cases {
            assert_eq!(parse_task_cpu(text), units, "{text:?}");
        }
        for bad in ["", "lots", "1.5", "0.1 vcpu", "64", "-256", "1 cpu", "196609"] {
            assert_eq!(parse_task_cpu(bad), None, "{bad:?}");
        }
        assert_rejects(
            with(ec2(), "/cpu", json!("lots")),
            "Invalid 'cpu' setting for task. cpu 'lots' must be CPU units from 128 to 196608 (e.g. '1024') or vCPUs (e.g. '1 vCPU' or '0.25 vcpu').",
        );
        assert_accepts(with(ec2(), "/cpu", json!("0.5 vCPU")));
    }

    #[test]
    fn task_memory_accepts_mib_and_gb() {
        let cases = [
            ("512", Some(512)),
            ("1GB", Some(1024)),
            ("1 GB", Some(1024)),
            ("2 gb", Some(2048)),
            ("0.5GB", Some(512)),
        ];
        for (text, mib) in cases {
            assert_eq!(parse_task_memory(text), mib, "{text:?}");
        }
        for bad in ["", "0", "-1", "1 TB", "1.5", "lots", "0.0001GB"] {
            assert_eq!(parse_task_memory(bad), None, "{bad:?}");
        }
        assert_rejects(
            with(ec2(), "/memory", json!("1 TB")),
            "Invalid 'memory' setting for task. memory '1 TB' must be a positive whole number of MiB (e.g. '1024') or of GB (e.g. '1GB' or '1 GB').",
        );
        assert_accepts(with(ec2(), "/memory", json!("1 GB")));
    }

    #[test]
    fn build_normalises_task_cpu_and_memory() {
        let td = with(with(ec2(), "/cpu", json!("1 vCPU")), "/memory", json!("2 GB"));
        let built = built(&td);
        assert_eq!((built.cpu.as_deref(), built.memory.as_deref()), (Some("1024"), Some("2048")));
    }

    #[test]
    fn container_cpu_fits_in_the_task_cpu() {
        let td = with(with(pair(), "/cpu", json!("1024")), "/containerDefinitions/0/cpu", json!(512));
        assert_rejects(
            with(td.clone(), "/containerDefinitions/1/cpu", json!(1024)),
            "The sum of all container 'cpu' values cannot be greater than the value of the task 'cpu'. containerDefinitions reserve 1536 CPU units in total, but the task cpu is 1024.",
        );
        assert_accepts(with(td, "/containerDefinitions/1/cpu", json!(512)));
    }

    #[test]
    fn container_memory_fits_in_the_task_memory() {
        let td = with(ec2(), "/memory", json!("512"));
        assert_rejects(
            with(td.clone(), "/containerDefinitions/0/memory", json!(1024)),
            "The 'memory' setting for container 'web' is greater than for the task. containerDefinitions[0] ('web').memory is 1024 MiB, but the task memory is 512 MiB.",
        );
        assert_accepts(with(td, "/containerDefinitions/0/memory", json!(512)));
    }

    #[test]
    fn fargate_needs_awsvpc() {
        assert_rejects(
            without(fargate(), "/networkMode"),
            "Fargate only supports network mode \u{2018}awsvpc\u{2019}. networkMode is not set (bridge); set networkMode to 'awsvpc' when requiresCompatibilities includes FARGATE.",
        );
        assert_rejects(
            with(fargate(), "/networkMode", json!("host")),
            "Fargate only supports network mode \u{2018}awsvpc\u{2019}. networkMode is 'host'; set networkMode to 'awsvpc' when requiresCompatibilities includes FARGATE.",
        );
        assert_accepts(fargate());
    }

    #[test]
    fn ephemeral_storage_is_21_to_200_gib() {
        let sized = |gib: i32| with(fargate(), "/ephemeralStorage", json!({"sizeInGiB": gib}));
        for bad in [0, 20, 201] {
            assert_rejects(
                sized(bad),
                &format!(
                    "The ephemeral storage size must be between 21 and 200 GiB. ephemeralStorage.sizeInGiB is {bad}; leave ephemeralStorage out for the default of 20 GiB."
                ),
            );
        }
        assert_accepts(sized(21));
        assert_accepts(sized(200));
        assert_eq!(built(&sized(50)).ephemeral_storage.map(|e| e.size_in_gi_b), Some(50));
    }

    #[test]
    fn fargate_needs_task_cpu_and_memory() {
        assert_rejects(
            without(fargate(), "/cpu"),
            "Fargate requires that 'cpu' be defined at the task level. Set cpu, e.g. '256' or '0.25 vCPU'.",
        );
        let sized_container = with(fargate(), "/containerDefinitions/0/memory", json!(256));
        assert_rejects(
            without(sized_container, "/memory"),
            "Fargate requires that 'memory' be defined at the task level. Set memory, e.g. '512' or '1 GB'.",
        );
    }

    #[test]
    fn fargate_sizes_are_the_documented_combinations() {
        let sized =
            |cpu: &str, memory: &str| with(with(fargate(), "/cpu", json!(cpu)), "/memory", json!(memory));
        assert_rejects(
            sized("256", "4096"),
            "No Fargate configuration exists for given values: 256 CPU, 4096 memory. See the Amazon ECS documentation for the valid values. With cpu 256, memory must be 512, 1024 or 2048.",
        );
        assert_rejects(
            sized("1 vCPU", "1 GB"),
            "No Fargate configuration exists for given values: 1024 CPU, 1024 memory. See the Amazon ECS documentation for the valid values. With cpu 1024, memory must be 2048 to 8192 in steps of 1024.",
        );
        assert_rejects(
            sized("3072", "8192"),
            "No Fargate configuration exists for given values: 3072 CPU, 8192 memory. See the Amazon ECS documentation for the valid values. cpu must be one of 256, 512, 1024, 2048, 4096, 8192 or 16384.",
        );
        let valid: [(u32, &[u32]); 7] = [
            (256, &[512, 1024, 2048]),
            (512, &[1024, 2048, 3072, 4096]),
            (1024, &[2048, 3072, 4096, 5120, 6144, 7168, 8192]),
            (2048, &[4096, 9216, 16384]),
            (4096, &[8192, 20480, 30720]),
            (8192, &[16384, 20480, 61440]),
            (16384, &[32768, 40960, 122880]),
        ];
        for (cpu, memories) in valid {
            for memory in memories {
                assert!(fargate_size_exists(cpu, *memory), "{cpu}/{memory}");
            }
        }
        for (cpu, memory) in
            [(256, 1536), (512, 512), (2048, 17408), (8192, 18432), (16384, 36864), (4096, 31744)]
        {
            assert!(!fargate_size_exists(cpu, memory), "{cpu}/{memory}");
        }
        assert_accepts(sized("0.5 vCPU", "1GB"));
    }

    #[test]
    fn fargate_rejects_privileged_containers() {
        assert_rejects(
            with(fargate(), "/containerDefinitions/0/privileged", json!(true)),
            "Fargate compatible task definitions do not support privileged. containerDefinitions[0] ('api').privileged must be false or omitted when requiresCompatibilities includes FARGATE.",
        );
        assert_accepts(with(fargate(), "/containerDefinitions/0/privileged", json!(false)));
    }

    #[test]
    fn fargate_rejects_host_source_paths() {
        let volume = |host: Value| with(fargate(), "/volumes", json!([{"name": "data", "host": host}]));
        assert_rejects(
            volume(json!({"sourcePath": "/srv/data"})),
            "Fargate compatible task definitions do not support sourcePath. volumes[0] ('data').host.sourcePath must be omitted when requiresCompatibilities includes FARGATE.",
        );
        assert_accepts(volume(json!({})));
    }

    #[test]
    fn fargate_log_drivers_are_awslogs_splunk_and_firelens() {
        let logs = |log: Value| with(fargate(), "/containerDefinitions/0/logConfiguration", log);
        assert_rejects(
            logs(json!({"logDriver": "json-file"})),
            "json-file is not a valid log driver. Must be one of [awslogs,splunk,awsfirelens]. containerDefinitions[0] ('api').logConfiguration.logDriver must be one of these when requiresCompatibilities includes FARGATE.",
        );
        // ECS would take splunk on Fargate; ecsd runs only awslogs and json-file.
        assert_rejects(
            logs(json!({"logDriver": "splunk"})),
            "splunk is not a valid log driver. Must be one of [awslogs,json-file]. containerDefinitions[0] ('api').logConfiguration.logDriver: ecsd ships container output to CloudWatch Logs (awslogs) or keeps it on the host (json-file).",
        );
    }

    #[test]
    fn log_drivers_are_awslogs_and_json_file_with_awslogs_options_checked() {
        let logs = |log: Value| with(ec2(), "/containerDefinitions/0/logConfiguration", log);
        assert_accepts(logs(json!({"logDriver": "json-file", "options": {"max-size": "10m"}})));
        assert_accepts(logs(json!({"logDriver": "awslogs", "options": {
            "awslogs-group": "/ecs/web", "awslogs-region": "us-east-1", "awslogs-stream-prefix": "web",
            "awslogs-create-group": "true", "mode": "non-blocking", "max-buffer-size": "4m",
            "awslogs-datetime-format": "%Y-%m-%d"
        }})));
        for driver in ["syslog", "journald", "gelf", "fluentd", "awsfirelens"] {
            assert_rejects(
                logs(json!({"logDriver": driver})),
                &format!(
                    "{driver} is not a valid log driver. Must be one of [awslogs,json-file]. containerDefinitions[0] ('web').logConfiguration.logDriver: ecsd ships container output to CloudWatch Logs (awslogs) or keeps it on the host (json-file)."
                ),
            );
        }
        assert_rejects(
            logs(
                json!({"logDriver": "awslogs", "options": {"awslogs-group": "g", "awslogs-region": "us-east-1", "log_key": "log"}}),
            ),
            "Log driver awslogs disallows options: log_key. containerDefinitions[0] ('web').logConfiguration.options may set only awslogs-group, awslogs-region, awslogs-stream-prefix, awslogs-create-group, awslogs-datetime-format or awslogs-multiline-pattern, mode and max-buffer-size.",
        );
    }

    #[test]
    fn fargate_awslogs_needs_an_execution_role() {
        let awslogs = with(
            fargate(),
            "/containerDefinitions/0/logConfiguration",
            json!({"logDriver": "awslogs", "options": {"awslogs-group": "/ecs/api", "awslogs-region": "us-east-1"}}),
        );
        assert_rejects(
            awslogs.clone(),
            "Fargate requires task definition to have execution role ARN to support log driver awslogs. containerDefinitions[0] ('api').logConfiguration uses awslogs; set executionRoleArn.",
        );
        assert_accepts(with(awslogs, "/executionRoleArn", json!("arn:aws:iam::000000000000:role/exec")));
    }

    #[test]
    fn fargate_rejects_ipc_mode_and_host_pid_mode() {
        assert_rejects(
            with(fargate(), "/ipcMode", json!("task")),
            "Tasks using the Fargate launch type do not support ipcMode. Omit ipcMode when requiresCompatibilities includes FARGATE.",
        );
        assert_rejects(
            with(fargate(), "/pidMode", json!("host")),
            "Tasks using the Fargate launch type do not support pidMode 'host'. Use pidMode 'task' or omit pidMode when requiresCompatibilities includes FARGATE.",
        );
        assert_accepts(with(fargate(), "/pidMode", json!("task")));
    }

    #[test]
    fn fargate_stop_timeout_is_at_most_120() {
        assert_rejects(
            with(fargate(), "/containerDefinitions/0/stopTimeout", json!(121)),
            "Invalid 'stopTimeout' setting for container 'api'. containerDefinitions[0] ('api').stopTimeout is 121; tasks using the Fargate launch type allow at most 120 seconds.",
        );
        assert_accepts(with(fargate(), "/containerDefinitions/0/stopTimeout", json!(120)));
    }

    #[test]
    fn external_does_not_support_awsvpc() {
        let external = with(ec2(), "/requiresCompatibilities", json!(["EXTERNAL"]));
        assert_rejects(
            with(external.clone(), "/networkMode", json!("awsvpc")),
            "Tasks using the EXTERNAL launch type do not support networkMode=awsvpc. Use networkMode bridge, host or none when requiresCompatibilities includes EXTERNAL.",
        );
        assert_accepts(external);
    }

    #[test]
    fn reports_the_first_error_in_field_order() {
        let td = with(
            with(pair(), "/containerDefinitions/1/image", json!("")),
            "/containerDefinitions/0/cpu",
            json!(-1),
        );
        assert!(matches!(validate(&request(&td)), Err(E::NegativeContainerCpu { .. })));
        let td = with(td, "/family", json!("bad family"));
        assert!(matches!(validate(&request(&td)), Err(E::InvalidFamily { .. })));
        // As in ECS, container problems come before Fargate's task-level ones.
        let td = without(without(fargate(), "/networkMode"), "/memory");
        assert!(matches!(validate(&request(&td)), Err(E::MemoryRequired { .. })));
    }

    fn compatibilities_of(td: Value) -> Vec<String> {
        built(&td).compatibilities.expect("compatibilities")
    }

    #[test]
    fn compatibilities_follow_network_mode_and_fargate_rules() {
        assert_eq!(compatibilities_of(ec2()), ["EXTERNAL", "EC2"]);
        assert_eq!(compatibilities_of(with(ec2(), "/networkMode", json!("host"))), ["EXTERNAL", "EC2"]);
        let awsvpc = with(ec2(), "/networkMode", json!("awsvpc"));
        assert_eq!(compatibilities_of(awsvpc.clone()), ["EC2"]);
        let sized = with(with(awsvpc, "/cpu", json!("256")), "/memory", json!("512"));
        assert_eq!(compatibilities_of(sized.clone()), ["EC2", "FARGATE"]);
        let privileged = with(sized.clone(), "/containerDefinitions/0/privileged", json!(true));
        assert_eq!(compatibilities_of(privileged), ["EC2"]);
        let managed = with(sized, "/requiresCompatibilities", json!(["MANAGED_INSTANCES"]));
        assert_eq!(compatibilities_of(managed), ["EC2", "FARGATE", "MANAGED_INSTANCES"]);
        assert_eq!(compatibilities_of(fargate()), ["EC2", "FARGATE"]);
    }

    #[test]
    fn requires_attributes_follow_the_features_used() {
        let td = json!({
            "family": "app",
            "networkMode": "bridge",
            "containerDefinitions": [
                {
                    "name": "app",
                    "image": "public.ecr.aws/nginx/nginx:1.27",
                    "memory": 128,
                    "repositoryCredentials": {"credentialsParameter": "arn:aws:secretsmanager:us-east-1:000000000000:secret:hub"},
                    "secrets": [
                        {"name": "A", "valueFrom": "/app/a"},
                        {"name": "B", "valueFrom": "arn:aws:ssm:us-east-1:000000000000:parameter/app/b"}
                    ],
                    "logConfiguration": {
                        "logDriver": "awslogs",
                        "options": {"awslogs-group": "/ecs/app", "awslogs-region": "us-east-1"},
                        "secretOptions": [{"name": "apikey", "valueFrom": "arn:aws:secretsmanager:us-east-1:000000000000:secret:key"}]
                    }
                },
                {
                    "name": "router",
                    "image": "public.ecr.aws/aws-observability/aws-for-fluent-bit:stable",
                    "memory": 64,
                    "firelensConfiguration": {"type": "fluentbit"}
                }
            ],
            "volumes": [{"name": "shared", "efsVolumeConfiguration": {"fileSystemId": "fs-12345678"}}]
        });
        let names: Vec<String> = built(&td)
            .requires_attributes
            .expect("attributes")
            .into_iter()
            .map(|a| a.name.expect("a name"))
            .collect();
        assert_eq!(
            names,
            [
                "com.amazonaws.ecs.capability.logging-driver.awslogs",
                "com.amazonaws.ecs.capability.docker-remote-api.1.19",
                "ecs.capability.private-registry-authentication.secretsmanager",
                "ecs.capability.secrets.ssm.environment-variables",
                "ecs.capability.secrets.asm.bootstrap.log-driver",
                "ecs.capability.firelens.fluentbit",
                "ecs.capability.efsAuth",
                "ecs.capability.efs",
                "com.amazonaws.ecs.capability.docker-remote-api.1.25",
            ]
        );
        assert_eq!(built(&ec2()).requires_attributes, Some(vec![]));
    }

    #[test]
    fn build_echoes_a_bridge_definition_as_ecs_does() {
        let td = json!({
            "family": "shop",
            "taskRoleArn": "arn:aws:iam::000000000000:role/shop-task",
            "containerDefinitions": [
                {
                    "name": "web",
                    "image": "nginx:1.27",
                    "cpu": 256,
                    "memory": 256,
                    "links": ["api:backend"],
                    "portMappings": [{"containerPort": 80}],
                    "dependsOn": [{"containerName": "api", "condition": "HEALTHY"}],
                    "logConfiguration": {"logDriver": "json-file", "options": {"max-size": "10m"}}
                },
                {
                    "name": "api",
                    "image": "000000000000.dkr.ecr.us-east-1.amazonaws.com/shop-api:1.4",
                    "memoryReservation": 128,
                    "portMappings": [{"containerPort": 8080, "hostPort": 8080, "protocol": "tcp"}],
                    "environment": [{"name": "PORT", "value": "8080"}],
                    "mountPoints": [{"sourceVolume": "data", "containerPath": "/var/lib/shop"}],
                    "healthCheck": {
                        "command": ["CMD-SHELL", "curl -f http://localhost:8080/health || exit 1"],
                        "startPeriod": 10
                    }
                }
            ],
            "volumes": [{"name": "data", "host": {"sourcePath": "/srv/shop"}}]
        });
        let identity = identity();
        let reg = Registration { identity: &identity, revision: 3, registered_at: 1_700_000_000.5 };
        let got = serde_json::to_value(build(&request(&td), &reg).unwrap()).unwrap();
        let want = json!({
            "taskDefinitionArn": "arn:aws:ecs:us-east-1:000000000000:task-definition/shop:3",
            "containerDefinitions": [
                {
                    "name": "web",
                    "image": "nginx:1.27",
                    "cpu": 256,
                    "memory": 256,
                    "links": ["api:backend"],
                    "portMappings": [{"containerPort": 80, "hostPort": 0, "protocol": "tcp"}],
                    "essential": true,
                    "environment": [],
                    "mountPoints": [],
                    "volumesFrom": [],
                    "dependsOn": [{"containerName": "api", "condition": "HEALTHY"}],
                    "logConfiguration": {"logDriver": "json-file", "options": {"max-size": "10m"}},
                    "systemControls": []
                },
                {
                    "name": "api",
                    "image": "000000000000.dkr.ecr.us-east-1.amazonaws.com/shop-api:1.4",
                    "cpu": 0,
                    "memoryReservation": 128,
                    "portMappings": [{"containerPort": 8080, "hostPort": 8080, "protocol": "tcp"}],
                    "essential": true,
                    "environment": [{"name": "PORT", "value": "8080"}],
                    "mountPoints": [{"sourceVolume": "data", "containerPath": "/var/lib/shop"}],
                    "volumesFrom": [],
                    "healthCheck": {
                        "command": ["CMD-SHELL", "curl -f http://localhost:8080/health || exit 1"],
                        "interval": 30,
                        "timeout": 5,
                        "retries": 3,
                        "startPeriod": 10
                    },
                    "systemControls": []
                }
            ],
            "family": "shop",
            "taskRoleArn": "arn:aws:iam::000000000000:role/shop-task",
            "revision": 3,
            "volumes": [{"name": "data", "host": {"sourcePath": "/srv/shop"}}],
            "status": "ACTIVE",
            "requiresAttributes": [
                {"name": "com.amazonaws.ecs.capability.logging-driver.json-file"},
                {"name": "com.amazonaws.ecs.capability.ecr-auth"},
                {"name": "com.amazonaws.ecs.capability.docker-remote-api.1.19"},
                {"name": "com.amazonaws.ecs.capability.docker-remote-api.1.21"},
                {"name": "com.amazonaws.ecs.capability.task-iam-role"},
                {"name": "ecs.capability.container-health-check"},
                {"name": "ecs.capability.container-ordering"}
            ],
            "placementConstraints": [],
            "compatibilities": ["EXTERNAL", "EC2"],
            "registeredAt": 1_700_000_000.5,
            "registeredBy": "arn:aws:iam::000000000000:root"
        });
        assert_eq!(got, want);
    }

    #[test]
    fn build_echoes_a_fargate_definition_as_ecs_does() {
        let td = json!({
            "family": "api",
            "networkMode": "awsvpc",
            "requiresCompatibilities": ["FARGATE"],
            "cpu": "0.5 vCPU",
            "memory": "1 GB",
            "executionRoleArn": "arn:aws:iam::000000000000:role/ecsTaskExecutionRole",
            "runtimePlatform": {"cpuArchitecture": "X86_64", "operatingSystemFamily": "LINUX"},
            "enableFaultInjection": false,
            "containerDefinitions": [{
                "name": "api",
                "image": "000000000000.dkr.ecr.us-east-1.amazonaws.com/api:2",
                "portMappings": [{"containerPort": 8080, "name": "http", "appProtocol": "http"}],
                "secrets": [{
                    "name": "DB_PASSWORD",
                    "valueFrom": "arn:aws:secretsmanager:us-east-1:000000000000:secret:db-AbCdEf"
                }],
                "logConfiguration": {
                    "logDriver": "awslogs",
                    "options": {"awslogs-group": "/ecs/api", "awslogs-region": "us-east-1", "awslogs-stream-prefix": "api"}
                }
            }]
        });
        let got = serde_json::to_value(built(&td)).unwrap();
        let want = json!({
            "taskDefinitionArn": "arn:aws:ecs:us-east-1:000000000000:task-definition/api:1",
            "containerDefinitions": [{
                "name": "api",
                "image": "000000000000.dkr.ecr.us-east-1.amazonaws.com/api:2",
                "cpu": 0,
                "portMappings": [{
                    "containerPort": 8080,
                    "hostPort": 8080,
                    "protocol": "tcp",
                    "name": "http",
                    "appProtocol": "http"
                }],
                "essential": true,
                "environment": [],
                "mountPoints": [],
                "volumesFrom": [],
                "secrets": [{
                    "name": "DB_PASSWORD",
                    "valueFrom": "arn:aws:secretsmanager:us-east-1:000000000000:secret:db-AbCdEf"
                }],
                "logConfiguration": {
                    "logDriver": "awslogs",
                    "options": {"awslogs-group": "/ecs/api", "awslogs-region": "us-east-1", "awslogs-stream-prefix": "api"}
                },
                "systemControls": []
            }],
            "family": "api",
            "executionRoleArn": "arn:aws:iam::000000000000:role/ecsTaskExecutionRole",
            "networkMode": "awsvpc",
            "revision": 1,
            "volumes": [],
            "status": "ACTIVE",
            "requiresAttributes": [
                {"name": "com.amazonaws.ecs.capability.logging-driver.awslogs"},
                {"name": "ecs.capability.execution-role-awslogs"},
                {"name": "com.amazonaws.ecs.capability.ecr-auth"},
                {"name": "com.amazonaws.ecs.capability.docker-remote-api.1.19"},
                {"name": "ecs.capability.execution-role-ecr-pull"},
                {"name": "ecs.capability.secrets.asm.environment-variables"},
                {"name": "com.amazonaws.ecs.capability.docker-remote-api.1.18"},
                {"name": "ecs.capability.task-eni"}
            ],
            "placementConstraints": [],
            "compatibilities": ["EC2", "FARGATE"],
            "runtimePlatform": {"cpuArchitecture": "X86_64", "operatingSystemFamily": "LINUX"},
            "requiresCompatibilities": ["FARGATE"],
            "cpu": "512",
            "memory": "1024",
            "registeredAt": 1_700_000_000.5,
            "registeredBy": "arn:aws:iam::000000000000:root",
            "enableFaultInjection": false
        });
        assert_eq!(got, want);
    }
}
