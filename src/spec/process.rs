//! The container's process: command line, environment, working directory, user,
//! capabilities, rlimits and stop signal.

use std::collections::{BTreeMap, HashSet};

use oci_spec::runtime::{Capability, LinuxCapabilities, PosixRlimit, PosixRlimitBuilder, User};

use super::{ClampedUlimit, ContainerInput, Ctx, Limit, RlimitKind, SpecError};

/// Docker's PATH for a container whose image sets none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const SIGTERM: i32 = 15;
/// runc's (and the kernel's) highest valid uid and gid.
const MAX_ID: u64 = 2_147_483_647;

/// `process.args`, merged from the definition and the image as the Docker daemon does: an
/// entryPoint replaces the image's Entrypoint *and* drops its Cmd; a command alone replaces
/// the image's Cmd only. An empty entryPoint list clears the image's Entrypoint.
pub(super) fn args(cx: &Ctx<'_>) -> Result<Vec<String>, SpecError> {
    let image = cx.container.image;
    let entry_point = cx.def.entry_point.as_ref();
    let command = cx.def.command.as_deref().filter(|c| !c.is_empty());
    let args: Vec<String> = match entry_point {
        Some(entry) if !entry.is_empty() => {
            entry.iter().chain(command.unwrap_or_default()).cloned().collect()
        }
        _ => {
            let entry = match entry_point {
                None => image.entrypoint.as_deref().unwrap_or_default(),
                Some(_) => &[],
            };
            let command = command.or(image.cmd.as_deref()).unwrap_or_default();
            entry.iter().chain(command).cloned().collect()
        }
    };
    if args.is_empty() {
        return Err(SpecError::NoCommand { container: cx.name.to_owned() });
    }
    Ok(args)
}

/// An environment in first-seen order where a later value replaces an earlier one in place.
#[derive(Default)]
struct Env(Vec<(String, String)>);

impl Env {
    fn set(&mut self, name: &str, value: &str) {
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some(entry) => entry.1 = value.to_owned(),
            None => self.0.push((name.to_owned(), value.to_owned())),
        }
    }

    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }
}

/// `process.env`: Docker's own (PATH, HOSTNAME, TERM with a terminal), then the image's, the
/// environment files', the definition's and the engine's, later ones winning.
pub(super) fn env(cx: &Ctx<'_>, terminal: bool) -> Result<Vec<String>, SpecError> {
    let container = cx.container;
    let mut env = Env::default();
    env.set("PATH", DEFAULT_PATH);
    env.set("HOSTNAME", super::linux::hostname(cx));
    if terminal {
        env.set("TERM", "xterm");
    }
    // Image entries without '=' carry no value; Docker drops them too.
    for (name, value) in container.image.env.iter().filter_map(|e| e.split_once('=')) {
        env.set(name, value);
    }
    for (name, value) in container.env_files {
        env.set(name, value);
    }
    for (i, var) in cx.def.environment.as_deref().unwrap_or_default().iter().enumerate() {
        let name = var.name.as_deref().filter(|n| !n.is_empty()).ok_or_else(|| {
            SpecError::UnnamedVariable { container: cx.name.to_owned(), field: format!("environment[{i}]") }
        })?;
        env.set(name, var.value.as_deref().unwrap_or_default());
    }
    let region_set = env.has("AWS_REGION") || env.has("AWS_DEFAULT_REGION");
    for (name, value) in container.extra_env {
        if region_set && (name == "AWS_REGION" || name == "AWS_DEFAULT_REGION") {
            continue;
        }
        env.set(name, value);
    }
    Ok(env.0.into_iter().map(|(n, v)| format!("{n}={v}")).collect())
}

/// `process.cwd`: workingDirectory, else the image's WorkingDir, else `/`.
pub(super) fn cwd(cx: &Ctx<'_>) -> Result<String, SpecError> {
    let (field, dir) = match (cx.def.working_directory.as_deref(), cx.container.image.working_dir.as_deref())
    {
        (Some(dir), _) if !dir.is_empty() => ("workingDirectory", dir),
        (_, Some(dir)) if !dir.is_empty() => ("the image's WorkingDir", dir),
        _ => return Ok("/".to_owned()),
    };
    if !dir.starts_with('/') {
        return Err(SpecError::RelativePath {
            container: cx.name.to_owned(),
            field: field.to_owned(),
            path: dir.to_owned(),
        });
    }
    Ok(dir.to_owned())
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u64,
    gid: u64,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u64,
    members: Vec<&'a str>,
}

/// Lines of a colon-separated file, without comments and blank lines.
fn records(text: Option<&str>) -> impl Iterator<Item = Vec<&str>> {
    text.unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').collect())
}

fn passwd_entries(text: Option<&str>) -> Vec<PasswdEntry<'_>> {
    records(text)
        .filter_map(|f| {
            Some(PasswdEntry { name: f.first()?, uid: f.get(2)?.parse().ok()?, gid: f.get(3)?.parse().ok()? })
        })
        .collect()
}

fn group_entries(text: Option<&str>) -> Vec<GroupEntry<'_>> {
    records(text)
        .filter_map(|f| {
            let members = f.get(3).map(|m| m.split(',').map(str::trim).filter(|m| !m.is_empty()).collect());
            Some(GroupEntry {
                name: f.first()?,
                gid: f.get(2)?.parse().ok()?,
                members: members.unwrap_or_default(),
            })
        })
        .collect()
}

/// `process.user`, resolved against the image's /etc/passwd and /etc/group exactly as runc's
/// `GetExecUser` does for Docker: `name`, `uid`, `uid:gid`, `name:group`, `uid:group` and
/// `name:gid`; a numeric part is always an id; a uid without passwd entry gets gid 0. The user
/// matched in passwd (by name or uid) gets the groups that list it as supplementary groups,
/// unless a group is given. Docker puts the primary gid first in `additionalGids`.
pub(super) fn user(cx: &Ctx<'_>) -> Result<User, SpecError> {
    let (field, spec) = match (cx.def.user.as_deref(), cx.container.image.user.as_deref()) {
        (Some(u), _) if !u.is_empty() => ("user", u),
        (_, Some(u)) if !u.is_empty() => ("the image's User", u),
        _ => ("user", ""),
    };
    let (user_part, group_part) = spec.split_once(':').unwrap_or((spec, ""));
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let out_of_range = |what, value: &str| SpecError::IdOutOfRange {
        container: cx.name.to_owned(),
        field,
        spec: spec.to_owned(),
        what,
        value: value.to_owned(),
    };
    let id = |what, value: &str| -> Result<u64, SpecError> {
        value.parse::<u64>().ok().filter(|v| *v <= MAX_ID).ok_or_else(|| out_of_range(what, value))
    };

    let passwd = passwd_entries(cx.container.passwd);
    let found = if user_part.is_empty() {
        passwd.iter().find(|e| e.uid == 0)
    } else if numeric(user_part) {
        let uid = id("uid", user_part)?;
        passwd.iter().find(|e| e.uid == uid)
    } else {
        passwd.iter().find(|e| e.name == user_part)
    };
    let (uid, mut gid, matched) = match found {
        Some(e) => (e.uid, e.gid, Some(e.name)),
        None if user_part.is_empty() => (0, 0, None),
        None if numeric(user_part) => (id("uid", user_part)?, 0, None),
        None => {
            return Err(SpecError::UnknownUser {
                container: cx.name.to_owned(),
                field,
                spec: spec.to_owned(),
                name: user_part.to_owned(),
            });
        }
    };

    let groups = group_entries(cx.container.group);
    let mut supplementary = Vec::new();
    if !group_part.is_empty() {
        let found = if numeric(group_part) {
            let wanted = id("gid", group_part)?;
            groups.iter().find(|g| g.gid == wanted)
        } else {
            groups.iter().find(|g| g.name == group_part)
        };
        gid = match found {
            Some(g) => g.gid,
            None if numeric(group_part) => id("gid", group_part)?,
            None => {
                return Err(SpecError::UnknownGroup {
                    container: cx.name.to_owned(),
                    field,
                    spec: spec.to_owned(),
                    name: group_part.to_owned(),
                });
            }
        };
    } else if let Some(name) = matched {
        supplementary = groups.iter().filter(|g| g.members.contains(&name)).map(|g| g.gid).collect();
    }

    // Both are at most MAX_ID, so they fit.
    let as_u32 = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    let mut additional = vec![as_u32(gid)];
    for g in supplementary.into_iter().map(as_u32) {
        if !additional.contains(&g) {
            additional.push(g);
        }
    }
    let mut user = User::default();
    user.set_uid(as_u32(uid)).set_gid(as_u32(gid)).set_additional_gids(Some(additional));
    Ok(user)
}

/// Every capability, in kernel order (its bit number), by the name Docker and ECS use without
/// `CAP_`.
pub(super) const CAPABILITIES: [(&str, Capability); 41] = [
    ("CHOWN", Capability::Chown),
    ("DAC_OVERRIDE", Capability::DacOverride),
    ("DAC_READ_SEARCH", Capability::DacReadSearch),
    ("FOWNER", Capability::Fowner),
    ("FSETID", Capability::Fsetid),
    ("KILL", Capability::Kill),
    ("SETGID", Capability::Setgid),
    ("SETUID", Capability::Setuid),
    ("SETPCAP", Capability::Setpcap),
    ("LINUX_IMMUTABLE", Capability::LinuxImmutable),
    ("NET_BIND_SERVICE", Capability::NetBindService),
    ("NET_BROADCAST", Capability::NetBroadcast),
    ("NET_ADMIN", Capability::NetAdmin),
    ("NET_RAW", Capability::NetRaw),
    ("IPC_LOCK", Capability::IpcLock),
    ("IPC_OWNER", Capability::IpcOwner),
    ("SYS_MODULE", Capability::SysModule),
    ("SYS_RAWIO", Capability::SysRawio),
    ("SYS_CHROOT", Capability::SysChroot),
    ("SYS_PTRACE", Capability::SysPtrace),
    ("SYS_PACCT", Capability::SysPacct),
    ("SYS_ADMIN", Capability::SysAdmin),
    ("SYS_BOOT", Capability::SysBoot),
    ("SYS_NICE", Capability::SysNice),
    ("SYS_RESOURCE", Capability::SysResource),
    ("SYS_TIME", Capability::SysTime),
    ("SYS_TTY_CONFIG", Capability::SysTtyConfig),
    ("MKNOD", Capability::Mknod),
    ("LEASE", Capability::Lease),
    ("AUDIT_WRITE", Capability::AuditWrite),
    ("AUDIT_CONTROL", Capability::AuditControl),
    ("SETFCAP", Capability::Setfcap),
    ("MAC_OVERRIDE", Capability::MacOverride),
    ("MAC_ADMIN", Capability::MacAdmin),
    ("SYSLOG", Capability::Syslog),
    ("WAKE_ALARM", Capability::WakeAlarm),
    ("BLOCK_SUSPEND", Capability::BlockSuspend),
    ("AUDIT_READ", Capability::AuditRead),
    ("PERFMON", Capability::Perfmon),
    ("BPF", Capability::Bpf),
    ("CHECKPOINT_RESTORE", Capability::CheckpointRestore),
];

/// Docker's default set, in Docker's order.
const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// A capability name as ECS or Docker users write it (`SYS_ADMIN`, `cap_sys_admin`), or `ALL`.
enum CapName {
    All,
    One(Capability),
}

/// `linuxParameters.capabilities.add` or `.drop`, parsed; an added capability must be one
/// the host can give.
fn cap_names(cx: &Ctx<'_>, field: &str, names: Option<&[String]>) -> Result<Vec<CapName>, SpecError> {
    let mut out = Vec::new();
    for (i, raw) in names.unwrap_or_default().iter().enumerate() {
        let upper = raw.trim().to_ascii_uppercase();
        let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
        if bare == "ALL" {
            out.push(CapName::All);
            continue;
        }
        let at = || format!("linuxParameters.capabilities.{field}[{i}]");
        let cap = CAPABILITIES.iter().find(|(n, _)| *n == bare).map(|(_, c)| *c);
        let cap = cap.ok_or_else(|| SpecError::UnknownCapability {
            container: cx.name.to_owned(),
            field: at(),
            name: raw.clone(),
        })?;
        if field == "add" && !available(cx, cap) {
            return Err(SpecError::UnavailableCapability {
                container: cx.name.to_owned(),
                field: at(),
                name: raw.clone(),
            });
        }
        out.push(CapName::One(cap));
    }
    Ok(out)
}

fn available(cx: &Ctx<'_>, cap: Capability) -> bool {
    cx.host.capabilities.as_ref().is_none_or(|held| held.contains(&cap))
}

/// The process's capabilities, as Docker's `TweakCapabilities` computes them: privileged gets
/// all; `add: ["ALL"]` gets all but the dropped ones; `drop: ["ALL"]` keeps only the added
/// ones; otherwise the defaults minus drops plus adds. "All" and the defaults are limited to
/// what the host can give. Docker sets bounding, permitted and effective, and (since 23.0) no
/// inheritable or ambient capabilities.
pub(super) fn capabilities(cx: &Ctx<'_>) -> Result<LinuxCapabilities, SpecError> {
    let all = || CAPABILITIES.iter().map(|(_, c)| *c).filter(|c| available(cx, *c)).collect::<Vec<_>>();
    let caps = if cx.privileged {
        all()
    } else {
        let kernel = cx.linux_parameters().and_then(|l| l.capabilities.as_ref());
        let add = cap_names(cx, "add", kernel.and_then(|k| k.add.as_deref()))?;
        let drop = cap_names(cx, "drop", kernel.and_then(|k| k.drop.as_deref()))?;
        let listed = |names: &[CapName], cap: Capability| {
            names.iter().any(|n| matches!(n, CapName::One(c) if *c == cap))
        };
        let only = |names: &[CapName]| -> Vec<Capability> {
            names.iter().filter_map(|n| if let CapName::One(c) = n { Some(*c) } else { None }).collect()
        };
        if add.iter().any(|n| matches!(n, CapName::All)) {
            all().into_iter().filter(|c| !listed(&drop, *c)).collect()
        } else if drop.iter().any(|n| matches!(n, CapName::All)) {
            only(&add)
        } else {
            let defaults = DEFAULT_CAPABILITIES.into_iter().filter(|c| available(cx, *c));
            defaults.filter(|c| !listed(&drop, *c)).chain(only(&add)).collect()
        }
    };
    let set: HashSet<Capability> = caps.into_iter().collect();
    let mut capabilities = LinuxCapabilities::default();
    capabilities
        .set_bounding(Some(set.clone()))
        .set_permitted(Some(set.clone()))
        .set_effective(Some(set))
        .set_inheritable(None)
        .set_ambient(None);
    Ok(capabilities)
}

fn ulimit_value(
    cx: &Ctx<'_>,
    index: usize,
    name: &str,
    field: &'static str,
    value: i32,
) -> Result<u64, SpecError> {
    match value {
        -1 => Ok(u64::MAX),
        v => u64::try_from(v).map_err(|_| SpecError::NegativeUlimit {
            container: cx.name.to_owned(),
            index,
            name: name.to_owned(),
            field,
            value,
        }),
    }
}

fn rlimit(kind: RlimitKind, limit: Limit) -> PosixRlimit {
    PosixRlimitBuilder::default()
        .typ(kind.oci())
        .soft(limit.soft)
        .hard(limit.hard)
        .build()
        .expect("every field of a PosixRlimit is set or has a default")
}

/// `process.rlimits` from `ulimits` (-1 is unlimited). A limit above the host's hard limit is
/// lowered to it and reported, since the runtime cannot raise it (no CAP_SYS_RESOURCE). NOFILE
/// defaults to the daemon's own limits, as a container started by containerd without rlimits
/// would inherit them, instead of oci-spec's 1024.
pub(super) fn rlimits(cx: &Ctx<'_>) -> Result<(Vec<PosixRlimit>, Vec<ClampedUlimit>), SpecError> {
    let mut out = Vec::new();
    let mut clamped = Vec::new();
    let mut seen: BTreeMap<RlimitKind, usize> = BTreeMap::new();
    for (index, ulimit) in cx.def.ulimits.as_deref().unwrap_or_default().iter().enumerate() {
        let name = ulimit.name.as_deref().unwrap_or_default();
        let kind = RlimitKind::from_ulimit_name(name).ok_or_else(|| SpecError::UnknownUlimit {
            container: cx.name.to_owned(),
            index,
            name: name.to_owned(),
        })?;
        if let Some(first) = seen.insert(kind, index) {
            return Err(SpecError::RepeatedUlimit {
                container: cx.name.to_owned(),
                index,
                first,
                name: name.to_owned(),
            });
        }
        let soft = ulimit_value(cx, index, name, "softLimit", ulimit.soft_limit)?;
        let hard = ulimit_value(cx, index, name, "hardLimit", ulimit.hard_limit)?;
        if soft > hard {
            return Err(SpecError::SoftAboveHard {
                container: cx.name.to_owned(),
                index,
                name: name.to_owned(),
                soft: ulimit.soft_limit,
                hard: ulimit.hard_limit,
            });
        }
        let requested = Limit { soft, hard };
        let applied = match cx.host.rlimits.get(&kind) {
            Some(max) if hard > max.hard => Limit { soft: soft.min(max.hard), hard: max.hard },
            _ => requested,
        };
        if applied != requested {
            clamped.push(ClampedUlimit { index, kind, requested, applied });
        }
        out.push(rlimit(kind, applied));
    }
    if !seen.contains_key(&RlimitKind::Nofile)
        && let Some(own) = cx.host.rlimits.get(&RlimitKind::Nofile)
    {
        out.push(rlimit(RlimitKind::Nofile, *own));
    }
    Ok((out, clamped))
}

/// What `dockerSecurityOptions` ask for.
pub(super) struct Security {
    pub no_new_privileges: bool,
    pub apparmor_profile: Option<String>,
}

/// `dockerSecurityOptions`: `no-new-privileges` (Docker's default is off) and
/// `apparmor:<profile>` (`unconfined` is the default here: no profile is set). SELinux labels
/// and credential specs have no meaning on this host and are refused rather than ignored.
pub(super) fn security_options(cx: &Ctx<'_>) -> Result<Security, SpecError> {
    let mut security = Security { no_new_privileges: false, apparmor_profile: None };
    for (index, option) in cx.def.docker_security_options.as_deref().unwrap_or_default().iter().enumerate() {
        let (key, value) = option.split_once(['=', ':']).unwrap_or((option, ""));
        match (key, value) {
            ("no-new-privileges", "" | "true") => security.no_new_privileges = true,
            ("no-new-privileges", "false") => security.no_new_privileges = false,
            ("apparmor", "unconfined") => security.apparmor_profile = None,
            ("apparmor", profile) if !profile.is_empty() => {
                security.apparmor_profile = Some(profile.to_owned())
            }
            _ => {
                return Err(SpecError::UnsupportedSecurityOption {
                    container: cx.name.to_owned(),
                    index,
                    option: option.clone(),
                });
            }
        }
    }
    Ok(security)
}

/// Linux signal numbers by the names Docker accepts (moby/sys/signal).
const SIGNALS: [(&str, i32); 34] = [
    ("ABRT", 6),
    ("ALRM", 14),
    ("BUS", 7),
    ("CHLD", 17),
    ("CLD", 17),
    ("CONT", 18),
    ("FPE", 8),
    ("HUP", 1),
    ("ILL", 4),
    ("INT", 2),
    ("IO", 29),
    ("IOT", 6),
    ("KILL", 9),
    ("PIPE", 13),
    ("POLL", 29),
    ("PROF", 27),
    ("PWR", 30),
    ("QUIT", 3),
    ("SEGV", 11),
    ("STKFLT", 16),
    ("STOP", 19),
    ("SYS", 31),
    ("TERM", 15),
    ("TRAP", 5),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("URG", 23),
    ("USR1", 10),
    ("USR2", 12),
    ("VTALRM", 26),
    ("WINCH", 28),
    ("XCPU", 24),
    ("XFSZ", 25),
];
/// glibc's SIGRTMIN (the kernel's 32 and 33 are reserved by it) and SIGRTMAX.
const SIGRTMIN: i32 = 34;
const SIGRTMAX: i32 = 64;

/// A signal as Docker parses `STOPSIGNAL`: a number, or a name with or without `SIG`, in any
/// case, including `RTMIN+n` and `RTMAX-n`.
fn parse_signal(raw: &str) -> Option<i32> {
    if let Ok(n) = raw.parse::<i32>() {
        return (1..=SIGRTMAX).contains(&n).then_some(n);
    }
    let upper = raw.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some((_, n)) = SIGNALS.iter().find(|(s, _)| *s == name) {
        return Some(*n);
    }
    let offset = |rest: &str| rest.parse::<i32>().ok().filter(|n| (1..=15).contains(n));
    match name {
        "RTMIN" => Some(SIGRTMIN),
        "RTMAX" => Some(SIGRTMAX),
        _ => {
            if let Some(rest) = name.strip_prefix("RTMIN+") {
                offset(rest).map(|n| SIGRTMIN + n)
            } else {
                name.strip_prefix("RTMAX-").and_then(offset).map(|n| SIGRTMAX - n)
            }
        }
    }
}

/// The signal that asks the container to stop: the image's `StopSignal`, else SIGTERM (ECS
/// has no field for it; Docker sends this, then SIGKILL after `stopTimeout`).
pub fn stop_signal(container: &ContainerInput<'_>) -> Result<i32, SpecError> {
    match container.image.stop_signal.as_deref().map(str::trim) {
        None | Some("") => Ok(SIGTERM),
        Some(raw) => parse_signal(raw).ok_or_else(|| SpecError::BadStopSignal {
            container: container.definition.name.clone().unwrap_or_default(),
            signal: raw.to_owned(),
        }),
    }
}
