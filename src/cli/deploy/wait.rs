//! Waiting on one deployment of a service until it completes, fails or is rolled back, or the
//! time runs out: each event once, the deployments when they change, and each stopped task of
//! the deployment with its reason and exit codes. SIGINT stops the waiting only.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::aws::Client;

use super::ecs::{call, checked, describe_service, op, primary, short};
use super::error::{DeployError, exit};

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
}

impl Target<'_> {
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
        let mut update = json!({ "cluster": self.cluster, "service": self.service, "taskDefinition": td });
        if force {
            update["forceNewDeployment"] = json!(true);
        }
        let updated = checked(self.client, op!("UpdateService"), "the update", &update).await?;
        let deployment =
            primary(&updated["service"]).and_then(|d| d["id"].as_str()).unwrap_or_default().to_owned();
        eprintln!("updated {}/{} to {} (deployment {deployment})", self.cluster, self.service, short(td));
        if self.no_wait {
            return Ok(0);
        }
        self.wait(td, &deployment, super::ecs::event_ids(current), started).await
    }

    /// Waits on `deployment` (of `td`), showing only events not in `seen_events`.
    pub async fn wait(
        &self,
        td: &str,
        deployment: &str,
        seen_events: BTreeSet<String>,
        started: Instant,
    ) -> Result<u8, DeployError> {
        let wait = Wait { client: self.client, cluster: self.cluster, service: self.service, td, deployment };
        tokio::select! {
            code = wait.run(started, self.timeout, seen_events) => code,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("interrupted; deployment {deployment} continues in ECS");
                Ok(exit::INTERRUPTED)
            }
        }
    }
}

struct Wait<'a> {
    client: &'a Client,
    cluster: &'a str,
    service: &'a str,
    td: &'a str,
    deployment: &'a str,
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
        loop {
            let s = describe_service(self.client, self.cluster, self.service).await?;
            // Events oldest first, each once.
            let mut events: Vec<&Value> =
                s["events"].as_array().map(|e| e.iter().collect()).unwrap_or_default();
            events.reverse();
            for e in events {
                let id = e["id"].as_str().unwrap_or_default().to_owned();
                if seen_events.insert(id) {
                    eprintln!("event: {}", e["message"].as_str().unwrap_or_default());
                }
            }
            let deployments = s["deployments"].as_array().cloned().unwrap_or_default();
            let lines: String = deployments.iter().map(line).collect::<Vec<_>>().join("\n");
            if lines != last_lines {
                eprintln!("{lines}");
                last_lines = lines;
            }
            self.report_stopped(&mut seen_stopped).await;
            let ours = deployments.iter().find(|d| d["id"] == self.deployment);
            let primary = deployments.iter().find(|d| d["status"] == "PRIMARY");
            let running_td = primary.and_then(|d| d["taskDefinition"].as_str()).unwrap_or_default();
            let primary_is_ours = primary.is_some_and(|p| p["id"] == self.deployment);
            match ours {
                // A circuit breaker with rollback puts a new PRIMARY in place shortly after
                // failing ours: wait for it (a while) so the message names what really runs.
                Some(d) if d["rolloutState"] == "FAILED" => {
                    let since = *failed_at.get_or_insert_with(Instant::now);
                    if !primary_is_ours || since.elapsed() >= ROLLBACK_GRACE {
                        let rolled_back = if primary_is_ours { "" } else { ", rolled back" };
                        eprintln!(
                            "error: deployment {} of {} failed: {}{rolled_back}; service runs {}",
                            self.deployment,
                            short(self.td),
                            d["rolloutStateReason"].as_str().unwrap_or_default().trim_end_matches('.'),
                            short(running_td)
                        );
                        return Ok(exit::FAILED);
                    }
                }
                Some(d)
                    if d["status"] == "PRIMARY"
                        && deployments.len() == 1
                        && d["runningCount"] == d["desiredCount"]
                        && (d["rolloutState"].is_null() || d["rolloutState"] == "COMPLETED") =>
                {
                    eprintln!(
                        "deployed {} to {}/{} in {}s",
                        short(self.td),
                        self.cluster,
                        self.service,
                        started.elapsed().as_secs()
                    );
                    return Ok(0);
                }
                None if !self.deployment.is_empty() => {
                    eprintln!(
                        "error: deployment {} was rolled back by the deployment circuit breaker; service runs {}",
                        self.deployment,
                        short(running_td)
                    );
                    return Ok(exit::FAILED);
                }
                _ => {}
            }
            if started.elapsed() >= timeout {
                eprintln!(
                    "error: timed out after {}s; deployment {} is still IN_PROGRESS in ECS (check with 'ecsd deploy \
                     status', undo with 'ecsd deploy rollback'; the service runs {})",
                    timeout.as_secs(),
                    self.deployment,
                    short(running_td)
                );
                return Ok(exit::TIMEOUT);
            }
            tokio::time::sleep(POLL.min(timeout.saturating_sub(started.elapsed()))).await;
        }
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
            eprintln!(
                "task {} stopped: {} ({})",
                short(&arn),
                t["stoppedReason"].as_str().unwrap_or_default(),
                containers.join("; ")
            );
            seen.insert(arn);
        }
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
        eprintln!("{}/{} has no deployment", target.cluster, target.service);
        return Ok(0);
    };
    let (td, id) = (p["taskDefinition"].as_str().unwrap_or_default(), p["id"].as_str().unwrap_or_default());
    let settled = s["deployments"].as_array().is_some_and(|d| d.len() == 1)
        && p["rolloutState"] == "COMPLETED"
        && p["runningCount"] == p["desiredCount"];
    if settled {
        eprintln!("no deployment in flight; {}/{} runs {}", target.cluster, target.service, short(td));
        return Ok(0);
    }
    eprintln!("waiting on deployment {id} of {}", short(td));
    target.wait(td, id, super::ecs::event_ids(&s), Instant::now()).await
}
