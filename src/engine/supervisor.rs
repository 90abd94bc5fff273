//! One task's supervisor: a level-triggered loop that compares the task's desired status
//! with what is true, acts, persists, and waits for the next message or deadline. The same
//! loop runs a new task and re-adopts one after a restart.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::record::{ContainerRecord, ContainerStatus, Health, HealthStatus, TaskRecord, TaskStatus};
use super::{Engine, LABEL_TASK_ID, Msg, STOP_ESSENTIAL_EXITED, STOP_FAILED_TO_START, task_key};
use crate::endpoints::ResolvedEnv;
use crate::engine::record::{AttachmentStatus, EniAttachment};
use crate::model::shapes::ContainerDefinition;
use crate::model::shapes::{HostEntry, NetworkBinding};
use crate::network::{Attach, Mode, PortMap, Protocol, Sandbox, SandboxSpec};
use crate::runtime::{Image, RuntimeError, Stdio};
use crate::spec;
use crate::store::records::TASKS;

const SIGKILL: i32 = 9;
/// How long after SIGKILL a missing exit report sends the supervisor to look for itself.
const KILL_GRACE: f64 = 5.0;
/// How soon a runtime call that failed during stopping is tried again.
const RETRY_AFTER: f64 = 1.0;

/// Records an exit on a container.
pub(crate) fn mark_exited(c: &mut ContainerRecord, code: i32, at: f64) {
    c.status = ContainerStatus::Stopped;
    c.exit_code = Some(code);
    c.finished_at = Some(at);
}

struct Supervisor {
    engine: Arc<Engine>,
    rec: TaskRecord,
    images: HashMap<String, Image>,
    health: HashMap<String, JoinHandle<()>>,
    /// Each started container's process, the template of its health-check execs.
    processes: HashMap<String, oci_spec::runtime::Process>,
    /// When a runtime call that failed should be tried again.
    retry_at: Option<f64>,
    dirty: bool,
    /// Each container's variables from `environmentFiles` and `secrets`, resolved when the
    /// task starts (again after a restart, never stored).
    resolved: Option<HashMap<String, ResolvedEnv>>,
}

pub(crate) async fn run(engine: Arc<Engine>, rec: TaskRecord, mut inbox: mpsc::UnboundedReceiver<Msg>) {
    let mut s = Supervisor {
        engine,
        rec,
        images: HashMap::new(),
        health: HashMap::new(),
        processes: HashMap::new(),
        retry_at: None,
        dirty: false,
        resolved: None,
    };
    // A re-adopted task's endpoints come back on its namespaces.
    if s.rec.last > TaskStatus::Provisioning
        && s.rec.last < TaskStatus::Deprovisioning
        && let Err(e) = s.engine.cfg.endpoints.open(&s.rec).await
    {
        warn!(error = %e, "cannot reopen the task's endpoints");
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
    loop {
        s.step().await;
        s.persist();
        if s.rec.last == TaskStatus::Stopped {
            break;
        }
        let wait = s.next_deadline().map(|at| Duration::from_secs_f64((at - s.engine.now()).max(0.0)));
        tokio::select! {
            msg = inbox.recv() => match msg {
                Some(m) => s.apply(m),
                None => break,
            },
            _ = sleep_opt(wait) => {}
        }
        while let Ok(m) = inbox.try_recv() {
            s.apply(m);
        }
        s.persist();
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

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

impl Supervisor {
    fn now(&self) -> f64 {
        self.engine.now()
    }

    fn persist(&mut self) {
        if !self.dirty {
            return;
        }
        self.rec.version += 1;
        let key = task_key(&self.rec.cluster, &self.rec.id);
        match self.engine.store.write(|w| w.put(TASKS, &key, &self.rec)) {
            Ok(()) => self.dirty = false,
            // Stays dirty: the next persist writes the whole record again.
            Err(e) => warn!(error = %crate::error_chain(&e), "cannot persist the task"),
        }
    }

    fn set_last(&mut self, status: TaskStatus) {
        if self.rec.last != status {
            info!(from = self.rec.last.as_str(), to = status.as_str(), "task status");
            self.rec.last = status;
            self.dirty = true;
            self.persist();
        }
    }

    /// Turns the task toward STOPPED, once; later requests keep the first reason.
    fn request_stop(&mut self, code: &'static str, reason: String) {
        if self.rec.desired == TaskStatus::Stopped {
            return;
        }
        info!(code, reason = %reason, "stopping task");
        self.rec.desired = TaskStatus::Stopped;
        self.rec.stop_code = Some(code.to_owned());
        self.rec.stopped_reason = Some(reason);
        self.rec.stopping_at = Some(self.now());
        self.dirty = true;
    }

    fn container(&mut self, runtime_id: &str) -> Option<&mut ContainerRecord> {
        self.rec.containers.iter_mut().find(|c| c.runtime_id == runtime_id)
    }

    fn apply(&mut self, msg: Msg) {
        match msg {
            Msg::Stop { code, reason, recorded } => {
                self.request_stop(code, reason);
                self.persist();
                if let Some(tx) = recorded {
                    let _ = tx.send(());
                }
            }
            Msg::Exit { runtime_id, code, at } => {
                let Some(c) = self.container(&runtime_id) else { return };
                if c.status == ContainerStatus::Stopped {
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
                    self.request_stop(STOP_ESSENTIAL_EXITED, "Essential container in task exited".into());
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
                warn!(container = %c.name, "container is gone from containerd");
                c.status = ContainerStatus::Stopped;
                c.finished_at = Some(now);
                c.reason = Some(
                    "CannotInspectContainerError: the container was gone from containerd when ecsd reconnected".into(),
                );
                self.dirty = true;
            }
        }
    }

    fn apply_health(
        &mut self,
        runtime_id: &str,
        result: Result<crate::runtime::ExecResult, RuntimeError>,
        at: f64,
    ) {
        let Some(idx) = self.rec.containers.iter().position(|c| c.runtime_id == runtime_id) else { return };
        if self.rec.containers[idx].status != ContainerStatus::Running {
            return;
        }
        let name = self.rec.containers[idx].name.clone();
        let hc = self.rec.effective(&name).and_then(|d| d.health_check.clone()).unwrap_or_default();
        let retries = hc.retries.unwrap_or(3).max(1) as u32;
        let start_period = f64::from(hc.start_period.unwrap_or(0));
        let started = self.rec.containers[idx].started_at.unwrap_or(at);
        let c = &mut self.rec.containers[idx];
        let h = c.health.get_or_insert_with(Health::default);
        let before = h.status;
        let (ok, code, output) = match result {
            Ok(r) => (r.exit_code == 0, Some(r.exit_code), r.output),
            Err(e) => (false, None, e.to_string()),
        };
        h.exit_code = code;
        h.output = output;
        if ok {
            h.failing_streak = 0;
            h.status = HealthStatus::Healthy;
        } else if at - started >= start_period || h.status == HealthStatus::Healthy {
            // Failures during the start period do not count, as with Docker.
            h.failing_streak += 1;
            if h.failing_streak >= retries {
                h.status = HealthStatus::Unhealthy;
            }
        }
        if h.status != before {
            h.since = Some(at);
            info!(container = %name, from = before.as_str(), to = h.status.as_str(), "health");
            self.dirty = true;
        }
    }

    /// The earliest time something must happen without a message: a SIGKILL deadline or a
    /// dependency wait running out.
    fn next_deadline(&self) -> Option<f64> {
        let mut at: Option<f64> = None;
        let mut consider = |t: f64| at = Some(at.map_or(t, |a: f64| a.min(t)));
        if let Some(r) = self.retry_at {
            consider(r);
        }
        for (i, c) in self.rec.containers.iter().enumerate() {
            if c.status == ContainerStatus::Running
                && let Some(sent) = c.stop_sent_at
            {
                let kill_at = sent + self.stop_timeout(&c.name).as_secs_f64();
                consider(if c.killed == Some(true) { kill_at + KILL_GRACE } else { kill_at });
            }
            if c.status == ContainerStatus::Pending
                && self.rec.desired == TaskStatus::Running
                && let Some(d) = self.dependency_deadline(i)
            {
                consider(d);
            }
        }
        at
    }

    /// How long container `i` waits for its COMPLETE, SUCCESS and HEALTHY dependencies: its
    /// `startTimeout` (else ECS_CONTAINER_START_TIMEOUT), counted from when each started.
    fn dependency_deadline(&self, i: usize) -> Option<f64> {
        let def = self.rec.effective(&self.rec.containers[i].name)?;
        let timeout = def
            .start_timeout
            .filter(|t| *t > 0)
            .map_or(self.engine.cfg.start_timeout.as_secs_f64(), f64::from);
        def.depends_on
            .as_deref()
            .unwrap_or_default()
            .iter()
            .filter(|d| d.condition.as_deref() != Some("START"))
            .filter_map(|d| {
                let target =
                    self.rec.containers.iter().find(|c| Some(&c.name) == d.container_name.as_ref())?;
                (target.status == ContainerStatus::Running).then_some(target.started_at? + timeout)
            })
            .reduce(f64::min)
    }

    fn stop_timeout(&self, name: &str) -> Duration {
        self.rec
            .effective(name)
            .and_then(|d| d.stop_timeout)
            .filter(|t| *t >= 0)
            .map_or(self.engine.cfg.stop_timeout, |t| Duration::from_secs(t as u64))
    }

    async fn step(&mut self) {
        self.retry_at = None;
        // Level-triggered, so exits recorded while ecsd was down count too.
        let essential_stopped = self.rec.containers.iter().any(|c| {
            c.status == ContainerStatus::Stopped && c.started_at.is_some() && self.rec.is_essential(&c.name)
        });
        if essential_stopped {
            self.request_stop(STOP_ESSENTIAL_EXITED, "Essential container in task exited".into());
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
            let specs = self.sandbox_specs();
            match self.engine.network.create(&self.rec.id, &specs).await {
                Ok(sandboxes) => {
                    self.apply_cgroups();
                    self.apply_sandboxes(sandboxes);
                    if self.rec.credentials_id.is_none() && self.rec.task_role_arn().is_some() {
                        self.rec.credentials_id = Some(uuid::Uuid::new_v4().to_string());
                    }
                    for c in self.rec.containers.iter_mut().filter(|c| c.endpoint_id.is_none()) {
                        c.endpoint_id = Some(uuid::Uuid::new_v4().to_string());
                    }
                    self.dirty = true;
                    self.persist();
                    if let Err(reason) = self.engine.cfg.endpoints.open(&self.rec).await {
                        self.fail_to_start(None, reason);
                        return;
                    }
                    self.rec.connectivity_at = Some(self.now());
                    self.dirty = true;
                    self.set_last(TaskStatus::Pending);
                }
                Err(e) => {
                    let reason = format!(
                        "ResourceInitializationError: cannot create the task's network: {}",
                        crate::error_chain(&e)
                    );
                    self.fail_to_start(None, reason);
                    return;
                }
            }
        }
        if self.rec.pull_stopped_at.is_none() {
            self.pull().await;
            if self.rec.desired != TaskStatus::Running {
                return;
            }
        }
        if self.resolved.is_none() && self.rec.containers.iter().any(|c| c.status == ContainerStatus::Pending)
        {
            match self.engine.cfg.endpoints.resolve(&self.rec).await {
                Ok(resolved) => self.resolved = Some(resolved),
                Err(reason) => {
                    self.fail_to_start(None, reason);
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
                match self.dependencies(i) {
                    Deps::Ready => {
                        self.launch(i).await;
                        progressed = true;
                    }
                    Deps::Waiting => {}
                    Deps::Never(why) => {
                        let name = self.rec.containers[i].name.clone();
                        self.fail_to_start(
                            Some(i),
                            format!("CannotStartContainerError: container '{name}' {why}"),
                        );
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
            self.set_last(TaskStatus::Running);
        }
    }

    /// The task cgroup with the task's cpu and memory, as the agent sets it. A host that
    /// cannot (no permission, no controller) still runs the task, with container limits only.
    fn apply_cgroups(&self) {
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

    /// Resolves every image the task still needs; a missing one fails the task as ECS does.
    async fn pull(&mut self) {
        self.rec.pull_started_at.get_or_insert(self.now());
        for i in 0..self.rec.containers.len() {
            if self.rec.containers[i].status != ContainerStatus::Pending {
                continue;
            }
            let reference = self.rec.containers[i].image.clone();
            if let Err(e) = self.image(&reference).await {
                let reason = match &e {
                    RuntimeError::ImageNotFound { .. } | RuntimeError::InvalidReference { .. } => format!(
                        "CannotPullContainerError: {e}; ecsd does not pull from registries yet: import the image with `ecsd image import FILE`"
                    ),
                    _ => format!("CannotPullContainerError: {e}"),
                };
                self.fail_to_start(Some(i), reason);
                return;
            }
            let image = &self.images[&reference];
            let c = &mut self.rec.containers[i];
            c.image_digest = Some(image.digest.clone());
            c.image_id = Some(image.config_digest.clone());
        }
        self.rec.pull_stopped_at = Some(self.now());
        self.dirty = true;
    }

    async fn image(&mut self, reference: &str) -> Result<Image, RuntimeError> {
        if let Some(i) = self.images.get(reference) {
            return Ok(i.clone());
        }
        let normalized = crate::runtime::reference::normalize(reference)?;
        let image = self.engine.runtime.image(&normalized).await?;
        self.images.insert(reference.to_owned(), image.clone());
        Ok(image)
    }

    /// Stops the task before it ran: the container that could not start carries the reason.
    fn fail_to_start(&mut self, container: Option<usize>, reason: String) {
        warn!(reason = %reason, "task failed to start");
        if let Some(i) = container {
            let now = self.now();
            let c = &mut self.rec.containers[i];
            c.status = ContainerStatus::Stopped;
            c.reason = Some(reason.clone());
            c.finished_at.get_or_insert(now);
        }
        self.dirty = true;
        self.request_stop(STOP_FAILED_TO_START, reason);
    }

    fn dependencies(&self, i: usize) -> Deps {
        let name = &self.rec.containers[i].name;
        let deps = self.rec.effective(name).and_then(|d| d.depends_on.clone()).unwrap_or_default();
        let mut waiting = false;
        for d in deps {
            let target = d.container_name.unwrap_or_default();
            let condition = d.condition.unwrap_or_default();
            let Some(t) = self.rec.containers.iter().find(|c| c.name == target) else {
                return Deps::Never(format!("depends on container '{target}', which is not in the task"));
            };
            let started = t.started_at.is_some();
            let state = match condition.as_str() {
                "START" => match t.status {
                    ContainerStatus::Running => Deps::Ready,
                    ContainerStatus::Stopped if started => Deps::Ready,
                    ContainerStatus::Stopped => {
                        Deps::Never(format!("depends on '{target}' starting, but it never started"))
                    }
                    _ => Deps::Waiting,
                },
                "COMPLETE" => match t.status {
                    ContainerStatus::Stopped if started => Deps::Ready,
                    ContainerStatus::Stopped => {
                        Deps::Never(format!("depends on '{target}' completing, but it never started"))
                    }
                    _ => Deps::Waiting,
                },
                "SUCCESS" => match (t.status, t.exit_code) {
                    (ContainerStatus::Stopped, Some(0)) => Deps::Ready,
                    (ContainerStatus::Stopped, code) => Deps::Never(format!(
                        "depends on '{target}' exiting successfully, but it exited with {}",
                        code.map_or("no exit code".to_owned(), |c| format!("code {c}"))
                    )),
                    _ => Deps::Waiting,
                },
                "HEALTHY" => match (t.status, t.health.as_ref().map(|h| h.status)) {
                    (ContainerStatus::Running, Some(HealthStatus::Healthy)) => Deps::Ready,
                    (ContainerStatus::Stopped, _) => {
                        Deps::Never(format!("depends on '{target}' being healthy, but it stopped"))
                    }
                    _ => Deps::Waiting,
                },
                other => Deps::Never(format!("has an unknown dependency condition {other}")),
            };
            match state {
                Deps::Ready => {}
                Deps::Waiting => waiting = true,
                never => return never,
            }
        }
        if !waiting {
            return Deps::Ready;
        }
        match self.dependency_deadline(i) {
            Some(at) if self.now() >= at => Deps::Never(
                "timed out waiting for its dependencies (ContainerRuntimeTimeoutError: Could not transition to running)"
                    .into(),
            ),
            _ => Deps::Waiting,
        }
    }

    async fn launch(&mut self, i: usize) {
        let name = self.rec.containers[i].name.clone();
        let runtime_id = self.rec.containers[i].runtime_id.clone();
        let Some(def) = self.rec.effective(&name).cloned() else { return };
        match self.create_and_start(&def, &runtime_id).await {
            Ok(built) => {
                let now = self.now();
                if let Some(p) = built.spec.process().clone() {
                    self.processes.insert(runtime_id.clone(), p);
                }
                let c = &mut self.rec.containers[i];
                c.stop_signal = Some(built.stop_signal);
                c.status = ContainerStatus::Running;
                c.created_at.get_or_insert(now);
                c.started_at = Some(now);
                info!(container = %name, runtime_id = %runtime_id, "container running");
                self.dirty = true;
                self.persist();
                self.start_health(&def, &runtime_id);
            }
            Err(reason) => {
                if let Err(e) = self.engine.runtime.remove(&runtime_id).await {
                    warn!(container = %name, error = %e, "cannot clean up a container that failed to start");
                }
                let essential = self.rec.is_essential(&name);
                if essential {
                    self.fail_to_start(Some(i), reason);
                } else {
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

    /// Prepares, creates and starts one container. The error is the container's `reason`.
    async fn create_and_start(
        &mut self,
        def: &ContainerDefinition,
        runtime_id: &str,
    ) -> Result<spec::BuildOutput, String> {
        let name = def.name.clone().unwrap_or_default();
        let reference = def.image.clone().unwrap_or_default();
        let image = self.image(&reference).await.map_err(|e| format!("CannotPullContainerError: {e}"))?;
        let runtime = Arc::clone(&self.engine.runtime);
        let rootfs = runtime
            .prepare(runtime_id, &image)
            .await
            .map_err(|e| format!("CannotCreateContainerError: {e}"))?;
        let passwd = read_image_file(&rootfs.layers, "etc/passwd");
        let group = read_image_file(&rootfs.layers, "etc/group");
        let dir = self.engine.task_dir(&self.rec.id).join(&name);
        let files = self.write_files(def, &dir).map_err(|e| format!("CannotCreateContainerError: {e}"))?;
        let volumes = self.volumes().map_err(|e| format!("CannotCreateContainerError: {e}"))?;
        let netns = self
            .rec
            .containers
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| c.netns.clone())
            .or_else(|| self.rec.netns.clone())
            .map(PathBuf::from);
        let cgroups_path = format!("/ecs/{}/{}", self.rec.id, runtime_id);
        let task_input = spec::TaskInput {
            task_arn: &self.rec.arn,
            task_id: &self.rec.id,
            cluster: &self.rec.cluster,
            definition: &self.rec.definition,
            network_mode: spec_mode(Mode::parse(self.rec.definition.network_mode.as_deref())),
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
        let devices = spec::resolve_devices(&spec::device_paths(def))
            .map_err(|e| format!("CannotCreateContainerError: {e}"))?;
        let hostname = hostname_for(def, &self.rec);
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
        let built = spec::build(&task_input, &container_input, &self.engine.host_limits)
            .map_err(|e| format!("CannotCreateContainerError: {e}"))?;
        for c in &built.clamped {
            warn!(container = %name, "{c}");
        }
        let mut labels: BTreeMap<String, String> = spec::labels(&task_input, &container_input);
        labels.insert(LABEL_TASK_ID.to_owned(), self.rec.id.clone());
        let stdio = Stdio { log_dir: dir.join("logs"), terminal: def.pseudo_terminal.unwrap_or(false) };
        runtime
            .create(runtime_id, &built.spec, &labels, &stdio)
            .await
            .map_err(|e| format!("CannotCreateContainerError: {e}"))?;
        runtime.start(runtime_id).await.map_err(|e| format!("CannotStartContainerError: {e}"))?;
        Ok(built)
    }

    /// The namespaces the task needs: none in host mode, the task's own (awsvpc, none), or
    /// one per container (bridge), with interfaces and published ports.
    fn sandbox_specs(&self) -> Vec<SandboxSpec> {
        let settings = &self.engine.cfg.network;
        let dns_domain = crate::network::dns_domain(&self.engine.identity.region);
        let published = |c: &ContainerRecord| -> Vec<PortMap> {
            c.network_bindings.iter().filter_map(port_map).collect()
        };
        match Mode::parse(self.rec.definition.network_mode.as_deref()) {
            Mode::Host => vec![],
            Mode::None => vec![SandboxSpec { container: None, attach: None }],
            Mode::Awsvpc => {
                let network = self
                    .rec
                    .attachment
                    .as_ref()
                    .map_or_else(|| settings.default_network().name.clone(), |a| a.network.clone());
                vec![SandboxSpec {
                    container: None,
                    attach: Some(Attach {
                        network,
                        aliases: vec![],
                        dns_domain,
                        ports: self.rec.containers.iter().flat_map(published).collect(),
                    }),
                }]
            }
            Mode::Bridge => self
                .rec
                .containers
                .iter()
                .enumerate()
                .map(|(i, c)| SandboxSpec {
                    container: Some(i),
                    attach: Some(Attach {
                        network: settings.default_network().name.clone(),
                        // Other tasks on the network resolve the container by its hostname.
                        aliases: self
                            .rec
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
    fn apply_sandboxes(&mut self, sandboxes: Vec<Sandbox>) {
        for sb in sandboxes {
            let netns = Some(sb.netns.display().to_string());
            match sb.container {
                None => {
                    self.rec.netns = netns;
                    if let Some(iface) = &sb.iface
                        && self.rec.attachment.is_none()
                    {
                        // An awsvpc task placed without one (RunTask makes it): as on its network.
                        let subnet_id =
                            self.engine.cfg.network.network(&iface.network).map(|n| n.subnet_id());
                        self.rec.attachment = Some(EniAttachment {
                            id: uuid::Uuid::new_v4().to_string(),
                            status: AttachmentStatus::Precreated,
                            network: iface.network.clone(),
                            subnet_id: subnet_id.unwrap_or_default(),
                            network_interface_id: format!(
                                "eni-{}",
                                &uuid::Uuid::new_v4().simple().to_string()[..17]
                            ),
                            mac_address: None,
                            private_ipv4_address: None,
                            private_dns_name: None,
                        });
                    }
                    if let (Some(iface), Some(a)) = (&sb.iface, self.rec.attachment.as_mut()) {
                        a.status = AttachmentStatus::Attached;
                        a.mac_address = Some(iface.mac.clone());
                        a.private_ipv4_address = Some(iface.address.to_string());
                        a.private_dns_name = Some(iface.private_dns_name.clone());
                    }
                }
                Some(i) => {
                    if let Some(c) = self.rec.containers.get_mut(i) {
                        c.netns = netns;
                        c.ipv4 = sb.iface.as_ref().map(|f| f.address.to_string());
                    }
                }
            }
        }
        self.dirty = true;
    }

    /// The DNS server (aardvark-dns on the gateway) and search domain of the network a
    /// container is on, when that network resolves names.
    fn network_dns(&self, container: &str) -> Option<(Vec<std::net::IpAddr>, Vec<String>)> {
        let settings = &self.engine.cfg.network;
        let network = match Mode::parse(self.rec.definition.network_mode.as_deref()) {
            Mode::Awsvpc => self.rec.attachment.as_ref().and_then(|a| settings.network(&a.network)),
            Mode::Bridge => self
                .rec
                .containers
                .iter()
                .find(|c| c.name == container && c.ipv4.is_some())
                .map(|_| settings.default_network()),
            Mode::Host | Mode::None => None,
        }?;
        network.dns.then(|| {
            (vec![std::net::IpAddr::V4(network.gateway())], vec![crate::network::DNS_DOMAIN.to_owned()])
        })
    }

    /// Writes the container's /etc/hosts, /etc/resolv.conf and /etc/hostname.
    fn write_files(&self, def: &ContainerDefinition, dir: &Path) -> std::io::Result<spec::ContainerFiles> {
        std::fs::create_dir_all(dir)?;
        let mode = Mode::parse(self.rec.definition.network_mode.as_deref());
        let extra: &[HostEntry] = def.extra_hosts.as_deref().unwrap_or_default();
        let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        if mode == Mode::Host {
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
            let resolv = spec::resolv_conf(
                &host_resolv,
                spec_mode(mode),
                def.dns_servers.as_deref().unwrap_or_default(),
                def.dns_search_domains.as_deref().unwrap_or_default(),
            );
            std::fs::write(dir.join("hosts"), hosts)?;
            std::fs::write(dir.join("resolv.conf"), resolv)?;
            return Ok(spec::ContainerFiles {
                hosts: Some(dir.join("hosts")),
                resolv_conf: Some(dir.join("resolv.conf")),
                hostname: None,
            });
        }
        let hostname = hostname_for(def, &self.rec);
        let name = def.name.as_deref().unwrap_or_default();
        let me = self.rec.containers.iter().find(|c| c.name == name);
        // The address the container's hostname names: its own (bridge), the task's (awsvpc),
        // else loopback (none).
        let own = me
            .and_then(|c| c.ipv4.clone())
            .or_else(|| self.rec.attachment.as_ref().and_then(|a| a.private_ipv4_address.clone()));
        let addresses: Vec<std::net::IpAddr> = match own.as_deref().and_then(|a| a.parse().ok()) {
            Some(ip) => vec![ip],
            None => vec![std::net::IpAddr::from([127, 0, 0, 1])],
        };
        let mut extra: Vec<HostEntry> = extra.to_vec();
        // Bridge-mode links, as Docker's legacy links write them: `<ip> <alias> <name>`.
        for link in def.links.as_deref().unwrap_or_default() {
            let (target, alias) = link.split_once(':').unwrap_or((link.as_str(), link.as_str()));
            if let Some(ip) =
                self.rec.containers.iter().find(|c| c.name == target).and_then(|c| c.ipv4.clone())
            {
                let names = if alias == target { target.to_owned() } else { format!("{alias} {target}") };
                extra.push(HostEntry { hostname: Some(names), ip_address: Some(ip) });
            }
        }
        let hosts = spec::hosts_file(&hostname, &addresses, &extra);
        // On a network with its own DNS server (aardvark-dns on the gateway), that server
        // answers for the other tasks and forwards the rest to the host's resolvers.
        let network_dns = self.network_dns(name);
        let base = match &network_dns {
            Some((servers, search)) => spec::network_resolv_conf(&host_resolv, servers, search),
            None => host_resolv.clone(),
        };
        let resolv = spec::resolv_conf(
            &base,
            spec_mode(mode),
            def.dns_servers.as_deref().unwrap_or_default(),
            def.dns_search_domains.as_deref().unwrap_or_default(),
        );
        let files = spec::ContainerFiles {
            hosts: Some(dir.join("hosts")),
            resolv_conf: Some(dir.join("resolv.conf")),
            hostname: Some(dir.join("hostname")),
        };
        std::fs::write(dir.join("hosts"), hosts)?;
        std::fs::write(dir.join("resolv.conf"), resolv)?;
        std::fs::write(dir.join("hostname"), format!("{hostname}\n"))?;
        Ok(files)
    }

    /// Host directories of the task's volumes: `host.sourcePath`, or a task-scoped directory
    /// (removed with the task), or a shared named directory for shared Docker volumes.
    fn volumes(&self) -> std::io::Result<BTreeMap<String, PathBuf>> {
        let mut out = BTreeMap::new();
        for v in self.rec.definition.volumes.as_deref().unwrap_or_default() {
            let name = v.name.clone().unwrap_or_default();
            let path = if let Some(src) = v.host.as_ref().and_then(|h| h.source_path.clone()) {
                PathBuf::from(src)
            } else if v.efs_volume_configuration.is_some()
                || v.fsx_windows_file_server_volume_configuration.is_some()
            {
                return Err(std::io::Error::other(format!(
                    "volume '{name}' needs EFS or FSx, which ecsd cannot mount on this host"
                )));
            } else if v
                .docker_volume_configuration
                .as_ref()
                .is_some_and(|d| d.scope.as_deref() == Some("shared"))
            {
                self.engine.cfg.data_dir.join("volumes").join(&name)
            } else {
                self.engine.task_dir(&self.rec.id).join("volumes").join(&name)
            };
            std::fs::create_dir_all(&path)?;
            out.insert(name, path);
        }
        Ok(out)
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
        let mut process = match self.processes.get(runtime_id) {
            Some(p) => p.clone(),
            None => {
                let env: Vec<String> = def
                    .environment
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|kv| {
                        Some(format!("{}={}", kv.name.as_deref()?, kv.value.as_deref().unwrap_or_default()))
                    })
                    .chain(std::iter::once(
                        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
                    ))
                    .collect();
                let mut p = oci_spec::runtime::Process::default();
                p.set_env(Some(env))
                    .set_cwd(def.working_directory.clone().unwrap_or_else(|| "/".into()).into());
                p
            }
        };
        process.set_args(Some(args)).set_terminal(Some(false)).set_console_size(None);
        let interval = Duration::from_secs(hc.interval.unwrap_or(30).max(1) as u64);
        let timeout = Duration::from_secs(hc.timeout.unwrap_or(5).max(1) as u64);
        let engine = Arc::clone(&self.engine);
        let task_id = self.rec.id.clone();
        let id = runtime_id.to_owned();
        let handle = tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let result =
                    crate::runtime::run_to_completion(&*engine.runtime, &id, process.clone(), timeout).await;
                let at = engine.now();
                engine.send(&task_id, Msg::Health { runtime_id: id.clone(), result, at });
            }
        });
        if let Some(old) = self.health.insert(runtime_id.to_owned(), handle) {
            old.abort();
        }
    }

    /// Whether every container that depends on `name` has stopped (stop runs in reverse
    /// dependency order).
    fn dependents_stopped(&self, name: &str) -> bool {
        self.rec.containers.iter().all(|c| {
            let depends = self
                .rec
                .effective(&c.name)
                .and_then(|d| d.depends_on.as_ref())
                .is_some_and(|deps| deps.iter().any(|d| d.container_name.as_deref() == Some(name)));
            !depends || c.status == ContainerStatus::Stopped
        })
    }

    async fn step_stopping(&mut self) {
        if self.rec.last < TaskStatus::Deactivating {
            for (_, h) in self.health.drain() {
                h.abort();
            }
            self.set_last(TaskStatus::Deactivating);
            self.set_last(TaskStatus::Stopping);
        }
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
        for i in 0..self.rec.containers.len() {
            let (name, runtime_id, status) = {
                let c = &self.rec.containers[i];
                (c.name.clone(), c.runtime_id.clone(), c.status)
            };
            if status != ContainerStatus::Running || !self.dependents_stopped(&name) {
                continue;
            }
            let now = self.now();
            let deadline =
                self.rec.containers[i].stop_sent_at.map(|s| s + self.stop_timeout(&name).as_secs_f64());
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
                Some(at) if killed && now >= at + KILL_GRACE => self.collect_exit(i).await,
                _ => {}
            }
        }
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
        self.set_last(TaskStatus::Deprovisioning);
        self.deprovision().await;
        self.rec.stopped_at = Some(self.now());
        self.dirty = true;
        self.set_last(TaskStatus::Stopped);
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
                c.reason = Some("CannotInspectContainerError: the container was gone from containerd before its exit was reported".into());
            }
            // Still running (or the runtime is away): look again soon.
            Err(_) => {
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
        if let Some(s) = self.rec.containers.iter().find(|c| c.name == name).and_then(|c| c.stop_signal) {
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
    async fn deprovision(&mut self) {
        self.engine.cfg.endpoints.close(&self.rec.id).await;
        for c in &self.rec.containers {
            if let Err(e) = self.engine.runtime.remove(&c.runtime_id).await {
                warn!(container = %c.name, error = %e, "cannot remove the container");
            }
        }
        match self.engine.network.remove(&self.rec.id).await {
            Ok(()) => {
                if let Some(a) = self.rec.attachment.as_mut() {
                    a.status = AttachmentStatus::Detached;
                    self.dirty = true;
                }
            }
            Err(e) => {
                warn!(error = %crate::error_chain(&e), "cannot remove the task's network; retried in the background")
            }
        }
        let volumes = self.engine.task_dir(&self.rec.id).join("volumes");
        if volumes.exists()
            && let Err(e) = std::fs::remove_dir_all(&volumes)
        {
            warn!(error = %e, dir = %volumes.display(), "cannot remove the task's volumes");
        }
        if let Some(cg) = &self.engine.cfg.cgroups
            && let Err(e) = cg.remove(&self.rec.id)
        {
            warn!(error = %e, "cannot remove the task's cgroup");
        }
    }
}

enum Deps {
    Ready,
    Waiting,
    Never(String),
}

fn spec_mode(mode: Mode) -> spec::NetworkMode {
    match mode {
        Mode::Awsvpc => spec::NetworkMode::Awsvpc,
        Mode::Bridge => spec::NetworkMode::Bridge,
        Mode::Host => spec::NetworkMode::Host,
        Mode::None => spec::NetworkMode::None,
    }
}

/// The container's hostname: its own `hostname`, else the task id's first 12 characters,
/// as a container id would give it.
fn hostname_for(def: &ContainerDefinition, rec: &TaskRecord) -> String {
    if let Some(name) = rec.attachment.as_ref().and_then(|a| a.private_dns_name.clone()) {
        // awsvpc: the interface's private DNS name, as the agent gives the pause container.
        return name;
    }
    if let Some(h) = &def.hostname {
        return h.clone();
    }
    // Bridge mode: each container is a host of its own, named like a Docker container.
    match rec.containers.iter().find(|c| Some(c.name.as_str()) == def.name.as_deref()) {
        Some(c) if c.netns.is_some() => c.runtime_id.chars().take(12).collect(),
        _ => rec.id.chars().take(12).collect(),
    }
}

/// The host ports a binding publishes.
fn port_map(b: &NetworkBinding) -> Option<PortMap> {
    let protocol = match b.protocol.as_deref() {
        Some("udp") => Protocol::Udp,
        _ => Protocol::Tcp,
    };
    let range = |r: &Option<String>| -> Option<(u16, u16)> {
        let (a, b) = r.as_deref()?.split_once('-')?;
        Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
    };
    match (range(&b.container_port_range), range(&b.host_port_range)) {
        (Some((c0, c1)), Some((h0, _))) => Some(PortMap {
            host_port: h0,
            container_port: c0,
            range: c1.checked_sub(c0)?.checked_add(1)?,
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

/// Reads a file of the image from its layers, topmost first, honouring overlay whiteouts.
fn read_image_file(layers: &[PathBuf], rel: &str) -> Option<String> {
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
