//! Published TCP ports when the task networks live in the uplink namespace: netavark's DNAT
//! rules are in that namespace, out of reach of the host's, so ecsd listens on the host port
//! itself (in its own namespace) and splices each connection to the task's address through a
//! socket made in the uplink namespace.
//!
//! Bounded: at most [`MAX_CONNECTIONS`] open connections per published port (more are closed
//! at once), and a connect to the task gives up after [`CONNECT_TIMEOUT`]. UDP is not
//! forwarded.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{NetworkError, netns};

pub(crate) const MAX_CONNECTIONS: usize = 256;
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One published TCP port: where it listens on the host, and the task's address behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Route {
    pub host_port: u16,
    pub target: SocketAddrV4,
}

/// The running forwarders, by sandbox key.
#[derive(Debug)]
pub(crate) struct Forwarders {
    uplink: PathBuf,
    running: Mutex<BTreeMap<String, Running>>,
}

#[derive(Debug)]
struct Running {
    stop: CancellationToken,
    accepting: Vec<JoinHandle<()>>,
}

impl Forwarders {
    pub(crate) fn new(uplink: &Path) -> Forwarders {
        Forwarders { uplink: uplink.to_owned(), running: Mutex::default() }
    }

    /// Listens on every route's host port (all or none) and forwards from there. Needs a
    /// tokio runtime. A sandbox's earlier forwarders are replaced.
    pub(crate) fn start(&self, key: &str, routes: &[Route]) -> Result<(), NetworkError> {
        let mut listeners = Vec::with_capacity(routes.len());
        for route in routes {
            let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, route.host_port));
            let listener = std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(tokio::net::TcpListener::from_std)
                .map_err(|source| NetworkError::Publish { port: route.host_port, source })?;
            listeners.push((listener, route.target));
        }
        let stop = CancellationToken::new();
        let accepting = listeners
            .into_iter()
            .map(|(listener, target)| {
                tokio::spawn(accept(listener, target, self.uplink.clone(), stop.clone()))
            })
            .collect();
        let old = self.lock().insert(key.to_owned(), Running { stop, accepting });
        if let Some(old) = old {
            old.stop.cancel();
        }
        Ok(())
    }

    /// Stops a sandbox's forwarders: when this returns, its host ports are closed.
    pub(crate) async fn stop(&self, key: &str) {
        let Some(running) = self.lock().remove(key) else { return };
        running.stop.cancel();
        for task in running.accepting {
            let _ = task.await;
        }
    }

    pub(crate) async fn stop_all(&self) {
        let keys: Vec<String> = self.lock().keys().cloned().collect();
        for key in keys {
            self.stop(&key).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn accept(
    listener: tokio::net::TcpListener,
    target: SocketAddrV4,
    uplink: PathBuf,
    stop: CancellationToken,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (client, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and the like: wait a little rather than spin.
                warn!(%target, error = %e, "cannot accept a connection to a published port");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            debug!(%target, %peer, "too many connections to a published port; closing one");
            continue;
        };
        let (uplink, stop) = (uplink.clone(), stop.clone());
        tokio::spawn(async move {
            let _permit = permit;
            tokio::select! {
                () = stop.cancelled() => {}
                () = splice(client, target, &uplink) => {}
            }
        });
    }
}

async fn splice(mut client: TcpStream, target: SocketAddrV4, uplink: &Path) {
    let socket = match netns::in_netns(uplink, tokio::net::TcpSocket::new_v4).await {
        Ok(s) => s,
        Err(e) => {
            warn!(%target, error = %crate::error_chain(&e), "cannot open a socket in the uplink namespace");
            return;
        }
    };
    let mut server = match tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(target.into())).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(%target, error = %e, "the task refused a forwarded connection");
            return;
        }
        Err(_) => {
            debug!(%target, "the task did not answer a forwarded connection in time");
            return;
        }
    };
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}
