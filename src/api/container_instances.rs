//! ListContainerInstances, DescribeContainerInstances: this host, as one container instance
//! in every ACTIVE cluster, with its registered and remaining CPU, MEMORY and PORTS; and
//! what placement takes from it, host ports included. The host is shared by every cluster,
//! so what tasks hold is counted across clusters.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::ops::RangeInclusive;

use super::pagination::Page;
use super::{ApiError, Ctx, cluster_name, clusters};
use crate::engine::TaskRecord;
use crate::model::arn::ResourceArn;
use crate::model::shapes::{
    Attribute, ContainerDefinition, ContainerInstance, DescribeContainerInstancesRequest,
    DescribeContainerInstancesResponse, Failure, ListContainerInstancesRequest,
    ListContainerInstancesResponse, NetworkBinding, PortMapping, Resource, TaskDefinition, VersionInfo,
};
use crate::network::Settings;
use crate::store::records::META;

/// The id of this host as a container instance: made once, kept in the store.
pub fn instance_id(ctx: &Ctx) -> Result<String, ApiError> {
    if let Some(id) = ctx.store.read(|r| r.get(META, "instance_id"))? {
        return Ok(id);
    }
    Ok(ctx.store.write(|w| match w.get(META, "instance_id")? {
        Some(id) => Ok::<_, crate::store::StoreError>(id),
        None => {
            let id = uuid::Uuid::new_v4().simple().to_string();
            w.put(META, "instance_id", &id)?;
            Ok(id)
        }
    })?)
}

pub fn arn(ctx: &Ctx, cluster: &str) -> Result<String, ApiError> {
    Ok(ctx.identity.container_instance_arn(cluster, &instance_id(ctx)?))
}

/// Whether `reference` (an id or ARN) names this host in `cluster`.
pub fn is_ours(ctx: &Ctx, cluster: &str, reference: &str) -> Result<bool, ApiError> {
    let id = instance_id(ctx)?;
    Ok(if reference.starts_with("arn:") {
        matches!(ctx.identity.parse(reference), Ok(ResourceArn::ContainerInstance { cluster: c, id: i }) if c == cluster && i == id)
    } else {
        reference == id
    })
}

/// What a task reserves on the instance, as ECS accounts it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Demand {
    pub cpu: i64,
    pub memory: i64,
}

impl Demand {
    pub fn of(td: &TaskDefinition, containers: &[ContainerDefinition]) -> Demand {
        let task_cpu = td.cpu.as_deref().and_then(|c| c.parse::<i64>().ok());
        let task_mem = td.memory.as_deref().and_then(|m| m.parse::<i64>().ok());
        Demand {
            cpu: task_cpu.unwrap_or_else(|| containers.iter().map(|c| i64::from(c.cpu)).sum()),
            memory: task_mem.unwrap_or_else(|| {
                containers.iter().map(|c| i64::from(c.memory_reservation.or(c.memory).unwrap_or(0))).sum()
            }),
        }
    }

    fn of_task(t: &TaskRecord) -> Demand {
        Demand::of(&t.definition, &t.containers_effective)
    }
}

fn registered() -> Demand {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as i64;
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<i64>().ok())
        })
        .unwrap_or(0);
    Demand { cpu: cpus * 1024, memory: mem_kib / 1024 }
}

/// What tasks that have not stopped hold on this host: CPU and memory of EC2 tasks, and the
/// host ports of every task.
#[derive(Debug, Default)]
pub struct Usage {
    demand: Demand,
    ports: Ports,
}

pub fn usage(ctx: &Ctx) -> Result<Usage, ApiError> {
    let mut u = Usage::default();
    for t in ctx.engine.all_live_tasks()? {
        for b in t.containers.iter().flat_map(|c| &c.network_bindings) {
            u.ports.hold(b);
        }
        if t.launch_type == "FARGATE" {
            continue;
        }
        let x = Demand::of_task(&t);
        u.demand.cpu += x.cpu;
        u.demand.memory += x.memory;
    }
    Ok(u)
}

impl Usage {
    /// Why a task of `demand` cannot be placed now (`RESOURCE:CPU` / `RESOURCE:MEMORY`).
    pub fn shortfall(&self, demand: Demand) -> Option<&'static str> {
        let reg = registered();
        if self.demand.memory + demand.memory > reg.memory {
            Some("RESOURCE:MEMORY")
        } else if self.demand.cpu + demand.cpu > reg.cpu {
            Some("RESOURCE:CPU")
        } else {
            None
        }
    }
}

/// A transport protocol ECS publishes ports for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    fn of(name: Option<&str>) -> Protocol {
        if name == Some("udp") { Protocol::Udp } else { Protocol::Tcp }
    }

    fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    /// The placement failure ECS reports when a host port of this protocol is not free.
    fn shortfall(self) -> &'static str {
        match self {
            Protocol::Tcp => "RESOURCE:PORTS",
            Protocol::Udp => "RESOURCE:PORTS_UDP",
        }
    }

    /// Whether the host lets a socket bind `port` now: another program may hold it.
    fn bindable(self, port: u16) -> bool {
        match self {
            Protocol::Tcp => TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok(),
            Protocol::Udp => UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok(),
        }
    }
}

/// Host ports by protocol.
#[derive(Debug, Default, Clone)]
struct Ports {
    tcp: BTreeSet<u16>,
    udp: BTreeSet<u16>,
}

impl Ports {
    fn of(&self, p: Protocol) -> &BTreeSet<u16> {
        match p {
            Protocol::Tcp => &self.tcp,
            Protocol::Udp => &self.udp,
        }
    }

    fn of_mut(&mut self, p: Protocol) -> &mut BTreeSet<u16> {
        match p {
            Protocol::Tcp => &mut self.tcp,
            Protocol::Udp => &mut self.udp,
        }
    }

    /// Counts the host ports a binding publishes: its hostPort, or all of its hostPortRange.
    fn hold(&mut self, b: &NetworkBinding) {
        let ports = match (&b.host_port_range, b.host_port) {
            (Some(r), _) => parse_range(r),
            (None, Some(p)) => u16::try_from(p).ok().map(|p| p..=p),
            (None, None) => None,
        };
        if let Some(ports) = ports {
            self.of_mut(Protocol::of(b.protocol.as_deref())).extend(ports);
        }
    }
}

/// `8000-8010` (or a single port).
fn parse_range(r: &str) -> Option<RangeInclusive<u16>> {
    let (a, b) = r.split_once('-').unwrap_or((r, r));
    let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a > 0 && a <= b).then_some(a..=b)
}

fn range_text(r: &RangeInclusive<u16>) -> String {
    format!("{}-{}", r.start(), r.end())
}

/// One port mapping as the task's network mode publishes it on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    protocol: Protocol,
    container: RangeInclusive<u16>,
    /// Mapped as a `containerPortRange` (shown with a `hostPortRange`).
    ranged: bool,
    /// The first host port; `None` takes free ones from the dynamic range.
    host: Option<u16>,
}

/// The host ports each container of a task wants, by its network mode: bridge maps a
/// `hostPort` (0 or none: a dynamic one; a `containerPortRange`: a dynamic run of the same
/// length), host mode publishes the container ports themselves, awsvpc publishes nothing
/// unless `publish_awsvpc_ports` (then as host mode does), `none` nothing. Registration
/// has checked the mappings against the mode.
pub fn wanted_ports(
    settings: &Settings,
    td: &TaskDefinition,
    containers: &[ContainerDefinition],
) -> Vec<Vec<Wanted>> {
    let mode = td.network_mode.as_deref().unwrap_or("bridge");
    let publish = match mode {
        "bridge" | "host" => true,
        "awsvpc" => settings.publish_awsvpc_ports,
        _ => false,
    };
    if !publish {
        return vec![vec![]; containers.len()];
    }
    let mappings = |c: &ContainerDefinition| {
        let all = c.port_mappings.as_deref().unwrap_or_default();
        all.iter().filter_map(|pm| wanted(mode == "bridge", pm)).collect()
    };
    containers.iter().map(mappings).collect()
}

fn wanted(bridge: bool, pm: &PortMapping) -> Option<Wanted> {
    let (container, ranged) = match (&pm.container_port_range, pm.container_port) {
        (Some(r), _) => (parse_range(r)?, true),
        (None, Some(p)) => {
            let p = u16::try_from(p).ok().filter(|p| *p > 0)?;
            (p..=p, false)
        }
        (None, None) => return None,
    };
    let host = match bridge {
        true if ranged => None,
        true => pm.host_port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p > 0),
        false => Some(*container.start()),
    };
    Some(Wanted { protocol: Protocol::of(pm.protocol.as_deref()), container, ranged, host })
}

/// Gives each container its network bindings, taking its host ports from what is free:
/// neither held by a task nor reserved, and, for dynamic ports, bindable on the host now.
/// `Err` is the placement failure (`RESOURCE:PORTS`, `RESOURCE:PORTS_UDP`).
pub fn bind_ports(
    settings: &Settings,
    usage: &Usage,
    wanted: &[Vec<Wanted>],
) -> Result<Vec<Vec<NetworkBinding>>, &'static str> {
    let mut taken = usage.ports.clone();
    taken.tcp.extend(&settings.reserved_ports);
    wanted
        .iter()
        .map(|container| {
            container
                .iter()
                .map(|w| {
                    let len = u32::from(*w.container.end()) - u32::from(*w.container.start());
                    let host = match w.host {
                        Some(first) => {
                            let last =
                                u16::try_from(u32::from(first) + len).map_err(|_| w.protocol.shortfall())?;
                            let ports = first..=last;
                            if ports.clone().any(|p| taken.of(w.protocol).contains(&p)) {
                                return Err(w.protocol.shortfall());
                            }
                            ports
                        }
                        None => dynamic(&settings.dynamic_ports, taken.of(w.protocol), w.protocol, len)
                            .ok_or(w.protocol.shortfall())?,
                    };
                    taken.of_mut(w.protocol).extend(host.clone());
                    Ok(binding(w, &host))
                })
                .collect()
        })
        .collect()
}

/// The lowest run of `len + 1` consecutive ports of `range` that are free and bindable.
fn dynamic(
    range: &RangeInclusive<u16>,
    taken: &BTreeSet<u16>,
    protocol: Protocol,
    len: u32,
) -> Option<RangeInclusive<u16>> {
    let mut run = None;
    for port in range.clone() {
        if taken.contains(&port) || !protocol.bindable(port) {
            run = None;
            continue;
        }
        let first = *run.get_or_insert(port);
        if u32::from(port - first) == len {
            return Some(first..=port);
        }
    }
    None
}

fn binding(w: &Wanted, host: &RangeInclusive<u16>) -> NetworkBinding {
    let mut b = NetworkBinding {
        bind_ip: Some("0.0.0.0".into()),
        protocol: Some(w.protocol.as_str().into()),
        ..Default::default()
    };
    if w.ranged {
        b.container_port_range = Some(range_text(&w.container));
        b.host_port_range = Some(range_text(host));
    } else {
        b.container_port = Some(i32::from(*w.container.start()));
        b.host_port = Some(i32::from(*host.start()));
    }
    b
}

fn integer(name: &str, v: i64) -> Resource {
    Resource {
        name: Some(name.into()),
        r#type: Some("INTEGER".into()),
        integer_value: v as i32,
        ..Default::default()
    }
}

fn ports(name: &str, ports: impl IntoIterator<Item = u16>) -> Resource {
    Resource {
        name: Some(name.into()),
        r#type: Some("STRINGSET".into()),
        string_set_value: Some(ports.into_iter().map(|p| p.to_string()).collect()),
        ..Default::default()
    }
}

fn attribute(name: &str, value: Option<&str>) -> Attribute {
    Attribute { name: Some(name.into()), value: value.map(str::to_owned), ..Default::default() }
}

/// The attributes ECS itself puts on an instance: platform and capabilities.
pub fn builtin_attributes(ctx: &Ctx) -> Vec<Attribute> {
    let arch = if std::env::consts::ARCH == "aarch64" { "arm64" } else { std::env::consts::ARCH };
    let mut attributes = vec![
        attribute("ecs.os-type", Some("linux")),
        attribute("ecs.os-family", Some("LINUX")),
        attribute("ecs.cpu-architecture", Some(arch)),
        attribute("ecs.availability-zone", Some(&ctx.engine.availability_zone())),
    ];
    for cap in [
        "com.amazonaws.ecs.capability.docker-remote-api.1.17",
        "com.amazonaws.ecs.capability.docker-remote-api.1.18",
        "com.amazonaws.ecs.capability.docker-remote-api.1.19",
        "com.amazonaws.ecs.capability.docker-remote-api.1.21",
        "com.amazonaws.ecs.capability.docker-remote-api.1.25",
        "com.amazonaws.ecs.capability.task-iam-role",
        "ecs.capability.task-eni",
        "ecs.capability.container-health-check",
        "ecs.capability.container-ordering",
        "ecs.capability.execution-role-awslogs",
    ] {
        attributes.push(attribute(cap, None));
    }
    attributes
}

fn instance(ctx: &Ctx, cluster: &str, connected: bool) -> Result<ContainerInstance, ApiError> {
    let reg = registered();
    let usage = usage(ctx)?;
    let used = usage.demand;
    let tasks = ctx.engine.tasks_of(cluster)?;
    let live: Vec<&TaskRecord> =
        tasks.iter().filter(|t| t.last != crate::engine::TaskStatus::Stopped).collect();
    let running = live.iter().filter(|t| t.last == crate::engine::TaskStatus::Running).count() as i32;
    let reserved: BTreeSet<u16> = ctx.network.reserved_ports.iter().copied().collect();
    let mut attributes = builtin_attributes(ctx);
    attributes.extend(ctx.store.read(|r| super::attributes::custom(r, cluster))?);
    Ok(ContainerInstance {
        container_instance_arn: Some(arn(ctx, cluster)?),
        version: 1,
        version_info: Some(VersionInfo {
            agent_version: Some(env!("CARGO_PKG_VERSION").into()),
            agent_hash: Some("ecsd".into()),
            docker_version: Some("containerd".into()),
        }),
        // As ECS does, the PORTS sets list the ports that are *not* available: reserved ones,
        // and (remaining) those tasks hold. The reserved ports are TCP, like the agent's
        // ECS_RESERVED_PORTS.
        remaining_resources: Some(vec![
            integer("CPU", (reg.cpu - used.cpu).max(0)),
            integer("MEMORY", (reg.memory - used.memory).max(0)),
            ports("PORTS", &usage.ports.tcp | &reserved),
            ports("PORTS_UDP", usage.ports.udp.iter().copied()),
        ]),
        registered_resources: Some(vec![
            integer("CPU", reg.cpu),
            integer("MEMORY", reg.memory),
            ports("PORTS", ctx.network.reserved_ports.iter().copied()),
            ports("PORTS_UDP", []),
        ]),
        status: Some("ACTIVE".into()),
        // The "agent" is ecsd itself; what it can be disconnected from is containerd.
        agent_connected: connected,
        running_tasks_count: running,
        pending_tasks_count: live.iter().filter(|t| t.last.is_pending()).count() as i32,
        attributes: Some(attributes),
        registered_at: ctx.store.read(|r| r.get(META, "registered_at"))?.and_then(|s| s.parse().ok()),
        attachments: Some(vec![]),
        ..Default::default()
    })
}

pub fn list(
    ctx: &Ctx,
    req: ListContainerInstancesRequest,
) -> Result<ListContainerInstancesResponse, ApiError> {
    Page::new(req.max_results, req.next_token.as_deref(), 100)?;
    let name = cluster_name(ctx, req.cluster.as_deref())?;
    if !ctx.store.read(|r| clusters::exists(r, &name))? {
        return Err(ApiError::cluster_not_found());
    }
    let active = req.status.as_deref().is_none_or(|s| s == "ACTIVE");
    let arns = if active { vec![arn(ctx, &name)?] } else { vec![] };
    Ok(ListContainerInstancesResponse { container_instance_arns: Some(arns), next_token: None })
}

pub async fn describe(
    ctx: &std::sync::Arc<Ctx>,
    req: DescribeContainerInstancesRequest,
) -> Result<DescribeContainerInstancesResponse, ApiError> {
    let connected = ctx.engine.runtime_ready().await.is_ok();
    let name = cluster_name(ctx, req.cluster.as_deref())?;
    if !ctx.store.read(|r| clusters::exists(r, &name))? {
        return Err(ApiError::cluster_not_found());
    }
    let refs = req.container_instances.unwrap_or_default();
    if refs.is_empty() || refs.len() > 100 {
        return Err(ApiError::invalid_parameter(format!(
            "containerInstances must name 1 to 100 container instances; it names {}",
            refs.len()
        )));
    }
    let mut instances = vec![];
    let mut failures = vec![];
    for r in refs {
        if is_ours(ctx, &name, &r)? {
            instances.push(instance(ctx, &name, connected)?);
        } else {
            let arn = if r.starts_with("arn:") { r } else { ctx.identity.container_instance_arn(&name, &r) };
            failures.push(Failure { arn: Some(arn), reason: Some("MISSING".into()), detail: None });
        }
    }
    Ok(DescribeContainerInstancesResponse { container_instances: Some(instances), failures: Some(failures) })
}
