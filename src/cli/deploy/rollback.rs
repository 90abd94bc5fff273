//! `rollback`: a deployment in flight is stopped with StopServiceDeployment(ROLLBACK) (ECS
//! rolls back to its source revision); otherwise, or where that API is not offered, the
//! service is updated to `--to` or to the last revision a deployment completed with (not
//! merely the previous one, which may never have run). Then waits like apply.

use std::time::Instant;

use serde_json::{Value, json};

use crate::aws::Client;

use super::ecs::{call, call_error, checked, describe_service, event_ids, op, primary, short, unavailable};
use super::error::DeployError;
use super::wait::{Started, Target};

pub async fn rollback(target: &Target<'_>, to: Option<&str>) -> Result<u8, DeployError> {
    let started = Instant::now();
    let client = target.client;
    let current = describe_service(client, target.cluster, target.service).await?;
    let current_td = current["taskDefinition"].as_str().unwrap_or_default().to_owned();
    let in_flight = primary(&current).is_some_and(|d| d["rolloutState"] == "IN_PROGRESS");
    if to.is_none()
        && in_flight
        && let Some(code) = stop(target, &current, started).await?
    {
        return Ok(code);
    }
    let td = match to {
        Some(to) => {
            let described = checked(
                client,
                op!("DescribeTaskDefinition"),
                "the --to revision",
                &json!({ "taskDefinition": to }),
            )
            .await?;
            described["taskDefinition"]["taskDefinitionArn"].as_str().unwrap_or_default().to_owned()
        }
        None => match last_successful(client, target, &current_td).await? {
            Some(td) => td,
            None => previous(client, &current_td).await?.ok_or_else(|| DeployError::NothingToRollBackTo {
                service: target.service.to_owned(),
                current: short(&current_td).to_owned(),
            })?,
        },
    };
    let msg = format!(
        "rolling back {}/{} from {} to {}",
        target.cluster,
        target.service,
        short(&current_td),
        short(&td)
    );
    target.progress.say("rolling-back", &msg, json!({ "from": short(&current_td), "to": short(&td) }));
    target.update(&td, false, &current, started).await
}

/// Stops the in-flight deployment; `None` when ECS does not offer the service-deployment
/// API (or has no open deployment), so the caller updates the service instead.
async fn stop(target: &Target<'_>, current: &Value, started: Instant) -> Result<Option<u8>, DeployError> {
    let client = target.client;
    let list =
        json!({ "cluster": target.cluster, "service": target.service, "status": ["PENDING", "IN_PROGRESS"] });
    let listed = match call(client, op!("ListServiceDeployments"), &list).await {
        Ok(v) => v,
        Err(e) if unavailable(&e) => return Ok(None),
        Err(e) => return Err(call_error("ListServiceDeployments", "the service", e)),
    };
    let Some(arn) = listed["serviceDeployments"]
        .as_array()
        .and_then(|l| l.first())
        .and_then(|d| d["serviceDeploymentArn"].as_str())
    else {
        return Ok(None);
    };
    let stop = json!({ "serviceDeploymentArn": arn, "stopType": "ROLLBACK" });
    match call(client, op!("StopServiceDeployment"), &stop).await {
        Ok(_) => {}
        Err(e) if unavailable(&e) => return Ok(None),
        Err(e) => return Err(call_error("StopServiceDeployment", "the rollback", e)),
    }
    let msg = format!(
        "stopped deployment {} of {}/{}; ECS rolls it back",
        short(arn),
        target.cluster,
        target.service
    );
    target.progress.say("stopped", &msg, json!({ "serviceDeployment": arn }));
    if target.no_wait {
        return Ok(Some(0));
    }
    let after = describe_service(client, target.cluster, target.service).await?;
    let Some(p) = primary(&after) else { return Ok(Some(0)) };
    let td = p["taskDefinition"].as_str().unwrap_or_default();
    // The rollback's own deployment: judged by its rollout, not by the stopped one's status.
    let deployment =
        Started { deployment: p["id"].as_str().unwrap_or_default().to_owned(), service_deployment: None };
    target.wait(td, &deployment, event_ids(current), started).await.map(Some)
}

/// The newest revision other than `current_td` that a deployment of the service completed
/// with; `None` when there is none or the service-deployment API is not offered.
async fn last_successful(
    client: &Client,
    target: &Target<'_>,
    current_td: &str,
) -> Result<Option<String>, DeployError> {
    let list = json!({ "cluster": target.cluster, "service": target.service, "status": ["SUCCESSFUL"], "maxResults": 100 });
    let listed = match call(client, op!("ListServiceDeployments"), &list).await {
        Ok(v) => v,
        Err(e) if unavailable(&e) => return Ok(None),
        Err(e) => return Err(call_error("ListServiceDeployments", "the service", e)),
    };
    let mut briefs: Vec<&Value> = listed["serviceDeployments"].as_array().into_iter().flatten().collect();
    briefs.sort_by(|a, b| {
        b["createdAt"].as_f64().unwrap_or_default().total_cmp(&a["createdAt"].as_f64().unwrap_or_default())
    });
    let revisions: Vec<&str> = briefs.iter().filter_map(|b| b["targetServiceRevisionArn"].as_str()).collect();
    for chunk in revisions.chunks(20) {
        let described =
            match call(client, op!("DescribeServiceRevisions"), &json!({ "serviceRevisionArns": chunk }))
                .await
            {
                Ok(v) => v,
                Err(e) if unavailable(&e) => return Ok(None),
                Err(e) => return Err(call_error("DescribeServiceRevisions", "the service's revisions", e)),
            };
        let by_arn: Vec<(&str, &str)> = described["serviceRevisions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| Some((r["serviceRevisionArn"].as_str()?, r["taskDefinition"].as_str()?)))
            .collect();
        // In the deployments' order, newest first.
        for arn in chunk {
            if let Some((_, td)) = by_arn.iter().find(|(a, _)| a == arn)
                && *td != current_td
            {
                return Ok(Some((*td).to_owned()));
            }
        }
    }
    Ok(None)
}

/// The ACTIVE revision of the family just before `current_td` (ecspresso's rule, for an ECS
/// without service deployments).
async fn previous(client: &Client, current_td: &str) -> Result<Option<String>, DeployError> {
    let Some((family, revision)) = short(current_td).rsplit_once(':') else { return Ok(None) };
    let revision: u64 = revision.parse().unwrap_or(u64::MAX);
    let mut token: Option<String> = None;
    loop {
        let mut input = json!({ "familyPrefix": family, "status": "ACTIVE", "sort": "DESC" });
        if let Some(t) = &token {
            input["nextToken"] = json!(t);
        }
        let listed = checked(client, op!("ListTaskDefinitions"), "the family", &input).await?;
        for arn in listed["taskDefinitionArns"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            let Some((f, r)) = short(arn).rsplit_once(':') else { continue };
            if f == family && r.parse::<u64>().is_ok_and(|r| r < revision) {
                return Ok(Some(arn.to_owned()));
            }
        }
        match listed["nextToken"].as_str() {
            Some(t) => token = Some(t.to_owned()),
            None => return Ok(None),
        }
    }
}
