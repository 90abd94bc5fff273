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
pub mod rootless;
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
    #[error("cannot start the Podman service")]
    Podman { source: runtime::podman::ServiceError },
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
    /// The Podman service ecsd started itself, if it did; stopped last.
    podman: Option<runtime::PodmanService>,
    /// The host firewall rules ecsd added (as root); removed at a clean stop.
    firewall: Option<network::firewall::HostFirewall>,
    /// Told when the engine has stopped (closes forwarded ports, removes an unused uplink).
    network: Arc<dyn Network>,
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
        self.network.shutdown().await;
        let store = self.store;
        // Blocks until the last commits are durable: not on a runtime worker.
        let _ = tokio::task::spawn_blocking(move || store.close()).await;
        if let Some(containerd) = self.embedded {
            containerd.shutdown().await;
        }
        if let Some(podman) = self.podman {
            podman.shutdown().await;
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

/// The runtime `ecsd serve` runs tasks on, once `auto` is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChosenRuntime {
    Containerd,
    Podman,
}

/// Decides `--runtime` from the host's facts: `auto` takes containerd when one answers or is
/// installed, else Podman when it is installed or answers, else containerd (which then reports
/// itself unavailable). Returns the choice and why, for the log.
pub fn choose_runtime(
    choice: config::RuntimeChoice,
    facts: &host::HostFacts,
) -> (ChosenRuntime, &'static str) {
    use config::RuntimeChoice;
    match choice {
        RuntimeChoice::Containerd => (ChosenRuntime::Containerd, "--runtime containerd"),
        RuntimeChoice::Podman => (ChosenRuntime::Podman, "--runtime podman"),
        RuntimeChoice::Auto if facts.containerd.answers => {
            (ChosenRuntime::Containerd, "a containerd answers")
        }
        RuntimeChoice::Auto if facts.containerd.binary.is_some() => {
            (ChosenRuntime::Containerd, "containerd is installed")
        }
        // Rootless: a service of ecsd's own in its user namespace, never one that answers outside.
        RuntimeChoice::Auto if facts.rootless && facts.podman.binary.is_some() => (
            ChosenRuntime::Podman,
            "rootless, no containerd is installed, and Podman is: ecsd runs its own Podman service in its user namespace",
        ),
        RuntimeChoice::Auto if facts.rootless => {
            (ChosenRuntime::Containerd, "rootless, and Podman is not installed")
        }
        RuntimeChoice::Auto if facts.podman.binary.is_some() || facts.podman.answers => {
            (ChosenRuntime::Podman, "no containerd is installed or answers, and Podman is installed")
        }
        RuntimeChoice::Auto => (ChosenRuntime::Containerd, "neither containerd nor Podman is installed"),
    }
}

/// What the host offers, for whoever reads the log (`ecsd doctor` explains it), and what a
/// rootless ecsd cannot do here.
fn log_host(config: &Config, facts: &host::HostFacts) {
    info!(
        rootless = facts.rootless,
        cgroup = ?facts.cgroup,
        containerd_answers = facts.containerd.answers,
        podman = facts.podman.binary.is_some(),
        oci_runtimes = ?facts.oci_runtimes,
        tun = facts.tun_usable,
        "host"
    );
    for f in facts.findings().iter().filter(|f| f.level == host::Level::Blocker) {
        warn!("{}", f.text);
    }
    if config.rootless {
        let parent_uid = rootless::parent_ids(&|k| std::env::var(k).ok())
            .map_or("?".to_owned(), |(uid, _)| uid.to_string());
        info!(
            data_dir = %config.data_dir.display(),
            run_dir = %config.run_dir.as_deref().unwrap_or(std::path::Path::new("")).display(),
            parent_uid = %parent_uid,
            "rootless: ecsd, its container runtime and the tasks run in one rootlesskit user namespace"
        );
        let outside = match (facts.tun_usable, &facts.slirp4netns) {
            (true, Some(_)) => "through slirp4netns on ecsd's uplink namespace",
            (false, _) => {
                "through slirp4netns on ecsd's uplink namespace once /dev/net/tun is usable by this user \
                 (it is not now: the first task network says how to fix it)"
            }
            (true, None) => {
                "through slirp4netns on ecsd's uplink namespace once it is installed (it is not now: the \
                 first task network says so)"
            }
        };
        warn!(
            "rootless: task cpu and memory limits are not applied ({}); host ports below {} are refused \
             (net.ipv4.ip_unprivileged_port_start); bridge and awsvpc tasks reach each other, ecsd and \
             the outside {outside}, and only their TCP ports are published on the host",
            facts.why_no_limits(),
            facts.unprivileged_port_start.unwrap_or(1024)
        );
    }
}

/// Opens the state, connects the runtime, binds the listener and starts serving.
pub async fn start(config: &Config) -> Result<Daemon, StartError> {
    // The data dir's lock comes first: a second ecsd must not touch containerd at all.
    let store = open_store(config)?;
    // What this host offers, once: logged, then read by every choice below.
    let facts =
        host::HostFacts::probe(&host::RealHost, &config.containerd_address, &config.network.slirp4netns);
    log_host(config, &facts);
    let (chosen, why) = choose_runtime(config.runtime, &facts);
    info!(runtime = ?chosen, reason = why, "container runtime chosen");
    if chosen == ChosenRuntime::Podman {
        return start_on_podman(config, store, &facts).await;
    }
    // A configured address is the containerd to use, even while it is down; only the
    // default one is replaced by an embedded containerd when nothing answers there.
    let embedded = if config.containerd_address_explicit {
        None
    } else {
        runtime::embedded::ensure_in(&config.containerd_address, embedded_layout(config), &config.namespace)
            .await
            .map_err(|source| StartError::Containerd { source })?
    };
    let address = embedded.as_ref().map_or(config.containerd_address.as_path(), |e| e.address());
    // The containers' FIFOs: in the runtime dir when rootless, else in the data dir.
    let fifos = config.run_dir.as_ref().unwrap_or(&config.data_dir).join("run");
    let mut options = runtime::ContainerdOptions::new(address, &config.namespace, &fifos)
        .map_err(|source| StartError::Runtime { source })?;
    if let Some(program) = &config.log_driver {
        options.log_driver = program.clone();
    }
    let runtime = runtime::ContainerdRuntime::new(options)
        .map_err(|source| StartError::Runtime { source })?
        .with_registry(config.images.registry.clone());
    let mut daemon = serve_on_host(config, store, Arc::new(runtime), &facts).await?;
    daemon.embedded = embedded;
    add_host_firewall(config, daemon).await
}

/// Where the embedded containerd of `config` lives (a rootless ecsd keeps its state in the
/// runtime dir).
pub fn embedded_layout(config: &Config) -> runtime::embedded::Layout {
    match &config.run_dir {
        Some(run) => runtime::embedded::Layout::with_state(&config.data_dir, &run.join("containerd")),
        None => runtime::embedded::Layout::new(&config.data_dir),
    }
}

/// The socket of the Podman service `config`'s ecsd uses: `--podman-socket`, else the one of
/// the service ecsd starts.
pub fn podman_socket(config: &Config) -> PathBuf {
    match &config.podman_socket {
        Some(socket) => socket.clone(),
        None => {
            let run = config.run_dir.as_deref().unwrap_or(&config.data_dir);
            runtime::podman::service::Layout::with_run(&config.data_dir, run).socket
        }
    }
}

/// Serves with `runtime` on this host's cgroups, init binary, netavark networks and endpoints:
/// what [`start`] shares between containerd and Podman.
async fn serve_on_host(
    config: &Config,
    store: Store,
    runtime: Arc<dyn Runtime>,
    facts: &host::HostFacts,
) -> Result<Daemon, StartError> {
    let init = ["/usr/bin/tini-static", "/usr/bin/catatonit"].iter().map(PathBuf::from).find(|p| p.exists());
    let os = match config.rootless {
        false => Os {
            cgroups: Some(engine::cgroups::Cgroups::new(std::path::Path::new("/sys/fs/cgroup"))),
            init,
            endpoints: true,
            ..Os::default()
        },
        true => Os {
            cgroups: None,
            init,
            endpoints: true,
            limits_unavailable: Some(facts.why_no_limits().to_owned()),
            // Unknown: the kernel's default.
            unprivileged_port_start: Some(facts.unprivileged_port_start.unwrap_or(1024)),
            user_namespace: true,
        },
    };
    let network =
        network::Netavark::new(config.network.clone(), namespaces(config), &config.data_dir.join("network"))
            .map_err(|source| StartError::Network { source })?;
    serve(config, store, runtime, Arc::new(network), Arc::new(SystemClock), os).await
}

/// [`start`] on Podman: ecsd's own Podman service, or the one at `--podman-socket`.
async fn start_on_podman(
    config: &Config,
    store: Store,
    facts: &host::HostFacts,
) -> Result<Daemon, StartError> {
    let (service, socket) = match &config.podman_socket {
        Some(socket) => {
            info!(socket = %socket.display(), "using the Podman service at --podman-socket");
            (None, socket.clone())
        }
        None => {
            use runtime::podman::service::{Layout, RootlessUser, ServiceError};
            let layout = match (&config.run_dir, config.rootless) {
                (Some(run), true) => {
                    let (uid, gid) = rootless::parent_ids(&|k| std::env::var(k).ok())
                        .ok_or(StartError::Podman { source: ServiceError::NotUnderRootlesskit })?;
                    Layout::rootless(&config.data_dir, run, RootlessUser { uid, gid })
                }
                _ => Layout::new(&config.data_dir),
            };
            let service = runtime::podman::service::start_in(layout)
                .await
                .map_err(|source| StartError::Podman { source })?;
            let socket = service.socket().to_owned();
            (Some(service), socket)
        }
    };
    let mut options = runtime::PodmanOptions::new(&socket);
    options.registry = config.images.registry.clone();
    if config.podman_socket.is_some() {
        // A service ecsd did not configure has Podman's stock default capabilities.
        options.default_capabilities = PODMAN_STOCK_CAPABILITIES.iter().map(|c| (*c).to_owned()).collect();
    }
    let runtime = runtime::PodmanRuntime::new(options);
    let mut daemon = serve_on_host(config, store, Arc::new(runtime), facts).await?;
    daemon.podman = service;
    add_host_firewall(config, daemon).await
}

/// Podman 4's default capabilities (containers.conf `default_capabilities`).
const PODMAN_STOCK_CAPABILITIES: [&str; 11] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_NET_BIND_SERVICE",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
];

/// Adds ecs-init's host firewall rules to a started daemon (shutting it down if that fails).
async fn add_host_firewall(config: &Config, mut daemon: Daemon) -> Result<Daemon, StartError> {
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
    // A rootless ecsd is uid 0 only in its own user namespace: the host's firewall is not its.
    if !root || config.rootless || (!plan.localhost_filter && plan.introspection_port.is_none()) {
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
    /// See [`EngineConfig::limits_unavailable`].
    limits_unavailable: Option<String>,
    /// See [`EngineConfig::unprivileged_port_start`].
    unprivileged_port_start: Option<u16>,
    /// See [`EngineConfig::user_namespace`].
    user_namespace: bool,
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
            limits_unavailable: os.limits_unavailable,
            user_namespace: os.user_namespace,
            unprivileged_port_start: os.unprivileged_port_start,
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
        network.clone(),
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
        podman: None,
        firewall: None,
        network,
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

#[cfg(test)]
mod runtime_choice_tests {
    use std::path::PathBuf;

    use super::{ChosenRuntime, choose_runtime};
    use crate::config::RuntimeChoice;
    use crate::host::{CgroupVersion, HostFacts, RuntimeFact};

    fn facts(containerd: (bool, bool), podman: (bool, bool)) -> HostFacts {
        let fact = |(installed, answers): (bool, bool), name: &str| RuntimeFact {
            binary: installed.then(|| PathBuf::from(format!("/usr/bin/{name}"))),
            socket: PathBuf::from(format!("/run/{name}/{name}.sock")),
            answers,
        };
        HostFacts {
            euid: 0,
            rootless: false,
            containerd: fact(containerd, "containerd"),
            podman: fact(podman, "podman"),
            cgroup: CgroupVersion::V1,
            cgroup_delegated: false,
            oci_runtimes: vec![PathBuf::from("/usr/sbin/runc")],
            netavark: None,
            slirp4netns: None,
            tun_usable: false,
            unprivileged_port_start: None,
            rootlesskit: None,
            uidmap: false,
        }
    }

    #[test]
    fn auto_prefers_containerd_and_falls_back_to_podman() {
        let auto = RuntimeChoice::Auto;
        assert_eq!(choose_runtime(auto, &facts((false, true), (true, true))).0, ChosenRuntime::Containerd);
        assert_eq!(choose_runtime(auto, &facts((true, false), (true, false))).0, ChosenRuntime::Containerd);
        let (chosen, why) = choose_runtime(auto, &facts((false, false), (true, false)));
        assert_eq!(
            (chosen, why),
            (ChosenRuntime::Podman, "no containerd is installed or answers, and Podman is installed")
        );
        // Rootless: containerd when installed, else its own Podman service, never one that
        // only answers (it would be outside ecsd's user namespace).
        let rootless = |c, p| HostFacts { rootless: true, ..facts(c, p) };
        assert_eq!(choose_runtime(auto, &rootless((true, false), (true, true))).0, ChosenRuntime::Containerd);
        assert_eq!(choose_runtime(auto, &rootless((false, false), (true, false))).0, ChosenRuntime::Podman);
        assert_eq!(
            choose_runtime(auto, &rootless((false, false), (false, true))).0,
            ChosenRuntime::Containerd
        );
        // Nothing at all: containerd, which then says it is unavailable.
        assert_eq!(choose_runtime(auto, &facts((false, false), (false, false))).0, ChosenRuntime::Containerd);
    }

    #[test]
    fn an_explicit_choice_wins_over_the_host() {
        let host = facts((true, true), (false, false));
        assert_eq!(choose_runtime(RuntimeChoice::Podman, &host).0, ChosenRuntime::Podman);
        let host = facts((false, false), (true, true));
        assert_eq!(choose_runtime(RuntimeChoice::Containerd, &host).0, ChosenRuntime::Containerd);
    }
}
