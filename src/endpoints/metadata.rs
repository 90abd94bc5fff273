//! The task metadata endpoint's JSON (v3 and v4), built from a [`TaskRecord`] by pure
//! functions: the ECS agent's field names, order and omissions, so SDKs and sidecars that parse
//! the agent's answers parse ecsd's.
//!
//! The structs mirror the agent's Go types, including its embedding: a v4 container is the v2
//! container plus `Networks` (moved after `ContainerARN`), a v4 task is the v2 task plus
//! `Containers` (moved after `Errors`) and the v4 fields. This module does no I/O; the server
//! reads the record and the tags and passes them in.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use serde::{Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::model::network::NetworkMode;
use crate::model::shapes::ContainerDefinition;
use crate::model::task::{ContainerRecord, ContainerStatus, HealthStatus, TaskRecord, TaskStatus};
use crate::network::settings::Settings;
use crate::spec::{LABEL_CLUSTER, LABEL_CONTAINER_NAME, LABEL_FAMILY, LABEL_REVISION, LABEL_TASK_ARN};

/// The agent's `minimumCPUUnit`: containers with 0 or 1 cpu units run with 2 shares and say so.
const MIN_CPU_UNITS: i32 = 2;
/// The search domain aardvark-dns answers for, as a VPC's DHCP options name one.
const DNS_SEARCH_DOMAIN: &str = "dns.podman";

/// What the answers need beyond the task itself: where this host is and its task networks.
#[derive(Debug, Clone)]
pub struct MetadataContext {
    pub availability_zone: String,
    /// `AvailabilityZoneID` (v4), e.g. `usw2-az2`; left out when unknown.
    pub availability_zone_id: Option<String>,
    /// `VPCID` (v4); left out when unknown.
    pub vpc_id: Option<String>,
    /// The task networks, for the awsvpc interface's subnet, gateway and DNS.
    pub network: Arc<Settings>,
}

/// Tags for `/taskWithTags`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tags {
    pub task: BTreeMap<String, String>,
    pub container_instance: BTreeMap<String, String>,
}

/// `Limits` of a container (cpu units, MiB) or a task (vCPU, MiB).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Limits {
    #[serde(rename = "CPU", skip_serializing_if = "Option::is_none", serialize_with = "go_float_opt")]
    pub cpu: Option<f64>,
    #[serde(rename = "Memory", skip_serializing_if = "Option::is_none")]
    pub memory: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortResponse {
    #[serde(rename = "ContainerPort", skip_serializing_if = "is_zero_u16")]
    pub container_port: u16,
    #[serde(rename = "Protocol", skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    #[serde(rename = "HostPort", skip_serializing_if = "is_zero_u16")]
    pub host_port: u16,
    #[serde(rename = "HostIp", skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumeResponse {
    #[serde(rename = "DockerName", skip_serializing_if = "String::is_empty")]
    pub docker_name: String,
    #[serde(rename = "Source", skip_serializing_if = "String::is_empty")]
    pub source: String,
    #[serde(rename = "Destination", skip_serializing_if = "String::is_empty")]
    pub destination: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthResponse {
    #[serde(rename = "status", skip_serializing_if = "Option::is_none")]
    pub status: Option<&'static str>,
    #[serde(rename = "statusSince", skip_serializing_if = "Option::is_none")]
    pub status_since: Option<String>,
    #[serde(rename = "exitCode", skip_serializing_if = "is_zero_i32")]
    pub exit_code: i32,
    #[serde(rename = "output", skip_serializing_if = "String::is_empty")]
    pub output: String,
}

/// One network of a container. v3 fills only the first three fields; v4 adds the awsvpc
/// interface's properties.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Network {
    #[serde(rename = "NetworkMode", skip_serializing_if = "String::is_empty")]
    pub network_mode: String,
    #[serde(rename = "IPv4Addresses", skip_serializing_if = "Vec::is_empty")]
    pub ipv4_addresses: Vec<String>,
    #[serde(rename = "IPv6Addresses", skip_serializing_if = "Vec::is_empty")]
    pub ipv6_addresses: Vec<String>,
    #[serde(rename = "AttachmentIndex", skip_serializing_if = "Option::is_none")]
    pub attachment_index: Option<u32>,
    #[serde(rename = "MACAddress", skip_serializing_if = "String::is_empty")]
    pub mac_address: String,
    #[serde(rename = "IPv4SubnetCIDRBlock", skip_serializing_if = "String::is_empty")]
    pub ipv4_subnet_cidr_block: String,
    #[serde(rename = "IPv6SubnetCIDRBlock", skip_serializing_if = "String::is_empty")]
    pub ipv6_subnet_cidr_block: String,
    #[serde(rename = "DomainNameServers", skip_serializing_if = "Vec::is_empty")]
    pub domain_name_servers: Vec<String>,
    #[serde(rename = "DomainNameSearchList", skip_serializing_if = "Vec::is_empty")]
    pub domain_name_search_list: Vec<String>,
    #[serde(rename = "PrivateDNSName", skip_serializing_if = "String::is_empty")]
    pub private_dns_name: String,
    #[serde(rename = "SubnetGatewayIpv4Address", skip_serializing_if = "String::is_empty")]
    pub subnet_gateway_ipv4_address: String,
    #[serde(rename = "SubnetGatewayIpv6Address", skip_serializing_if = "String::is_empty")]
    pub subnet_gateway_ipv6_address: String,
}

/// The agent's v2 container response: what v3 serves, and the head of v4's.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContainerV3 {
    #[serde(rename = "DockerId")]
    pub docker_id: String,
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "DockerName")]
    pub docker_name: String,
    #[serde(rename = "Image")]
    pub image: String,
    #[serde(rename = "ImageID")]
    pub image_id: String,
    #[serde(rename = "Ports", skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortResponse>,
    #[serde(rename = "Labels", skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(rename = "DesiredStatus")]
    pub desired_status: &'static str,
    #[serde(rename = "KnownStatus")]
    pub known_status: &'static str,
    #[serde(rename = "ExitCode", skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(rename = "Limits")]
    pub limits: Limits,
    #[serde(rename = "CreatedAt", skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(rename = "StartedAt", skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(rename = "FinishedAt", skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(rename = "Type")]
    pub r#type: &'static str,
    /// v3 only: in v4 the networks come after `ContainerARN`.
    #[serde(rename = "Networks", skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<Network>,
    #[serde(rename = "Health", skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthResponse>,
    #[serde(rename = "Volumes", skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeResponse>,
    #[serde(rename = "LogDriver", skip_serializing_if = "String::is_empty")]
    pub log_driver: String,
    #[serde(rename = "LogOptions", skip_serializing_if = "BTreeMap::is_empty")]
    pub log_options: BTreeMap<String, String>,
    #[serde(rename = "ContainerARN", skip_serializing_if = "String::is_empty")]
    pub container_arn: String,
}

/// The v4 container response.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContainerV4 {
    #[serde(flatten)]
    pub base: ContainerV3,
    #[serde(rename = "Networks", skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<Network>,
    #[serde(rename = "RestartCount", skip_serializing_if = "Option::is_none")]
    pub restart_count: Option<u32>,
}

/// The agent's v2 task response: what v3 serves, and the head of v4's.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskV3 {
    #[serde(rename = "Cluster")]
    pub cluster: String,
    #[serde(rename = "TaskARN")]
    pub task_arn: String,
    #[serde(rename = "Family")]
    pub family: String,
    #[serde(rename = "Revision")]
    pub revision: String,
    #[serde(rename = "DesiredStatus", skip_serializing_if = "str::is_empty")]
    pub desired_status: &'static str,
    #[serde(rename = "KnownStatus")]
    pub known_status: &'static str,
    /// v3 only: in v4 the containers come after the v2 fields.
    #[serde(rename = "Containers", skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<ContainerV3>,
    #[serde(rename = "Limits", skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    #[serde(rename = "PullStartedAt", skip_serializing_if = "Option::is_none")]
    pub pull_started_at: Option<String>,
    #[serde(rename = "PullStoppedAt", skip_serializing_if = "Option::is_none")]
    pub pull_stopped_at: Option<String>,
    #[serde(rename = "ExecutionStoppedAt", skip_serializing_if = "Option::is_none")]
    pub execution_stopped_at: Option<String>,
    #[serde(rename = "AvailabilityZone", skip_serializing_if = "String::is_empty")]
    pub availability_zone: String,
    #[serde(rename = "TaskTags", skip_serializing_if = "BTreeMap::is_empty")]
    pub task_tags: BTreeMap<String, String>,
    #[serde(rename = "ContainerInstanceTags", skip_serializing_if = "BTreeMap::is_empty")]
    pub container_instance_tags: BTreeMap<String, String>,
    #[serde(rename = "LaunchType", skip_serializing_if = "String::is_empty")]
    pub launch_type: String,
}

/// The v4 task response.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskV4 {
    #[serde(flatten)]
    pub base: TaskV3,
    #[serde(rename = "Containers", skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<ContainerV4>,
    #[serde(rename = "VPCID", skip_serializing_if = "String::is_empty")]
    pub vpc_id: String,
    #[serde(rename = "ServiceName", skip_serializing_if = "String::is_empty")]
    pub service_name: String,
    #[serde(rename = "FaultInjectionEnabled")]
    pub fault_injection_enabled: bool,
    #[serde(rename = "AvailabilityZoneID", skip_serializing_if = "String::is_empty")]
    pub availability_zone_id: String,
}

/// Which endpoint version an answer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V3,
    V4,
}

/// `GET /v4/<id>`.
pub fn container_v4(task: &TaskRecord, c: &ContainerRecord, cx: &MetadataContext) -> ContainerV4 {
    ContainerV4 {
        base: container_base(task, c, Version::V4),
        networks: networks(task, c, cx, Version::V4),
        restart_count: None,
    }
}

/// `GET /v3/<id>`.
pub fn container_v3(task: &TaskRecord, c: &ContainerRecord, cx: &MetadataContext) -> ContainerV3 {
    ContainerV3 { networks: networks(task, c, cx, Version::V3), ..container_base(task, c, Version::V3) }
}

/// `GET /v4/<id>/task`, or `/taskWithTags` when `tags` are given.
pub fn task_v4(task: &TaskRecord, cx: &MetadataContext, tags: Option<&Tags>) -> TaskV4 {
    TaskV4 {
        base: task_base(task, cx, tags, Version::V4),
        containers: task.containers.iter().map(|c| container_v4(task, c, cx)).collect(),
        vpc_id: cx.vpc_id.clone().unwrap_or_default(),
        service_name: service_name(task),
        fault_injection_enabled: false,
        availability_zone_id: cx.availability_zone_id.clone().unwrap_or_default(),
    }
}

/// `GET /v3/<id>/task`, or `/taskWithTags` when `tags` are given. As the agent does, a
/// container whose runtime network is not known yet is left out (awsvpc tasks keep all).
pub fn task_v3(task: &TaskRecord, cx: &MetadataContext, tags: Option<&Tags>) -> TaskV3 {
    let awsvpc = task.network_mode() == NetworkMode::Awsvpc;
    TaskV3 {
        containers: task
            .containers
            .iter()
            .map(|c| container_v3(task, c, cx))
            .filter(|c| awsvpc || !c.networks.is_empty())
            .collect(),
        ..task_base(task, cx, tags, Version::V3)
    }
}

/// The container whose metadata URIs carry `endpoint_id`.
pub fn container_by_endpoint<'a>(task: &'a TaskRecord, endpoint_id: &str) -> Option<&'a ContainerRecord> {
    task.containers.iter().find(|c| c.endpoint_id.as_deref() == Some(endpoint_id))
}

/// `ecs-<family>-<revision>-<name>-<20 hex>`, as the agent names Docker containers. The
/// suffix is random for the agent; here it is derived from the runtime id, so it is stable.
pub fn docker_name(task: &TaskRecord, c: &ContainerRecord) -> String {
    let family = task.definition.family.as_deref().unwrap_or_default();
    let name: String = c.name.chars().filter(|ch| ch.is_ascii_alphanumeric() || *ch == '-').collect();
    let digest = Sha256::digest(format!("ecsd-docker-name:{}", c.runtime_id));
    format!("ecs-{family}-{}-{name}-{}", task.definition.revision, &hex::encode(digest)[..20])
}

/// Epoch seconds as Go's `time.Time` marshals: RFC 3339 in UTC with the fraction's trailing
/// zeros cut (`2024-05-01T10:00:01.123Z`).
pub fn rfc3339_nano(epoch_secs: f64) -> String {
    let micros = (epoch_secs.max(0.0) * 1e6).round() as u64;
    go_time(UNIX_EPOCH + Duration::from_micros(micros))
}

/// A `SystemTime` as Go marshals a `time.Time`.
pub fn go_time(t: std::time::SystemTime) -> String {
    let full = crate::runtime::logs::format_rfc3339(t, true);
    let body = full.strip_suffix('Z').unwrap_or(&full);
    match body.split_once('.') {
        Some((secs, frac)) => {
            let frac = frac.trim_end_matches('0');
            if frac.is_empty() { format!("{secs}Z") } else { format!("{secs}.{frac}Z") }
        }
        None => full,
    }
}

fn container_base(task: &TaskRecord, c: &ContainerRecord, version: Version) -> ContainerV3 {
    let def = task.effective(&c.name);
    let log = def.and_then(|d| d.log_configuration.as_ref());
    let v4 = version == Version::V4;
    ContainerV3 {
        docker_id: c.runtime_id.clone(),
        name: c.name.clone(),
        docker_name: docker_name(task, c),
        image: c.image.clone(),
        image_id: c.image_id.clone().unwrap_or_default(),
        ports: ports(task, c, def, version),
        labels: labels(task, c, def),
        desired_status: container_desired(task, c),
        known_status: container_known(task, c).as_str(),
        exit_code: c.exit_code,
        limits: Limits {
            cpu: Some(f64::from(def.map_or(0, |d| d.cpu).max(MIN_CPU_UNITS))),
            memory: Some(def.and_then(|d| d.memory).map_or(0, i64::from)),
        },
        created_at: c.created_at.map(rfc3339_nano),
        started_at: c.started_at.map(rfc3339_nano),
        finished_at: c.finished_at.map(rfc3339_nano),
        r#type: "NORMAL",
        networks: vec![],
        health: def.and_then(|d| d.health_check.as_ref()).map(|_| health(c)),
        volumes: volumes(task, def),
        log_driver: if v4 {
            log.and_then(|l| l.log_driver.clone()).unwrap_or_default()
        } else {
            String::new()
        },
        log_options: if v4 {
            log.and_then(|l| l.options.clone()).unwrap_or_default()
        } else {
            BTreeMap::new()
        },
        container_arn: if v4 { c.arn.clone() } else { String::new() },
    }
}

fn task_base(task: &TaskRecord, cx: &MetadataContext, tags: Option<&Tags>, version: Version) -> TaskV3 {
    let cpu = task.cpu.as_deref().and_then(task_cpu_units).map(|units| units / 1024.0);
    let memory = task.memory.as_deref().and_then(task_memory_mib);
    TaskV3 {
        cluster: task.cluster.clone(),
        task_arn: task.arn.clone(),
        family: task.definition.family.clone().unwrap_or_default(),
        revision: task.definition.revision.to_string(),
        desired_status: task_desired(task),
        known_status: task_known(task),
        containers: vec![],
        limits: (cpu.is_some() || memory.is_some()).then_some(Limits { cpu, memory }),
        pull_started_at: task.pull_started_at.map(rfc3339_nano),
        pull_stopped_at: task.pull_stopped_at.map(rfc3339_nano),
        execution_stopped_at: task.execution_stopped_at.map(rfc3339_nano),
        availability_zone: cx.availability_zone.clone(),
        task_tags: tags.map(|t| t.task.clone()).unwrap_or_default(),
        container_instance_tags: tags.map(|t| t.container_instance.clone()).unwrap_or_default(),
        launch_type: if version == Version::V4 { task.launch_type.clone() } else { String::new() },
    }
}

/// Agent container states, in order: the task's known state is the least of its containers'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Known {
    None,
    ManifestPulled,
    Pulled,
    Created,
    Running,
    Stopped,
}

impl Known {
    fn as_str(self) -> &'static str {
        match self {
            Known::None => "NONE",
            Known::ManifestPulled => "MANIFEST_PULLED",
            Known::Pulled => "PULLED",
            Known::Created => "CREATED",
            Known::Running => "RUNNING",
            Known::Stopped => "STOPPED",
        }
    }
}

fn container_known(task: &TaskRecord, c: &ContainerRecord) -> Known {
    match c.status {
        ContainerStatus::Stopped => Known::Stopped,
        ContainerStatus::Running => Known::Running,
        ContainerStatus::Created => Known::Created,
        ContainerStatus::Pending if task.pull_stopped_at.is_some() => Known::Pulled,
        ContainerStatus::Pending if task.pull_started_at.is_some() => Known::ManifestPulled,
        ContainerStatus::Pending => Known::None,
    }
}

fn desired_stopped(task: &TaskRecord) -> bool {
    task.desired >= TaskStatus::Deactivating
}

fn container_desired(task: &TaskRecord, c: &ContainerRecord) -> &'static str {
    if desired_stopped(task) || c.status == ContainerStatus::Stopped { "STOPPED" } else { "RUNNING" }
}

fn task_desired(task: &TaskRecord) -> &'static str {
    if desired_stopped(task) { "STOPPED" } else { "RUNNING" }
}

/// The agent's task state: the least of its containers' (a task has no PULLED state), and
/// STOPPED once ecsd has stopped it, even if a container never got to run.
fn task_known(task: &TaskRecord) -> &'static str {
    if task.last == TaskStatus::Stopped {
        return Known::Stopped.as_str();
    }
    let least = task.containers.iter().map(|c| container_known(task, c)).min();
    match least {
        Some(Known::Pulled) => Known::ManifestPulled.as_str(),
        Some(k) => k.as_str(),
        None if task.last >= TaskStatus::Running => Known::Running.as_str(),
        None => Known::None.as_str(),
    }
}

fn labels(
    task: &TaskRecord,
    c: &ContainerRecord,
    def: Option<&ContainerDefinition>,
) -> BTreeMap<String, String> {
    let mut labels = def.and_then(|d| d.docker_labels.clone()).unwrap_or_default();
    labels.insert(LABEL_TASK_ARN.to_owned(), task.arn.clone());
    labels.insert(LABEL_CONTAINER_NAME.to_owned(), c.name.clone());
    labels.insert(LABEL_FAMILY.to_owned(), task.definition.family.clone().unwrap_or_default());
    labels.insert(LABEL_REVISION.to_owned(), task.definition.revision.to_string());
    labels.insert(LABEL_CLUSTER.to_owned(), task.cluster.clone());
    labels
}

/// Known port bindings, once the container has started: in awsvpc the task definition's
/// container ports (the host port is the container port), otherwise the published bindings.
fn ports(
    task: &TaskRecord,
    c: &ContainerRecord,
    def: Option<&ContainerDefinition>,
    version: Version,
) -> Vec<PortResponse> {
    if c.started_at.is_none() {
        return vec![];
    }
    let port = |p: Option<i32>| p.and_then(|p| u16::try_from(p).ok()).unwrap_or(0);
    let protocol = |p: Option<&String>| p.cloned().unwrap_or_else(|| "tcp".to_owned());
    if task.network_mode() == NetworkMode::Awsvpc {
        return def
            .and_then(|d| d.port_mappings.as_ref())
            .into_iter()
            .flatten()
            .filter(|m| m.container_port.is_some())
            .map(|m| PortResponse {
                container_port: port(m.container_port),
                protocol: protocol(m.protocol.as_ref()),
                host_port: port(m.container_port),
                host_ip: String::new(),
            })
            .collect();
    }
    c.network_bindings
        .iter()
        .filter(|b| b.container_port.is_some())
        .map(|b| PortResponse {
            container_port: port(b.container_port),
            protocol: protocol(b.protocol.as_ref()),
            host_port: port(b.host_port),
            host_ip: if version == Version::V4 {
                b.bind_ip.clone().unwrap_or_default()
            } else {
                String::new()
            },
        })
        .collect()
}

/// The container's networks. awsvpc: the task's interface (with its properties in v4). Other
/// modes: the runtime network by name, as Docker inspects it, once the container exists.
fn networks(task: &TaskRecord, c: &ContainerRecord, cx: &MetadataContext, version: Version) -> Vec<Network> {
    let mode = task.network_mode();
    if mode == NetworkMode::Awsvpc {
        let Some(eni) = &task.attachment else { return vec![] };
        let mut n = Network {
            network_mode: "awsvpc".to_owned(),
            ipv4_addresses: eni.private_ipv4_address.iter().cloned().collect(),
            ..Network::default()
        };
        if version == Version::V4 {
            n.attachment_index = Some(0);
            n.mac_address = eni.mac_address.clone().unwrap_or_default();
            n.private_dns_name = eni.private_dns_name.clone().unwrap_or_default();
            if let Some(net) = cx.network.network(&eni.network) {
                let gateway = net.gateway().to_string();
                n.ipv4_subnet_cidr_block = net.cidr();
                n.subnet_gateway_ipv4_address = format!("{gateway}/{}", net.prefix_len);
                if net.dns {
                    n.domain_name_servers = vec![gateway];
                    n.domain_name_search_list = vec![DNS_SEARCH_DOMAIN.to_owned()];
                }
            }
        }
        return vec![n];
    }
    if c.status == ContainerStatus::Pending && c.created_at.is_none() {
        return vec![];
    }
    let address =
        if mode == NetworkMode::Bridge { c.ipv4.clone().unwrap_or_default() } else { String::new() };
    vec![Network {
        network_mode: mode.as_str().to_owned(),
        ipv4_addresses: vec![address],
        ..Network::default()
    }]
}

fn health(c: &ContainerRecord) -> HealthResponse {
    let h = c.health.clone().unwrap_or_default();
    HealthResponse {
        status: (h.status != HealthStatus::Unknown).then(|| h.status.as_str()),
        status_since: h.since.map(rfc3339_nano),
        exit_code: h.exit_code.unwrap_or(0),
        output: truncate(&h.output, 1024),
    }
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// Mount points of the container: the host path for `host.sourcePath` volumes; other
/// volumes' directories belong to the engine, so only their destination is shown.
fn volumes(task: &TaskRecord, def: Option<&ContainerDefinition>) -> Vec<VolumeResponse> {
    let task_volumes = task.definition.volumes.as_deref().unwrap_or_default();
    def.and_then(|d| d.mount_points.as_ref())
        .into_iter()
        .flatten()
        .map(|m| {
            let volume = task_volumes.iter().find(|v| v.name.is_some() && v.name == m.source_volume);
            VolumeResponse {
                docker_name: String::new(),
                source: volume
                    .and_then(|v| v.host.as_ref())
                    .and_then(|h| h.source_path.clone())
                    .unwrap_or_default(),
                destination: m.container_path.clone().unwrap_or_default(),
            }
        })
        .filter(|v| !v.destination.is_empty())
        .collect()
}

/// A service's tasks are in group `service:<name>`.
fn service_name(task: &TaskRecord) -> String {
    task.group.strip_prefix("service:").map(str::to_owned).unwrap_or_default()
}

/// Task cpu as RunTask may leave it: CPU units (`"256"`) or vCPUs (`"0.25 vCPU"`).
fn task_cpu_units(text: &str) -> Option<f64> {
    let lower = text.trim().to_ascii_lowercase();
    match lower.strip_suffix("vcpu") {
        Some(vcpus) => vcpus.trim().parse::<f64>().ok().map(|v| v * 1024.0),
        None => lower.parse::<f64>().ok(),
    }
    .filter(|u| u.is_finite() && *u > 0.0)
}

/// Task memory as RunTask may leave it: MiB (`"512"`) or GB (`"1 GB"`).
fn task_memory_mib(text: &str) -> Option<i64> {
    let lower = text.trim().to_ascii_lowercase();
    let mib = match lower.strip_suffix("gb") {
        Some(gb) => gb.trim().parse::<f64>().ok()? * 1024.0,
        None => lower.parse::<f64>().ok()?,
    };
    (mib.is_finite() && mib > 0.0).then_some(mib.round() as i64)
}

/// Go prints whole floats without a fraction (`256`, not `256.0`).
pub(crate) fn go_float<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.fract() == 0.0 && v.abs() < 1e15 { s.serialize_i64(*v as i64) } else { s.serialize_f64(*v) }
}

fn go_float_opt<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => go_float(v, s),
        None => s.serialize_none(),
    }
}

fn is_zero_u16(v: &u16) -> bool {
    *v == 0
}

fn is_zero_i32(v: &i32) -> bool {
    *v == 0
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::shapes::{
        HealthCheck, HostVolumeProperties, LogConfiguration, MountPoint, NetworkBinding, PortMapping,
        TaskDefinition, Volume,
    };
    use crate::model::task::Health;
    use crate::model::task::{AttachmentStatus, EniAttachment};

    pub(crate) const TASK_ARN: &str =
        "arn:aws:ecs:us-west-2:111122223333:task/default/158d1c8083dd49d6b527399fd6414f5c";
    pub(crate) const DOCKER_ID: &str = "ea32192c8553fbff06c9340478a2ff089b2bb5646fb718b4ee206641c9086d66";
    pub(crate) const ENDPOINT: &str = "1bdcca8b-f905-4ee6-885c-4064cb70f6e6";

    pub(crate) fn context() -> MetadataContext {
        MetadataContext {
            availability_zone: "us-west-2a".into(),
            availability_zone_id: None,
            vpc_id: None,
            network: Arc::new(Settings::default()),
        }
    }

    fn web_definition() -> ContainerDefinition {
        ContainerDefinition {
            name: Some("web".into()),
            image: Some("nginx:latest".into()),
            cpu: 256,
            memory: Some(512),
            port_mappings: Some(vec![PortMapping {
                container_port: Some(80),
                protocol: Some("tcp".into()),
                ..Default::default()
            }]),
            log_configuration: Some(LogConfiguration {
                log_driver: Some("awslogs".into()),
                options: Some(BTreeMap::from([
                    ("awslogs-group".into(), "/ecs/web".into()),
                    ("awslogs-region".into(), "us-west-2".into()),
                    ("awslogs-stream".into(), "web/web/158d1c8083dd49d6b527399fd6414f5c".into()),
                ])),
                secret_options: None,
            }),
            ..Default::default()
        }
    }

    /// The reference's example task: one running `web` container in awsvpc.
    pub(crate) fn awsvpc_task() -> TaskRecord {
        let def = web_definition();
        TaskRecord {
            id: "158d1c8083dd49d6b527399fd6414f5c".into(),
            cluster: "default".into(),
            arn: TASK_ARN.into(),
            definition: TaskDefinition {
                family: Some("web-task".into()),
                revision: 1,
                network_mode: Some("awsvpc".into()),
                container_definitions: Some(vec![def.clone()]),
                ..Default::default()
            },
            containers_effective: vec![def],
            overrides: None,
            started_by: None,
            group: "family:web-task".into(),
            launch_type: "EC2".into(),
            enable_execute_command: false,
            network_configuration: None,
            container_instance_arn: None,
            platform_version: None,
            cpu: Some("256".into()),
            memory: Some("512".into()),
            desired: TaskStatus::Running,
            last: TaskStatus::Running,
            version: 3,
            created_at: 1_714_557_600.0,
            pull_started_at: Some(1_714_557_600.5),
            pull_stopped_at: Some(1_714_557_601.0),
            connectivity_at: None,
            started_at: Some(1_714_557_602.25),
            stopping_at: None,
            execution_stopped_at: None,
            stopped_at: None,
            stop_code: None,
            stopped_reason: None,
            netns: Some("/run/netns/ecsd-test".into()),
            attachment: Some(EniAttachment {
                id: "att".into(),
                status: AttachmentStatus::Attached,
                network: "default".into(),
                subnet_id: "subnet-default".into(),
                network_interface_id: "eni-0123".into(),
                mac_address: Some("06:96:9a:ce:a6:ce".into()),
                private_ipv4_address: Some("10.217.0.9".into()),
                private_dns_name: Some("ip-10-217-0-9.us-west-2.compute.internal".into()),
            }),
            credentials_id: Some("cred-1".into()),
            containers: vec![ContainerRecord {
                name: "web".into(),
                runtime_id: DOCKER_ID.into(),
                arn: format!(
                    "arn:aws:ecs:us-west-2:111122223333:container/default/158d1c8083dd49d6b527399fd6414f5c/{ENDPOINT}"
                ),
                image: "nginx:latest".into(),
                image_digest: None,
                image_id: Some(
                    "sha256:2ae23eb477aeeb5d3b0a7b76fe6a1f1c5dd9a6c3a2e4b9f2f0b6c3c54d0c2b1a".into(),
                ),
                status: ContainerStatus::Running,
                exit_code: None,
                reason: None,
                created_at: Some(1_714_557_601.123),
                started_at: Some(1_714_557_602.234),
                finished_at: None,
                stop_sent_at: None,
                killed: None,
                stop_signal: None,
                health: None,
                network_bindings: vec![],
                netns: None,
                ipv4: None,
                endpoint_id: Some(ENDPOINT.into()),
            }],
        }
    }

    #[test]
    fn v4_container_matches_the_reference_example() {
        let task = awsvpc_task();
        let body = serde_json::to_string(&container_v4(&task, &task.containers[0], &context())).unwrap();
        let expected = format!(
            concat!(
                r#"{{"DockerId":"{id}","Name":"web","DockerName":"{name}","Image":"nginx:latest","#,
                r#""ImageID":"sha256:2ae23eb477aeeb5d3b0a7b76fe6a1f1c5dd9a6c3a2e4b9f2f0b6c3c54d0c2b1a","#,
                r#""Ports":[{{"ContainerPort":80,"Protocol":"tcp","HostPort":80}}],"#,
                r#""Labels":{{"com.amazonaws.ecs.cluster":"default","com.amazonaws.ecs.container-name":"web","#,
                r#""com.amazonaws.ecs.task-arn":"{arn}","com.amazonaws.ecs.task-definition-family":"web-task","#,
                r#""com.amazonaws.ecs.task-definition-version":"1"}},"#,
                r#""DesiredStatus":"RUNNING","KnownStatus":"RUNNING","Limits":{{"CPU":256,"Memory":512}},"#,
                r#""CreatedAt":"2024-05-01T10:00:01.123Z","StartedAt":"2024-05-01T10:00:02.234Z","Type":"NORMAL","#,
                r#""LogDriver":"awslogs","LogOptions":{{"awslogs-group":"/ecs/web","awslogs-region":"us-west-2","#,
                r#""awslogs-stream":"web/web/158d1c8083dd49d6b527399fd6414f5c"}},"#,
                r#""ContainerARN":"arn:aws:ecs:us-west-2:111122223333:container/default/158d1c8083dd49d6b527399fd6414f5c/{ep}","#,
                r#""Networks":[{{"NetworkMode":"awsvpc","IPv4Addresses":["10.217.0.9"],"AttachmentIndex":0,"#,
                r#""MACAddress":"06:96:9a:ce:a6:ce","IPv4SubnetCIDRBlock":"10.217.0.0/16","#,
                r#""DomainNameServers":["10.217.0.1"],"DomainNameSearchList":["dns.podman"],"#,
                r#""PrivateDNSName":"ip-10-217-0-9.us-west-2.compute.internal","#,
                r#""SubnetGatewayIpv4Address":"10.217.0.1/16"}}]}}"#
            ),
            id = DOCKER_ID,
            name = docker_name(&task, &task.containers[0]),
            arn = TASK_ARN,
            ep = ENDPOINT,
        );
        assert_eq!(body, expected);
    }

    #[test]
    fn v3_container_has_no_v4_fields() {
        let task = awsvpc_task();
        let v = serde_json::to_value(container_v3(&task, &task.containers[0], &context())).unwrap();
        for absent in ["LogDriver", "LogOptions", "ContainerARN", "RestartCount"] {
            assert!(v.get(absent).is_none(), "{absent} in {v}");
        }
        assert_eq!(
            v["Networks"],
            serde_json::json!([{"NetworkMode": "awsvpc", "IPv4Addresses": ["10.217.0.9"]}])
        );
        assert!(v["Ports"][0].get("HostIp").is_none());
        // v3 keeps the v2 order: Networks right after Type.
        let text = serde_json::to_string(&container_v3(&task, &task.containers[0], &context())).unwrap();
        assert!(text.contains(r#""Type":"NORMAL","Networks":[{"NetworkMode":"awsvpc""#), "{text}");
    }

    #[test]
    fn docker_name_is_stable_and_sanitized() {
        let mut task = awsvpc_task();
        task.containers[0].name = "we_b.1".into();
        let a = docker_name(&task, &task.containers[0]);
        assert_eq!(a, docker_name(&task, &task.containers[0]));
        let suffix = a.strip_prefix("ecs-web-task-1-web1-").unwrap();
        assert_eq!(suffix.len(), 20);
        assert!(suffix.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(&DOCKER_ID[..20], suffix);
    }

    #[test]
    fn v4_task_field_order_and_omissions() {
        let task = awsvpc_task();
        let body = serde_json::to_string(&task_v4(&task, &context(), None)).unwrap();
        let prefix = format!(
            concat!(
                r#"{{"Cluster":"default","TaskARN":"{arn}","Family":"web-task","Revision":"1","#,
                r#""DesiredStatus":"RUNNING","KnownStatus":"RUNNING","Limits":{{"CPU":0.25,"Memory":512}},"#,
                r#""PullStartedAt":"2024-05-01T10:00:00.5Z","PullStoppedAt":"2024-05-01T10:00:01Z","#,
                r#""AvailabilityZone":"us-west-2a","LaunchType":"EC2","Containers":[{{"DockerId":"{id}""#
            ),
            arn = TASK_ARN,
            id = DOCKER_ID
        );
        assert!(body.starts_with(&prefix), "{body}");
        assert!(body.ends_with(r#"}]}],"FaultInjectionEnabled":false}"#), "{body}");
        assert!(!body.contains("TaskTags") && !body.contains("ContainerInstanceTags"), "{body}");
    }

    #[test]
    fn task_with_tags_and_empty_instance_tags() {
        let task = awsvpc_task();
        let tags = Tags { task: BTreeMap::from([("team".into(), "payments".into())]), ..Tags::default() };
        let v = serde_json::to_value(task_v4(&task, &context(), Some(&tags))).unwrap();
        assert_eq!(v["TaskTags"], serde_json::json!({"team": "payments"}));
        assert!(v.get("ContainerInstanceTags").is_none());
        let v3 = serde_json::to_string(&task_v3(&task, &context(), Some(&tags))).unwrap();
        assert!(v3.contains(r#""KnownStatus":"RUNNING","Containers":[{"#), "{v3}");
        assert!(v3.contains(r#""TaskTags":{"team":"payments"}"#), "{v3}");
        for absent in ["LaunchType", "FaultInjectionEnabled", "VPCID"] {
            assert!(!v3.contains(absent), "{absent} in {v3}");
        }
    }

    #[test]
    fn statuses_follow_the_agent() {
        let mut task = awsvpc_task();
        task.last = TaskStatus::Pending;
        task.pull_stopped_at = None;
        task.containers[0].status = ContainerStatus::Pending;
        let c = container_v4(&task, &task.containers[0], &context());
        assert_eq!((c.base.known_status, task_known(&task)), ("MANIFEST_PULLED", "MANIFEST_PULLED"));
        task.pull_stopped_at = Some(1.0);
        assert_eq!(container_known(&task, &task.containers[0]).as_str(), "PULLED");
        assert_eq!(task_known(&task), "MANIFEST_PULLED");
        task.containers[0].status = ContainerStatus::Created;
        assert_eq!(task_known(&task), "CREATED");
        task.containers[0].status = ContainerStatus::Stopped;
        task.containers[0].exit_code = Some(0);
        task.desired = TaskStatus::Stopped;
        task.last = TaskStatus::Stopped;
        let c = container_v4(&task, &task.containers[0], &context());
        assert_eq!(
            (c.base.desired_status, c.base.known_status, c.base.exit_code),
            ("STOPPED", "STOPPED", Some(0))
        );
        let t = task_v4(&task, &context(), None);
        assert_eq!((t.base.desired_status, t.base.known_status), ("STOPPED", "STOPPED"));
    }

    #[test]
    fn limits_clamp_cpu_and_read_task_units() {
        let mut task = awsvpc_task();
        task.containers_effective[0].cpu = 0;
        task.containers_effective[0].memory = None;
        task.cpu = Some("1 vCPU".into());
        task.memory = Some("2 GB".into());
        let c = serde_json::to_value(container_v4(&task, &task.containers[0], &context())).unwrap();
        assert_eq!(c["Limits"], serde_json::json!({"CPU": 2, "Memory": 0}));
        let t = serde_json::to_string(&task_v4(&task, &context(), None)).unwrap();
        assert!(t.contains(r#""Limits":{"CPU":1,"Memory":2048}"#), "{t}");
        task.cpu = None;
        task.memory = None;
        let t = serde_json::to_value(task_v4(&task, &context(), None)).unwrap();
        assert!(t.get("Limits").is_none());
        task.memory = Some("300".into());
        let t = serde_json::to_value(task_v4(&task, &context(), None)).unwrap();
        assert_eq!(t["Limits"], serde_json::json!({"Memory": 300}));
    }

    #[test]
    fn bridge_host_and_none_networks() {
        let mut task = awsvpc_task();
        task.definition.network_mode = Some("bridge".into());
        task.attachment = None;
        let c = &mut task.containers[0];
        c.ipv4 = Some("10.217.0.20".into());
        c.network_bindings = vec![NetworkBinding {
            bind_ip: Some("0.0.0.0".into()),
            container_port: Some(80),
            host_port: Some(49153),
            protocol: Some("tcp".into()),
            ..Default::default()
        }];
        let v = serde_json::to_value(container_v4(&task, &task.containers[0], &context())).unwrap();
        assert_eq!(
            v["Networks"],
            serde_json::json!([{"NetworkMode": "bridge", "IPv4Addresses": ["10.217.0.20"]}])
        );
        assert_eq!(
            v["Ports"],
            serde_json::json!([{"ContainerPort": 80, "Protocol": "tcp", "HostPort": 49153, "HostIp": "0.0.0.0"}])
        );
        let v3 = serde_json::to_value(container_v3(&task, &task.containers[0], &context())).unwrap();
        assert_eq!(
            v3["Ports"],
            serde_json::json!([{"ContainerPort": 80, "Protocol": "tcp", "HostPort": 49153}])
        );
        task.definition.network_mode = Some("host".into());
        let v = serde_json::to_value(container_v4(&task, &task.containers[0], &context())).unwrap();
        assert_eq!(v["Networks"], serde_json::json!([{"NetworkMode": "host", "IPv4Addresses": [""]}]));
        task.definition.network_mode = Some("none".into());
        let v = serde_json::to_value(container_v4(&task, &task.containers[0], &context())).unwrap();
        assert_eq!(v["Networks"], serde_json::json!([{"NetworkMode": "none", "IPv4Addresses": [""]}]));
        // Not created yet: no runtime network, and v3's task listing leaves it out.
        task.definition.network_mode = Some("bridge".into());
        let c = &mut task.containers[0];
        (c.status, c.created_at, c.started_at) = (ContainerStatus::Pending, None, None);
        let v = serde_json::to_value(container_v4(&task, &task.containers[0], &context())).unwrap();
        assert!(v.get("Networks").is_none() && v.get("Ports").is_none(), "{v}");
        assert!(task_v3(&task, &context(), None).containers.is_empty());
        assert_eq!(task_v4(&task, &context(), None).containers.len(), 1);
    }

    #[test]
    fn health_volumes_and_timestamps() {
        let mut task = awsvpc_task();
        task.containers_effective[0].health_check =
            Some(HealthCheck { command: Some(vec!["CMD".into(), "true".into()]), ..Default::default() });
        task.containers_effective[0].mount_points = Some(vec![
            MountPoint {
                source_volume: Some("data".into()),
                container_path: Some("/data".into()),
                read_only: None,
            },
            MountPoint {
                source_volume: Some("scratch".into()),
                container_path: Some("/scratch".into()),
                read_only: None,
            },
        ]);
        task.definition.volumes = Some(vec![
            Volume {
                name: Some("data".into()),
                host: Some(HostVolumeProperties { source_path: Some("/srv/data".into()) }),
                ..Default::default()
            },
            Volume { name: Some("scratch".into()), ..Default::default() },
        ]);
        task.containers[0].health = Some(Health::default());
        let v = serde_json::to_value(container_v4(&task, &task.containers[0], &context())).unwrap();
        assert_eq!(v["Health"], serde_json::json!({}));
        assert_eq!(
            v["Volumes"],
            serde_json::json!([{"Source": "/srv/data", "Destination": "/data"}, {"Destination": "/scratch"}])
        );
        task.containers[0].health = Some(Health {
            status: HealthStatus::Unhealthy,
            since: Some(1_714_557_605.0),
            exit_code: Some(1),
            output: "x".repeat(2000),
            failing_streak: 3,
        });
        let v = serde_json::to_value(container_v4(&task, &task.containers[0], &context())).unwrap();
        assert_eq!(v["Health"]["status"], "UNHEALTHY");
        assert_eq!(v["Health"]["statusSince"], "2024-05-01T10:00:05Z");
        assert_eq!(v["Health"]["exitCode"], 1);
        assert_eq!(v["Health"]["output"].as_str().unwrap().len(), 1024);
        assert_eq!(rfc3339_nano(1_714_557_601.123_456_7), "2024-05-01T10:00:01.123457Z");
        assert_eq!(rfc3339_nano(0.0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn endpoint_lookup_is_by_endpoint_id_only() {
        let task = awsvpc_task();
        assert!(container_by_endpoint(&task, ENDPOINT).is_some());
        assert!(container_by_endpoint(&task, DOCKER_ID).is_none());
        assert!(container_by_endpoint(&task, "").is_none());
    }
}
