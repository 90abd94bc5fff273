//! The contents of a container's `/etc/hosts` and `/etc/resolv.conf`, as Docker writes them.
//! The engine writes them to files and passes the paths in [`super::ContainerFiles`].

use std::fmt::Write;
use std::net::IpAddr;

use super::NetworkMode;
use crate::model::shapes::HostEntry;

/// Docker's fallback when the host offers no usable name server.
const DEFAULT_NAMESERVERS: [&str; 2] = ["8.8.8.8", "8.8.4.4"];

/// `/etc/hosts`: Docker's loopback and IPv6 entries, then `extraHosts` in order, then the
/// container's own addresses under its hostname. Entries missing a name or an address are
/// skipped.
pub fn hosts_file(hostname: &str, addresses: &[IpAddr], extra_hosts: &[HostEntry]) -> String {
    let mut out = String::from(
        "127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         ff00::0\tip6-mcastprefix\n\
         ff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n",
    );
    for entry in extra_hosts {
        if let (Some(name), Some(ip)) = (entry.hostname.as_deref(), entry.ip_address.as_deref())
            && !name.is_empty()
            && !ip.is_empty()
        {
            let _ = writeln!(out, "{ip}\t{name}");
        }
    }
    if !hostname.is_empty() {
        for address in addresses {
            let _ = writeln!(out, "{address}\t{hostname}");
        }
    }
    out
}

/// Whether a name server is on the host's loopback, which a container's own network
/// namespace cannot reach.
fn is_local(server: &str) -> bool {
    server.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `/etc/resolv.conf` from the host's, as Docker builds it. Host networking with neither
/// `dnsServers` nor `dnsSearchDomains` keeps the host's file as it is. Otherwise: the name
/// servers are `dnsServers`, else the host's without loopback ones (unreachable from the
/// container's namespace, except with host networking), else 8.8.8.8 and 8.8.4.4; the search
/// list is `dnsSearchDomains`, else the host's (`.` means none); the host's options are kept.
/// The result is in Docker's layout: `search`, `nameserver` lines, `options`.
pub fn resolv_conf(
    host_resolv_conf: &str,
    mode: NetworkMode,
    dns_servers: &[String],
    search_domains: &[String],
) -> String {
    let host_network = mode == NetworkMode::Host;
    if host_network && dns_servers.is_empty() && search_domains.is_empty() {
        let mut out = host_resolv_conf.to_owned();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        return out;
    }
    let Resolv { servers, mut search, options } = Resolv::parse(host_resolv_conf);
    let servers: Vec<&str> = if dns_servers.is_empty() {
        let usable: Vec<&str> = servers.into_iter().filter(|s| host_network || !is_local(s)).collect();
        if usable.is_empty() { DEFAULT_NAMESERVERS.to_vec() } else { usable }
    } else {
        dns_servers.iter().map(String::as_str).collect()
    };
    if !search_domains.is_empty() {
        search = search_domains.iter().map(String::as_str).collect();
    }

    Resolv { servers, search, options }.render()
}

/// The host's resolv.conf with a network's own DNS servers (aardvark-dns) in place of the
/// host's, and the network's search domains before the host's; the host's options stay. It
/// is the host file [`resolv_conf`] then starts from for a container on that network.
pub fn network_resolv_conf(host_resolv_conf: &str, servers: &[IpAddr], search: &[String]) -> String {
    let host = Resolv::parse(host_resolv_conf);
    let servers: Vec<String> = servers.iter().map(IpAddr::to_string).collect();
    Resolv {
        servers: servers.iter().map(String::as_str).collect(),
        search: search.iter().map(String::as_str).chain(host.search).collect(),
        options: host.options,
    }
    .render()
}

/// The parts of a resolv.conf that a container's is made of.
struct Resolv<'a> {
    servers: Vec<&'a str>,
    search: Vec<&'a str>,
    options: Vec<&'a str>,
}

impl<'a> Resolv<'a> {
    fn parse(text: &'a str) -> Resolv<'a> {
        let mut r = Resolv { servers: vec![], search: vec![], options: vec![] };
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or_default();
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => r.servers.extend(words.next()),
                // The last `search` or `domain` line wins, as in the resolver.
                Some("search" | "domain") => r.search = words.collect(),
                Some("options") => r.options.extend(words),
                _ => {}
            }
        }
        r
    }

    /// Docker's layout: `search`, `nameserver` lines, `options`.
    fn render(&self) -> String {
        let mut out = String::new();
        let search = self.search.join(" ");
        if !search.trim().is_empty() && search.trim() != "." {
            let _ = writeln!(out, "search {search}");
        }
        for server in &self.servers {
            let _ = writeln!(out, "nameserver {server}");
        }
        if !self.options.is_empty() {
            let _ = writeln!(out, "options {}", self.options.join(" "));
        }
        out
    }
}
