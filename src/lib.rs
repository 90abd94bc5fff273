//! ecsd: the Amazon ECS API on a Linux host, running ECS tasks on containerd.
//!
//! `main.rs` only parses the command line and waits for a signal; [`start`] builds the
//! daemon, so integration tests run it in-process on `127.0.0.1:0`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub mod api;
pub mod aws;
pub mod cli;
pub mod config;
pub mod endpoints;
pub mod engine;
pub mod exec;
pub mod host;
pub mod model;
pub mod network;
pub mod notify;
pub mod runtime;
pub mod scheduler;
pub mod spec;
pub mod store;

use crate::api::{ApiError, Ctx, Forwarder};
use crate::config::Config;
use crate::engine::{Engine, EngineConfig, EngineError};
use crate::model::time::{Clock, SystemClock};
use crate::network::Network;
use crate::runtime::Runtime;
use crate::scheduler::{Scheduler, SchedulerError};
use crate::store::{Store, StoreError};

/// ecsd's version and the commit it was built from: `0.1.0 (1a2b3c4d)`.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("ECSD_COMMIT"), ")");

/// How long in-flight requests may take to finish after shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open ecsd's state in {path}")]
    Store { path: PathBuf, source: StoreError },
    #[error("cannot listen on {addr}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("cannot serve the introspection API on {addr} (ECSD_INTROSPECTION_LISTEN, or off)")]
    Introspection { addr: SocketAddr, source: std::io::Error },
    #[error("ECS_ENDPOINT_URL {url} cannot be used")]
    Forwarder { url: String, source: reqwest::Error },
    #[error("cannot create the default cluster")]
    DefaultCluster { source: ApiError },
    #[error("cannot create cluster {name} (ECS_CLUSTER)")]
    Cluster { name: String, source: ApiError },
    #[error("cannot start the task engine")]
    Engine { source: EngineError },
    #[error("cannot start the service scheduler")]
    Scheduler { source: SchedulerError },
    #[error("cannot find this host's container instance id")]
    Instance { source: ApiError },
    #[error("cannot set up containerd")]
    Containerd { source: runtime::embedded::EmbeddedError },
    #[error("cannot set up the containerd client")]
    Runtime { source: runtime::RuntimeError },
    #[error("cannot set up task networking")]
    Network { source: network::NetworkError },
    #[error(
        "cannot add ecs-init's firewall rules (ECS_SKIP_LOCALHOST_TRAFFIC_FILTER, ECS_ALLOW_OFFHOST_INTROSPECTION_ACCESS skip them)"
    )]
    Firewall { source: network::firewall::FirewallError },
}

/// A running daemon.
#[derive(Debug)]
pub struct Daemon {
    addr: SocketAddr,
    shutdown: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
    /// The introspection API's address and server, when it is served.
    introspection: Option<(SocketAddr, JoinHandle<std::io::Result<()>>)>,
    engine: Arc<Engine>,
    exec: Arc<exec::Exec>,
    scheduler: Arc<Scheduler>,
    store: Arc<Store>,
    /// The containerd ecsd started itself, if it did; stopped last.
    embedded: Option<runtime::EmbeddedContainerd>,
    /// The host firewall rules ecsd added (as root); removed at a clean stop.
    firewall: Option<network::firewall::HostFirewall>,
}

impl Daemon {
    /// The address the API is served on (with the real port when port 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the introspection API answers, when it is served.
    pub fn introspection_addr(&self) -> Option<SocketAddr> {
        self.introspection.as_ref().map(|(addr, _)| *addr)
    }

    /// The task engine, for in-process callers (tests, the service scheduler, ECS Exec).
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// ECS Exec's sessions, for in-process callers (tests).
    pub fn exec(&self) -> &Arc<exec::Exec> {
        &self.exec
    }

    /// The service scheduler, for in-process callers (tests).
    pub fn scheduler(&self) -> &Arc<Scheduler> {
        &self.scheduler
    }

    /// Stops accepting requests, lets in-flight ones finish (up to a grace period), lets
    /// tasks that are stopping finish their teardown (bounded), and releases the data dir
    /// before it returns, so another ecsd can open it at once.
    pub async fn shutdown(self) -> std::io::Result<()> {
        self.shutdown.cancel();
        let mut server = self.server;
        // ECS Exec sessions live on upgraded connections the server no longer tracks: their
        // processes are ended here, their clients told.
        self.exec.shutdown().await;
        let result = tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await;
        if let Some(firewall) = &self.firewall
            && let Err(e) = firewall.remove().await
        {
            warn!(error = %error_chain(&e), "cannot remove ecsd's firewall rules; the next start removes them");
        }
        if let Some((_, mut introspection)) = self.introspection {
            // Its requests are bounded by their own timeout, well inside the grace period.
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut introspection).await.is_err() {
                introspection.abort();
            }
        }
        // Services stop deciding before the engine stops supervising; the next start
        // resumes both from the store and the runtime.
        self.scheduler.shutdown().await;
        // Running tasks keep running in the runtime; the next start re-adopts them.
        self.engine.shutdown().await;
        let store = self.store;
        // Blocks until the last commits are durable: not on a runtime worker.
        let _ = tokio::task::spawn_blocking(move || store.close()).await;
        if let Some(containerd) = self.embedded {
            containerd.shutdown().await;
        }
        match result {
            Ok(joined) => joined.unwrap_or_else(|e| Err(std::io::Error::other(e))),
            Err(_) => {
                warn!(
                    grace_secs = SHUTDOWN_GRACE.as_secs(),
                    "requests still running after the grace period; closing"
                );
                server.abort();
                Ok(())
            }
        }
    }
}

/// Opens the state, connects the runtime, binds the listener and starts serving.
pub async fn start(config: &Config) -> Result<Daemon, StartError> {
    // The data dir's lock comes first: a second ecsd must not touch containerd at all.
    let store = open_store(config)?;
    // A configured address is the containerd to use, even while it is down; only the
    // default one is replaced by an embedded containerd when nothing answers there.
    let embedded = if config.containerd_address_explicit {
        None
    } else {
        runtime::embedded::ensure(&config.containerd_address, &config.data_dir, &config.namespace)
            .await
            .map_err(|source| StartError::Containerd { source })?
    };
    let address = embedded.as_ref().map_or(config.containerd_address.as_path(), |e| e.address());
    let mut options =
        runtime::ContainerdOptions::new(address, &config.namespace, &config.data_dir.join("run"))
            .map_err(|source| StartError::Runtime { source })?;
    if let Some(program) = &config.log_driver {
        options.log_driver = program.clone();
    }
    let runtime = runtime::ContainerdRuntime::new(options)
        .map_err(|source| StartError::Runtime { source })?
        .with_registry(config.images.registry.clone());
    let os = Os {
        cgroups: Some(engine::cgroups::Cgroups::new(std::path::Path::new("/sys/fs/cgroup"))),
        init: ["/usr/bin/tini-static", "/usr/bin/catatonit"].iter().map(PathBuf::from).find(|p| p.exists()),
        endpoints: true,
    };
    let network =
        network::Netavark::new(config.network.clone(), namespaces(config), &config.data_dir.join("network"))
            .map_err(|source| StartError::Network { source })?;
    let mut daemon =
        serve(config, store, Arc::new(runtime), Arc::new(network), Arc::new(SystemClock), os).await?;
    daemon.embedded = embedded;
    if let Some(firewall) = host_firewall(config, daemon.introspection_addr()) {
        if let Err(source) = firewall.apply().await {
            // What apply added before failing goes with the rest.
            daemon.firewall = Some(firewall);
            if let Err(e) = daemon.shutdown().await {
                warn!(error = %e, "shutdown after a failed start");
            }
            return Err(StartError::Firewall { source });
        }
        info!(tag = firewall.tag(), "ecs-init's firewall rules added");
        daemon.firewall = Some(firewall);
    }
    Ok(daemon)
}

/// ecs-init's rules for this ecsd, when it runs as root and they are not both skipped. The
/// off-host block guards the introspection port actually bound.
fn host_firewall(
    config: &Config,
    introspection: Option<SocketAddr>,
) -> Option<network::firewall::HostFirewall> {
    use std::os::unix::fs::MetadataExt;
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    let plan = network::firewall::FirewallPlan {
        localhost_filter: config.firewall.localhost_filter,
        introspection_port: introspection
            .filter(|_| config.firewall.block_offhost_introspection)
            .map(|a| a.port()),
    };
    if !root || (!plan.localhost_filter && plan.introspection_port.is_none()) {
        return None;
    }
    let runner = Arc::new(network::Processes::default());
    Some(network::firewall::HostFirewall::new(
        runner,
        &config.namespace,
        plan,
        std::path::Path::new("/proc/sys"),
    ))
}

/// Task namespaces are named after the containerd namespace, so ecsds with their own
/// namespaces never take each other's for leftovers.
fn namespaces(config: &Config) -> network::Namespaces {
    network::Namespaces::new(&format!("ecsd-{}-", config.namespace))
}

fn open_store(config: &Config) -> Result<Store, StartError> {
    Store::open(&config.data_dir)
        .map_err(|source| StartError::Store { path: config.data_dir.clone(), source })
}

/// [`start`] with the runtime, the network and the clock given (tests pass fakes and a
/// clock they move).
pub async fn start_with(
    config: &Config,
    runtime: Arc<dyn Runtime>,
    network: Arc<dyn Network>,
    clock: Arc<dyn Clock>,
) -> Result<Daemon, StartError> {
    serve(config, open_store(config)?, runtime, network, clock, Os::default()).await
}

/// What the engine takes from the host beyond the runtime and the network.
#[derive(Debug, Default)]
struct Os {
    cgroups: Option<engine::cgroups::Cgroups>,
    init: Option<PathBuf>,
    /// Open the tasks' metadata listeners in their namespaces (not on a fake network).
    endpoints: bool,
}

async fn serve(
    config: &Config,
    store: Store,
    runtime: Arc<dyn Runtime>,
    network: Arc<dyn Network>,
    clock: Arc<dyn Clock>,
    os: Os,
) -> Result<Daemon, StartError> {
    let store = Arc::new(store);
    let aws = aws::Aws::new(config.aws.clone());
    let forward = match &config.ecs_endpoint_url {
        Some(url) => {
            let upstream = api::Upstream {
                url: url.clone(),
                region: config.ecs_endpoint_region.clone(),
                default_region: config.identity.region.clone(),
                signature: config.forward_signature,
            };
            Some(
                Forwarder::new(upstream, aws.clone())
                    .map_err(|source| StartError::Forwarder { url: url.clone(), source })?,
            )
        }
        None => None,
    };
    let engine = Engine::new(
        EngineConfig {
            data_dir: config.data_dir.clone(),
            stop_timeout: config.stop_timeout,
            start_timeout: config.start_timeout,
            retention: config.retention,
            cgroups: os.cgroups,
            init: os.init,
            network: Arc::new(config.network.clone()),
            endpoints: endpoints::Endpoints::new(endpoints::EndpointConfig {
                listen: os.endpoints,
                identity: config.identity.clone(),
                availability_zone: format!("{}a", config.identity.region),
                network: Arc::new(config.network.clone()),
                credentials: endpoints::credentials::CredentialStore::new(
                    config.credentials.clone(),
                    aws.clone(),
                ),
                aws,
                rate: endpoints::server::RateLimit {
                    per_second: f64::from(config.metadata_rps.0),
                    burst: config.metadata_rps.1,
                },
                cgroup_root: PathBuf::from("/sys/fs/cgroup"),
                host_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 51679)),
            }),
            images: config.images.clone(),
            instance: config.instance.clone(),
        },
        Arc::clone(&store),
        runtime,
        network,
        config.identity.clone(),
        clock.clone(),
    )
    .map_err(|source| StartError::Engine { source })?;
    engine.cfg.endpoints.set_protection(Arc::new(engine::protection::ForEndpoints(Arc::downgrade(&engine))));
    let exec = exec::Exec::new(Arc::clone(&engine), clock.clone(), config.exec.clone());
    let scheduler = Scheduler::new(
        config.services.clone(),
        Arc::clone(&store),
        Arc::clone(&engine),
        config.identity.clone(),
        clock.clone(),
    );
    let metrics = Arc::new(endpoints::introspection::ApiMetrics::default());
    let ctx = Arc::new(Ctx {
        store: Arc::clone(&store),
        engine: Arc::clone(&engine),
        exec: Arc::clone(&exec),
        identity: config.identity.clone(),
        clock,
        forward,
        network: Arc::new(config.network.clone()),
        listen_addr: std::sync::OnceLock::new(),
        scheduler: Arc::clone(&scheduler),
        metrics: Arc::clone(&metrics),
    });
    // Like an ECS agent registering without ECS_CLUSTER, this host brings the default cluster.
    api::ensure_default_cluster(&ctx).map_err(|source| StartError::DefaultCluster { source })?;
    // The agent registers into ECS_CLUSTER, and ECS creates a cluster on first registration.
    api::ensure_cluster(&ctx, &config.cluster)
        .map_err(|source| StartError::Cluster { name: config.cluster.clone(), source })?;
    engine.start().await.map_err(|source| StartError::Engine { source })?;
    // After the engine has re-adopted the tasks, so services count what really runs.
    let instance = api::host_instance_id(&ctx).map_err(|source| StartError::Instance { source })?;
    scheduler.start(instance.clone()).await.map_err(|source| StartError::Scheduler { source })?;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Listen { addr: config.listen, source })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen { addr: config.listen, source })?;
    let _ = ctx.listen_addr.set(addr);
    let shutdown = CancellationToken::new();
    let introspection = match config.introspection {
        Some(want) => {
            let state = endpoints::introspection::Introspection {
                cluster: config.cluster.clone(),
                container_instance_arn: Some(
                    config.identity.container_instance_arn(&config.cluster, &instance),
                ),
                version: format!("ecsd - v{VERSION}"),
                metadata: endpoints::metadata::MetadataContext {
                    availability_zone: format!("{}a", config.identity.region),
                    availability_zone_id: None,
                    vpc_id: None,
                    network: Arc::new(config.network.clone()),
                },
                source: Arc::new(AgentView { engine: Arc::clone(&engine), exec: Arc::clone(&exec) }),
                api: metrics,
            };
            let listener = tokio::net::TcpListener::bind(want)
                .await
                .map_err(|source| StartError::Introspection { addr: want, source })?;
            let bound =
                listener.local_addr().map_err(|source| StartError::Introspection { addr: want, source })?;
            let router = endpoints::introspection::router(Arc::new(state));
            let token = shutdown.clone();
            let server = tokio::spawn(async move {
                axum::serve(listener, router).with_graceful_shutdown(token.cancelled_owned()).await
            });
            info!(addr = %bound, "introspection API listening");
            Some((bound, server))
        }
        None => None,
    };
    let router = api::router(Arc::clone(&ctx));
    let token = shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, router).with_graceful_shutdown(token.cancelled_owned()).await
    });
    info!(%addr, data_dir = %config.data_dir.display(), region = %config.identity.region,
          account = %config.identity.account, forward = ?config.ecs_endpoint_url, "ecsd started");
    Ok(Daemon {
        addr,
        shutdown,
        server,
        introspection,
        engine,
        exec,
        scheduler,
        store,
        embedded: None,
        firewall: None,
    })
}

/// What the introspection API reads: the engine's view of the tasks, ECS Exec's sessions.
struct AgentView {
    engine: Arc<Engine>,
    exec: Arc<exec::Exec>,
}

impl endpoints::introspection::AgentSource for AgentView {
    fn tasks(&self) -> Vec<Arc<model::task::TaskRecord>> {
        self.engine.all_tasks()
    }

    fn exec_sessions(&self) -> usize {
        self.exec.session_count()
    }
}

/// An error with its sources, for one log line or one message: `a: b: c`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    s
}
