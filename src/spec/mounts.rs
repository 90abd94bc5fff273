//! `mounts`: Docker's default filesystems, then the container's own mounts (volumes,
//! volumesFrom, tmpfs, the network files, the init), parents before children.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::Mount;

use super::linux::{Namespaces, Shm};
use super::{Ctx, INIT_PATH, SpecError};
use crate::model::shapes::ContainerDefinition;

const MIB: u64 = 1024 * 1024;
/// Docker's `/dev/shm` size when sharedMemorySize is not set.
const DEFAULT_SHM_SIZE: u64 = 64 * MIB;

fn mount(destination: &str, typ: &str, source: &Path, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(destination))
        .set_typ(Some(typ.to_owned()))
        .set_source(Some(source.to_path_buf()))
        .set_options(Some(options.iter().map(|o| (*o).to_owned()).collect()));
    m
}

/// A bind mount as Docker writes it for volumes and the network files.
fn bind(destination: &str, source: &Path, read_only: bool) -> Mount {
    let options: &[&str] = if read_only { &["rbind", "ro", "rprivate"] } else { &["rbind", "rprivate"] };
    mount(destination, "bind", source, options)
}

/// Docker's default mounts. Privileged containers get /sys and the cgroup tree read-write.
fn defaults(cx: &Ctx<'_>, shm: &Shm<'_>) -> Vec<Mount> {
    let sys_mode = if cx.privileged { "rw" } else { "ro" };
    let mut mounts = vec![
        mount("/proc", "proc", Path::new("proc"), &["nosuid", "noexec", "nodev"]),
        mount("/dev", "tmpfs", Path::new("tmpfs"), &["nosuid", "strictatime", "mode=755", "size=65536k"]),
        mount(
            "/dev/pts",
            "devpts",
            Path::new("devpts"),
            &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        ),
        mount("/sys", "sysfs", Path::new("sysfs"), &["nosuid", "noexec", "nodev", sys_mode]),
        mount("/sys/fs/cgroup", "cgroup", Path::new("cgroup"), &[sys_mode, "nosuid", "noexec", "nodev"]),
        mount("/dev/mqueue", "mqueue", Path::new("mqueue"), &["nosuid", "noexec", "nodev"]),
    ];
    match shm {
        Shm::Private => {
            let size = cx
                .linux_parameters()
                .and_then(|l| l.shared_memory_size)
                .and_then(|s| u64::try_from(s).ok())
                .filter(|s| *s > 0)
                .map_or(DEFAULT_SHM_SIZE, |s| s * MIB);
            let size = format!("size={size}");
            mounts.push(mount(
                "/dev/shm",
                "tmpfs",
                Path::new("shm"),
                &["nosuid", "noexec", "nodev", "mode=1777", &size],
            ));
        }
        Shm::Shared(path) => mounts.push(bind("/dev/shm", path, false)),
        Shm::Absent => {}
    }
    mounts
}

/// A mount of the container's own, with the definition field it comes from for messages.
struct Own {
    origin: String,
    mount: Mount,
}

/// A volume as a container sees it: host directory, destination, read-only.
#[derive(Clone)]
struct VolumeMount {
    origin: String,
    destination: String,
    source: PathBuf,
    read_only: bool,
}

fn absolute(cx_name: &str, field: String, path: &str) -> Result<(), SpecError> {
    if path.starts_with('/') {
        Ok(())
    } else {
        Err(SpecError::RelativePath { container: cx_name.to_owned(), field, path: path.to_owned() })
    }
}

/// A container's volumes: those of its volumesFrom sources (recursively), then its own
/// mountPoints, which win over them at the same destination. `chain` holds the containers on
/// the way, to refuse cycles.
fn volumes(
    cx: &Ctx<'_>,
    def: &ContainerDefinition,
    chain: &mut Vec<String>,
) -> Result<Vec<VolumeMount>, SpecError> {
    let name = def.name.clone().unwrap_or_default();
    let mut by_destination: BTreeMap<String, VolumeMount> = BTreeMap::new();
    let containers = cx.task.definition.container_definitions.as_deref().unwrap_or_default();
    for (index, from) in def.volumes_from.as_deref().unwrap_or_default().iter().enumerate() {
        let source_name = from.source_container.clone().unwrap_or_default();
        if chain.contains(&source_name) || source_name == name {
            let path: Vec<&str> =
                chain.iter().map(String::as_str).chain([name.as_str(), &source_name]).collect();
            let chain = path.join(" → ");
            return Err(SpecError::VolumesFromCycle { container: name, index, chain });
        }
        let source =
            containers.iter().find(|c| c.name.as_deref() == Some(source_name.as_str())).ok_or_else(|| {
                SpecError::UnknownVolumesFromSource {
                    container: name.clone(),
                    index,
                    source_container: source_name.clone(),
                }
            })?;
        chain.push(name.clone());
        let inherited = volumes(cx, source, chain)?;
        chain.pop();
        for mut volume in inherited {
            volume.origin = format!("volumesFrom[{index}] ('{source_name}')");
            // readOnly: true makes every inherited volume read-only; otherwise each keeps the
            // mode it has in the source container (the agent passes `name:ro` or `name`).
            volume.read_only |= from.read_only == Some(true);
            by_destination.insert(volume.destination.clone(), volume);
        }
    }
    let mut own: BTreeMap<String, usize> = BTreeMap::new();
    for (index, point) in def.mount_points.as_deref().unwrap_or_default().iter().enumerate() {
        let incomplete = |field| SpecError::IncompleteMountPoint { container: name.clone(), index, field };
        let volume = point.source_volume.as_deref().ok_or_else(|| incomplete("sourceVolume"))?;
        let destination = point.container_path.as_deref().ok_or_else(|| incomplete("containerPath"))?;
        absolute(&name, format!("mountPoints[{index}].containerPath"), destination)?;
        let destination = clean(destination);
        let source = cx.task.volumes.get(volume).ok_or_else(|| SpecError::UnknownVolume {
            container: name.clone(),
            index,
            volume: volume.to_owned(),
        })?;
        if let Some(first) = own.insert(destination.clone(), index) {
            return Err(SpecError::DuplicateMount {
                container: name.clone(),
                first: format!("mountPoints[{first}]"),
                second: format!("mountPoints[{index}]"),
                destination,
            });
        }
        by_destination.insert(
            destination.clone(),
            VolumeMount {
                origin: format!("mountPoints[{index}]"),
                destination,
                source: source.clone(),
                read_only: point.read_only == Some(true),
            },
        );
    }
    Ok(by_destination.into_values().collect())
}

/// A path without `.`, empty or trailing components, so equal destinations compare equal.
fn clean(path: &str) -> String {
    let mut out = PathBuf::from("/");
    for component in Path::new(path).components() {
        match component {
            Component::Normal(c) => out.push(c),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out.to_string_lossy().into_owned()
}

/// A mount's depth, by which Docker orders the container's own mounts (parents first).
fn depth(mount: &Mount) -> usize {
    mount.destination().components().count()
}

/// Options of a tmpfs mount: Docker's defaults, then the definition's mountOptions, then the
/// size; a later option replaces an earlier one of the same kind (`exec` replaces `noexec`,
/// `mode=1777` replaces `mode=755`), as Docker's `MergeTmpfsOptions` does.
fn tmpfs_options(options: &[String], size_mib: u64) -> Vec<String> {
    fn kind(option: &str) -> &str {
        if let Some((key, _)) = option.split_once('=') {
            return key;
        }
        match option {
            "ro" | "rw" => "rw",
            "async" | "sync" => "sync",
            "strictatime" | "nostrictatime" => "strictatime",
            _ => option.strip_prefix("no").filter(|rest| !rest.is_empty()).unwrap_or(option),
        }
    }
    let size = (size_mib > 0).then(|| format!("size={size_mib}m"));
    let mut merged: Vec<String> = Vec::new();
    let all = ["noexec", "nosuid", "nodev"]
        .iter()
        .map(|o| (*o).to_owned())
        .chain(options.iter().cloned())
        .chain(size);
    for option in all.filter(|o| !o.is_empty() && o != "defaults") {
        merged.retain(|existing| kind(existing) != kind(&option));
        merged.push(option);
    }
    merged
}

/// Every mount of the container, in the order runc must make them.
pub(super) fn mounts(
    cx: &Ctx<'_>,
    ns: &Namespaces<'_>,
    init: Option<&Path>,
) -> Result<Vec<Mount>, SpecError> {
    let name = cx.name;
    let mut own: Vec<Own> = Vec::new();
    let add = |own: &mut Vec<Own>, origin: String, mount: Mount| -> Result<(), SpecError> {
        if let Some(first) = own.iter().find(|o| o.mount.destination() == mount.destination()) {
            return Err(SpecError::DuplicateMount {
                container: name.to_owned(),
                first: first.origin.clone(),
                second: origin,
                destination: mount.destination().to_string_lossy().into_owned(),
            });
        }
        own.push(Own { origin, mount });
        Ok(())
    };

    for volume in volumes(cx, cx.def, &mut Vec::new())? {
        add(&mut own, volume.origin, bind(&volume.destination, &volume.source, volume.read_only))?;
    }
    let tmpfs = cx.linux_parameters().and_then(|l| l.tmpfs.as_deref()).unwrap_or_default();
    for (index, t) in tmpfs.iter().enumerate() {
        let field = format!("linuxParameters.tmpfs[{index}]");
        let destination = t.container_path.as_deref().unwrap_or_default();
        absolute(name, format!("{field}.containerPath"), destination)?;
        let size = u64::try_from(t.size).map_err(|_| SpecError::OutOfRange {
            container: name.to_owned(),
            field: format!("{field}.size"),
            value: t.size,
            allowed: "0 or more",
        })?;
        let options = tmpfs_options(t.mount_options.as_deref().unwrap_or_default(), size);
        let options: Vec<&str> = options.iter().map(String::as_str).collect();
        add(&mut own, field, mount(&clean(destination), "tmpfs", Path::new("tmpfs"), &options))?;
    }
    // The network files are read-only with a read-only root, like Docker's, and give way to a
    // volume the definition mounts at the same place.
    let read_only = cx.def.readonly_root_filesystem == Some(true);
    let files = cx.container.files;
    for (destination, source) in [
        ("/etc/hosts", &files.hosts),
        ("/etc/resolv.conf", &files.resolv_conf),
        ("/etc/hostname", &files.hostname),
    ] {
        if let Some(source) = source
            && !own.iter().any(|o| o.mount.destination() == Path::new(destination))
        {
            own.push(Own { origin: destination.to_owned(), mount: bind(destination, source, read_only) });
        }
    }
    if let Some(init) = init {
        add(&mut own, "linuxParameters.initProcessEnabled".to_owned(), bind(INIT_PATH, init, true))?;
    }

    // The container's own mounts replace Docker's defaults at the same place; its own /dev
    // replaces everything Docker mounts below /dev.
    let own_dev = own.iter().any(|o| o.mount.destination() == Path::new("/dev"));
    let mut mounts: Vec<Mount> = defaults(cx, &ns.shm)
        .into_iter()
        .filter(|d| !own.iter().any(|o| o.mount.destination() == d.destination()))
        .filter(|d| !(own_dev && d.destination().starts_with("/dev/")))
        .collect();
    let mut own: Vec<Mount> = own.into_iter().map(|o| o.mount).collect();
    own.sort_by_key(depth);
    mounts.extend(own);
    Ok(mounts)
}
