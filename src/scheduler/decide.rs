//! The scheduler's decisions that need no I/O: what a service's stopped tasks mean (failed
//! tasks, the start-up back-off), when the circuit breaker trips and what it does, which
//! tasks to start and stop next within `minimumHealthyPercent` and `maximumPercent`, and when
//! a deployment has completed or the service is steady. Pure functions of the service record,
//! its tasks and the time, unit-tested with tables, as `engine/decide.rs` does for tasks.

use super::events;
use crate::model::service::{
    self, CIRCUIT_BREAKER_REASON, DeploymentStatus, MonitorStatus, RevisionCount, RolloutState,
    ServiceDeploymentStatus, ServiceRecord, ServiceStatus,
};
use crate::model::task::{HealthStatus, StopCode, TaskRecord, TaskStatus};

/// The stop reason of tasks the scheduler stops for scaling and deployments.
pub fn scaling_reason(deployment: &str) -> String {
    format!("Scaling activity initiated by (deployment {deployment})")
}

/// The stop reason of tasks the scheduler replaces for failing their health checks.
pub const UNHEALTHY_REASON: &str = "Task failed container health checks";

/// Times the decisions read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// Without health checks, a task counts as healthy this long after reaching RUNNING.
    pub stabilization: f64,
}

/// A service task as the decisions see it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskState {
    pub id: String,
    /// Its deployment (`startedBy`).
    pub deployment: String,
    pub last: TaskStatus,
    pub desired: TaskStatus,
    pub created_at: f64,
    /// When it reached RUNNING, if it did.
    pub started_at: Option<f64>,
    pub stopped_at: Option<f64>,
    pub stop_code: Option<StopCode>,
    pub stopped_reason: Option<String>,
    /// With health checks on essential containers: the task's health and since when.
    pub health: Option<(HealthStatus, Option<f64>)>,
    /// Until when it is protected from scale-in (UpdateTaskProtection); the scheduler fills
    /// it in from the engine.
    pub protected_until: Option<f64>,
}

impl TaskState {
    pub fn of(t: &TaskRecord) -> TaskState {
        let checked: Vec<_> = t
            .containers
            .iter()
            .filter(|c| t.is_essential(&c.name))
            .filter_map(|c| c.health.as_ref())
            .collect();
        let health = (!checked.is_empty()).then(|| {
            let status = t.health();
            let since = checked
                .iter()
                .filter(|h| status != HealthStatus::Unhealthy || h.status == HealthStatus::Unhealthy)
                .filter_map(|h| h.since)
                .reduce(f64::max);
            (status, since)
        });
        TaskState {
            id: t.id.clone(),
            deployment: t.started_by.clone().unwrap_or_default(),
            last: t.last,
            desired: t.desired,
            created_at: t.created_at,
            started_at: t.started_at,
            stopped_at: t.stopped_at,
            stop_code: t.stop_code,
            stopped_reason: t.stopped_reason.clone(),
            health,
            protected_until: None,
        }
    }

    /// Whether scale-in and deployments must leave it running at `now`.
    pub fn is_protected(&self, now: f64) -> bool {
        self.protected_until.is_some_and(|until| until > now)
    }

    fn is_live(&self) -> bool {
        self.last != TaskStatus::Stopped
    }

    /// Whether the task is on its way to STOPPED (or there), with its reason recorded.
    fn stop_decided(&self) -> bool {
        !self.is_live() || (self.desired == TaskStatus::Stopped && self.stop_code.is_some())
    }

    /// When it counts as healthy: HEALTHY with health checks, else `stabilization` after
    /// RUNNING. `None`: not RUNNING, or not HEALTHY.
    pub fn healthy_since(&self, t: Timing) -> Option<f64> {
        let started = self.started_at.filter(|_| self.last == TaskStatus::Running)?;
        match self.health {
            Some((HealthStatus::Healthy, since)) => Some(since.unwrap_or(started)),
            Some(_) => None,
            None => Some(started + t.stabilization),
        }
    }

    pub fn is_healthy(&self, now: f64, t: Timing) -> bool {
        self.desired == TaskStatus::Running && self.healthy_since(t).is_some_and(|s| s <= now)
    }

    /// UNHEALTHY after the grace period: to be replaced.
    pub fn is_unhealthy(&self, now: f64, grace: f64) -> bool {
        self.last == TaskStatus::Running
            && matches!(self.health, Some((HealthStatus::Unhealthy, _)))
            && self.started_at.is_some_and(|s| now >= s + grace)
    }

    /// Why it stopped, as the scheduler counts it.
    fn stop_kind(&self) -> StopKind {
        let reason = self.stopped_reason.as_deref().unwrap_or_default();
        match self.stop_code {
            Some(StopCode::ServiceSchedulerInitiated) if reason == UNHEALTHY_REASON => StopKind::Unhealthy,
            Some(StopCode::ServiceSchedulerInitiated) => StopKind::Scheduler,
            Some(StopCode::UserInitiated) => StopKind::User,
            _ => StopKind::Failed,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopKind {
    /// Scaling or a deployment: the scheduler's own doing.
    Scheduler,
    /// Replaced for failing its health checks.
    Unhealthy,
    /// StopTask.
    User,
    /// It failed: could not start, or an essential container exited.
    Failed,
}

/// Accounts for stopped tasks not seen before: a task of an IN_PROGRESS deployment that
/// stopped without ever being healthy (or was replaced as unhealthy) is a failed task of its
/// deployment; one that never reached RUNNING also feeds the start-up back-off. A task that
/// became healthy forgives its deployment's failures; any task reaching RUNNING ends the
/// back-off. Stopped tasks the engine no longer keeps are forgotten.
pub fn account(s: &mut ServiceRecord, tasks: &[TaskState], now: f64, t: Timing) {
    s.handled_stops.retain(|id| tasks.iter().any(|t| &t.id == id));
    // A stop counts as soon as it is decided (its reason recorded), not once the task has
    // wound down: the replacement starts then, and must see the back-off.
    let mut stops: Vec<&TaskState> =
        tasks.iter().filter(|t| t.stop_decided() && !s.handled_stops.contains(&t.id)).collect();
    stops.sort_by(|a, b| a.stopped_at.unwrap_or(now).total_cmp(&b.stopped_at.unwrap_or(now)));
    for task in stops {
        s.handled_stops.insert(task.id.clone());
        let kind = task.stop_kind();
        let at = task.stopped_at.unwrap_or(now);
        let was_healthy = task.started_at.is_some_and(|started| match task.health {
            Some(_) => false,
            None => at >= started + t.stabilization,
        });
        let failed = match kind {
            StopKind::Unhealthy => true,
            StopKind::Failed => !was_healthy,
            StopKind::Scheduler | StopKind::User => false,
        };
        if let Some(d) = s.deployment_mut(&task.deployment)
            && d.rollout_state == RolloutState::InProgress
            && failed
        {
            d.failed_tasks += 1;
            d.last_failure_at = d.last_failure_at.max(at);
            d.updated_at = now;
        }
        if kind == StopKind::Failed && task.started_at.is_none() && s.deployment(&task.deployment).is_some() {
            s.backoff.failures += 1;
            s.backoff.last_failure_at = Some(at);
            s.backoff.not_before = Some(at + service::Backoff::delay(s.backoff.failures));
            if s.backoff.is_throttling() {
                let message = events::throttled(&s.name);
                s.report("throttle", message, now);
            }
        }
    }
    for d in &mut s.deployments {
        let newest_healthy = tasks
            .iter()
            .filter(|task| task.deployment == d.id && task.is_live())
            .filter_map(|task| task.healthy_since(t).filter(|h| *h <= now))
            .reduce(f64::max);
        if let Some(h) = newest_healthy
            && h > d.healthy_mark
        {
            d.healthy_mark = h;
            if h > d.last_failure_at && d.failed_tasks > 0 {
                d.failed_tasks = 0;
                d.updated_at = now;
            }
        }
    }
    if let Some(last) = s.backoff.last_failure_at
        && tasks.iter().any(|task| task.started_at.is_some_and(|started| started > last))
    {
        s.backoff = service::Backoff::default();
        s.clear_report("throttle");
    }
}

/// Whether the PRIMARY deployment has as many failed tasks as its circuit breaker bears.
pub fn circuit_breaker_tripped(s: &ServiceRecord) -> bool {
    let cb = s.circuit_breaker();
    s.primary().is_some_and(|p| {
        cb.enable
            && p.rollout_state == RolloutState::InProgress
            && p.failed_tasks >= service::circuit_breaker_threshold(s.target_count(), &cb)
    })
}

/// Fails the PRIMARY deployment (the circuit breaker tripped, or StopServiceDeployment asked
/// for a rollback) and, when `rollback` and a deployment that completed exists, starts a new
/// PRIMARY deployment of that one's revision. Returns the id of the rollback deployment.
pub fn fail_primary(
    s: &mut ServiceRecord,
    reason: &str,
    rollback: bool,
    sources: Vec<RevisionCount>,
    now: f64,
) -> Option<String> {
    let name = s.name.clone();
    let p = s.primary_mut()?;
    p.rollout_state = RolloutState::Failed;
    p.rollout_state_reason = reason.to_owned();
    p.updated_at = now;
    let (failed_id, failed_tasks, sd_id) = (p.id.clone(), p.failed_tasks, p.service_deployment.clone());
    if reason == CIRCUIT_BREAKER_REASON {
        s.push_event(events::deployment_failed(&name, &failed_id), now);
    }
    let target = s.last_completed.clone().filter(|c| c.id != failed_id && rollback);
    let already_rolling_back = s.open_deployments.iter().any(|sd| sd.id == sd_id && sd.rollback.is_some());
    if let Some(sd) = s.open_deployment_mut(&sd_id) {
        sd.updated_at = now;
        sd.failure_count = failed_tasks;
        if reason == CIRCUIT_BREAKER_REASON && sd.circuit_breaker == MonitorStatus::Monitoring {
            sd.circuit_breaker = MonitorStatus::Triggered;
        }
        match (&target, already_rolling_back) {
            (_, true) => {
                sd.status = ServiceDeploymentStatus::RollbackFailed;
                sd.status_reason = Some(reason.to_owned());
                sd.finished_at = Some(now);
            }
            (Some(c), false) => {
                sd.status = ServiceDeploymentStatus::RollbackInProgress;
                sd.status_reason = Some(reason.to_owned());
                sd.rollback = Some(service::RollbackRecord {
                    reason: reason.to_owned(),
                    started_at: now,
                    revision: c.revision.id.clone(),
                });
            }
            (None, false) => {
                sd.status = ServiceDeploymentStatus::Stopped;
                sd.status_reason = Some(reason.to_owned());
                sd.stopped_at = Some(now);
                sd.finished_at = Some(now);
            }
        }
    }
    let target = target.filter(|_| !already_rolling_back)?;
    s.push_event(events::rolling_back(&name, &target.id), now);
    let id = service::start_deployment(s, target.revision.clone(), Some(sd_id), sources, now);
    if let Some(p) = s.primary_mut() {
        p.rollout_state_reason = service::rollback_reason(&target.id);
    }
    Some(id)
}

/// Why a stop is planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopWhy {
    /// Scale-in, or draining an older deployment.
    Scale,
    /// Failing its health checks, replaced.
    Unhealthy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    pub task: String,
    /// The task's deployment, named in its stop reason.
    pub deployment: String,
    pub why: StopWhy,
}

/// What to do next.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Tasks to start for the PRIMARY deployment.
    pub start: usize,
    /// How many of them replace unhealthy tasks.
    pub replacing: usize,
    pub stop: Vec<Stop>,
    /// Tasks the service wants that `distinctInstance` keeps off this host.
    pub distinct_blocked: bool,
    /// Starts wait for the back-off.
    pub throttled: bool,
    /// Tasks that would be stopped for scale-in or a deployment but are protected.
    pub protected: Vec<String>,
    /// Work is left, nothing may move, and nothing will change by itself: the deployment
    /// configuration forbids it.
    pub stalled: bool,
    /// The next time something changes without an event (a task's stabilisation or grace
    /// period ends, the back-off ends).
    pub wake_at: Option<f64>,
}

fn earliest(a: Option<f64>, b: f64) -> Option<f64> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// Which tasks to start and stop now: start PRIMARY tasks up to the desired count while the
/// live tasks stay within `maximumPercent`; stop older deployments' tasks, extra PRIMARY
/// tasks and replaced unhealthy ones while the healthy tasks stay at `minimumHealthyPercent`
/// (tasks that are not healthy go first and cost nothing). A FAILED PRIMARY starts nothing
/// and leaves the older deployment running.
pub fn plan(s: &ServiceRecord, tasks: &[TaskState], now: f64, t: Timing) -> Plan {
    let mut plan = Plan::default();
    let Some(primary) = s.primary() else { return plan };
    let desired = s.target_count();
    let max = service::max_tasks(desired, s.maximum_percent()).max(0) as usize;
    let min = service::min_healthy(desired, s.minimum_healthy_percent()).max(0) as usize;
    let desired = desired.max(0) as usize;
    let grace = f64::from(s.health_check_grace_period_seconds.max(0));
    let live: Vec<&TaskState> = tasks.iter().filter(|t| t.is_live()).collect();
    for task in &live {
        if task.last == TaskStatus::Running
            && let Some(h) = task.healthy_since(t)
            && h > now
        {
            plan.wake_at = earliest(plan.wake_at, h);
        }
        if let (Some(started), Some((HealthStatus::Unhealthy, _))) = (task.started_at, task.health)
            && now < started + grace
        {
            plan.wake_at = earliest(plan.wake_at, started + grace);
        }
    }
    // A FAILED deployment starts nothing and leaves the older one running, until the
    // service is deleted and drains.
    if primary.rollout_state == RolloutState::Failed && s.status == ServiceStatus::Active {
        return plan;
    }
    let in_primary = |task: &&&TaskState| task.deployment == primary.id;
    let wanted_primary: Vec<&TaskState> = live
        .iter()
        .filter(in_primary)
        .filter(|task| task.desired == TaskStatus::Running && !task.is_unhealthy(now, grace))
        .copied()
        .collect();
    let unhealthy_primary: Vec<&TaskState> = live
        .iter()
        .filter(in_primary)
        .filter(|task| task.desired == TaskStatus::Running && task.is_unhealthy(now, grace))
        .copied()
        .collect();
    let healthy_primary = wanted_primary.iter().filter(|task| task.is_healthy(now, t)).count();
    let healthy_total = live.iter().filter(|task| task.is_healthy(now, t)).count();

    // Starts.
    let room = max.saturating_sub(live.len());
    let need = desired.saturating_sub(wanted_primary.len());
    if need > 0 && primary.rollout_state != RolloutState::Failed {
        match s.backoff.not_before {
            Some(nb) if nb > now => {
                plan.throttled = true;
                plan.wake_at = earliest(plan.wake_at, nb);
            }
            _ => {
                let mut start = need.min(room);
                if distinct_instance(s) {
                    let allowed = 1usize.saturating_sub(live.len());
                    if allowed < start || (start == 0 && room > 0) {
                        plan.distinct_blocked = true;
                    }
                    start = start.min(allowed);
                }
                plan.start = start;
                plan.replacing = start.min(unhealthy_primary.len());
            }
        }
    }

    // Stops: tasks that are not healthy go first (they cost no health); then older
    // deployments before newer ones.
    let age = |task: &TaskState| {
        s.deployments.iter().position(|d| d.id == task.deployment).map_or(usize::MAX, |i| i)
    };
    let mut old: Vec<&TaskState> = live
        .iter()
        .filter(|task| task.desired == TaskStatus::Running && task.deployment != primary.id)
        .copied()
        .collect();
    old.sort_by_key(|task| (task.is_healthy(now, t), std::cmp::Reverse(age(task))));
    let mut excess: Vec<&TaskState> = wanted_primary.clone();
    // Scale-in keeps the healthy tasks that started first.
    // Protected tasks go last, so unprotected ones are stopped in their place.
    excess.sort_by(|a, b| {
        (a.is_protected(now), a.is_healthy(now, t), a.last == TaskStatus::Running)
            .cmp(&(b.is_protected(now), b.is_healthy(now, t), b.last == TaskStatus::Running))
            .then(b.created_at.total_cmp(&a.created_at))
    });
    excess.truncate(wanted_primary.len().saturating_sub(desired));
    let mut budget = healthy_total.saturating_sub(min);
    for task in old.iter().chain(excess.iter()) {
        // A protected task keeps running until its protection is cleared or lapses.
        if let Some(until) = task.protected_until.filter(|until| *until > now) {
            plan.protected.push(task.id.clone());
            plan.wake_at = earliest(plan.wake_at, until);
            continue;
        }
        let healthy = task.is_healthy(now, t);
        if healthy {
            if budget == 0 {
                continue;
            }
            budget -= 1;
        }
        plan.stop.push(Stop {
            task: task.id.clone(),
            deployment: task.deployment.clone(),
            why: StopWhy::Scale,
        });
    }
    // Unhealthy PRIMARY tasks go once their replacements are healthy; when maximumPercent
    // leaves no room for a replacement, one at a time.
    let stopping = live.iter().any(|task| task.desired != TaskStatus::Running);
    let unhealthy_stops: Vec<&TaskState> = if healthy_primary >= desired {
        unhealthy_primary.clone()
    } else if room == 0 && plan.start == 0 && !stopping {
        unhealthy_primary.iter().take(1).copied().collect()
    } else {
        vec![]
    };
    for task in unhealthy_stops {
        plan.stop.push(Stop {
            task: task.id.clone(),
            deployment: task.deployment.clone(),
            why: StopWhy::Unhealthy,
        });
    }

    // Stalled: work is left, nothing moves, and nothing is under way that could change it.
    let work_left = !old.is_empty() || need > 0 || !unhealthy_primary.is_empty();
    let under_way = live.iter().any(|task| {
        task.desired != TaskStatus::Running
            || task.last != TaskStatus::Running
            || (!task.is_healthy(now, t) && !task.is_unhealthy(now, grace))
    });
    plan.stalled = work_left
        && plan.start == 0
        && plan.stop.is_empty()
        && !under_way
        && !plan.throttled
        && !plan.distinct_blocked
        && plan.protected.is_empty();
    plan
}

/// Whether the service's placement constraints allow one task per instance only.
pub fn distinct_instance(s: &ServiceRecord) -> bool {
    s.placement_constraints.iter().any(|c| c.r#type.as_deref() == Some("distinctInstance"))
}

/// What [`progress`] changed that the caller acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Service deployments that finished (to be written one last time).
    pub finished: Vec<String>,
    pub completed: bool,
    pub inactive: bool,
}

/// Moves the service on once nothing is left to start or stop: older deployments without
/// live tasks leave `deployments[]`; the PRIMARY completes when it alone runs the desired
/// count of healthy tasks; a steady service says so (again after 6 hours); a draining
/// service with no live task becomes INACTIVE.
pub fn progress(s: &mut ServiceRecord, tasks: &[TaskState], now: f64, t: Timing) -> Progress {
    let mut out = Progress::default();
    let live = |id: &str| tasks.iter().filter(|task| task.deployment == id && task.is_live()).count();
    let before = s.deployments.len();
    s.deployments.retain(|d| d.status == DeploymentStatus::Primary || live(&d.id) > 0);
    if s.deployments.len() != before {
        s.updated_at = now;
    }
    if s.status == ServiceStatus::Draining && !tasks.iter().any(TaskState::is_live) {
        s.status = ServiceStatus::Inactive;
        s.inactive_at = Some(now);
        s.updated_at = now;
        for sd in &mut s.open_deployments {
            if !sd.status.is_finished() {
                sd.status = ServiceDeploymentStatus::Stopped;
                sd.status_reason = Some("The service was deleted.".to_owned());
                sd.stopped_at = Some(now);
                sd.finished_at = Some(now);
                sd.updated_at = now;
                out.finished.push(sd.id.clone());
            }
        }
        out.inactive = true;
        return out;
    }
    let desired = s.target_count().max(0) as usize;
    let name = s.name.clone();
    let Some(p) = s.primary() else { return out };
    let primary_tasks: Vec<&TaskState> =
        tasks.iter().filter(|task| task.deployment == p.id && task.is_live()).collect();
    let settled = s.deployments.len() == 1
        && primary_tasks.len() == desired
        && primary_tasks.iter().all(|task| task.is_healthy(now, t));
    if settled && p.rollout_state == RolloutState::InProgress && s.status == ServiceStatus::Active {
        let (id, sd_id, revision) = (p.id.clone(), p.service_deployment.clone(), p.revision.clone());
        if let Some(p) = s.primary_mut() {
            p.rollout_state = RolloutState::Completed;
            p.rollout_state_reason = service::completed_reason(&id);
            p.updated_at = now;
        }
        s.last_completed = Some(service::CompletedDeployment { id: id.clone(), revision });
        if let Some(sd) = s.open_deployment_mut(&sd_id) {
            sd.status = if sd.rollback.is_some() {
                ServiceDeploymentStatus::RollbackSuccessful
            } else {
                ServiceDeploymentStatus::Successful
            };
            sd.finished_at = Some(now);
            sd.updated_at = now;
            if sd.circuit_breaker == MonitorStatus::Monitoring {
                sd.circuit_breaker = MonitorStatus::MonitoringComplete;
            }
            if sd.alarms == MonitorStatus::Monitoring {
                sd.alarms = MonitorStatus::MonitoringComplete;
            }
            out.finished.push(sd_id);
        }
        s.push_event(events::deployment_completed(&name, &id), now);
        s.updated_at = now;
        out.completed = true;
    }
    let running = tasks.iter().filter(|task| task.last == TaskStatus::Running).count();
    let steady = s.status == ServiceStatus::Active
        && settled
        && running == desired
        && s.primary().is_some_and(|p| p.rollout_state == RolloutState::Completed);
    if steady {
        s.report("steady", events::steady(&name), now);
    } else {
        s.clear_report("steady");
    }
    out
}

/// When the steady-state event is due again.
pub fn steady_repeat_at(s: &ServiceRecord) -> Option<f64> {
    s.reported_at("steady").map(|at| at + service::EVENT_REPEAT_SECS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::service::{Revision, start_deployment};
    use crate::model::shapes::{DeploymentCircuitBreaker, DeploymentConfiguration, PlacementConstraint};

    const T: Timing = Timing { stabilization: 40.0 };
    const NOW: f64 = 10_000.0;

    fn service(desired: i32, min: i32, max: i32) -> ServiceRecord {
        let mut s: ServiceRecord = serde_json::from_value(serde_json::json!({
            "name": "web", "cluster": "default", "arn": "arn:svc", "incarnation": "i1",
            "status": "ACTIVE", "schedulingStrategy": "REPLICA", "desiredCount": desired,
            "taskDefinition": "arn:td:1",
            "deploymentConfiguration": {"minimumHealthyPercent": min, "maximumPercent": max},
            "healthCheckGracePeriodSeconds": 0, "deploymentController": "ECS",
            "createdAt": 1.0, "createdBy": "me", "enableEcsManagedTags": false,
            "propagateTags": "NONE", "enableExecuteCommand": false,
            "availabilityZoneRebalancing": "ENABLED", "deployments": [],
            "currentServiceDeployment": "", "updatedAt": 1.0
        }))
        .unwrap();
        let rev = s.revision(1.0);
        start_deployment(&mut s, rev, None, vec![], 1.0);
        s
    }

    /// Rolls `s` to a second deployment: the first completed, the second PRIMARY.
    fn rolled(mut s: ServiceRecord) -> (ServiceRecord, String, String) {
        s.deployments[0].rollout_state = RolloutState::Completed;
        let old = s.deployments[0].id.clone();
        let mut rev: Revision = s.revision(2.0);
        rev.task_definition = "arn:td:2".into();
        let new = start_deployment(&mut s, rev, None, vec![], 2.0);
        (s, old, new)
    }

    /// A task of deployment `d` in state `how`: "healthy" (RUNNING long enough), "fresh"
    /// (RUNNING, stabilising), "pending", "stopping", "unhealthy" (health checks failing),
    /// "hc-healthy" (health checks passing).
    fn task(id: &str, d: &str, how: &str) -> TaskState {
        let mut t = TaskState {
            id: id.into(),
            deployment: d.into(),
            last: TaskStatus::Running,
            desired: TaskStatus::Running,
            created_at: 1.0,
            started_at: Some(NOW - 100.0),
            stopped_at: None,
            stop_code: None,
            stopped_reason: None,
            health: None,
            protected_until: None,
        };
        match how {
            "healthy" => {}
            "fresh" => t.started_at = Some(NOW - 5.0),
            "pending" => {
                t.last = TaskStatus::Pending;
                t.started_at = None;
            }
            "stopping" => t.desired = TaskStatus::Stopped,
            "unhealthy" => t.health = Some((HealthStatus::Unhealthy, Some(NOW - 10.0))),
            "hc-healthy" => t.health = Some((HealthStatus::Healthy, Some(NOW - 50.0))),
            "hc-unknown" => t.health = Some((HealthStatus::Unknown, None)),
            other => panic!("unknown task state {other}"),
        }
        t
    }

    fn stopped(id: &str, d: &str, code: StopCode, reached_running: bool) -> TaskState {
        TaskState {
            last: TaskStatus::Stopped,
            desired: TaskStatus::Stopped,
            started_at: reached_running.then_some(NOW - 20.0),
            stopped_at: Some(NOW - 1.0),
            stop_code: Some(code),
            stopped_reason: Some(match code {
                StopCode::ServiceSchedulerInitiated => scaling_reason(d),
                StopCode::UserInitiated => "Task stopped by user".into(),
                _ => "Essential container in task exited".into(),
            }),
            ..task(id, d, "healthy")
        }
    }

    fn stops(p: &Plan) -> Vec<&str> {
        p.stop.iter().map(|s| s.task.as_str()).collect()
    }

    #[test]
    fn a_new_service_starts_its_desired_count() {
        let s = service(3, 100, 200);
        let p = plan(&s, &[], NOW, T);
        assert_eq!((p.start, p.stop.len(), p.stalled), (3, 0, false));
    }

    #[test]
    fn rolling_at_100_200_starts_all_new_tasks_then_drains_old_ones_as_new_ones_turn_healthy() {
        let (s, old, new) = rolled(service(4, 100, 200));
        let olds: Vec<TaskState> = (0..4).map(|i| task(&format!("o{i}"), &old, "healthy")).collect();
        // Step 1: 4 old healthy, none new: start 4 (8 live), stop none (healthy 4 = min 4).
        let p = plan(&s, &olds, NOW, T);
        assert_eq!((p.start, stops(&p).len()), (4, 0));
        // Step 2: new tasks running but stabilising: nothing to do; wake when they are healthy.
        let mut all = olds.clone();
        all.extend((0..4).map(|i| task(&format!("n{i}"), &new, "fresh")));
        let p = plan(&s, &all, NOW, T);
        assert_eq!((p.start, stops(&p).len(), p.stalled), (0, 0, false));
        assert_eq!(p.wake_at, Some(NOW - 5.0 + 40.0));
        // Step 3: two new healthy: two old may go.
        all[4] = task("n0", &new, "healthy");
        all[5] = task("n1", &new, "healthy");
        let p = plan(&s, &all, NOW, T);
        assert_eq!(stops(&p).len(), 2);
        assert!(p.stop.iter().all(|st| st.deployment == old && st.why == StopWhy::Scale));
        // Step 4: all new healthy: every old task goes.
        for (i, t) in all[4..].iter_mut().enumerate() {
            *t = task(&format!("n{i}"), &new, "healthy");
        }
        let p = plan(&s, &all, NOW, T);
        assert_eq!((p.start, stops(&p)), (0, vec!["o0", "o1", "o2", "o3"]));
    }

    #[test]
    fn rolling_at_50_100_stops_before_it_starts() {
        let (s, old, new) = rolled(service(4, 50, 100));
        let olds: Vec<TaskState> = (0..4).map(|i| task(&format!("o{i}"), &old, "healthy")).collect();
        let p = plan(&s, &olds, NOW, T);
        assert_eq!((p.start, stops(&p).len()), (0, 2), "no room: stop down to min healthy 2");
        // Two old tasks stopping still count as live: no start yet.
        let mut all = olds.clone();
        all[0] = task("o0", &old, "stopping");
        all[1] = task("o1", &old, "stopping");
        let p = plan(&s, &all, NOW, T);
        assert_eq!((p.start, stops(&p).len(), p.stalled), (0, 0, false));
        // Once stopped: start 2.
        let all: Vec<TaskState> = olds[2..].to_vec();
        let p = plan(&s, &all, NOW, T);
        assert_eq!((p.start, stops(&p).len()), (2, 0));
        // New ones pending: the old may not go (healthy 2 = min 2).
        let mut all = all;
        all.push(task("n0", &new, "pending"));
        all.push(task("n1", &new, "pending"));
        let p = plan(&s, &all, NOW, T);
        assert_eq!((p.start, stops(&p).len()), (0, 0));
        // New ones healthy: the last old ones go.
        all[2] = task("n0", &new, "healthy");
        all[3] = task("n1", &new, "healthy");
        let p = plan(&s, &all, NOW, T);
        assert_eq!(stops(&p), vec!["o2", "o3"]);
    }

    #[test]
    fn rolling_at_0_100_stops_the_old_task_first() {
        let (s, old, _) = rolled(service(1, 0, 100));
        let p = plan(&s, &[task("o0", &old, "healthy")], NOW, T);
        assert_eq!((p.start, stops(&p)), (0, vec!["o0"]));
        let p = plan(&s, &[], NOW, T);
        assert_eq!(p.start, 1);
    }

    #[test]
    fn rolling_at_100_100_stalls_once_nothing_can_move() {
        let (s, old, _) = rolled(service(2, 100, 100));
        let olds = [task("o0", &old, "healthy"), task("o1", &old, "healthy")];
        let p = plan(&s, &olds, NOW, T);
        assert_eq!((p.start, p.stop.len(), p.stalled), (0, 0, true));
        // While a task still stabilises, the deployment is waiting, not stalled.
        let p = plan(&s, &[task("o0", &old, "healthy"), task("o1", &old, "fresh")], NOW, T);
        assert!(!p.stalled);
    }

    #[test]
    fn scale_in_stops_pending_and_unhealthy_tasks_first_then_the_newest() {
        let mut s = service(1, 100, 200);
        let d = s.deployments[0].id.clone();
        s.deployments[0].rollout_state = RolloutState::Completed;
        let mut tasks = vec![task("a", &d, "healthy"), task("b", &d, "healthy"), task("c", &d, "pending")];
        tasks[1].created_at = 5.0;
        let p = plan(&s, &tasks, NOW, T);
        assert_eq!(stops(&p), vec!["c", "b"]);
        s.desired_count = 0;
        let p = plan(&s, &tasks, NOW, T);
        assert_eq!(stops(&p).len(), 3);
    }

    #[test]
    fn protected_tasks_are_kept_through_scale_in_and_deployments_until_protection_ends() {
        let mut s = service(1, 100, 200);
        let d = s.deployments[0].id.clone();
        s.deployments[0].rollout_state = RolloutState::Completed;
        let mut tasks = vec![task("a", &d, "healthy"), task("b", &d, "healthy")];
        tasks[1].created_at = 5.0;
        // The newest would go; protected, the other goes in its place.
        tasks[1].protected_until = Some(NOW + 60.0);
        let p = plan(&s, &tasks, NOW, T);
        assert_eq!((stops(&p), p.protected.clone()), (vec!["a"], vec![]));
        // Scale-in to 0: the protected one waits, and the plan wakes when protection lapses.
        s.desired_count = 0;
        let p = plan(&s, &tasks, NOW, T);
        assert_eq!((stops(&p), p.protected.clone(), p.stalled), (vec!["a"], vec!["b".to_owned()], false));
        assert_eq!(p.wake_at, Some(NOW + 60.0));
        // Lapsed (or cleared): stopped like any other.
        let p = plan(&s, &tasks, NOW + 61.0, T);
        assert_eq!((stops(&p).len(), p.protected.len()), (2, 0));
        // A deployment leaves an older deployment's protected task running.
        let (s, old, _) = rolled(service(1, 100, 200));
        let mut tasks = vec![task("o0", &old, "healthy")];
        tasks[0].protected_until = Some(NOW + 60.0);
        let p = plan(&s, &tasks, NOW, T);
        assert_eq!((stops(&p), p.protected.clone()), (vec![], vec!["o0".to_owned()]));
        assert!(!p.stalled);
        // Failing health checks are the task's own failure: it is replaced, protected or not.
        let s = service(1, 100, 200);
        let d = s.deployments[0].id.clone();
        let mut tasks = vec![task("u", &d, "unhealthy"), task("h", &d, "hc-healthy")];
        tasks[0].protected_until = Some(NOW + 60.0);
        let p = plan(&s, &tasks, NOW, T);
        assert_eq!(p.stop, vec![Stop { task: "u".into(), deployment: d, why: StopWhy::Unhealthy }]);
    }

    #[test]
    fn unhealthy_tasks_are_replaced_start_first() {
        let mut s = service(2, 100, 200);
        let d = s.deployments[0].id.clone();
        let tasks = vec![task("a", &d, "hc-healthy"), task("b", &d, "unhealthy")];
        let p = plan(&s, &tasks, NOW, T);
        assert_eq!((p.start, p.replacing, p.stop.len()), (1, 1, 0));
        // The replacement healthy: the unhealthy task goes.
        let mut tasks = tasks;
        tasks.push(task("c", &d, "hc-healthy"));
        let p = plan(&s, &tasks, NOW, T);
        assert_eq!(p.start, 0);
        assert_eq!(p.stop, vec![Stop { task: "b".into(), deployment: d.clone(), why: StopWhy::Unhealthy }]);
        // Within the grace period the failing checks do not count.
        s.health_check_grace_period_seconds = 300;
        let p = plan(&s, &tasks[..2], NOW, T);
        assert_eq!((p.start, p.stop.len()), (0, 0));
        assert_eq!(p.wake_at, Some(NOW - 100.0 + 300.0));
    }

    #[test]
    fn unhealthy_tasks_without_room_for_a_replacement_go_one_at_a_time() {
        let s = service(2, 50, 100);
        let d = s.deployments[0].id.clone();
        let tasks = vec![task("a", &d, "unhealthy"), task("b", &d, "unhealthy")];
        let p = plan(&s, &tasks, NOW, T);
        assert_eq!((p.start, stops(&p)), (0, vec!["a"]));
    }

    #[test]
    fn health_checked_tasks_count_as_healthy_only_when_healthy() {
        let s = service(1, 100, 200);
        let d = s.deployments[0].id.clone();
        assert!(!task("x", &d, "hc-unknown").is_healthy(NOW, T));
        assert!(task("x", &d, "hc-healthy").is_healthy(NOW, T));
        assert!(!task("x", &d, "fresh").is_healthy(NOW, T));
        assert!(task("x", &d, "healthy").is_healthy(NOW, T));
        assert!(!task("x", &d, "stopping").is_healthy(NOW, T));
    }

    #[test]
    fn a_failed_primary_starts_nothing_and_keeps_the_old_tasks() {
        let (mut s, old, _) = rolled(service(2, 100, 200));
        s.deployments[0].rollout_state = RolloutState::Failed;
        let p = plan(&s, &[task("o0", &old, "healthy"), task("o1", &old, "healthy")], NOW, T);
        assert_eq!((p.start, p.stop.len(), p.stalled), (0, 0, false));
    }

    #[test]
    fn a_draining_service_stops_everything_even_behind_a_failed_deployment() {
        let (mut s, old, new) = rolled(service(2, 100, 200));
        s.deployments[0].rollout_state = RolloutState::Failed;
        s.status = ServiceStatus::Draining;
        let tasks = [task("o0", &old, "healthy"), task("o1", &old, "healthy"), task("n0", &new, "pending")];
        let p = plan(&s, &tasks, NOW, T);
        assert_eq!((p.start, stops(&p).len()), (0, 3));
    }

    #[test]
    fn the_back_off_holds_starts_until_it_ends() {
        let mut s = service(1, 100, 200);
        s.backoff =
            service::Backoff { failures: 3, last_failure_at: Some(NOW), not_before: Some(NOW + 20.0) };
        let p = plan(&s, &[], NOW, T);
        assert_eq!((p.start, p.throttled, p.wake_at), (0, true, Some(NOW + 20.0)));
        let p = plan(&s, &[], NOW + 20.0, T);
        assert_eq!(p.start, 1);
    }

    #[test]
    fn distinct_instance_places_one_task_on_this_host() {
        let mut s = service(2, 100, 200);
        s.placement_constraints =
            vec![PlacementConstraint { r#type: Some("distinctInstance".into()), expression: None }];
        let p = plan(&s, &[], NOW, T);
        assert_eq!((p.start, p.distinct_blocked), (1, true));
        let d = s.deployments[0].id.clone();
        let p = plan(&s, &[task("a", &d, "healthy")], NOW, T);
        assert_eq!((p.start, p.distinct_blocked, p.stalled), (0, true, false));
    }

    #[test]
    fn stopped_tasks_count_as_failures_and_feed_the_back_off_once() {
        let mut s = service(2, 100, 200);
        let d = s.deployments[0].id.clone();
        let tasks = vec![
            stopped("never-ran", &d, StopCode::TaskFailedToStart, false),
            stopped("crashed", &d, StopCode::EssentialContainerExited, true),
            stopped("scaled", &d, StopCode::ServiceSchedulerInitiated, true),
            stopped("user", &d, StopCode::UserInitiated, true),
        ];
        account(&mut s, &tasks, NOW, T);
        assert_eq!(s.deployments[0].failed_tasks, 2);
        assert_eq!(s.backoff.failures, 1);
        assert_eq!(s.backoff.not_before, Some(NOW - 1.0), "one failure: no wait yet");
        account(&mut s, &tasks, NOW, T);
        assert_eq!((s.deployments[0].failed_tasks, s.backoff.failures), (2, 1), "counted once");
        // A second task that never ran: throttled, with the event.
        let mut tasks = tasks;
        tasks.push(stopped("never-ran-2", &d, StopCode::TaskFailedToStart, false));
        account(&mut s, &tasks, NOW, T);
        assert_eq!(s.backoff.failures, 2);
        assert_eq!(s.backoff.not_before, Some(NOW - 1.0 + 10.0));
        assert_eq!(s.events[0].message, "(service web) is unable to consistently start tasks successfully.");
        // A task that crashed after being healthy for a while is no failure.
        let mut long_lived = stopped("long", &d, StopCode::EssentialContainerExited, true);
        long_lived.started_at = Some(NOW - 500.0);
        tasks.push(long_lived);
        account(&mut s, &tasks, NOW, T);
        assert_eq!(s.deployments[0].failed_tasks, 3);
        // A task of the deployment reaching RUNNING ends the back-off; one turning healthy
        // forgives the failures.
        let mut ok = task("ok", &d, "hc-healthy");
        ok.started_at = Some(NOW - 0.5);
        ok.health = Some((HealthStatus::Healthy, Some(NOW - 0.2)));
        tasks.push(ok);
        account(&mut s, &tasks, NOW, T);
        assert_eq!(s.backoff, service::Backoff::default());
        assert_eq!(s.deployments[0].failed_tasks, 0);
        // Stopped tasks the engine forgot are forgotten too.
        account(&mut s, &tasks[4..], NOW, T);
        assert_eq!(s.handled_stops.len(), 2, "never-ran-2 and long are still kept");
    }

    #[test]
    fn completed_deployments_stop_counting_failures() {
        let mut s = service(1, 100, 200);
        let d = s.deployments[0].id.clone();
        s.deployments[0].rollout_state = RolloutState::Completed;
        account(&mut s, &[stopped("x", &d, StopCode::EssentialContainerExited, true)], NOW, T);
        assert_eq!(s.deployments[0].failed_tasks, 0);
    }

    fn with_breaker(mut s: ServiceRecord, rollback: bool) -> ServiceRecord {
        s.deployment_configuration = DeploymentConfiguration {
            deployment_circuit_breaker: Some(DeploymentCircuitBreaker {
                enable: true,
                rollback,
                ..Default::default()
            }),
            ..s.deployment_configuration
        };
        for sd in &mut s.open_deployments {
            sd.circuit_breaker = MonitorStatus::Monitoring;
        }
        s
    }

    #[test]
    fn the_circuit_breaker_rolls_back_to_the_last_completed_deployment() {
        let (s, old, new) = rolled(service(3, 100, 200));
        let mut s = with_breaker(s, true);
        s.last_completed = Some(service::CompletedDeployment {
            id: old.clone(),
            revision: s.deployments[1].revision.clone(),
        });
        s.deployments[0].failed_tasks = 2;
        assert!(!circuit_breaker_tripped(&s));
        s.deployments[0].failed_tasks = 3;
        assert!(circuit_breaker_tripped(&s));
        let sd = s.deployments[0].service_deployment.clone();
        let back = fail_primary(&mut s, CIRCUIT_BREAKER_REASON, true, vec![], NOW).expect("rolls back");
        assert_eq!(s.deployments.len(), 3);
        assert_eq!(s.deployments[0].id, back);
        assert_eq!(s.deployments[0].revision.task_definition, "arn:td:1");
        assert_eq!(s.task_definition, "arn:td:1", "the service's task definition follows");
        assert_eq!(s.deployments[0].rollout_state_reason, service::rollback_reason(&old));
        assert_eq!(
            s.deployments[0].service_deployment, sd,
            "the rollback carries the failed service deployment"
        );
        let failed = s.deployment(&new).unwrap();
        assert_eq!((failed.status, failed.rollout_state), (DeploymentStatus::Active, RolloutState::Failed));
        assert_eq!(failed.rollout_state_reason, CIRCUIT_BREAKER_REASON);
        let messages: Vec<&str> = s.events.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(
            messages,
            vec![
                format!("(service web) rolling back to deployment {old}."),
                format!("(service web) (deployment {new}) deployment failed: tasks failed to start."),
            ]
        );
        let record = s.open_deployments.iter().find(|d| d.id == sd).unwrap();
        assert_eq!(record.status, ServiceDeploymentStatus::RollbackInProgress);
        assert_eq!(record.circuit_breaker, MonitorStatus::Triggered);
        // The rollback completes: ROLLBACK_SUCCESSFUL.
        let tasks: Vec<TaskState> = (0..3).map(|i| task(&format!("b{i}"), &back, "healthy")).collect();
        let out = progress(&mut s, &tasks, NOW, T);
        assert!(out.completed);
        let record = s.open_deployments.iter().find(|d| d.id == sd).unwrap();
        assert_eq!(record.status, ServiceDeploymentStatus::RollbackSuccessful);
    }

    #[test]
    fn without_rollback_the_failed_deployment_stays_primary_and_its_service_deployment_stops() {
        let (s, _, new) = rolled(service(3, 100, 200));
        let mut s = with_breaker(s, false);
        s.deployments[0].failed_tasks = 3;
        assert_eq!(fail_primary(&mut s, CIRCUIT_BREAKER_REASON, false, vec![], NOW), None);
        assert_eq!(
            (s.deployments[0].id.as_str(), s.deployments[0].rollout_state),
            (new.as_str(), RolloutState::Failed)
        );
        let sd = s.open_deployments.last().unwrap();
        assert_eq!(sd.status, ServiceDeploymentStatus::Stopped);
        assert!(!circuit_breaker_tripped(&s), "a FAILED deployment trips no more");
    }

    #[test]
    fn a_deployment_completes_when_it_alone_runs_the_desired_count_healthy() {
        let (mut s, old, new) = rolled(service(2, 100, 200));
        let mut tasks =
            vec![task("o0", &old, "healthy"), task("n0", &new, "healthy"), task("n1", &new, "fresh")];
        let out = progress(&mut s, &tasks, NOW, T);
        assert!(!out.completed);
        assert_eq!(s.deployments.len(), 2);
        tasks[0] = TaskState { last: TaskStatus::Stopped, ..task("o0", &old, "stopping") };
        let out = progress(&mut s, &tasks, NOW, T);
        assert!(!out.completed, "n1 is still stabilising");
        assert_eq!(s.deployments.len(), 1, "the drained deployment left");
        tasks[2] = task("n1", &new, "healthy");
        let out = progress(&mut s, &tasks, NOW, T);
        assert!(out.completed);
        assert_eq!(s.deployments[0].rollout_state_reason, format!("ECS deployment {new} completed."));
        let messages: Vec<&str> = s.events.iter().take(2).map(|e| e.message.as_str()).collect();
        assert_eq!(
            messages,
            vec![
                "(service web) has reached a steady state.".to_owned(),
                format!("(service web) (deployment {new}) deployment completed.")
            ]
        );
        assert_eq!(s.last_completed.as_ref().map(|c| c.id.as_str()), Some(new.as_str()));
        // Steady again a moment later: no repeat until 6 hours have passed.
        let n = s.events.len();
        progress(&mut s, &tasks, NOW + 60.0, T);
        assert_eq!(s.events.len(), n);
        progress(&mut s, &tasks, NOW + service::EVENT_REPEAT_SECS, T);
        assert_eq!(s.events.len(), n + 1);
        assert_eq!(steady_repeat_at(&s), Some(NOW + 2.0 * service::EVENT_REPEAT_SECS));
    }

    #[test]
    fn a_draining_service_becomes_inactive_once_no_task_lives() {
        let mut s = service(0, 100, 200);
        s.status = ServiceStatus::Draining;
        let d = s.deployments[0].id.clone();
        let out = progress(&mut s, &[task("a", &d, "stopping")], NOW, T);
        assert!(!out.inactive);
        let out = progress(&mut s, &[], NOW, T);
        assert!(out.inactive);
        assert_eq!((s.status, s.inactive_at), (ServiceStatus::Inactive, Some(NOW)));
    }
}
