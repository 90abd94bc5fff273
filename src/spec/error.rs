use std::io;
use std::path::PathBuf;

/// Why a container's spec cannot be built. Every message names the container and the field of
/// its definition (or of its image) at fault, and says what would work.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error(
        "container '{container}': nothing to run: entryPoint and command are empty and the image has no Entrypoint or Cmd; set command in the container definition"
    )]
    NoCommand { container: String },
    #[error("container '{container}': {field} has no name")]
    UnnamedVariable { container: String, field: String },
    #[error("container '{container}': {field} '{path}' is not an absolute path")]
    RelativePath { container: String, field: String, path: String },
    #[error(
        "container '{container}': {field} '{spec}' names user '{name}', which is not in the image's /etc/passwd; use a numeric uid or a user the image defines"
    )]
    UnknownUser { container: String, field: &'static str, spec: String, name: String },
    #[error(
        "container '{container}': {field} '{spec}' names group '{name}', which is not in the image's /etc/group; use a numeric gid or a group the image defines"
    )]
    UnknownGroup { container: String, field: &'static str, spec: String, name: String },
    #[error("container '{container}': {field} '{spec}' has {what} {value}, outside 0 to 2147483647")]
    IdOutOfRange { container: String, field: &'static str, spec: String, what: &'static str, value: String },
    #[error(
        "container '{container}': the image's StopSignal '{signal}' is not a signal; use a name such as SIGTERM or a number from 1 to 64"
    )]
    BadStopSignal { container: String, signal: String },
    #[error("container '{container}': {field} '{name}' is not a Linux capability")]
    UnknownCapability { container: String, field: String, name: String },
    #[error(
        "container '{container}': {field} '{name}' is not available on this host: the container runtime does not hold it"
    )]
    UnavailableCapability { container: String, field: String, name: String },
    #[error("container '{container}': ulimits[{index}] names '{name}', which is not a ulimit ECS supports")]
    UnknownUlimit { container: String, index: usize, name: String },
    #[error(
        "container '{container}': ulimits[{index}] ({name}) repeats ulimits[{first}]; each ulimit may appear once"
    )]
    RepeatedUlimit { container: String, index: usize, first: usize, name: String },
    #[error(
        "container '{container}': ulimits[{index}] ({name}) has {field} {value}; limits must be -1 (unlimited) or more"
    )]
    NegativeUlimit { container: String, index: usize, name: String, field: &'static str, value: i32 },
    #[error(
        "container '{container}': ulimits[{index}] ({name}) has softLimit {soft} above its hardLimit {hard}"
    )]
    SoftAboveHard { container: String, index: usize, name: String, soft: i32, hard: i32 },
    #[error("container '{container}': mountPoints[{index}] has no {field}")]
    IncompleteMountPoint { container: String, index: usize, field: &'static str },
    #[error(
        "container '{container}': mountPoints[{index}] names volume '{volume}', which is not a volume of this task"
    )]
    UnknownVolume { container: String, index: usize, volume: String },
    #[error(
        "container '{container}': volumesFrom[{index}] names container '{source_container}', which is not in the task definition"
    )]
    UnknownVolumesFromSource { container: String, index: usize, source_container: String },
    #[error("container '{container}': volumesFrom[{index}] leads back to a container on the way: {chain}")]
    VolumesFromCycle { container: String, index: usize, chain: String },
    #[error("container '{container}': {first} and {second} both mount {destination}")]
    DuplicateMount { container: String, first: String, second: String, destination: String },
    #[error("container '{container}': {field} is {value}; it must be {allowed}")]
    OutOfRange { container: String, field: String, value: i32, allowed: &'static str },
    #[error(
        "container '{container}': linuxParameters.maxSwap needs a hard memory limit; set memory on the container"
    )]
    SwapWithoutMemory { container: String },
    #[error("container '{container}': linuxParameters.devices[{index}] has no hostPath")]
    DeviceWithoutPath { container: String, index: usize },
    #[error(
        "container '{container}': linuxParameters.devices[{index}].permissions[{permission}] is '{value}'; use read, write or mknod"
    )]
    BadDevicePermission { container: String, index: usize, permission: usize, value: String },
    #[error(
        "container '{container}': linuxParameters.devices[{index}] ({path}) was not resolved on the host; pass device_paths() through resolve_devices() first"
    )]
    UnresolvedDevice { container: String, index: usize, path: String },
    #[error(
        "container '{container}': privileged needs the host's devices, which were not resolved; pass device_paths() through resolve_devices() first"
    )]
    UnresolvedHostDevices { container: String },
    #[error("container '{container}': systemControls[{index}] has no {field}")]
    IncompleteSystemControl { container: String, index: usize, field: &'static str },
    #[error(
        "container '{container}': systemControls[{index}] ({namespace}) cannot be set in host network mode: net.* parameters would change the host's own network stack"
    )]
    NetSysctlOnHostNetwork { container: String, index: usize, namespace: String },
    #[error(
        "container '{container}': systemControls[{index}] ({namespace}) cannot be set with ipcMode 'host': it would change the host's IPC limits"
    )]
    IpcSysctlOnHostIpc { container: String, index: usize, namespace: String },
    #[error(
        "container '{container}': systemControls[{index}] ({namespace}) is not namespaced, so a container cannot set it; use net.*, fs.mqueue.*, kernel.msgmax, kernel.msgmnb, kernel.msgmni, kernel.sem, kernel.shmall, kernel.shmmax, kernel.shmmni or kernel.shm_rmid_forced"
    )]
    SysctlNotNamespaced { container: String, index: usize, namespace: String },
    #[error(
        "container '{container}': linuxParameters.initProcessEnabled needs an init binary, and none is configured on this host"
    )]
    NoInit { container: String },
    #[error(
        "container '{container}': dockerSecurityOptions[{index}] '{option}' is not supported; use no-new-privileges or apparmor:<profile>"
    )]
    UnsupportedSecurityOption { container: String, index: usize, option: String },
    #[error(
        "container '{container}': the task's {mode} needs the task's {what} namespace, which the engine did not provide"
    )]
    MissingNamespace { container: String, mode: &'static str, what: &'static str },
    #[error("cannot read device {}", path.display())]
    DeviceUnreadable { path: PathBuf, source: io::Error },
    #[error("{} is neither a device node nor a directory", path.display())]
    NotADevice { path: PathBuf },
}
