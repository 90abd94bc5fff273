//! The service scheduler: keeps each service's desired count of tasks running on this host,
//! replaces what stops or fails its health checks, rolls deployments within
//! `minimumHealthyPercent` and `maximumPercent`, trips the circuit breaker and rolls back, and
//! writes the service's events. It drives tasks only through the engine
//! ([`Engine::launch`], [`Engine::stop`], [`Engine::subscribe`]).
//!
//! One worker per service owns the service's record: API changes (UpdateService,
//! DeleteService, StopServiceDeployment) are commands to it, so they never race a reconcile
//! pass. A pass is level-triggered: it reads the service's tasks from the engine and the
//! record, decides ([`decide`]), acts, and writes the record when it changed. Passes run
//! when a task of the service changes (the engine's events), when a command arrives, and
//! when a timer set by the last pass ends (a stabilisation time, the back-off, the 6-hour
//! steady-state repeat). The same loop runs a new service and resumes one after a restart,
//! because everything it needs is in the store and the engine.

use std::collections::{BTreeMap, HashMap};
use std::ops::{Bound, ControlFlow};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, debug_span, info, info_span, warn};

use crate::engine::{Engine, EngineError, LaunchSpec, Placed, placement::Shortfall};
use crate::model::arn::{Identity, ResourceArn};
use crate::model::service::{
    self, CIRCUIT_BREAKER_REASON, Counts, PinnedImage, RevisionCount, RolloutState, ServiceDeploymentStatus,
    ServiceError, ServiceRecord, ServiceStatus, ServiceUpdate,
};
use crate::model::shapes::{ContainerOverride, Tag, TaskDefinition, TaskOverride};
use crate::model::task::{StopCode, StopReason, TaskRecord};
use crate::model::time::Clock;
use crate::store::records::{
    CLUSTERS, SERVICE_DEPLOYMENTS, SERVICE_REVISIONS, SERVICES, TAGS, TASK_DEFINITIONS,
    UPSTREAM_TASK_DEFINITIONS, service_deployment_key, service_key, task_definition_key, upstream_arn_key,
};
use crate::store::{Scan, Store, StoreError, prefix_end};

pub mod decide;
pub mod events;

use decide::{StopWhy, TaskState, Timing};

/// How long a service whose tasks could not be placed waits before it tries again (placement
/// changes when any task of the host stops, which the service does not hear about).
const PLACEMENT_RETRY: f64 = 10.0;
/// How long a shutdown waits for a worker to finish its pass.
const WORKER_GRACE: Duration = Duration::from_secs(5);

/// Settings of the scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Without health checks, a task counts as healthy this long after it reached RUNNING
    /// (`ECSD_SERVICE_STABILIZATION`, 40 s in ECS).
    pub stabilization: Duration,
    /// INACTIVE services stay describable this long (`ECSD_SERVICE_RETENTION`).
    pub inactive_retention: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            stabilization: Duration::from_secs(40),
            inactive_retention: Duration::from_secs(3600),
        }
    }
}

/// Why the scheduler refuses a request. The text is ECS's; the API maps each to its
/// exception.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("Service not found.")]
    ServiceNotFound,
    #[error("Service was not ACTIVE.")]
    ServiceNotActive,
    #[error("Cluster not found.")]
    ClusterNotFound,
    #[error("Creation of service was not idempotent.")]
    NotIdempotent,
    #[error("Unable to Start a service that is still Draining.")]
    Draining,
    #[error(transparent)]
    Invalid(#[from] ServiceError),
    #[error("Service deployment not found.")]
    DeploymentNotFound,
    #[error(
        "The service deployment has already finished ({0}): only a PENDING or IN_PROGRESS service deployment can be stopped."
    )]
    DeploymentFinished(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("ecsd is shutting down")]
    ShuttingDown,
}

/// What a worker is asked to do.
#[derive(Debug)]
enum Command {
    Update { update: Box<ServiceUpdate>, reply: oneshot::Sender<Result<ServiceRecord, SchedulerError>> },
    Delete { force: bool, reply: oneshot::Sender<Result<ServiceRecord, SchedulerError>> },
    StopDeployment { id: String, reply: oneshot::Sender<Result<(), SchedulerError>> },
}

/// A running worker, as the scheduler reaches it.
#[derive(Debug)]
struct Worker {
    incarnation: String,
    commands: mpsc::UnboundedSender<Command>,
    poke: Arc<Notify>,
    handle: Option<JoinHandle<()>>,
}

/// The service scheduler of this host.
#[derive(Debug)]
pub struct Scheduler {
    cfg: SchedulerConfig,
    store: Arc<Store>,
    engine: Arc<Engine>,
    identity: Identity,
    clock: Arc<dyn Clock>,
    /// This host's container instance id, named in placement events.
    instance_id: Mutex<String>,
    workers: Mutex<HashMap<String, Worker>>,
    background: Mutex<Vec<JoinHandle<()>>>,
    shutdown: CancellationToken,
}

impl Scheduler {
    pub fn new(
        cfg: SchedulerConfig,
        store: Arc<Store>,
        engine: Arc<Engine>,
        identity: Identity,
        clock: Arc<dyn Clock>,
    ) -> Arc<Scheduler> {
        Arc::new(Scheduler {
            cfg,
            store,
            engine,
            identity,
            clock,
            instance_id: Mutex::new(String::new()),
            workers: Mutex::new(HashMap::new()),
            background: Mutex::new(Vec::new()),
            shutdown: CancellationToken::new(),
        })
    }

    fn timing(&self) -> Timing {
        Timing { stabilization: self.cfg.stabilization.as_secs_f64() }
    }

    fn instance_id(&self) -> String {
        self.instance_id.lock().map(|i| i.clone()).unwrap_or_default()
    }

    /// Starts watching the engine's task events and a worker for every ACTIVE or DRAINING
    /// service, and the sweeper that forgets INACTIVE services after the retention time.
    /// `instance_id` is this host's container instance id.
    pub async fn start(self: &Arc<Self>, instance_id: String) -> Result<(), SchedulerError> {
        if let Ok(mut i) = self.instance_id.lock() {
            *i = instance_id;
        }
        // Subscribed before any worker reads its tasks, so no change falls in between.
        let events = self.engine.subscribe();
        let dispatch = tokio::spawn(Arc::clone(self).dispatch(events).instrument(info_span!("services")));
        self.track(dispatch);
        let mut live = vec![];
        self.store.read(|r| {
            r.scan(SERVICES, Scan::all(), |_, s: ServiceRecord| {
                if s.status != ServiceStatus::Inactive {
                    live.push(s);
                }
                ControlFlow::Continue(())
            })
        })?;
        for s in live {
            info!(service = %s.arn, status = s.status.as_str(), "resuming service");
            self.spawn_worker(s);
        }
        let sweep = tokio::spawn(Arc::clone(self).sweep());
        self.track(sweep);
        Ok(())
    }

    fn track(&self, handle: JoinHandle<()>) {
        let mut b = self.background.lock().unwrap_or_else(|e| e.into_inner());
        b.retain(|h| !h.is_finished());
        b.push(handle);
    }

    /// Stops every worker (after its current pass, or a grace period) and the background
    /// tasks. Tasks keep running; the next start resumes the services.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        let handles: Vec<_> = self.background.lock().map(|mut b| b.drain(..).collect()).unwrap_or_default();
        for h in &handles {
            h.abort();
        }
        for h in handles {
            let _ = h.await;
        }
        let workers: Vec<JoinHandle<()>> = self
            .workers
            .lock()
            .map(|mut w| w.drain().filter_map(|(_, mut w)| w.handle.take()).collect())
            .unwrap_or_default();
        for mut h in workers {
            if tokio::time::timeout(WORKER_GRACE, &mut h).await.is_err() {
                warn!("a service worker did not finish its pass in time; stopping it");
                h.abort();
                let _ = h.await;
            }
        }
    }

    /// Pokes the worker of every service whose task changed.
    async fn dispatch(self: Arc<Self>, mut events: broadcast::Receiver<crate::engine::TaskEvent>) {
        loop {
            match events.recv().await {
                Ok(event) => {
                    if let Some(name) = event.task.group.strip_prefix("service:") {
                        self.poke(&service_key(&event.task.cluster, name));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    debug!(missed = n, "task events lagged; every service looks again");
                    let pokes: Vec<Arc<Notify>> = self
                        .workers
                        .lock()
                        .map(|w| w.values().map(|w| Arc::clone(&w.poke)).collect())
                        .unwrap_or_default();
                    for p in pokes {
                        p.notify_one();
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    fn poke(&self, key: &str) {
        if let Some(p) = self.workers.lock().ok().and_then(|w| w.get(key).map(|w| Arc::clone(&w.poke))) {
            p.notify_one();
        }
    }

    fn spawn_worker(self: &Arc<Self>, rec: ServiceRecord) {
        let key = service_key(&rec.cluster, &rec.name);
        let (tx, rx) = mpsc::unbounded_channel();
        let poke = Arc::new(Notify::new());
        let span = info_span!(parent: None, "service", arn = %rec.arn);
        let incarnation = rec.incarnation.clone();
        let run = Run {
            sched: Arc::clone(self),
            persisted: rec.clone(),
            rec,
            commands: rx,
            poke: Arc::clone(&poke),
            retry_at: None,
        };
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        // Spawned under the lock, so the worker's own removal of its entry comes after it.
        let handle = tokio::spawn(run.run().instrument(span));
        workers.insert(key, Worker { incarnation, commands: tx, poke, handle: Some(handle) });
    }

    fn worker_gone(&self, key: &str, incarnation: &str) {
        if let Ok(mut w) = self.workers.lock()
            && w.get(key).is_some_and(|w| w.incarnation == incarnation)
        {
            w.remove(key);
        }
    }

    /// Stores a new service, made and checked by the caller with its first deployment, and
    /// starts its worker. An ACTIVE service of the same name is returned as it is when the
    /// request is a retry of the one that made it (same `clientToken`, same request); else
    /// the creation was not idempotent. An INACTIVE one is replaced. Returns the service and
    /// whether it was created now.
    pub async fn create(
        self: &Arc<Self>,
        rec: ServiceRecord,
        tags: Vec<Tag>,
    ) -> Result<(ServiceRecord, bool), SchedulerError> {
        if self.shutdown.is_cancelled() {
            return Err(SchedulerError::ShuttingDown);
        }
        let stored = rec.clone();
        let (rec, created) = self
            .store
            .write_async(move |w| {
                let cluster_active =
                    w.get(CLUSTERS, &stored.cluster)?.is_some_and(|c| c.status.as_deref() == Some("ACTIVE"));
                if !cluster_active {
                    return Err(SchedulerError::ClusterNotFound);
                }
                let key = service_key(&stored.cluster, &stored.name);
                if let Some(existing) = w.get(SERVICES, &key)? {
                    match existing.status {
                        ServiceStatus::Active => {
                            let retry = existing.client_token.is_some()
                                && existing.client_token == stored.client_token
                                && existing.create_request == stored.create_request;
                            return if retry {
                                Ok((existing, false))
                            } else {
                                Err(SchedulerError::NotIdempotent)
                            };
                        }
                        ServiceStatus::Draining => return Err(SchedulerError::Draining),
                        ServiceStatus::Inactive => forget(w, &existing)?,
                    }
                }
                w.put(SERVICES, &key, &stored)?;
                for sd in &stored.open_deployments {
                    w.put(
                        SERVICE_DEPLOYMENTS,
                        &service_deployment_key(&stored.cluster, &stored.name, &sd.id),
                        sd,
                    )?;
                }
                for d in &stored.deployments {
                    let k = service_deployment_key(&stored.cluster, &stored.name, &d.revision.id);
                    w.put(SERVICE_REVISIONS, &k, &d.revision)?;
                }
                if !tags.is_empty() {
                    w.put(TAGS, &stored.arn, &tags)?;
                }
                Ok((stored, true))
            })
            .await?;
        if created {
            info!(service = %rec.arn, desired = rec.desired_count, "service created");
            self.spawn_worker(rec.clone());
        }
        Ok((rec, created))
    }

    fn commands(&self, cluster: &str, name: &str) -> Option<mpsc::UnboundedSender<Command>> {
        self.workers.lock().ok().and_then(|w| w.get(&service_key(cluster, name)).map(|w| w.commands.clone()))
    }

    /// Why a service has no worker: it does not exist, or it is not ACTIVE.
    fn absent(&self, cluster: &str, name: &str) -> SchedulerError {
        match self.store.read(|r| r.get(SERVICES, &service_key(cluster, name))) {
            Ok(Some(_)) => SchedulerError::ServiceNotActive,
            Ok(None) => SchedulerError::ServiceNotFound,
            Err(e) => e.into(),
        }
    }

    async fn ask<T>(
        &self,
        cluster: &str,
        name: &str,
        make: impl FnOnce(oneshot::Sender<Result<T, SchedulerError>>) -> Command,
    ) -> Result<T, SchedulerError> {
        let Some(commands) = self.commands(cluster, name) else { return Err(self.absent(cluster, name)) };
        let (tx, rx) = oneshot::channel();
        if commands.send(make(tx)).is_err() {
            return Err(self.absent(cluster, name));
        }
        match rx.await {
            Ok(r) => r,
            // The worker ended meanwhile (INACTIVE, or shutting down).
            Err(_) if self.shutdown.is_cancelled() => Err(SchedulerError::ShuttingDown),
            Err(_) => Err(self.absent(cluster, name)),
        }
    }

    /// Applies an UpdateService (checked by the caller) and answers with the service as
    /// stored, its new deployment first when the update started one.
    pub async fn update(
        &self,
        cluster: &str,
        name: &str,
        update: ServiceUpdate,
    ) -> Result<ServiceRecord, SchedulerError> {
        self.ask(cluster, name, |reply| Command::Update { update: Box::new(update), reply }).await
    }

    /// DeleteService: the service drains (DRAINING, desired 0, every task stopped), then
    /// becomes INACTIVE. Without `force` a replica service must be scaled to 0 first.
    pub async fn delete(
        &self,
        cluster: &str,
        name: &str,
        force: bool,
    ) -> Result<ServiceRecord, SchedulerError> {
        match self.ask(cluster, name, |reply| Command::Delete { force, reply }).await {
            // Deleting a service that is draining already answers with it.
            Err(SchedulerError::ServiceNotActive) => {
                let rec = self.store.read(|r| r.get(SERVICES, &service_key(cluster, name)))?;
                match rec {
                    Some(rec) if rec.status == ServiceStatus::Draining => Ok(rec),
                    _ => Err(SchedulerError::ServiceNotActive),
                }
            }
            other => other,
        }
    }

    /// StopServiceDeployment with a rollback: the deployment fails and the service goes back
    /// to the last deployment that completed.
    pub async fn stop_deployment(&self, cluster: &str, name: &str, id: &str) -> Result<(), SchedulerError> {
        let id = id.to_owned();
        match self.ask(cluster, name, |reply| Command::StopDeployment { id: id.clone(), reply }).await {
            Err(SchedulerError::ServiceNotActive | SchedulerError::ServiceNotFound) => {
                let key = service_deployment_key(cluster, name, &id);
                match self.store.read(|r| r.get(SERVICE_DEPLOYMENTS, &key))? {
                    Some(sd) => Err(SchedulerError::DeploymentFinished(sd.status.as_str())),
                    None => Err(SchedulerError::DeploymentNotFound),
                }
            }
            other => other,
        }
    }

    /// Forgets INACTIVE services (with their service deployments, revisions and tags) once
    /// the retention time has passed.
    async fn sweep(self: Arc<Self>) {
        let retention = self.cfg.inactive_retention;
        let every = Duration::from_secs(60).min(retention.max(Duration::from_secs(1)));
        loop {
            self.clock.sleep(every).await;
            if let Err(e) = self.expire().await {
                warn!(error = %crate::error_chain(&e), "cannot forget inactive services");
            }
        }
    }

    /// Forgets INACTIVE services older than the retention time. Returns how many went.
    pub async fn expire(&self) -> Result<usize, StoreError> {
        let cutoff = self.clock.now() - self.cfg.inactive_retention.as_secs_f64();
        let mut old = vec![];
        self.store.read(|r| {
            r.scan(SERVICES, Scan::all(), |_, s: ServiceRecord| {
                if s.status == ServiceStatus::Inactive && s.inactive_at.is_some_and(|at| at <= cutoff) {
                    old.push(s);
                }
                ControlFlow::Continue(())
            })
        })?;
        let n = old.len();
        if n > 0 {
            self.store
                .write_async(move |w| {
                    for s in &old {
                        // Re-read: the name may be in use again.
                        let key = service_key(&s.cluster, &s.name);
                        if w.get(SERVICES, &key)?.is_some_and(|now| now.incarnation == s.incarnation) {
                            forget(w, s)?;
                            w.delete(SERVICES, &key)?;
                        }
                    }
                    Ok::<_, StoreError>(())
                })
                .await?;
        }
        Ok(n)
    }
}

/// Removes what an old service left: its service deployments, revisions and tags.
fn forget(w: &crate::store::Writer<'_>, s: &ServiceRecord) -> Result<(), StoreError> {
    let prefix = service_deployment_key(&s.cluster, &s.name, "");
    delete_prefix(w, SERVICE_DEPLOYMENTS, &prefix)?;
    delete_prefix(w, SERVICE_REVISIONS, &prefix)?;
    w.delete(TAGS, &s.arn)?;
    Ok(())
}

fn delete_prefix<V: serde::de::DeserializeOwned>(
    w: &crate::store::Writer<'_>,
    table: crate::store::Table<V>,
    prefix: &str,
) -> Result<(), StoreError> {
    let end = prefix_end(prefix);
    let mut keys = vec![];
    let range = Scan { from: Bound::Included(prefix), to: Bound::Excluded(&end), reverse: false };
    w.reader().scan(table, range, |k, _| {
        keys.push(k.to_owned());
        ControlFlow::Continue(())
    })?;
    for k in keys {
        w.delete(table, &k)?;
    }
    Ok(())
}

/// The revisions with tasks of the service, for a new service deployment's sources.
pub fn revision_counts(s: &ServiceRecord, tasks: &[Arc<TaskRecord>]) -> Vec<RevisionCount> {
    let counts = Counts::of(tasks.iter().map(|t| t.as_ref()));
    let mut by_revision: BTreeMap<String, RevisionCount> = BTreeMap::new();
    for d in &s.deployments {
        let (running, pending, live) = counts.of_deployment(&d.id);
        if running + pending + live == 0 {
            continue;
        }
        let c = by_revision
            .entry(d.revision.id.clone())
            .or_insert_with(|| RevisionCount { revision: d.revision.id.clone(), ..Default::default() });
        c.running += running;
        c.pending += pending;
        c.requested += counts.desired_of(d, s.target_count());
    }
    by_revision.into_values().collect()
}

/// One service's worker.
struct Run {
    sched: Arc<Scheduler>,
    rec: ServiceRecord,
    /// The record as last written.
    persisted: ServiceRecord,
    commands: mpsc::UnboundedReceiver<Command>,
    poke: Arc<Notify>,
    /// When tasks that could not be placed are tried again.
    retry_at: Option<f64>,
}

impl Run {
    fn now(&self) -> f64 {
        self.sched.clock.now()
    }

    fn key(&self) -> String {
        service_key(&self.rec.cluster, &self.rec.name)
    }

    async fn run(mut self) {
        loop {
            while let Ok(cmd) = self.commands.try_recv() {
                self.command(cmd).await;
            }
            let wake = self.pass().instrument(debug_span!("reconcile")).await;
            if self.rec.status == ServiceStatus::Inactive {
                info!("service is INACTIVE");
                break;
            }
            let sleep = wake.map(|at| Duration::from_secs_f64((at - self.now()).max(0.0)));
            let timer = async {
                match sleep {
                    Some(d) => self.sched.clock.sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.sched.shutdown.cancelled() => break,
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.command(cmd).await,
                    None => break,
                },
                _ = self.poke.notified() => {}
                _ = timer => {}
            }
        }
        // Commands that arrived meanwhile are answered: the service is no longer ACTIVE.
        self.commands.close();
        while let Ok(cmd) = self.commands.try_recv() {
            self.command(cmd).await;
        }
        self.sched.worker_gone(&self.key(), &self.rec.incarnation);
    }

    /// The service's tasks as the engine has them now (any status it still keeps).
    fn tasks(&self) -> Vec<Arc<TaskRecord>> {
        let group = self.rec.group();
        self.sched
            .engine
            .tasks(&self.rec.cluster, None)
            .into_iter()
            .filter(|t| {
                t.group == group && t.started_by.as_deref().is_some_and(|s| s.starts_with("ecs-svc/"))
            })
            .collect()
    }

    async fn command(&mut self, cmd: Command) {
        let now = self.now();
        match cmd {
            Command::Update { update, reply } => {
                if self.rec.status != ServiceStatus::Active {
                    let _ = reply.send(Err(SchedulerError::ServiceNotActive));
                    return;
                }
                let starts = update.starts_deployment(&self.rec);
                update.apply_settings(&mut self.rec);
                if starts {
                    let sources = revision_counts(&self.rec, &self.tasks());
                    let revision = self.rec.revision(now);
                    let id = service::start_deployment(&mut self.rec, revision, None, sources, now);
                    info!(deployment = %id, task_definition = %self.rec.task_definition, "deployment started");
                }
                self.rec.updated_at = now;
                let result = self.persist().await.map(|()| self.rec.clone());
                let _ = reply.send(result);
            }
            Command::Delete { force, reply } => {
                if self.rec.status != ServiceStatus::Active {
                    let _ = reply.send(Err(SchedulerError::ServiceNotActive));
                    return;
                }
                if self.rec.scheduling_strategy == service::SchedulingStrategy::Replica
                    && self.rec.desired_count > 0
                    && !force
                {
                    let _ = reply.send(Err(ServiceError::ScaledAboveZero.into()));
                    return;
                }
                self.rec.status = ServiceStatus::Draining;
                self.rec.desired_count = 0;
                self.rec.updated_at = now;
                info!(force, "service draining");
                let result = self.persist().await.map(|()| self.rec.clone());
                let _ = reply.send(result);
            }
            Command::StopDeployment { id, reply } => {
                let result = self.stop_deployment(&id, now).await;
                let _ = reply.send(result);
            }
        }
    }

    async fn stop_deployment(&mut self, id: &str, now: f64) -> Result<(), SchedulerError> {
        let Some(sd) = self.rec.open_deployments.iter().find(|d| d.id == id) else {
            let key = service_deployment_key(&self.rec.cluster, &self.rec.name, id);
            return match self.sched.store.read(|r| r.get(SERVICE_DEPLOYMENTS, &key))? {
                Some(sd) if sd.incarnation == self.rec.incarnation => {
                    Err(SchedulerError::DeploymentFinished(sd.status.as_str()))
                }
                _ => Err(SchedulerError::DeploymentNotFound),
            };
        };
        if sd.status.is_finished() {
            return Err(SchedulerError::DeploymentFinished(sd.status.as_str()));
        }
        if sd.rollback.is_some() {
            // Already rolling back: it carries on.
            return Ok(());
        }
        let carried_by_primary = self.rec.primary().is_some_and(|p| p.service_deployment == id);
        if !carried_by_primary {
            return Err(SchedulerError::DeploymentFinished(sd.status.as_str()));
        }
        if let Some(sd) = self.rec.open_deployment_mut(id) {
            sd.status = ServiceDeploymentStatus::RollbackRequested;
            sd.updated_at = now;
        }
        let sources = revision_counts(&self.rec, &self.tasks());
        let reason = "Service deployment rolled back because of a StopServiceDeployment request.";
        let back = decide::fail_primary(&mut self.rec, reason, true, sources, now);
        info!(deployment = id, rollback = ?back, "service deployment stopped");
        self.persist().await
    }

    /// One reconcile pass. Returns when the next one is due without an event.
    async fn pass(&mut self) -> Option<f64> {
        let now = self.now();
        let timing = self.sched.timing();
        let records = self.tasks();
        let mut tasks: Vec<TaskState> = records.iter().map(|t| TaskState::of(t)).collect();
        for task in &mut tasks {
            task.protected_until = self.sched.engine.protection(&self.rec.cluster, &task.id).expires_at;
        }
        decide::account(&mut self.rec, &tasks, now, timing);
        if decide::circuit_breaker_tripped(&self.rec) {
            let rollback = self.rec.circuit_breaker().rollback;
            let sources = revision_counts(&self.rec, &records);
            let back = decide::fail_primary(&mut self.rec, CIRCUIT_BREAKER_REASON, rollback, sources, now);
            warn!(rollback = ?back, "deployment circuit breaker tripped");
        }
        if self.rec.target_count() > 0 {
            self.pin_images().await;
        }
        // What launches and stops decide must be durable first: a rollback deployment, the
        // pinned images, the failure counts.
        if let Err(e) = self.persist().await {
            warn!(error = %crate::error_chain(&e), "cannot record the service; trying again shortly");
            return Some(now + 1.0);
        }
        let plan = decide::plan(&self.rec, &tasks, now, timing);
        let mut acted = false;
        if !plan.stop.is_empty() {
            self.stop(&plan.stop, now).await;
            acted = true;
        }
        let placed = if plan.start > 0 {
            acted = true;
            self.launch(plan.start, plan.replacing, now).await
        } else {
            true
        };
        if plan.distinct_blocked {
            let message =
                events::unplaced(&self.rec.name, &self.sched.instance_id(), events::Unplaced::Distinct);
            self.rec.report("place", message, now);
        } else if placed && plan.start > 0 {
            self.rec.clear_report("place");
        }
        if !placed || plan.distinct_blocked {
            self.retry_at = Some(now + PLACEMENT_RETRY);
        } else {
            self.retry_at = None;
        }
        if plan.protected.is_empty() {
            self.rec.clear_report("protect");
        } else {
            self.rec.report("protect", events::protected(&self.rec.name, plan.protected.len()), now);
        }
        if plan.stalled {
            self.rec.report("stall", events::stalled(&self.rec.name), now);
        } else if acted {
            self.rec.clear_report("stall");
        }
        if !acted {
            let progress = decide::progress(&mut self.rec, &tasks, now, timing);
            if progress.completed {
                info!(
                    deployment = self.rec.primary().map(|p| p.id.as_str()).unwrap_or_default(),
                    "deployment completed"
                );
            }
        }
        self.count_revisions(&records);
        if let Err(e) = self.persist().await {
            warn!(error = %crate::error_chain(&e), "cannot record the service; trying again shortly");
            return Some(now + 1.0);
        }
        [plan.wake_at, decide::steady_repeat_at(&self.rec), self.retry_at]
            .into_iter()
            .flatten()
            .reduce(f64::min)
    }

    /// Brings the open service deployments' task counts up to date.
    fn count_revisions(&mut self, records: &[Arc<TaskRecord>]) {
        let current = revision_counts(&self.rec, records);
        let desired = self.rec.target_count();
        let current_sd = self.rec.current_service_deployment.clone();
        let now = self.now();
        for sd in &mut self.rec.open_deployments {
            if sd.status.is_finished() {
                continue;
            }
            let of = |rev: &str| current.iter().find(|c| c.revision == rev).cloned().unwrap_or_default();
            let mut target = of(&sd.target.revision);
            target.revision = sd.target.revision.clone();
            target.requested = if sd.id == current_sd { desired } else { target.requested };
            let sources: Vec<RevisionCount> = sd
                .sources
                .iter()
                .map(|s| RevisionCount { revision: s.revision.clone(), ..of(&s.revision) })
                .collect();
            if target != sd.target || sources != sd.sources {
                sd.target = target;
                sd.sources = sources;
                sd.updated_at = now;
            }
            sd.threshold = service::circuit_breaker_threshold(
                desired,
                &sd.deployment_configuration.deployment_circuit_breaker.clone().unwrap_or_default(),
            );
        }
        // A service deployment counts the failed tasks of its deployment; once it rolls
        // back, it keeps the count that made it fail.
        let failed: BTreeMap<String, i32> =
            self.rec.deployments.iter().map(|d| (d.service_deployment.clone(), d.failed_tasks)).collect();
        for sd in &mut self.rec.open_deployments {
            if let Some(n) = failed.get(&sd.id)
                && *n != sd.failure_count
                && !sd.status.is_finished()
                && sd.rollback.is_none()
            {
                sd.failure_count = *n;
            }
        }
    }

    /// Resolves the PRIMARY deployment's image tags to digests once (not for containers that
    /// opt out with `versionConsistency: disabled`); its tasks then all run the same images.
    async fn pin_images(&mut self) {
        let Some(p) = self.rec.primary() else { return };
        if p.revision.images.is_some() || p.rollout_state == RolloutState::Failed {
            return;
        }
        let Some(td) = self.definition(&p.revision.task_definition) else { return };
        let mut images = vec![];
        for c in td.container_definitions.as_deref().unwrap_or_default() {
            let image = c.image.clone().unwrap_or_default();
            let digest = if c.version_consistency.as_deref() == Some("disabled") {
                None
            } else {
                match self.sched.engine.pinnable_digest(&image).await {
                    Ok(d) => d,
                    Err(e) => {
                        debug!(image = %image, error = %e, "cannot resolve the image's digest; its tag is used");
                        None
                    }
                }
            };
            images.push(PinnedImage { container: c.name.clone().unwrap_or_default(), image, digest });
        }
        if let Some(p) = self.rec.primary_mut() {
            p.revision.images = Some(images);
        }
    }

    /// The task definition by ARN, whatever its status (a service keeps running a
    /// deregistered revision): ecsd's own, or the copy of an upstream one (`ECS_ENDPOINT_URL`)
    /// the API kept when the service named it.
    fn definition(&self, arn: &str) -> Option<TaskDefinition> {
        let read = |r: &crate::store::Reader<'_>| match self.sched.identity.parse(arn) {
            Ok(ResourceArn::TaskDefinition { family, revision }) => {
                r.get(TASK_DEFINITIONS, &task_definition_key(&family, revision))
            }
            _ => match upstream_arn_key(arn) {
                Some(key) => r.get(UPSTREAM_TASK_DEFINITIONS, &key),
                None => Ok(None),
            },
        };
        match self.sched.store.read(read) {
            Ok(td) => td,
            Err(e) => {
                warn!(error = %crate::error_chain(&e), "cannot read the task definition");
                None
            }
        }
    }

    /// The tags a new task gets: the task definition's or the service's (`propagateTags`),
    /// and with `enableECSManagedTags` the cluster's and the service's names.
    fn task_tags(&self) -> Vec<Tag> {
        let from = match self.rec.propagate_tags.as_str() {
            "TASK_DEFINITION" => Some(self.rec.task_definition.clone()),
            "SERVICE" => Some(self.rec.arn.clone()),
            _ => None,
        };
        let mut tags: Vec<Tag> = from
            .and_then(|arn| self.sched.store.read(|r| r.get(TAGS, &arn)).ok().flatten())
            .unwrap_or_default();
        if self.rec.enable_ecs_managed_tags {
            for (k, v) in
                [("aws:ecs:clusterName", &self.rec.cluster), ("aws:ecs:serviceName", &self.rec.name)]
            {
                tags.retain(|t| t.key.as_deref() != Some(k));
                tags.push(Tag { key: Some(k.to_owned()), value: Some(v.clone()) });
            }
        }
        tags
    }

    /// Starts `count` tasks of the PRIMARY deployment. Returns false when some could not be
    /// placed (reported as an event).
    async fn launch(&mut self, count: usize, replacing: usize, now: f64) -> bool {
        let Some(p) = self.rec.primary().cloned() else { return true };
        let Some(mut definition) = self.definition(&p.revision.task_definition) else {
            let message = format!(
                "(service {}) failed to launch a task with (error TaskDefinition not found: {}).",
                self.rec.name, p.revision.task_definition
            );
            self.rec.report("place", message, now);
            return false;
        };
        for c in definition.container_definitions.iter_mut().flatten() {
            let pinned = p.revision.images.iter().flatten().find(|i| Some(&i.container) == c.name.as_ref());
            if let Some(PinnedImage { image, digest: Some(digest), .. }) = pinned {
                c.image = Some(format!("{image}@{digest}"));
            }
        }
        let overrides = TaskOverride {
            container_overrides: Some(
                definition
                    .container_definitions
                    .iter()
                    .flatten()
                    .map(|c| ContainerOverride { name: c.name.clone(), ..Default::default() })
                    .collect(),
            ),
            inference_accelerator_overrides: Some(vec![]),
            ..Default::default()
        };
        let spec = LaunchSpec {
            cluster: self.rec.cluster.clone(),
            definition,
            overrides: Some(overrides),
            started_by: Some(p.id.clone()),
            group: Some(self.rec.group()),
            launch_type: p.revision.task_launch_type(),
            tags: self.task_tags(),
            enable_execute_command: self.rec.enable_execute_command,
            network_configuration: p.revision.network_configuration.clone(),
            container_instance_arn: self
                .sched
                .identity
                .container_instance_arn(&self.rec.cluster, &self.sched.instance_id()),
            platform_version: p.revision.platform_version.clone(),
        };
        let placed = match self.sched.engine.launch(&spec, count).await {
            Ok(placed) => placed,
            Err(EngineError::Launch(e)) => {
                let message =
                    format!("(service {}) failed to launch a task with (error {e}).", self.rec.name);
                self.rec.report("place", message, now);
                return false;
            }
            Err(e) => {
                warn!(error = %crate::error_chain(&e), "cannot launch the service's tasks");
                return false;
            }
        };
        let mut started = vec![];
        let mut unplaced = None;
        for p in placed {
            match p {
                Placed::Launched(t) => started.push(t.id.clone()),
                Placed::Unplaced(short) => {
                    unplaced.get_or_insert(match short {
                        Shortfall::Cpu => events::Unplaced::Cpu,
                        Shortfall::Memory => events::Unplaced::Memory,
                        Shortfall::Ports | Shortfall::PortsUdp => events::Unplaced::Ports,
                    });
                }
                Placed::AgentUnavailable(_) => {
                    unplaced.get_or_insert(events::Unplaced::Agent);
                }
            }
        }
        if !started.is_empty() {
            let replaced = replacing.min(started.len());
            let message = if replaced > 0 {
                events::started_replacing(&self.rec.name, &started, replaced)
            } else {
                events::started(&self.rec.name, &started)
            };
            info!(deployment = %p.id, tasks = ?started, "started tasks");
            self.rec.push_event(message, now);
            self.rec.updated_at = now;
        }
        match unplaced {
            Some(why) => {
                let message = events::unplaced(&self.rec.name, &self.sched.instance_id(), why);
                self.rec.report("place", message, now);
                false
            }
            None => true,
        }
    }

    /// Stops tasks as planned, each with the stop code and reason ECS gives.
    async fn stop(&mut self, stops: &[decide::Stop], now: f64) {
        let mut set = tokio::task::JoinSet::new();
        for s in stops {
            if s.why == StopWhy::Unhealthy {
                self.rec.push_event(events::unhealthy(&self.rec.name, &s.task), now);
            }
            let reason = match s.why {
                StopWhy::Scale => decide::scaling_reason(&s.deployment),
                StopWhy::Unhealthy => decide::UNHEALTHY_REASON.to_owned(),
            };
            let engine = Arc::clone(&self.sched.engine);
            let (cluster, id) = (self.rec.cluster.clone(), s.task.clone());
            set.spawn(async move {
                let recorded = engine
                    .stop(&cluster, &id, StopReason::new(StopCode::ServiceSchedulerInitiated, reason))
                    .await;
                (id, recorded.is_some())
            });
        }
        let mut stopped = vec![];
        while let Some(joined) = set.join_next().await {
            if let Ok((id, true)) = joined {
                stopped.push(id);
            }
        }
        // In the plan's order, as the event lists them.
        stopped.sort_by_key(|id| stops.iter().position(|s| &s.task == id));
        if !stopped.is_empty() {
            info!(tasks = ?stopped, "stopped tasks");
            self.rec.push_event(events::stopped(&self.rec.name, &stopped), now);
            self.rec.updated_at = now;
        }
    }

    /// Writes the record (and its service deployments and revisions) when it changed since
    /// the last write; finished service deployments are written one last time and leave it.
    async fn persist(&mut self) -> Result<(), SchedulerError> {
        if self.rec == self.persisted {
            return Ok(());
        }
        let mut rec = self.rec.clone();
        let finished: Vec<_> =
            rec.open_deployments.iter().filter(|d| d.status.is_finished()).cloned().collect();
        rec.open_deployments.retain(|d| !d.status.is_finished());
        let revisions: Vec<service::Revision> = rec
            .deployments
            .iter()
            .filter(|d| self.persisted.deployment(&d.id).is_none_or(|old| old.revision != d.revision))
            .map(|d| d.revision.clone())
            .collect();
        let changed_sds: Vec<_> = rec
            .open_deployments
            .iter()
            .chain(finished.iter())
            .filter(|sd| !self.persisted.open_deployments.contains(sd))
            .cloned()
            .collect();
        let stored = rec.clone();
        let write = self
            .sched
            .store
            .write_async(move |w| {
                let key = service_key(&stored.cluster, &stored.name);
                let mine = w.get(SERVICES, &key)?.is_some_and(|s| s.incarnation == stored.incarnation);
                if !mine {
                    return Err(SchedulerError::ServiceNotFound);
                }
                w.put(SERVICES, &key, &stored)?;
                for sd in &changed_sds {
                    w.put(
                        SERVICE_DEPLOYMENTS,
                        &service_deployment_key(&stored.cluster, &stored.name, &sd.id),
                        sd,
                    )?;
                }
                for rev in &revisions {
                    w.put(
                        SERVICE_REVISIONS,
                        &service_deployment_key(&stored.cluster, &stored.name, &rev.id),
                        rev,
                    )?;
                }
                Ok(())
            })
            .await;
        match write {
            Ok(()) => {
                self.rec = rec.clone();
                self.persisted = rec;
                Ok(())
            }
            // What was not written did not happen: the next pass decides again from the
            // record as stored.
            Err(SchedulerError::Store(e)) => {
                self.rec = self.persisted.clone();
                Err(SchedulerError::Store(e))
            }
            Err(SchedulerError::ServiceNotFound) => {
                // Another service of this name replaced this one: this worker has nothing
                // left to do.
                warn!("the service was replaced; its worker stops");
                self.rec.status = ServiceStatus::Inactive;
                Err(SchedulerError::ServiceNotFound)
            }
            Err(e) => Err(e),
        }
    }
}
