//! Podman networks that task sandboxes join besides their own (`ECS_EXTERNAL_NETWORKS`), as
//! local-ecs-api's users have them: a database or a moto container the developer already runs.
//!
//! Each is read once at start with `podman network inspect` and joined through netavark with
//! Podman's definition, Podman's own netavark directory (so Podman's aardvark-dns answers the
//! task's names on that network) and under Podman's network lock (so ecsd's and Podman's
//! netavark runs never overlap). ecsd never changes or deletes these networks. Addresses come
//! from the part of the subnet Podman does not lease (`--ip-range`), highest first.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::NetworkError;

/// Why a Podman network of `ECS_EXTERNAL_NETWORKS` cannot be joined.
#[derive(Debug, thiserror::Error)]
pub enum ExternalProblem {
    #[error("cannot run {podman}: {source}")]
    CannotRun { podman: String, source: std::io::Error },
    #[error("podman network inspect failed: {stderr} (`podman network ls` lists the networks there are)")]
    InspectFailed { stderr: String },
    #[error("unexpected answer from podman network inspect: {0}")]
    UnexpectedAnswer(serde_json::Error),
    #[error("podman describes no such network")]
    NotDescribed,
    #[error("unexpected definition: {0}")]
    UnexpectedDefinition(serde_json::Error),
    #[error("its driver is {0}; only bridge networks can be joined")]
    NotBridge(String),
    #[error("its IPAM driver is {0}; only host-local addresses can be shared")]
    NotHostLocal(String),
    #[error("it has no IPv4 subnet of /30 or larger")]
    NoIpv4Subnet,
}

/// netavark's `--config` directory as Podman runs it as root: aardvark-dns's records of
/// Podman's networks live below it.
pub(super) const RUN_DIR: &str = "/run/containers/networks";
/// The lock Podman holds around its netavark runs and address leases.
const LOCK_FILE: &str = "/etc/containers/networks/netavark.lock";
/// How long ecsd waits for Podman to release its network lock.
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// One Podman network, as `podman network inspect` describes it.
#[derive(Debug, Clone)]
pub(super) struct External {
    pub name: String,
    /// Podman's definition, passed to netavark unchanged.
    pub definition: serde_json::Value,
    subnet: u32,
    prefix: u8,
    gateway: Option<Ipv4Addr>,
    /// The addresses Podman leases from (inclusive), when the network has an `--ip-range`.
    lease: Option<(u32, u32)>,
}

/// The fields of Podman's definition ecsd reads.
#[derive(Debug, Deserialize)]
struct Definition {
    name: String,
    driver: String,
    #[serde(default)]
    subnets: Vec<Subnet>,
    #[serde(default)]
    ipam_options: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct Subnet {
    subnet: String,
    gateway: Option<std::net::IpAddr>,
    lease_range: Option<LeaseRange>,
}

#[derive(Debug, Deserialize)]
struct LeaseRange {
    start_ip: Option<Ipv4Addr>,
    end_ip: Option<Ipv4Addr>,
}

/// What one sandbox holds on one Podman network (kept in the sandbox's state file).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Joined {
    pub network: String,
    pub address: Ipv4Addr,
    /// netavark's input for this network alone, replayed by the teardown.
    pub options: serde_json::Value,
}

impl External {
    /// Reads Podman's description of one network (an element of `podman network inspect`).
    pub(super) fn parse(definition: serde_json::Value) -> Result<External, ExternalProblem> {
        let d: Definition =
            serde_json::from_value(definition.clone()).map_err(ExternalProblem::UnexpectedDefinition)?;
        if d.driver != "bridge" {
            return Err(ExternalProblem::NotBridge(d.driver));
        }
        if let Some(ipam) = d.ipam_options.get("driver").filter(|i| *i != "host-local") {
            return Err(ExternalProblem::NotHostLocal(ipam.clone()));
        }
        let ((ip, prefix), lease, gateway) = d
            .subnets
            .iter()
            .find_map(|s| {
                let (ip, prefix) = s.subnet.split_once('/')?;
                let (ip, prefix) = (ip.parse::<Ipv4Addr>().ok()?, prefix.parse::<u8>().ok()?);
                (prefix <= 30).then_some(((ip, prefix), s.lease_range.as_ref(), s.gateway))
            })
            .ok_or(ExternalProblem::NoIpv4Subnet)?;
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        let base = u32::from(ip) & mask;
        let last = base | !mask;
        let lease = lease.map(|l| {
            let start = l.start_ip.map(u32::from).unwrap_or(base + 1);
            let end = l.end_ip.map(u32::from).unwrap_or(last - 1);
            (start, end)
        });
        let gateway = match gateway {
            Some(std::net::IpAddr::V4(g)) => Some(g),
            _ => None,
        };
        Ok(External { name: d.name, definition, subnet: base, prefix, gateway, lease })
    }

    /// The subnet in CIDR notation.
    pub(super) fn cidr(&self) -> String {
        format!("{}/{}", Ipv4Addr::from(self.subnet), self.prefix)
    }

    /// Whether Podman leases only part of the subnet, leaving ecsd the rest.
    pub(super) fn has_lease_range(&self) -> bool {
        self.lease.is_some()
    }

    /// The addresses a task may take, highest first: the subnet's hosts outside Podman's
    /// lease range, never the gateway (Podman, leasing from the bottom up, reaches the top
    /// last when there is no range).
    pub(super) fn candidates(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let last_host = (self.subnet | !u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0)) - 1;
        (self.subnet + 1..=last_host)
            .rev()
            .filter(move |a| self.lease.is_none_or(|(start, end)| !(start..=end).contains(a)))
            .map(Ipv4Addr::from)
            .filter(move |a| Some(*a) != self.gateway)
    }
}

/// Describes each of `names` with `podman network inspect` (at start, before any task runs).
pub(super) fn inspect(podman: &Path, names: &[String]) -> Result<Vec<External>, NetworkError> {
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let failed = |reason: ExternalProblem| NetworkError::External { network: name.clone(), reason };
        let output = std::process::Command::new(podman)
            .args(["network", "inspect", "--format", "json", name])
            .output()
            .map_err(|source| {
                failed(ExternalProblem::CannotRun { podman: podman.display().to_string(), source })
            })?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
            return Err(failed(ExternalProblem::InspectFailed { stderr }));
        }
        let listed: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout)
            .map_err(|e| failed(ExternalProblem::UnexpectedAnswer(e)))?;
        let definition = listed.into_iter().next().ok_or_else(|| failed(ExternalProblem::NotDescribed))?;
        let external = External::parse(definition).map_err(failed)?;
        if !external.has_lease_range() {
            warn!(
                network = %name,
                subnet = %external.cidr(),
                "Podman network has no --ip-range: tasks take addresses from the top of its subnet, \
                 which Podman reaches last but may still lease; recreate it with --ip-range to keep \
                 Podman to part of the subnet"
            );
        }
        out.push(external);
    }
    Ok(out)
}

/// Takes Podman's network lock (a POSIX record lock, as Podman's own lock file code takes it),
/// held until the returned descriptor is dropped.
pub(super) async fn lock() -> Result<OwnedFd, NetworkError> {
    let locking = tokio::task::spawn_blocking(|| {
        let failed = |source| NetworkError::State { what: format!("cannot lock {LOCK_FILE}"), source };
        if let Some(dir) = Path::new(LOCK_FILE).parent() {
            std::fs::create_dir_all(dir).map_err(failed)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_FILE)
            .map_err(failed)?;
        let fd = OwnedFd::from(file);
        rustix::fs::fcntl_lock(&fd, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| failed(std::io::Error::from(e)))?;
        Ok(fd)
    });
    match tokio::time::timeout(LOCK_WAIT, locking).await {
        Ok(Ok(locked)) => locked,
        Ok(Err(_)) => Err(NetworkError::Interrupted),
        Err(_) => Err(NetworkError::Timeout {
            command: format!("waiting for Podman's lock {LOCK_FILE}"),
            after: LOCK_WAIT,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `podman network inspect` of a network made with
    /// `podman network create --subnet 10.231.7.0/24 --ip-range 10.231.7.0/25` (Podman 4.3).
    fn with_range() -> serde_json::Value {
        json!({
            "name": "db-net", "id": "1383f51b3e6912cb7b5f568ea682a925c1c45732ae34c617be4c0e6e1d7173a5",
            "driver": "bridge", "network_interface": "podman1", "created": "2026-12-06T01:31:35.233612538Z",
            "subnets": [{"subnet": "10.231.7.0/24", "gateway": "10.231.7.1",
                         "lease_range": {"start_ip": "10.231.7.1", "end_ip": "10.231.7.127"}}],
            "ipv6_enabled": false, "internal": false, "dns_enabled": true,
            "ipam_options": {"driver": "host-local"}
        })
    }

    #[test]
    fn addresses_come_from_outside_podmans_lease_range_highest_first() {
        let n = External::parse(with_range()).unwrap();
        assert_eq!((n.name.as_str(), n.cidr().as_str()), ("db-net", "10.231.7.0/24"));
        let all: Vec<Ipv4Addr> = n.candidates().collect();
        assert_eq!(all.first(), Some(&Ipv4Addr::new(10, 231, 7, 254)));
        assert_eq!(all.last(), Some(&Ipv4Addr::new(10, 231, 7, 128)));
        assert_eq!(all.len(), 127);
    }

    #[test]
    fn without_a_range_the_whole_subnet_but_the_gateway_counts_from_the_top() {
        // Podman's default network.
        let n = External::parse(json!({
            "name": "podman", "id": "2f25", "driver": "bridge", "network_interface": "podman0",
            "subnets": [{"subnet": "10.88.0.0/16", "gateway": "10.88.0.1"}],
            "ipv6_enabled": false, "internal": false, "dns_enabled": false,
            "ipam_options": {"driver": "host-local"}
        }))
        .unwrap();
        assert!(!n.has_lease_range());
        let mut c = n.candidates();
        assert_eq!(c.next(), Some(Ipv4Addr::new(10, 88, 255, 254)));
        assert_eq!(n.candidates().last(), Some(Ipv4Addr::new(10, 88, 0, 2)), "never the gateway");
    }

    #[test]
    fn networks_that_cannot_be_shared_are_refused_naming_why() {
        let mut macvlan = with_range();
        macvlan["driver"] = json!("macvlan");
        assert_eq!(
            External::parse(macvlan).unwrap_err().to_string(),
            "its driver is macvlan; only bridge networks can be joined"
        );
        let mut dhcp = with_range();
        dhcp["ipam_options"]["driver"] = json!("dhcp");
        assert_eq!(
            External::parse(dhcp).unwrap_err().to_string(),
            "its IPAM driver is dhcp; only host-local addresses can be shared"
        );
        let mut v6 = with_range();
        v6["subnets"] = json!([{"subnet": "fd00::/64", "gateway": "fd00::1"}]);
        assert_eq!(External::parse(v6).unwrap_err().to_string(), "it has no IPv4 subnet of /30 or larger");
        // Positive control: the unchanged definition is accepted.
        assert!(External::parse(with_range()).is_ok());
    }
}
