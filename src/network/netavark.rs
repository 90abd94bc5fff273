//! Task networks through netavark, the network stack Podman uses: ecsd passes it the same
//! JSON network options Podman does, so a host's ecsd and Podman networks behave alike
//! and share netavark's firewall chains.
//!
//! Addresses come from ecsd's own IPAM. Each sandbox with an interface has a state file
//! (`<state dir>/<namespace>.json`, written and synced before netavark runs) holding the
//! options it was set up with: the address is taken exactly as long as that file exists,
//! and teardown, also after a crash, replays the same options.
//!
//! Teardown is resumable. A sandbox's state file goes only once netavark's part (interface,
//! port forwarding, DNS records) is verified gone, and its namespace only after that, so
//! whatever a failed or interrupted teardown left is found and finished by the next one.
//! netavark 1.4's own exit status is not the judge: its teardown is not idempotent (a
//! second run fails on what the first removed) and it fails after releasing everything
//! when aardvark-dns has just exited (`aardvark pid not found`), so when it fails, ecsd
//! looks at what is really left.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tracing::{debug, error, warn};

use super::forward::{Forwarders, Route};
use super::outbound::{self, Outbound, SlirpConfig};
use super::podman::{self, External, Joined};
use super::settings::{BRIDGE_PREFIX, Uplink};
use super::task_locks::{TaskLocks, Ticket};
use super::{
    Attach, Held, Interface, Namespaces, Network, NetworkDef, NetworkError, PortMap, Processes, Runner,
    Sandbox, SandboxSpec, Settings, key_of, private_dns_name, task_of,
};

/// The key of the uplink namespace (`<prefix>uplink`), which is no task's.
const UPLINK_KEY: &str = "uplink";

/// The mangle-table chain that keeps ecsd's networks apart (netavark 1.4 does not), and
/// them from Podman's.
const ISOLATION_CHAIN: &str = "ECSD-ISOLATION";

/// The bridges Podman names itself: `podman0` (its default network) and `podman1`, … (each
/// `podman network create`) with netavark; `cni-podman0`, … with CNI.
const PODMAN_BRIDGES: [&str; 2] = ["podman+", "cni-podman+"];

/// netavark teardowns of one sandbox before a removal gives up and reports what is held.
const TEARDOWN_ATTEMPTS: u32 = 3;

#[derive(Debug)]
pub struct Netavark {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: Settings,
    namespaces: Namespaces,
    runner: Arc<dyn Runner>,
    /// Sandbox state files.
    state_dir: PathBuf,
    /// netavark's `--config` directory (aardvark-dns's records and pid file).
    config_dir: PathBuf,
    ipam: Mutex<Ipam>,
    /// The Podman networks every sandbox with an interface also joins.
    external: Vec<External>,
    /// netavark runs one at a time, as Podman serializes it: concurrent runs race on the
    /// firewall chains they share.
    serial: tokio::sync::Mutex<bool>,
    tasks: TaskLocks,
    /// Pause between teardown attempts (grows with each attempt).
    retry_pause: Duration,
    /// The host's interfaces (`/sys/class/net`): a bridge's members are `<bridge>/brif/*`.
    sys_class_net: PathBuf,
    /// The uplink namespace netavark, aardvark-dns and the isolation rules run in
    /// ([`Uplink::Netns`]); `runner` runs the tools there.
    uplink: Option<PathBuf>,
    /// Published ports, with an uplink namespace.
    forwarders: Option<Forwarders>,
    /// The uplink namespace's way out (slirp4netns), with an uplink namespace.
    outbound: Option<Outbound>,
    /// Held while the uplink namespace is made: two tasks' first setups must not both make
    /// it, nor one use it before it is mounted.
    making_uplink: tokio::sync::Mutex<()>,
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

    /// The first of `candidates` not in use on Podman network `network`.
    fn allocate_external(&mut self, net: &External) -> Result<Ipv4Addr, NetworkError> {
        let used = self.used.entry(external_key(&net.name)).or_default();
        let ip = net.candidates().find(|ip| !used.contains(ip));
        let ip =
            ip.ok_or_else(|| NetworkError::Exhausted { network: net.name.clone(), subnet: net.cidr() })?;
        used.insert(ip);
        Ok(ip)
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
    /// The Podman networks (`ECS_EXTERNAL_NETWORKS`) the sandbox joined, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    external: Vec<Joined>,
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

/// What the state file of a sandbox says.
enum Recorded {
    /// No state file: the sandbox has no interface (or never got one).
    Nothing,
    Sandbox(Box<SandboxState>),
    /// A file that does not parse (the writes are atomic, so only damage does this).
    Unreadable,
}

/// What one sandbox's teardown could not release yet, and why.
#[derive(Debug)]
struct Unmade {
    held: Vec<Held>,
    cause: Option<NetworkError>,
}

impl Netavark {
    /// Loads the addresses held by existing sandboxes from `state_dir`.
    pub fn new(
        settings: Settings,
        namespaces: Namespaces,
        state_dir: &Path,
    ) -> Result<Netavark, NetworkError> {
        let external = match settings.external.is_empty() {
            true => vec![],
            false => podman::inspect(&settings.podman, &settings.external)?,
        };
        let tools: Arc<dyn Runner> = match settings.uplink {
            Uplink::Host => namespaces.runner().clone(),
            Uplink::Netns => Arc::new(Processes::in_netns(&namespaces.path(UPLINK_KEY))),
        };
        Netavark::build(
            settings,
            namespaces,
            state_dir,
            Path::new("/sys/class/net"),
            Duration::from_millis(200),
            external,
            tools,
        )
    }

    fn build(
        settings: Settings,
        namespaces: Namespaces,
        state_dir: &Path,
        sys_class_net: &Path,
        retry_pause: Duration,
        external: Vec<External>,
        tools: Arc<dyn Runner>,
    ) -> Result<Netavark, NetworkError> {
        let state = |what: String| move |source| NetworkError::State { what, source };
        std::fs::create_dir_all(state_dir)
            .map_err(state(format!("cannot create {}", state_dir.display())))?;
        let config_dir = state_dir.join("netavark");
        // netavark needs its config dir's aardvark-dns subdirectory to exist, or it fails
        // after it has made the interface.
        std::fs::create_dir_all(config_dir.join("aardvark-dns"))
            .map_err(state(format!("cannot create {}", config_dir.display())))?;
        let uplink = (settings.uplink == Uplink::Netns).then(|| namespaces.path(UPLINK_KEY));
        let outbound = match (&uplink, outbound::subnet_for(&settings.networks)) {
            (None, _) => None,
            (Some(_), Some(cidr)) => Some(Outbound::new(SlirpConfig {
                program: settings.slirp4netns.clone(),
                tun: settings.tun.clone(),
                cidr: cidr.to_owned(),
                ready_timeout: outbound::READY_TIMEOUT,
                retry_after: outbound::RETRY_AFTER,
            })),
            (Some(_), None) => {
                warn!(
                    "bridge and awsvpc tasks have no outbound connectivity: the task networks overlap \
                       every subnet slirp4netns could use (10.0.2.0/24, 10.255.254.0/24, \
                       172.31.254.0/24, 192.168.254.0/24); fix: free one of them"
                );
                None
            }
        };
        let inner = Inner {
            forwarders: uplink.as_deref().map(Forwarders::new),
            outbound,
            making_uplink: tokio::sync::Mutex::new(()),
            uplink,
            settings,
            runner: tools,
            namespaces,
            state_dir: state_dir.to_owned(),
            config_dir,
            ipam: Mutex::new(Ipam::default()),
            external,
            serial: tokio::sync::Mutex::new(false),
            tasks: TaskLocks::default(),
            retry_pause,
            sys_class_net: sys_class_net.to_owned(),
        };
        inner.remove_unfinished_writes();
        let mut ipam = inner.ipam.lock().unwrap_or_else(|e| e.into_inner());
        for s in inner.states()? {
            ipam.used.entry(s.network.clone()).or_default().insert(s.address);
            for j in &s.external {
                ipam.used.entry(external_key(&j.network)).or_default().insert(j.address);
            }
        }
        drop(ipam);
        if let Some(forwarders) = &inner.forwarders {
            // The tasks kept running while no ecsd was up: their ports answer again.
            for s in inner.states()? {
                let routes = routes(&s);
                if routes.is_empty() {
                    continue;
                }
                if tokio::runtime::Handle::try_current().is_err() {
                    warn!(sandbox = %s.key, "no runtime to forward the task's published ports from");
                } else if let Err(e) = forwarders.start(&s.key, &routes) {
                    warn!(sandbox = %s.key, error = %crate::error_chain(&e), "cannot forward a task's published port again");
                }
            }
        }
        let inner = Arc::new(inner);
        // Tasks that kept running while no ecsd was up get their way out back at once (the
        // slirp4netns of the last ecsd exited with it).
        if let (Some(path), Ok(runtime)) = (&inner.uplink, tokio::runtime::Handle::try_current())
            && path.exists()
            && !inner.sandbox_keys()?.is_empty()
        {
            let inner = inner.clone();
            runtime.spawn(async move { inner.ensure_outbound().await });
        }
        Ok(Netavark { inner })
    }
}

impl Inner {
    fn state_path(&self, key: &str) -> PathBuf {
        self.state_dir.join(format!("{key}.json"))
    }

    /// A crash between writing a state file and renaming it into place leaves a `.tmp`
    /// that holds nothing (netavark runs only after the rename).
    fn remove_unfinished_writes(&self) {
        let Ok(entries) = std::fs::read_dir(&self.state_dir) else { return };
        for path in entries.flatten().map(|e| e.path()) {
            if path.extension().is_some_and(|x| x == "tmp")
                && let Err(e) = std::fs::remove_file(&path)
            {
                warn!(file = %path.display(), error = %e, "cannot remove an unfinished network state file");
            }
        }
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

    fn read_state(&self, key: &str) -> Result<Recorded, NetworkError> {
        let path = self.state_path(key);
        match std::fs::read(&path) {
            Ok(b) => match serde_json::from_slice::<SandboxState>(&b) {
                Ok(s) => Ok(Recorded::Sandbox(Box::new(s))),
                Err(e) => {
                    error!(file = %path.display(), error = %e, "a network state file does not parse; \
                           its sandbox is removed without netavark");
                    Ok(Recorded::Unreadable)
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Recorded::Nothing),
            Err(source) => {
                Err(NetworkError::State { what: format!("cannot read {}", path.display()), source })
            }
        }
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
        let written = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec(s).expect("serializable"))?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.map_err(err)
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
                if let Err(undo) = self.unmake(&key).await {
                    let error = undo.cause.as_ref().map(|c| crate::error_chain(c)).unwrap_or_default();
                    let held = super::list(&undo.held);
                    warn!(sandbox = %key, %held, %error, "cannot undo a failed network setup yet");
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
        let state = SandboxState {
            key: key.to_owned(),
            network: net.name.clone(),
            address,
            options,
            external: vec![],
        };
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
        let routes = routes(&state);
        if !self.external.is_empty() {
            self.join_external(state, netns).await?;
        }
        if let Some(forwarders) = &self.forwarders
            && !routes.is_empty()
        {
            forwarders.start(key, &routes)?;
        }
        Ok(Interface { network: net.name.clone(), address, mac, private_dns_name: dns_name })
    }

    /// Gives the sandbox an interface on each Podman network (`eth1`, …), with the names it
    /// has on its own network, each recorded before netavark runs so a teardown finds it.
    async fn join_external(&self, mut state: SandboxState, netns: &Path) -> Result<(), NetworkError> {
        let own = state.options.networks.values().next().cloned();
        let (name, aliases) =
            (state.options.container_name.clone(), own.map(|n| n.aliases).unwrap_or_default());
        for (i, net) in self.external.iter().enumerate() {
            let address = self.ipam.lock().unwrap_or_else(|e| e.into_inner()).allocate_external(net)?;
            let options = serde_json::json!({
                "container_id": state.options.container_id,
                "container_name": name,
                "networks": {
                    net.name.clone(): PerNetwork {
                        interface_name: format!("eth{}", i + 1),
                        static_ips: vec![IpAddr::V4(address)],
                        static_mac: mac_address(),
                        aliases: aliases.clone(),
                    }
                },
                "network_info": { net.name.clone(): net.definition },
            });
            state.external.push(Joined { network: net.name.clone(), address, options });
            if let Err(e) = self.write_state(&state) {
                self.ipam
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .release(&external_key(&net.name), address);
                return Err(e);
            }
            let joined = state.external.last().expect("just pushed");
            self.podman_netavark("setup", netns, &joined.options).await?;
            debug!(sandbox = %state.key, network = %net.name, %address, "joined a Podman network");
        }
        Ok(())
    }

    /// Takes the sandbox's interfaces off the Podman networks it joined. Best effort: an
    /// interface goes with the namespace anyway; what a failed teardown can leave is the
    /// task's name in Podman's aardvark-dns records, which is said.
    async fn leave_external(&self, key: &str, state: &SandboxState) {
        let netns = self.namespaces.path(key);
        for joined in state.external.iter().rev() {
            let left = match netns.exists() {
                true => self.podman_netavark("teardown", &netns, &joined.options).await,
                false => Ok(vec![]),
            };
            if let Err(e) = left {
                warn!(sandbox = %key, network = %joined.network, error = %crate::error_chain(&e),
                      "cannot take the task off the Podman network; Podman's DNS may still answer its name");
            }
        }
    }

    /// Undoes a sandbox, in the order that keeps a half-done teardown resumable: netavark's
    /// part (until verified gone), then the state file, which releases the address, then
    /// the namespace.
    async fn unmake(&self, key: &str) -> Result<(), Unmade> {
        if let Some(forwarders) = &self.forwarders {
            forwarders.stop(key).await;
        }
        let recorded =
            self.read_state(key).map_err(|e| Unmade { held: self.namespace_held(key), cause: Some(e) })?;
        if let Recorded::Sandbox(state) = &recorded {
            self.leave_external(key, state).await;
            self.release_from_netavark(key, state).await?;
            self.forget(state)?;
        }
        if let Err(e) = self.namespaces.delete(key).await {
            return Err(Unmade { held: self.namespace_held(key), cause: Some(e) });
        }
        if let Recorded::Unreadable = recorded {
            let path = self.state_path(key);
            if let Err(source) = std::fs::remove_file(&path)
                && source.kind() != std::io::ErrorKind::NotFound
            {
                let what = format!("cannot remove {}", path.display());
                return Err(Unmade { held: vec![], cause: Some(NetworkError::State { what, source }) });
            }
        }
        Ok(())
    }

    /// Runs netavark's teardown until nothing it set up for the sandbox is left (netavark
    /// needs the namespace to reach its firewall and DNS steps: one that is gone is made
    /// again, empty, for it).
    async fn release_from_netavark(&self, key: &str, state: &SandboxState) -> Result<(), Unmade> {
        let netns = self.namespaces.path(key);
        let mut cause = None;
        for attempt in 1..=TEARDOWN_ATTEMPTS {
            if netns.exists() {
                match self.netavark("teardown", &netns, &state.options).await {
                    Ok(_) => return Ok(()),
                    Err(e) => {
                        debug!(sandbox = %key, attempt, error = %crate::error_chain(&e),
                               "netavark teardown failed; looking at what is left");
                        cause = Some(e);
                    }
                }
            }
            let left = match self.left_behind(key, state).await {
                Ok(left) => left,
                // Cannot tell: everything counts as held.
                Err(e) => return Err(self.held_with(key, state, vec![], Some(e))),
            };
            if left.is_empty() {
                return Ok(());
            }
            if attempt == TEARDOWN_ATTEMPTS {
                return Err(self.held_with(key, state, left, cause));
            }
            // netavark tears down only through a namespace it can open, and a complete
            // teardown (the bridge and the network's rules, after the last sandbox) only
            // once it has deleted an eth0: give it both.
            let lost = !netns.exists();
            let mut ready = if lost { self.namespaces.add_empty(key).await.map(drop) } else { Ok(()) };
            if ready.is_ok() && !left.iter().any(|h| matches!(h, Held::Interface { .. })) {
                ready = self.namespaces.add_stand_in(key).await;
            }
            if let Err(e) = ready {
                return Err(self.held_with(key, state, left, Some(e)));
            }
            if !lost {
                tokio::time::sleep(self.retry_pause * attempt).await;
            }
        }
        unreachable!("the last attempt returns")
    }

    /// What netavark set up for the sandbox that is still there: its interface, its DNS
    /// records, its port-forwarding rules, and its network's bridge when nothing is on it
    /// any more (netavark removes that, and the network's rules, with the last member).
    async fn left_behind(&self, key: &str, state: &SandboxState) -> Result<Vec<Held>, NetworkError> {
        let mut left = vec![];
        if self.namespaces.path(key).exists() && self.namespaces.has_link(key, "eth0").await? {
            left.push(Held::Interface { sandbox: key.to_owned(), network: state.network.clone() });
        }
        let cid = &state.options.container_id;
        for (name, net) in &state.options.network_info {
            if !net.dns_enabled {
                continue;
            }
            let path = self.config_dir.join("aardvark-dns").join(name);
            match std::fs::read_to_string(&path) {
                Ok(records) if records.lines().any(|l| l.contains(cid.as_str())) => {
                    left.push(Held::DnsRecords { sandbox: key.to_owned(), network: state.network.clone() })
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(NetworkError::State {
                        what: format!("cannot read {}", path.display()),
                        source,
                    });
                }
            }
        }
        if !state.options.port_mappings.is_empty() {
            let rules = self.run(OsStr::new("iptables-save"), &["-t", "nat"], None).await?;
            let (by_id, by_target) = (format!("id: {cid}"), format!("--to-destination {}:", state.address));
            let count = String::from_utf8_lossy(&rules)
                .lines()
                .filter(|l| l.starts_with("-A ") && (l.contains(&by_id) || l.contains(&by_target)))
                .count();
            if count > 0 {
                left.push(Held::FirewallRules { sandbox: key.to_owned(), count });
            }
        }
        if let Some(net) = self.settings.network(&state.network)
            && self.abandoned(net).await?
        {
            left.push(Held::Bridge { network: net.name.clone(), bridge: net.bridge.clone() });
        }
        Ok(left)
    }

    /// Whether `net`'s bridge exists with no member. Looked at between netavark runs: in
    /// one, a bridge is memberless for a moment (made before the first veth joins it,
    /// deleted after the last leaves). A sandbox on its way onto it is harmless: its setup
    /// comes after this teardown, and makes the bridge again.
    async fn abandoned(&self, net: &NetworkDef) -> Result<bool, NetworkError> {
        let _between = self.serial.lock().await;
        if self.uplink.is_some() {
            // The bridge is in the uplink namespace, which this process's /sys does not show.
            return self.abandoned_in_uplink(net).await;
        }
        let members = self.sys_class_net.join(&net.bridge).join("brif");
        match std::fs::read_dir(&members) {
            Ok(mut entries) => Ok(entries.next().is_none()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => {
                Err(NetworkError::State { what: format!("cannot read {}", members.display()), source })
            }
        }
    }

    /// [`Inner::abandoned`] from `ip -j link show` run in the uplink namespace.
    async fn abandoned_in_uplink(&self, net: &NetworkDef) -> Result<bool, NetworkError> {
        #[derive(Deserialize)]
        struct Link {
            ifname: String,
            master: Option<String>,
        }
        let out = self.run(OsStr::new("ip"), &["-j", "link", "show"], None).await?;
        let links: Vec<Link> = serde_json::from_slice(&out).map_err(|e| NetworkError::Command {
            command: "ip -j link show".into(),
            stderr: format!("unexpected answer ({e}): {}", String::from_utf8_lossy(&out)),
        })?;
        let exists = links.iter().any(|l| l.ifname == net.bridge);
        Ok(exists && !links.iter().any(|l| l.master.as_deref() == Some(net.bridge.as_str())))
    }

    /// Makes the uplink namespace (loopback up) if there is to be one and it is not there:
    /// at the first use, and again if something removed it.
    async fn ensure_uplink(&self) -> Result<(), NetworkError> {
        let Some(path) = &self.uplink else { return Ok(()) };
        let _making = self.making_uplink.lock().await;
        if path.exists() {
            return Ok(());
        }
        if let Some(outbound) = &self.outbound {
            // Attached to a namespace that is gone: its tap went with it.
            outbound.stop().await;
        }
        self.namespaces.add_empty(UPLINK_KEY).await?;
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if let Err(e) = self.namespaces.ip_batch(&name, "link set lo up\n").await {
            // Made again, whole, by the next call.
            let _ = self.namespaces.delete(UPLINK_KEY).await;
            return Err(e);
        }
        debug!(netns = %path.display(), "made the uplink network namespace");
        Ok(())
    }

    /// Attaches slirp4netns to the uplink namespace if it is not attached (or has exited).
    /// Never fails: without it, tasks run with no way out (said once, see [`Outbound`]).
    async fn ensure_outbound(&self) {
        if let (Some(outbound), Some(path)) = (&self.outbound, &self.uplink) {
            let _making = self.making_uplink.lock().await;
            if path.exists() {
                outbound.ensure(path).await;
            }
        }
    }

    /// At daemon shutdown: closes the published ports and stops slirp4netns (it would exit
    /// with ecsd anyway; the next start attaches a new one for the tasks still running);
    /// removes the uplink namespace when no sandbox is left (running tasks keep theirs, and
    /// their bridge in it, for the next start).
    async fn shutdown(&self) {
        if let Some(forwarders) = &self.forwarders {
            forwarders.stop_all().await;
        }
        if let Some(outbound) = &self.outbound {
            outbound.stop().await;
        }
        let Some(path) = &self.uplink else { return };
        match self.sandbox_keys() {
            Ok(keys) if keys.is_empty() => {
                let _making = self.making_uplink.lock().await;
                if let Err(e) = self.namespaces.delete(UPLINK_KEY).await {
                    warn!(netns = %path.display(), error = %crate::error_chain(&e), "cannot remove the uplink namespace");
                }
            }
            Ok(keys) => debug!(sandboxes = keys.len(), "the uplink namespace stays for the running tasks"),
            Err(e) => {
                warn!(error = %crate::error_chain(&e), "cannot tell whether the uplink namespace is still needed")
            }
        }
    }

    /// `left`, plus the address (its state file stays) and the namespace if it exists.
    fn held_with(
        &self,
        key: &str,
        state: &SandboxState,
        mut left: Vec<Held>,
        cause: Option<NetworkError>,
    ) -> Unmade {
        left.push(Held::Address { network: state.network.clone(), address: state.address });
        left.extend(self.namespace_held(key));
        Unmade { held: left, cause }
    }

    fn namespace_held(&self, key: &str) -> Vec<Held> {
        let path = self.namespaces.path(key);
        if path.exists() { vec![Held::Namespace(path)] } else { vec![] }
    }

    /// Removes the state file, which releases the address.
    fn forget(&self, state: &SandboxState) -> Result<(), Unmade> {
        let path = self.state_path(&state.key);
        if let Err(source) = std::fs::remove_file(&path)
            && source.kind() != std::io::ErrorKind::NotFound
        {
            let what = format!("cannot remove {}", path.display());
            return Err(self.held_with(
                &state.key,
                state,
                vec![],
                Some(NetworkError::State { what, source }),
            ));
        }
        let mut ipam = self.ipam.lock().unwrap_or_else(|e| e.into_inner());
        ipam.release(&state.network, state.address);
        for j in &state.external {
            ipam.release(&external_key(&j.network), j.address);
        }
        Ok(())
    }

    async fn run(
        &self,
        program: &OsStr,
        args: &[&str],
        input: Option<&[u8]>,
    ) -> Result<Vec<u8>, NetworkError> {
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        self.runner.run(program, &args, input).await
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
        self.run_netavark(&self.config_dir, verb, netns, &serde_json::to_vec(options).expect("serializable"))
            .await
    }

    /// netavark `verb` on `netns` with `input`, keeping its DNS records under `config_dir`.
    async fn run_netavark(
        &self,
        config_dir: &Path,
        verb: &str,
        netns: &Path,
        input: &[u8],
    ) -> Result<Vec<u8>, NetworkError> {
        let args = [
            OsStr::new("--config"),
            config_dir.as_os_str(),
            OsStr::new("--aardvark-binary"),
            self.settings.aardvark.as_os_str(),
            OsStr::new(verb),
            netns.as_os_str(),
        ];
        self.runner.run(self.settings.netavark.as_os_str(), &args, Some(input)).await
    }

    /// netavark with Podman's own directory, under Podman's lock, for a Podman network.
    async fn podman_netavark(
        &self,
        verb: &str,
        netns: &Path,
        options: &serde_json::Value,
    ) -> Result<Vec<u8>, NetworkError> {
        let _ours = self.serial.lock().await;
        let _podmans = podman::lock().await?;
        let run_dir = Path::new(podman::RUN_DIR);
        std::fs::create_dir_all(run_dir.join("aardvark-dns")).map_err(|source| NetworkError::State {
            what: format!("cannot create {}", run_dir.display()),
            source,
        })?;
        self.run_netavark(run_dir, verb, netns, &serde_json::to_vec(options).expect("serializable")).await
    }

    /// Traffic between two ecsd networks is dropped; within one it passes. So is traffic
    /// between an ecsd network and one of Podman's, both ways (netavark 1.4 forwards between
    /// any two bridges), except to a port published on the host (DNAT): that is public on
    /// purpose. A task joined to a Podman network (`ECS_EXTERNAL_NETWORKS`) reaches it on the
    /// interface it has there, through Podman's bridge alone, which these rules never match.
    /// The rules match bridge names (`-i ecsd+ -o ecsd+`, `podman+`), so they hold for
    /// networks made later too, and adding them is idempotent, so several ecsds on a host
    /// share them; they stay, as netavark's own base chains do.
    async fn ensure_isolation(&self) -> Result<(), NetworkError> {
        let t = ["-w", super::XTABLES_WAIT_SECS, "-t", "mangle"];
        if self.iptables(&[&t[..], &["-n", "-L", ISOLATION_CHAIN]].concat()).await.is_err() {
            // Another ecsd may make it at the same moment; the check below settles it.
            let _ = self.iptables(&[&t[..], &["-N", ISOLATION_CHAIN]].concat()).await;
        }
        let jump = ["FORWARD", "-j", ISOLATION_CHAIN];
        if self.iptables(&[&t[..], &["-C"], &jump[..]].concat()).await.is_err() {
            self.iptables(&[&t[..], &["-I"], &jump[..]].concat()).await?;
        }
        let any = format!("{BRIDGE_PREFIX}+");
        let drop = ["-i", any.as_str(), "-o", any.as_str(), "-j", "DROP"];
        for net in &self.settings.networks {
            let same =
                [ISOLATION_CHAIN, "-i", net.bridge.as_str(), "-o", net.bridge.as_str(), "-j", "RETURN"];
            if self.iptables(&[&t[..], &["-C"], &same[..]].concat()).await.is_err() {
                self.iptables(&[&t[..], &["-I"], &same[..]].concat()).await?;
            }
        }
        if self.iptables(&[&t[..], &["-C", ISOLATION_CHAIN], &drop[..]].concat()).await.is_err() {
            self.iptables(&[&t[..], &["-A", ISOLATION_CHAIN], &drop[..]].concat()).await?;
        }
        for rule in podman_isolation_rules() {
            let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
            if self.iptables(&[&t[..], &["-C", ISOLATION_CHAIN], &rule[..]].concat()).await.is_err() {
                self.iptables(&[&t[..], &["-A", ISOLATION_CHAIN], &rule[..]].concat()).await?;
            }
        }
        Ok(())
    }

    async fn iptables(&self, args: &[&str]) -> Result<(), NetworkError> {
        self.run(OsStr::new("iptables"), args, None).await.map(drop)
    }

    /// Called on the task's turn.
    async fn create(&self, task_id: &str, sandboxes: &[SandboxSpec]) -> Result<Vec<Sandbox>, NetworkError> {
        // A second attempt (a restarted engine) starts from nothing.
        self.remove(task_id).await?;
        if sandboxes.iter().any(|s| s.attach.is_some()) {
            self.ensure_uplink().await?;
            self.ensure_outbound().await;
        }
        let mut made = Vec::with_capacity(sandboxes.len());
        for spec in sandboxes {
            match self.make(task_id, spec).await {
                Ok(sb) => made.push(sb),
                Err(e) => {
                    if let Err(e) = self.remove(task_id).await {
                        warn!(task = %task_id, error = %crate::error_chain(&e), "cannot undo a failed network setup yet");
                    }
                    return Err(e);
                }
            }
        }
        Ok(made)
    }

    /// Called on the task's turn.
    async fn remove(&self, task_id: &str) -> Result<(), NetworkError> {
        let keys: Vec<String> =
            self.sandbox_keys()?.into_iter().filter(|k| task_of(k) == Some(task_id)).collect();
        if !keys.is_empty() {
            self.ensure_uplink().await?;
        }
        let mut held = vec![];
        let mut cause = None;
        for key in keys {
            if let Err(u) = self.unmake(&key).await {
                held.extend(u.held);
                if let Some(c) = u.cause {
                    cause.get_or_insert(c);
                }
            }
        }
        match (held.is_empty(), cause) {
            (true, None) => Ok(()),
            (true, Some(cause)) => Err(cause),
            (false, cause) => {
                Err(NetworkError::StillHeld { task_id: task_id.to_owned(), held, cause: cause.map(Box::new) })
            }
        }
    }
}

/// Removes what a create made when its caller stopped waiting for it, on the task's turn
/// after that create, unless a newer create of the task came meanwhile (it starts by
/// removing what the old one left).
struct UndoCreate {
    armed: Option<(Arc<Inner>, Ticket)>,
    number: u64,
    task_id: String,
}

impl Drop for UndoCreate {
    fn drop(&mut self) {
        let Some((inner, ticket)) = self.armed.take() else { return };
        let (number, task_id) = (self.number, std::mem::take(&mut self.task_id));
        // Without a runtime (shutting down) the state files stay, and the next start removes them.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            let _turn = ticket.turn().await;
            if ticket.latest_create() != number {
                return;
            }
            match inner.remove(&task_id).await {
                Ok(()) => debug!(task = %task_id, "removed the network of a cancelled create"),
                Err(e) => warn!(task = %task_id, error = %crate::error_chain(&e),
                                "cannot remove the network of a cancelled create yet"),
            }
        });
    }
}

fn joined<T>(joined: Result<Result<T, NetworkError>, tokio::task::JoinError>) -> Result<T, NetworkError> {
    match joined {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(NetworkError::Interrupted),
    }
}

/// Where [`Ipam`] keeps the addresses of a Podman network (apart from ecsd's own networks).
/// The ECSD-ISOLATION rules that drop traffic between ecsd's bridges and Podman's, each way,
/// unless its connection was DNAT'd to a published port. One rule per direction, so no order
/// among them matters.
fn podman_isolation_rules() -> Vec<Vec<String>> {
    let ours = format!("{BRIDGE_PREFIX}+");
    let mut rules = vec![];
    for podman in PODMAN_BRIDGES {
        for (from, to) in [(ours.as_str(), podman), (podman, ours.as_str())] {
            let rule = ["-i", from, "-o", to, "-m", "conntrack", "!", "--ctstate", "DNAT", "-j", "DROP"];
            rules.push(rule.iter().map(|s| s.to_string()).collect());
        }
    }
    rules
}

/// The TCP ports a sandbox publishes, one route per port of each range, to its address.
/// UDP ports are not forwarded (said once per sandbox).
fn routes(state: &SandboxState) -> Vec<Route> {
    let mut routes = vec![];
    for p in &state.options.port_mappings {
        if p.protocol != "tcp" {
            warn!(sandbox = %state.key, host_port = p.host_port,
                  "a published UDP port is not forwarded from the host with an uplink namespace");
            continue;
        }
        for i in 0..p.range.max(1) {
            let (Some(host_port), Some(port)) = (p.host_port.checked_add(i), p.container_port.checked_add(i))
            else {
                break;
            };
            routes.push(Route { host_port, target: std::net::SocketAddrV4::new(state.address, port) });
        }
    }
    routes
}

fn external_key(network: &str) -> String {
    format!("podman:{network}")
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

/// Each operation runs in a task of its own on the task's turn, so it finishes even when
/// its caller is dropped half-way (a dropped create is then undone: see [`UndoCreate`]).
#[async_trait]
impl Network for Netavark {
    async fn create(&self, task_id: &str, sandboxes: &[SandboxSpec]) -> Result<Vec<Sandbox>, NetworkError> {
        let ticket = self.inner.tasks.ticket(task_id);
        let number = ticket.count_create();
        let mut undo = UndoCreate {
            armed: Some((self.inner.clone(), self.inner.tasks.ticket(task_id))),
            number,
            task_id: task_id.to_owned(),
        };
        let (inner, id, specs) = (self.inner.clone(), task_id.to_owned(), sandboxes.to_vec());
        let result = tokio::spawn(async move {
            let _turn = ticket.turn().await;
            inner.create(&id, &specs).await
        })
        .await;
        if result.is_ok() {
            undo.armed = None;
        }
        joined(result)
    }

    async fn remove(&self, task_id: &str) -> Result<(), NetworkError> {
        let ticket = self.inner.tasks.ticket(task_id);
        let (inner, id) = (self.inner.clone(), task_id.to_owned());
        joined(
            tokio::spawn(async move {
                let _turn = ticket.turn().await;
                inner.remove(&id).await
            })
            .await,
        )
    }

    async fn list(&self) -> Result<Vec<String>, NetworkError> {
        let ids: BTreeSet<String> =
            self.inner.sandbox_keys()?.iter().filter_map(|k| task_of(k)).map(str::to_owned).collect();
        Ok(ids.into_iter().collect())
    }

    async fn shutdown(&self) {
        self.inner.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::super::sim::{Fault, Op, Sim};
    use super::super::{Processes, Protocol};
    use super::*;

    /// A [`Netavark`] on a simulated host, in a temporary directory.
    struct Host {
        dir: tempfile::TempDir,
        sim: Arc<Sim>,
        net: Netavark,
    }

    impl Host {
        /// The networks of `settings` on `sim`, with their state under `dir`.
        fn build(dir: tempfile::TempDir, sim: Arc<Sim>, settings: Settings) -> Host {
            let namespaces = Namespaces::with_runner("ecsd-t-", &sim.netns_dir, sim.clone());
            let net = Self::start(&sim, settings, namespaces, &dir.path().join("network"));
            Host { dir, sim, net }
        }

        /// Another Netavark on this one's settings and state, as the next ecsd start makes it.
        fn restart(&self) -> Netavark {
            let inner = &self.net.inner;
            Self::start(&self.sim, inner.settings.clone(), inner.namespaces.clone(), &inner.state_dir)
        }

        fn start(sim: &Arc<Sim>, settings: Settings, namespaces: Namespaces, state_dir: &Path) -> Netavark {
            Netavark::build(
                settings,
                namespaces,
                state_dir,
                &sim.sys_dir,
                Duration::from_millis(1),
                vec![],
                sim.clone(),
            )
            .unwrap()
        }
    }

    fn host() -> Host {
        host_with(true)
    }

    fn host_with(dns: bool) -> Host {
        let dir = tempfile::tempdir().unwrap();
        let sim = Sim::new(dir.path());
        let settings = Settings {
            networks: vec![NetworkDef::new("default", "10.9.0.0/24", Some("ecsdt9"), dns).unwrap()],
            netavark: PathBuf::from("/sim/netavark"),
            ..Settings::default()
        };
        Host::build(dir, sim, settings)
    }

    fn task(n: u32) -> String {
        format!("{n:032x}")
    }

    /// [`host`] with the networks in an uplink namespace, and a stand-in slirp4netns.
    fn host_uplink() -> Host {
        let dir = tempfile::tempdir().unwrap();
        let sim = Sim::new(dir.path());
        let (slirp4netns, tun) = super::super::outbound::tests::write_fake(dir.path());
        let settings = Settings {
            networks: vec![NetworkDef::new("default", "10.9.0.0/24", Some("ecsdt9"), true).unwrap()],
            netavark: PathBuf::from("/sim/netavark"),
            uplink: Uplink::Netns,
            slirp4netns,
            tun,
            ..Settings::default()
        };
        Host::build(dir, sim, settings)
    }

    /// A TCP port nothing listens on now.
    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn the_first_setups_of_two_tasks_make_one_uplink_between_them() {
        let h = host_uplink();
        let plain = vec![SandboxSpec { container: None, attach: attach(false) }];
        let (one, two) = (task(33), task(34));
        let (a, b) = tokio::join!(h.net.create(&one, &plain), h.net.create(&two, &plain));
        a.unwrap();
        b.unwrap();
        assert_eq!(h.sim.calls("ip netns add ecsd-t-uplink"), 1);
        assert_eq!(h.sim.calls("ip -n ecsd-t-uplink -batch -"), 1, "loopback up, once");
    }

    impl Host {
        /// The command lines the stand-in slirp4netns was started with.
        fn slirp_calls(&self) -> Vec<String> {
            let calls =
                std::fs::read_to_string(self.dir.path().join("slirp4netns.calls")).unwrap_or_default();
            calls.lines().map(str::to_owned).collect()
        }

        async fn slirp_pid(&self) -> Option<u32> {
            self.net.inner.outbound.as_ref()?.pid().await
        }
    }

    #[tokio::test]
    async fn slirp_is_attached_to_the_uplink_once_and_stopped_at_shutdown() {
        let h = host_uplink();
        let plain = vec![SandboxSpec { container: None, attach: attach(false) }];
        h.net.create(&task(40), &[SandboxSpec { container: None, attach: None }]).await.unwrap();
        assert_eq!(h.slirp_calls().len(), 0, "no uplink, no slirp4netns for a task without network");
        let (one, two) = (task(41), task(42));
        let (a, b) = tokio::join!(h.net.create(&one, &plain), h.net.create(&two, &plain));
        a.unwrap();
        b.unwrap();
        let calls = h.slirp_calls();
        assert_eq!(calls.len(), 1, "{calls:?}");
        let uplink = h.net.inner.uplink.clone().unwrap();
        assert!(calls[0].ends_with(&format!("--netns-type=path {} tap0", uplink.display())), "{calls:?}");
        assert!(calls[0].contains("--cidr=10.0.2.0/24"), "{calls:?}");
        let pid = h.slirp_pid().await.unwrap();

        // Removed behind ecsd's back: the uplink is made again and slirp4netns with it.
        for t in [40, 41, 42] {
            h.net.remove(&task(t)).await.unwrap();
        }
        h.sim.lose_namespace("ecsd-t-uplink");
        h.net.create(&task(43), &plain).await.unwrap();
        assert!(super::super::outbound::tests::gone(pid), "the old one was stopped and reaped");
        assert_eq!(h.slirp_calls().len(), 2);
        let pid = h.slirp_pid().await.unwrap();

        // The tasks keep running across an ecsd restart; the next ecsd attaches its own.
        h.net.shutdown().await;
        assert!(super::super::outbound::tests::gone(pid), "stopped and reaped at shutdown");
        let again = h.restart();
        wait_until("the next ecsd to attach slirp4netns", || h.slirp_calls().len() == 3).await;
        again.remove(&task(43)).await.unwrap();
        again.shutdown().await;
        assert_eq!(again.inner.outbound.as_ref().unwrap().pid().await, None);
        assert!(!uplink.exists());
    }

    #[tokio::test]
    async fn with_the_hosts_uplink_no_slirp_is_started() {
        let h = host();
        h.net.create(&task(44), &one()).await.unwrap();
        assert!(h.net.inner.outbound.is_none());
        h.net.remove(&task(44)).await.unwrap();
    }

    #[tokio::test]
    async fn an_uplink_namespace_is_made_once_serves_published_ports_and_goes_at_shutdown() {
        let h = host_uplink();
        assert!(h.sim.namespaces().is_empty(), "nothing before the first task");
        let port = free_port();
        let published = |port| {
            let mut a = attach(false).unwrap();
            a.ports =
                vec![PortMap { host_port: port, container_port: 80, range: 1, protocol: Protocol::Tcp }];
            vec![SandboxSpec { container: None, attach: Some(a) }]
        };
        h.net.create(&task(30), &published(port)).await.unwrap();
        h.net.create(&task(31), &[SandboxSpec { container: None, attach: attach(false) }]).await.unwrap();
        assert_eq!(h.sim.calls("ip netns add ecsd-t-uplink"), 1, "one uplink for every task");
        assert!(h.sim.namespaces().contains(&"ecsd-t-uplink".to_owned()));
        assert_eq!(h.net.list().await.unwrap(), vec![task(30), task(31)], "the uplink is no task's");
        // ecsd listens on the published port itself; once the task goes, the port is closed.
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("the forwarder listens");
        let busy = h.net.create(&task(32), &published(port)).await.unwrap_err();
        assert!(matches!(busy, NetworkError::Publish { port: p, .. } if p == port), "{busy:?}");
        assert_eq!(h.net.list().await.unwrap(), vec![task(30), task(31)], "the failed create left nothing");
        h.net.remove(&task(30)).await.unwrap();
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect_err("closed with the task");

        // A task still running keeps the uplink (and its bridge) across a shutdown.
        h.net.shutdown().await;
        assert!(h.sim.namespaces().contains(&"ecsd-t-uplink".to_owned()));
        h.net.remove(&task(31)).await.unwrap();
        h.net.shutdown().await;
        assert_eq!(h.left(), h.nothing_left());
        assert_eq!(h.sim.calls("netavark teardown"), 3, "tasks 30 and 31, and the undone create of 32");
    }

    fn attach(ports: bool) -> Option<Attach> {
        Some(Attach {
            network: "default".into(),
            aliases: vec![],
            dns_domain: "ec2.internal".into(),
            ports: if ports {
                vec![PortMap { host_port: 43000, container_port: 80, range: 1, protocol: Protocol::Tcp }]
            } else {
                vec![]
            },
        })
    }

    /// One awsvpc-style sandbox with a published port.
    fn one() -> Vec<SandboxSpec> {
        vec![SandboxSpec { container: None, attach: attach(true) }]
    }

    /// Two bridge-mode sandboxes.
    fn two() -> Vec<SandboxSpec> {
        vec![
            SandboxSpec { container: Some(0), attach: attach(true) },
            SandboxSpec { container: Some(1), attach: attach(false) },
        ]
    }

    impl Host {
        /// What the network holds on the host, by kind.
        fn left(&self) -> BTreeMap<&'static str, usize> {
            let files = |dir: &Path, skip: &str| {
                std::fs::read_dir(dir)
                    .unwrap()
                    .flatten()
                    .filter(|e| {
                        e.file_type().unwrap().is_file() && !e.file_name().to_string_lossy().contains(skip)
                    })
                    .count()
            };
            let inner = &self.net.inner;
            let used = inner.ipam.lock().unwrap().used.values().map(BTreeSet::len).sum();
            BTreeMap::from([
                ("namespaces", self.sim.namespaces().len()),
                ("interfaces", self.sim.interfaces()),
                ("rules", self.sim.rules()),
                ("bridges", self.sim.bridges()),
                ("network rules", self.sim.network_rules()),
                ("dns record files", files(&inner.config_dir.join("aardvark-dns"), "aardvark.pid")),
                ("state files", files(&inner.state_dir, ".lock")),
                ("addresses", used),
            ])
        }

        fn nothing_left(&self) -> BTreeMap<&'static str, usize> {
            self.left().into_keys().map(|k| (k, 0)).collect()
        }

        /// Waits (up to 10 s) until no operation of any task is pending.
        async fn settled(&self) {
            wait_until("no network operation pending", || self.net.inner.tasks.len() == 0).await;
        }
    }

    async fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn held_of(e: &NetworkError) -> &[Held] {
        match e {
            NetworkError::StillHeld { held, .. } => held,
            other => panic!("expected StillHeld, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_teardown_that_fails_after_releasing_everything_still_frees_the_address() {
        let h = host();
        h.net.create(&task(1), &one()).await.unwrap();
        let made = h.left();
        assert!(made.values().all(|n| *n > 0), "the sandbox holds one of each: {made:?}");
        // netavark 1.4 when aardvark-dns has just exited: all released, then an error.
        h.sim.fail(Op::Teardown, Fault::AardvarkGone, 1);
        h.net.remove(&task(1)).await.unwrap();
        assert_eq!(h.left(), h.nothing_left());
        assert_eq!(h.sim.calls("netavark teardown"), 1, "nothing was left to tear down again");
        assert_eq!(h.net.list().await.unwrap(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn a_teardown_that_leaves_rules_says_what_is_held_and_the_next_removal_finishes_it() {
        let h = host();
        let made = h.net.create(&task(2), &one()).await.unwrap();
        let address = made[0].iface.as_ref().unwrap().address;
        h.sim.fail(Op::Teardown, Fault::FirewallFails, TEARDOWN_ATTEMPTS as usize);
        let e = h.net.remove(&task(2)).await.unwrap_err();
        let key = task(2);
        let netns = h.dir.path().join("netns").join(format!("ecsd-t-{key}"));
        assert_eq!(
            held_of(&e),
            [
                Held::FirewallRules { sandbox: key.clone(), count: 2 },
                Held::Address { network: "default".into(), address },
                Held::Namespace(netns.clone()),
            ]
        );
        assert_eq!(
            e.to_string(),
            format!(
                "the network of task {key} still holds 2 port-forwarding rule(s) of sandbox {key}, \
                 address {address} on network 'default', namespace {}",
                netns.display()
            )
        );
        assert!(
            crate::error_chain(&e).contains("Resource temporarily unavailable"),
            "{}",
            crate::error_chain(&e)
        );
        assert!(e.is_transient());
        assert_eq!(h.sim.calls("netavark teardown"), TEARDOWN_ATTEMPTS as usize);
        // Held stays recorded and listed: the state file, the namespace, the address.
        assert_eq!((h.left()["state files"], h.left()["namespaces"], h.left()["addresses"]), (1, 1, 1));
        assert_eq!(h.net.list().await.unwrap(), vec![key.clone()]);
        // netavark removed the bridge in its first run, but not the network's own rules:
        // its complete teardown does not resume. They stay only until the network's next
        // last sandbox goes (setup reuses them, teardown removes them).
        assert_eq!((h.left()["bridges"], h.left()["network rules"]), (0, 3));
        // The address is not handed out meanwhile.
        let other = h.net.create(&task(3), &one()).await.unwrap();
        assert_ne!(other[0].iface.as_ref().unwrap().address, address);
        h.net.remove(&task(3)).await.unwrap();
        assert_eq!((h.left()["bridges"], h.left()["network rules"]), (0, 0));

        h.net.remove(&key).await.unwrap();
        assert_eq!(h.left(), h.nothing_left());
    }

    #[tokio::test]
    async fn a_namespace_lost_before_teardown_is_made_again_for_netavark() {
        let h = host();
        h.net.create(&task(4), &one()).await.unwrap();
        h.sim.lose_namespace(&format!("ecsd-t-{}", task(4)));
        assert_eq!(
            (h.left()["rules"], h.left()["dns record files"]),
            (2, 1),
            "rules and records stay on the host"
        );
        h.net.remove(&task(4)).await.unwrap();
        assert_eq!(h.left(), h.nothing_left());
        assert_eq!(h.sim.calls("netavark teardown"), 1);
        assert_eq!(
            h.sim.calls(&format!("ip -n ecsd-t-{} link add eth0", task(4))),
            1,
            "with a stand-in eth0"
        );

        // A sandbox whose namespace is gone and whose netavark part was torn down (a crash
        // between the two): no netavark run, no namespace made again.
        h.net.create(&task(5), &one()).await.unwrap();
        let state = h.net.inner.state_path(&task(5));
        let saved = std::fs::read(&state).unwrap();
        h.net.remove(&task(5)).await.unwrap();
        std::fs::write(&state, saved).unwrap();
        let adds = h.sim.calls("ip netns add");
        h.net.remove(&task(5)).await.unwrap();
        assert_eq!(h.left()["state files"], 0);
        assert_eq!((h.sim.calls("netavark teardown"), h.sim.calls("ip netns add")), (2, adds));
    }

    #[tokio::test]
    async fn the_last_sandbox_whose_namespace_was_lost_still_takes_its_bridge_along() {
        // No DNS, no published port: nothing of the sandbox itself stays on the host
        // once its namespace is gone, only the network's bridge and rules.
        let h = host_with(false);
        let plain = [SandboxSpec { container: None, attach: attach(false) }];
        h.net.create(&task(20), &plain).await.unwrap();
        h.net.create(&task(21), &plain).await.unwrap();
        h.sim.lose_namespace(&format!("ecsd-t-{}", task(20)));
        // Another sandbox is on the network: its bridge stays.
        h.net.remove(&task(20)).await.unwrap();
        assert_eq!((h.left()["bridges"], h.left()["network rules"], h.left()["state files"]), (1, 3, 1));
        assert_eq!(h.sim.calls("netavark teardown"), 0);

        h.sim.lose_namespace(&format!("ecsd-t-{}", task(21)));
        h.net.remove(&task(21)).await.unwrap();
        assert_eq!(h.left(), h.nothing_left());
        assert_eq!(h.sim.calls("netavark teardown"), 1);
    }

    #[tokio::test]
    async fn a_namespace_that_cannot_be_deleted_is_deleted_by_the_next_removal() {
        let h = host();
        h.net.create(&task(6), &one()).await.unwrap();
        h.sim.fail(Op::NetnsDelete, Fault::FailsAtOnce, 1);
        let e = h.net.remove(&task(6)).await.unwrap_err();
        assert!(matches!(held_of(&e), [Held::Namespace(_)]), "{e}");
        assert_eq!((h.left()["addresses"], h.left()["state files"]), (0, 0), "the address is free already");
        assert_eq!(h.net.list().await.unwrap(), vec![task(6)]);
        h.net.remove(&task(6)).await.unwrap();
        assert_eq!(h.left(), h.nothing_left());
    }

    #[tokio::test]
    async fn when_what_is_left_cannot_be_checked_everything_counts_as_held() {
        let h = host();
        h.net.create(&task(7), &one()).await.unwrap();
        h.sim.fail(Op::Teardown, Fault::FailsAtOnce, 1);
        h.sim.fail(Op::IptablesSave, Fault::FailsAtOnce, 1);
        let e = h.net.remove(&task(7)).await.unwrap_err();
        let held = held_of(&e);
        assert!(matches!(held, [Held::Address { .. }, Held::Namespace(_)]), "{held:?}");
        assert!(crate::error_chain(&e).contains("cannot lock"), "{}", crate::error_chain(&e));
        h.net.remove(&task(7)).await.unwrap();
        assert_eq!(h.left(), h.nothing_left());
    }

    #[tokio::test]
    async fn concurrent_removals_of_a_task_take_turns_and_tear_down_once() {
        let h = host();
        h.net.create(&task(8), &two()).await.unwrap();
        let id = task(8);
        let (a, b, c) = tokio::join!(h.net.remove(&id), h.net.remove(&id), h.net.remove(&id));
        for r in [a, b, c] {
            r.unwrap();
        }
        assert_eq!(h.left(), h.nothing_left());
        assert_eq!(h.sim.calls("netavark teardown"), 2, "one per sandbox");
        h.settled().await;
    }

    #[tokio::test]
    async fn a_setup_that_fails_half_way_leaves_nothing() {
        let h = host();
        h.sim.fail(Op::Setup, Fault::SetupFailsHalfWay, 1);
        let e = h.net.create(&task(9), &one()).await.unwrap_err();
        assert!(matches!(e, NetworkError::Command { .. }), "{e:?}");
        assert_eq!(h.left(), h.nothing_left());
        // The second of two sandboxes fails: the first goes too.
        h.sim.fail(Op::Setup, Fault::Works, 1);
        h.sim.fail(Op::Setup, Fault::FailsAtOnce, 1);
        h.net.create(&task(10), &two()).await.unwrap_err();
        assert_eq!(h.sim.calls("netavark setup"), 3);
        assert_eq!(h.left(), h.nothing_left());
    }

    #[tokio::test]
    async fn a_create_whose_caller_went_away_is_undone() {
        let h = host();
        // Positive control: a create whose caller waits keeps what it made.
        h.sim.fail(Op::Setup, Fault::Stall, 1);
        let (id, specs) = (task(11), one());
        let (created, ()) = tokio::join!(h.net.create(&id, &specs), async {
            h.sim.stalled.notified().await;
            h.sim.release();
        });
        created.unwrap();
        assert_eq!(h.left()["state files"], 1);
        h.net.remove(&task(11)).await.unwrap();

        h.sim.fail(Op::Setup, Fault::Stall, 1);
        let caller = {
            let net = Netavark { inner: h.net.inner.clone() };
            tokio::spawn(async move { net.create(&task(12), &one()).await })
        };
        h.sim.stalled.notified().await;
        caller.abort();
        assert!(caller.await.unwrap_err().is_cancelled());
        h.sim.release();
        h.settled().await;
        assert_eq!(h.left(), h.nothing_left());
    }

    #[tokio::test]
    async fn a_newer_create_is_not_undone_for_an_older_cancelled_one() {
        let h = host();
        h.sim.fail(Op::Setup, Fault::Stall, 1);
        let spawn_create = || {
            let net = Netavark { inner: h.net.inner.clone() };
            tokio::spawn(async move { net.create(&task(13), &one()).await })
        };
        let older = spawn_create();
        h.sim.stalled.notified().await;
        // The newer create waits for its turn before the older one's caller goes away, so
        // the undo of the older comes after it.
        let newer = spawn_create();
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        older.abort();
        assert!(older.await.unwrap_err().is_cancelled());
        h.sim.release();
        let made = newer.await.unwrap().unwrap();
        h.settled().await;
        let left = h.left();
        assert_eq!(
            (left["namespaces"], left["state files"], left["addresses"], left["rules"]),
            (1, 1, 1, 2),
            "{left:?}"
        );
        assert!(made[0].netns.exists());
        h.net.remove(&task(13)).await.unwrap();
        assert_eq!(h.left(), h.nothing_left());
    }

    #[tokio::test]
    async fn a_removal_during_a_create_waits_for_it_and_then_removes_everything() {
        let h = host();
        h.sim.fail(Op::NetnsAdd, Fault::Stall, 1);
        let creating = {
            let net = Netavark { inner: h.net.inner.clone() };
            tokio::spawn(async move { net.create(&task(14), &one()).await })
        };
        h.sim.stalled.notified().await;
        let removing = {
            let net = Netavark { inner: h.net.inner.clone() };
            tokio::spawn(async move { net.remove(&task(14)).await })
        };
        // (The test runtime has one thread: yielding lets the removal run as far as it can.)
        let calls = h.sim.calls("");
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(h.sim.calls(""), calls, "the removal waits for the create's turn to end");
        h.sim.release();
        creating.await.unwrap().unwrap();
        removing.await.unwrap().unwrap();
        assert_eq!(h.left(), h.nothing_left());
    }

    #[tokio::test]
    async fn an_unreadable_state_file_does_not_block_removal() {
        let h = host();
        h.net.create(&task(15), &[SandboxSpec { container: None, attach: None }]).await.unwrap();
        std::fs::write(h.net.inner.state_path(&task(15)), b"{not json").unwrap();
        assert_eq!(h.net.list().await.unwrap(), vec![task(15)]);
        h.net.remove(&task(15)).await.unwrap();
        assert_eq!(h.left(), h.nothing_left());
    }

    #[tokio::test]
    async fn unfinished_state_writes_are_cleared_at_start() {
        let h = host();
        let tmp = h.net.inner.state_dir.join(format!("{}.json.tmp", task(16)));
        std::fs::write(&tmp, b"{").unwrap();
        let again = h.restart();
        assert!(!tmp.exists());
        assert_eq!(again.list().await.unwrap(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn addresses_held_at_start_are_not_handed_out_again() {
        let h = host();
        let made = h.net.create(&task(17), &one()).await.unwrap();
        let again = h.restart();
        let used = &again.inner.ipam.lock().unwrap().used;
        assert_eq!(used["default"], BTreeSet::from([made[0].iface.as_ref().unwrap().address]));
    }

    #[tokio::test]
    async fn processes_that_outlive_the_timeout_are_killed() {
        let quick = Processes { timeout: Duration::from_millis(200), netns: None };
        quick.run(OsStr::new("true"), &[], None).await.unwrap();
        let started = std::time::Instant::now();
        let e = quick.run(OsStr::new("sleep"), &[OsStr::new("30")], None).await.unwrap_err();
        assert!(matches!(e, NetworkError::Timeout { .. }), "{e:?}");
        assert_eq!(e.to_string(), "sleep 30 did not finish within 200ms and was killed");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(e.is_transient());
    }

    #[test]
    fn which_errors_are_worth_retrying() {
        let io = |kind| std::io::Error::from(kind);
        let spawn = |kind| NetworkError::Spawn { command: "netavark".into(), source: io(kind) };
        let held = |cause: NetworkError| NetworkError::StillHeld {
            task_id: "t".into(),
            held: vec![Held::Namespace("/run/netns/x".into())],
            cause: Some(Box::new(cause)),
        };
        let command = NetworkError::Command { command: "iptables".into(), stderr: "lock".into() };
        assert!(!spawn(std::io::ErrorKind::NotFound).is_transient(), "a missing tool stays missing");
        assert!(!held(spawn(std::io::ErrorKind::PermissionDenied)).is_transient());
        assert!(spawn(std::io::ErrorKind::WouldBlock).is_transient(), "EAGAIN under load");
        assert!(held(command).is_transient());
        assert!(!NetworkError::UnknownNetwork("x".into()).is_transient());
        let state = |kind| NetworkError::State { what: "cannot remove x".into(), source: io(kind) };
        assert!(!state(std::io::ErrorKind::ReadOnlyFilesystem).is_transient());
        assert!(state(std::io::ErrorKind::Interrupted).is_transient());
    }

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

    #[test]
    fn podmans_bridges_and_ecsds_are_cut_apart_both_ways_but_for_published_ports() {
        let rules: Vec<String> = podman_isolation_rules().iter().map(|r| r.join(" ")).collect();
        let exempt = "-m conntrack ! --ctstate DNAT -j DROP";
        assert_eq!(
            rules,
            [
                format!("-i ecsd+ -o podman+ {exempt}"),
                format!("-i podman+ -o ecsd+ {exempt}"),
                format!("-i ecsd+ -o cni-podman+ {exempt}"),
                format!("-i cni-podman+ -o ecsd+ {exempt}"),
            ]
        );
    }
}
