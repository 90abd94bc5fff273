//! Task definition + image config → OCI runtime spec.
//!
//! [`build`] is a pure function, golden-tested: what it needs from the host (namespace paths,
//! volume directories, device numbers, the daemon's rlimits, the init binary) comes in as input.
//! The only I/O of the module is in two small helpers the engine calls first and passes the
//! results of: [`host_limits`] and [`resolve_devices`].
//!
//! The translation is the one a container gets on an ECS container instance: the ECS agent's
//! reading of the container definition, then Docker's defaults and merge rules (capabilities,
//! masked paths, device rules, `/dev/shm`, user resolution, `Entrypoint`/`Cmd`), then what runc
//! needs and what this host allows (rlimits are clamped to the daemon's hard limits).
//!
//! This module must not talk to containerd, write files or log: the engine does, with what
//! [`BuildOutput`] reports.

mod error;
mod files;
mod host;
mod linux;
mod mounts;
mod process;

#[cfg(test)]
mod golden;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Capability, PosixRlimitType, Process, Root, Spec};

use crate::model::shapes::{ContainerDefinition, TaskDefinition};
use crate::runtime::ImageConfig;

pub use error::SpecError;
pub use files::{hosts_file, network_resolv_conf, resolv_conf};
pub use host::{device_paths, host_limits, resolve_devices};
pub use process::stop_signal;

/// The OCI runtime spec version written in `ociVersion` (runc 1.1 implements 1.1.0).
pub const OCI_VERSION: &str = "1.1.0";
/// Where the init binary ([`HostLimits::init`]) appears inside a container that asks for
/// `initProcessEnabled`; it becomes `args[0]`, followed by `--` and the container's command.
pub const INIT_PATH: &str = "/sbin/ecsd-init";
/// Spec annotation set to `"true"` for a container with `interactive` (stdin kept open): the
/// runtime, not the spec, wires stdin, so this tells it to.
pub const ANNOTATION_INTERACTIVE: &str = "ecsd.interactive";

/// Labels the ECS agent puts on every container; [`labels`] adds them and task definitions
/// cannot override them.
pub const LABEL_TASK_ARN: &str = "com.amazonaws.ecs.task-arn";
pub const LABEL_CONTAINER_NAME: &str = "com.amazonaws.ecs.container-name";
pub const LABEL_FAMILY: &str = "com.amazonaws.ecs.task-definition-family";
pub const LABEL_REVISION: &str = "com.amazonaws.ecs.task-definition-version";
pub const LABEL_CLUSTER: &str = "com.amazonaws.ecs.cluster";
/// ecsd's own label: the task id, so containerd alone tells which task a container is of.
pub const LABEL_TASK_ID: &str = "ecsd.task-id";

/// How a task is networked, which decides the container's network and UTS namespaces.
pub use crate::model::network::NetworkMode;

/// What a task's containers share, decided by the engine before any container is built.
#[derive(Debug, Clone, Copy)]
pub struct TaskInput<'a> {
    pub task_arn: &'a str,
    pub task_id: &'a str,
    /// The cluster's name (not its ARN), as the `com.amazonaws.ecs.cluster` label carries it.
    pub cluster: &'a str,
    /// The whole registered task definition: volumesFrom sources, pidMode, ipcMode.
    pub definition: &'a TaskDefinition,
    pub network_mode: NetworkMode,
    /// The task's network namespace. `None` in host mode means the host's; in any other mode
    /// it means a new, empty namespace (loopback only), which the `none` mode also gets when
    /// the engine passes no path.
    pub netns: Option<&'a Path>,
    /// The task's PID namespace; required when the task definition has `pidMode: task`.
    pub pid_ns: Option<&'a Path>,
    /// The task's IPC namespace; required when the task definition has `ipcMode: task`.
    pub ipc_ns: Option<&'a Path>,
    /// A host directory (a tmpfs) that the containers of an `ipcMode: task` task share as
    /// `/dev/shm`. Without it each container gets its own `/dev/shm`, and only System V IPC
    /// is shared.
    pub shm: Option<&'a Path>,
    /// Task volume name → host directory: `host.sourcePath`, or a task-scoped directory the
    /// engine created.
    pub volumes: &'a BTreeMap<String, PathBuf>,
    /// The container's cgroup, e.g. `/ecs/<task id>/<container name>`.
    pub cgroups_path: &'a str,
}

/// One container of the task, with what the engine resolved for it.
#[derive(Debug, Clone, Copy)]
pub struct ContainerInput<'a> {
    /// The container definition with RunTask overrides already merged.
    pub definition: &'a ContainerDefinition,
    pub image: &'a ImageConfig,
    /// The hostname the container gets when its definition has none: in awsvpc mode the ENI's
    /// private DNS name, in bridge and none mode a name the engine picks (Docker uses the first
    /// 12 characters of the container id), in host mode the host's own name (then only
    /// `HOSTNAME` carries it: the container shares the host's UTS namespace).
    pub hostname: &'a str,
    /// The image's `/etc/passwd` and `/etc/group`, if it has them.
    pub passwd: Option<&'a str>,
    pub group: Option<&'a str>,
    /// Variables read from the container's `environmentFiles`, in file order; the definition's
    /// `environment` wins over them.
    pub env_files: &'a [(String, String)],
    /// Variables the engine injects (metadata URIs, credentials URI, `AWS_REGION`...). They win
    /// over the image and the definition, except `AWS_REGION` and `AWS_DEFAULT_REGION`, which
    /// are added only when neither is set already (agent 1.104 behaviour).
    pub extra_env: &'a [(String, String)],
    /// Host files bind-mounted over the container's own.
    pub files: &'a ContainerFiles,
    /// Device nodes resolved on the host, keyed by the path asked for: see [`device_paths`]
    /// and [`resolve_devices`].
    pub devices: &'a ResolvedDevices,
}

/// Host files written by the engine for one container; the ones present are bind-mounted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerFiles {
    pub hosts: Option<PathBuf>,
    pub resolv_conf: Option<PathBuf>,
    pub hostname: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Char,
    Block,
}

/// A device node on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    pub path: PathBuf,
    pub kind: DeviceKind,
    pub major: u32,
    pub minor: u32,
    /// Permission bits of the node, which the container's copy gets.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Host path asked for → the device nodes found there (one for a device, all the nodes
/// below a directory).
pub type ResolvedDevices = BTreeMap<PathBuf, Vec<DeviceNode>>;

/// The resource limits an ECS `ulimits` entry can name, plus `as`, which ECS does not offer
/// but the daemon has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RlimitKind {
    Core,
    Cpu,
    Data,
    Fsize,
    Locks,
    Memlock,
    Msgqueue,
    Nice,
    Nofile,
    Nproc,
    Rss,
    Rtprio,
    Rttime,
    Sigpending,
    Stack,
    As,
}

impl RlimitKind {
    pub const ALL: [RlimitKind; 16] = [
        Self::Core,
        Self::Cpu,
        Self::Data,
        Self::Fsize,
        Self::Locks,
        Self::Memlock,
        Self::Msgqueue,
        Self::Nice,
        Self::Nofile,
        Self::Nproc,
        Self::Rss,
        Self::Rtprio,
        Self::Rttime,
        Self::Sigpending,
        Self::Stack,
        Self::As,
    ];

    /// The lower-case name ECS and Docker use (`nofile`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Core => "core",
            Self::Cpu => "cpu",
            Self::Data => "data",
            Self::Fsize => "fsize",
            Self::Locks => "locks",
            Self::Memlock => "memlock",
            Self::Msgqueue => "msgqueue",
            Self::Nice => "nice",
            Self::Nofile => "nofile",
            Self::Nproc => "nproc",
            Self::Rss => "rss",
            Self::Rtprio => "rtprio",
            Self::Rttime => "rttime",
            Self::Sigpending => "sigpending",
            Self::Stack => "stack",
            Self::As => "as",
        }
    }

    /// The kind an ECS `ulimits[].name` names; `as` is not one of them.
    pub fn from_ulimit_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| *k != Self::As && k.name() == name)
    }

    fn oci(self) -> PosixRlimitType {
        match self {
            Self::Core => PosixRlimitType::RlimitCore,
            Self::Cpu => PosixRlimitType::RlimitCpu,
            Self::Data => PosixRlimitType::RlimitData,
            Self::Fsize => PosixRlimitType::RlimitFsize,
            Self::Locks => PosixRlimitType::RlimitLocks,
            Self::Memlock => PosixRlimitType::RlimitMemlock,
            Self::Msgqueue => PosixRlimitType::RlimitMsgqueue,
            Self::Nice => PosixRlimitType::RlimitNice,
            Self::Nofile => PosixRlimitType::RlimitNofile,
            Self::Nproc => PosixRlimitType::RlimitNproc,
            Self::Rss => PosixRlimitType::RlimitRss,
            Self::Rtprio => PosixRlimitType::RlimitRtprio,
            Self::Rttime => PosixRlimitType::RlimitRttime,
            Self::Sigpending => PosixRlimitType::RlimitSigpending,
            Self::Stack => PosixRlimitType::RlimitStack,
            Self::As => PosixRlimitType::RlimitAs,
        }
    }
}

/// A soft and hard limit; `u64::MAX` is unlimited (`RLIM_INFINITY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub soft: u64,
    pub hard: u64,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: u64| if v == u64::MAX { "unlimited".to_owned() } else { v.to_string() };
        write!(f, "soft {} hard {}", show(self.soft), show(self.hard))
    }
}

/// What the host allows and provides, the same for every container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostLimits {
    /// The hard limits a container's rlimits must stay under: the container runtime's own,
    /// for which the daemon's ([`host_limits`]) stand in (they are the same when ecsd starts
    /// containerd itself). Root on this kind of host lacks CAP_SYS_RESOURCE, so a spec rlimit
    /// above them fails task creation with EPERM. A kind not in the map is not clamped.
    pub rlimits: BTreeMap<RlimitKind, Limit>,
    /// The capabilities a container can be given: those of the runtime, for which the
    /// daemon's effective set stands in, as Docker reads its own. Privileged containers and
    /// `add: ["ALL"]` get these, Docker's defaults are cut down to them, and adding another
    /// one is refused (runc would fail with EPERM). `None` means every capability.
    pub capabilities: Option<Vec<Capability>>,
    /// A statically linked init (tini, catatonit) to bind-mount at [`INIT_PATH`] for
    /// containers with `initProcessEnabled`; without it such containers are refused.
    pub init: Option<PathBuf>,
}

/// A ulimit lowered to what the host allows, for the engine to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClampedUlimit {
    pub index: usize,
    pub kind: RlimitKind,
    pub requested: Limit,
    pub applied: Limit,
}

impl fmt::Display for ClampedUlimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ulimits[{}] ({}) {} lowered to {}, the most this host allows",
            self.index,
            self.kind.name(),
            self.requested,
            self.applied
        )
    }
}

/// The spec of one container and what the engine should know about it.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildOutput {
    pub spec: Spec,
    /// Ulimits lowered to the host's hard limits.
    pub clamped: Vec<ClampedUlimit>,
    /// The process runs under the init at [`INIT_PATH`] (`initProcessEnabled`).
    pub init: bool,
    /// The signal that asks the container to stop (see [`stop_signal`]), checked here so
    /// that a bad image `StopSignal` refuses the container at creation, as Docker does.
    pub stop_signal: i32,
}

/// What every part of the translation looks at.
struct Ctx<'a> {
    name: &'a str,
    task: &'a TaskInput<'a>,
    container: &'a ContainerInput<'a>,
    host: &'a HostLimits,
    def: &'a ContainerDefinition,
    privileged: bool,
}

impl Ctx<'_> {
    fn linux_parameters(&self) -> Option<&crate::model::shapes::LinuxParameters> {
        self.def.linux_parameters.as_ref()
    }
}

/// The OCI runtime spec of one container of a task.
pub fn build(
    task: &TaskInput<'_>,
    container: &ContainerInput<'_>,
    host: &HostLimits,
) -> Result<BuildOutput, SpecError> {
    let def = container.definition;
    let cx = Ctx {
        name: def.name.as_deref().unwrap_or_default(),
        task,
        container,
        host,
        def,
        privileged: def.privileged == Some(true),
    };
    let terminal = def.pseudo_terminal == Some(true);
    let stop_signal = stop_signal(container)?;
    let security = process::security_options(&cx)?;

    let mut args = process::args(&cx)?;
    let init = def.linux_parameters.as_ref().and_then(|l| l.init_process_enabled) == Some(true);
    let init_source = if init {
        let path = host.init.as_deref().ok_or_else(|| SpecError::NoInit { container: cx.name.to_owned() })?;
        args.splice(0..0, [INIT_PATH.to_owned(), "--".to_owned()]);
        Some(path)
    } else {
        None
    };
    let (rlimits, clamped) = process::rlimits(&cx)?;
    let namespaces = linux::namespaces(&cx)?;

    let mut process = Process::default();
    process
        .set_terminal(Some(terminal))
        .set_user(process::user(&cx)?)
        .set_args(Some(args))
        .set_env(Some(process::env(&cx, terminal)?))
        .set_cwd(PathBuf::from(process::cwd(&cx)?))
        .set_capabilities(Some(process::capabilities(&cx)?))
        .set_rlimits(Some(rlimits))
        .set_no_new_privileges(security.no_new_privileges.then_some(true))
        .set_apparmor_profile(security.apparmor_profile)
        // Docker sets 0 explicitly: left out, the process would inherit the shim's score,
        // which containerd lowers to protect itself from the OOM killer.
        .set_oom_score_adj(Some(0));

    let mut root = Root::default();
    root.set_path(PathBuf::from("rootfs")).set_readonly(Some(def.readonly_root_filesystem == Some(true)));

    let mut annotations = HashMap::new();
    if def.interactive == Some(true) {
        annotations.insert(ANNOTATION_INTERACTIVE.to_owned(), "true".to_owned());
    }

    let mut spec = Spec::default();
    spec.set_version(OCI_VERSION.to_owned())
        .set_root(Some(root))
        .set_mounts(Some(mounts::mounts(&cx, &namespaces, init_source)?))
        .set_process(Some(process))
        .set_hostname(namespaces.uts.then(|| linux::hostname(&cx).to_owned()).filter(|h| !h.is_empty()))
        .set_annotations((!annotations.is_empty()).then_some(annotations))
        .set_linux(Some(linux::linux(&cx, &namespaces)?));
    Ok(BuildOutput { spec, clamped, init, stop_signal })
}

/// Takes the container out of cgroup management: no `cgroupsPath` and no `linux.resources`
/// (limits and device rules). For a rootless ecsd without cgroups of its own (cgroup v1, or v2
/// without delegation), where runc fails on any limit it cannot apply instead of ignoring it;
/// the container then shares the cgroup of the runtime that starts it.
pub fn without_cgroups(spec: &mut Spec) {
    if let Some(linux) = spec.linux_mut() {
        linux.set_cgroups_path(None).set_resources(None);
    }
}

/// Fits a host-network container to a user namespace that does not own the host's network
/// namespace (a rootless ecsd): sysfs can only be mounted by the owner of the network
/// namespace, so `/sys` becomes a read-only recursive bind of ecsd's own (which brings
/// `/sys/fs/cgroup` along, so the cgroup mount goes). Containers with a network namespace of
/// their own keep their sysfs.
pub fn for_user_namespace(spec: &mut Spec) {
    let own_netns = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| ns.iter().any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Network));
    if own_netns {
        return;
    }
    let Some(mounts) = spec.mounts_mut() else { return };
    mounts.retain(|m| m.typ().as_deref() != Some("cgroup"));
    for m in mounts.iter_mut().filter(|m| m.typ().as_deref() == Some("sysfs")) {
        m.set_typ(Some("bind".into()))
            .set_source(Some(PathBuf::from("/sys")))
            .set_options(Some(["rbind", "nosuid", "noexec", "nodev", "ro"].map(String::from).to_vec()));
    }
}

/// The container's labels: its `dockerLabels` plus those the ECS agent adds and ecsd's task id,
/// which win, so the runtime alone can rebuild the picture.
pub fn labels(task: &TaskInput<'_>, container: &ContainerInput<'_>) -> BTreeMap<String, String> {
    let def = container.definition;
    let mut labels = def.docker_labels.clone().unwrap_or_default();
    labels.insert(LABEL_TASK_ARN.to_owned(), task.task_arn.to_owned());
    labels.insert(LABEL_CONTAINER_NAME.to_owned(), def.name.clone().unwrap_or_default());
    labels.insert(LABEL_FAMILY.to_owned(), task.definition.family.clone().unwrap_or_default());
    labels.insert(LABEL_REVISION.to_owned(), task.definition.revision.to_string());
    labels.insert(LABEL_CLUSTER.to_owned(), task.cluster.to_owned());
    labels.insert(LABEL_TASK_ID.to_owned(), task.task_id.to_owned());
    labels
}
