//! Task networking: one network namespace per task, created before its containers and
//! removed after them. Interfaces, addresses and port mappings join in the networking issue.
//!
//! This module knows nothing of ECS wire types; the engine asks for a namespace per task.

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::process::Command;

#[cfg(any(test, feature = "test-support"))]
pub mod fake;
pub mod firewall;
mod forward;
mod netavark;
pub mod netns;
mod outbound;
mod podman;
pub mod settings;
#[cfg(test)]
mod sim;
mod task_locks;

pub use netavark::Netavark;
pub use outbound::OutboundError;
pub use podman::ExternalProblem;

pub use settings::{NetworkDef, Settings, SettingsError, Uplink};

/// The search domain aardvark-dns answers task names in (netavark's default).
pub const DNS_DOMAIN: &str = "dns.podman";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A port (or a run of `range` ports) published on the host and forwarded to the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMap {
    pub host_port: u16,
    pub container_port: u16,
    /// How many consecutive ports, from both starts (1 for a single port).
    pub range: u16,
    pub protocol: Protocol,
}

/// One network namespace to make for a task: the task's own (awsvpc, none), or one per
/// container (bridge).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSpec {
    /// `None`: the task's namespace; `Some(i)`: the namespace of the task's i-th container.
    pub container: Option<usize>,
    /// An interface on one of the configured networks; `None` leaves loopback only.
    pub attach: Option<Attach>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attach {
    /// The name of a configured network ([`NetworkDef::name`]).
    pub network: String,
    /// Names other sandboxes on the network resolve to this one's address, besides the
    /// private DNS names made from the address.
    pub aliases: Vec<String>,
    /// The domain of the private DNS name: `ip-10-0-0-4.<domain>` (`ec2.internal` in us-east-1).
    pub dns_domain: String,
    pub ports: Vec<PortMap>,
}

/// What [`Network::create`] made for one [`SandboxSpec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    pub container: Option<usize>,
    pub netns: PathBuf,
    pub iface: Option<Interface>,
}

/// The sandbox's interface on a network (`eth0`).
#[derive(Debug, Clone, PartialEq, Eq)]
/// (Its prefix, gateway and DNS server are the network's: see [`NetworkDef`].)
pub struct Interface {
    pub network: String,
    pub address: Ipv4Addr,
    pub mac: String,
    /// `ip-10-217-0-4.ec2.internal`.
    pub private_dns_name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("cannot run {command}")]
    Spawn { command: String, source: std::io::Error },
    #[error("{command} failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("{command} did not finish within {after:?} and was killed")]
    Timeout { command: String, after: Duration },
    /// Making, entering or deleting a network namespace in-process.
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    /// A published port ecsd forwards itself (uplink namespace) cannot be listened on.
    #[error("cannot listen on host port {port} to forward it to the task")]
    Publish {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("no network named '{0}' is configured")]
    UnknownNetwork(String),
    /// A Podman network of `ECS_EXTERNAL_NETWORKS` that cannot be joined.
    #[error("ECS_EXTERNAL_NETWORKS: Podman network '{network}' cannot be joined: {reason}")]
    External { network: String, reason: ExternalProblem },
    #[error("network '{network}' ({subnet}) has no free address left")]
    Exhausted { network: String, subnet: String },
    #[error("{what}")]
    State {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A teardown that could not release everything; what it names stays recorded, and the
    /// next [`Network::remove`] of the task carries on from there.
    #[error("the network of task {task_id} still holds {}", list(held))]
    StillHeld {
        task_id: String,
        held: Vec<Held>,
        /// Why (the first failure met).
        #[source]
        cause: Option<Box<NetworkError>>,
    },
    /// The operation was cut short because the runtime is shutting down; what it made is
    /// recorded and removed by the next start.
    #[error("the network operation was interrupted: ecsd is shutting down")]
    Interrupted,
}

impl NetworkError {
    /// Whether the same call can succeed later without anyone changing the host or the
    /// configuration: a tool failing or timing out under load, a lock held elsewhere, a
    /// full subnet. Not transient: a tool that is missing or not allowed to run, a state
    /// directory that cannot be written, a network that is not configured. A
    /// [`NetworkError::StillHeld`] is as transient as its cause.
    pub fn is_transient(&self) -> bool {
        use std::io::ErrorKind::{NotFound, PermissionDenied, ReadOnlyFilesystem};
        match self {
            NetworkError::Spawn { source, .. } => !matches!(source.kind(), NotFound | PermissionDenied),
            NetworkError::Command { .. } | NetworkError::Timeout { .. } | NetworkError::Exhausted { .. } => {
                true
            }
            NetworkError::UnknownNetwork(_) | NetworkError::External { .. } => false,
            NetworkError::State { source, .. } => {
                !matches!(source.kind(), PermissionDenied | ReadOnlyFilesystem)
            }
            NetworkError::StillHeld { cause, .. } => cause.as_ref().is_none_or(|c| c.is_transient()),
            NetworkError::Interrupted => true,
            NetworkError::Netns(e) => e.is_transient(),
            // A port in use may be freed; one below the unprivileged start stays refused.
            NetworkError::Publish { source, .. } => source.kind() != PermissionDenied,
        }
    }
}

/// Something of a task's network that a teardown has not released yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// A network namespace (`/run/netns/…`).
    Namespace(PathBuf),
    /// A sandbox's `eth0`, whose peer is on the network's bridge.
    Interface { sandbox: String, network: String },
    /// An address, taken as long as the sandbox's state file exists.
    Address { network: String, address: Ipv4Addr },
    /// A sandbox's name records in aardvark-dns.
    DnsRecords { sandbox: String, network: String },
    /// netavark's port-forwarding rules for a sandbox.
    FirewallRules { sandbox: String, count: usize },
    /// A network's bridge (and with it the network's own firewall rules) with no sandbox
    /// left on it, which the teardown of the last one removes.
    Bridge { network: String, bridge: String },
}

impl std::fmt::Display for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Held::Namespace(path) => write!(f, "namespace {}", path.display()),
            Held::Interface { sandbox, network } => {
                write!(f, "interface eth0 of sandbox {sandbox} on network '{network}'")
            }
            Held::Address { network, address } => write!(f, "address {address} on network '{network}'"),
            Held::DnsRecords { sandbox, network } => {
                write!(f, "DNS records of sandbox {sandbox} on network '{network}'")
            }
            Held::FirewallRules { sandbox, count } => {
                write!(f, "{count} port-forwarding rule(s) of sandbox {sandbox}")
            }
            Held::Bridge { network, bridge } => {
                write!(f, "bridge {bridge} of network '{network}', with no sandbox left on it")
            }
        }
    }
}

fn list(held: &[Held]) -> String {
    held.iter().map(Held::to_string).collect::<Vec<_>>().join(", ")
}

/// The network side of a task's lifecycle.
///
/// Both calls are safe to make concurrently and repeatedly for one task (they take turns),
/// and both run to their end even when the caller stops waiting: a `create` whose caller
/// went away is undone, unless a newer `create` of the task came meanwhile.
#[async_trait]
pub trait Network: Send + Sync + std::fmt::Debug + 'static {
    /// Makes the task's sandboxes (namespace with loopback up and 169.254.170.2 on it, plus the
    /// interface and published ports asked for). All or nothing: on error nothing is left
    /// (or, if undoing failed too, what is left is listed by [`Network::list`]).
    /// Host mode asks for no sandbox.
    async fn create(&self, task_id: &str, sandboxes: &[SandboxSpec]) -> Result<Vec<Sandbox>, NetworkError>;
    /// Removes whatever `create` made for the task, releasing its addresses and ports.
    /// Removing what is gone succeeds; a removal that stopped half-way (an error, a crash)
    /// is finished by the next call. Fails with [`NetworkError::StillHeld`], naming what
    /// is left, only when something is still held (or [`NetworkError::State`] when the
    /// state directory cannot be read).
    async fn remove(&self, task_id: &str) -> Result<(), NetworkError>;
    /// The task ids that hold anything now (to find leaks after a crash).
    async fn list(&self) -> Result<Vec<String>, NetworkError>;
    /// Called once when the daemon stops: closes what serves the running tasks from ecsd
    /// itself (port forwarders) and removes what no task needs any more. Tasks keep running.
    async fn shutdown(&self) {}
}

/// Runs the network tools (`ip`, `iptables`, `iptables-save`, netavark) and makes and
/// deletes network namespaces. [`Processes`] spawns the tools and does the namespaces
/// in-process ([`netns`]); unit tests pass a simulated host.
#[async_trait]
pub trait Runner: Send + Sync + std::fmt::Debug + 'static {
    /// Runs `program` to its end with `input` on its stdin; returns its stdout. A failure
    /// names the command and carries what the tool said.
    async fn run(
        &self,
        program: &OsStr,
        args: &[&OsStr],
        input: Option<&[u8]>,
    ) -> Result<Vec<u8>, NetworkError>;

    /// Creates the network namespace `<dir>/<name>` (nothing in it); fails if it exists.
    /// In-process, so it works in a user namespace that does not own the host's network
    /// namespace, where `ip netns add` fails.
    async fn add_netns(&self, dir: &Path, name: &str) -> Result<(), NetworkError> {
        netns::add(dir, name).await.map(drop).map_err(NetworkError::from)
    }

    /// Unmounts and removes the network namespace `<dir>/<name>`; removing what is gone succeeds.
    async fn delete_netns(&self, dir: &Path, name: &str) -> Result<(), NetworkError> {
        netns::delete(&dir.join(name)).map_err(NetworkError::from)
    }
}

/// The real [`Runner`]: child processes, each killed when it outlives `timeout` (or when
/// the call is dropped).
#[derive(Debug, Clone)]
pub struct Processes {
    pub timeout: Duration,
    /// The network namespace the tools run in (the uplink namespace); `None`: ecsd's own.
    pub netns: Option<PathBuf>,
}

impl Default for Processes {
    fn default() -> Self {
        // netavark takes ~40 ms; a loaded host and the xtables lock make it seconds.
        Processes { timeout: Duration::from_secs(60), netns: None }
    }
}

impl Processes {
    /// Tools that run inside the network namespace at `netns` (they are forked by a thread
    /// that entered it: no `nsenter` needed).
    pub fn in_netns(netns: &Path) -> Processes {
        Processes { netns: Some(netns.to_owned()), ..Processes::default() }
    }
}

/// Named network namespaces under `/run/netns`, made as iproute2 makes them (but in-process:
/// see [`netns`]), so `ip netns` shows and deletes them and other tools (netavark,
/// `ip netns exec`) can join them by path.
#[derive(Debug, Clone)]
pub struct Namespaces {
    prefix: String,
    dir: PathBuf,
    runner: Arc<dyn Runner>,
}

/// Where the task endpoints listen inside a namespace (the ECS agent's port).
pub const ENDPOINTS_PORT: u16 = 51679;

/// How long an `iptables` waits for the host-wide xtables lock, which netavark's own
/// `iptables --wait` calls hold in turns on a busy host.
const XTABLES_WAIT_SECS: &str = "30";

#[async_trait]
impl Runner for Processes {
    async fn run(
        &self,
        program: &OsStr,
        args: &[&OsStr],
        input: Option<&[u8]>,
    ) -> Result<Vec<u8>, NetworkError> {
        use tokio::io::AsyncWriteExt;
        let command = std::iter::once(program)
            .chain(args.iter().copied())
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        let spawn_err = |source| NetworkError::Spawn { command: command.clone(), source };
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(if input.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = match &self.netns {
            None => cmd.spawn().map_err(spawn_err)?,
            Some(netns) => {
                let runtime = tokio::runtime::Handle::current();
                netns::in_netns(netns, move || {
                    let _entered = runtime.enter();
                    Ok(cmd.spawn())
                })
                .await?
                .map_err(spawn_err)?
            }
        };
        let finished = tokio::time::timeout(self.timeout, async {
            if let (Some(mut stdin), Some(input)) = (child.stdin.take(), input) {
                stdin.write_all(input).await?;
            }
            child.wait_with_output().await
        })
        .await;
        let out = match finished {
            Ok(out) => out.map_err(spawn_err)?,
            // Dropping the child killed it.
            Err(_) => return Err(NetworkError::Timeout { command, after: self.timeout }),
        };
        if out.status.success() {
            return Ok(out.stdout);
        }
        let said = serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| {
                format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout))
            });
        Err(NetworkError::Command { command, stderr: said.trim().to_owned() })
    }
}

impl Namespaces {
    /// `prefix` names this daemon's namespaces (`<prefix><task id>`).
    pub fn new(prefix: &str) -> Namespaces {
        Namespaces::with_runner(prefix, Path::new("/run/netns"), Arc::new(Processes::default()))
    }

    /// Namespaces made through `runner`, whose `ip netns` keeps them in `dir` (tests pass a
    /// simulated host and a temporary directory).
    pub fn with_runner(prefix: &str, dir: &Path, runner: Arc<dyn Runner>) -> Namespaces {
        Namespaces { prefix: prefix.to_owned(), dir: dir.to_owned(), runner }
    }

    pub(crate) fn runner(&self) -> &Arc<dyn Runner> {
        &self.runner
    }

    fn name(&self, task_id: &str) -> String {
        format!("{}{task_id}", self.prefix)
    }

    pub fn path(&self, task_id: &str) -> PathBuf {
        self.dir.join(self.name(task_id))
    }

    async fn ip(&self, args: &[&str]) -> Result<Vec<u8>, NetworkError> {
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        self.runner.run(OsStr::new("ip"), &args, None).await
    }

    /// Runs `ip -n NETNS -batch -` with the commands on stdin: one process for several changes.
    async fn ip_batch(&self, netns: &str, commands: &str) -> Result<(), NetworkError> {
        let args: Vec<&OsStr> = ["-n", netns, "-batch", "-"].into_iter().map(OsStr::new).collect();
        self.runner.run(OsStr::new("ip"), &args, Some(commands.as_bytes())).await.map(drop)
    }

    /// Forwards 169.254.170.2:80 to 169.254.170.2:ENDPOINTS_PORT inside the namespace.
    async fn redirect_endpoints(&self, netns: &str) -> Result<(), NetworkError> {
        let to = format!("169.254.170.2:{ENDPOINTS_PORT}");
        let args = [
            "netns",
            "exec",
            netns,
            "iptables",
            "-w",
            XTABLES_WAIT_SECS,
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-d",
            "169.254.170.2/32",
            "-p",
            "tcp",
            "--dport",
            "80",
            "-j",
            "DNAT",
            "--to-destination",
            &to,
        ];
        self.ip(&args).await.map(drop)
    }

    /// Creates the namespace `<prefix><key>` with loopback up and 169.254.170.2 on it (where
    /// the task's metadata and credentials endpoints listen), and returns its path.
    pub async fn add(&self, key: &str) -> Result<PathBuf, NetworkError> {
        let name = self.name(key);
        let path = self.path(key);
        if !path.exists() {
            self.runner.add_netns(&self.dir, &name).await?;
        }
        let setup = self.ip_batch(&name, "link set lo up\naddr replace 169.254.170.2/32 dev lo\n").await;
        // The endpoints listen on ENDPOINTS_PORT, and 169.254.170.2:80 is forwarded there inside
        // the namespace: a listener on port 80 itself would keep the task's own servers from
        // binding 0.0.0.0:80. (ECS reserves the agent's port 51679 the same way.)
        let setup = match setup {
            Ok(()) => self.redirect_endpoints(&name).await,
            Err(e) => Err(e),
        };
        if let Err(e) = setup {
            // If this fails too, the namespace is listed and the next removal takes it.
            let _ = self.runner.delete_netns(&self.dir, &name).await;
            return Err(e);
        }
        Ok(path)
    }

    /// Creates the namespace `<prefix><key>` and nothing in it (where netavark can tear down
    /// what a sandbox whose namespace is gone left on the host).
    pub(crate) async fn add_empty(&self, key: &str) -> Result<PathBuf, NetworkError> {
        if !self.path(key).exists() {
            self.runner.add_netns(&self.dir, &self.name(key)).await?;
        }
        Ok(self.path(key))
    }

    /// Adds a veth pair `eth0`/`eth0-gone` inside the namespace `<prefix><key>`: a stand-in
    /// for a sandbox interface that went with its namespace, for netavark's teardown, which
    /// removes the bridge and the network's rules only after it has deleted an `eth0`.
    pub(crate) async fn add_stand_in(&self, key: &str) -> Result<(), NetworkError> {
        let name = self.name(key);
        self.ip(&["-n", &name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0-gone"])
            .await
            .map(drop)
    }

    /// Deletes the namespace `<prefix><key>`; deleting what is gone succeeds.
    pub async fn delete(&self, key: &str) -> Result<(), NetworkError> {
        if !self.path(key).exists() {
            return Ok(());
        }
        self.runner.delete_netns(&self.dir, &self.name(key)).await
    }

    /// Whether the namespace `<prefix><key>` has an interface `ifname`.
    pub(crate) async fn has_link(&self, key: &str, ifname: &str) -> Result<bool, NetworkError> {
        #[derive(Deserialize)]
        struct Link {
            ifname: String,
        }
        let out = self.ip(&["-n", &self.name(key), "-j", "link", "show"]).await?;
        let links: Vec<Link> = serde_json::from_slice(&out).map_err(|e| NetworkError::Command {
            command: format!("ip -n {} -j link show", self.name(key)),
            stderr: format!("unexpected answer ({e}): {}", String::from_utf8_lossy(&out)),
        })?;
        Ok(links.iter().any(|l| l.ifname == ifname))
    }

    /// The keys (`<task id>` or `<task id>-<n>`) of this daemon's namespaces.
    pub fn keys(&self) -> Result<Vec<String>, NetworkError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(source) => {
                return Err(NetworkError::State {
                    what: format!("cannot read {}", self.dir.display()),
                    source,
                });
            }
        };
        Ok(entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|n| n.strip_prefix(&self.prefix).map(str::to_owned))
            // Only task ids: another daemon's longer prefix (`ecsd-ecs-blue-…`) is not ours.
            .filter(|key| task_of(key).is_some())
            .collect())
    }
}

/// The task id of a namespace key: `<32 hex>` or `<32 hex>-<container index>`.
pub fn task_of(key: &str) -> Option<&str> {
    let (id, rest) = key.split_at_checked(32)?;
    let id_ok = id.bytes().all(|b| b.is_ascii_hexdigit());
    let rest_ok = rest.is_empty()
        || rest.strip_prefix('-').is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    (id_ok && rest_ok).then_some(id)
}

/// The namespace key of a sandbox.
pub fn key_of(task_id: &str, container: Option<usize>) -> String {
    match container {
        None => task_id.to_owned(),
        Some(i) => format!("{task_id}-{i}"),
    }
}

/// `ip-10-217-0-4.ec2.internal`, as EC2 names an address.
pub fn private_dns_name(address: Ipv4Addr, domain: &str) -> String {
    let [a, b, c, d] = address.octets();
    format!("ip-{a}-{b}-{c}-{d}.{domain}")
}

/// The domain EC2 gives private DNS names in a region.
pub fn dns_domain(region: &str) -> String {
    if region == "us-east-1" { "ec2.internal".into() } else { format!("{region}.compute.internal") }
}
