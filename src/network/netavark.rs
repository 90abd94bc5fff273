//! Task networks through netavark, the network stack Podman uses: ecsd passes it the same
//! JSON network options Podman does, so a host's ecsd and Podman networks behave alike
//! and share netavark's firewall chains.
//!
//! Addresses come from ecsd's own IPAM. Each sandbox with an interface has a state file
//! (`<state dir>/<namespace>.json`, written and synced before netavark runs) holding the
//! options it was set up with: the address is taken exactly as long as that file exists,
//! and teardown, also after a crash, replays the same options.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::settings::BRIDGE_PREFIX;
use super::{
    Attach, Interface, Namespaces, Network, NetworkDef, NetworkError, PortMap, Sandbox, SandboxSpec,
    Settings, key_of, private_dns_name, task_of,
};

/// The mangle-table chain that keeps ecsd's networks apart (netavark 1.4 does not).
const ISOLATION_CHAIN: &str = "ECSD-ISOLATION";

#[derive(Debug)]
pub struct Netavark {
    settings: Settings,
    namespaces: Namespaces,
    /// Sandbox state files.
    state_dir: PathBuf,
    /// netavark's `--config` directory (aardvark-dns's records and pid file).
    config_dir: PathBuf,
    ipam: Mutex<Ipam>,
    /// netavark runs one at a time, as Podman serializes it: concurrent runs race on the
    /// firewall chains they share.
    serial: tokio::sync::Mutex<bool>,
}

/// Addresses in use per network, and where the next search starts, so a released address
/// is not handed out again right away.
#[derive(Debug, Default)]
struct Ipam {
    used: BTreeMap<String, BTreeSet<Ipv4Addr>>,
    next: BTreeMap<String, u32>,
}

impl Ipam {
    fn allocate(&mut self, net: &NetworkDef) -> Result<Ipv4Addr, NetworkError> {
        let range = net.assignable();
        let used = self.used.entry(net.name.clone()).or_default();
        let size = range.end() - range.start() + 1;
        let start = self.next.get(&net.name).copied().filter(|n| range.contains(n)).unwrap_or(*range.start());
        for i in 0..size {
            let candidate = range.start() + (start - range.start() + i) % size;
            let ip = Ipv4Addr::from(candidate);
            if used.insert(ip) {
                let after = if candidate == *range.end() { *range.start() } else { candidate + 1 };
                self.next.insert(net.name.clone(), after);
                return Ok(ip);
            }
        }
        Err(NetworkError::Exhausted { network: net.name.clone(), subnet: net.cidr() })
    }

    fn release(&mut self, network: &str, ip: Ipv4Addr) {
        if let Some(used) = self.used.get_mut(network) {
            used.remove(&ip);
        }
    }
}

/// What a sandbox's state file holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SandboxState {
    key: String,
    network: String,
    address: Ipv4Addr,
    options: NetworkOptions,
}

/// netavark's input, as Podman writes it (netavark 1.x `types::NetworkOptions`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct NetworkOptions {
    container_id: String,
    container_name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    port_mappings: Vec<NvPort>,
    networks: BTreeMap<String, PerNetwork>,
    network_info: BTreeMap<String, NvNetwork>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct NvPort {
    host_ip: String,
    container_port: u16,
    host_port: u16,
    range: u16,
    protocol: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PerNetwork {
    interface_name: String,
    static_ips: Vec<IpAddr>,
    static_mac: String,
    aliases: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct NvNetwork {
    name: String,
    id: String,
    driver: String,
    network_interface: String,
    subnets: Vec<NvSubnet>,
    ipv6_enabled: bool,
    internal: bool,
    dns_enabled: bool,
    ipam_options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct NvSubnet {
    subnet: String,
    gateway: Ipv4Addr,
}

/// netavark's answer to `setup`: per network, the interfaces it made.
#[derive(Debug, Deserialize)]
struct StatusBlock {
    #[serde(default)]
    interfaces: BTreeMap<String, NvInterface>,
}

#[derive(Debug, Deserialize)]
struct NvInterface {
    mac_address: String,
}

impl Netavark {
    /// Loads the addresses held by existing sandboxes from `state_dir`.
    pub fn new(
        settings: Settings,
        namespaces: Namespaces,
        state_dir: &Path,
    ) -> Result<Netavark, NetworkError> {
        let state = |what: String| move |source| NetworkError::State { what, source };
        std::fs::create_dir_all(state_dir)
            .map_err(state(format!("cannot create {}", state_dir.display())))?;
        let config_dir = state_dir.join("netavark");
        // netavark needs its config dir's aardvark-dns subdirectory to exist, or it fails
        // after it has made the interface.
        std::fs::create_dir_all(config_dir.join("aardvark-dns"))
            .map_err(state(format!("cannot create {}", config_dir.display())))?;
        let net = Netavark {
            settings,
            namespaces,
            state_dir: state_dir.to_owned(),
            config_dir,
            ipam: Mutex::new(Ipam::default()),
            serial: tokio::sync::Mutex::new(false),
        };
        let mut ipam = net.ipam.lock().unwrap_or_else(|e| e.into_inner());
        for s in net.states()? {
            ipam.used.entry(s.network.clone()).or_default().insert(s.address);
        }
        drop(ipam);
        Ok(net)
    }

    fn state_path(&self, key: &str) -> PathBuf {
        self.state_dir.join(format!("{key}.json"))
    }

    /// Every sandbox state file (unreadable ones are reported and skipped).
    fn states(&self) -> Result<Vec<SandboxState>, NetworkError> {
        let entries = std::fs::read_dir(&self.state_dir).map_err(|source| NetworkError::State {
            what: format!("cannot read {}", self.state_dir.display()),
            source,
        })?;
        let mut out = vec![];
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<SandboxState>(&b).map_err(|e| e.to_string()))
            {
                Ok(s) => out.push(s),
                Err(e) => {
                    warn!(file = %path.display(), error = %e, "ignoring an unreadable network state file")
                }
            }
        }
        Ok(out)
    }

    /// The sandboxes that exist: namespaces, and state files (named `<key>.json`, so this
    /// reads no file).
    fn sandbox_keys(&self) -> Result<BTreeSet<String>, NetworkError> {
        let mut keys: BTreeSet<String> = self.namespaces.keys()?.into_iter().collect();
        let entries = std::fs::read_dir(&self.state_dir).map_err(|source| NetworkError::State {
            what: format!("cannot read {}", self.state_dir.display()),
            source,
        })?;
        keys.extend(entries.flatten().filter_map(|e| {
            let path = e.path();
            (path.extension()? == "json").then(|| path.file_stem()?.to_str().map(str::to_owned)).flatten()
        }));
        Ok(keys)
    }

    fn write_state(&self, s: &SandboxState) -> Result<(), NetworkError> {
        let path = self.state_path(&s.key);
        let err = |source| NetworkError::State { what: format!("cannot write {}", path.display()), source };
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&serde_json::to_vec(s).expect("serializable")).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)?;
        Ok(())
    }

    /// Makes one sandbox; on error, whatever it made is undone.
    async fn make(&self, task_id: &str, spec: &SandboxSpec) -> Result<Sandbox, NetworkError> {
        let key = key_of(task_id, spec.container);
        let netns = self.namespaces.add(&key).await?;
        let Some(attach) = &spec.attach else {
            return Ok(Sandbox { container: spec.container, netns, iface: None });
        };
        match self.attach(&key, &netns, attach).await {
            Ok(iface) => Ok(Sandbox { container: spec.container, netns, iface: Some(iface) }),
            Err(e) => {
                if let Err(e) = self.unmake(&key).await {
                    warn!(sandbox = %key, error = %crate::error_chain(&e), "cannot undo a failed network setup");
                }
                Err(e)
            }
        }
    }

    async fn attach(&self, key: &str, netns: &Path, attach: &Attach) -> Result<Interface, NetworkError> {
        let net = self
            .settings
            .network(&attach.network)
            .ok_or_else(|| NetworkError::UnknownNetwork(attach.network.clone()))?;
        let address = self.ipam.lock().unwrap_or_else(|e| e.into_inner()).allocate(net)?;
        let dns_name = private_dns_name(address, &attach.dns_domain);
        let short = dns_name.split('.').next().unwrap_or_default().to_owned();
        let mut aliases = vec![short.clone(), dns_name.clone()];
        aliases.extend(attach.aliases.iter().filter(|a| !a.is_empty()).cloned());
        let options = NetworkOptions {
            container_id: container_id(key),
            container_name: short,
            port_mappings: attach.ports.iter().map(nv_port).collect(),
            networks: BTreeMap::from([(
                nv_name(net),
                PerNetwork {
                    interface_name: "eth0".into(),
                    static_ips: vec![IpAddr::V4(address)],
                    static_mac: mac_address(),
                    aliases,
                },
            )]),
            network_info: BTreeMap::from([(nv_name(net), nv_network(net))]),
        };
        let state = SandboxState { key: key.to_owned(), network: net.name.clone(), address, options };
        if let Err(e) = self.write_state(&state) {
            self.ipam.lock().unwrap_or_else(|e| e.into_inner()).release(&net.name, address);
            return Err(e);
        }
        let out = self.netavark("setup", netns, &state.options).await?;
        let status: BTreeMap<String, StatusBlock> =
            serde_json::from_slice(&out).map_err(|e| NetworkError::Command {
                command: "netavark setup".into(),
                stderr: format!("unexpected answer ({e}): {}", String::from_utf8_lossy(&out)),
            })?;
        let block = status.get(&nv_name(net));
        let mac = block
            .and_then(|b| b.interfaces.get("eth0"))
            .map(|i| i.mac_address.clone())
            .unwrap_or_else(|| state.options.networks[&nv_name(net)].static_mac.clone());
        Ok(Interface { network: net.name.clone(), address, mac, private_dns_name: dns_name })
    }

    /// Undoes a sandbox: netavark teardown with the options it was set up with, the
    /// namespace, then the state file, which releases the address.
    async fn unmake(&self, key: &str) -> Result<(), NetworkError> {
        let path = self.state_path(key);
        let state = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice::<SandboxState>(&b).ok(),
            Err(_) => None,
        };
        let netns = self.namespaces.path(key);
        let mut first_error = None;
        if let Some(state) = &state {
            if netns.exists() {
                if let Err(e) = self.netavark("teardown", &netns, &state.options).await {
                    first_error = Some(e);
                }
            } else {
                // The namespace went with a reboot, and the interfaces and rules with it.
                debug!(sandbox = %key, "namespace gone; nothing for netavark to tear down");
            }
        }
        if let Err(e) = self.namespaces.delete(key).await {
            first_error.get_or_insert(e);
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        if let Some(state) = state {
            if let Err(source) = std::fs::remove_file(&path)
                && source.kind() != std::io::ErrorKind::NotFound
            {
                return Err(NetworkError::State {
                    what: format!("cannot remove {}", path.display()),
                    source,
                });
            }
            self.ipam.lock().unwrap_or_else(|e| e.into_inner()).release(&state.network, state.address);
        }
        Ok(())
    }

    async fn netavark(
        &self,
        verb: &str,
        netns: &Path,
        options: &NetworkOptions,
    ) -> Result<Vec<u8>, NetworkError> {
        let mut isolated = self.serial.lock().await;
        if verb == "setup" && !*isolated {
            self.ensure_isolation().await?;
            *isolated = true;
        }
        let args = [
            OsStr::new("--config"),
            self.config_dir.as_os_str(),
            OsStr::new("--aardvark-binary"),
            self.settings.aardvark.as_os_str(),
            OsStr::new(verb),
            netns.as_os_str(),
        ];
        let input = serde_json::to_vec(options).expect("serializable");
        super::run(self.settings.netavark.as_os_str(), &args, Some(&input)).await
    }

    /// Traffic between two ecsd networks is dropped; within one it passes. The rules match
    /// bridge names (`-i ecsd+ -o ecsd+`), so they hold for networks made later too, and
    /// adding them is idempotent, so several ecsds on a host share them.
    async fn ensure_isolation(&self) -> Result<(), NetworkError> {
        let t = ["-w", "5", "-t", "mangle"];
        if iptables(&[&t[..], &["-n", "-L", ISOLATION_CHAIN]].concat()).await.is_err() {
            // Another ecsd may make it at the same moment; the check below settles it.
            let _ = iptables(&[&t[..], &["-N", ISOLATION_CHAIN]].concat()).await;
        }
        let jump = ["FORWARD", "-j", ISOLATION_CHAIN];
        if iptables(&[&t[..], &["-C"], &jump[..]].concat()).await.is_err() {
            iptables(&[&t[..], &["-I"], &jump[..]].concat()).await?;
        }
        let any = format!("{BRIDGE_PREFIX}+");
        let drop = ["-i", any.as_str(), "-o", any.as_str(), "-j", "DROP"];
        for net in &self.settings.networks {
            let same =
                [ISOLATION_CHAIN, "-i", net.bridge.as_str(), "-o", net.bridge.as_str(), "-j", "RETURN"];
            if iptables(&[&t[..], &["-C"], &same[..]].concat()).await.is_err() {
                iptables(&[&t[..], &["-I"], &same[..]].concat()).await?;
            }
        }
        if iptables(&[&t[..], &["-C", ISOLATION_CHAIN], &drop[..]].concat()).await.is_err() {
            iptables(&[&t[..], &["-A", ISOLATION_CHAIN], &drop[..]].concat()).await?;
        }
        Ok(())
    }
}

async fn iptables(args: &[&str]) -> Result<(), NetworkError> {
    super::run("iptables", args, None).await.map(drop)
}

/// netavark's container id (it names firewall rules and DNS records after it): 64 hex
/// characters derived from the namespace key, so teardown after a crash finds the same.
fn container_id(key: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(format!("ecsd-sandbox:{key}")))
}

/// A locally administered unicast MAC in the style of EC2's ENIs (`0a:…`).
fn mac_address() -> String {
    let b = uuid::Uuid::new_v4().into_bytes();
    format!("0a:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4])
}

fn nv_port(p: &PortMap) -> NvPort {
    NvPort {
        host_ip: String::new(),
        container_port: p.container_port,
        host_port: p.host_port,
        range: p.range.max(1),
        protocol: p.protocol.as_str().to_owned(),
    }
}

/// The network's name for netavark, which names its firewall chains and DNS records after
/// it: the bridge's, unique on the host, where ecsd's own names (`default`) are not.
fn nv_name(net: &NetworkDef) -> String {
    net.bridge.clone()
}

fn nv_network(net: &NetworkDef) -> NvNetwork {
    NvNetwork {
        name: nv_name(net),
        id: net.id(),
        driver: "bridge".into(),
        network_interface: net.bridge.clone(),
        subnets: vec![NvSubnet { subnet: net.cidr(), gateway: net.gateway() }],
        ipv6_enabled: false,
        internal: false,
        dns_enabled: net.dns,
        ipam_options: BTreeMap::from([("driver".into(), "host-local".into())]),
    }
}

#[async_trait]
impl Network for Netavark {
    async fn create(&self, task_id: &str, sandboxes: &[SandboxSpec]) -> Result<Vec<Sandbox>, NetworkError> {
        // A second attempt (a restarted engine) starts from nothing.
        self.remove(task_id).await?;
        let mut made = Vec::with_capacity(sandboxes.len());
        for spec in sandboxes {
            match self.make(task_id, spec).await {
                Ok(sb) => made.push(sb),
                Err(e) => {
                    if let Err(e) = self.remove(task_id).await {
                        warn!(task = %task_id, error = %crate::error_chain(&e), "cannot undo a failed network setup");
                    }
                    return Err(e);
                }
            }
        }
        Ok(made)
    }

    async fn remove(&self, task_id: &str) -> Result<(), NetworkError> {
        let keys = self.sandbox_keys()?.into_iter().filter(|k| task_of(k) == Some(task_id));
        let mut first_error = None;
        for key in keys {
            if let Err(e) = self.unmake(&key).await {
                warn!(sandbox = %key, error = %crate::error_chain(&e), "cannot remove a task sandbox");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn list(&self) -> Result<Vec<String>, NetworkError> {
        let ids: BTreeSet<String> =
            self.sandbox_keys()?.iter().filter_map(|k| task_of(k)).map(str::to_owned).collect();
        Ok(ids.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipam_skips_reserved_addresses_and_does_not_reuse_at_once() {
        let net = NetworkDef::new("t", "10.9.0.0/29", Some("ecsd-t"), true).unwrap();
        let mut ipam = Ipam::default();
        // /29: .0 network, .1 gateway, .2 .3 reserved, .7 broadcast: .4 .5 .6 remain.
        let a = ipam.allocate(&net).unwrap();
        let b = ipam.allocate(&net).unwrap();
        assert_eq!((a, b), (Ipv4Addr::new(10, 9, 0, 4), Ipv4Addr::new(10, 9, 0, 5)));
        ipam.release("t", a);
        assert_eq!(ipam.allocate(&net).unwrap(), Ipv4Addr::new(10, 9, 0, 6));
        assert_eq!(ipam.allocate(&net).unwrap(), a, "wraps around to the released address");
        let err = ipam.allocate(&net).unwrap_err();
        assert!(err.to_string().contains("no free address"), "{err}");
    }

    #[test]
    fn options_have_podmans_shape() {
        let net = NetworkDef::new("default", "10.217.0.0/16", None, true).unwrap();
        let v = serde_json::to_value(nv_network(&net)).unwrap();
        assert_eq!(v["network_interface"], "ecsd0");
        assert_eq!(v["subnets"][0]["gateway"], "10.217.0.1");
        assert_eq!(v["subnets"][0]["subnet"], "10.217.0.0/16");
        assert_eq!(v["id"].as_str().unwrap().len(), 64);
        let p = serde_json::to_value(nv_port(&PortMap {
            host_port: 8080,
            container_port: 80,
            range: 1,
            protocol: super::super::Protocol::Udp,
        }))
        .unwrap();
        assert_eq!(
            p,
            serde_json::json!({"host_ip":"","container_port":80,"host_port":8080,"range":1,"protocol":"udp"})
        );
        assert_eq!(container_id("abc"), container_id("abc"));
        assert!(mac_address().starts_with("0a:"));
    }
}
