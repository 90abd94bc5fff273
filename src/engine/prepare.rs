//! What a task's containers need before they are created: the namespaces to ask the network
//! for, what the network made recorded on the task, each container's /etc/hosts,
//! /etc/resolv.conf and /etc/hostname, and the host directories of the task's volumes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::failure::CreateFailure;
use crate::model::network::NetworkMode;
use crate::model::network::PortRange;
use crate::model::shapes::{ContainerDefinition, HostEntry, NetworkBinding};
use crate::model::task::{AttachmentStatus, ContainerRecord, EniAttachment, TaskRecord};
use crate::network::{Attach, PortMap, Protocol, Sandbox, SandboxSpec, Settings};
use crate::spec;

/// The namespaces the task needs: none in host mode, the task's own (awsvpc, none), or one
/// per container (bridge), with interfaces and published ports.
pub(crate) fn sandbox_specs(rec: &TaskRecord, settings: &Settings, region: &str) -> Vec<SandboxSpec> {
    let dns_domain = crate::network::dns_domain(region);
    let published =
        |c: &ContainerRecord| -> Vec<PortMap> { c.network_bindings.iter().filter_map(port_map).collect() };
    match rec.network_mode() {
        NetworkMode::Host => vec![],
        NetworkMode::None => vec![SandboxSpec { container: None, attach: None }],
        NetworkMode::Awsvpc => {
            let network = rec
                .attachment
                .as_ref()
                .map_or_else(|| settings.default_network().name.clone(), |a| a.network.clone());
            vec![SandboxSpec {
                container: None,
                attach: Some(Attach {
                    network,
                    aliases: vec![],
                    dns_domain,
                    ports: rec.containers.iter().flat_map(published).collect(),
                }),
            }]
        }
        NetworkMode::Bridge => rec
            .containers
            .iter()
            .enumerate()
            .map(|(i, c)| SandboxSpec {
                container: Some(i),
                attach: Some(Attach {
                    network: settings.default_network().name.clone(),
                    // Other tasks on the network resolve the container by its hostname.
                    aliases: rec
                        .effective(&c.name)
                        .and_then(|d| d.hostname.clone())
                        .into_iter()
                        .chain(std::iter::once(c.runtime_id.chars().take(12).collect()))
                        .collect(),
                    dns_domain: dns_domain.clone(),
                    ports: published(c),
                }),
            })
            .collect(),
    }
}

/// Records what the network made: namespaces, addresses, the awsvpc attachment.
pub(crate) fn apply_sandboxes(rec: &mut TaskRecord, sandboxes: Vec<Sandbox>, settings: &Settings) {
    for sb in sandboxes {
        let netns = Some(sb.netns.display().to_string());
        match sb.container {
            None => {
                rec.netns = netns;
                if let Some(iface) = &sb.iface
                    && rec.attachment.is_none()
                {
                    // An awsvpc task recorded without one (an older ecsd): as on its network.
                    let subnet_id =
                        settings.network(&iface.network).map(|n| n.subnet_id()).unwrap_or_default();
                    rec.attachment = Some(EniAttachment::precreated(&iface.network, subnet_id));
                }
                if let (Some(iface), Some(a)) = (&sb.iface, rec.attachment.as_mut()) {
                    a.status = AttachmentStatus::Attached;
                    a.mac_address = Some(iface.mac.clone());
                    a.private_ipv4_address = Some(iface.address.to_string());
                    a.private_dns_name = Some(iface.private_dns_name.clone());
                }
            }
            Some(i) => {
                if let Some(c) = rec.containers.get_mut(i) {
                    c.netns = netns;
                    c.ipv4 = sb.iface.as_ref().map(|f| f.address.to_string());
                }
            }
        }
    }
}

/// The host ports a binding publishes.
fn port_map(b: &NetworkBinding) -> Option<PortMap> {
    let protocol = match b.protocol.as_deref() {
        Some("udp") => Protocol::Udp,
        _ => Protocol::Tcp,
    };
    let range = |r: &Option<String>| r.as_deref().and_then(|r| PortRange::parse(r).ok());
    match (range(&b.container_port_range), range(&b.host_port_range)) {
        (Some(c), Some(h)) => Some(PortMap {
            host_port: h.start,
            container_port: c.start,
            range: u16::try_from(c.len()).ok()?,
            protocol,
        }),
        _ => Some(PortMap {
            host_port: u16::try_from(b.host_port?).ok()?,
            container_port: u16::try_from(b.container_port?).ok()?,
            range: 1,
            protocol,
        }),
    }
}

/// The DNS server (aardvark-dns on the gateway) and search domain of the network a
/// container is on, when that network resolves names.
fn network_dns(
    rec: &TaskRecord,
    container: &str,
    settings: &Settings,
) -> Option<(Vec<std::net::IpAddr>, Vec<String>)> {
    let network = match rec.network_mode() {
        NetworkMode::Awsvpc => rec.attachment.as_ref().and_then(|a| settings.network(&a.network)),
        NetworkMode::Bridge => rec
            .containers
            .iter()
            .find(|c| c.name == container && c.ipv4.is_some())
            .map(|_| settings.default_network()),
        NetworkMode::Host | NetworkMode::None => None,
    }?;
    network
        .dns
        .then(|| (vec![std::net::IpAddr::V4(network.gateway())], vec![crate::network::DNS_DOMAIN.to_owned()]))
}

/// The container's hostname: the awsvpc interface's private DNS name (as the agent gives the
/// pause container), else its own `hostname`, else the first 12 characters of its runtime id
/// (bridge) or of the task id, as a container id would give it.
pub(crate) fn hostname_for(def: &ContainerDefinition, rec: &TaskRecord) -> String {
    if let Some(name) = rec.attachment.as_ref().and_then(|a| a.private_dns_name.clone()) {
        return name;
    }
    if let Some(h) = &def.hostname {
        return h.clone();
    }
    match rec.containers.iter().find(|c| Some(c.name.as_str()) == def.name.as_deref()) {
        Some(c) if c.netns.is_some() => c.runtime_id.chars().take(12).collect(),
        _ => rec.id.chars().take(12).collect(),
    }
}

/// Writes the container's /etc/hosts, /etc/resolv.conf and /etc/hostname under `dir`.
pub(crate) fn write_files(
    rec: &TaskRecord,
    def: &ContainerDefinition,
    dir: &Path,
    settings: &Settings,
) -> Result<spec::ContainerFiles, CreateFailure> {
    let failed = |what| move |source| CreateFailure::Files { what, dir: dir.display().to_string(), source };
    std::fs::create_dir_all(dir).map_err(failed("the container's directory"))?;
    let mode = rec.network_mode();
    let extra: &[HostEntry] = def.extra_hosts.as_deref().unwrap_or_default();
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let servers = def.dns_servers.as_deref().unwrap_or_default();
    let search = def.dns_search_domains.as_deref().unwrap_or_default();
    if mode == NetworkMode::Host {
        // The host's own files, as Docker gives host-networked containers, plus extraHosts.
        let mut hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        if !hosts.is_empty() && !hosts.ends_with('\n') {
            hosts.push('\n');
        }
        for e in extra {
            if let (Some(name), Some(ip)) = (e.hostname.as_deref(), e.ip_address.as_deref()) {
                hosts.push_str(&format!("{ip}\t{name}\n"));
            }
        }
        let resolv = spec::resolv_conf(&host_resolv, mode, servers, search);
        std::fs::write(dir.join("hosts"), hosts).map_err(failed("/etc/hosts"))?;
        std::fs::write(dir.join("resolv.conf"), resolv).map_err(failed("/etc/resolv.conf"))?;
        return Ok(spec::ContainerFiles {
            hosts: Some(dir.join("hosts")),
            resolv_conf: Some(dir.join("resolv.conf")),
            hostname: None,
        });
    }
    let hostname = hostname_for(def, rec);
    let name = def.name.as_deref().unwrap_or_default();
    let me = rec.containers.iter().find(|c| c.name == name);
    // The address the container's hostname names: its own (bridge), the task's (awsvpc),
    // else loopback (none).
    let own = me
        .and_then(|c| c.ipv4.clone())
        .or_else(|| rec.attachment.as_ref().and_then(|a| a.private_ipv4_address.clone()));
    let addresses: Vec<std::net::IpAddr> = match own.as_deref().and_then(|a| a.parse().ok()) {
        Some(ip) => vec![ip],
        None => vec![std::net::IpAddr::from([127, 0, 0, 1])],
    };
    let mut extra: Vec<HostEntry> = extra.to_vec();
    // Bridge-mode links, as Docker's legacy links write them: `<ip> <alias> <name>`.
    for link in def.links.as_deref().unwrap_or_default() {
        let (target, alias) = link.split_once(':').unwrap_or((link.as_str(), link.as_str()));
        if let Some(ip) = rec.containers.iter().find(|c| c.name == target).and_then(|c| c.ipv4.clone()) {
            let names = if alias == target { target.to_owned() } else { format!("{alias} {target}") };
            extra.push(HostEntry { hostname: Some(names), ip_address: Some(ip) });
        }
    }
    let hosts = spec::hosts_file(&hostname, &addresses, &extra);
    // On a network with its own DNS server (aardvark-dns on the gateway), that server
    // answers for the other tasks and forwards the rest to the host's resolvers.
    let base = match network_dns(rec, name, settings) {
        Some((servers, search)) => spec::network_resolv_conf(&host_resolv, &servers, &search),
        None => host_resolv.clone(),
    };
    let resolv = spec::resolv_conf(&base, mode, servers, search);
    std::fs::write(dir.join("hosts"), hosts).map_err(failed("/etc/hosts"))?;
    std::fs::write(dir.join("resolv.conf"), resolv).map_err(failed("/etc/resolv.conf"))?;
    std::fs::write(dir.join("hostname"), format!("{hostname}\n")).map_err(failed("/etc/hostname"))?;
    Ok(spec::ContainerFiles {
        hosts: Some(dir.join("hosts")),
        resolv_conf: Some(dir.join("resolv.conf")),
        hostname: Some(dir.join("hostname")),
    })
}

/// Host directories of the task's volumes: `host.sourcePath`, or a task-scoped directory
/// under `task_dir` (removed with the task), or a shared named directory under `data_dir` for
/// shared Docker volumes.
pub(crate) fn volumes(
    rec: &TaskRecord,
    task_dir: &Path,
    data_dir: &Path,
) -> Result<BTreeMap<String, PathBuf>, CreateFailure> {
    let mut out = BTreeMap::new();
    for v in rec.definition.volumes.as_deref().unwrap_or_default() {
        let name = v.name.clone().unwrap_or_default();
        let path = if let Some(src) = v.host.as_ref().and_then(|h| h.source_path.clone()) {
            PathBuf::from(src)
        } else if v.efs_volume_configuration.is_some()
            || v.fsx_windows_file_server_volume_configuration.is_some()
        {
            return Err(CreateFailure::UnsupportedVolume(name));
        } else if v.docker_volume_configuration.as_ref().is_some_and(|d| d.scope.as_deref() == Some("shared"))
        {
            data_dir.join("volumes").join(&name)
        } else {
            task_dir.join("volumes").join(&name)
        };
        std::fs::create_dir_all(&path).map_err(|source| CreateFailure::Volume {
            name: name.clone(),
            path: path.display().to_string(),
            source,
        })?;
        out.insert(name, path);
    }
    Ok(out)
}

/// Reads a file of the image from its layers, topmost first, honouring overlay whiteouts.
pub(crate) fn read_image_file(layers: &[PathBuf], rel: &str) -> Option<String> {
    for layer in layers {
        let path = layer.join(rel);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => return std::fs::read_to_string(&path).ok(),
            // A character device (0/0) here is an overlay whiteout: the file was deleted.
            Ok(_) => return None,
            Err(_) => continue,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_become_port_maps() {
        let single = NetworkBinding {
            host_port: Some(49153),
            container_port: Some(80),
            protocol: Some("tcp".into()),
            ..Default::default()
        };
        let pm = port_map(&single).unwrap();
        assert_eq!((pm.host_port, pm.container_port, pm.range, pm.protocol), (49153, 80, 1, Protocol::Tcp));
        let ranged = NetworkBinding {
            container_port_range: Some("8000-8009".into()),
            host_port_range: Some("50000-50009".into()),
            protocol: Some("udp".into()),
            ..Default::default()
        };
        let pm = port_map(&ranged).unwrap();
        assert_eq!(
            (pm.host_port, pm.container_port, pm.range, pm.protocol),
            (50000, 8000, 10, Protocol::Udp)
        );
    }
}
