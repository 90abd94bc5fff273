//! `linux`: namespaces, cgroup resources, devices, sysctls, masked and read-only paths.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Linux, LinuxCpu, LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType, LinuxMemory, LinuxNamespace,
    LinuxNamespaceType, LinuxResources,
};

use super::{Ctx, DeviceKind, DeviceNode, NetworkMode, SpecError};

const MIB: i64 = 1024 * 1024;
/// The ECS agent's bounds for `CpuShares`: 0 and 1 become 2 (Docker would turn 0 into 1024).
const MIN_CPU_SHARES: u64 = 2;
const MAX_CPU_SHARES: u64 = 262_144;
/// The agent raises smaller hard limits to this (Docker's minimum on Linux).
const MIN_MEMORY: i64 = 4 * MIB;
/// ECS applies this when maxSwap is set and swappiness is not.
const DEFAULT_SWAPPINESS: u64 = 60;

/// Docker's masked paths (28.x): host kernel interfaces a container must not read.
const MASKED_PATHS: [&str; 12] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const READONLY_PATHS: [&str; 5] = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];
/// IPC-namespaced sysctls Docker lets a container set; `fs.mqueue.*` too.
const IPC_SYSCTLS: [&str; 8] = [
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

/// How the container gets `/dev/shm`.
pub(super) enum Shm<'a> {
    /// Its own tmpfs, sized by sharedMemorySize.
    Private,
    /// A bind of a host directory shared with others (the task's, or the host's own).
    Shared(&'a Path),
    /// None at all (`ipcMode: none`).
    Absent,
}

/// The namespaces decided for the container, and what the mounts depend on.
pub(super) struct Namespaces<'a> {
    list: Vec<LinuxNamespace>,
    /// The container has its own UTS namespace, so its hostname is set.
    pub uts: bool,
    /// The container is in the host's network namespace.
    pub host_network: bool,
    host_ipc: bool,
    pub shm: Shm<'a>,
}

fn namespace(typ: LinuxNamespaceType, path: Option<&Path>) -> LinuxNamespace {
    let mut ns = LinuxNamespace::default();
    ns.set_typ(typ).set_path(path.map(Path::to_path_buf));
    ns
}

/// The container's hostname: its definition's, else the one the engine picked.
pub(super) fn hostname<'a>(cx: &Ctx<'a>) -> &'a str {
    cx.def.hostname.as_deref().filter(|h| !h.is_empty()).unwrap_or(cx.container.hostname)
}

/// Mount, network, UTS, PID and IPC namespaces, in Docker's order. Host networking shares the
/// host's UTS namespace too unless the definition sets a hostname (then Docker gives it one of
/// its own). `disableNetworking` gives a new, empty network namespace.
pub(super) fn namespaces<'a>(cx: &Ctx<'a>) -> Result<Namespaces<'a>, SpecError> {
    let task = cx.task;
    let missing = |mode, what| SpecError::MissingNamespace { container: cx.name.to_owned(), mode, what };
    let mut list = vec![namespace(LinuxNamespaceType::Mount, None)];

    let host_mode = task.network_mode == NetworkMode::Host;
    let disabled = cx.def.disable_networking == Some(true);
    let host_network = host_mode && !disabled;
    if !host_network {
        let path = if disabled { None } else { task.netns };
        list.push(namespace(LinuxNamespaceType::Network, path));
    }

    let uts = !host_mode || cx.def.hostname.as_deref().is_some_and(|h| !h.is_empty());
    if uts {
        list.push(namespace(LinuxNamespaceType::Uts, None));
    }

    match task.definition.pid_mode.as_deref() {
        Some("host") => {}
        Some("task") => {
            let path = task.pid_ns.ok_or_else(|| missing("pidMode 'task'", "PID"))?;
            list.push(namespace(LinuxNamespaceType::Pid, Some(path)));
        }
        _ => list.push(namespace(LinuxNamespaceType::Pid, None)),
    }

    let (host_ipc, shm) = match task.definition.ipc_mode.as_deref() {
        Some("host") => (true, Shm::Shared(Path::new("/dev/shm"))),
        Some("task") => {
            let path = task.ipc_ns.ok_or_else(|| missing("ipcMode 'task'", "IPC"))?;
            list.push(namespace(LinuxNamespaceType::Ipc, Some(path)));
            (false, task.shm.map_or(Shm::Private, Shm::Shared))
        }
        Some("none") => {
            list.push(namespace(LinuxNamespaceType::Ipc, None));
            (false, Shm::Absent)
        }
        _ => {
            list.push(namespace(LinuxNamespaceType::Ipc, None));
            (false, Shm::Private)
        }
    };
    Ok(Namespaces { list, uts, host_network, host_ipc, shm })
}

pub(super) fn linux(cx: &Ctx<'_>, ns: &Namespaces<'_>) -> Result<Linux, SpecError> {
    let (devices, device_rules) = devices(cx)?;
    let mut resources = LinuxResources::default();
    resources.set_devices(Some(device_rules)).set_memory(memory(cx)?).set_cpu(Some(cpu(cx)));

    let sysctl = sysctls(cx, ns)?;
    let (masked, readonly) = if cx.privileged {
        (None, None)
    } else {
        let owned = |paths: &[&str]| paths.iter().map(|p| (*p).to_owned()).collect();
        (Some(owned(&MASKED_PATHS)), Some(owned(&READONLY_PATHS)))
    };

    let mut linux = Linux::default();
    linux
        .set_uid_mappings(None)
        .set_gid_mappings(None)
        .set_sysctl((!sysctl.is_empty()).then_some(sysctl))
        .set_resources(Some(resources))
        .set_cgroups_path(Some(PathBuf::from(cx.task.cgroups_path)))
        .set_namespaces(Some(ns.list.clone()))
        .set_devices((!devices.is_empty()).then_some(devices))
        .set_masked_paths(masked)
        .set_readonly_paths(readonly);
    Ok(linux)
}

/// `cpu.shares`: the container's cpu units, kept within the agent's bounds.
fn cpu(cx: &Ctx<'_>) -> LinuxCpu {
    let units = u64::try_from(cx.def.cpu).unwrap_or(0);
    let mut cpu = LinuxCpu::default();
    cpu.set_shares(Some(units.clamp(MIN_CPU_SHARES, MAX_CPU_SHARES)));
    cpu
}

fn out_of_range(cx: &Ctx<'_>, field: &str, value: i32, allowed: &'static str) -> SpecError {
    SpecError::OutOfRange { container: cx.name.to_owned(), field: field.to_owned(), value, allowed }
}

/// Hard limit (`memory`, at least 4 MiB), soft limit (`memoryReservation`), and swap as ECS
/// passes it to Docker: `--memory-swap` = memory + maxSwap (maxSwap 0 disables swap), with
/// swappiness (default 60) only when maxSwap is set. Without maxSwap the host's swap settings
/// apply.
fn memory(cx: &Ctx<'_>) -> Result<Option<LinuxMemory>, SpecError> {
    let def = cx.def;
    let limit = def.memory.map(|m| (i64::from(m) * MIB).max(MIN_MEMORY));
    let reservation = def.memory_reservation.filter(|r| *r > 0).map(|r| i64::from(r) * MIB);
    let params = cx.linux_parameters();
    let (swap, swappiness) = match params.and_then(|p| p.max_swap) {
        None => (None, None),
        Some(max_swap) if max_swap < 0 => {
            return Err(out_of_range(cx, "linuxParameters.maxSwap", max_swap, "0 or more"));
        }
        Some(max_swap) => {
            let limit =
                limit.ok_or_else(|| SpecError::SwapWithoutMemory { container: cx.name.to_owned() })?;
            let swappiness = match params.and_then(|p| p.swappiness) {
                None => DEFAULT_SWAPPINESS,
                Some(s) => u64::try_from(s)
                    .ok()
                    .filter(|s| *s <= 100)
                    .ok_or_else(|| out_of_range(cx, "linuxParameters.swappiness", s, "between 0 and 100"))?,
            };
            (Some(limit + i64::from(max_swap) * MIB), Some(swappiness))
        }
    };
    if limit.is_none() && reservation.is_none() && swap.is_none() {
        return Ok(None);
    }
    let mut memory = LinuxMemory::default();
    memory.set_limit(limit).set_reservation(reservation).set_swap(swap).set_swappiness(swappiness);
    Ok(Some(memory))
}

fn rule(
    allow: bool,
    typ: Option<LinuxDeviceType>,
    major: Option<i64>,
    minor: Option<i64>,
) -> LinuxDeviceCgroup {
    let mut rule = LinuxDeviceCgroup::default();
    rule.set_allow(allow).set_typ(typ).set_major(major).set_minor(minor).set_access(Some("rwm".to_owned()));
    rule
}

/// Docker's device cgroup rules: deny all, then allow the default nodes runc creates (null,
/// zero, full, random, urandom, tty, console) and keep denying fuse. runc appends its own
/// allowances after these (mknod of any node, /dev/pts, ptmx, tun).
fn default_device_rules() -> Vec<LinuxDeviceCgroup> {
    let c = Some(LinuxDeviceType::C);
    let mut rules = vec![rule(false, None, None, None)];
    for (major, minor) in [(1, 5), (1, 3), (1, 9), (1, 8), (5, 0), (5, 1)] {
        rules.push(rule(true, c, Some(major), Some(minor)));
    }
    rules.push(rule(false, c, Some(10), Some(229)));
    rules
}

fn device_type(kind: DeviceKind) -> LinuxDeviceType {
    match kind {
        DeviceKind::Char => LinuxDeviceType::C,
        DeviceKind::Block => LinuxDeviceType::B,
    }
}

fn linux_device(node: &DeviceNode, path: PathBuf) -> LinuxDevice {
    let mut device = LinuxDevice::default();
    device
        .set_path(path)
        .set_typ(device_type(node.kind))
        .set_major(i64::from(node.major))
        .set_minor(i64::from(node.minor))
        .set_file_mode(Some(node.mode))
        .set_uid(Some(node.uid))
        .set_gid(Some(node.gid));
    device
}

/// `linux.devices` and the device cgroup rules. Privileged: every host device (as resolved
/// under `/dev`) and access to all. Otherwise Docker's defaults plus linuxParameters.devices,
/// each node (or every node below a directory) at containerPath (default: hostPath) with the
/// permissions asked for (default: all).
fn devices(cx: &Ctx<'_>) -> Result<(Vec<LinuxDevice>, Vec<LinuxDeviceCgroup>), SpecError> {
    let resolved = cx.container.devices;
    if cx.privileged {
        let host = resolved
            .get(Path::new("/dev"))
            .ok_or_else(|| SpecError::UnresolvedHostDevices { container: cx.name.to_owned() })?;
        let devices = host.iter().map(|node| linux_device(node, node.path.clone())).collect();
        return Ok((devices, vec![rule(true, None, None, None)]));
    }
    let mut devices = Vec::new();
    let mut rules = default_device_rules();
    let asked = cx.linux_parameters().and_then(|l| l.devices.as_deref()).unwrap_or_default();
    for (index, device) in asked.iter().enumerate() {
        let host_path = device
            .host_path
            .as_deref()
            .ok_or_else(|| SpecError::DeviceWithoutPath { container: cx.name.to_owned(), index })?;
        let container_path = device.container_path.as_deref().filter(|p| !p.is_empty()).unwrap_or(host_path);
        if !container_path.starts_with('/') {
            return Err(SpecError::RelativePath {
                container: cx.name.to_owned(),
                field: format!("linuxParameters.devices[{index}].containerPath"),
                path: container_path.to_owned(),
            });
        }
        let access = device_access(cx, index, device.permissions.as_deref())?;
        let nodes = resolved.get(Path::new(host_path)).ok_or_else(|| SpecError::UnresolvedDevice {
            container: cx.name.to_owned(),
            index,
            path: host_path.to_owned(),
        })?;
        for node in nodes {
            let inside = match node.path.strip_prefix(host_path) {
                Ok(rest) if !rest.as_os_str().is_empty() => Path::new(container_path).join(rest),
                _ => PathBuf::from(container_path),
            };
            devices.push(linux_device(node, inside));
            let mut allow =
                rule(true, Some(device_type(node.kind)), Some(node.major.into()), Some(node.minor.into()));
            allow.set_access(Some(access.clone()));
            rules.push(allow);
        }
    }
    Ok((devices, rules))
}

/// ECS permissions (`read`, `write`, `mknod`) as a cgroup access string; none means all.
fn device_access(cx: &Ctx<'_>, index: usize, permissions: Option<&[String]>) -> Result<String, SpecError> {
    let permissions = permissions.unwrap_or_default();
    if permissions.is_empty() {
        return Ok("rwm".to_owned());
    }
    let mut flags = [false; 3];
    for (permission, value) in permissions.iter().enumerate() {
        let slot = match value.as_str() {
            "read" => 0,
            "write" => 1,
            "mknod" => 2,
            _ => {
                return Err(SpecError::BadDevicePermission {
                    container: cx.name.to_owned(),
                    index,
                    permission,
                    value: value.clone(),
                });
            }
        };
        flags[slot] = true;
    }
    Ok(flags.iter().zip(['r', 'w', 'm']).filter(|(on, _)| **on).map(|(_, c)| c).collect())
}

/// `linux.sysctl` from systemControls, checked as Docker does: only namespaced parameters,
/// net.* not in the host's network namespace, IPC ones not in the host's IPC namespace.
fn sysctls(cx: &Ctx<'_>, ns: &Namespaces<'_>) -> Result<HashMap<String, String>, SpecError> {
    let mut out = HashMap::new();
    for (index, control) in cx.def.system_controls.as_deref().unwrap_or_default().iter().enumerate() {
        let incomplete =
            |field| SpecError::IncompleteSystemControl { container: cx.name.to_owned(), index, field };
        let name = control.namespace.as_deref().map(str::trim).filter(|n| !n.is_empty());
        let name = name.ok_or_else(|| incomplete("namespace"))?;
        let value = control.value.as_deref().ok_or_else(|| incomplete("value"))?;
        let namespace = name.to_owned();
        if IPC_SYSCTLS.contains(&name) || name.starts_with("fs.mqueue.") {
            if ns.host_ipc {
                return Err(SpecError::IpcSysctlOnHostIpc {
                    container: cx.name.to_owned(),
                    index,
                    namespace,
                });
            }
        } else if name.starts_with("net.") {
            if ns.host_network {
                return Err(SpecError::NetSysctlOnHostNetwork {
                    container: cx.name.to_owned(),
                    index,
                    namespace,
                });
            }
        } else {
            return Err(SpecError::SysctlNotNamespaced { container: cx.name.to_owned(), index, namespace });
        }
        out.insert(namespace, value.to_owned());
    }
    Ok(out)
}
