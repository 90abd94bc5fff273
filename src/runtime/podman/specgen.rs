//! The OCI runtime spec ecsd builds → Podman's `SpecGenerator` (libpod REST API v4).
//!
//! libpod cannot create a container from a whole OCI spec, only from a SpecGenerator, which
//! Podman then turns into its own spec. [`to_specgen`] is the pure, golden-tested mapping: every
//! field ecsd sets either has a SpecGenerator counterpart that yields the same `config.json`, or
//! the container is refused with a [`SpecgenError`] naming the field. Nothing is dropped
//! silently.
//!
//! Where Podman would add something of its own, the mapping turns it off: the image's entrypoint
//! and command (the spec's `args` are complete), seccomp (ecsd sets none), the image's volumes
//! and health check, the masked paths ecsd does not mask, and containers.conf's default
//! ulimits (by always sending `nproc`, which Podman would otherwise raise past what a runtime
//! without CAP_SYS_RESOURCE may set).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, LinuxResources, Mount, Spec};
use serde::Serialize;

/// The spec annotation that asks for stdin to be kept open (`spec::ANNOTATION_INTERACTIVE`).
pub const ANNOTATION_INTERACTIVE: &str = "ecsd.interactive";

/// The paths Podman 4.3 masks by default (containers/common `DefaultMaskedPaths`).
const PODMAN_MASKED: [&str; 11] = [
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/fs/selinux",
    "/sys/dev/block",
];
/// The paths Podman 4.3 makes read-only by default (`DefaultReadOnlyPaths`).
const PODMAN_READONLY: [&str; 6] =
    ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// A spec field Podman's create API has no way to express.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecgenError {
    /// A field is set that the SpecGenerator cannot carry.
    #[error(
        "the Podman runtime cannot run this container: OCI spec field {field} cannot be mapped ({reason})"
    )]
    Unmappable { field: String, reason: &'static str },
    /// A field the mapping needs is absent.
    #[error("the Podman runtime cannot run this container: OCI spec field {field} is missing")]
    Missing { field: &'static str },
}

impl SpecgenError {
    fn unmappable(field: impl Into<String>, reason: &'static str) -> Self {
        SpecgenError::Unmappable { field: field.into(), reason }
    }
}

/// A soft and hard limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RlimitPair {
    pub soft: u64,
    pub hard: u64,
}

/// What the mapping needs besides the spec.
#[derive(Debug, Clone, Copy)]
pub struct SpecgenInput<'a> {
    /// The container's name in Podman (ecsd's container id).
    pub name: &'a str,
    /// The image to create the container from (its id, or a name Podman resolves).
    pub image: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    /// The file conmon writes the container's output to (k8s-file format).
    pub log_path: &'a Path,
    /// The process count limit when the spec sets none: the runtime's own (see the module doc).
    pub nproc: RlimitPair,
    /// The capabilities Podman gives a container by default (containers.conf
    /// `default_capabilities`), as `CAP_` names.
    pub default_capabilities: &'a [&'a str],
}

/// Podman's `SpecGenerator`, the fields ecsd sets. Field names are libpod's JSON names.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SpecGenerator {
    pub name: String,
    pub image: String,
    /// The whole command line (`process.args`); with an entrypoint given, Podman adds neither
    /// the image's entrypoint nor its command.
    pub entrypoint: Vec<String>,
    pub env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub terminal: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stdin: bool,
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    pub log_configuration: LogConfig,
    /// Never systemd mode, whatever the command is.
    pub systemd: &'static str,
    pub pidns: Namespace,
    pub utsns: Namespace,
    pub ipcns: Namespace,
    pub netns: Namespace,
    pub cgroupns: Namespace,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctl: BTreeMap<String, String>,
    /// Image VOLUMEs get no anonymous volumes (ecsd's containerd runtime creates none either).
    pub image_volume_mode: &'static str,
    pub mounts: Vec<Mount>,
    pub work_dir: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rootfs_propagation: Option<String>,
    pub user: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apparmor_profile: Option<String>,
    /// `unconfined`: ecsd's specs carry no seccomp filter.
    pub seccomp_profile_path: &'static str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub no_new_privileges: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub read_only_filesystem: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub umask: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mask: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unmask: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_parent: Option<String>,
    /// `no-conmon`: conmon stays in the service's cgroup. Under the container's parent it
    /// would outlive the container (exec sessions' conmons linger for seconds), so the
    /// container's and the task's cgroups could not be removed with them.
    pub cgroups_mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_limits: Option<LinuxResources>,
    pub r_limits: Vec<Rlimit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oom_score_adj: Option<i32>,
    /// `NONE`: the image's HEALTHCHECK is not Podman's to run (it needs systemd timers);
    /// ecsd runs the task definition's health checks itself.
    pub healthconfig: HealthConfig,
}

/// A libpod namespace choice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Namespace {
    pub nsmode: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub value: String,
}

impl Namespace {
    fn mode(nsmode: &'static str) -> Self {
        Namespace { nsmode, value: String::new() }
    }

    fn path(path: &Path) -> Self {
        Namespace { nsmode: "path", value: path.display().to_string() }
    }
}

impl Default for Namespace {
    fn default() -> Self {
        Namespace::mode("private")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LogConfig {
    pub driver: &'static str,
    pub path: PathBuf,
}

/// An rlimit as libpod names it: lower case, without `RLIMIT_`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rlimit {
    #[serde(rename = "type")]
    pub kind: String,
    pub hard: u64,
    pub soft: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthConfig {
    #[serde(rename = "Test")]
    pub test: Vec<String>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig { test: vec!["NONE".to_owned()] }
    }
}

/// Maps `spec` to the SpecGenerator that makes Podman run the same container, or names the
/// first field it cannot map.
pub fn to_specgen(spec: &Spec, input: &SpecgenInput<'_>) -> Result<SpecGenerator, SpecgenError> {
    if spec.hooks().is_some() {
        return Err(SpecgenError::unmappable("hooks", "libpod runs only its own OCI hooks"));
    }
    if spec.domainname().as_deref().is_some_and(|d| !d.is_empty()) {
        return Err(SpecgenError::unmappable("domainname", "SpecGenerator has no domain name"));
    }
    let root = spec.root().as_ref().ok_or(SpecgenError::Missing { field: "root" })?;
    let process = spec.process().as_ref().ok_or(SpecgenError::Missing { field: "process" })?;
    let linux = spec.linux().as_ref().ok_or(SpecgenError::Missing { field: "linux" })?;

    let mut g = SpecGenerator {
        name: input.name.to_owned(),
        image: input.image.to_owned(),
        labels: input.labels.clone(),
        log_configuration: LogConfig { driver: "k8s-file", path: input.log_path.to_owned() },
        systemd: "false",
        image_volume_mode: "ignore",
        seccomp_profile_path: "unconfined",
        cgroups_mode: "no-conmon",
        read_only_filesystem: root.readonly() == Some(true),
        hostname: spec.hostname().clone().filter(|h| !h.is_empty()),
        ..Default::default()
    };
    map_process(process, input, &mut g)?;
    if let Some(annotations) = spec.annotations() {
        g.stdin = annotations.get(ANNOTATION_INTERACTIVE).is_some_and(|v| v == "true");
        g.annotations = annotations.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    }
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        if m.typ().as_deref().is_none_or(str::is_empty) {
            return Err(SpecgenError::unmappable(format!("mounts[{i}].type"), "libpod needs a mount type"));
        }
        g.mounts.push(m.clone());
    }
    map_linux(linux, &mut g)?;
    Ok(g)
}

fn map_process(
    process: &oci_spec::runtime::Process,
    input: &SpecgenInput<'_>,
    g: &mut SpecGenerator,
) -> Result<(), SpecgenError> {
    let args = process.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(SpecgenError::Missing { field: "process.args" });
    }
    if process.command_line().is_some() {
        return Err(SpecgenError::unmappable("process.commandLine", "Windows only"));
    }
    g.entrypoint = args;
    g.terminal = process.terminal() == Some(true);
    for (i, var) in process.env().iter().flatten().enumerate() {
        let (k, v) = var.split_once('=').ok_or_else(|| {
            SpecgenError::unmappable(format!("process.env[{i}]"), "libpod takes variables as NAME=value")
        })?;
        g.env.insert(k.to_owned(), v.to_owned());
    }
    g.work_dir = process.cwd().display().to_string();

    let user = process.user();
    g.user = format!("{}:{}", user.uid(), user.gid());
    g.groups = user.additional_gids().iter().flatten().map(u32::to_string).collect();
    g.umask = user.umask().map(|m| format!("{m:04o}"));
    if user.username().as_deref().is_some_and(|u| !u.is_empty()) {
        return Err(SpecgenError::unmappable("process.user.username", "Windows only"));
    }

    let bounding: BTreeSet<String> = match process.capabilities() {
        Some(caps) => {
            let bounding: BTreeSet<String> = caps.bounding().iter().flatten().map(cap_name).collect();
            let same = |set: &Option<oci_spec::runtime::Capabilities>| {
                set.iter().flatten().map(cap_name).collect::<BTreeSet<_>>() == bounding
            };
            // libpod gives root the bounding set as effective and permitted set; other
            // users get only what is added (see below).
            if !same(caps.effective()) || !same(caps.permitted()) {
                return Err(SpecgenError::unmappable(
                    "process.capabilities",
                    "libpod sets the effective and permitted sets to the bounding set",
                ));
            }
            if caps.inheritable().as_ref().is_some_and(|s| !s.is_empty()) {
                return Err(SpecgenError::unmappable(
                    "process.capabilities.inheritable",
                    "libpod sets it itself",
                ));
            }
            if caps.ambient().as_ref().is_some_and(|s| !s.is_empty()) {
                return Err(SpecgenError::unmappable(
                    "process.capabilities.ambient",
                    "libpod sets it itself",
                ));
            }
            bounding
        }
        None => BTreeSet::new(),
    };
    if user.uid() == 0 {
        g.cap_drop = vec!["ALL".to_owned()];
        g.cap_add = bounding.into_iter().collect();
    } else {
        // For a user other than root, libpod makes every capability in cap_add ambient (so
        // it survives exec), where runc and Docker let the kernel clear them at exec. So the
        // bounding set is reached from Podman's defaults by dropping only.
        let defaults: BTreeSet<String> = input.default_capabilities.iter().map(|c| (*c).to_owned()).collect();
        if let Some(extra) = bounding.difference(&defaults).next() {
            return Err(SpecgenError::unmappable(
                format!("process.capabilities ({extra})"),
                "Podman would make a capability added for a user other than root ambient",
            ));
        }
        g.cap_drop = defaults.difference(&bounding).cloned().collect();
    }

    let mut nproc = false;
    for (i, r) in process.rlimits().iter().flatten().enumerate() {
        let name = serde_json::to_value(r.typ())
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .and_then(|s| s.strip_prefix("RLIMIT_").map(str::to_ascii_lowercase))
            .ok_or_else(|| {
                SpecgenError::unmappable(format!("process.rlimits[{i}].type"), "unknown rlimit")
            })?;
        nproc |= name == "nproc";
        g.r_limits.push(Rlimit { kind: name, hard: r.hard(), soft: r.soft() });
    }
    if !nproc {
        g.r_limits.push(Rlimit { kind: "nproc".to_owned(), hard: input.nproc.hard, soft: input.nproc.soft });
    }
    g.no_new_privileges = process.no_new_privileges() == Some(true);
    g.apparmor_profile = process.apparmor_profile().clone().filter(|p| !p.is_empty());
    if process.selinux_label().as_deref().is_some_and(|l| !l.is_empty()) {
        return Err(SpecgenError::unmappable(
            "process.selinuxLabel",
            "libpod takes SELinux options, not a label",
        ));
    }
    g.oom_score_adj = process.oom_score_adj();
    if process.scheduler().is_some() {
        return Err(SpecgenError::unmappable("process.scheduler", "SpecGenerator has no scheduler"));
    }
    if process.io_priority().is_some() {
        return Err(SpecgenError::unmappable("process.ioPriority", "SpecGenerator has no I/O priority"));
    }
    if process.exec_cpu_affinity().is_some() {
        return Err(SpecgenError::unmappable(
            "process.execCPUAffinity",
            "SpecGenerator has no exec affinity",
        ));
    }
    Ok(())
}

/// A capability as libpod names it: `CAP_CHOWN`.
fn cap_name(c: &oci_spec::runtime::Capability) -> String {
    let name = c.to_string();
    if name.starts_with("CAP_") { name } else { format!("CAP_{name}") }
}

fn map_linux(linux: &oci_spec::runtime::Linux, g: &mut SpecGenerator) -> Result<(), SpecgenError> {
    if linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
        || linux.gid_mappings().as_ref().is_some_and(|m| !m.is_empty())
    {
        return Err(SpecgenError::unmappable("linux.uidMappings", "user namespaces are not mapped"));
    }
    if linux.devices().as_ref().is_some_and(|d| !d.is_empty()) {
        return Err(SpecgenError::unmappable(
            "linux.devices",
            "libpod adds devices by host path, which the spec does not keep",
        ));
    }
    if linux.seccomp().is_some() {
        return Err(SpecgenError::unmappable("linux.seccomp", "libpod takes a seccomp profile file only"));
    }
    if linux.mount_label().as_deref().is_some_and(|l| !l.is_empty()) {
        return Err(SpecgenError::unmappable(
            "linux.mountLabel",
            "libpod takes SELinux options, not a label",
        ));
    }
    if linux.intel_rdt().is_some() {
        return Err(SpecgenError::unmappable("linux.intelRdt", "SpecGenerator has no RDT settings"));
    }
    if linux.personality().is_some() {
        return Err(SpecgenError::unmappable("linux.personality", "not mapped"));
    }

    g.sysctl = linux.sysctl().iter().flatten().map(|(k, v)| (k.clone(), v.clone())).collect();
    g.resource_limits = linux.resources().clone();
    if let Some(path) = linux.cgroups_path() {
        let text = path.display().to_string();
        if !text.starts_with('/') || text.contains(':') {
            return Err(SpecgenError::unmappable(
                "linux.cgroupsPath",
                "libpod takes an absolute cgroupfs parent only",
            ));
        }
        // Podman puts the container in <parent>/libpod-<id>; limits of the task's cgroup
        // above it apply, and stats read the parent (v1 counters are hierarchical).
        g.cgroup_parent = Some(text);
    }
    g.rootfs_propagation = linux.rootfs_propagation().clone();

    // A namespace left out of the spec is the host's; listed without a path, a new one.
    let (mut pid, mut uts, mut ipc, mut net, mut cgroup) = (
        Namespace::mode("host"),
        Namespace::mode("host"),
        Namespace::mode("host"),
        Namespace::mode("host"),
        Namespace::mode("host"),
    );
    let mut mount = false;
    for (i, ns) in linux.namespaces().iter().flatten().enumerate() {
        let choice = match ns.path() {
            Some(p) => Namespace::path(p),
            None => Namespace::mode("private"),
        };
        match ns.typ() {
            LinuxNamespaceType::Mount if ns.path().is_none() => mount = true,
            LinuxNamespaceType::Pid => pid = choice,
            LinuxNamespaceType::Uts => uts = choice,
            LinuxNamespaceType::Ipc => ipc = choice,
            // A new, empty network namespace: only loopback, as libpod's `none`.
            LinuxNamespaceType::Network if ns.path().is_none() => net = Namespace::mode("none"),
            LinuxNamespaceType::Network => net = choice,
            LinuxNamespaceType::Cgroup => cgroup = choice,
            _ => {
                return Err(SpecgenError::unmappable(
                    format!("linux.namespaces[{i}]"),
                    "only new mount namespaces and pid, uts, ipc, network, cgroup namespaces are mapped",
                ));
            }
        }
    }
    if !mount {
        return Err(SpecgenError::Missing { field: "linux.namespaces[mount]" });
    }
    (g.pidns, g.utsns, g.ipcns, g.netns, g.cgroupns) = (pid, uts, ipc, net, cgroup);

    let masked: BTreeSet<&str> = linux.masked_paths().iter().flatten().map(String::as_str).collect();
    let readonly: BTreeSet<&str> = linux.readonly_paths().iter().flatten().map(String::as_str).collect();
    if masked.is_empty() && readonly.is_empty() {
        g.unmask = vec!["ALL".to_owned()];
    } else {
        if let Some(extra) = readonly.iter().find(|p| !PODMAN_READONLY.contains(p)) {
            return Err(SpecgenError::unmappable(
                format!("linux.readonlyPaths ({extra})"),
                "libpod cannot add read-only paths to its own",
            ));
        }
        g.mask = masked.iter().filter(|p| !PODMAN_MASKED.contains(p)).map(|p| (*p).to_owned()).collect();
        g.unmask = PODMAN_MASKED
            .iter()
            .chain(PODMAN_READONLY.iter())
            .filter(|p| !masked.contains(*p) && !readonly.contains(*p))
            .map(|p| (*p).to_owned())
            .collect();
    }
    Ok(())
}
