//! What this host offers ecsd, probed once: container runtimes, root or not, cgroups, OCI
//! runtime binaries, `/dev/net/tun`, the lowest port an unprivileged process may bind.
//!
//! [`HostFacts`] is plain data, read through [`HostOs`] so tests probe made-up hosts;
//! [`HostFacts::findings`] says what each fact means for running tasks here. `ecsd serve`
//! logs the facts at start and `ecsd doctor` prints them with their meaning.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// The host as the probe reads it.
pub trait HostOs {
    /// A file's text (`None` when it cannot be read).
    fn read(&self, path: &Path) -> Option<String>;
    fn exists(&self, path: &Path) -> bool;
    /// `name` on `PATH` (or in the sbin directories root has).
    fn which(&self, name: &str) -> Option<PathBuf>;
    fn euid(&self) -> u32;
    /// Whether this process may open `path` for reading and writing.
    fn read_write(&self, path: &Path) -> bool;
    /// Whether something accepts connections on the unix socket at `path`.
    fn answers(&self, path: &Path) -> bool;
}

/// The real host.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealHost;

impl HostOs for RealHost {
    fn read(&self, path: &Path) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn which(&self, name: &str) -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    }
    fn euid(&self) -> u32 {
        rustix::process::geteuid().as_raw()
    }
    fn read_write(&self, path: &Path) -> bool {
        std::fs::OpenOptions::new().read(true).write(true).open(path).is_ok()
    }
    fn answers(&self, path: &Path) -> bool {
        std::os::unix::net::UnixStream::connect(path).is_ok()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupVersion {
    V1,
    V2,
}

/// One container runtime: its binary, and its API socket and whether it answers there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuntimeFact {
    pub binary: Option<PathBuf>,
    pub socket: PathBuf,
    pub answers: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostFacts {
    pub euid: u32,
    /// Not root, or root only inside a user namespace (`/proc/self/uid_map` maps a range).
    pub rootless: bool,
    pub containerd: RuntimeFact,
    pub podman: RuntimeFact,
    pub cgroup: CgroupVersion,
    /// cgroup v2 only: this process may create child cgroups where it runs.
    pub cgroup_delegated: bool,
    /// OCI runtime binaries found (`runc`, `crun`).
    pub oci_runtimes: Vec<PathBuf>,
    pub netavark: Option<PathBuf>,
    /// What gives the uplink namespace (rootless) its way out; it needs `tun_usable`.
    pub slirp4netns: Option<PathBuf>,
    pub tun_usable: bool,
    pub unprivileged_port_start: Option<u16>,
    /// What `ecsd serve --rootless` re-executes under, and whether `newuidmap` and
    /// `newgidmap` (package uidmap) are installed for it.
    pub rootlesskit: Option<PathBuf>,
    pub uidmap: bool,
}

/// What a fact means for running tasks here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// `ok`, `note` (works, with a consequence worth knowing) or `blocker` (ecsd cannot run tasks).
    pub level: Level,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Note,
    Blocker,
}

const NETAVARK: &str = "/usr/lib/podman/netavark";

impl HostFacts {
    /// Reads the host; `containerd_socket` is where ecsd would talk to containerd, and
    /// `slirp4netns` the program it would run for the uplink (a path, or a name on PATH).
    pub fn probe(os: &dyn HostOs, containerd_socket: &Path, slirp4netns: &Path) -> HostFacts {
        let euid = os.euid();
        let full_map = os
            .read(Path::new("/proc/self/uid_map"))
            .is_none_or(|m| m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"]);
        let podman_socket = if euid == 0 {
            PathBuf::from("/run/podman/podman.sock")
        } else {
            let runtime_dir = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
            runtime_dir
                .unwrap_or_else(|| PathBuf::from(format!("/run/user/{euid}")))
                .join("podman/podman.sock")
        };
        let cgroup = if os.exists(Path::new("/sys/fs/cgroup/cgroup.controllers")) {
            CgroupVersion::V2
        } else {
            CgroupVersion::V1
        };
        let cgroup_delegated = cgroup == CgroupVersion::V2
            && (euid == 0
                || os
                    .read(Path::new("/proc/self/cgroup"))
                    .and_then(|c| c.lines().find_map(|l| l.strip_prefix("0::").map(str::to_owned)))
                    .is_some_and(|own| {
                        os.read_write(
                            &Path::new("/sys/fs/cgroup")
                                .join(own.trim_start_matches('/'))
                                .join("cgroup.procs"),
                        )
                    }));
        HostFacts {
            euid,
            rootless: euid != 0 || !full_map,
            containerd: RuntimeFact {
                binary: os.which("containerd"),
                socket: containerd_socket.to_owned(),
                answers: os.answers(containerd_socket),
            },
            podman: RuntimeFact {
                binary: os.which("podman"),
                answers: os.answers(&podman_socket),
                socket: podman_socket,
            },
            cgroup,
            cgroup_delegated,
            oci_runtimes: ["runc", "crun"].iter().filter_map(|n| os.which(n)).collect(),
            netavark: os
                .exists(Path::new(NETAVARK))
                .then(|| PathBuf::from(NETAVARK))
                .or_else(|| os.which("netavark")),
            slirp4netns: match slirp4netns.to_str() {
                Some(name) if !name.contains('/') => os.which(name),
                _ => Some(slirp4netns.to_owned()).filter(|p| os.exists(p)),
            },
            tun_usable: os.read_write(Path::new("/dev/net/tun")),
            unprivileged_port_start: os
                .read(Path::new("/proc/sys/net/ipv4/ip_unprivileged_port_start"))
                .and_then(|v| v.trim().parse().ok()),
            rootlesskit: os.which("rootlesskit"),
            uidmap: os.which("newuidmap").is_some() && os.which("newgidmap").is_some(),
        }
    }

    /// Why a rootless ecsd leaves task cpu and memory limits out, for its once-per-task warning.
    pub fn why_no_limits(&self) -> &'static str {
        match (self.cgroup, self.cgroup_delegated) {
            (CgroupVersion::V1, _) => {
                "cgroup v1 gives an unprivileged user no cgroups of its own, so the containers run unlimited in ecsd's cgroup"
            }
            (CgroupVersion::V2, false) => {
                "cgroup v2 has not delegated a subtree to this user (systemd's user@.service does), so the containers run unlimited in ecsd's cgroup"
            }
            (CgroupVersion::V2, true) => {
                "ecsd does not use a delegated cgroup v2 subtree yet, so the containers run unlimited in ecsd's cgroup"
            }
        }
    }

    /// Whether `ecsd serve` can run tasks here as things stand.
    pub fn can_serve(&self) -> bool {
        self.findings().iter().all(|f| f.level != Level::Blocker)
    }

    /// What each fact means, blockers first.
    pub fn findings(&self) -> Vec<Finding> {
        let mut out = Vec::new();
        let mut say = |level, text: String| out.push(Finding { level, text });
        match (self.rootless, self.euid == 0) {
            (false, _) => {}
            // Inside the user namespace of `ecsd serve --rootless`.
            (true, true) => say(
                Level::Note,
                "root only inside a user namespace (rootless): task networks run in ecsd's uplink namespace, \
                 published TCP ports are forwarded from the host"
                    .into(),
            ),
            (true, false) => match (&self.rootlesskit, self.uidmap) {
                (Some(_), true) => say(
                    Level::Note,
                    format!(
                        "running as uid {}: run ecsd serve --rootless (it needs ranges in /etc/subuid and /etc/subgid \
                         and XDG_RUNTIME_DIR); every network mode runs, with task networks in ecsd's uplink namespace",
                        self.euid
                    ),
                ),
                (None, _) => say(
                    Level::Blocker,
                    format!(
                        "running as uid {} and rootlesskit is not installed: install it (Debian: apt-get install \
                         rootlesskit uidmap) for ecsd serve --rootless, or run ecsd as root",
                        self.euid
                    ),
                ),
                (Some(_), false) => say(
                    Level::Blocker,
                    format!(
                        "running as uid {} and newuidmap/newgidmap are not installed: install them (Debian: \
                         apt-get install uidmap) for ecsd serve --rootless, or run ecsd as root",
                        self.euid
                    ),
                ),
            },
        }
        match (&self.containerd.binary, self.containerd.answers) {
            (_, true) => say(
                Level::Ok,
                format!("containerd answers at {}: tasks run there", self.containerd.socket.display()),
            ),
            (Some(bin), false) => say(
                Level::Ok,
                format!(
                    "containerd is installed ({}) but nothing answers at {}: ecsd starts its own, with its state in the data dir",
                    bin.display(),
                    self.containerd.socket.display()
                ),
            ),
            (None, false) => match &self.podman.binary {
                Some(p) => say(
                    Level::Ok,
                    format!(
                        "no containerd (binary or socket); Podman is installed ({}): ecsd serve (--runtime auto, \
                         the default) runs tasks on Podman, through a Podman service of its own in the data dir",
                        p.display()
                    ),
                ),
                None => say(
                    Level::Blocker,
                    "no containerd and no Podman: install one (Debian: apt-get install containerd runc, or hack/setup)"
                        .into(),
                ),
            },
        }
        if self.oci_runtimes.is_empty() {
            say(
                Level::Blocker,
                "no OCI runtime (runc or crun) on PATH: neither containerd nor Podman can start containers"
                    .into(),
            );
        }
        if self.netavark.is_none() {
            say(
                Level::Note,
                "netavark is not installed: only networkMode host and none tasks can run".into(),
            );
        }
        if self.podman.binary.is_some() {
            say(
                Level::Note,
                "Podman is installed: its networks can be joined with ECS_EXTERNAL_NETWORKS; ecsd's task networks are its own".into(),
            );
        }
        match (self.cgroup, self.cgroup_delegated) {
            (CgroupVersion::V1, _) if !self.rootless => {
                say(Level::Ok, "cgroup v1: task and container cpu and memory limits apply".into())
            }
            (CgroupVersion::V1, _) => say(
                Level::Note,
                "cgroup v1 without root: task cpu and memory limits are not applied (each task that sets them logs one warning)"
                    .into(),
            ),
            (CgroupVersion::V2, true) => {
                say(Level::Ok, "cgroup v2: task and container cpu and memory limits apply".into())
            }
            (CgroupVersion::V2, false) => say(
                Level::Note,
                "cgroup v2 without delegation to this user: task cpu and memory limits are not applied".into(),
            ),
        }
        // The uplink namespace (always there rootless) gets its way out through slirp4netns.
        let uplink =
            "bridge and awsvpc tasks in the uplink namespace (rootless, or ECSD_NETWORK_UPLINK=netns)";
        if !self.tun_usable {
            say(
                Level::Note,
                format!(
                    "/dev/net/tun cannot be opened by this user: {uplink} cannot reach the outside until root \
                     runs `chmod 0666 /dev/net/tun`; the next task network then attaches slirp4netns, with no restart"
                ),
            );
        }
        match (&self.slirp4netns, self.rootless) {
            (None, true) => say(
                Level::Note,
                format!(
                    "slirp4netns is not installed (or not where ECSD_SLIRP4NETNS points): {uplink} cannot reach \
                     the outside (apt-get install slirp4netns)"
                ),
            ),
            (Some(p), true) if self.tun_usable => {
                say(Level::Ok, format!("{uplink} reach the outside through slirp4netns ({})", p.display()))
            }
            _ => {}
        }
        if let Some(port) = self.unprivileged_port_start.filter(|p| *p > 0 && self.rootless) {
            say(
                Level::Note,
                format!(
                    "net.ipv4.ip_unprivileged_port_start is {port}: without root, host ports below it cannot be published (RunTask refuses them)"
                ),
            );
        }
        out.sort_by_key(|f| match f.level {
            Level::Blocker => 0,
            Level::Note => 1,
            Level::Ok => 2,
        });
        out
    }
}

/// A made-up host for tests: files, binaries, sockets that answer, files this user may open.
#[cfg(test)]
pub(crate) mod fake {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};

    use super::HostOs;

    /// A made-up host: files, binaries, sockets that answer, files this user may open.
    #[derive(Default)]
    pub(crate) struct Fake {
        pub(crate) files: BTreeMap<&'static str, &'static str>,
        pub(crate) bins: BTreeSet<&'static str>,
        pub(crate) answering: BTreeSet<&'static str>,
        pub(crate) writable: BTreeSet<&'static str>,
        pub(crate) euid: u32,
    }

    impl HostOs for Fake {
        fn read(&self, path: &Path) -> Option<String> {
            self.files.get(path.to_str()?).map(|s| s.to_string())
        }
        fn exists(&self, path: &Path) -> bool {
            path.to_str().is_some_and(|p| self.files.contains_key(p))
        }
        fn which(&self, name: &str) -> Option<PathBuf> {
            self.bins.contains(name).then(|| PathBuf::from("/usr/bin").join(name))
        }
        fn euid(&self) -> u32 {
            self.euid
        }
        fn read_write(&self, path: &Path) -> bool {
            path.to_str().is_some_and(|p| self.writable.contains(p))
        }
        fn answers(&self, path: &Path) -> bool {
            path.to_str().is_some_and(|p| self.answering.contains(p))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::fake::Fake;
    use super::*;

    const SOCKET: &str = "/run/containerd/containerd.sock";

    /// The probe with the default socket and slirp4netns (a name on PATH).
    fn probe(os: &Fake) -> HostFacts {
        HostFacts::probe(os, Path::new(SOCKET), Path::new("slirp4netns"))
    }

    /// This machine: root, cgroup v1, containerd installed and answering, podman, runc.
    fn this_machine() -> Fake {
        Fake {
            files: BTreeMap::from([
                ("/proc/self/uid_map", "         0          0 4294967295\n"),
                ("/proc/sys/net/ipv4/ip_unprivileged_port_start", "1024\n"),
                (NETAVARK, ""),
            ]),
            bins: BTreeSet::from(["containerd", "podman", "runc"]),
            answering: BTreeSet::from([SOCKET]),
            ..Fake::default()
        }
    }

    #[test]
    fn a_root_host_with_containerd_can_serve() {
        let f = probe(&this_machine());
        assert!(!f.rootless);
        assert_eq!(f.cgroup, CgroupVersion::V1);
        assert_eq!(f.oci_runtimes, [PathBuf::from("/usr/bin/runc")]);
        assert_eq!(f.unprivileged_port_start, Some(1024));
        assert!(!f.tun_usable);
        assert_eq!(f.slirp4netns, None);
        assert!(f.can_serve(), "{:#?}", f.findings());
        let texts: Vec<String> = f.findings().into_iter().map(|f| f.text).collect();
        assert!(
            texts.iter().any(|t| t.starts_with("containerd answers at /run/containerd/containerd.sock")),
            "{texts:#?}"
        );
    }

    #[test]
    fn podman_without_containerd_runs_tasks_on_podman_and_neither_is_a_blocker() {
        let mut host = this_machine();
        host.bins.remove("containerd");
        host.answering.clear();
        let f = probe(&host);
        assert!(f.can_serve(), "{:#?}", f.findings());
        let texts: Vec<String> = f.findings().into_iter().map(|f| f.text).collect();
        assert!(
            texts.iter().any(|t| t.contains("Podman is installed (/usr/bin/podman): ecsd serve")),
            "{texts:#?}"
        );
        // Without Podman either, nothing can run tasks: a blocker that says what to install.
        host.bins.remove("podman");
        let f = probe(&host);
        assert!(!f.can_serve());
        let first = &f.findings()[0];
        assert_eq!(first.level, Level::Blocker);
        assert!(first.text.contains("apt-get install containerd runc"), "{}", first.text);
        // Installed but not running is fine: ecsd starts its own.
        host.bins.insert("containerd");
        assert!(probe(&host).can_serve());
    }

    #[test]
    fn rootless_hosts_are_told_what_does_not_work_and_how_to_fix_it() {
        let mut host = this_machine();
        host.euid = 1001;
        host.files.insert("/proc/self/uid_map", "0 1001 1\n1 100000 65536\n");
        host.files.insert("/sys/fs/cgroup/cgroup.controllers", "cpu memory\n");
        host.files.insert("/proc/self/cgroup", "0::/user.slice/user-1001.slice/session-1.scope\n");
        let f = probe(&host);
        assert!(f.rootless && !f.cgroup_delegated);
        // Without rootlesskit, a user cannot serve.
        assert!(!f.can_serve());
        let texts: Vec<String> = f.findings().into_iter().map(|f| f.text).collect();
        assert!(
            texts[0].starts_with("running as uid 1001 and rootlesskit is not installed: install it"),
            "{texts:#?}"
        );
        host.bins.extend(["rootlesskit", "newuidmap"]);
        assert!(probe(&host).findings()[0].text.contains("apt-get install uidmap"));
        host.bins.insert("newgidmap");
        let f = probe(&host);
        assert!(f.can_serve(), "{:#?}", f.findings());
        assert!(f.why_no_limits().starts_with("cgroup v2 has not delegated"));
        let texts: Vec<String> = f.findings().into_iter().map(|f| f.text).collect();
        assert!(
            texts.iter().any(|t| t.starts_with("running as uid 1001: run ecsd serve --rootless")),
            "{texts:#?}"
        );
        assert!(texts.iter().any(|t| t.contains("ip_unprivileged_port_start is 1024")), "{texts:#?}");
        assert!(texts.iter().any(|t| t.starts_with("cgroup v2 without delegation")), "{texts:#?}");
        // No way out for the uplink: each missing piece named with its fix.
        assert!(
            texts
                .iter()
                .any(|t| t.contains("cannot reach the outside until root runs `chmod 0666 /dev/net/tun`")),
            "{texts:#?}"
        );
        assert!(texts.iter().any(|t| t.starts_with("slirp4netns is not installed")), "{texts:#?}");
        host.bins.insert("slirp4netns");
        host.writable.insert("/dev/net/tun");
        let texts: Vec<String> = probe(&host).findings().into_iter().map(|f| f.text).collect();
        assert!(!texts.iter().any(|t| t.contains("tun") || t.contains("not installed")), "{texts:#?}");
        assert!(
            texts.iter().any(|t| t.contains("reach the outside through slirp4netns (/usr/bin/slirp4netns)")),
            "{texts:#?}"
        );
        // The configured one (ECSD_SLIRP4NETNS) is the one ecsd runs: a path that is not there
        // is no slirp4netns, one that is, or a name on PATH, is.
        let configured =
            |os: &Fake| HostFacts::probe(os, Path::new(SOCKET), Path::new("/opt/slirp/slirp4netns"));
        assert_eq!(configured(&host).slirp4netns, None);
        host.files.insert("/opt/slirp/slirp4netns", "");
        assert_eq!(configured(&host).slirp4netns, Some(PathBuf::from("/opt/slirp/slirp4netns")));
        assert_eq!(probe(&host).slirp4netns, Some(PathBuf::from("/usr/bin/slirp4netns")));
        // Delegated: the user may write its own cgroup.
        host.writable.insert("/sys/fs/cgroup/user.slice/user-1001.slice/session-1.scope/cgroup.procs");
        assert!(probe(&host).cgroup_delegated);
        // Root inside a user namespace is rootless too.
        let mut userns = this_machine();
        userns.files.insert("/proc/self/uid_map", "0 1001 1\n");
        let f = probe(&userns);
        assert!(f.rootless && f.can_serve());
        assert!(f.why_no_limits().starts_with("cgroup v1 gives an unprivileged user no cgroups"));
        assert!(
            f.findings().iter().any(|f| f.text.starts_with("root only inside a user namespace (rootless)"))
        );
    }
}
