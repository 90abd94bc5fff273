//! The supervisor's decisions that need no I/O: whether a container's dependencies let it
//! start, when the next deadline falls, how a health check result moves a container's health,
//! when a container may be stopped. Pure functions of the task record and the time, so every
//! rule is unit-tested without a runtime or a clock.

use std::time::Duration;

use super::failure::DependencyFailure;
use crate::model::shapes::HealthCheck;
use crate::model::task::{ContainerStatus, Health, HealthStatus, TaskRecord, TaskStatus};

/// After SIGKILL, how long a missing exit report waits before the supervisor asks the runtime.
pub(crate) const KILL_GRACE: f64 = 5.0;

/// Whether a container may start now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Deps {
    Ready,
    Waiting,
    Never(DependencyFailure),
}

/// The timeouts the decisions read: the agent's defaults, overridden per container.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    /// `ECS_CONTAINER_STOP_TIMEOUT`: SIGKILL follows the stop signal after this long.
    pub stop: Duration,
    /// `ECS_CONTAINER_START_TIMEOUT`: how long a container waits for its dependencies.
    pub start: Duration,
}

/// Container `i`'s `dependsOn`, checked against the others' state at `now`.
pub(crate) fn dependencies(rec: &TaskRecord, i: usize, now: f64, t: Timeouts) -> Deps {
    let name = &rec.containers[i].name;
    let deps = rec.effective(name).and_then(|d| d.depends_on.clone()).unwrap_or_default();
    let mut waiting = false;
    for d in deps {
        let target = d.container_name.unwrap_or_default();
        let condition = d.condition.unwrap_or_default();
        let Some(t) = rec.containers.iter().find(|c| c.name == target) else {
            return Deps::Never(DependencyFailure::NotInTask(target));
        };
        let started = t.started_at.is_some();
        let state = match condition.as_str() {
            "START" => match t.status {
                ContainerStatus::Running => Deps::Ready,
                ContainerStatus::Stopped if started => Deps::Ready,
                ContainerStatus::Stopped => Deps::Never(DependencyFailure::NeverStarted(target)),
                _ => Deps::Waiting,
            },
            "COMPLETE" => match t.status {
                ContainerStatus::Stopped if started => Deps::Ready,
                ContainerStatus::Stopped => Deps::Never(DependencyFailure::NeverCompleted(target)),
                _ => Deps::Waiting,
            },
            "SUCCESS" => match (t.status, t.exit_code) {
                (ContainerStatus::Stopped, Some(0)) => Deps::Ready,
                (ContainerStatus::Stopped, code) => {
                    Deps::Never(DependencyFailure::Unsuccessful { target, code })
                }
                _ => Deps::Waiting,
            },
            "HEALTHY" => match (t.status, t.health.as_ref().map(|h| h.status)) {
                (ContainerStatus::Running, Some(HealthStatus::Healthy)) => Deps::Ready,
                (ContainerStatus::Stopped, _) => Deps::Never(DependencyFailure::StoppedUnhealthy(target)),
                _ => Deps::Waiting,
            },
            other => Deps::Never(DependencyFailure::UnknownCondition(other.to_owned())),
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
    match dependency_deadline(rec, i, t) {
        Some(at) if now >= at => Deps::Never(DependencyFailure::TimedOut),
        _ => Deps::Waiting,
    }
}

/// How long container `i` waits for its COMPLETE, SUCCESS and HEALTHY dependencies: its
/// `startTimeout` (else ECS_CONTAINER_START_TIMEOUT), counted from when each started.
pub(crate) fn dependency_deadline(rec: &TaskRecord, i: usize, t: Timeouts) -> Option<f64> {
    let def = rec.effective(&rec.containers[i].name)?;
    let timeout = def.start_timeout.filter(|t| *t > 0).map_or(t.start.as_secs_f64(), f64::from);
    def.depends_on
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter(|d| d.condition.as_deref() != Some("START"))
        .filter_map(|d| {
            let target = rec.containers.iter().find(|c| Some(&c.name) == d.container_name.as_ref())?;
            (target.status == ContainerStatus::Running).then_some(target.started_at? + timeout)
        })
        .reduce(f64::min)
}

/// A container's `stopTimeout`, else the agent's.
pub(crate) fn stop_timeout(rec: &TaskRecord, name: &str, t: Timeouts) -> Duration {
    rec.effective(name)
        .and_then(|d| d.stop_timeout)
        .filter(|t| *t >= 0)
        .map_or(t.stop, |t| Duration::from_secs(t as u64))
}

/// The earliest time something must happen without a message: a retry, a SIGKILL deadline, a
/// look for an exit SIGKILL did not report, or a dependency wait running out.
pub(crate) fn next_deadline(rec: &TaskRecord, retry_at: Option<f64>, t: Timeouts) -> Option<f64> {
    let mut at: Option<f64> = retry_at;
    let mut consider = |x: f64| at = Some(at.map_or(x, |a: f64| a.min(x)));
    for (i, c) in rec.containers.iter().enumerate() {
        if c.status == ContainerStatus::Running
            && let Some(sent) = c.stop_sent_at
        {
            let kill_at = sent + stop_timeout(rec, &c.name, t).as_secs_f64();
            consider(if c.killed == Some(true) { kill_at + KILL_GRACE } else { kill_at });
        }
        if c.status == ContainerStatus::Pending
            && rec.desired == TaskStatus::Running
            && let Some(d) = dependency_deadline(rec, i, t)
        {
            consider(d);
        }
    }
    at
}

/// Whether an essential container that ran has stopped: the task must stop.
pub(crate) fn essential_stopped(rec: &TaskRecord) -> bool {
    rec.containers
        .iter()
        .any(|c| c.status == ContainerStatus::Stopped && c.started_at.is_some() && rec.is_essential(&c.name))
}

/// Whether every container that depends on `name` has stopped (stop runs in reverse
/// dependency order).
pub(crate) fn dependents_stopped(rec: &TaskRecord, name: &str) -> bool {
    rec.containers.iter().all(|c| {
        let depends = rec
            .effective(&c.name)
            .and_then(|d| d.depends_on.as_ref())
            .is_some_and(|deps| deps.iter().any(|d| d.container_name.as_deref() == Some(name)));
        !depends || c.status == ContainerStatus::Stopped
    })
}

/// One health check run: its exit code (`None`: it could not run) and its output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CheckResult {
    pub exit_code: Option<i32>,
    pub output: String,
}

/// Moves a container's health by one check that ended at `at`, as Docker does: a pass makes it
/// HEALTHY; `retries` failures in a row make it UNHEALTHY; failures within `startPeriod` of
/// the container's start do not count until it has once been healthy. Returns whether the
/// status changed.
pub(crate) fn health_after(
    h: &mut Health,
    hc: &HealthCheck,
    started: f64,
    result: CheckResult,
    at: f64,
) -> bool {
    let retries = hc.retries.unwrap_or(3).max(1) as u32;
    let start_period = f64::from(hc.start_period.unwrap_or(0));
    let before = h.status;
    let ok = result.exit_code == Some(0);
    h.exit_code = result.exit_code;
    h.output = result.output;
    if ok {
        h.failing_streak = 0;
        h.status = HealthStatus::Healthy;
    } else if at - started >= start_period || h.status == HealthStatus::Healthy {
        h.failing_streak += 1;
        if h.failing_streak >= retries {
            h.status = HealthStatus::Unhealthy;
        }
    }
    if h.status != before {
        h.since = Some(at);
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const T: Timeouts = Timeouts { stop: Duration::from_secs(30), start: Duration::from_secs(180) };

    /// A task whose containers are given as (name, status, started_at, exit_code), with the
    /// definitions `defs` (JSON container definitions).
    fn task(defs: serde_json::Value, states: &[(&str, &str, Option<f64>, Option<i32>)]) -> TaskRecord {
        let containers: Vec<_> = states
            .iter()
            .map(|(name, status, started, code)| {
                json!({"name": name, "runtimeId": format!("rt-{name}"), "arn": "a", "image": "i",
                       "status": status, "startedAt": started, "exitCode": code})
            })
            .collect();
        serde_json::from_value(json!({
            "id": "t", "cluster": "c", "arn": "arn", "definition": {}, "containersEffective": defs,
            "group": "g", "launchType": "EC2", "desired": "RUNNING", "last": "PENDING", "version": 1,
            "createdAt": 0.0, "containers": containers
        }))
        .unwrap()
    }

    fn dep(on: &str, condition: &str) -> serde_json::Value {
        json!([{"name": "init"}, {"name": "app", "dependsOn": [{"containerName": on, "condition": condition}]}])
    }

    #[test]
    fn success_waits_for_exit_zero_and_fails_on_anything_else() {
        let running = task(
            dep("init", "SUCCESS"),
            &[("init", "RUNNING", Some(1.0), None), ("app", "PENDING", None, None)],
        );
        assert_eq!(dependencies(&running, 1, 2.0, T), Deps::Waiting);
        let ok = task(
            dep("init", "SUCCESS"),
            &[("init", "STOPPED", Some(1.0), Some(0)), ("app", "PENDING", None, None)],
        );
        assert_eq!(dependencies(&ok, 1, 2.0, T), Deps::Ready);
        let bad = task(
            dep("init", "SUCCESS"),
            &[("init", "STOPPED", Some(1.0), Some(3)), ("app", "PENDING", None, None)],
        );
        assert_eq!(
            dependencies(&bad, 1, 2.0, T),
            Deps::Never(DependencyFailure::Unsuccessful { target: "init".into(), code: Some(3) })
        );
    }

    #[test]
    fn start_is_met_by_a_container_that_ran_even_if_it_stopped() {
        let ran = task(
            dep("init", "START"),
            &[("init", "STOPPED", Some(1.0), Some(1)), ("app", "PENDING", None, None)],
        );
        assert_eq!(dependencies(&ran, 1, 2.0, T), Deps::Ready);
        let never =
            task(dep("init", "START"), &[("init", "STOPPED", None, None), ("app", "PENDING", None, None)]);
        assert_eq!(
            dependencies(&never, 1, 2.0, T),
            Deps::Never(DependencyFailure::NeverStarted("init".into()))
        );
    }

    #[test]
    fn waiting_runs_out_at_the_start_timeout_counted_from_the_dependency_start() {
        let defs = json!([{"name": "init"}, {"name": "app", "startTimeout": 10,
            "dependsOn": [{"containerName": "init", "condition": "COMPLETE"}]}]);
        let t = task(defs, &[("init", "RUNNING", Some(100.0), None), ("app", "PENDING", None, None)]);
        assert_eq!(dependency_deadline(&t, 1, T), Some(110.0));
        assert_eq!(next_deadline(&t, None, T), Some(110.0));
        assert_eq!(next_deadline(&t, Some(105.0), T), Some(105.0));
        assert_eq!(dependencies(&t, 1, 109.9, T), Deps::Waiting);
        assert_eq!(dependencies(&t, 1, 110.0, T), Deps::Never(DependencyFailure::TimedOut));
        // Without startTimeout: ECS_CONTAINER_START_TIMEOUT.
        let t = task(
            dep("init", "COMPLETE"),
            &[("init", "RUNNING", Some(100.0), None), ("app", "PENDING", None, None)],
        );
        assert_eq!(dependency_deadline(&t, 1, T), Some(280.0));
    }

    #[test]
    fn an_unknown_dependency_never_starts() {
        let t = task(
            dep("ghost", "START"),
            &[("init", "RUNNING", Some(1.0), None), ("app", "PENDING", None, None)],
        );
        assert_eq!(dependencies(&t, 1, 2.0, T), Deps::Never(DependencyFailure::NotInTask("ghost".into())));
    }

    #[test]
    fn kill_deadlines_follow_the_stop_timeout_then_the_kill_grace() {
        let defs = json!([{"name": "app", "stopTimeout": 2}]);
        let mut t = task(defs, &[("app", "RUNNING", Some(1.0), None)]);
        t.desired = TaskStatus::Stopped;
        assert_eq!(next_deadline(&t, None, T), None);
        t.containers[0].stop_sent_at = Some(10.0);
        assert_eq!(next_deadline(&t, None, T), Some(12.0));
        t.containers[0].killed = Some(true);
        assert_eq!(next_deadline(&t, None, T), Some(12.0 + KILL_GRACE));
        assert_eq!(stop_timeout(&t, "other", T), Duration::from_secs(30));
    }

    #[test]
    fn stop_order_is_dependents_first() {
        let t = task(
            dep("init", "START"),
            &[("init", "RUNNING", Some(1.0), None), ("app", "RUNNING", Some(2.0), None)],
        );
        assert!(!dependents_stopped(&t, "init"));
        assert!(dependents_stopped(&t, "app"));
        let t = task(
            dep("init", "START"),
            &[("init", "RUNNING", Some(1.0), None), ("app", "STOPPED", Some(2.0), Some(0))],
        );
        assert!(dependents_stopped(&t, "init"));
    }

    #[test]
    fn only_essential_containers_that_ran_stop_the_task() {
        let defs = json!([{"name": "a"}, {"name": "b", "essential": false}]);
        assert!(!essential_stopped(&task(
            defs.clone(),
            &[("a", "RUNNING", Some(1.0), None), ("b", "STOPPED", Some(1.0), Some(0))]
        )));
        assert!(essential_stopped(&task(
            defs.clone(),
            &[("a", "STOPPED", Some(1.0), Some(0)), ("b", "RUNNING", Some(1.0), None)]
        )));
        assert!(!essential_stopped(&task(
            defs,
            &[("a", "STOPPED", None, None), ("b", "RUNNING", Some(1.0), None)]
        )));
    }

    #[test]
    fn health_needs_retries_failures_and_ignores_the_start_period() {
        let hc = HealthCheck { retries: Some(2), start_period: Some(10), ..Default::default() };
        let fail = || CheckResult { exit_code: Some(1), output: "no".into() };
        let pass = || CheckResult { exit_code: Some(0), output: "ok".into() };
        let mut h = Health::default();
        // Within the start period, failures do not count.
        assert!(!health_after(&mut h, &hc, 100.0, fail(), 105.0));
        assert_eq!((h.status, h.failing_streak), (HealthStatus::Unknown, 0));
        assert!(!health_after(&mut h, &hc, 100.0, fail(), 111.0));
        assert_eq!(h.failing_streak, 1);
        assert!(health_after(&mut h, &hc, 100.0, fail(), 112.0));
        assert_eq!((h.status, h.since), (HealthStatus::Unhealthy, Some(112.0)));
        assert!(health_after(&mut h, &hc, 100.0, pass(), 113.0));
        assert_eq!((h.status, h.failing_streak, h.output.as_str()), (HealthStatus::Healthy, 0, "ok"));
        // Once healthy, failures count even within the start period.
        let mut h = Health::default();
        health_after(&mut h, &hc, 100.0, pass(), 101.0);
        health_after(&mut h, &hc, 100.0, fail(), 102.0);
        assert!(health_after(
            &mut h,
            &hc,
            100.0,
            CheckResult { exit_code: None, output: "timeout".into() },
            103.0
        ));
        assert_eq!(h.status, HealthStatus::Unhealthy);
    }
}
