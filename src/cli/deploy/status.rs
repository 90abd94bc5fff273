//! `status`: the service's revision, counts, deployments and last events, on stdout.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::Value;

use super::ecs::{describe_service, short};
use super::error::DeployError;
use super::run::print;
use super::session::Session;
use super::wait::line;

pub async fn status(
    session: &Session,
    cluster: &str,
    service: &str,
    events: usize,
) -> Result<u8, DeployError> {
    let s = describe_service(&session.client, cluster, service).await?;
    print(&text(&s, events))?;
    Ok(0)
}

/// The report of one DescribeServices entry.
pub fn text(s: &Value, events: usize) -> String {
    let mut out = format!(
        "Service: {}\nCluster: {}\nTaskDefinition: {}\nStatus: {} desired:{} pending:{} running:{}\nDeployments:\n",
        s["serviceName"].as_str().unwrap_or_default(),
        short(s["clusterArn"].as_str().unwrap_or_default()),
        short(s["taskDefinition"].as_str().unwrap_or_default()),
        s["status"].as_str().unwrap_or_default(),
        s["desiredCount"],
        s["pendingCount"],
        s["runningCount"],
    );
    for d in s["deployments"].as_array().into_iter().flatten() {
        out.push_str(&line(d));
        if let Some(reason) = d["rolloutStateReason"].as_str() {
            out.push_str(&format!(" ({reason})"));
        }
        out.push('\n');
    }
    out.push_str("Events:\n");
    for e in s["events"].as_array().into_iter().flatten().take(events) {
        let at = e["createdAt"].as_f64().unwrap_or_default().max(0.0);
        let at = crate::runtime::logs::format_rfc3339(UNIX_EPOCH + Duration::from_secs(at as u64), false);
        out.push_str(&format!("{at} {}\n", e["message"].as_str().unwrap_or_default()));
    }
    out
}
