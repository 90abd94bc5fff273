//! A simulated host for the network's unit tests: a [`Runner`] that answers `ip netns`,
//! `ip -n`, `iptables`, `iptables-save` and netavark 1.4's `setup`/`teardown` the way the
//! real tools do, keeping namespaces as files in a directory, bridges and their members as
//! a `/sys/class/net` tree, and interfaces, rules and aardvark-dns records (real files in
//! netavark's config dir) as netavark would. Failures are injected per operation, to drive
//! teardown through the paths a loaded host takes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::Value;

use super::{NetworkError, Runner};

/// Where a fault strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Op {
    NetnsAdd,
    Setup,
    Teardown,
    NetnsDelete,
    IptablesSave,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Nothing goes wrong (to aim a later fault at a later run).
    Works,
    /// netavark 1.4 when aardvark-dns has just exited: everything is torn down, then the
    /// run fails (`aardvark pid not found`).
    AardvarkGone,
    /// The firewall step fails: the sandbox's port-forwarding rules stay.
    FirewallFails,
    /// setup makes the interface and the DNS records, then fails.
    SetupFailsHalfWay,
    /// The tool fails before doing anything.
    FailsAtOnce,
    /// setup makes the interface (`ip netns add` the namespace), then waits for
    /// [`Sim::release`] before the rest (a slow tool on a loaded host).
    Stall,
}

#[derive(Debug, Default)]
struct State {
    /// Namespaces (by name) that have an `eth0`, and its peer on a bridge (none for a
    /// pair made inside the namespace).
    veths: BTreeMap<String, Option<(String, String)>>,
    /// A network's own rules, by bridge (netavark removes them with the bridge).
    network_rules: BTreeMap<String, usize>,
    peers: usize,
    /// Port-forwarding rules per container id: (address, count).
    rules: BTreeMap<String, (String, usize)>,
    faults: HashMap<Op, VecDeque<Fault>>,
    calls: Vec<String>,
}

#[derive(Debug)]
pub(crate) struct Sim {
    pub(crate) netns_dir: PathBuf,
    /// The host's `/sys/class/net`: `<bridge>/brif/<member>`.
    pub(crate) sys_dir: PathBuf,
    state: Mutex<State>,
    /// Notified when a [`Fault::Stall`] starts waiting.
    pub(crate) stalled: tokio::sync::Notify,
    release: tokio::sync::Notify,
}

fn failed(command: &str, said: &str) -> NetworkError {
    NetworkError::Command { command: command.to_owned(), stderr: said.to_owned() }
}

impl Sim {
    /// A host kept under `root`.
    pub(crate) fn new(root: &Path) -> Arc<Sim> {
        let (netns_dir, sys_dir) = (root.join("netns"), root.join("sys-class-net"));
        std::fs::create_dir_all(&netns_dir).unwrap();
        std::fs::create_dir_all(&sys_dir).unwrap();
        Arc::new(Sim {
            netns_dir,
            sys_dir,
            state: Mutex::default(),
            stalled: tokio::sync::Notify::new(),
            release: tokio::sync::Notify::new(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// The next `times` runs of `op` meet `fault`.
    pub(crate) fn fail(&self, op: Op, fault: Fault, times: usize) {
        self.state().faults.entry(op).or_default().extend(std::iter::repeat_n(fault, times));
    }

    fn fault(&self, op: Op) -> Option<Fault> {
        self.state().faults.get_mut(&op)?.pop_front()
    }

    /// Lets a stalled setup go on.
    pub(crate) fn release(&self) {
        self.release.notify_one();
    }

    pub(crate) fn calls(&self, prefix: &str) -> usize {
        self.state().calls.iter().filter(|c| c.starts_with(prefix)).count()
    }

    pub(crate) fn namespaces(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.netns_dir)
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        names
    }

    pub(crate) fn interfaces(&self) -> usize {
        self.state().veths.len()
    }

    pub(crate) fn rules(&self) -> usize {
        self.state().rules.values().map(|(_, n)| n).sum()
    }

    pub(crate) fn network_rules(&self) -> usize {
        self.state().network_rules.values().sum()
    }

    pub(crate) fn bridges(&self) -> usize {
        std::fs::read_dir(&self.sys_dir).unwrap().count()
    }

    /// A namespace's end of a veth pair goes: so does the peer (off its bridge).
    fn drop_veth(&self, name: &str) -> bool {
        let removed = self.state().veths.remove(name);
        match removed {
            Some(Some((bridge, peer))) => {
                std::fs::remove_file(self.sys_dir.join(bridge).join("brif").join(peer)).unwrap();
                true
            }
            Some(None) => true,
            None => false,
        }
    }

    /// Removes a namespace behind the network's back (a reboot, an operator, an older
    /// ecsd that deleted it before its teardown was done).
    pub(crate) fn lose_namespace(&self, name: &str) {
        std::fs::remove_file(self.netns_dir.join(name)).unwrap();
        self.drop_veth(name);
    }

    async fn ip(&self, args: &[String], command: &str) -> Result<Vec<u8>, NetworkError> {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match args.as_slice() {
            ["netns", "add", name] => {
                let path = self.netns_dir.join(name);
                if path.exists() {
                    return Err(failed(
                        command,
                        &format!("Cannot create namespace file \"{}\": File exists", path.display()),
                    ));
                }
                std::fs::write(path, b"").unwrap();
                if let Some(Fault::Stall) = self.fault(Op::NetnsAdd) {
                    self.stalled.notify_one();
                    self.release.notified().await;
                }
                Ok(vec![])
            }
            ["netns", "delete", name] => {
                if let Some(Fault::FailsAtOnce) = self.fault(Op::NetnsDelete) {
                    return Err(failed(command, "Cannot remove namespace file: Device or resource busy"));
                }
                std::fs::remove_file(self.netns_dir.join(name)).map_err(|_| {
                    failed(command, "Cannot remove namespace file: No such file or directory")
                })?;
                self.drop_veth(name);
                Ok(vec![])
            }
            ["-n", name, "-batch", "-"] | ["netns", "exec", name, "iptables", ..] => {
                self.open(name, command)?;
                Ok(vec![])
            }
            ["-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", _] => {
                self.open(name, command)?;
                if self.state().veths.contains_key(*name) {
                    return Err(failed(command, "RTNETLINK answers: File exists"));
                }
                self.state().veths.insert(name.to_string(), None);
                Ok(vec![])
            }
            ["-n", name, "-j", "link", "show"] => {
                self.open(name, command)?;
                let mut links = vec![serde_json::json!({"ifname": "lo"})];
                if self.state().veths.contains_key(*name) {
                    links.push(serde_json::json!({"ifname": "eth0"}));
                }
                Ok(serde_json::to_vec(&links).unwrap())
            }
            other => panic!("the simulated host has no `ip {other:?}`"),
        }
    }

    fn open(&self, name: &str, command: &str) -> Result<(), NetworkError> {
        if self.netns_dir.join(name).exists() {
            Ok(())
        } else {
            Err(failed(
                command,
                &format!("Cannot open network namespace \"{name}\": No such file or directory"),
            ))
        }
    }

    fn iptables_save(&self, command: &str) -> Result<Vec<u8>, NetworkError> {
        if let Some(Fault::FailsAtOnce) = self.fault(Op::IptablesSave) {
            return Err(failed(command, "iptables-save: cannot lock"));
        }
        let mut out = String::from("*nat\n:PREROUTING ACCEPT [0:0]\n");
        for (cid, (address, n)) in &self.state().rules {
            for i in 0..*n {
                if i % 2 == 0 {
                    out.push_str(&format!(
                        "-A NETAVARK-HOSTPORT-DNAT -p tcp -m tcp --dport {} -m comment --comment \"dnat name: n id: {cid}\" -j NETAVARK-DN-1\n",
                        43000 + i
                    ));
                } else {
                    out.push_str(&format!(
                        "-A NETAVARK-DN-1 -p tcp -m tcp --dport {} -j DNAT --to-destination {address}:80\n",
                        43000 + i
                    ));
                }
            }
        }
        out.push_str("COMMIT\n");
        Ok(out.into_bytes())
    }

    async fn netavark(&self, args: &[String], input: &[u8], command: &str) -> Result<Vec<u8>, NetworkError> {
        let [flag, config, _, _, verb, netns] = args else { panic!("netavark {args:?}") };
        assert_eq!(flag, "--config");
        let name = Path::new(netns).file_name().unwrap().to_str().unwrap().to_owned();
        let options: Value = serde_json::from_slice(input).unwrap();
        let cid = options["container_id"].as_str().unwrap().to_owned();
        let (net, info) = options["network_info"].as_object().unwrap().iter().next().unwrap();
        let address = options["networks"][net]["static_ips"][0].as_str().unwrap().to_owned();
        let dns = info["dns_enabled"].as_bool().unwrap();
        let bridge = info["network_interface"].as_str().unwrap().to_owned();
        let members = self.sys_dir.join(&bridge).join("brif");
        let ports = options.get("port_mappings").and_then(Value::as_array).map_or(0, Vec::len);
        let records = Path::new(config).join("aardvark-dns").join(net);
        match verb.as_str() {
            "setup" => {
                let fault = self.fault(Op::Setup);
                if fault == Some(Fault::FailsAtOnce) {
                    return Err(failed(command, "IO error: failed to create bridge"));
                }
                self.open(&name, command)?;
                if self.state().veths.contains_key(&name) {
                    return Err(failed(command, "Netlink error: File exists (os error 17)"));
                }
                std::fs::create_dir_all(&members).unwrap();
                let peer = {
                    let mut state = self.state();
                    state.peers += 1;
                    state.network_rules.entry(bridge.clone()).or_insert(3);
                    format!("veth{}", state.peers)
                };
                std::fs::write(members.join(&peer), b"").unwrap();
                self.state().veths.insert(name.clone(), Some((bridge.clone(), peer)));
                if fault == Some(Fault::Stall) {
                    self.stalled.notify_one();
                    self.release.notified().await;
                }
                if dns {
                    use std::io::Write;
                    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&records).unwrap();
                    if f.metadata().unwrap().len() == 0 {
                        f.write_all(b"10.0.0.1\n").unwrap();
                    }
                    f.write_all(format!("{cid} {address}  name\n").as_bytes()).unwrap();
                }
                if fault == Some(Fault::SetupFailsHalfWay) {
                    return Err(failed(
                        command,
                        "unable to append rule: iptables: Resource temporarily unavailable.",
                    ));
                }
                if ports > 0 {
                    self.state().rules.insert(cid, (address, 2 * ports));
                }
                Ok(serde_json::to_vec(
                    &serde_json::json!({net: {"interfaces": {"eth0": {"mac_address": "0a:58:00:00:00:01"}}}}),
                )
                .unwrap())
            }
            "teardown" => {
                let fault = self.fault(Op::Teardown);
                if fault == Some(Fault::FailsAtOnce) {
                    return Err(failed(command, "failed to get firewall driver"));
                }
                let mut errors = vec![];
                // netavark 1.4's order: DNS records, then the namespace (or stop), the
                // interface, the firewall.
                if dns {
                    match std::fs::read_to_string(&records) {
                        Ok(text) => {
                            let kept: Vec<&str> = text.lines().filter(|l| !l.contains(&cid)).collect();
                            if kept.len() <= 1 {
                                std::fs::remove_file(&records).unwrap();
                            } else {
                                std::fs::write(&records, kept.join("\n") + "\n").unwrap();
                            }
                            if fault == Some(Fault::AardvarkGone) {
                                errors.push("IO error: aardvark pid not found".to_owned());
                            }
                        }
                        Err(_) => errors.push("IO error: No such file or directory (os error 2)".to_owned()),
                    }
                }
                self.open(&name, command)?;
                // The bridge goes with its last member, and the network's rules with it
                // (a "complete teardown"), only when this run deleted an eth0.
                let mut complete = false;
                if !self.drop_veth(&name) {
                    errors.push(
                        "failed to delete container veth eth0: Netlink error: No such device (os error 19)"
                            .into(),
                    );
                } else if !members.exists() {
                    errors.push(
                        "failed to get bridge interface: Netlink error: No such device (os error 19)".into(),
                    );
                } else if std::fs::read_dir(&members).unwrap().next().is_none() {
                    std::fs::remove_dir_all(self.sys_dir.join(&bridge)).unwrap();
                    complete = true;
                }
                if fault == Some(Fault::FirewallFails) {
                    errors.push("failed to remove rule: iptables: Resource temporarily unavailable.".into());
                } else {
                    let mut state = self.state();
                    state.rules.remove(&cid);
                    if complete {
                        state.network_rules.remove(&bridge);
                    }
                }
                if errors.is_empty() { Ok(vec![]) } else { Err(failed(command, &errors.join("; "))) }
            }
            other => panic!("netavark {other}"),
        }
    }
}

#[async_trait]
impl Runner for Sim {
    async fn run(
        &self,
        program: &OsStr,
        args: &[&OsStr],
        input: Option<&[u8]>,
    ) -> Result<Vec<u8>, NetworkError> {
        // A real tool is a process: other work runs meanwhile.
        tokio::task::yield_now().await;
        let program = Path::new(program).file_name().unwrap().to_string_lossy().into_owned();
        let args: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        let command = format!("{program} {}", args.join(" "));
        let verb =
            if program == "netavark" { args.get(4).cloned().unwrap_or_default() } else { args.join(" ") };
        self.state().calls.push(format!("{program} {verb}"));
        match program.as_str() {
            "ip" => self.ip(&args, &command).await,
            "iptables" => Ok(vec![]),
            "iptables-save" => self.iptables_save(&command),
            "netavark" => self.netavark(&args, input.unwrap_or_default(), &command).await,
            other => panic!("the simulated host has no {other}"),
        }
    }

    /// Namespaces are plain files here, recorded as the `ip netns add` iproute2 would run.
    async fn add_netns(&self, dir: &Path, name: &str) -> Result<(), NetworkError> {
        assert_eq!(dir, self.netns_dir, "namespaces are made in the simulated host's directory");
        self.run(OsStr::new("ip"), &[OsStr::new("netns"), OsStr::new("add"), OsStr::new(name)], None)
            .await
            .map(drop)
    }

    async fn delete_netns(&self, dir: &Path, name: &str) -> Result<(), NetworkError> {
        assert_eq!(dir, self.netns_dir, "namespaces are made in the simulated host's directory");
        if !dir.join(name).exists() {
            return Ok(());
        }
        let args = [OsStr::new("netns"), OsStr::new("delete"), OsStr::new(name)];
        self.run(OsStr::new("ip"), &args, None).await.map(drop)
    }
}
