//! The task networks ecsd offers, and how ports are handed out: from the config file's
//! `[networks.NAME]` and `[tasks]` tables, with a built-in default network.

use crate::model::network::PortRange;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::path::PathBuf;

use serde::Deserialize;

/// The network every task lands on unless its awsvpc subnet names another.
pub const DEFAULT_NETWORK: &str = "default";
/// Its bridge, as Docker's is `docker0` and Podman's `podman0`.
pub const DEFAULT_BRIDGE: &str = "ecsd0";
pub const DEFAULT_SUBNET: &str = "10.217.0.0/16";
/// Every ecsd bridge starts with this, which is how the isolation rules tell them apart.
pub const BRIDGE_PREFIX: &str = "ecsd";
/// The ECS agent's `ECS_RESERVED_PORTS` default.
pub const DEFAULT_RESERVED_PORTS: [u16; 5] = [22, 2375, 2376, 51678, 51679];
/// Docker's and the ECS agent's ephemeral range for dynamic host ports.
pub const DEFAULT_DYNAMIC_PORTS: RangeInclusive<u16> = 49153..=65535;

/// One task network: a bridge on the host with an IPv4 subnet, NAT to the outside, and
/// (when `dns`) aardvark-dns answering for the tasks on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkDef {
    pub name: String,
    pub subnet: Ipv4Addr,
    pub prefix_len: u8,
    pub bridge: String,
    pub dns: bool,
}

impl NetworkDef {
    pub fn new(name: &str, cidr: &str, bridge: Option<&str>, dns: bool) -> Result<NetworkDef, String> {
        let (subnet, prefix_len) = parse_cidr(cidr)?;
        if !(8..=30).contains(&prefix_len) {
            return Err(format!("subnet {cidr}: the prefix must be between /8 and /30"));
        }
        let bridge = match bridge {
            Some(b) => b.to_owned(),
            None if name == DEFAULT_NETWORK => DEFAULT_BRIDGE.to_owned(),
            None => format!("{BRIDGE_PREFIX}-{name}"),
        };
        if !bridge.starts_with(BRIDGE_PREFIX)
            || bridge.len() > 15
            || !bridge.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "bridge '{bridge}' of network '{name}': a bridge name starts with '{BRIDGE_PREFIX}', \
                 has at most 15 letters, digits, '-' or '_' (set `bridge` for a long network name)"
            ));
        }
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(format!("network name '{name}': use letters, digits, '-' and '_'"));
        }
        Ok(NetworkDef { name: name.to_owned(), subnet, prefix_len, bridge, dns })
    }

    pub fn cidr(&self) -> String {
        format!("{}/{}", self.subnet, self.prefix_len)
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - self.prefix_len)
    }

    /// The subnet's first host address: the bridge's address and the tasks' default route.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet) + 1)
    }

    /// Addresses tasks may get. As in a VPC subnet, the first four (network, router, DNS,
    /// reserved) and the last (broadcast) are never handed out.
    pub fn assignable(&self) -> RangeInclusive<u32> {
        let base = u32::from(self.subnet);
        base + 4..=(base | !self.mask()) - 1
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.subnet)
    }

    /// The subnet id ECS shows for a task on this network (`subnet-<name>`).
    pub fn subnet_id(&self) -> String {
        if self.name.starts_with("subnet-") { self.name.clone() } else { format!("subnet-{}", self.name) }
    }

    /// Whether an awsvpc `subnets[]` entry picks this network: its name, or `subnet-<name>`.
    pub fn matches_subnet(&self, id: &str) -> bool {
        id == self.name || id == self.subnet_id()
    }

    /// A stable 64-hex id for netavark (which wants one per network).
    pub fn id(&self) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(format!("ecsd-network:{}:{}:{}", self.name, self.bridge, self.cidr())))
    }
}

fn parse_cidr(cidr: &str) -> Result<(Ipv4Addr, u8), String> {
    let (ip, len) =
        cidr.split_once('/').ok_or_else(|| format!("'{cidr}' is not an IPv4 CIDR such as 10.217.0.0/16"))?;
    let ip: Ipv4Addr =
        ip.parse().map_err(|_| format!("'{cidr}' is not an IPv4 CIDR such as 10.217.0.0/16"))?;
    let len: u8 =
        len.parse().ok().filter(|l| *l <= 32).ok_or_else(|| format!("'{cidr}': bad prefix length"))?;
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    if u32::from(ip) & !mask != 0 {
        return Err(format!(
            "'{cidr}' has host bits set; the subnet is {}/{len}",
            Ipv4Addr::from(u32::from(ip) & mask)
        ));
    }
    Ok((ip, len))
}

/// Where the task networks' bridges, NAT and firewall rules live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Uplink {
    /// In ecsd's own network namespace (the host's, as root).
    #[default]
    Host,
    /// In a network namespace of ecsd's own (`<prefix>uplink`), where netavark, aardvark-dns
    /// and ecsd's isolation rules run, and published ports are forwarded into by ecsd: for a
    /// rootless ecsd, which cannot make bridges or firewall rules in the host's namespace.
    /// Tasks reach the outside through slirp4netns attached to it, when `/dev/net/tun` is
    /// usable and slirp4netns installed.
    Netns,
}

/// How ecsd networks tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The default network first, then the others by name.
    pub networks: Vec<NetworkDef>,
    /// Publish awsvpc tasks' `portMappings` on the host too (ECS reaches them by task IP only).
    pub publish_awsvpc_ports: bool,
    pub dynamic_ports: RangeInclusive<u16>,
    pub reserved_ports: Vec<u16>,
    /// UDP host ports never handed out (`ECS_RESERVED_PORTS_UDP`).
    pub reserved_ports_udp: Vec<u16>,
    pub netavark: PathBuf,
    pub aardvark: PathBuf,
    /// Podman networks (`ECS_EXTERNAL_NETWORKS`) every awsvpc and bridge sandbox also joins,
    /// with an interface of its own on each (`eth1`, …). ecsd never changes or deletes them.
    pub external: Vec<String>,
    /// The `podman` that describes them.
    pub podman: PathBuf,
    /// `ECSD_NETWORK_UPLINK` (`host` or `netns`).
    pub uplink: Uplink,
    /// The slirp4netns that gives the uplink namespace its way out (`ECSD_SLIRP4NETNS`).
    pub slirp4netns: PathBuf,
    /// The tun device slirp4netns opens.
    pub tun: PathBuf,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            networks: vec![
                NetworkDef::new(DEFAULT_NETWORK, DEFAULT_SUBNET, None, true).expect("valid default"),
            ],
            publish_awsvpc_ports: false,
            dynamic_ports: DEFAULT_DYNAMIC_PORTS,
            reserved_ports: DEFAULT_RESERVED_PORTS.to_vec(),
            reserved_ports_udp: vec![],
            netavark: PathBuf::from("/usr/lib/podman/netavark"),
            aardvark: PathBuf::from("/usr/lib/podman/aardvark-dns"),
            external: vec![],
            podman: PathBuf::from("podman"),
            uplink: Uplink::Host,
            slirp4netns: PathBuf::from("slirp4netns"),
            tun: PathBuf::from("/dev/net/tun"),
        }
    }
}

/// A config-file or environment value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}: {reason}")]
pub struct SettingsError {
    pub name: String,
    pub reason: String,
}

/// `ECS_EXTERNAL_NETWORKS`: Podman network names, comma-separated, as local-ecs-api reads it.
fn external_networks(value: &str) -> Result<Vec<String>, String> {
    let mut names: Vec<String> = Vec::new();
    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let valid = name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
        if !valid {
            return Err(format!("'{name}' is not a Podman network name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)"));
        }
        if names.iter().any(|n| n == name) {
            return Err(format!("network '{name}' is named twice"));
        }
        names.push(name.to_owned());
    }
    Ok(names)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileNetworks {
    #[serde(default)]
    pub networks: BTreeMap<String, FileNetwork>,
    #[serde(default)]
    pub tasks: FileTasks,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileNetwork {
    pub subnet: String,
    pub bridge: Option<String>,
    pub dns: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTasks {
    pub publish_awsvpc_ports: Option<bool>,
    pub dynamic_host_ports: Option<String>,
    pub reserved_ports: Option<Vec<u16>>,
    pub netavark: Option<PathBuf>,
    pub aardvark_dns: Option<PathBuf>,
    /// `host` or `netns` (see [`Uplink`]).
    pub uplink: Option<String>,
}

impl Settings {
    /// Builds the settings from the config file's tables and the environment
    /// (`ECSD_TASK_SUBNET` sets the default network's subnet; `ECS_RESERVED_PORTS`,
    /// `ECS_DYNAMIC_HOST_PORT_RANGE` as the ECS agent reads them).
    pub fn resolve(
        file: FileNetworks,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Settings, SettingsError> {
        let defaults = Settings::default();
        let err = |name: &str, reason: String| SettingsError { name: name.to_owned(), reason };
        let mut networks = Vec::new();
        let default_file = file.networks.get(DEFAULT_NETWORK);
        let (default_subnet, subnet_name) = match env("ECSD_TASK_SUBNET") {
            Some(s) => (s, "ECSD_TASK_SUBNET"),
            None => match default_file {
                Some(f) => (f.subnet.clone(), "networks.default.subnet"),
                None => (DEFAULT_SUBNET.to_owned(), "ECSD_TASK_SUBNET"),
            },
        };
        networks.push(
            NetworkDef::new(
                DEFAULT_NETWORK,
                &default_subnet,
                default_file.and_then(|f| f.bridge.as_deref()),
                default_file.and_then(|f| f.dns).unwrap_or(true),
            )
            .map_err(|r| err(subnet_name, r))?,
        );
        for (name, f) in &file.networks {
            if name == DEFAULT_NETWORK {
                continue;
            }
            let def = NetworkDef::new(name, &f.subnet, f.bridge.as_deref(), f.dns.unwrap_or(true))
                .map_err(|r| err(&format!("networks.{name}"), r))?;
            networks.push(def);
        }
        for (i, a) in networks.iter().enumerate() {
            for b in &networks[i + 1..] {
                if a.bridge == b.bridge {
                    return Err(err(
                        &format!("networks.{}", b.name),
                        format!("bridge '{}' is also network '{}''s", b.bridge, a.name),
                    ));
                }
                if a.contains(b.subnet) || b.contains(a.subnet) {
                    return Err(err(
                        &format!("networks.{}", b.name),
                        format!("subnet {} overlaps network '{}' ({})", b.cidr(), a.name, a.cidr()),
                    ));
                }
            }
        }

        let dynamic_ports = match env("ECS_DYNAMIC_HOST_PORT_RANGE")
            .map(|v| ("ECS_DYNAMIC_HOST_PORT_RANGE", v))
            .or_else(|| file.tasks.dynamic_host_ports.clone().map(|v| ("tasks.dynamic_host_ports", v)))
        {
            None => defaults.dynamic_ports,
            Some((name, v)) => PortRange::parse(&v)
                .map(PortRange::ports)
                .map_err(|e| err(name, format!("{e}, such as 49153-65535")))?,
        };
        let reserved_ports = match env("ECS_RESERVED_PORTS") {
            Some(v) => serde_json::from_str::<Vec<u16>>(&v).map_err(|_| {
                err("ECS_RESERVED_PORTS", format!("'{v}' is not a JSON list of ports such as [22, 2375]"))
            })?,
            None => file.tasks.reserved_ports.unwrap_or(defaults.reserved_ports),
        };
        let reserved_ports_udp = match env("ECS_RESERVED_PORTS_UDP") {
            Some(v) => serde_json::from_str::<Vec<u16>>(&v).map_err(|_| {
                err("ECS_RESERVED_PORTS_UDP", format!("'{v}' is not a JSON list of ports such as [53]"))
            })?,
            None => vec![],
        };
        let publish_awsvpc_ports = match env("ECSD_PUBLISH_AWSVPC_PORTS") {
            Some(v) => match v.as_str() {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => return Err(err("ECSD_PUBLISH_AWSVPC_PORTS", format!("'{v}' is not true or false"))),
            },
            None => file.tasks.publish_awsvpc_ports.unwrap_or(false),
        };
        let external = match env("ECS_EXTERNAL_NETWORKS") {
            Some(v) => external_networks(&v).map_err(|r| err("ECS_EXTERNAL_NETWORKS", r))?,
            None => vec![],
        };
        let uplink = match env("ECSD_NETWORK_UPLINK")
            .map(|v| ("ECSD_NETWORK_UPLINK", v))
            .or_else(|| file.tasks.uplink.clone().map(|v| ("tasks.uplink", v)))
        {
            None => Uplink::Host,
            Some((_, v)) if v == "host" => Uplink::Host,
            Some((_, v)) if v == "netns" => Uplink::Netns,
            Some((name, v)) => return Err(err(name, format!("'{v}' is not host or netns"))),
        };
        if uplink == Uplink::Netns && !external.is_empty() {
            return Err(err(
                "ECSD_NETWORK_UPLINK",
                "netns cannot be combined with ECS_EXTERNAL_NETWORKS: Podman's bridges are in the \
                 host's network namespace, out of reach of the uplink namespace"
                    .into(),
            ));
        }
        Ok(Settings {
            uplink,
            external,
            podman: env("ECSD_PODMAN").map(PathBuf::from).unwrap_or(defaults.podman),
            networks,
            publish_awsvpc_ports,
            dynamic_ports,
            reserved_ports,
            reserved_ports_udp,
            netavark: env("ECSD_NETAVARK")
                .map(PathBuf::from)
                .or(file.tasks.netavark)
                .unwrap_or(defaults.netavark),
            aardvark: env("ECSD_AARDVARK_DNS")
                .map(PathBuf::from)
                .or(file.tasks.aardvark_dns)
                .unwrap_or(defaults.aardvark),
            slirp4netns: env("ECSD_SLIRP4NETNS").map(PathBuf::from).unwrap_or(defaults.slirp4netns),
            tun: defaults.tun,
        })
    }

    pub fn default_network(&self) -> &NetworkDef {
        &self.networks[0]
    }

    pub fn network(&self, name: &str) -> Option<&NetworkDef> {
        self.networks.iter().find(|n| n.name == name)
    }

    /// The network an awsvpc `subnets[]` entry picks.
    pub fn network_for_subnet(&self, id: &str) -> Option<&NetworkDef> {
        self.networks.iter().find(|n| n.matches_subnet(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(toml_text: &str, env: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let file: FileNetworks = toml::from_str(toml_text).unwrap();
        Settings::resolve(file, &|k| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))
    }

    #[test]
    fn default_network_and_reserved_addresses() {
        let s = resolve("", &[]).unwrap();
        let d = s.default_network();
        assert_eq!(
            (d.name.as_str(), d.bridge.as_str(), d.cidr().as_str()),
            ("default", "ecsd0", "10.217.0.0/16")
        );
        assert_eq!(d.gateway(), Ipv4Addr::new(10, 217, 0, 1));
        let r = d.assignable();
        assert_eq!(Ipv4Addr::from(*r.start()), Ipv4Addr::new(10, 217, 0, 4));
        assert_eq!(Ipv4Addr::from(*r.end()), Ipv4Addr::new(10, 217, 255, 254));
        assert_eq!(s.dynamic_ports, 49153..=65535);
        assert_eq!(s.reserved_ports, vec![22, 2375, 2376, 51678, 51679]);
        assert!(!s.publish_awsvpc_ports);
    }

    #[test]
    fn external_networks_are_a_comma_separated_list_of_podman_names() {
        assert!(resolve("", &[]).unwrap().external.is_empty());
        let s = resolve("", &[("ECS_EXTERNAL_NETWORKS", " db , moto-net,")]).unwrap();
        assert_eq!(s.external, ["db", "moto-net"]);
        for (value, reason) in [
            ("db,db", "network 'db' is named twice"),
            ("db,-x", "'-x' is not a Podman network name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)"),
            ("a b", "'a b' is not a Podman network name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)"),
        ] {
            let e = resolve("", &[("ECS_EXTERNAL_NETWORKS", value)]).unwrap_err();
            assert_eq!((e.name.as_str(), e.reason.as_str()), ("ECS_EXTERNAL_NETWORKS", reason), "{value}");
        }
    }

    #[test]
    fn the_uplink_is_the_hosts_unless_netns_is_asked_for() {
        assert_eq!(resolve("", &[]).unwrap().uplink, Uplink::Host);
        assert_eq!(resolve("", &[("ECSD_NETWORK_UPLINK", "netns")]).unwrap().uplink, Uplink::Netns);
        assert_eq!(resolve("[tasks]\nuplink = \"netns\"\n", &[]).unwrap().uplink, Uplink::Netns);
        let e = resolve("", &[("ECSD_NETWORK_UPLINK", "slirp")]).unwrap_err();
        assert_eq!(
            (e.name.as_str(), e.reason.as_str()),
            ("ECSD_NETWORK_UPLINK", "'slirp' is not host or netns")
        );
        let e =
            resolve("", &[("ECSD_NETWORK_UPLINK", "netns"), ("ECS_EXTERNAL_NETWORKS", "db")]).unwrap_err();
        assert!(e.reason.contains("cannot be combined with ECS_EXTERNAL_NETWORKS"), "{e}");
    }

    #[test]
    fn named_networks_are_picked_by_subnet_id() {
        let s = resolve(
            "[networks.blue]\nsubnet = \"10.30.0.0/24\"\n[networks.subnet-0abc]\nsubnet = \"10.31.0.0/24\"\nbridge = \"ecsd-real\"\n",
            &[("ECSD_TASK_SUBNET", "10.29.0.0/24")],
        )
        .unwrap();
        assert_eq!(s.default_network().cidr(), "10.29.0.0/24");
        assert_eq!(s.network_for_subnet("subnet-blue").unwrap().bridge, "ecsd-blue");
        assert_eq!(s.network_for_subnet("blue").unwrap().subnet_id(), "subnet-blue");
        assert_eq!(s.network_for_subnet("subnet-0abc").unwrap().subnet_id(), "subnet-0abc");
        assert!(s.network_for_subnet("subnet-nope").is_none());
    }

    #[test]
    fn bad_values_name_the_field() {
        let e = resolve("[networks.blue]\nsubnet = \"10.217.3.0/24\"\n", &[]).unwrap_err();
        assert_eq!(e.name, "networks.blue");
        assert!(e.reason.contains("overlaps network 'default'"), "{e}");
        let e = resolve("[networks.averyveryverylongname]\nsubnet = \"10.40.0.0/24\"\n", &[]).unwrap_err();
        assert!(e.reason.contains("at most 15"), "{e}");
        let e = resolve("", &[("ECSD_TASK_SUBNET", "10.217.0.1/16")]).unwrap_err();
        assert_eq!(e.name, "ECSD_TASK_SUBNET");
        assert!(e.reason.contains("host bits"), "{e}");
        let e = resolve("", &[("ECS_DYNAMIC_HOST_PORT_RANGE", "9-1")]).unwrap_err();
        assert_eq!(e.name, "ECS_DYNAMIC_HOST_PORT_RANGE");
        assert!(toml::from_str::<FileNetworks>("[networks.x]\nsubnet=\"10.1.0.0/24\"\nmtu=1\n").is_err());
    }
}
