//! `apply`: compare with the service's revision, register, update the service, and wait on
//! this deployment until it completes, fails or is rolled back, or the time runs out.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::aws::{AwsError, Client, Service};

use super::args::Flags;
use super::error::{DeployError, exit, is_rejection};
use super::normalise::{canonical, differences};
use super::render::request;
use super::run::Prepared;
use super::session::Session;

const POLL: Duration = Duration::from_secs(2);
/// How long a failed deployment may stay PRIMARY before we stop waiting for its rollback.
const ROLLBACK_GRACE: Duration = Duration::from_secs(20);

const DESCRIBE_SERVICES: &str = "AmazonEC2ContainerServiceV20141113.DescribeServices";
const DESCRIBE_TASK_DEFINITION: &str = "AmazonEC2ContainerServiceV20141113.DescribeTaskDefinition";
const REGISTER_TASK_DEFINITION: &str = "AmazonEC2ContainerServiceV20141113.RegisterTaskDefinition";
const UPDATE_SERVICE: &str = "AmazonEC2ContainerServiceV20141113.UpdateService";
const LIST_TASKS: &str = "AmazonEC2ContainerServiceV20141113.ListTasks";
const DESCRIBE_TASKS: &str = "AmazonEC2ContainerServiceV20141113.DescribeTasks";

async fn ecs(client: &Client, target: &'static str, input: &Value) -> Result<Value, AwsError> {
    client.json(Service::Ecs, target, input).await
}

/// A failed call: ECS's refusal (exit 4) or a failure to call (exit 1).
fn call_error(operation: &'static str, what: &'static str, cause: AwsError) -> DeployError {
    if is_rejection(&cause) {
        DeployError::Rejected { operation, what, cause: Box::new(cause), kept: None }
    } else {
        DeployError::Call { operation, cause: Box::new(cause) }
    }
}

fn short(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

pub async fn apply(flags: &Flags, session: &Session, prepared: &Prepared) -> Result<u8, DeployError> {
    let client = &session.client;
    let service = flags.service.clone().ok_or(DeployError::NoService { verb: "apply" })?;
    let cluster = flags.cluster.clone().unwrap_or_else(|| "default".to_owned());
    let started = Instant::now();
    let current = describe_service(client, &cluster, &service).await?;
    let current_td = current["taskDefinition"].as_str().unwrap_or_default().to_owned();
    let body = request(&prepared.doc);
    let changed = if current_td.is_empty() {
        vec!["/".to_owned()]
    } else {
        let described = ecs(client, DESCRIBE_TASK_DEFINITION, &json!({ "taskDefinition": current_td }))
            .await
            .map_err(|e| call_error("DescribeTaskDefinition", "the service's revision", e))?;
        differences(&canonical(&described["taskDefinition"]), &canonical(&body))
    };
    let unchanged = changed.is_empty();
    if unchanged && !flags.force_new_deployment {
        eprintln!("task definition unchanged (matches {}); nothing to deploy", short(&current_td));
        return Ok(0);
    }
    if flags.dry_run {
        if unchanged {
            eprintln!("dry run: would force a new deployment of {}; nothing was written", short(&current_td));
        } else {
            eprintln!(
                "dry run: would register a new revision replacing {} (changed: {}); nothing was written",
                short(&current_td),
                changed.join(", ")
            );
        }
        return Ok(0);
    }
    let td = if unchanged {
        current_td.clone()
    } else {
        let registered = match ecs(client, REGISTER_TASK_DEFINITION, &body).await {
            Ok(v) => v,
            Err(cause) if is_rejection(&cause) => {
                let kept = keep(&prepared.doc.stringify(2));
                return Err(DeployError::Rejected {
                    operation: "RegisterTaskDefinition",
                    what: "the rendered task definition",
                    cause: Box::new(cause),
                    kept,
                });
            }
            Err(cause) => {
                return Err(DeployError::Call {
                    operation: "RegisterTaskDefinition",
                    cause: Box::new(cause),
                });
            }
        };
        let arn = registered["taskDefinition"]["taskDefinitionArn"].as_str().unwrap_or_default().to_owned();
        eprintln!("registered {}", short(&arn));
        arn
    };
    let mut update = json!({ "cluster": cluster, "service": service, "taskDefinition": td });
    if flags.force_new_deployment {
        update["forceNewDeployment"] = json!(true);
    }
    let updated = ecs(client, UPDATE_SERVICE, &update)
        .await
        .map_err(|e| call_error("UpdateService", "the update", e))?;
    let deployment = updated["service"]["deployments"]
        .as_array()
        .and_then(|ds| ds.iter().find(|d| d["status"] == "PRIMARY"))
        .and_then(|d| d["id"].as_str())
        .unwrap_or_default()
        .to_owned();
    eprintln!("updated {cluster}/{service} to {} (deployment {deployment})", short(&td));
    if flags.no_wait {
        return Ok(0);
    }
    // Events from before this deployment are not ours to show.
    let old_events: BTreeSet<String> = current["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["id"].as_str().map(str::to_owned))
        .collect();
    let wait = Wait { client, cluster: &cluster, service: &service, td: &td, deployment: &deployment };
    tokio::select! {
        code = wait.run(started, flags.timeout, old_events) => code,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("interrupted; deployment {deployment} continues in ECS");
            Ok(exit::INTERRUPTED)
        }
    }
}

/// Writes the rendered input where the user can look at it after a refusal.
fn keep(text: &str) -> Option<std::path::PathBuf> {
    let path = std::env::temp_dir().join(format!("ecsd-deploy-{}.json", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, text).ok().map(|()| path)
}

async fn describe_service(client: &Client, cluster: &str, service: &str) -> Result<Value, DeployError> {
    let out = ecs(client, DESCRIBE_SERVICES, &json!({ "cluster": cluster, "services": [service] }))
        .await
        .map_err(|e| call_error("DescribeServices", "the service", e))?;
    match out["services"].as_array().and_then(|s| s.first()) {
        Some(s) if s["status"] != "INACTIVE" => Ok(s.clone()),
        _ => Err(DeployError::ServiceNotFound { cluster: cluster.to_owned(), service: service.to_owned() }),
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
                    "error: timed out after {}s; deployment {} is still IN_PROGRESS in ECS (check with 'ecsd services', \
                     the service runs {})",
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
        let Ok(listed) = ecs(self.client, LIST_TASKS, &list).await else { return };
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
            ecs(self.client, DESCRIBE_TASKS, &json!({ "cluster": self.cluster, "tasks": arns })).await
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
fn line(d: &Value) -> String {
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
