//! The module's only I/O: reading the daemon's rlimits and the host's device nodes, once,
//! before [`super::build`] runs.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use oci_spec::runtime::Capability;
use rustix::process::{Resource, getrlimit};

use super::{DeviceKind, DeviceNode, HostLimits, Limit, ResolvedDevices, RlimitKind, SpecError};
use crate::model::shapes::ContainerDefinition;

/// Below `/dev`, what a container must not get a copy of: other namespaces' mounts and the
/// host's console (containerd's and Docker's list for privileged containers).
const SKIPPED_DEV_ENTRIES: [&str; 8] =
    ["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev", "console"];

fn resource(kind: RlimitKind) -> Resource {
    match kind {
        RlimitKind::Core => Resource::Core,
        RlimitKind::Cpu => Resource::Cpu,
        RlimitKind::Data => Resource::Data,
        RlimitKind::Fsize => Resource::Fsize,
        RlimitKind::Locks => Resource::Locks,
        RlimitKind::Memlock => Resource::Memlock,
        RlimitKind::Msgqueue => Resource::Msgqueue,
        RlimitKind::Nice => Resource::Nice,
        RlimitKind::Nofile => Resource::Nofile,
        RlimitKind::Nproc => Resource::Nproc,
        RlimitKind::Rss => Resource::Rss,
        RlimitKind::Rtprio => Resource::Rtprio,
        RlimitKind::Rttime => Resource::Rttime,
        RlimitKind::Sigpending => Resource::Sigpending,
        RlimitKind::Stack => Resource::Stack,
        RlimitKind::As => Resource::As,
    }
}

/// The daemon's own resource limits, and no init (the engine sets [`HostLimits::init`] from
/// its configuration).
pub fn host_limits() -> HostLimits {
    let rlimits: BTreeMap<RlimitKind, Limit> = RlimitKind::ALL
        .into_iter()
        .map(|kind| {
            let limit = getrlimit(resource(kind));
            let infinite = u64::MAX;
            (kind, Limit { soft: limit.current.unwrap_or(infinite), hard: limit.maximum.unwrap_or(infinite) })
        })
        .collect();
    HostLimits { rlimits, capabilities: own_capabilities(), init: None }
}

/// The daemon's effective capabilities, from `/proc/self/status` as containerd's `cap.Current`
/// reads them; `None` if they cannot be read (then every capability is offered and the
/// runtime refuses what it cannot give, as Docker does in that case).
fn own_capabilities() -> Option<Vec<Capability>> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    let bits = u64::from_str_radix(hex, 16).ok()?;
    Some(
        super::process::CAPABILITIES
            .iter()
            .enumerate()
            .filter(|(i, _)| bits & (1 << i) != 0)
            .map(|(_, (_, c))| *c)
            .collect(),
    )
}

/// The host paths [`resolve_devices`] must look at for a container: its
/// linuxParameters.devices, and all of `/dev` when it is privileged.
pub fn device_paths(definition: &ContainerDefinition) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = definition
        .linux_parameters
        .as_ref()
        .and_then(|l| l.devices.as_deref())
        .unwrap_or_default()
        .iter()
        .filter_map(|d| d.host_path.as_deref().map(PathBuf::from))
        .collect();
    if definition.privileged == Some(true) {
        paths.push(PathBuf::from("/dev"));
    }
    paths.sort();
    paths.dedup();
    paths
}

fn node(path: &Path, meta: &fs::Metadata) -> Option<DeviceNode> {
    let file_type = meta.file_type();
    let kind = if file_type.is_char_device() {
        DeviceKind::Char
    } else if file_type.is_block_device() {
        DeviceKind::Block
    } else {
        return None;
    };
    let rdev = meta.rdev();
    Some(DeviceNode {
        path: path.to_path_buf(),
        kind,
        major: rustix::fs::major(rdev),
        minor: rustix::fs::minor(rdev),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
    })
}

/// Every device node below `dir`, as Docker collects them for a directory: symbolic links and
/// other files are passed over, and so are entries that vanish or cannot be read meanwhile.
fn walk(dir: &Path, out: &mut Vec<DeviceNode>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        if SKIPPED_DEV_ENTRIES.iter().any(|s| entry.file_name() == *s) {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else { continue };
        if meta.is_dir() {
            walk(&path, out);
        } else if let Some(node) = node(&path, &meta) {
            out.push(node);
        }
    }
}

/// Looks up the device nodes at `paths` (see [`device_paths`]): a device (a symbolic link is
/// followed) or every device below a directory.
pub fn resolve_devices(paths: &[PathBuf]) -> Result<ResolvedDevices, SpecError> {
    let mut resolved = ResolvedDevices::new();
    for path in paths {
        let meta = fs::metadata(path)
            .map_err(|source| SpecError::DeviceUnreadable { path: path.clone(), source })?;
        let nodes = if meta.is_dir() {
            let mut nodes = Vec::new();
            walk(path, &mut nodes);
            nodes
        } else {
            vec![node(path, &meta).ok_or_else(|| SpecError::NotADevice { path: path.clone() })?]
        };
        resolved.insert(path.clone(), nodes);
    }
    Ok(resolved)
}
