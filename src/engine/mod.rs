//! The task engine: the only way to launch, stop, watch or exec into a task.
//!
//! One supervisor per ECS task walks it through the lifecycle (PROVISIONING → PENDING →
//! RUNNING → DEACTIVATING → STOPPING → DEPROVISIONING → STOPPED), honouring `essential`,
//! `dependsOn`, health checks and stop timeouts, and reconciles the store with the runtime
//! after any restart. Callers (the API, the service scheduler) use [`Engine::launch`] (placement
//! included), [`Engine::stop`], [`Engine::subscribe`] and the task lookups.
//!
//! The store is the truth for what the API shows; the runtime is the truth for what runs. A
//! change is written durably before it enters the in-memory view and reaches subscribers. No
//! lock is held across a runtime, network or store call.

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::model::arn::Identity;
use crate::model::shapes::TaskDefinition;
use crate::model::task::{StopReason, TaskRecord, TaskStatus};
use crate::model::time::Clock;
use crate::network::Network;
use crate::runtime::{Event, ProcessStatus, Runtime, RuntimeError};
use crate::store::records::{TAGS, TASK_DEFINITIONS, TASK_PROTECTION, TASKS, task_key};
use crate::store::{Scan, Store, StoreError};

mod awslogs;
pub mod cgroups;
mod decide;
mod exec;
pub mod failure;
pub mod images;
mod launch;
mod pinning;
pub mod placement;
mod prepare;
pub mod protection;
pub mod registry_auth;
mod supervisor;
mod view;

pub use exec::{ExecError, ExecRequest};
pub use launch::{LaunchError, LaunchErrorKind, LaunchSpec, Placed, check_launch_type};
pub use view::TaskEvent;

use decide::{CheckResult, Timeouts};
use placement::{Placer, Usage};
use view::TaskView;

/// How long a shutdown waits for tasks that are stopping to finish their teardown.
const TEARDOWN_GRACE: Duration = Duration::from_secs(20);
/// How long [`Engine::stop`] waits for a busy supervisor to record a stop.
const STOP_ANSWER: Duration = Duration::from_secs(5);

/// What a rootless ecsd (unprivileged ports from `start`) refuses of a task's published
/// ports: a fixed host port below `start` (named with the sysctl), and a UDP port published
/// from a task network (bridge, or awsvpc with published ports), which only TCP forwarding
/// reaches. Host-mode tasks bind the host's ports themselves, so their UDP ports work.
fn rootless_port_problem(
    settings: &crate::network::Settings,
    td: &TaskDefinition,
    effective: &[crate::model::shapes::ContainerDefinition],
    start: u16,
) -> Result<(), LaunchError> {
    use crate::model::network::NetworkMode;
    let wanted = placement::wanted_ports(settings, td, effective);
    if let Some(port) = placement::first_fixed_below(&wanted, start) {
        return Err(LaunchError::PrivilegedHostPort { port, start });
    }
    if matches!(NetworkMode::of(td), NetworkMode::Bridge | NetworkMode::Awsvpc)
        && let Some(port) = placement::first_udp(&wanted)
    {
        return Err(LaunchError::RootlessUdpHostPort { port });
    }
    Ok(())
}

/// Settings of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Per-task files (logs, hosts files, task-scoped volumes) live under `<data_dir>/tasks`.
    pub data_dir: PathBuf,
    /// `ECS_CONTAINER_STOP_TIMEOUT`: SIGKILL follows the stop signal after this long.
    pub stop_timeout: Duration,
    /// `ECS_CONTAINER_START_TIMEOUT`: how long a container waits for its dependencies.
    pub start_timeout: Duration,
    /// STOPPED tasks stay visible this long, then they and their files are removed.
    pub retention: Duration,
    /// Task cgroups with the task's cpu and memory limits; `None` leaves them out (tests).
    pub cgroups: Option<cgroups::Cgroups>,
    /// Why cpu and memory limits cannot be applied on this host (a rootless ecsd without
    /// cgroups of its own): containers then get no `cgroupsPath` and no `linux.resources`,
    /// and each task that asks for limits logs this once. `None`: limits apply.
    pub limits_unavailable: Option<String>,
    /// ecsd runs in a user namespace that does not own the host's network namespace (rootless):
    /// host-network containers bind `/sys` instead of mounting sysfs.
    pub user_namespace: bool,
    /// A rootless ecsd's `net.ipv4.ip_unprivileged_port_start`: fixed host ports below it are
    /// refused at launch. `None` (root): every port is allowed.
    pub unprivileged_port_start: Option<u16>,
    /// A static init (tini) to run as PID 1 of containers with `initProcessEnabled`.
    pub init: Option<PathBuf>,
    /// Task networks and port settings.
    pub network: Arc<crate::network::Settings>,
    /// The tasks' metadata and credentials endpoints and their secrets.
    pub endpoints: Arc<crate::endpoints::Endpoints>,
    /// Pull behaviour, registry credentials, image cleanup.
    pub images: images::ImageSettings,
    /// Reserved memory and custom attributes of this host as a container instance.
    pub instance: placement::InstanceSettings,
}

impl EngineConfig {
    fn timeouts(&self) -> Timeouts {
        Timeouts { stop: self.stop_timeout, start: self.start_timeout }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Launch(#[from] LaunchError),
}

/// What a supervisor is told.
#[derive(Debug)]
pub(crate) enum Msg {
    Exit {
        runtime_id: String,
        /// The process that exited, when the runtime said (a listing does not).
        pid: Option<u32>,
        code: i32,
        at: f64,
    },
    Stop {
        reason: StopReason,
        /// Answered with the task as recorded once the stop is durable.
        recorded: Option<oneshot::Sender<Arc<TaskRecord>>>,
    },
    Health {
        runtime_id: String,
        result: CheckResult,
        at: f64,
    },
    /// The runtime did not know the container when it was listed at `listed_at` (it vanished
    /// while the connection was down, or it was created after the listing).
    Lost {
        runtime_id: String,
        listed_at: f64,
    },
}

/// A running supervisor, as the engine reaches it.
#[derive(Debug)]
struct Supervised {
    inbox: mpsc::UnboundedSender<Msg>,
    /// Set once the task is on its way to STOPPED: a shutdown lets it finish.
    stopping: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

/// Runs and tracks the tasks of this host.
#[derive(Debug)]
pub struct Engine {
    pub(crate) cfg: EngineConfig,
    pub(crate) store: Arc<Store>,
    pub(crate) runtime: Arc<dyn Runtime>,
    pub(crate) network: Arc<dyn Network>,
    pub(crate) identity: Identity,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) host_limits: crate::spec::HostLimits,
    pub(crate) view: Arc<TaskView>,
    placer: Placer,
    supervisors: Mutex<HashMap<String, Supervised>>,
    /// Runtime container id → task id, for routing exits.
    containers: Mutex<HashMap<String, String>>,
    /// Runtime container id → the process it was started with: the template of execs.
    processes: Mutex<HashMap<String, oci_spec::runtime::Process>>,
    /// The event pump and the sweeper, aborted by [`Engine::shutdown`].
    background: Mutex<Vec<JoinHandle<()>>>,
    /// Cancelled when the daemon shuts down: supervisors of running tasks let go.
    pub(crate) shutdown: CancellationToken,
    /// Registry credentials for pulls (ECR logins are cached here).
    pub(crate) registry_auth: registry_auth::RegistryAuth,
    /// Pull steps hold it for reading, an image cleanup cycle for writing, so an image is
    /// never removed between a task's decision to use it and its containers' creation.
    pub(crate) image_lock: tokio::sync::RwLock<()>,
    /// The awslogs shippers of the containers that log to CloudWatch Logs.
    pub(crate) awslogs: awslogs::Shippers,
    /// Tasks' scale-in protection.
    pub(crate) protections: protection::Protections,
}

impl Engine {
    /// Builds the engine over the tasks the store holds.
    pub fn new(
        cfg: EngineConfig,
        store: Arc<Store>,
        runtime: Arc<dyn Runtime>,
        network: Arc<dyn Network>,
        identity: Identity,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Engine>, EngineError> {
        let mut tasks = vec![];
        store.read(|r| {
            r.scan(TASKS, Scan::all(), |_, t: TaskRecord| {
                tasks.push(t);
                ControlFlow::Continue(())
            })
        })?;
        let mut protections = vec![];
        store.read(|r| {
            r.scan(TASK_PROTECTION, Scan::all(), |k, p| {
                protections.push((k.to_owned(), p));
                ControlFlow::Continue(())
            })
        })?;
        let registry_auth = registry_auth::RegistryAuth::new(cfg.images.clone(), cfg.endpoints.aws().clone());
        Ok(Arc::new(Engine {
            registry_auth,
            image_lock: tokio::sync::RwLock::new(()),
            store,
            runtime,
            network,
            identity,
            clock,
            host_limits: crate::spec::HostLimits { init: cfg.init.clone(), ..crate::spec::host_limits() },
            cfg,
            view: Arc::new(TaskView::new(tasks)),
            placer: Placer::default(),
            supervisors: Mutex::new(HashMap::new()),
            containers: Mutex::new(HashMap::new()),
            processes: Mutex::new(HashMap::new()),
            background: Mutex::new(Vec::new()),
            shutdown: CancellationToken::new(),
            awslogs: awslogs::Shippers::default(),
            protections: protection::Protections::load(protections),
        }))
    }

    pub fn now(&self) -> f64 {
        self.clock.now()
    }

    pub fn availability_zone(&self) -> String {
        format!("{}a", self.identity.region)
    }

    pub(crate) fn task_dir(&self, id: &str) -> PathBuf {
        self.cfg.data_dir.join("tasks").join(id)
    }

    fn timeouts(&self) -> Timeouts {
        self.cfg.timeouts()
    }

    /// Starts the event pump, re-adopts the tasks the store says are not STOPPED, and
    /// starts the retention sweeper.
    pub async fn start(self: &Arc<Self>) -> Result<(), EngineError> {
        let events = self.runtime.events();
        let pump = tokio::spawn(Arc::clone(self).pump(events).instrument(info_span!("events")));
        self.track(pump);
        self.reconcile().await?;
        let sweep = tokio::spawn(Arc::clone(self).sweep());
        self.track(sweep);
        let cleanup = &self.cfg.images.cleanup;
        // prefer-cached keeps every image, as the agent does.
        if cleanup.enabled && self.cfg.images.pull_behavior != images::PullBehavior::PreferCached {
            let cleaner = tokio::spawn(Arc::clone(self).clean_images_periodically());
            self.track(cleaner);
        }
        Ok(())
    }

    async fn clean_images_periodically(self: Arc<Self>) {
        loop {
            self.clock.sleep(self.cfg.images.cleanup.interval).await;
            if let Err(e) = self.clean_images().await {
                warn!(error = %e, "image cleanup failed");
            }
        }
    }

    /// One image cleanup cycle (what `ECS_IMAGE_CLEANUP_INTERVAL` runs): removes up to
    /// `ECS_NUM_IMAGES_DELETE_PER_CYCLE` images no live task uses, least recently used first.
    /// Returns the names removed.
    pub async fn clean_images(&self) -> Result<Vec<String>, RuntimeError> {
        let _exclusive = self.image_lock.write().await;
        let in_use: HashSet<String> = self
            .view
            .live()
            .iter()
            .flat_map(|t| t.containers.iter().map(|c| c.image.clone()).collect::<Vec<_>>())
            .filter_map(|i| crate::runtime::reference::normalize(&i).ok())
            .collect();
        images::clean(&*self.runtime, &in_use, &self.cfg.images.cleanup, self.now()).await
    }

    fn track(&self, handle: JoinHandle<()>) {
        let mut b = self.background.lock().unwrap_or_else(|e| e.into_inner());
        b.retain(|h| !h.is_finished());
        b.push(handle);
    }

    /// Stops supervising. Tasks that are stopping get up to a grace period to finish their
    /// teardown; running tasks keep running in the runtime and the next engine on the same
    /// data dir re-adopts them, exactly as after a crash.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        let handles: Vec<_> = self.background.lock().map(|mut b| b.drain(..).collect()).unwrap_or_default();
        for h in &handles {
            h.abort();
        }
        for h in handles {
            let _ = h.await;
        }
        let (finishing, running): (Vec<_>, Vec<_>) = {
            let mut s = self.supervisors.lock().unwrap_or_else(|e| e.into_inner());
            s.values_mut()
                .filter_map(|sup| Some((sup.stopping.load(Ordering::SeqCst), sup.handle.take()?)))
                .partition(|(stopping, _)| *stopping)
        };
        for (_, h) in &running {
            h.abort();
        }
        let teardowns = futures_join(finishing.into_iter().map(|(_, h)| h).collect());
        if tokio::time::timeout(TEARDOWN_GRACE, teardowns).await.is_err() {
            warn!(
                grace_secs = TEARDOWN_GRACE.as_secs(),
                "task teardowns still running at shutdown; the next start finishes them"
            );
        }
        for (_, h) in running {
            let _ = h.await;
        }
        // Shippers of running tasks resume from their checkpoints at the next start.
        self.awslogs.abort_all();
        // The listeners go with the daemon; the next start opens them again.
        self.cfg.endpoints.shutdown();
    }

    /// Checks a launch as ECS does before placing anything (what [`Engine::launch`] checks
    /// first), for callers that validate a request before they launch from it (CreateService).
    pub fn check_launch(&self, spec: &LaunchSpec) -> Result<(), LaunchError> {
        let checked = launch::check(spec, &self.cfg.network)?;
        self.check_host_ports(spec, &checked.effective)
    }

    /// A rootless ecsd cannot bind host ports below the unprivileged start, and forwards
    /// published ports to task networks for TCP only: both are refused before anything binds.
    fn check_host_ports(
        &self,
        spec: &LaunchSpec,
        effective: &[crate::model::shapes::ContainerDefinition],
    ) -> Result<(), LaunchError> {
        let Some(start) = self.cfg.unprivileged_port_start else { return Ok(()) };
        rootless_port_problem(&self.cfg.network, &spec.definition, effective, start)
    }

    /// Places and launches `count` tasks of `spec`, one at a time against what the host has
    /// left: each is recorded (PROVISIONING, with its tags) and handed to a supervisor. A task
    /// that cannot be placed is a [`Placed`] failure, as ECS reports it, not an error.
    pub async fn launch(
        self: &Arc<Self>,
        spec: &LaunchSpec,
        count: usize,
    ) -> Result<Vec<Placed>, EngineError> {
        let checked = launch::check(spec, &self.cfg.network)?;
        self.check_host_ports(spec, &checked.effective)?;
        if let Err(e) = self.runtime_ready().await {
            return Ok(vec![Placed::AgentUnavailable(e)]);
        }
        let demand = (spec.launch_type != "FARGATE")
            .then(|| placement::Demand::of(&spec.definition, &checked.effective));
        let wanted = placement::wanted_ports(&self.cfg.network, &spec.definition, &checked.effective);
        let registered = self.registered();
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let id = launch::new_task_id();
            let reservation =
                match self.placer.place(&id, || self.usage(), &self.cfg.network, registered, demand, &wanted)
                {
                    Ok(r) => r,
                    Err(short) => {
                        out.push(Placed::Unplaced(short));
                        continue;
                    }
                };
            let mut record = launch::new_record(&self.identity, id, spec, &checked, self.now());
            for (c, b) in record.containers.iter_mut().zip(reservation.bindings.iter()) {
                c.network_bindings = b.clone();
            }
            let key = task_key(&record.cluster, &record.id);
            let tags = spec.tags.clone();
            let stored = record.clone();
            self.store
                .write_async(move |w| {
                    w.put(TASKS, &key, &stored)?;
                    if !tags.is_empty() {
                        w.put(TAGS, &stored.arn, &tags)?;
                    }
                    Ok::<_, StoreError>(())
                })
                .await?;
            let task = self.view.put(record);
            // In the view now, so the next placement counts it without the reservation.
            drop(reservation);
            self.supervise((*task).clone());
            out.push(Placed::Launched(task));
        }
        Ok(out)
    }

    /// Asks the task's supervisor to stop the task with `reason` and answers with the task as
    /// recorded: its desired status, stop code and reason are the ones the store holds (a task
    /// already on its way to STOPPED keeps its first reason, as in ECS). `None`: no such task.
    pub async fn stop(&self, cluster: &str, id: &str, reason: StopReason) -> Option<Arc<TaskRecord>> {
        let inbox = self.supervisors.lock().ok().and_then(|s| s.get(id).map(|s| s.inbox.clone()));
        if let Some(inbox) = inbox {
            let (tx, rx) = oneshot::channel();
            if inbox.send(Msg::Stop { reason, recorded: Some(tx) }).is_ok()
                && let Ok(Ok(task)) = tokio::time::timeout(STOP_ANSWER, rx).await
            {
                return Some(task);
            }
        }
        self.view.get(cluster, id)
    }

    /// Every change of every task, as it is recorded. A subscriber that falls behind is told
    /// it lagged and should read the tasks it cares about again.
    pub fn subscribe(&self) -> broadcast::Receiver<TaskEvent> {
        self.view.subscribe()
    }

    /// One task of a cluster, any status.
    /// What this host registers as a container instance: its cpus and memory, less the
    /// memory `ECS_RESERVED_MEMORY` keeps back.
    pub fn registered(&self) -> placement::Demand {
        let mut host = placement::registered();
        host.memory = (host.memory - self.cfg.instance.reserved_memory_mib).max(0);
        host
    }

    pub fn task(&self, cluster: &str, id: &str) -> Option<Arc<TaskRecord>> {
        self.view.get(cluster, id)
    }

    /// A cluster's tasks (any status) in task id order, after `after` when given.
    pub fn tasks(&self, cluster: &str, after: Option<&str>) -> Vec<Arc<TaskRecord>> {
        self.view.of_cluster(cluster, after)
    }

    /// Every task the engine keeps, STOPPED ones included, in any cluster.
    pub fn all_tasks(&self) -> Vec<Arc<TaskRecord>> {
        self.view.all()
    }

    /// Every task that is not STOPPED, in any cluster.
    pub fn live_tasks(&self) -> Vec<Arc<TaskRecord>> {
        self.view.live()
    }

    /// What live tasks hold on this host.
    pub fn usage(&self) -> Usage {
        let live = self.view.live();
        Usage::of(live.iter().map(|t| t.as_ref()))
    }

    /// Whether the runtime answers now; launches are refused (`AGENT`) when it does not.
    pub async fn runtime_ready(&self) -> Result<(), RuntimeError> {
        self.runtime.ping().await
    }

    /// Records a change of a task durably, then shows it.
    pub(crate) async fn record(&self, task: TaskRecord) -> Result<Arc<TaskRecord>, StoreError> {
        let key = task_key(&task.cluster, &task.id);
        let stored = task.clone();
        self.store.write_async(move |w| w.put(TASKS, &key, &stored)).await?;
        Ok(self.view.put(task))
    }

    pub(crate) fn register_container(&self, runtime_id: &str, task_id: &str) {
        if let Ok(mut m) = self.containers.lock() {
            m.insert(runtime_id.to_owned(), task_id.to_owned());
        }
    }

    fn supervise(self: &Arc<Self>, record: TaskRecord) {
        let (tx, rx) = mpsc::unbounded_channel();
        for c in &record.containers {
            self.register_container(&c.runtime_id, &record.id);
        }
        let stopping = Arc::new(AtomicBool::new(record.desired == TaskStatus::Stopped));
        let id = record.id.clone();
        // A task outlives the request that launched it: its span has no parent.
        let span = info_span!(parent: None, "task", arn = %record.arn);
        let engine = Arc::clone(self);
        let flag = Arc::clone(&stopping);
        let mut supervisors = self.supervisors.lock().unwrap_or_else(|e| e.into_inner());
        // Spawned under the lock, so the supervisor's own removal of its entry comes after
        // the entry exists.
        let handle = tokio::spawn(
            async move {
                let id = record.id.clone();
                let runtime_ids: Vec<String> =
                    record.containers.iter().map(|c| c.runtime_id.clone()).collect();
                supervisor::run(Arc::clone(&engine), record, rx, flag).await;
                if let Ok(mut s) = engine.supervisors.lock() {
                    s.remove(&id);
                }
                if let Ok(mut m) = engine.containers.lock() {
                    for r in runtime_ids {
                        m.remove(&r);
                    }
                }
            }
            .instrument(span),
        );
        supervisors.insert(id, Supervised { inbox: tx, stopping, handle: Some(handle) });
    }

    pub(crate) fn send(&self, task_id: &str, msg: Msg) {
        let sender = self.supervisors.lock().ok().and_then(|s| s.get(task_id).map(|s| s.inbox.clone()));
        if let Some(s) = sender {
            let _ = s.send(msg);
        }
    }

    fn task_of(&self, runtime_id: &str) -> Option<String> {
        self.containers.lock().ok().and_then(|m| m.get(runtime_id).cloned())
    }

    /// Forwards runtime exits to the supervisors that own the containers.
    async fn pump(self: Arc<Self>, mut events: mpsc::Receiver<Event>) {
        while let Some(event) = events.recv().await {
            match event {
                Event::Exit { id, pid, code, at } => {
                    if let Some(task) = self.task_of(&id) {
                        self.send(&task, Msg::Exit { runtime_id: id, pid: Some(pid), code, at });
                    }
                }
                Event::Reconnected => {
                    info!("runtime reconnected; looking for exits that happened meanwhile");
                    self.resync().await;
                }
            }
        }
    }

    /// Delivers exits the event stream may have missed (while the runtime was away).
    async fn resync(&self) {
        let listed_at = self.now();
        let states = match self.runtime.list().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot list runtime containers after reconnecting");
                return;
            }
        };
        let known: HashMap<String, String> = self.containers.lock().map(|m| m.clone()).unwrap_or_default();
        let by_id: HashMap<&str, ProcessStatus> = states.iter().map(|s| (s.id.as_str(), s.status)).collect();
        for (runtime_id, task) in known {
            // Supervisors ignore these for containers that are not running.
            match by_id.get(runtime_id.as_str()) {
                Some(ProcessStatus::Exited { code, at }) => {
                    self.send(&task, Msg::Exit { runtime_id, pid: None, code: *code, at: *at });
                }
                Some(ProcessStatus::Missing) | None => self.send(&task, Msg::Lost { runtime_id, listed_at }),
                Some(_) => {}
            }
        }
    }

    /// Re-adopts every task that is not STOPPED: running containers keep running, exits that
    /// happened while ecsd was down are recorded with their exit codes, and runtime
    /// containers or namespaces that belong to no live task are removed.
    async fn reconcile(self: &Arc<Self>) -> Result<(), EngineError> {
        let live: Vec<TaskRecord> = self.view.live().iter().map(|t| (**t).clone()).collect();
        let states = match self.runtime.list().await {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %e, "runtime unavailable at start; tasks are re-adopted as it answers");
                None
            }
        };
        let live_ids: HashSet<String> = live.iter().map(|t| t.id.clone()).collect();
        if let Some(states) = &states {
            for s in states {
                let Some(task_id) = s.labels.get(crate::spec::LABEL_TASK_ID) else { continue };
                if live_ids.contains(task_id) {
                    continue;
                }
                info!(container = %s.id, task = %task_id, "removing a container of no live task");
                if matches!(s.status, ProcessStatus::Running { .. }) {
                    let _ = self.runtime.signal(&s.id, 9).await;
                }
                if let Err(e) = supervisor::remove_container(&*self.runtime, &*self.clock, &s.id).await {
                    warn!(container = %s.id, error = %e, "cannot remove an orphaned container");
                }
            }
        }
        match self.network.list().await {
            Ok(ids) => {
                for id in ids.into_iter().filter(|id| !live_ids.contains(id)) {
                    info!(task = %id, "removing a network namespace of no live task");
                    if let Err(e) = self.network.remove(&id).await {
                        warn!(task = %id, error = %e, "cannot remove an orphaned namespace");
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot list network namespaces"),
        }
        for mut task in live {
            if let Some(states) = &states {
                let before = task.clone();
                supervisor::readopt(&mut task, states, &*self.runtime, &*self.clock, self.now()).await;
                if task != before {
                    task.version += 1;
                    task = (*self.record(task).await?).clone();
                }
                self.reap_execs(&task, states).await;
            }
            info!(task = %task.arn, status = task.last.as_str(), "re-adopting task");
            self.supervise(task);
        }
        // Exits between the listing above and the supervisors' registration had no owner.
        if states.is_some() {
            self.resync().await;
        }
        Ok(())
    }

    /// Ends the exec'd processes (ECS Exec sessions, health checks) an earlier daemon left
    /// running in a task's containers: their handles died with it. Before the task's
    /// supervisor starts, so none of this daemon's are among them.
    async fn reap_execs(&self, task: &TaskRecord, states: &[crate::runtime::ContainerState]) {
        let running: HashSet<&str> = states
            .iter()
            .filter(|s| matches!(s.status, ProcessStatus::Running { .. }))
            .map(|s| s.id.as_str())
            .collect();
        for c in task.containers.iter().filter(|c| running.contains(c.runtime_id.as_str())) {
            match self.runtime.reap_execs(&c.runtime_id).await {
                Ok(ids) if !ids.is_empty() => {
                    info!(task = %task.arn, container = %c.name, execs = ?ids, "ended exec'd processes left by an earlier ecsd")
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(task = %task.arn, container = %c.name, error = %e, "cannot look for left-over exec'd processes")
                }
            }
        }
    }

    /// Removes STOPPED tasks past the retention, deleted task definitions no task uses, and
    /// the networks of tasks no supervisor owns.
    async fn sweep(self: Arc<Self>) {
        let every = Duration::from_secs(60).min(self.cfg.retention.max(Duration::from_secs(1)));
        loop {
            self.clock.sleep(every).await;
            if let Err(e) = self.expire().await {
                warn!(error = %e, "cannot expire stopped tasks");
            }
            if let Err(e) = self.purge_deleted_definitions().await {
                warn!(error = %e, "cannot delete task definitions marked for deletion");
            }
            self.remove_network_leftovers().await;
        }
    }

    /// Tries again to remove the networks of tasks no supervisor owns (a teardown that a
    /// crash interrupted), so their addresses and rules do not stay taken.
    async fn remove_network_leftovers(&self) {
        let ids = match self.network.list().await {
            Ok(ids) => ids,
            Err(e) => {
                warn!(error = %e, "cannot list task networks");
                return;
            }
        };
        for id in ids {
            let owned = self.supervisors.lock().map(|s| s.contains_key(&id)).unwrap_or(true);
            if !owned && let Err(e) = self.network.remove(&id).await {
                warn!(task = %id, error = %crate::error_chain(&e), "cannot remove the network of a stopped task");
            }
        }
    }

    /// Deletes STOPPED tasks older than the retention, with their tags and files. Returns
    /// how many went.
    pub async fn expire(&self) -> Result<usize, StoreError> {
        let cutoff = self.now() - self.cfg.retention.as_secs_f64();
        let old: Vec<Arc<TaskRecord>> = self
            .view
            .all()
            .into_iter()
            .filter(|t| t.last == TaskStatus::Stopped && t.stopped_at.is_some_and(|s| s < cutoff))
            .collect();
        if old.is_empty() {
            return Ok(0);
        }
        let keys: Vec<(String, String)> =
            old.iter().map(|t| (task_key(&t.cluster, &t.id), t.arn.clone())).collect();
        self.store
            .write_async(move |w| {
                for (k, arn) in &keys {
                    w.delete(TASKS, k)?;
                    w.delete(TAGS, arn)?;
                    w.delete(TASK_PROTECTION, k)?;
                }
                Ok::<_, StoreError>(())
            })
            .await?;
        for t in &old {
            self.view.remove(&t.cluster, &t.id);
            self.protections.forget(&task_key(&t.cluster, &t.id));
            let _ = std::fs::remove_dir_all(self.task_dir(&t.id));
        }
        Ok(old.len())
    }

    /// Deletes task definitions in DELETE_IN_PROGRESS that no live task uses any more, as
    /// ECS finishes a DeleteTaskDefinitions. Returns how many went.
    pub async fn purge_deleted_definitions(&self) -> Result<usize, StoreError> {
        let in_use: HashSet<String> =
            self.view.live().iter().filter_map(|t| t.definition.task_definition_arn.clone()).collect();
        let mut doomed = vec![];
        self.store.read(|r| {
            r.scan(TASK_DEFINITIONS, Scan::all(), |k, td: TaskDefinition| {
                let arn = td.task_definition_arn.unwrap_or_default();
                if td.status.as_deref() == Some("DELETE_IN_PROGRESS") && !in_use.contains(&arn) {
                    doomed.push((k.to_owned(), arn));
                }
                ControlFlow::Continue(())
            })
        })?;
        let n = doomed.len();
        if n > 0 {
            self.store
                .write_async(move |w| {
                    for (k, arn) in &doomed {
                        w.delete(TASK_DEFINITIONS, k)?;
                        w.delete(TAGS, arn)?;
                    }
                    Ok::<_, StoreError>(())
                })
                .await?;
        }
        Ok(n)
    }

    /// Opens the task's metadata and credentials endpoints, which read the task from the view.
    pub(crate) async fn open_endpoints(&self, rec: &TaskRecord) -> Result<(), crate::endpoints::OpenError> {
        let source = ViewSource {
            view: Arc::clone(&self.view),
            store: Arc::clone(&self.store),
            cluster: rec.cluster.clone(),
            id: rec.id.clone(),
            arn: rec.arn.clone(),
        };
        self.cfg.endpoints.open(rec, Arc::new(source)).await
    }

    /// Runs one health check in a running container: its exit code and output tail.
    pub(crate) async fn health_check(
        &self,
        runtime_id: &str,
        process: &oci_spec::runtime::Process,
        timeout: Duration,
    ) -> CheckResult {
        match crate::runtime::run_to_completion(&*self.runtime, runtime_id, process.clone(), timeout).await {
            Ok(r) => CheckResult { exit_code: Some(r.exit_code), output: r.output },
            Err(e) => CheckResult { exit_code: None, output: e.to_string() },
        }
    }
}

/// A task's endpoints see it through the engine's view; its tags come from the store, where
/// TagResource changes them.
struct ViewSource {
    view: Arc<TaskView>,
    store: Arc<Store>,
    cluster: String,
    id: String,
    arn: String,
}

impl crate::endpoints::TaskSource for ViewSource {
    fn task(&self) -> Option<Arc<TaskRecord>> {
        self.view.get(&self.cluster, &self.id)
    }

    fn tags(&self) -> Vec<(String, String)> {
        let tags = self.store.read(|r| r.get(TAGS, &self.arn)).ok().flatten().unwrap_or_default();
        tags.into_iter().filter_map(|t| Some((t.key?, t.value.unwrap_or_default()))).collect()
    }
}

/// Waits for every handle.
async fn futures_join(handles: Vec<JoinHandle<()>>) {
    for h in handles {
        let _ = h.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task definition of `mode` with one container and `mappings` (JSON port mappings).
    fn task(mode: &str, mappings: serde_json::Value) -> TaskDefinition {
        serde_json::from_value(serde_json::json!({
            "family": "f",
            "networkMode": mode,
            "containerDefinitions": [{"name": "c", "image": "busybox", "portMappings": mappings}],
        }))
        .unwrap()
    }

    fn problem(settings: &crate::network::Settings, mode: &str, mappings: serde_json::Value) -> String {
        let td = task(mode, mappings);
        let containers = td.container_definitions.clone().unwrap_or_default();
        match rootless_port_problem(settings, &td, &containers, 1024) {
            Ok(()) => "ok".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn rootless_refuses_privileged_host_ports_of_every_mode_and_udp_from_task_networks() {
        use serde_json::json;
        let plain = crate::network::Settings::default();
        let publish = crate::network::Settings { publish_awsvpc_ports: true, ..Default::default() };
        let sysctl = "hostPort 80 is below net.ipv4.ip_unprivileged_port_start (1024)";
        // Bridge: a fixed hostPort below the start is refused naming the sysctl; 8080 is fine.
        assert!(
            problem(&plain, "bridge", json!([{"containerPort": 80, "hostPort": 80}])).starts_with(sysctl)
        );
        assert_eq!(problem(&plain, "bridge", json!([{"containerPort": 80, "hostPort": 8080}])), "ok");
        // A dynamic host port comes from the dynamic range, above the start.
        assert_eq!(problem(&plain, "bridge", json!([{"containerPort": 80}])), "ok");
        // awsvpc publishes its containerPort as the hostPort only when asked to.
        assert_eq!(problem(&plain, "awsvpc", json!([{"containerPort": 80}])), "ok");
        assert!(problem(&publish, "awsvpc", json!([{"containerPort": 80}])).starts_with(sysctl));
        assert!(problem(&plain, "host", json!([{"containerPort": 80}])).starts_with(sysctl));
        // UDP from a task network is refused, TCP of the same port is not; host mode binds
        // the host's UDP port itself.
        let udp = json!([{"containerPort": 5353, "hostPort": 5353, "protocol": "udp"}]);
        let tcp = json!([{"containerPort": 5353, "hostPort": 5353, "protocol": "tcp"}]);
        let refused = "containerPort 5353/udp cannot be published on the host by a rootless ecsd";
        assert!(problem(&plain, "bridge", udp.clone()).starts_with(refused));
        assert_eq!(problem(&plain, "bridge", tcp.clone()), "ok");
        assert!(problem(&publish, "awsvpc", udp.clone()).starts_with(refused));
        assert_eq!(problem(&plain, "awsvpc", udp.clone()), "ok", "not published: reached in its network");
        assert_eq!(problem(&plain, "host", udp), "ok");
    }
}
