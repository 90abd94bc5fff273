//! Placement on this host, as ECS accounts a container instance: the CPU and memory tasks
//! reserve, and the host ports they publish. The host is shared by every cluster, so what
//! tasks hold is counted across clusters.
//!
//! The engine decides under a short lock over in-memory state only; the bind probes of dynamic
//! ports happen outside it, on a reservation that keeps concurrent launches apart.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::sync::Mutex;

use crate::model::network::{NetworkMode, PortRange};
use crate::model::shapes::{ContainerDefinition, NetworkBinding, PortMapping, TaskDefinition};
use crate::model::task::TaskRecord;
use crate::network::Settings;

/// What a task reserves on the instance, as ECS accounts it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Demand {
    pub cpu: i64,
    pub memory: i64,
}

impl Demand {
    /// The task's cpu and memory, else the sum of its containers' (memory: the reservation,
    /// else the hard limit).
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

/// What the host registers: 1024 CPU units per core, its memory in MiB.
/// This host as a container instance: the memory `ECS_RESERVED_MEMORY` keeps back from tasks
/// (for the host's own processes), and the attributes `ECS_INSTANCE_ATTRIBUTES` gives it.
#[derive(Debug, Clone, Default)]
pub struct InstanceSettings {
    pub reserved_memory_mib: i64,
    pub attributes: std::collections::BTreeMap<String, String>,
}

/// The host's cpu and memory, before any reservation (see [`crate::engine::Engine::registered`]).
pub fn registered() -> Demand {
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

/// A transport protocol ECS publishes ports for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn of(name: Option<&str>) -> Protocol {
        if name == Some("udp") { Protocol::Udp } else { Protocol::Tcp }
    }

    fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    fn shortfall(self) -> Shortfall {
        match self {
            Protocol::Tcp => Shortfall::Ports,
            Protocol::Udp => Shortfall::PortsUdp,
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

/// What the host lacks for a task: ECS's placement failure reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Shortfall {
    #[error("RESOURCE:CPU")]
    Cpu,
    #[error("RESOURCE:MEMORY")]
    Memory,
    #[error("RESOURCE:PORTS")]
    Ports,
    #[error("RESOURCE:PORTS_UDP")]
    PortsUdp,
}

/// Host ports by protocol.
#[derive(Debug, Default, Clone)]
pub struct Ports {
    pub tcp: BTreeSet<u16>,
    pub udp: BTreeSet<u16>,
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
            (Some(r), _) => PortRange::parse(r).ok(),
            (None, Some(p)) => u16::try_from(p).ok().map(PortRange::single),
            (None, None) => None,
        };
        if let Some(ports) = ports {
            self.of_mut(Protocol::of(b.protocol.as_deref())).extend(ports.ports());
        }
    }

    fn hold_all<'a>(&mut self, bindings: impl IntoIterator<Item = &'a NetworkBinding>) {
        for b in bindings {
            self.hold(b);
        }
    }
}

/// What tasks that have not stopped hold on this host: CPU and memory of the tasks that
/// count against the instance (not FARGATE), and the host ports of every task.
#[derive(Debug, Default, Clone)]
pub struct Usage {
    pub demand: Demand,
    pub ports: Ports,
}

impl Usage {
    pub fn of<'a>(tasks: impl IntoIterator<Item = &'a TaskRecord>) -> Usage {
        let mut u = Usage::default();
        for t in tasks {
            u.ports.hold_all(t.containers.iter().flat_map(|c| &c.network_bindings));
            if t.launch_type != "FARGATE" {
                u.add(Demand::of_task(t));
            }
        }
        u
    }

    fn add(&mut self, d: Demand) {
        self.demand.cpu += d.cpu;
        self.demand.memory += d.memory;
    }

    /// Why a task of `demand` cannot be placed now.
    pub fn shortfall(&self, demand: Demand, registered: Demand) -> Option<Shortfall> {
        if self.demand.memory + demand.memory > registered.memory {
            Some(Shortfall::Memory)
        } else if self.demand.cpu + demand.cpu > registered.cpu {
            Some(Shortfall::Cpu)
        } else {
            None
        }
    }
}

/// One port mapping as the task's network mode publishes it on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    protocol: Protocol,
    container: PortRange,
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
    let mode = NetworkMode::of(td);
    let publish = match mode {
        NetworkMode::Bridge | NetworkMode::Host => true,
        NetworkMode::Awsvpc => settings.publish_awsvpc_ports,
        NetworkMode::None => false,
    };
    if !publish {
        return vec![vec![]; containers.len()];
    }
    let mappings = |c: &ContainerDefinition| {
        let all = c.port_mappings.as_deref().unwrap_or_default();
        all.iter().filter_map(|pm| wanted(mode == NetworkMode::Bridge, pm)).collect()
    };
    containers.iter().map(mappings).collect()
}

/// The lowest fixed host port below `start` that a task wants, if any (dynamic ports come
/// from the dynamic range).
pub fn first_fixed_below(wanted: &[Vec<Wanted>], start: u16) -> Option<u16> {
    wanted.iter().flatten().filter_map(|w| w.host).filter(|p| *p < start).min()
}

/// The container port of the first UDP mapping a task publishes on the host, if any (a
/// rootless ecsd forwards published ports from the host for TCP only).
pub fn first_udp(wanted: &[Vec<Wanted>]) -> Option<u16> {
    wanted.iter().flatten().find(|w| w.protocol == Protocol::Udp).map(|w| w.container.start)
}

fn wanted(bridge: bool, pm: &PortMapping) -> Option<Wanted> {
    let (container, ranged) = match (&pm.container_port_range, pm.container_port) {
        (Some(r), _) => (PortRange::parse(r).ok()?, true),
        (None, Some(p)) => (PortRange::single(u16::try_from(p).ok().filter(|p| *p > 0)?), false),
        (None, None) => return None,
    };
    let host = match bridge {
        true if ranged => None,
        true => pm.host_port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p > 0),
        false => Some(container.start),
    };
    Some(Wanted { protocol: Protocol::of(pm.protocol.as_deref()), container, ranged, host })
}

/// The bindings of each container, and the dynamic host ports among them.
type Bound = (Vec<Vec<NetworkBinding>>, Vec<(Protocol, u16)>);

/// Gives each container its network bindings, taking its host ports from what is free:
/// neither held nor reserved nor `excluded` (found busy on the host by an earlier probe).
/// Returns the bindings and the dynamic ports chosen, which the caller probes.
fn bind_ports(
    settings: &Settings,
    held: &Ports,
    excluded: &HashSet<(Protocol, u16)>,
    wanted: &[Vec<Wanted>],
) -> Result<Bound, Shortfall> {
    let mut taken = held.clone();
    taken.tcp.extend(&settings.reserved_ports);
    taken.udp.extend(&settings.reserved_ports_udp);
    let mut dynamic_ports = vec![];
    let bindings = wanted
        .iter()
        .map(|container| {
            container
                .iter()
                .map(|w| {
                    let len = w.container.len();
                    let host = match w.host {
                        Some(first) => {
                            let last = u16::try_from(u32::from(first) + len - 1)
                                .map_err(|_| w.protocol.shortfall())?;
                            let ports = PortRange { start: first, end: last };
                            if ports.ports().any(|p| taken.of(w.protocol).contains(&p)) {
                                return Err(w.protocol.shortfall());
                            }
                            ports
                        }
                        None => {
                            let free = |p: u16| {
                                !taken.of(w.protocol).contains(&p) && !excluded.contains(&(w.protocol, p))
                            };
                            let run = dynamic(settings.dynamic_ports.clone(), free, len)
                                .ok_or(w.protocol.shortfall())?;
                            dynamic_ports.extend(run.ports().map(|p| (w.protocol, p)));
                            run
                        }
                    };
                    taken.of_mut(w.protocol).extend(host.ports());
                    Ok(binding(w, host))
                })
                .collect()
        })
        .collect::<Result<_, _>>()?;
    Ok((bindings, dynamic_ports))
}

/// The lowest run of `len` consecutive ports of `range` that are free.
fn dynamic(range: std::ops::RangeInclusive<u16>, free: impl Fn(u16) -> bool, len: u32) -> Option<PortRange> {
    let mut run: Option<u16> = None;
    for port in range {
        if !free(port) {
            run = None;
            continue;
        }
        let first = *run.get_or_insert(port);
        if u32::from(port - first) + 1 == len {
            return Some(PortRange { start: first, end: port });
        }
    }
    None
}

fn binding(w: &Wanted, host: PortRange) -> NetworkBinding {
    let mut b = NetworkBinding {
        bind_ip: Some("0.0.0.0".into()),
        protocol: Some(w.protocol.as_str().into()),
        ..Default::default()
    };
    if w.ranged {
        b.container_port_range = Some(w.container.to_string());
        b.host_port_range = Some(host.to_string());
    } else {
        b.container_port = Some(i32::from(w.container.start));
        b.host_port = Some(i32::from(host.start));
    }
    b
}

/// What is being placed right now: taken by tasks not yet in the view.
#[derive(Debug, Default)]
struct Reserved {
    by_task: HashMap<String, (Demand, Ports)>,
}

/// Places tasks one at a time against what live tasks and other placements hold.
#[derive(Debug, Default)]
pub(crate) struct Placer {
    reserved: Mutex<Reserved>,
}

/// A placement decision, held until the task is recorded or the reservation is dropped.
#[derive(Debug)]
pub(crate) struct Reservation<'a> {
    placer: &'a Placer,
    task_id: String,
    pub bindings: Vec<Vec<NetworkBinding>>,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.placer.release(&self.task_id);
    }
}

impl Placer {
    fn lock(&self) -> std::sync::MutexGuard<'_, Reserved> {
        self.reserved.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn release(&self, task_id: &str) {
        self.lock().by_task.remove(task_id);
    }

    /// Reserves `demand` and host ports for task `task_id`, given what `live` tasks hold.
    /// Dynamic ports are probed on the host outside the lock; busy ones are skipped and the
    /// choice made again.
    pub(crate) fn place<'a>(
        &'a self,
        task_id: &str,
        live: impl Fn() -> Usage,
        settings: &Settings,
        registered: Demand,
        demand: Option<Demand>,
        wanted: &[Vec<Wanted>],
    ) -> Result<Reservation<'a>, Shortfall> {
        let mut excluded = HashSet::new();
        loop {
            let (bindings, dynamic_ports) = {
                let mut reserved = self.lock();
                let mut usage = live();
                for (d, p) in reserved.by_task.values() {
                    usage.add(*d);
                    usage.ports.tcp.extend(&p.tcp);
                    usage.ports.udp.extend(&p.udp);
                }
                if let Some(short) = demand.and_then(|d| usage.shortfall(d, registered)) {
                    return Err(short);
                }
                let (bindings, dynamic_ports) = bind_ports(settings, &usage.ports, &excluded, wanted)?;
                let mut ports = Ports::default();
                ports.hold_all(bindings.iter().flatten());
                reserved.by_task.insert(task_id.to_owned(), (demand.unwrap_or_default(), ports));
                (bindings, dynamic_ports)
            };
            let reservation = Reservation { placer: self, task_id: task_id.to_owned(), bindings };
            let busy: Vec<(Protocol, u16)> =
                dynamic_ports.into_iter().filter(|(proto, port)| !proto.bindable(*port)).collect();
            if busy.is_empty() {
                return Ok(reservation);
            }
            drop(reservation);
            excluded.extend(busy);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings { dynamic_ports: 50000..=50003, reserved_ports: vec![22], ..Settings::default() }
    }

    fn wanted_host(protocol: Protocol, port: Option<u16>, len: u16) -> Wanted {
        let container = PortRange { start: 8000, end: 8000 + len - 1 };
        Wanted { protocol, container, ranged: len > 1, host: port }
    }

    #[test]
    fn fixed_ports_conflict_with_held_and_reserved_ones() {
        let s = settings();
        let mut held = Ports::default();
        held.tcp.insert(8080);
        let w = vec![vec![wanted_host(Protocol::Tcp, Some(8080), 1)]];
        assert_eq!(bind_ports(&s, &held, &HashSet::new(), &w).unwrap_err(), Shortfall::Ports);
        let w = vec![vec![wanted_host(Protocol::Udp, Some(8080), 1)]];
        assert!(bind_ports(&s, &held, &HashSet::new(), &w).is_ok(), "udp 8080 is free");
        let w = vec![vec![wanted_host(Protocol::Tcp, Some(22), 1)]];
        assert_eq!(bind_ports(&s, &Ports::default(), &HashSet::new(), &w).unwrap_err(), Shortfall::Ports);
    }

    #[test]
    fn the_lowest_fixed_port_below_the_unprivileged_start_is_found() {
        let w = vec![
            vec![wanted_host(Protocol::Tcp, Some(8080), 1), wanted_host(Protocol::Tcp, None, 1)],
            vec![wanted_host(Protocol::Udp, Some(443), 1), wanted_host(Protocol::Tcp, Some(80), 1)],
        ];
        assert_eq!(first_fixed_below(&w, 1024), Some(80));
        assert_eq!(first_fixed_below(&w, 80), None);
        assert_eq!(first_fixed_below(&w[..1], 1024), None);
    }

    #[test]
    fn reserved_udp_ports_are_udp_only() {
        let s = Settings { reserved_ports_udp: vec![53], ..settings() };
        let w = vec![vec![wanted_host(Protocol::Udp, Some(53), 1)]];
        assert_eq!(bind_ports(&s, &Ports::default(), &HashSet::new(), &w).unwrap_err(), Shortfall::PortsUdp);
        let w = vec![vec![wanted_host(Protocol::Tcp, Some(53), 1)]];
        assert!(bind_ports(&s, &Ports::default(), &HashSet::new(), &w).is_ok(), "tcp 53 is free");
    }

    #[test]
    fn dynamic_runs_skip_held_and_excluded_ports() {
        let s = settings();
        let mut held = Ports::default();
        held.tcp.insert(50000);
        let excluded: HashSet<_> = [(Protocol::Tcp, 50002)].into();
        let w = vec![vec![wanted_host(Protocol::Tcp, None, 1)]];
        let (b, dynamic_ports) = bind_ports(&s, &held, &excluded, &w).unwrap();
        assert_eq!(b[0][0].host_port, Some(50001));
        assert_eq!(dynamic_ports, [(Protocol::Tcp, 50001)]);
        // A run of two needs 50003 and 50004, which the range does not have.
        let w = vec![vec![wanted_host(Protocol::Tcp, None, 2)]];
        assert_eq!(bind_ports(&s, &held, &excluded, &w).unwrap_err(), Shortfall::Ports);
        let (b, _) = bind_ports(&s, &held, &HashSet::new(), &w).unwrap();
        assert_eq!(b[0][0].host_port_range.as_deref(), Some("50001-50002"));
    }

    #[test]
    fn reservations_keep_concurrent_placements_apart_until_dropped() {
        let s = settings();
        let placer = Placer::default();
        let reg = Demand { cpu: 2048, memory: 1000 };
        let need = Some(Demand { cpu: 1024, memory: 600 });
        let w = vec![vec![]];
        let a = placer.place("a", Usage::default, &s, reg, need, &w).unwrap();
        assert_eq!(placer.place("b", Usage::default, &s, reg, need, &w).unwrap_err(), Shortfall::Memory);
        drop(a);
        assert!(placer.place("b", Usage::default, &s, reg, need, &w).is_ok());
    }
}
