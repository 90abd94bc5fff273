//! `apply`: compare with the service's revision, register, update the service, and wait on
//! this deployment until it completes, fails or is rolled back, or the time runs out.

use std::time::Instant;

use serde_json::{Value, json};

use crate::aws::Client;

use super::args::{Flags, WaitUntil};
use super::ecs::{call, checked, describe_service, event_ids, op, primary, short};
use super::error::{DeployError, exit, is_rejection};
use super::normalise::{canonical, differences};
use super::progress::Progress;
use super::render::request;
use super::rollback;
use super::run::Prepared;
use super::session::Session;
use super::wait::{Started, Target};

/// The service's current revision next to the rendered request, both canonical.
#[derive(Debug)]
pub struct Comparison {
    /// The service as DescribeServices gave it.
    pub service: Value,
    /// The ARN of the revision the service runs ("" for none).
    pub current_td: String,
    /// The canonical current revision (`null` for none).
    pub current: Value,
    /// The canonical rendered request.
    pub rendered: Value,
    /// The JSON pointers at which they differ.
    pub changed: Vec<String>,
}

/// Describes the service and its revision and compares it with the rendered definition.
/// Only DescribeServices and DescribeTaskDefinition are called.
pub async fn compare(
    client: &Client,
    cluster: &str,
    service: &str,
    body: &Value,
) -> Result<Comparison, DeployError> {
    let described_service = describe_service(client, cluster, service).await?;
    let current_td = described_service["taskDefinition"].as_str().unwrap_or_default().to_owned();
    let rendered = canonical(body);
    let (current, changed) = if current_td.is_empty() {
        (Value::Null, vec!["/".to_owned()])
    } else {
        let described = checked(
            client,
            op!("DescribeTaskDefinition"),
            "the service's revision",
            &json!({ "taskDefinition": current_td }),
        )
        .await?;
        let current = canonical(&described["taskDefinition"]);
        let changed = differences(&current, &rendered);
        (current, changed)
    };
    Ok(Comparison { service: described_service, current_td, current, rendered, changed })
}

pub async fn apply(
    flags: &Flags,
    session: &Session,
    prepared: &Prepared,
    progress: &Progress,
) -> Result<u8, DeployError> {
    let client = &session.client;
    let service = flags.service.clone().ok_or(DeployError::NoService { verb: "apply" })?;
    let cluster = flags.cluster.clone().unwrap_or_else(|| "default".to_owned());
    let started = Instant::now();
    let body = request(&prepared.doc);
    let Comparison { service: current, current_td, changed, .. } =
        compare(client, &cluster, &service, &body).await?;
    let unchanged = changed.is_empty();
    let current_count = current["desiredCount"].as_i64();
    let rescale = flags.desired_count.filter(|n| Some(i64::from(*n)) != current_count);
    if unchanged && !flags.force_new_deployment && rescale.is_none() {
        let msg = format!("task definition unchanged (matches {}); nothing to deploy", short(&current_td));
        progress.say("unchanged", &msg, json!({ "taskDefinition": short(&current_td) }));
        progress.outcome("unchanged", json!({ "taskDefinition": short(&current_td) }));
        return Ok(0);
    }
    if flags.dry_run {
        let count = rescale.map(|n| format!(" and set the desired count to {n}")).unwrap_or_default();
        let msg = if !unchanged {
            format!(
                "dry run: would register a new revision replacing {}{count} (changed: {}); nothing was written",
                short(&current_td),
                changed.join(", ")
            )
        } else if flags.force_new_deployment {
            format!(
                "dry run: would force a new deployment of {}{count}; nothing was written",
                short(&current_td)
            )
        } else {
            format!("dry run: would keep {}{count}; nothing was written", short(&current_td))
        };
        let fields =
            json!({ "taskDefinition": short(&current_td), "changed": changed, "desiredCount": rescale });
        progress.say("dry-run", &msg, fields.clone());
        progress.outcome("dry-run", fields);
        return Ok(0);
    }
    let td = if unchanged {
        current_td.clone()
    } else {
        let registered = match call(client, op!("RegisterTaskDefinition"), &body).await {
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
        progress.say(
            "registered",
            &format!("registered {}", short(&arn)),
            json!({ "taskDefinition": short(&arn) }),
        );
        arn
    };
    let target = Target {
        client,
        cluster: &cluster,
        service: &service,
        timeout: flags.timeout(),
        no_wait: flags.no_wait,
        until: flags.wait_until(),
        progress,
    };
    let deployment = target.start(&td, flags.force_new_deployment, flags.desired_count).await?;
    if flags.no_wait {
        progress
            .outcome("updated", json!({ "taskDefinition": short(&td), "deployment": deployment.deployment }));
        return Ok(0);
    }
    let code = target.wait(&td, &deployment, event_ids(&current), started).await?;
    if !flags.rollback_on_failure || !matches!(code, exit::FAILED | exit::TIMEOUT) {
        return Ok(code);
    }
    roll_back_after_failure(&target, &td, &deployment).await
}

/// `--rollback-on-failure`: unless ECS already put another deployment in place, rolls back
/// as `ecsd deploy rollback` does. Exit 5 when the service is back on a revision that works,
/// 7 when the rollback did not complete.
async fn roll_back_after_failure(target: &Target<'_>, td: &str, ours: &Started) -> Result<u8, DeployError> {
    let s = describe_service(target.client, target.cluster, target.service).await?;
    if primary(&s).is_none_or(|p| p["id"] != ours.deployment.as_str()) {
        // ECS rolled back already (the wait said to what).
        return Ok(exit::FAILED);
    }
    target.progress.say("rolling-back", "rolling back (--rollback-on-failure)", json!({}));
    // The rollback's wait is over when the service is stable on the old revision.
    let rollback = Target { until: WaitUntil::Stable, no_wait: false, ..*target };
    let outcome = rollback::rollback(&rollback, None).await;
    let after = describe_service(target.client, target.cluster, target.service).await;
    let running = after
        .as_ref()
        .ok()
        .and_then(primary)
        .and_then(|p| p["taskDefinition"].as_str())
        .map_or("an unknown revision", short)
        .to_owned();
    let fields = json!({ "deployment": ours.deployment, "taskDefinition": short(td), "running": running });
    let (outcome, msg, code) = match outcome {
        Ok(0) => (
            "rolled-back",
            format!("deployment {} of {} failed; rolled back to {running}", ours.deployment, short(td)),
            exit::FAILED,
        ),
        Ok(code @ (exit::INTERRUPTED | exit::TERMINATED)) => return Ok(code),
        Ok(_) => (
            "rollback-failed",
            format!(
                "rollback of {}/{} did not complete (its PRIMARY deployment runs {running}); service state unknown",
                target.cluster, target.service
            ),
            exit::ROLLBACK_FAILED,
        ),
        Err(e) => (
            "rollback-failed",
            format!("rollback of {}/{} failed: {e}; service state unknown", target.cluster, target.service),
            exit::ROLLBACK_FAILED,
        ),
    };
    target.progress.fail(outcome, &msg, fields.clone());
    target.progress.outcome(outcome, fields);
    Ok(code)
}

/// Writes the rendered input where the user can look at it after a refusal.
fn keep(text: &str) -> Option<std::path::PathBuf> {
    let path = std::env::temp_dir().join(format!("ecsd-deploy-{}.json", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, text).ok().map(|()| path)
}
