//! A network for engine and API tests without root; compiled only for tests (`cfg(test)` or
//! the `test-support` feature), never shipped.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use async_trait::async_trait;

use super::{Interface, Network, NetworkError, Sandbox, SandboxSpec, Settings, key_of, private_dns_name};

/// A network that makes nothing on the host but answers like one: sandboxes get made-up
/// namespace paths and addresses from the configured subnets. For engine and API tests
/// without root.
#[derive(Debug, Default)]
pub struct FakeNetwork {
    settings: Settings,
    state: std::sync::Mutex<std::collections::BTreeMap<String, Vec<Ipv4Addr>>>,
}

impl FakeNetwork {
    pub fn new(settings: Settings) -> FakeNetwork {
        FakeNetwork { settings, state: Default::default() }
    }
}

#[async_trait]
impl Network for FakeNetwork {
    async fn create(&self, task_id: &str, sandboxes: &[SandboxSpec]) -> Result<Vec<Sandbox>, NetworkError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let taken: std::collections::BTreeSet<Ipv4Addr> = state.values().flatten().copied().collect();
        let mut out = vec![];
        let mut mine = vec![];
        for spec in sandboxes {
            let iface = match &spec.attach {
                None => None,
                Some(a) => {
                    let net = self
                        .settings
                        .network(&a.network)
                        .ok_or_else(|| NetworkError::UnknownNetwork(a.network.clone()))?;
                    let address = net
                        .assignable()
                        .map(Ipv4Addr::from)
                        .find(|ip| !taken.contains(ip) && !mine.contains(ip))
                        .ok_or_else(|| NetworkError::Exhausted {
                            network: net.name.clone(),
                            subnet: net.cidr(),
                        })?;
                    mine.push(address);
                    Some(Interface {
                        network: net.name.clone(),
                        address,
                        mac: format!(
                            "0a:00:{:02x}:{:02x}:{:02x}:{:02x}",
                            address.octets()[0],
                            address.octets()[1],
                            address.octets()[2],
                            address.octets()[3]
                        ),
                        private_dns_name: private_dns_name(address, &a.dns_domain),
                    })
                }
            };
            out.push(Sandbox {
                container: spec.container,
                netns: PathBuf::from("/run/netns/fake").join(key_of(task_id, spec.container)),
                iface,
            });
        }
        state.insert(task_id.to_owned(), mine);
        Ok(out)
    }

    async fn remove(&self, task_id: &str) -> Result<(), NetworkError> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).remove(task_id);
        Ok(())
    }

    async fn list(&self) -> Result<Vec<String>, NetworkError> {
        Ok(self.state.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect())
    }
}
