//! One task's supervisor: a level-triggered loop that compares the task's desired status
//! with what is true, acts, records, and waits for the next message or deadline. The same
//! loop runs a new task and re-adopts one after a restart. The decisions themselves are in
//! `decide`; this is the part that acts.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::decide::{self, CheckResult, Deps};
use super::failure::{CreateFailure, StartFailure};
use super::images::{self, Plan, PullBehavior};
use super::registry_auth::{AuthError, AwsKeys, KeysError};
use super::{Engine, Msg, prepare};
use crate::endpoints::ResolvedEnv;
use crate::model::shapes::ContainerDefinition;
use crate::model::task::{
    AttachmentStatus, ContainerRecord, ContainerStatus, Health, StopCode, StopReason, TaskRecord, TaskStatus,
};
use crate::model::time::Clock;
use crate::runtime::registry::manifest::Platform;
use crate::runtime::{
    ContainerState, Image, ImageSummary, ProcessStatus, PullOptions, Runtime, RuntimeError, Stdio,
};
use crate::spec;

const SIGKILL: i32 = 9;
/// How soon a runtime or store call that failed is tried again.
const RETRY_AFTER: f64 = 1.0;
/// The longest wait between attempts to release what a stopped task holds.
const RELEASE_RETRY_MAX: f64 = 30.0;

/// Records an exit on a container.
pub(crate) fn mark_exited(c: &mut ContainerRecord, code: i32, at: f64) {
    c.status = ContainerStatus::Stopped;
    c.exit_code = Some(code);
    c.finished_at = Some(at);
}

struct Supervisor {
    engine: Arc<Engine>,
    rec: TaskRecord,
    inbox: mpsc::UnboundedReceiver<Msg>,
    /// Shared with the engine: set once the task is on its way to STOPPED.
    stopping: Arc<AtomicBool>,
    images: HashMap<String, Image>,
    health: HashMap<String, JoinHandle<()>>,
    /// When a call that failed should be tried again.
    retry_at: Option<f64>,
    /// How many times in a row releasing the task's resources has failed.
    release_failures: u32,
    /// The record has changes not yet recorded.
    dirty: bool,
    /// Stop requests, answered once the record that has them is durable.
    answers: Vec<oneshot::Sender<Arc<TaskRecord>>>,
    /// Each container's variables from `environmentFiles` and `secrets`, resolved when the
    /// task starts (again after a restart, never stored).
    resolved: Option<HashMap<String, ResolvedEnv>>,
    /// The pull step is done (again after a restart, for the containers still pending).
    pulled: bool,
    /// The process of each container this supervisor started, by runtime id: an exit of any
    /// other process of that id is an earlier incarnation's (one an ecsd killed mid-start
    /// created), reported late.
    pids: HashMap<String, u32>,
}

/// One image a task needs, and the containers that use it.
struct Wanted {
    /// Normalised.
    name: String,
    /// As the container definition names it.
    original: String,
    containers: Vec<usize>,
    repository_credentials: Option<String>,
}

/// Why one pull failed.
enum PullFailure {
    Runtime(RuntimeError),
    Auth(AuthError),
}

/// The task's execution role keys, fetched only when a pull needs them (ECR, Secrets
/// Manager).
struct ExecutionKeys {
    engine: Arc<Engine>,
    rec: TaskRecord,
}

#[async_trait::async_trait]
impl AwsKeys for ExecutionKeys {
    async fn keys(&self) -> Result<crate::aws::Keys, KeysError> {
        self.engine.cfg.endpoints.execution_keys(&self.rec).await.map_err(KeysError::Execution)
    }
}

pub(crate) async fn run(
    engine: Arc<Engine>,
    rec: TaskRecord,
    inbox: mpsc::UnboundedReceiver<Msg>,
    stopping: Arc<AtomicBool>,
) {
    let mut s = Supervisor {
        engine,
        rec,
        inbox,
        stopping,
        images: HashMap::new(),
        health: HashMap::new(),
        retry_at: None,
        release_failures: 0,
        dirty: false,
        answers: vec![],
        resolved: None,
        pulled: false,
        pids: HashMap::new(),
    };
    // A re-adopted task's endpoints come back on its namespaces.
    if s.rec.last > TaskStatus::Provisioning
        && s.rec.last < TaskStatus::Deprovisioning
        && let Err(e) = s.engine.open_endpoints(&s.rec).await
    {
        warn!(error = %e, "cannot reopen the task's endpoints");
    }
    // A re-adopted task's containers ship their logs again, from their checkpoints.
    if s.rec.last > TaskStatus::Provisioning && s.rec.last < TaskStatus::Stopped {
        for c in s.rec.containers.iter().filter(|c| c.started_at.is_some()) {
            super::awslogs::start_for(&s.engine, &s.rec, &c.name);
        }
    }
    // A re-adopted task's running containers get their health checks back.
    for c in s.rec.containers.clone() {
        if c.status == ContainerStatus::Running
            && s.rec.desired == TaskStatus::Running
            && let Some(def) = s.rec.effective(&c.name).cloned()
        {
            s.start_health(&def, &c.runtime_id);
        }
    }
    let shutdown = s.engine.shutdown.clone();
    loop {
        s.step().await;
        s.persist().await;
        if s.rec.last == TaskStatus::Stopped {
            break;
        }
        let wait = decide::next_deadline(&s.rec, s.retry_at, s.engine.timeouts())
            .map(|at| Duration::from_secs_f64((at - s.engine.now()).max(0.0)));
        let sleep = match wait {
            Some(d) => s.engine.clock.sleep(d),
            None => Box::pin(std::future::pending()),
        };
        tokio::select! {
            biased;
            // At shutdown a running task keeps running; the next start re-adopts it. A task
            // that is stopping finishes its teardown first.
            _ = shutdown.cancelled(), if !s.stopping.load(Ordering::SeqCst) => break,
            msg = s.inbox.recv() => match msg {
                Some(m) => s.apply(m),
                None => break,
            },
            _ = sleep => {}
        }
        while let Ok(m) = s.inbox.try_recv() {
            s.apply(m);
        }
        s.persist().await;
    }
}

impl Drop for Supervisor {
    /// Health-check loops belong to their supervisor: they end with it, also when the engine
    /// aborts it at shutdown.
    fn drop(&mut self) {
        for (_, h) in self.health.drain() {
            h.abort();
        }
    }
}

impl Supervisor {
    fn now(&self) -> f64 {
        self.engine.now()
    }

    /// Records the changes made since the last call, then answers the stop requests that
    /// wait for them. A record that cannot be written stays dirty and is tried again.
    async fn persist(&mut self) {
        if !self.dirty {
            if !self.answers.is_empty()
                && let Some(task) = self.engine.view.get(&self.rec.cluster, &self.rec.id)
            {
                for tx in self.answers.drain(..) {
                    let _ = tx.send(Arc::clone(&task));
                }
            }
            return;
        }
        let mut next = self.rec.clone();
        next.version += 1;
        match self.engine.record(next).await {
            Ok(task) => {
                self.rec.version = task.version;
                self.dirty = false;
                for tx in self.answers.drain(..) {
                    let _ = tx.send(Arc::clone(&task));
                }
            }
            Err(e) => {
                warn!(error = %crate::error_chain(&e), "cannot record the task; trying again");
                self.retry_at = Some(self.now() + RETRY_AFTER);
            }
        }
    }

    async fn set_last(&mut self, status: TaskStatus) {
        if self.rec.last != status {
            info!(from = self.rec.last.as_str(), to = status.as_str(), "task status");
            self.rec.last = status;
            self.dirty = true;
            self.persist().await;
        }
    }

    /// Waits for `fut` while still taking messages, so a stop (or an exit) asked during a
    /// long step is recorded and answered at once. `fut` must not borrow the supervisor.
    async fn wait_for<T>(&mut self, fut: impl Future<Output = T>) -> T {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                biased;
                out = &mut fut => return out,
                Some(msg) = self.inbox.recv() => {
                    self.apply(msg);
                    self.persist().await;
                }
            }
        }
    }

    /// Turns the task toward STOPPED, once; later requests keep the first reason.
    fn request_stop(&mut self, reason: StopReason) {
        if self.rec.desired == TaskStatus::Stopped {
            return;
        }
        info!(code = reason.code.as_str(), reason = %reason.reason, "stopping task");
        self.rec.desired = TaskStatus::Stopped;
        self.rec.stop_code = Some(reason.code);
        self.rec.stopped_reason = Some(reason.reason);
        self.rec.stopping_at = Some(self.now());
        self.stopping.store(true, Ordering::SeqCst);
        self.dirty = true;
    }

    fn container(&mut self, runtime_id: &str) -> Option<&mut ContainerRecord> {
        self.rec.containers.iter_mut().find(|c| c.runtime_id == runtime_id)
    }

    fn apply(&mut self, msg: Msg) {
        match msg {
            Msg::Stop { reason, recorded } => {
                self.request_stop(reason);
                self.answers.extend(recorded);
            }
            Msg::Exit { runtime_id, pid, code, at } => {
                let started = self.pids.get(&runtime_id).copied();
                let Some(c) = self.container(&runtime_id) else { return };
                if c.status == ContainerStatus::Stopped {
                    return;
                }
                // Not started yet, or started again since: the exit is of an earlier process.
                let stale = c.status == ContainerStatus::Pending
                    || matches!((pid, started), (Some(got), Some(ours)) if got != ours);
                if stale {
                    info!(container = %c.name, code, pid, "ignoring the exit of an earlier process of the container");
                    return;
                }
                mark_exited(c, code, at);
                let name = c.name.clone();
                info!(container = %name, code, "container exited");
                if let Some(h) = self.health.remove(&runtime_id) {
                    h.abort();
                }
                self.dirty = true;
                if self.rec.is_essential(&name) {
                    self.request_stop(StopReason::essential_exited());
                }
            }
            Msg::Health { runtime_id, result, at } => self.apply_health(&runtime_id, result, at),
            Msg::Lost { runtime_id, listed_at } => {
                let now = self.now();
                let Some(c) = self.container(&runtime_id) else { return };
                // Started after the listing: it was simply not there yet.
                if c.status != ContainerStatus::Running || c.started_at.is_none_or(|s| s >= listed_at) {
                    return;
                }
                warn!(container = %c.name, "container is gone from the runtime");
                c.status = ContainerStatus::Stopped;
                c.finished_at = Some(now);
                c.reason = Some(
                    "CannotInspectContainerError: the container was gone from the runtime when ecsd reconnected".into(),
                );
                self.dirty = true;
            }
        }
    }

    fn apply_health(&mut self, runtime_id: &str, result: CheckResult, at: f64) {
        let Some(idx) = self.rec.containers.iter().position(|c| c.runtime_id == runtime_id) else { return };
        if self.rec.containers[idx].status != ContainerStatus::Running {
            return;
        }
        let name = self.rec.containers[idx].name.clone();
        let hc = self.rec.effective(&name).and_then(|d| d.health_check.clone()).unwrap_or_default();
        let c = &mut self.rec.containers[idx];
        let started = c.started_at.unwrap_or(at);
        let h = c.health.get_or_insert_with(Health::default);
        let before = h.status;
        if decide::health_after(h, &hc, started, result, at) {
            info!(container = %name, from = before.as_str(), to = h.status.as_str(), "health");
            self.dirty = true;
        }
    }

    async fn step(&mut self) {
        self.retry_at = None;
        // Level-triggered, so exits recorded while ecsd was down count too.
        if decide::essential_stopped(&self.rec) {
            self.request_stop(StopReason::essential_exited());
        }
        if self.rec.desired == TaskStatus::Running {
            self.step_running().await;
        }
        if self.rec.desired == TaskStatus::Stopped {
            self.step_stopping().await;
        }
    }

    async fn step_running(&mut self) {
        if self.rec.last == TaskStatus::Provisioning {
            let specs =
                prepare::sandbox_specs(&self.rec, &self.engine.cfg.network, &self.engine.identity.region);
            let (engine, id) = (Arc::clone(&self.engine), self.rec.id.clone());
            let created = self.wait_for(async move { engine.network.create(&id, &specs).await }).await;
            match created {
                Ok(sandboxes) => {
                    prepare::apply_sandboxes(&mut self.rec, sandboxes, &self.engine.cfg.network);
                    self.apply_cgroups();
                    if self.rec.credentials_id.is_none() && self.rec.task_role_arn().is_some() {
                        self.rec.credentials_id = Some(uuid::Uuid::new_v4().to_string());
                    }
                    for c in self.rec.containers.iter_mut().filter(|c| c.endpoint_id.is_none()) {
                        c.endpoint_id = Some(uuid::Uuid::new_v4().to_string());
                    }
                    self.dirty = true;
                    self.persist().await;
                    if self.rec.desired != TaskStatus::Running {
                        return;
                    }
                    let (engine, rec) = (Arc::clone(&self.engine), self.rec.clone());
                    if let Err(e) = self.wait_for(async move { engine.open_endpoints(&rec).await }).await {
                        self.fail_to_start(None, StartFailure::Endpoints(e));
                        return;
                    }
                    self.rec.connectivity_at = Some(self.now());
                    self.dirty = true;
                    self.set_last(TaskStatus::Pending).await;
                }
                Err(e) => {
                    self.fail_to_start(None, StartFailure::Network(e));
                    return;
                }
            }
        }
        if self.rec.desired != TaskStatus::Running {
            return;
        }
        if !self.pulled {
            self.pull().await;
            if self.rec.desired != TaskStatus::Running {
                return;
            }
            self.pulled = true;
        }
        if self.resolved.is_none() && self.rec.containers.iter().any(|c| c.status == ContainerStatus::Pending)
        {
            let (engine, rec) = (Arc::clone(&self.engine), self.rec.clone());
            let resolved = self.wait_for(async move { engine.cfg.endpoints.resolve(&rec).await }).await;
            match resolved {
                Ok(resolved) => self.resolved = Some(resolved),
                Err(e) => {
                    self.fail_to_start(None, StartFailure::Secrets(e));
                    return;
                }
            }
        }
        loop {
            let mut progressed = false;
            for i in 0..self.rec.containers.len() {
                if self.rec.desired != TaskStatus::Running {
                    return;
                }
                if self.rec.containers[i].status != ContainerStatus::Pending {
                    continue;
                }
                match decide::dependencies(&self.rec, i, self.now(), self.engine.timeouts()) {
                    Deps::Ready => {
                        self.launch(i).await;
                        progressed = true;
                    }
                    Deps::Waiting => {}
                    Deps::Never(why) => {
                        let container = self.rec.containers[i].name.clone();
                        self.fail_to_start(Some(i), StartFailure::Dependency { container, why });
                        return;
                    }
                }
            }
            if !progressed {
                break;
            }
        }
        let waiting = self.rec.containers.iter().any(|c| c.status == ContainerStatus::Pending);
        if !waiting && self.rec.last < TaskStatus::Running {
            self.rec.started_at = Some(self.now());
            self.dirty = true;
            self.set_last(TaskStatus::Running).await;
        }
    }

    /// The task cgroup with the task's cpu and memory, as the agent sets it. A host that
    /// cannot (no permission, no controller) still runs the task, with container limits only.
    fn apply_cgroups(&self) {
        if let Some(why) = &self.engine.cfg.limits_unavailable {
            let containers = &self.rec.containers_effective;
            let asked = self.rec.cpu.is_some()
                || self.rec.memory.is_some()
                || containers
                    .iter()
                    .any(|c| c.cpu > 0 || c.memory.is_some() || c.memory_reservation.is_some());
            if asked {
                warn!(
                    cpu = self.rec.cpu.as_deref(),
                    memory = self.rec.memory.as_deref(),
                    "the task's cpu and memory limits are not applied: {why}"
                );
            }
            return;
        }
        let Some(cg) = &self.engine.cfg.cgroups else { return };
        let limits = super::cgroups::TaskLimits {
            cpu_units: self.rec.cpu.as_deref().and_then(|c| c.parse().ok()),
            shares: self.rec.containers_effective.iter().map(|c| c.cpu.clamp(2, 262_144) as u64).sum(),
            memory_mib: self.rec.memory.as_deref().and_then(|m| m.parse().ok()),
        };
        if let Err(e) = cg.apply(&self.rec.id, limits) {
            warn!(error = %e, "cannot set the task's cgroup limits; containers keep their own");
        }
    }

    /// Gets every image the task still needs as `ECS_IMAGE_PULL_BEHAVIOR` says: pulled from
    /// its registry (all of them at once, while the task is PENDING) or taken as present.
    /// A pull that fails stops the task with the agent's reason, unless the behaviour lets the
    /// task run from an image already present.
    async fn pull(&mut self) {
        let engine = Arc::clone(&self.engine);
        let behavior = engine.cfg.images.pull_behavior;
        // Each image once, with the containers that use it and their repositoryCredentials.
        let mut wanted: Vec<Wanted> = Vec::new();
        for i in 0..self.rec.containers.len() {
            if self.rec.containers[i].status != ContainerStatus::Pending {
                continue;
            }
            let original = self.rec.containers[i].image.clone();
            let name = match crate::runtime::reference::normalize(&original) {
                Ok(n) => n,
                Err(e) => {
                    self.fail_to_start(Some(i), StartFailure::Pull(e));
                    return;
                }
            };
            let creds = self
                .rec
                .effective(&self.rec.containers[i].name)
                .and_then(|d| d.repository_credentials.as_ref())
                .and_then(|r| r.credentials_parameter.clone());
            match wanted.iter_mut().find(|w| w.name == name && w.repository_credentials == creds) {
                Some(w) => w.containers.push(i),
                None => {
                    wanted.push(Wanted { name, original, containers: vec![i], repository_credentials: creds })
                }
            }
        }
        if wanted.is_empty() {
            return;
        }
        // No cleanup cycle removes an image between this decision and the containers' creation.
        let lock = Arc::clone(&engine);
        let _shared = lock.image_lock.read().await;
        let local: Vec<ImageSummary> = match behavior {
            PullBehavior::Once | PullBehavior::PreferCached => {
                let engine = Arc::clone(&engine);
                self.wait_for(async move { engine.runtime.images().await }).await.unwrap_or_else(|e| {
                    warn!(error = %e, "cannot list the images present; pulling");
                    vec![]
                })
            }
            _ => vec![],
        };
        let plans: Vec<Plan> =
            wanted.iter().map(|w| images::plan(behavior, images::local_copy(&local, &w.name))).collect();
        let pulling = plans.contains(&Plan::Pull);
        if pulling {
            self.rec.pull_started_at.get_or_insert(self.now());
            self.dirty = true;
            self.persist().await;
            if self.rec.desired != TaskStatus::Running {
                return;
            }
        }
        let platform = self
            .rec
            .definition
            .runtime_platform
            .as_ref()
            .and_then(|p| p.cpu_architecture.as_deref())
            .and_then(Platform::parse);
        let jobs: Vec<(String, Option<String>)> = wanted
            .iter()
            .zip(&plans)
            .filter(|(_, p)| **p == Plan::Pull)
            .map(|(w, _)| (w.name.clone(), w.repository_credentials.clone()))
            .collect();
        let rec = self.rec.clone();
        let pulled: Vec<Result<Image, PullFailure>> = self
            .wait_for(async move {
                let keys = ExecutionKeys { engine: Arc::clone(&engine), rec };
                let pulls = jobs.iter().map(|(name, creds)| {
                    let (engine, keys, platform) = (&engine, &keys, platform.clone());
                    async move {
                        let r = crate::runtime::reference::parse_normalized(name)
                            .map_err(PullFailure::Runtime)?;
                        let credentials = engine
                            .registry_auth
                            .for_image(&r, creds.as_deref(), keys)
                            .await
                            .map_err(PullFailure::Auth)?;
                        let options = PullOptions { credentials, platform, progress: None };
                        engine.runtime.pull(name, options).await.map_err(PullFailure::Runtime)
                    }
                });
                futures_util::future::join_all(pulls).await
            })
            .await;
        if pulling {
            self.rec.pull_stopped_at = Some(self.now());
            self.dirty = true;
        }
        if self.rec.desired != TaskStatus::Running {
            return;
        }
        let mut pulled = pulled.into_iter();
        for (w, plan) in wanted.iter().zip(plans) {
            let outcome = match plan {
                Plan::UseLocal => self.image(&w.original).await.map_err(StartFailure::Pull),
                Plan::Pull => match pulled.next() {
                    Some(Ok(image)) => Ok(image),
                    Some(Err(failure)) => {
                        let failure = match failure {
                            PullFailure::Runtime(e) => StartFailure::Pull(e),
                            PullFailure::Auth(e) => StartFailure::RegistryAuth(e),
                        };
                        if behavior.pull_failure_is_fatal() {
                            Err(failure)
                        } else {
                            // The agent's "will try to run anyway": an image already present.
                            match self.image(&w.original).await {
                                Ok(image) => {
                                    warn!(image = %w.name, reason = %failure, "pull failed; running the image present");
                                    Ok(image)
                                }
                                Err(_) => Err(failure),
                            }
                        }
                    }
                    None => Err(StartFailure::Pull(RuntimeError::Cancelled { operation: "pull image" })),
                },
            };
            match outcome {
                Ok(image) => {
                    for &i in &w.containers {
                        let c = &mut self.rec.containers[i];
                        c.image_digest = Some(image.digest.clone());
                        c.image_id = Some(image.config_digest.clone());
                    }
                    self.images.insert(w.original.clone(), image);
                    self.dirty = true;
                }
                Err(failure) => {
                    self.fail_to_start(w.containers.first().copied(), failure);
                    return;
                }
            }
        }
    }

    async fn image(&mut self, reference: &str) -> Result<Image, RuntimeError> {
        if let Some(i) = self.images.get(reference) {
            return Ok(i.clone());
        }
        let normalized = crate::runtime::reference::normalize(reference)?;
        let engine = Arc::clone(&self.engine);
        let image = self.wait_for(async move { engine.runtime.image(&normalized).await }).await?;
        self.images.insert(reference.to_owned(), image.clone());
        Ok(image)
    }

    /// Stops the task before it ran: the container that could not start carries the reason.
    fn fail_to_start(&mut self, container: Option<usize>, failure: StartFailure) {
        let reason = failure.to_string();
        warn!(reason = %reason, "task failed to start");
        if let Some(i) = container {
            let now = self.now();
            let c = &mut self.rec.containers[i];
            c.status = ContainerStatus::Stopped;
            c.reason = Some(reason.clone());
            c.finished_at.get_or_insert(now);
        }
        self.dirty = true;
        self.request_stop(StopReason::new(StopCode::TaskFailedToStart, reason));
    }

    async fn launch(&mut self, i: usize) {
        let name = self.rec.containers[i].name.clone();
        let runtime_id = self.rec.containers[i].runtime_id.clone();
        let Some(def) = self.rec.effective(&name).cloned() else { return };
        match self.create_and_start(&def, &runtime_id).await {
            Ok((built, pid)) => {
                self.pids.insert(runtime_id.clone(), pid);
                let now = self.now();
                if let Some(p) = built.spec.process().clone() {
                    self.engine.remember_process(&runtime_id, p);
                }
                let c = &mut self.rec.containers[i];
                c.stop_signal = Some(built.stop_signal);
                c.status = ContainerStatus::Running;
                c.created_at.get_or_insert(now);
                c.started_at = Some(now);
                info!(container = %name, runtime_id = %runtime_id, "container running");
                self.dirty = true;
                self.persist().await;
                super::awslogs::start_for(&self.engine, &self.rec, &name);
                self.start_health(&def, &runtime_id);
            }
            Err(failure) => {
                if let Err(e) = self.engine.runtime.remove(&runtime_id).await {
                    warn!(container = %name, error = %e, "cannot clean up a container that failed to start");
                }
                if self.rec.is_essential(&name) {
                    self.fail_to_start(Some(i), failure);
                } else {
                    let reason = failure.to_string();
                    warn!(container = %name, reason = %reason, "non-essential container failed to start");
                    let now = self.now();
                    let c = &mut self.rec.containers[i];
                    c.status = ContainerStatus::Stopped;
                    c.reason = Some(reason);
                    c.finished_at = Some(now);
                    self.dirty = true;
                }
            }
        }
    }

    /// Prepares, creates and starts one container; returns its spec and its process id.
    async fn create_and_start(
        &mut self,
        def: &ContainerDefinition,
        runtime_id: &str,
    ) -> Result<(spec::BuildOutput, u32), StartFailure> {
        let name = def.name.clone().unwrap_or_default();
        let reference = def.image.clone().unwrap_or_default();
        let image = self.image(&reference).await.map_err(StartFailure::Pull)?;
        let create = |e| StartFailure::Create(e);
        let runtime = Arc::clone(&self.engine.runtime);
        let rootfs =
            runtime.prepare(runtime_id, &image).await.map_err(|e| create(CreateFailure::Runtime(e)))?;
        let passwd = prepare::read_image_file(&rootfs.layers, "etc/passwd");
        let group = prepare::read_image_file(&rootfs.layers, "etc/group");
        let task_dir = self.engine.task_dir(&self.rec.id);
        let dir = task_dir.join(&name);
        let files = prepare::write_files(&self.rec, def, &dir, &self.engine.cfg.network).map_err(create)?;
        let volumes = prepare::volumes(&self.rec, &task_dir, &self.engine.cfg.data_dir).map_err(create)?;
        let netns = self
            .rec
            .container(&name)
            .and_then(|c| c.netns.clone())
            .or_else(|| self.rec.netns.clone())
            .map(PathBuf::from);
        let cgroups_path = format!("/ecs/{}/{}", self.rec.id, runtime_id);
        let task_input = spec::TaskInput {
            task_arn: &self.rec.arn,
            task_id: &self.rec.id,
            cluster: &self.rec.cluster,
            definition: &self.rec.definition,
            network_mode: self.rec.network_mode(),
            netns: netns.as_deref(),
            pid_ns: None,
            ipc_ns: None,
            shm: None,
            volumes: &volumes,
            cgroups_path: &cgroups_path,
        };
        let resolved = self.resolved.as_ref().and_then(|r| r.get(&name)).cloned().unwrap_or_default();
        let mut extra_env = self.engine.cfg.endpoints.env(&self.rec, &name);
        extra_env.extend(resolved.secrets.iter().cloned());
        let devices =
            spec::resolve_devices(&spec::device_paths(def)).map_err(|e| create(CreateFailure::Spec(e)))?;
        let hostname = prepare::hostname_for(def, &self.rec);
        let container_input = spec::ContainerInput {
            definition: def,
            image: &image.config,
            passwd: passwd.as_deref(),
            group: group.as_deref(),
            env_files: &resolved.files,
            extra_env: &extra_env,
            files: &files,
            devices: &devices,
            hostname: &hostname,
        };
        let mut built = spec::build(&task_input, &container_input, &self.engine.host_limits)
            .map_err(|e| create(CreateFailure::Spec(e)))?;
        if self.engine.cfg.limits_unavailable.is_some() {
            spec::without_cgroups(&mut built.spec);
        }
        if self.engine.cfg.user_namespace {
            spec::for_user_namespace(&mut built.spec);
        }
        for c in &built.clamped {
            warn!(container = %name, "{c}");
        }
        let labels: BTreeMap<String, String> = spec::labels(&task_input, &container_input);
        let stdio = Stdio { log_dir: dir.join("logs"), terminal: def.pseudo_terminal.unwrap_or(false) };
        runtime
            .create(runtime_id, &built.spec, &labels, &stdio)
            .await
            .map_err(|e| create(CreateFailure::Runtime(e)))?;
        let pid = runtime.start(runtime_id).await.map_err(StartFailure::Start)?;
        // The image's last use orders image cleanup.
        if let Err(e) = runtime.image_used(&image.name, self.now()).await {
            warn!(image = %image.name, error = %e, "cannot record the image's use");
        }
        Ok((built, pid))
    }

    fn start_health(&mut self, def: &ContainerDefinition, runtime_id: &str) {
        let Some(hc) = def.health_check.clone() else { return };
        let command = hc.command.clone().unwrap_or_default();
        let args: Vec<String> = match command.first().map(String::as_str) {
            Some("CMD") => command[1..].to_vec(),
            Some("CMD-SHELL") => vec!["/bin/sh".into(), "-c".into(), command[1..].join(" ")],
            _ => return,
        };
        if args.is_empty() {
            return;
        }
        // The check runs as the container's own process does: same user, environment and
        // working directory (as Docker runs HEALTHCHECK), without a terminal.
        let mut process =
            self.engine.process_of(&self.rec, &def.name.clone().unwrap_or_default(), runtime_id);
        process.set_args(Some(args)).set_terminal(Some(false)).set_console_size(None);
        let interval = Duration::from_secs(hc.interval.unwrap_or(30).max(1) as u64);
        let timeout = Duration::from_secs(hc.timeout.unwrap_or(5).max(1) as u64);
        let engine = Arc::clone(&self.engine);
        let task_id = self.rec.id.clone();
        let id = runtime_id.to_owned();
        let handle = tokio::spawn(async move {
            loop {
                engine.clock.sleep(interval).await;
                let result = engine.health_check(&id, &process, timeout).await;
                let at = engine.now();
                engine.send(&task_id, Msg::Health { runtime_id: id.clone(), result, at });
            }
        });
        if let Some(old) = self.health.insert(runtime_id.to_owned(), handle) {
            old.abort();
        }
    }

    async fn step_stopping(&mut self) {
        if self.rec.last < TaskStatus::Deactivating {
            for (_, h) in self.health.drain() {
                h.abort();
            }
            self.set_last(TaskStatus::Deactivating).await;
            self.set_last(TaskStatus::Stopping).await;
        }
        if self.rec.last < TaskStatus::Deprovisioning {
            self.stop_containers().await;
            if self.rec.containers.iter().any(|c| c.status != ContainerStatus::Stopped) {
                return;
            }
            let last_exit = self
                .rec
                .containers
                .iter()
                .filter_map(|c| c.finished_at)
                .fold(None, |a: Option<f64>, t| Some(a.map_or(t, |a| a.max(t))));
            self.rec.execution_stopped_at = Some(last_exit.unwrap_or_else(|| self.now()));
            self.dirty = true;
            self.set_last(TaskStatus::Deprovisioning).await;
        }
        // ECS reports STOPPED once the task holds nothing: until then it stays DEPROVISIONING
        // and the release is tried again.
        if self.deprovision().await {
            // The containers' log drivers are gone: their last lines reach CloudWatch Logs
            // before the task is STOPPED.
            self.engine.awslogs.finish(&self.rec.id, super::awslogs::FLUSH_GRACE).await;
            self.release_failures = 0;
            self.engine.forget_processes(&self.rec);
            self.rec.stopped_at = Some(self.now());
            self.dirty = true;
            self.set_last(TaskStatus::Stopped).await;
        } else {
            self.release_failures += 1;
            let backoff =
                (RETRY_AFTER * 2f64.powi(self.release_failures.min(5) as i32)).min(RELEASE_RETRY_MAX);
            self.retry_at = Some(self.now() + backoff);
        }
    }

    /// Signals the running containers in reverse dependency order, SIGKILLs those past their
    /// stop timeout, and collects exits that were never reported.
    async fn stop_containers(&mut self) {
        let runtime = Arc::clone(&self.engine.runtime);
        // Containers that never ran stop first, so what they depended on is free to stop in
        // this same pass.
        for i in 0..self.rec.containers.len() {
            match self.rec.containers[i].status {
                ContainerStatus::Pending => {}
                ContainerStatus::Created => {
                    let _ = runtime.remove(&self.rec.containers[i].runtime_id).await;
                }
                _ => continue,
            }
            self.rec.containers[i].status = ContainerStatus::Stopped;
            self.dirty = true;
        }
        let timeouts = self.engine.timeouts();
        for i in 0..self.rec.containers.len() {
            let (name, runtime_id, status) = {
                let c = &self.rec.containers[i];
                (c.name.clone(), c.runtime_id.clone(), c.status)
            };
            if status != ContainerStatus::Running || !decide::dependents_stopped(&self.rec, &name) {
                continue;
            }
            let now = self.now();
            let deadline = self.rec.containers[i]
                .stop_sent_at
                .map(|s| s + decide::stop_timeout(&self.rec, &name, timeouts).as_secs_f64());
            let killed = self.rec.containers[i].killed == Some(true);
            match deadline {
                None => {
                    let signal = self.stop_signal(&name).await;
                    info!(container = %name, signal, "sending the stop signal");
                    match runtime.signal(&runtime_id, signal).await {
                        Ok(()) => {
                            self.rec.containers[i].stop_sent_at = Some(now);
                            self.dirty = true;
                        }
                        Err(e) => self.signal_failed(i, e).await,
                    }
                }
                Some(at) if !killed && now >= at => {
                    info!(container = %name, "stop timeout passed; sending SIGKILL");
                    match runtime.signal(&runtime_id, SIGKILL).await {
                        Ok(()) => {
                            self.rec.containers[i].killed = Some(true);
                            self.dirty = true;
                        }
                        Err(e) => self.signal_failed(i, e).await,
                    }
                }
                // SIGKILL cannot be ignored: when no exit has been reported a while after it,
                // ask the runtime what became of the container.
                Some(at) if killed && now >= at + decide::KILL_GRACE => self.collect_exit(i).await,
                _ => {}
            }
        }
    }

    /// A signal that could not be delivered: the process may be gone (then its exit is
    /// collected from the runtime), or the runtime unreachable (then it is tried again).
    async fn signal_failed(&mut self, i: usize, e: RuntimeError) {
        let name = self.rec.containers[i].name.clone();
        if matches!(e, RuntimeError::NotFound { .. }) {
            self.collect_exit(i).await;
        } else {
            warn!(container = %name, error = %e, "cannot signal the container; trying again");
            self.retry_at = Some(self.now() + RETRY_AFTER);
        }
    }

    /// Learns a container's end from the runtime when no exit event said it.
    async fn collect_exit(&mut self, i: usize) {
        let runtime_id = self.rec.containers[i].runtime_id.clone();
        let now = self.now();
        match self.engine.runtime.remove(&runtime_id).await {
            Ok(Some((code, at))) => mark_exited(&mut self.rec.containers[i], code, at),
            Ok(None) => {
                let c = &mut self.rec.containers[i];
                c.status = ContainerStatus::Stopped;
                c.finished_at = Some(now);
                c.reason = Some(
                    "CannotInspectContainerError: the container was gone from the runtime before its exit was reported"
                        .into(),
                );
            }
            Err(e) => {
                if !still_running(&e) {
                    warn!(container = %self.rec.containers[i].name, error = %e, "cannot learn how the container ended");
                }
                self.retry_at = Some(now + RETRY_AFTER);
                return;
            }
        }
        if let Some(h) = self.health.remove(&runtime_id) {
            h.abort();
        }
        self.dirty = true;
    }

    async fn stop_signal(&mut self, name: &str) -> i32 {
        if let Some(s) = self.rec.container(name).and_then(|c| c.stop_signal) {
            return s;
        }
        let Some(def) = self.rec.effective(name).cloned() else { return 15 };
        let image = match self.image(def.image.as_deref().unwrap_or_default()).await {
            Ok(i) => i,
            Err(_) => return 15,
        };
        let input = spec::ContainerInput {
            definition: &def,
            image: &image.config,
            hostname: "",
            passwd: None,
            group: None,
            env_files: &[],
            extra_env: &[],
            files: &spec::ContainerFiles::default(),
            devices: &spec::ResolvedDevices::new(),
        };
        spec::stop_signal(&input).unwrap_or(15)
    }

    /// Releases everything the task holds, continuing past errors and reporting each.
    /// Returns whether all of it is released.
    async fn deprovision(&mut self) -> bool {
        let mut released = true;
        self.engine.cfg.endpoints.close(&self.rec.id).await;
        for c in &self.rec.containers {
            if let Err(e) = remove_container(&*self.engine.runtime, &*self.engine.clock, &c.runtime_id).await
            {
                warn!(container = %c.name, error = %e, "cannot remove the container");
                released = false;
                // The runtime still runs a process the record has as ended (an ecsd killed while
                // starting it): the task is stopping, so it is killed, and removed on the next try.
                if still_running(&e)
                    && let Err(e) = self.engine.runtime.signal(&c.runtime_id, SIGKILL).await
                {
                    warn!(container = %c.name, error = %e, "cannot kill the container's leftover process");
                }
            }
        }
        match self.engine.network.remove(&self.rec.id).await {
            Ok(()) => {
                if let Some(a) =
                    self.rec.attachment.as_mut().filter(|a| a.status != AttachmentStatus::Detached)
                {
                    a.status = AttachmentStatus::Detached;
                    self.dirty = true;
                }
            }
            Err(e) if e.is_transient() => {
                warn!(error = %crate::error_chain(&e), "cannot release the task's network yet; trying again");
                released = false;
            }
            // Still tried again (the task holds it until then), but someone must act first.
            Err(e) => {
                tracing::error!(
                    error = %crate::error_chain(&e),
                    "cannot release the task's network without help; it stays DEPROVISIONING"
                );
                released = false;
            }
        }
        let volumes = self.engine.task_dir(&self.rec.id).join("volumes");
        if volumes.exists()
            && let Err(e) = std::fs::remove_dir_all(&volumes)
        {
            warn!(error = %e, dir = %volumes.display(), "cannot remove the task's volumes");
            released = false;
        }
        if let Some(cg) = &self.engine.cfg.cgroups
            && let Err(e) = cg.remove(&self.rec.id)
        {
            warn!(error = %e, "cannot remove the task's cgroup");
            released = false;
        }
        released
    }
}

/// Whether a runtime error says the container still has a running process.
fn still_running(e: &RuntimeError) -> bool {
    matches!(e, RuntimeError::StillRunning { .. })
}

/// Removes a container whose process was just killed: the runtime refuses while the process
/// has not yet been reaped, so it is asked again (briefly) until it has.
pub(crate) async fn remove_container(
    runtime: &dyn Runtime,
    clock: &dyn Clock,
    id: &str,
) -> Result<Option<(i32, f64)>, RuntimeError> {
    let mut attempts = 0;
    loop {
        match runtime.remove(id).await {
            Err(e) if still_running(&e) && attempts < 50 => {
                attempts += 1;
                clock.sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// Brings a task's containers up to date with what the runtime says after a restart: exits
/// while ecsd was down are recorded with their codes, containers created but never recorded
/// as started are settled, vanished ones are reported.
pub(crate) async fn readopt(
    task: &mut TaskRecord,
    states: &[ContainerState],
    runtime: &dyn Runtime,
    clock: &dyn Clock,
    now: f64,
) {
    for c in &mut task.containers {
        let state = states.iter().find(|s| s.id == c.runtime_id).map(|s| s.status);
        if c.status == ContainerStatus::Pending {
            // Killed between creating the container and recording it.
            match state {
                Some(ProcessStatus::Running { .. }) => {
                    c.status = ContainerStatus::Running;
                    c.started_at.get_or_insert(now);
                }
                // Created but never started, or its start failed: created afresh by the
                // supervisor, so this one must be gone first.
                Some(_) => {
                    if let Err(e) = remove_container(runtime, clock, &c.runtime_id).await {
                        warn!(container = %c.name, error = %e, "cannot remove a container an earlier ecsd left half-started");
                    }
                }
                None => {}
            }
            continue;
        }
        if !matches!(c.status, ContainerStatus::Running | ContainerStatus::Created) {
            continue;
        }
        match state {
            Some(ProcessStatus::Running { .. }) | Some(ProcessStatus::Created) => {}
            Some(ProcessStatus::Exited { code, at }) => {
                info!(container = %c.name, code, "container exited while ecsd was down");
                mark_exited(c, code, at);
            }
            Some(ProcessStatus::Missing) | None => {
                if c.status == ContainerStatus::Running {
                    warn!(container = %c.name, "container vanished while ecsd was down");
                    c.status = ContainerStatus::Stopped;
                    c.reason = Some(
                        "CannotInspectContainerError: the container was gone from the runtime when ecsd restarted"
                            .into(),
                    );
                    c.finished_at = Some(now);
                } else {
                    c.status = ContainerStatus::Pending;
                }
            }
        }
    }
}
