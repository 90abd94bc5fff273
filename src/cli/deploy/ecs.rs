//! The ECS calls the verbs share: one signed JSON call, its failure classified (refused by
//! ECS → exit 4, not made or not answered → exit 1), and the service looked up.

use serde_json::{Value, json};

use crate::aws::{AwsError, Client, Service};

use super::error::{DeployError, is_rejection};

const PREFIX: &str = "AmazonEC2ContainerServiceV20141113.";

/// The `X-Amz-Target` of an ECS operation: `op!("DescribeServices")`.
macro_rules! op {
    ($name:literal) => {
        concat!("AmazonEC2ContainerServiceV20141113.", $name)
    };
}
pub(crate) use op;

/// The operation's name in a target made by [`op!`].
fn name(target: &'static str) -> &'static str {
    target.strip_prefix(PREFIX).unwrap_or(target)
}

/// Calls the ECS operation `target` (made by [`op!`]) with a JSON input.
pub async fn call(client: &Client, target: &'static str, input: &Value) -> Result<Value, AwsError> {
    client.json(Service::Ecs, target, input).await
}

/// Like [`call`], a failure turned into the error of its exit code; `what` names the object
/// of a refusal ("the update", "the service's revision").
pub async fn checked(
    client: &Client,
    target: &'static str,
    what: &'static str,
    input: &Value,
) -> Result<Value, DeployError> {
    call(client, target, input).await.map_err(|e| call_error(name(target), what, e))
}

/// A failed call: ECS's refusal (exit 4) or a failure to call (exit 1).
pub fn call_error(operation: &'static str, what: &'static str, cause: AwsError) -> DeployError {
    if is_rejection(&cause) {
        DeployError::Rejected { operation, what, cause: Box::new(cause), kept: None }
    } else {
        DeployError::Call { operation, cause: Box::new(cause) }
    }
}

/// Whether ECS does not offer an operation (an older endpoint) or this caller may not use it:
/// the verbs then fall back to what DescribeServices alone tells.
pub fn unavailable(e: &AwsError) -> bool {
    matches!(e, AwsError::Service { code: Some(code), .. }
        if matches!(code.as_str(), "UnknownOperationException" | "AccessDeniedException" | "InvalidAction"))
}

/// `family:revision` of a task definition ARN (the ARN's last segment).
pub fn short(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

/// The service as DescribeServices gives it; an INACTIVE or missing one is not found.
pub async fn describe_service(client: &Client, cluster: &str, service: &str) -> Result<Value, DeployError> {
    let out = checked(
        client,
        op!("DescribeServices"),
        "the service",
        &json!({ "cluster": cluster, "services": [service] }),
    )
    .await?;
    match out["services"].as_array().and_then(|s| s.first()) {
        Some(s) if s["status"] != "INACTIVE" => Ok(s.clone()),
        _ => Err(DeployError::ServiceNotFound { cluster: cluster.to_owned(), service: service.to_owned() }),
    }
}

/// The service's PRIMARY deployment.
pub fn primary(service: &Value) -> Option<&Value> {
    service["deployments"].as_array()?.iter().find(|d| d["status"] == "PRIMARY")
}

/// The ids of the service's events, so that a wait shows only newer ones.
pub fn event_ids(service: &Value) -> std::collections::BTreeSet<String> {
    service["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["id"].as_str().map(str::to_owned))
        .collect()
}
