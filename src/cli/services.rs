//! `ecsd services`: the services of a cluster as a table (desired, running and pending per
//! deployment, and the last event) or as DescribeServices JSON. An ECS API client: it calls
//! ListServices and DescribeServices on the endpoint like any other client would.

use std::fmt::Write as _;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Ecs, placeholder};
use crate::aws::AwsError;
use crate::model::shapes::{
    DescribeServicesRequest, DescribeServicesResponse, ListServicesRequest, ListServicesResponse, Service,
};

/// Why `ecsd services` could not show the services.
#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    /// The endpoint could not be reached, or answered with an error (`Code: message`).
    #[error(transparent)]
    Api(#[from] AwsError),
    #[error("ServiceNotFoundException: {arn}: {reason}")]
    Missing { arn: String, reason: String },
    #[error("cannot encode the {operation} request: {source}")]
    Encode { operation: &'static str, source: serde_json::Error },
}

/// What to show, and where to ask.
#[derive(Debug, Clone)]
pub struct Query {
    pub endpoint: String,
    pub cluster: Option<String>,
    /// Only these services (names or ARNs); all ACTIVE ones when empty.
    pub services: Vec<String>,
}

/// ECS's `operation` with `request`, on the endpoint.
async fn call<Req: Serialize, Resp: DeserializeOwned>(
    ecs: &Ecs,
    operation: &'static str,
    request: &Req,
) -> Result<Resp, ServicesError> {
    let input =
        serde_json::to_value(request).map_err(|source| ServicesError::Encode { operation, source })?;
    Ok(ecs.call(operation, input).await?)
}

/// The services as DescribeServices shows them (ACTIVE ones of the cluster, or those named).
pub async fn fetch(q: &Query) -> Result<Vec<Service>, ServicesError> {
    // ecsd checks no signatures: the calls go signed with placeholder keys.
    let ecs = Ecs::new(&q.endpoint, "us-east-1", placeholder());
    let mut names = q.services.clone();
    if names.is_empty() {
        let mut token = None;
        loop {
            let page: ListServicesResponse = call(
                &ecs,
                "AmazonEC2ContainerServiceV20141113.ListServices",
                &ListServicesRequest {
                    cluster: q.cluster.clone(),
                    next_token: token.clone(),
                    max_results: Some(100),
                    ..Default::default()
                },
            )
            .await?;
            names.extend(page.service_arns.unwrap_or_default());
            token = page.next_token;
            if token.is_none() {
                break;
            }
        }
    }
    let mut services = vec![];
    for chunk in names.chunks(10) {
        let out: DescribeServicesResponse = call(
            &ecs,
            "AmazonEC2ContainerServiceV20141113.DescribeServices",
            &DescribeServicesRequest {
                cluster: q.cluster.clone(),
                services: Some(chunk.to_vec()),
                include: None,
            },
        )
        .await?;
        services.extend(out.services.unwrap_or_default());
        if let Some(f) = out.failures.unwrap_or_default().first() {
            return Err(ServicesError::Missing {
                arn: f.arn.clone().unwrap_or_default(),
                reason: f.reason.clone().unwrap_or_default(),
            });
        }
    }
    Ok(services)
}

/// `family:revision` of a task definition ARN.
fn short_td(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

/// A timestamp as `YYYY-MM-DD HH:MM:SS` (UTC).
fn timestamp(secs: f64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0.0) as u64);
    let iso = crate::runtime::logs::format_rfc3339(at, false);
    iso.trim_end_matches('Z').replacen('T', " ", 1)
}

/// The services as a table: one line per service, one indented line per deployment.
pub fn table(services: &[Service]) -> String {
    let mut rows: Vec<[String; 7]> = vec![[
        "SERVICE".into(),
        "STATUS".into(),
        "DESIRED".into(),
        "RUNNING".into(),
        "PENDING".into(),
        "TASK DEFINITION".into(),
        "LAST EVENT".into(),
    ]];
    let mut deployments: Vec<Vec<String>> = vec![vec![]];
    for s in services {
        let last = s
            .events
            .as_deref()
            .unwrap_or_default()
            .first()
            .map(|e| {
                format!(
                    "{}  {}",
                    timestamp(e.created_at.unwrap_or_default()),
                    e.message.as_deref().unwrap_or_default()
                )
            })
            .unwrap_or_default();
        rows.push([
            s.service_name.clone().unwrap_or_default(),
            s.status.clone().unwrap_or_default(),
            s.desired_count.to_string(),
            s.running_count.to_string(),
            s.pending_count.to_string(),
            short_td(s.task_definition.as_deref().unwrap_or_default()).to_owned(),
            last,
        ]);
        deployments.push(
            s.deployments
                .as_deref()
                .unwrap_or_default()
                .iter()
                .map(|d| {
                    format!(
                        "  {:<7} {}  {}  desired {} running {} pending {} failed {}  {}",
                        d.status.as_deref().unwrap_or_default(),
                        d.id.as_deref().unwrap_or_default(),
                        short_td(d.task_definition.as_deref().unwrap_or_default()),
                        d.desired_count,
                        d.running_count,
                        d.pending_count,
                        d.failed_tasks,
                        d.rollout_state.as_deref().unwrap_or_default(),
                    )
                })
                .collect(),
        );
    }
    let widths: Vec<usize> =
        (0..6).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for (row, deps) in rows.iter().zip(&deployments) {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c == 6 {
                line.push_str(cell);
            } else if (2..=4).contains(&c) {
                let _ = write!(line, "{cell:>w$}  ", w = widths[c]);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
        for d in deps {
            out.push_str(d);
            out.push('\n');
        }
    }
    out
}

/// The services as the JSON DescribeServices answers with (`{"services": [...]}`).
pub fn json(services: &[Service]) -> String {
    let value = serde_json::json!({ "services": services });
    serde_json::to_string_pretty(&value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::shapes::{Deployment, ServiceEvent};

    #[test]
    fn timestamps_are_utc_dates() {
        assert_eq!(timestamp(0.0), "1970-01-01 00:00:00");
        assert_eq!(timestamp(1_557_119_253.821), "2019-05-06 05:07:33");
        assert_eq!(timestamp(951_782_400.0), "2000-02-29 00:00:00");
    }

    #[test]
    fn the_table_shows_each_deployment_under_its_service() {
        let s = Service {
            service_name: Some("web".into()),
            status: Some("ACTIVE".into()),
            desired_count: 3,
            running_count: 4,
            pending_count: 1,
            task_definition: Some("arn:aws:ecs:us-east-1:0:task-definition/web:2".into()),
            deployments: Some(vec![
                Deployment {
                    id: Some("ecs-svc/1".into()),
                    status: Some("PRIMARY".into()),
                    task_definition: Some("arn:aws:ecs:us-east-1:0:task-definition/web:2".into()),
                    desired_count: 3,
                    running_count: 2,
                    pending_count: 1,
                    rollout_state: Some("IN_PROGRESS".into()),
                    ..Default::default()
                },
                Deployment {
                    id: Some("ecs-svc/2".into()),
                    status: Some("ACTIVE".into()),
                    task_definition: Some("arn:aws:ecs:us-east-1:0:task-definition/web:1".into()),
                    desired_count: 2,
                    running_count: 2,
                    rollout_state: Some("COMPLETED".into()),
                    ..Default::default()
                },
            ]),
            events: Some(vec![ServiceEvent {
                id: Some("x".into()),
                created_at: Some(0.0),
                message: Some("(service web) has started 3 tasks: (task a).".into()),
            }]),
            ..Default::default()
        };
        let t = table(&[s]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(
            lines[0].starts_with("SERVICE  STATUS  DESIRED  RUNNING  PENDING  TASK DEFINITION  LAST EVENT"),
            "{t}"
        );
        assert!(lines[1].starts_with("web      ACTIVE        3        4        1  web:2"), "{t}");
        assert!(
            lines[1].ends_with("1970-01-01 00:00:00  (service web) has started 3 tasks: (task a)."),
            "{t}"
        );
        assert_eq!(
            lines[2],
            "  PRIMARY ecs-svc/1  web:2  desired 3 running 2 pending 1 failed 0  IN_PROGRESS"
        );
        assert_eq!(lines[3], "  ACTIVE  ecs-svc/2  web:1  desired 2 running 2 pending 0 failed 0  COMPLETED");
    }
}
