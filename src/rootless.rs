//! Rootless ecsd: `ecsd serve --rootless` run by an unprivileged user re-executes itself under
//! rootlesskit, so that ecsd, its embedded containerd, the shims and the tasks share one user
//! namespace (the user is uid 0 there, its subordinate ids the rest), one mount namespace and
//! one PID namespace (killing the outer process ends them all). The network stays the host's
//! (`--net=host`): the API answers on the host's 127.0.0.1 with no port driver.
//!
//! This module owns the checks before the re-exec (each failure names what to fix), the
//! rootlesskit command line, the XDG directories, and what ecsd prepares inside before it
//! starts: a private `/run` (rootlesskit's copy-up) where containerd, runc, `ip netns` and
//! iptables' lock get directories of their own instead of links to the host's.
//! It does not start the runtime or tasks: `lib.rs` does, as under root. The runtime runs in
//! the same namespace: ecsd's embedded containerd, or (`--runtime podman`) a Podman service
//! that is rootless Podman already inside this user namespace (see
//! `runtime::podman::service::RootlessUser`), so that its containers can join the task network
//! namespaces ecsd makes here.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use crate::host::HostOs;

/// Set by ecsd on the command it runs under rootlesskit: the inner ecsd prepares its
/// namespace instead of re-executing again.
pub const INSIDE_ENV: &str = "_ECSD_ROOTLESS_INSIDE";

/// `/run` entries rootlesskit's copy-up links to the host's, which the user cannot write:
/// each becomes a directory of the namespace's own (`xtables.lock` a file).
const PRIVATE_RUN_DIRS: [&str; 3] = ["containerd", "netns", "runc"];
const PRIVATE_RUN_FILES: [&str; 1] = ["xtables.lock"];

#[derive(Debug, thiserror::Error)]
pub enum RootlessError {
    #[error(
        "--rootless (ECSD_ROOTLESS) is for an unprivileged user, and this is root: run ecsd serve without it, or as the user"
    )]
    AsRoot,
    #[error(
        "XDG_RUNTIME_DIR is not set: rootless ecsd keeps its sockets and namespaces there; give uid {uid} a private directory (mode 0700, owned by it) and export XDG_RUNTIME_DIR=DIR (systemd-logind makes /run/user/{uid} at login)"
    )]
    NoRuntimeDir { uid: u32 },
    #[error(
        "XDG_RUNTIME_DIR={} is not this user's ({}): point it at a directory owned by uid {uid} with mode 0700",
        .path.display(),
        .owner.map_or("it does not exist".to_owned(), |o| format!("it belongs to uid {o}"))
    )]
    RuntimeDirNotOwned { path: PathBuf, owner: Option<u32>, uid: u32 },
    #[error(
        "{program} is not installed (or not on PATH): install the {package} package (Debian: apt-get install {package})"
    )]
    Missing { program: &'static str, package: &'static str },
    #[error(
        "user {user} (uid {uid}) has no subordinate {kind} range in {}: add one as root, e.g. usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {user}",
        .file.display()
    )]
    NoRange { user: String, uid: u32, kind: &'static str, file: PathBuf },
    #[error(
        "another rootless ecsd of this user is running (its rootlesskit holds {}): stop it first, or start this one with other XDG_RUNTIME_DIR and XDG_DATA_HOME directories",
        .lock.display()
    )]
    AlreadyRunning { lock: PathBuf },
    #[error("cannot run {}", .program.display())]
    Exec { program: PathBuf, source: io::Error },
    #[error("cannot prepare {} inside the user namespace", .path.display())]
    Prepare { path: PathBuf, source: io::Error },
}

/// `<$VAR or ~/fallback>/ecsd`: one of the user's XDG directories for ecsd.
pub fn xdg_dir(env: &dyn Fn(&str) -> Option<String>, var: &str, fallback: &str) -> PathBuf {
    match env(var).filter(|v| v.starts_with('/')) {
        Some(d) => PathBuf::from(d).join("ecsd"),
        None => PathBuf::from(env("HOME").unwrap_or_else(|| ".".into())).join(fallback).join("ecsd"),
    }
}

/// `$XDG_RUNTIME_DIR/ecsd`, where a rootless ecsd keeps what lives only while it runs.
pub fn run_dir(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    env("XDG_RUNTIME_DIR").filter(|v| v.starts_with('/')).map(|d| PathBuf::from(d).join("ecsd"))
}

/// Whether this process is the ecsd that rootlesskit started (set by [`Plan::command`]).
pub fn inside(env: &dyn Fn(&str) -> Option<String>) -> bool {
    env(INSIDE_ENV).is_some_and(|v| v == "1") && env("ROOTLESSKIT_STATE_DIR").is_some()
}

/// The uid and gid of the user who started a rootless ecsd, as rootlesskit tells the process
/// it runs (`ROOTLESSKIT_PARENT_EUID`, `ROOTLESSKIT_PARENT_EGID`); `None` outside it.
pub fn parent_ids(env: &dyn Fn(&str) -> Option<String>) -> Option<(u32, u32)> {
    let id = |k| env(k).and_then(|v| v.parse::<u32>().ok());
    Some((id("ROOTLESSKIT_PARENT_EUID")?, id("ROOTLESSKIT_PARENT_EGID")?))
}

/// What the checks found: how to re-execute under rootlesskit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub rootlesskit: PathBuf,
    /// `$XDG_RUNTIME_DIR/ecsd`.
    pub run_dir: PathBuf,
    /// rootlesskit's state (`child_pid`, its API socket): `$XDG_RUNTIME_DIR/ecsd/rk`.
    pub state_dir: PathBuf,
}

/// Checks that this user can run ecsd rootless: not root, a runtime dir of its own,
/// rootlesskit and newuidmap/newgidmap installed, subordinate uid and gid ranges.
/// `owner_of` gives a path's owning uid (`None` when it does not exist).
pub fn preflight(
    os: &dyn HostOs,
    env: &dyn Fn(&str) -> Option<String>,
    owner_of: &dyn Fn(&Path) -> Option<u32>,
) -> Result<Plan, RootlessError> {
    let uid = os.euid();
    if uid == 0 {
        return Err(RootlessError::AsRoot);
    }
    let runtime =
        env("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()).ok_or(RootlessError::NoRuntimeDir { uid })?;
    let runtime = PathBuf::from(runtime);
    let owner = owner_of(&runtime);
    if owner != Some(uid) || !runtime.is_absolute() {
        return Err(RootlessError::RuntimeDirNotOwned { path: runtime, owner, uid });
    }
    let rootlesskit = os
        .which("rootlesskit")
        .ok_or(RootlessError::Missing { program: "rootlesskit", package: "rootlesskit" })?;
    for program in ["newuidmap", "newgidmap"] {
        if os.which(program).is_none() {
            return Err(RootlessError::Missing { program, package: "uidmap" });
        }
    }
    let user = user_name(os, uid);
    for (kind, file) in [("uid", "/etc/subuid"), ("gid", "/etc/subgid")] {
        let text = os.read(Path::new(file)).unwrap_or_default();
        if !has_range(&text, user.as_deref(), uid) {
            return Err(RootlessError::NoRange {
                user: user.clone().unwrap_or_else(|| uid.to_string()),
                uid,
                kind,
                file: PathBuf::from(file),
            });
        }
    }
    let run_dir = runtime.join("ecsd");
    Ok(Plan { rootlesskit, state_dir: run_dir.join("rk"), run_dir })
}

/// The name `/etc/passwd` gives `uid`.
fn user_name(os: &dyn HostOs, uid: u32) -> Option<String> {
    let passwd = os.read(Path::new("/etc/passwd"))?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let (name, _, id) = (f.next()?, f.next()?, f.next()?);
        (id.parse() == Ok(uid)).then(|| name.to_owned())
    })
}

/// Whether `/etc/subuid` (or subgid) text gives the user, by name or uid, a non-empty range.
fn has_range(text: &str, user: Option<&str>, uid: u32) -> bool {
    let uid = uid.to_string();
    text.lines().any(|l| {
        let f: Vec<&str> = l.trim().split(':').collect();
        f.len() == 3
            && (Some(f[0]) == user || f[0] == uid)
            && f[1].parse::<u64>().is_ok()
            && f[2].parse::<u64>().is_ok_and(|n| n > 0)
    })
}

impl Plan {
    /// rootlesskit's arguments to run `exe args`: the host network (the API on the host's
    /// loopback), private copies of /etc and /run, and a PID namespace so that containerd,
    /// its shims and the tasks end with ecsd.
    pub fn arguments(&self, exe: &Path, args: &[OsString]) -> Vec<OsString> {
        let mut out: Vec<OsString> =
            ["--net=host", "--copy-up=/etc", "--copy-up=/run", "--pidns", "--propagation=rprivate"]
                .iter()
                .map(OsString::from)
                .collect();
        let mut state = OsString::from("--state-dir=");
        state.push(&self.state_dir);
        out.push(state);
        out.push(exe.as_os_str().to_owned());
        out.extend(args.iter().cloned());
        out
    }

    /// The command that re-executes ecsd under rootlesskit.
    pub fn command(&self, exe: &Path, args: &[OsString]) -> std::process::Command {
        let mut c = std::process::Command::new(&self.rootlesskit);
        c.args(self.arguments(exe, args)).env(INSIDE_ENV, "1");
        c
    }

    /// Creates the runtime dir and removes a state dir a killed rootlesskit left (rootlesskit
    /// refuses to start on one that holds its lock files from before), but not the one of a
    /// rootlesskit that still runs: it holds the flock on `lock` there, and removing its socket
    /// and pid file would break the running ecsd before this one fails on the data dir's lock.
    pub fn prepare(&self) -> Result<(), RootlessError> {
        use std::os::unix::fs::DirBuilderExt;
        let err = |path: &Path| {
            let path = path.to_owned();
            move |source| RootlessError::Prepare { path, source }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.run_dir)
            .map_err(err(&self.run_dir))?;
        let lock = self.state_dir.join("lock");
        if let Ok(file) = std::fs::File::open(&lock) {
            use rustix::fs::{FlockOperation, flock};
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Err(rustix::io::Errno::WOULDBLOCK) => return Err(RootlessError::AlreadyRunning { lock }),
                Err(e) => return Err(err(&lock)(e.into())),
                // Released when `file` closes, before the removal below.
                Ok(()) => {}
            }
        }
        match std::fs::remove_dir_all(&self.state_dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(err(&self.state_dir)(e)),
            _ => Ok(()),
        }
    }
}

/// Inside the namespace: gives `run` (the copied-up `/run`) directories of its own for
/// containerd, runc and network namespaces, and a lock file for iptables, in place of links
/// to the host's.
pub fn prepare_inside(run: &Path) -> Result<(), RootlessError> {
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| RootlessError::Prepare { path, source }
    };
    for name in PRIVATE_RUN_DIRS.iter().chain(PRIVATE_RUN_FILES.iter()) {
        let path = run.join(name);
        if path.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
            std::fs::remove_file(&path).map_err(err(&path))?;
        }
    }
    for name in PRIVATE_RUN_DIRS {
        let path = run.join(name);
        std::fs::create_dir_all(&path).map_err(err(&path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use crate::host::fake::Fake;

    use super::*;

    fn user() -> Fake {
        Fake {
            files: BTreeMap::from([
                ("/etc/passwd", "root:x:0:0::/root:/bin/sh\nalice:x:1001:1001::/home/alice:/bin/sh\n"),
                ("/etc/subuid", "bob:200000:65536\nalice:100000:65536\n"),
                ("/etc/subgid", "1001:100000:65536\n"),
            ]),
            bins: BTreeSet::from(["rootlesskit", "newuidmap", "newgidmap"]),
            euid: 1001,
            ..Fake::default()
        }
    }

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
    }

    const RUN: &[(&str, &str)] = &[("XDG_RUNTIME_DIR", "/run/user/1001"), ("HOME", "/home/alice")];

    #[test]
    fn a_prepared_user_gets_the_rootlesskit_command() {
        let plan = preflight(&user(), &env(RUN), &|_| Some(1001)).unwrap();
        assert_eq!(plan.state_dir, PathBuf::from("/run/user/1001/ecsd/rk"));
        let args = plan.arguments(Path::new("/opt/ecsd"), &["serve".into(), "--rootless".into()]);
        let args: Vec<&str> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "--net=host",
                "--copy-up=/etc",
                "--copy-up=/run",
                "--pidns",
                "--propagation=rprivate",
                "--state-dir=/run/user/1001/ecsd/rk",
                "/opt/ecsd",
                "serve",
                "--rootless"
            ]
        );
    }

    #[test]
    fn each_missing_piece_is_named_with_its_fix() {
        let text = |host: &Fake, vars, owner: Option<u32>| {
            preflight(host, &env(vars), &|_| owner).unwrap_err().to_string()
        };
        let mut root = user();
        root.euid = 0;
        assert!(
            text(&root, RUN, Some(0)).starts_with("--rootless (ECSD_ROOTLESS) is for an unprivileged user")
        );
        assert!(text(&user(), &[], None).starts_with("XDG_RUNTIME_DIR is not set"));
        assert_eq!(
            text(&user(), RUN, Some(0)),
            "XDG_RUNTIME_DIR=/run/user/1001 is not this user's (it belongs to uid 0): point it at a directory owned by uid 1001 with mode 0700"
        );
        assert!(text(&user(), RUN, None).contains("(it does not exist)"));
        let mut no_kit = user();
        no_kit.bins.remove("rootlesskit");
        assert_eq!(
            text(&no_kit, RUN, Some(1001)),
            "rootlesskit is not installed (or not on PATH): install the rootlesskit package (Debian: apt-get install rootlesskit)"
        );
        let mut no_map = user();
        no_map.bins.remove("newgidmap");
        assert!(text(&no_map, RUN, Some(1001)).starts_with("newgidmap is not installed"));
        assert!(text(&no_map, RUN, Some(1001)).contains("apt-get install uidmap"));
        let mut no_range = user();
        no_range.files.insert("/etc/subgid", "bob:1:65536\nalice:5:0\n");
        assert_eq!(
            text(&no_range, RUN, Some(1001)),
            "user alice (uid 1001) has no subordinate gid range in /etc/subgid: add one as root, e.g. usermod --add-subuids 100000-165535 --add-subgids 100000-165535 alice"
        );
    }

    #[test]
    fn xdg_directories_fall_back_to_home() {
        let vars =
            env(&[("HOME", "/home/alice"), ("XDG_CONFIG_HOME", "/cfg"), ("XDG_DATA_HOME", "relative")]);
        assert_eq!(xdg_dir(&vars, "XDG_CONFIG_HOME", ".config"), PathBuf::from("/cfg/ecsd"));
        // Relative XDG paths are invalid by the spec and ignored.
        assert_eq!(
            xdg_dir(&vars, "XDG_DATA_HOME", ".local/share"),
            PathBuf::from("/home/alice/.local/share/ecsd")
        );
        assert_eq!(run_dir(&vars), None);
        assert_eq!(run_dir(&env(RUN)), Some(PathBuf::from("/run/user/1001/ecsd")));
    }

    #[test]
    fn a_stale_state_dir_is_removed_but_not_a_running_rootlesskits() {
        let dir = tempfile::tempdir().unwrap();
        let plan = Plan {
            rootlesskit: PathBuf::from("/usr/bin/rootlesskit"),
            run_dir: dir.path().join("ecsd"),
            state_dir: dir.path().join("ecsd/rk"),
        };
        std::fs::create_dir_all(&plan.state_dir).unwrap();
        let lock = plan.state_dir.join("lock");
        std::fs::write(&lock, "").unwrap();
        std::fs::write(plan.state_dir.join("child_pid"), "42").unwrap();
        // A running rootlesskit holds the flock: its state stays, and the error says why.
        let held = std::fs::File::open(&lock).unwrap();
        rustix::fs::flock(&held, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
        let e = plan.prepare().unwrap_err();
        assert!(matches!(&e, RootlessError::AlreadyRunning { lock: l } if *l == lock), "{e}");
        assert!(e.to_string().starts_with("another rootless ecsd of this user is running"), "{e}");
        assert!(plan.state_dir.join("child_pid").exists());
        // Once it is gone, the stale dir is removed.
        drop(held);
        plan.prepare().unwrap();
        assert!(!plan.state_dir.exists() && plan.run_dir.is_dir());
    }

    #[test]
    fn the_users_ids_come_from_rootlesskit() {
        let inside = env(&[("ROOTLESSKIT_PARENT_EUID", "1001"), ("ROOTLESSKIT_PARENT_EGID", "1002")]);
        assert_eq!(parent_ids(&inside), Some((1001, 1002)));
        assert_eq!(parent_ids(&env(&[("ROOTLESSKIT_PARENT_EUID", "1001")])), None);
        assert_eq!(
            parent_ids(&env(&[("ROOTLESSKIT_PARENT_EUID", "x"), ("ROOTLESSKIT_PARENT_EGID", "1")])),
            None
        );
    }

    #[test]
    fn inside_replaces_links_to_the_hosts_run_with_its_own() {
        let run = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        std::fs::create_dir(host.path().join("netns")).unwrap();
        std::os::unix::fs::symlink(host.path().join("netns"), run.path().join("netns")).unwrap();
        std::os::unix::fs::symlink(host.path().join("xtables.lock"), run.path().join("xtables.lock"))
            .unwrap();
        std::fs::write(run.path().join("keep"), "").unwrap();
        prepare_inside(run.path()).unwrap();
        for d in PRIVATE_RUN_DIRS {
            let m = run.path().join(d).symlink_metadata().unwrap();
            assert!(m.is_dir(), "{d}");
        }
        assert!(!run.path().join("xtables.lock").exists());
        assert!(run.path().join("keep").exists());
        // The host's directory is untouched.
        assert!(host.path().join("netns").is_dir());
        // Twice is fine (a restart inside the same namespace).
        prepare_inside(run.path()).unwrap();
    }
}
