//! Task networking: one network namespace per task, created before its containers and
//! removed after them. Interfaces, addresses and port mappings join in the networking issue.
//!
//! This module knows nothing of ECS wire types; the engine asks for a namespace per task.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::process::Command;

#[cfg(any(test, feature = "test-support"))]
pub mod fake;
mod netavark;
pub mod settings;

pub use netavark::Netavark;

pub use settings::{NetworkDef, Settings, SettingsError};

/// The search domain aardvark-dns answers task names in (netavark's default).
pub const DNS_DOMAIN: &str = "dns.podman";

/// How a task is networked, from the task definition's `networkMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Awsvpc,
    Bridge,
    Host,
    None,
}

impl Mode {
    pub fn parse(network_mode: Option<&str>) -> Mode {
        match network_mode {
            Some("awsvpc") => Mode::Awsvpc,
            Some("host") => Mode::Host,
            Some("none") => Mode::None,
            _ => Mode::Bridge,
        }
    }
}

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
    #[error("no network named '{0}' is configured")]
    UnknownNetwork(String),
    #[error("network '{network}' ({subnet}) has no free address left")]
    Exhausted { network: String, subnet: String },
    #[error("{what}")]
    State {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// The network side of a task's lifecycle.
#[async_trait]
pub trait Network: Send + Sync + std::fmt::Debug + 'static {
    /// Makes the task's sandboxes (namespace with loopback up and 169.254.170.2 on it, plus the
    /// interface and published ports asked for). All or nothing: on error nothing is left.
    /// Host mode asks for no sandbox.
    async fn create(&self, task_id: &str, sandboxes: &[SandboxSpec]) -> Result<Vec<Sandbox>, NetworkError>;
    /// Removes whatever `create` made for the task, releasing its addresses and ports.
    /// Removing what is gone succeeds.
    async fn remove(&self, task_id: &str) -> Result<(), NetworkError>;
    /// The task ids that hold anything now (to find leaks after a crash).
    async fn list(&self) -> Result<Vec<String>, NetworkError>;
}

/// Named network namespaces under `/run/netns`, made with iproute2, so `ip netns` shows them
/// and other tools (netavark, `ip netns exec`) can join them by path.
#[derive(Debug, Clone)]
pub struct Namespaces {
    prefix: String,
    dir: PathBuf,
}

impl Namespaces {
    /// `prefix` names this daemon's namespaces (`<prefix><task id>`).
    pub fn new(prefix: &str) -> Namespaces {
        Namespaces { prefix: prefix.to_owned(), dir: PathBuf::from("/run/netns") }
    }

    fn name(&self, task_id: &str) -> String {
        format!("{}{task_id}", self.prefix)
    }

    pub fn path(&self, task_id: &str) -> PathBuf {
        self.dir.join(self.name(task_id))
    }
}

/// Where the task endpoints listen inside a namespace (the ECS agent's port).
pub const ENDPOINTS_PORT: u16 = 51679;

/// Forwards 169.254.170.2:80 to 169.254.170.2:ENDPOINTS_PORT inside the namespace.
async fn redirect_endpoints(netns: &str) -> Result<(), NetworkError> {
    let port = ENDPOINTS_PORT.to_string();
    let to = format!("169.254.170.2:{port}");
    let args = [
        "netns",
        "exec",
        netns,
        "iptables",
        "-w",
        "5",
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
    ip(&args).await
}

/// Runs a network tool to its end, with `input` on its stdin; returns its stdout. A failure
/// names the command and carries what the tool said (netavark's `{"error": …}`, else stderr).
pub(crate) async fn run<S: AsRef<std::ffi::OsStr>>(
    program: S,
    args: &[S],
    input: Option<&[u8]>,
) -> Result<Vec<u8>, NetworkError> {
    use tokio::io::AsyncWriteExt;
    let command = std::iter::once(&program)
        .chain(args)
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let spawn_err = |source| NetworkError::Spawn { command: command.clone(), source };
    let mut child = Command::new(&program)
        .args(args)
        .stdin(if input.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_err)?;
    if let (Some(mut stdin), Some(input)) = (child.stdin.take(), input) {
        stdin.write_all(input).await.map_err(spawn_err)?;
    }
    let out = child.wait_with_output().await.map_err(spawn_err)?;
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

async fn ip(args: &[&str]) -> Result<(), NetworkError> {
    run("ip", args, None).await.map(drop)
}

/// Runs `ip -n NETNS -batch -` with the commands on stdin: one process for several changes.
async fn ip_batch(netns: &str, commands: &str) -> Result<(), NetworkError> {
    run("ip", &["-n", netns, "-batch", "-"], Some(commands.as_bytes())).await.map(drop)
}

impl Namespaces {
    /// Creates the namespace `<prefix><key>` with loopback up and 169.254.170.2 on it (where
    /// the task's metadata and credentials endpoints listen), and returns its path.
    pub async fn add(&self, key: &str) -> Result<PathBuf, NetworkError> {
        let name = self.name(key);
        let path = self.path(key);
        if !path.exists() {
            ip(&["netns", "add", &name]).await?;
        }
        let setup = ip_batch(&name, "link set lo up\naddr replace 169.254.170.2/32 dev lo\n").await;
        // The endpoints listen on ENDPOINTS_PORT, and 169.254.170.2:80 is forwarded there inside
        // the namespace: a listener on port 80 itself would keep the task's own servers from
        // binding 0.0.0.0:80. (ECS reserves the agent's port 51679 the same way.)
        let setup = match setup {
            Ok(()) => redirect_endpoints(&name).await,
            Err(e) => Err(e),
        };
        if let Err(e) = setup {
            let _ = ip(&["netns", "delete", &name]).await;
            return Err(e);
        }
        Ok(path)
    }

    /// Deletes the namespace `<prefix><key>`; deleting what is gone succeeds.
    pub async fn delete(&self, key: &str) -> Result<(), NetworkError> {
        if !self.path(key).exists() {
            return Ok(());
        }
        ip(&["netns", "delete", &self.name(key)]).await
    }

    /// The keys (`<task id>` or `<task id>-<n>`) of this daemon's namespaces.
    pub fn keys(&self) -> Result<Vec<String>, NetworkError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(source) => {
                return Err(NetworkError::Spawn { command: format!("read {}", self.dir.display()), source });
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
