//! The task engine: one supervisor per ECS task walks it through the lifecycle (PROVISIONING
//! → PENDING → RUNNING → DEACTIVATING → STOPPING → DEPROVISIONING → STOPPED), honouring
//! `essential`, `dependsOn`, health checks and stop timeouts, and reconciles the store with
//! the runtime after any restart.
//!
//! The store is the truth for what the API shows; the runtime is the truth for what runs.
//! Supervisors persist every change before it becomes visible. No lock is held across a
//! runtime or network call.

use std::collections::HashMap;
use std::ops::{Bound, ControlFlow};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{Instrument, info, info_span, warn};

use crate::model::arn::Identity;
use crate::model::time::Clock;
use crate::network::Network;
use crate::runtime::{Event, ExecResult, ProcessStatus, Runtime, RuntimeError};
use crate::store::{Scan, Store, StoreError, prefix_end};

pub mod cgroups;
pub mod record;
mod supervisor;

pub use record::{ContainerRecord, ContainerStatus, Health, HealthStatus, TaskRecord, TaskStatus};

use crate::store::records::TASKS;

/// Labels every runtime container carries, so the runtime alone can rebuild the picture.
pub const LABEL_TASK_ID: &str = "ecsd.task-id";
pub const LABEL_CLUSTER: &str = "com.amazonaws.ecs.cluster";
pub const LABEL_TASK_ARN: &str = "com.amazonaws.ecs.task-arn";
pub const LABEL_CONTAINER_NAME: &str = "com.amazonaws.ecs.container-name";

/// Stop codes ECS reports.
pub const STOP_ESSENTIAL_EXITED: &str = "EssentialContainerExited";
pub const STOP_USER: &str = "UserInitiated";
pub const STOP_FAILED_TO_START: &str = "TaskFailedToStart";
pub const STOP_SERVICE: &str = "ServiceSchedulerInitiated";

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
    /// A static init (tini) to run as PID 1 of containers with `initProcessEnabled`.
    pub init: Option<PathBuf>,
    /// Task networks and port settings.
    pub network: Arc<crate::network::Settings>,
    /// The tasks' metadata and credentials endpoints and their secrets.
    pub endpoints: Arc<crate::endpoints::Endpoints>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// What a supervisor is told.
#[derive(Debug)]
pub(crate) enum Msg {
    Exit {
        runtime_id: String,
        code: i32,
        at: f64,
    },
    Stop {
        code: &'static str,
        reason: String,
        /// Answered once the stop is recorded, so what StopTask answers is what readers see.
        recorded: Option<tokio::sync::oneshot::Sender<()>>,
    },
    Health {
        runtime_id: String,
        result: Result<ExecResult, RuntimeError>,
        at: f64,
    },
    /// The runtime did not know the container when it was listed at `listed_at` (it vanished
    /// while the connection was down, or it was created after the listing).
    Lost {
        runtime_id: String,
        listed_at: f64,
    },
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
    supervisors: Mutex<HashMap<String, mpsc::UnboundedSender<Msg>>>,
    containers: Mutex<HashMap<String, String>>,
    /// Every background task of the engine, aborted by [`Engine::shutdown`].
    background: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// The key of a task in the store: tasks list by cluster.
pub fn task_key(cluster: &str, id: &str) -> String {
    format!("{cluster}\u{0}{id}")
}

impl Engine {
    pub fn new(
        cfg: EngineConfig,
        store: Arc<Store>,
        runtime: Arc<dyn Runtime>,
        network: Arc<dyn Network>,
        identity: Identity,
        clock: Arc<dyn Clock>,
    ) -> Arc<Engine> {
        Arc::new(Engine {
            store,
            runtime,
            network,
            identity,
            clock,
            host_limits: crate::spec::HostLimits { init: cfg.init.clone(), ..crate::spec::host_limits() },
            cfg,
            supervisors: Mutex::new(HashMap::new()),
            containers: Mutex::new(HashMap::new()),
            background: Mutex::new(Vec::new()),
        })
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

    /// Starts the event pump, re-adopts the tasks the store says are not STOPPED, and
    /// starts the retention sweeper.
    pub async fn start(self: &Arc<Self>) -> Result<(), EngineError> {
        let events = self.runtime.events();
        let pump = tokio::spawn(Arc::clone(self).pump(events).instrument(info_span!("events")));
        self.track(pump);
        self.reconcile().await?;
        let sweep = tokio::spawn(Arc::clone(self).sweep());
        self.track(sweep);
        Ok(())
    }

    fn track(&self, handle: tokio::task::JoinHandle<()>) {
        if let Ok(mut b) = self.background.lock() {
            b.retain(|h| !h.is_finished());
            b.push(handle);
        }
    }

    /// Stops supervising: containers keep running in the runtime and the next engine on the
    /// same data dir re-adopts them, exactly as after a crash.
    pub async fn shutdown(&self) {
        // The listeners go with the daemon; the next start opens them again.
        self.cfg.endpoints.shutdown();
        let handles: Vec<_> = self.background.lock().map(|mut b| b.drain(..).collect()).unwrap_or_default();
        for h in &handles {
            h.abort();
        }
        for h in handles {
            let _ = h.await;
        }
    }

    /// Records a new task (PROVISIONING) and hands it to a supervisor.
    pub fn launch(self: &Arc<Self>, record: TaskRecord) -> Result<TaskRecord, EngineError> {
        self.store.write(|w| w.put(TASKS, &task_key(&record.cluster, &record.id), &record))?;
        self.supervise(record.clone());
        Ok(record)
    }

    /// Asks a task to stop. Returns false when no supervisor owns it (already stopped).
    /// Asks the task's supervisor to stop the task. Returns whether a supervisor took the
    /// request, once it has recorded it (or after a moment, if it is busy with a step).
    pub async fn stop(&self, task_id: &str, code: &'static str, reason: String) -> bool {
        let sender = self.supervisors.lock().ok().and_then(|s| s.get(task_id).cloned());
        let Some(sender) = sender else { return false };
        let (tx, rx) = tokio::sync::oneshot::channel();
        if sender.send(Msg::Stop { code, reason, recorded: Some(tx) }).is_err() {
            return false;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), rx).await;
        true
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
        if let Ok(mut s) = self.supervisors.lock() {
            s.insert(record.id.clone(), tx);
        }
        // A task outlives the request that launched it: its span has no parent.
        let span = info_span!(parent: None, "task", arn = %record.arn);
        let engine = Arc::clone(self);
        let handle = tokio::spawn(
            async move {
                let id = record.id.clone();
                let runtime_ids: Vec<String> =
                    record.containers.iter().map(|c| c.runtime_id.clone()).collect();
                supervisor::run(Arc::clone(&engine), record, rx).await;
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
        self.track(handle);
    }

    pub(crate) fn send(&self, task_id: &str, msg: Msg) {
        let sender = self.supervisors.lock().ok().and_then(|s| s.get(task_id).cloned());
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
                Event::Exit { id, code, at } => {
                    if let Some(task) = self.task_of(&id) {
                        self.send(&task, Msg::Exit { runtime_id: id, code, at });
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
                    self.send(&task, Msg::Exit { runtime_id, code: *code, at: *at });
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
        let mut live = vec![];
        self.store.read(|r| {
            r.scan(TASKS, Scan::all(), |_, t: TaskRecord| {
                if t.last != TaskStatus::Stopped {
                    live.push(t);
                }
                ControlFlow::Continue(())
            })
        })?;
        let states = match self.runtime.list().await {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %e, "runtime unavailable at start; tasks are re-adopted as it answers");
                None
            }
        };
        let live_ids: std::collections::HashSet<String> = live.iter().map(|t| t.id.clone()).collect();
        if let Some(states) = &states {
            for s in states {
                let Some(task_id) = s.labels.get(LABEL_TASK_ID) else { continue };
                if live_ids.contains(task_id) {
                    continue;
                }
                info!(container = %s.id, task = %task_id, "removing a container of no live task");
                if matches!(s.status, ProcessStatus::Running { .. }) {
                    let _ = self.runtime.signal(&s.id, 9).await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                if let Err(e) = self.runtime.remove(&s.id).await {
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
                for c in &mut task.containers {
                    let state = states.iter().find(|s| s.id == c.runtime_id).map(|s| s.status);
                    if c.status == ContainerStatus::Pending {
                        // Killed between creating the container and recording it.
                        match state {
                            Some(ProcessStatus::Running { .. }) => {
                                c.status = ContainerStatus::Running;
                                c.started_at.get_or_insert(self.now());
                            }
                            Some(_) => {
                                let _ = self.runtime.remove(&c.runtime_id).await;
                            }
                            None => {}
                        }
                        continue;
                    }
                    if !matches!(c.status, ContainerStatus::Running | ContainerStatus::Created) {
                        continue;
                    }
                    match state {
                        Some(ProcessStatus::Running { .. }) => {}
                        Some(ProcessStatus::Exited { code, at }) => {
                            info!(container = %c.name, code, "container exited while ecsd was down");
                            supervisor::mark_exited(c, code, at);
                        }
                        Some(ProcessStatus::Created) => {}
                        Some(ProcessStatus::Missing) | None => {
                            if c.status == ContainerStatus::Running {
                                warn!(container = %c.name, "container vanished while ecsd was down");
                                c.status = ContainerStatus::Stopped;
                                c.reason = Some(
                                    "CannotInspectContainerError: the container was gone from containerd when ecsd restarted"
                                        .into(),
                                );
                                c.finished_at = Some(self.now());
                            } else {
                                c.status = ContainerStatus::Pending;
                            }
                        }
                    }
                }
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

    /// Removes STOPPED tasks (and their files) once they are older than the retention.
    async fn sweep(self: Arc<Self>) {
        let every = Duration::from_secs(60).min(self.cfg.retention.max(Duration::from_secs(1)));
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = self.expire() {
                warn!(error = %e, "cannot expire stopped tasks");
            }
            if let Err(e) = self.purge_deleted_definitions() {
                warn!(error = %e, "cannot delete task definitions marked for deletion");
            }
            self.remove_network_leftovers().await;
        }
    }

    /// Tries again to remove the networks of tasks no supervisor owns (a teardown that
    /// failed when the task stopped), so their addresses and rules do not stay taken.
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

    /// Deletes STOPPED tasks older than the retention. Returns how many went.
    pub fn expire(&self) -> Result<usize, StoreError> {
        let cutoff = self.now() - self.cfg.retention.as_secs_f64();
        let mut old = vec![];
        self.store.read(|r| {
            r.scan(TASKS, Scan::all(), |k, t: TaskRecord| {
                if t.last == TaskStatus::Stopped && t.stopped_at.is_some_and(|s| s < cutoff) {
                    old.push((k.to_owned(), t.id, t.arn));
                }
                ControlFlow::Continue(())
            })
        })?;
        let n = old.len();
        if n > 0 {
            self.store.write(|w| {
                for (k, _, arn) in &old {
                    w.delete(TASKS, k)?;
                    w.delete(crate::store::records::TAGS, arn)?;
                }
                Ok::<_, StoreError>(())
            })?;
            for (_, id, _) in old {
                let _ = std::fs::remove_dir_all(self.task_dir(&id));
            }
        }
        Ok(n)
    }

    /// Deletes task definitions in DELETE_IN_PROGRESS that no live task uses any more, as
    /// ECS finishes a DeleteTaskDefinitions. Returns how many went.
    pub fn purge_deleted_definitions(&self) -> Result<usize, StoreError> {
        use crate::model::shapes::TaskDefinition;
        use crate::store::records::{TAGS, TASK_DEFINITIONS};
        let in_use: std::collections::HashSet<String> =
            self.all_live_tasks()?.into_iter().filter_map(|t| t.definition.task_definition_arn).collect();
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
        if !doomed.is_empty() {
            self.store.write(|w| {
                for (k, arn) in &doomed {
                    w.delete(TASK_DEFINITIONS, k)?;
                    w.delete(TAGS, arn)?;
                }
                Ok::<_, StoreError>(())
            })?;
        }
        Ok(doomed.len())
    }

    /// Every task that is not STOPPED, in any cluster.
    pub fn all_live_tasks(&self) -> Result<Vec<TaskRecord>, StoreError> {
        let mut out = vec![];
        self.store.read(|r| {
            r.scan(TASKS, Scan::all(), |_, t: TaskRecord| {
                if t.last != TaskStatus::Stopped {
                    out.push(t);
                }
                ControlFlow::Continue(())
            })
        })?;
        Ok(out)
    }

    /// Whether the runtime answers now; RunTask refuses to place tasks when it does not.
    pub async fn runtime_ready(&self) -> Result<(), RuntimeError> {
        self.runtime.list().await.map(|_| ())
    }

    /// All tasks of a cluster (any status), in key order.
    pub fn tasks_of(&self, cluster: &str) -> Result<Vec<TaskRecord>, StoreError> {
        let prefix = format!("{cluster}\u{0}");
        let end = prefix_end(&prefix);
        let mut out = vec![];
        self.store.read(|r| {
            r.scan(
                TASKS,
                Scan { from: Bound::Included(&prefix), to: Bound::Excluded(&end), reverse: false },
                |_, t| {
                    out.push(t);
                    ControlFlow::Continue(())
                },
            )
        })?;
        Ok(out)
    }
}
