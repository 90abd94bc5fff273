//! Waiting on one deployment of a service until it completes, fails or is rolled back, or the
//! time runs out: each event once, the deployments when they change, and each stopped task of
//! the deployment with its reason and exit codes. SIGINT stops the waiting only.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::aws::Client;

use super::args::WaitUntil;
use super::ecs::{call, call_error, checked, describe_service, op, primary, short, unavailable};
use super::error::{DeployError, exit};
use super::progress::Progress;

const POLL: Duration = Duration::from_secs(2);
/// How long a failed deployment may stay PRIMARY before we stop waiting for its rollback.
const ROLLBACK_GRACE: Duration = Duration::from_secs(20);

/// The service an UpdateService is about, and how the wait after it goes.
#[derive(Debug)]
pub struct Target<'a> {
    pub client: &'a Client,
    pub cluster: &'a str,
    pub service: &'a str,
    pub timeout: Duration,
    pub no_wait: bool,
    pub until: WaitUntil,
    pub progress: &'a Progress,
}

/// The deployment an UpdateService started (or the PRIMARY one it left in place).
#[derive(Debug, Clone, Default)]
pub struct Started {
    /// `ecs-svc/…`, the id in DescribeServices' deployments.
    pub deployment: String,
    /// Its service deployment's ARN, where ECS offers them.
    pub service_deployment: Option<String>,
}

impl Target<'_> {
    /// UpdateService to `td`, forcing a new deployment and setting the desired count when
    /// asked; returns the deployment the service is on afterwards.
    pub async fn start(
        &self,
        td: &str,
        force: bool,
        desired_count: Option<i32>,
    ) -> Result<Started, DeployError> {
        let mut update = json!({ "cluster": self.cluster, "service": self.service, "taskDefinition": td });
        if force {
            update["forceNewDeployment"] = json!(true);
        }
        if let Some(n) = desired_count {
            update["desiredCount"] = json!(n);
        }
        let updated = checked(self.client, op!("UpdateService"), "the update", &update).await?;
        let deployment =
            primary(&updated["service"]).and_then(|d| d["id"].as_str()).unwrap_or_default().to_owned();
        let count = desired_count.map(|n| format!(", desired count {n}")).unwrap_or_default();
        self.progress.say(
            "updated",
            &format!(
                "updated {}/{} to {}{count} (deployment {deployment})",
                self.cluster,
                self.service,
                short(td)
            ),
            json!({ "taskDefinition": short(td), "deployment": deployment, "desiredCount": desired_count }),
        );
        let service_deployment = updated["service"]["currentServiceDeployment"]
            .as_str()
            .filter(|a| !a.is_empty())
            .map(str::to_owned);
        Ok(Started { deployment, service_deployment })
    }

    /// UpdateService to `td` (forcing a new deployment when asked), then waits on the
    /// deployment it starts. `current` is the service before the update (its events are not
    /// shown again).
    pub async fn update(
        &self,
        td: &str,
        force: bool,
        current: &Value,
        started: Instant,
    ) -> Result<u8, DeployError> {
        let deployment = self.start(td, force, None).await?;
        if self.no_wait {
            return Ok(0);
        }
        self.wait(td, &deployment, super::ecs::event_ids(current), started).await
    }

    /// Waits on `deployment` (of `td`), showing only events not in `seen_events`.
    pub async fn wait(
        &self,
        td: &str,
        deployment: &Started,
        seen_events: BTreeSet<String>,
        started: Instant,
    ) -> Result<u8, DeployError> {
        let wait = Wait {
            client: self.client,
            cluster: self.cluster,
            service: self.service,
            td,
            deployment: &deployment.deployment,
            service_deployment: match self.until {
                WaitUntil::Deployed => deployment.service_deployment.as_deref(),
                WaitUntil::Stable => None,
            },
            until: self.until,
            progress: self.progress,
        };
        let id = &deployment.deployment;
        let interrupted = |signal: &str, code: u8| {
            self.progress.fail(
                "interrupted",
                &format!("interrupted ({signal}); deployment {id} continues in ECS"),
                json!({ "deployment": id, "signal": signal }),
            );
            self.progress.outcome("interrupted", json!({ "deployment": id, "taskDefinition": short(td) }));
            Ok(code)
        };
        tokio::select! {
            code = wait.run(started, self.timeout, seen_events) => code,
            _ = tokio::signal::ctrl_c() => interrupted("SIGINT", exit::INTERRUPTED),
            () = terminated() => interrupted("SIGTERM", exit::TERMINATED),
        }
    }
}

struct Wait<'a> {
    client: &'a Client,
    cluster: &'a str,
    service: &'a str,
    td: &'a str,
    deployment: &'a str,
    /// The service deployment to ask about (`--wait-until deployed` only).
    service_deployment: Option<&'a str>,
    until: WaitUntil,
    progress: &'a Progress,
}

/// What DescribeServiceDeployments says of a service deployment.
enum Verdict {
    Pending,
    Successful,
    /// Over without success: the status and its reason.
    Failed(String, String),
    /// The API is not offered here: judge by the rollout state.
    Unavailable,
}

impl Wait<'_> {
    async fn run(
        &self,
        started: Instant,
        timeout: Duration,
        mut seen_events: BTreeSet<String>,
    ) -> Result<u8, DeployError> {
        let mut seen_stopped = BTreeSet::new();
        let mut last_lines = String::new();
        let mut failed_at: Option<Instant> = None;
        let mut service_deployment = self.service_deployment;
        loop {
            let s = describe_service(self.client, self.cluster, self.service).await?;
            // Events oldest first, each once.
            let mut events: Vec<&Value> =
                s["events"].as_array().map(|e| e.iter().collect()).unwrap_or_default();
            events.reverse();
            for e in events {
                let id = e["id"].as_str().unwrap_or_default().to_owned();
                if seen_events.insert(id.clone()) {
                    let message = e["message"].as_str().unwrap_or_default();
                    self.progress.say(
                        "event",
                        &format!("event: {message}"),
                        json!({ "id": id, "message": message, "createdAt": e["createdAt"] }),
                    );
                }
            }
            let deployments = s["deployments"].as_array().cloned().unwrap_or_default();
            let lines: String = deployments.iter().map(line).collect::<Vec<_>>().join("\n");
            if lines != last_lines {
                self.progress
                    .deployments(&deployments.iter().map(|d| (line(d), fields(d))).collect::<Vec<_>>());
                last_lines = lines;
            }
            self.report_stopped(&mut seen_stopped).await;
            let ours = deployments.iter().find(|d| d["id"] == self.deployment);
            let primary = deployments.iter().find(|d| d["status"] == "PRIMARY");
            let running_td = primary.and_then(|d| d["taskDefinition"].as_str()).unwrap_or_default();
            let primary_is_ours = primary.is_some_and(|p| p["id"] == self.deployment);
            if self.until == WaitUntil::Deployed {
                let verdict = match service_deployment {
                    Some(arn) => self.verdict(arn).await?,
                    None => Verdict::Unavailable,
                };
                match verdict {
                    Verdict::Successful => return Ok(self.deployed(started, "service deployment SUCCESSFUL")),
                    Verdict::Failed(status, reason) => {
                        let msg = format!(
                            "deployment {} of {} ended {status}: {}; service runs {}",
                            self.deployment,
                            short(self.td),
                            reason.trim_end_matches('.'),
                            short(running_td)
                        );
                        return Ok(self.failed(&msg, running_td));
                    }
                    Verdict::Unavailable => {
                        service_deployment = None;
                        if ours.is_some_and(|d| d["rolloutState"] == "COMPLETED") {
                            return Ok(self.deployed(started, "rollout COMPLETED"));
                        }
                    }
                    Verdict::Pending => {}
                }
            }
            match ours {
                // A circuit breaker with rollback puts a new PRIMARY in place shortly after
                // failing ours: wait for it (a while) so the message names what really runs.
                Some(d) if d["rolloutState"] == "FAILED" => {
                    let since = *failed_at.get_or_insert_with(Instant::now);
                    if !primary_is_ours || since.elapsed() >= ROLLBACK_GRACE {
                        let rolled_back = if primary_is_ours { "" } else { ", rolled back" };
                        let msg = format!(
                            "deployment {} of {} failed: {}{rolled_back}; service runs {}",
                            self.deployment,
                            short(self.td),
                            d["rolloutStateReason"].as_str().unwrap_or_default().trim_end_matches('.'),
                            short(running_td)
                        );
                        return Ok(self.failed(&msg, running_td));
                    }
                }
                Some(d)
                    if d["status"] == "PRIMARY"
                        && deployments.len() == 1
                        && d["runningCount"] == d["desiredCount"]
                        && (d["rolloutState"].is_null() || d["rolloutState"] == "COMPLETED") =>
                {
                    return Ok(self.deployed(started, ""));
                }
                None if !self.deployment.is_empty() => {
                    let msg = format!(
                        "deployment {} was rolled back by the deployment circuit breaker; service runs {}",
                        self.deployment,
                        short(running_td)
                    );
                    return Ok(self.failed(&msg, running_td));
                }
                _ => {}
            }
            if started.elapsed() >= timeout {
                let msg = format!(
                    "timed out after {}s; deployment {} is still IN_PROGRESS in ECS (check with 'ecsd deploy \
                     status', undo with 'ecsd deploy rollback'; the service runs {})",
                    timeout.as_secs(),
                    self.deployment,
                    short(running_td)
                );
                let fields = json!({ "deployment": self.deployment, "taskDefinition": short(self.td), "running": short(running_td) });
                self.progress.fail("timeout", &msg, fields.clone());
                self.progress.outcome("timeout", fields);
                return Ok(exit::TIMEOUT);
            }
            tokio::time::sleep(POLL.min(timeout.saturating_sub(started.elapsed()))).await;
        }
    }

    /// Says the deployment is done; `how` tells what said so when not the service's state.
    fn deployed(&self, started: Instant, how: &str) -> u8 {
        let how_text = if how.is_empty() { String::new() } else { format!(" ({how})") };
        let seconds = started.elapsed().as_secs();
        let msg = format!(
            "deployed {} to {}/{} in {seconds}s{how_text}",
            short(self.td),
            self.cluster,
            self.service
        );
        let fields =
            json!({ "deployment": self.deployment, "taskDefinition": short(self.td), "seconds": seconds });
        self.progress.say("deployed", &msg, fields.clone());
        self.progress.outcome("deployed", fields);
        0
    }

    /// Says the deployment failed (exit 5); `running`: the revision the service runs.
    fn failed(&self, msg: &str, running: &str) -> u8 {
        let fields = json!({ "deployment": self.deployment, "taskDefinition": short(self.td), "running": short(running) });
        self.progress.fail("failed", msg, fields.clone());
        self.progress.outcome("failed", fields);
        exit::FAILED
    }

    /// The status of service deployment `arn`.
    async fn verdict(&self, arn: &str) -> Result<Verdict, DeployError> {
        let input = json!({ "serviceDeploymentArns": [arn] });
        let described = match call(self.client, op!("DescribeServiceDeployments"), &input).await {
            Ok(v) => v,
            Err(e) if unavailable(&e) => return Ok(Verdict::Unavailable),
            Err(e) => return Err(call_error("DescribeServiceDeployments", "the service deployment", e)),
        };
        let Some(sd) = described["serviceDeployments"].as_array().and_then(|l| l.first()) else {
            return Ok(Verdict::Unavailable);
        };
        let status = sd["status"].as_str().unwrap_or_default();
        Ok(match status {
            "SUCCESSFUL" => Verdict::Successful,
            "ROLLBACK_SUCCESSFUL" | "ROLLBACK_FAILED" | "STOPPED" => Verdict::Failed(
                status.to_owned(),
                sd["statusReason"].as_str().unwrap_or("no reason given").to_owned(),
            ),
            _ => Verdict::Pending,
        })
    }

    /// Prints every newly stopped task of this deployment with its reason and exit codes.
    /// Best effort: a failure to list is not a deployment failure.
    async fn report_stopped(&self, seen: &mut BTreeSet<String>) {
        let list =
            json!({ "cluster": self.cluster, "startedBy": self.deployment, "desiredStatus": "STOPPED" });
        let Ok(listed) = call(self.client, op!("ListTasks"), &list).await else { return };
        let arns: Vec<String> = listed["taskArns"]
            .as_array()
            .map(|a| {
                a.iter().filter_map(|v| v.as_str().map(str::to_owned)).filter(|a| !seen.contains(a)).collect()
            })
            .unwrap_or_default();
        if arns.is_empty() {
            return;
        }
        let Ok(described) =
            call(self.client, op!("DescribeTasks"), &json!({ "cluster": self.cluster, "tasks": arns })).await
        else {
            return;
        };
        for t in described["tasks"].as_array().into_iter().flatten() {
            if t["lastStatus"] != "STOPPED" {
                continue;
            }
            let arn = t["taskArn"].as_str().unwrap_or_default().to_owned();
            let containers: Vec<String> = t["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    let code =
                        c["exitCode"].as_i64().map_or("no exit code".to_owned(), |n| format!("exit {n}"));
                    let reason = c["reason"].as_str().map(|r| format!(": {r}")).unwrap_or_default();
                    format!("{}: {code}{reason}", c["name"].as_str().unwrap_or_default())
                })
                .collect();
            let reason = t["stoppedReason"].as_str().unwrap_or_default();
            self.progress.say(
                "task-stopped",
                &format!("task {} stopped: {reason} ({})", short(&arn), containers.join("; ")),
                json!({ "task": arn, "stoppedReason": reason, "containers": containers }),
            );
            seen.insert(arn);
        }
    }
}

/// A deployment as a JSON line's fields.
fn fields(d: &Value) -> Value {
    json!({
        "deployment": d["id"], "status": d["status"],
        "taskDefinition": short(d["taskDefinition"].as_str().unwrap_or_default()),
        "desiredCount": d["desiredCount"], "pendingCount": d["pendingCount"], "runningCount": d["runningCount"],
        "rolloutState": d["rolloutState"], "rolloutStateReason": d["rolloutStateReason"],
    })
}

/// Resolves when the process gets SIGTERM (never, where that cannot be watched).
async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

/// A deployment line: `  PRIMARY web:4 desired:2 pending:1 running:1 IN_PROGRESS`.
pub fn line(d: &Value) -> String {
    format!(
        "{:>9} {} desired:{} pending:{} running:{} {}",
        d["status"].as_str().unwrap_or_default(),
        short(d["taskDefinition"].as_str().unwrap_or_default()),
        d["desiredCount"],
        d["pendingCount"],
        d["runningCount"],
        d["rolloutState"].as_str().unwrap_or_default()
    )
}

/// `wait`: waits on the service's PRIMARY deployment (the one in flight, if any) with apply's
/// outcomes and exit codes.
pub async fn follow(target: &Target<'_>) -> Result<u8, DeployError> {
    let s = describe_service(target.client, target.cluster, target.service).await?;
    let Some(p) = primary(&s) else {
        target.progress.say(
            "idle",
            &format!("{}/{} has no deployment", target.cluster, target.service),
            json!({}),
        );
        return Ok(0);
    };
    let (td, id) = (p["taskDefinition"].as_str().unwrap_or_default(), p["id"].as_str().unwrap_or_default());
    let settled = s["deployments"].as_array().is_some_and(|d| d.len() == 1)
        && p["rolloutState"] == "COMPLETED"
        && p["runningCount"] == p["desiredCount"];
    if settled {
        let msg =
            format!("no deployment in flight; {}/{} runs {}", target.cluster, target.service, short(td));
        target.progress.say("idle", &msg, json!({ "taskDefinition": short(td) }));
        target.progress.outcome("idle", json!({ "taskDefinition": short(td) }));
        return Ok(0);
    }
    let msg = format!("waiting on deployment {id} of {}", short(td));
    target.progress.say("waiting", &msg, json!({ "deployment": id, "taskDefinition": short(td) }));
    let deployment = Started {
        deployment: id.to_owned(),
        service_deployment: s["currentServiceDeployment"]
            .as_str()
            .filter(|a| !a.is_empty())
            .map(str::to_owned),
    };
    target.wait(td, &deployment, super::ecs::event_ids(&s), Instant::now()).await
}
