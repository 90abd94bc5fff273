//! An upstream ECS (`ECS_ENDPOINT_URL`: moto, LocalStack or an AWS account): the task
//! definitions ecsd does not have, and the operations ecsd does not implement, re-signed
//! with ecsd's own keys for the upstream's host and region.

use super::{AwsError, Client, Malformed, Request, Service};
use crate::model::shapes::{DescribeTaskDefinitionResponse, Tag, TaskDefinition};

const DESCRIBE_TASK_DEFINITION: &str = "AmazonEC2ContainerServiceV20141113.DescribeTaskDefinition";

/// The upstream's answer to a relayed call, whatever its status: the caller gets it as the
/// upstream gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relayed {
    pub status: u16,
    /// `content-type`, `x-amzn-requestid` and `x-amzn-errortype`, when the upstream sent them.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The answer headers a relayed call passes back.
const RELAYED_HEADERS: [&str; 3] = ["content-type", "x-amzn-requestid", "x-amzn-errortype"];

impl Client {
    /// DescribeTaskDefinition at the upstream: `reference` is a family, `family:revision`
    /// or an ARN, as the caller gave it.
    /// Returns the definition and its tags.
    pub async fn describe_task_definition(
        &self,
        reference: &str,
    ) -> Result<(TaskDefinition, Vec<Tag>), AwsError> {
        let input = serde_json::json!({ "taskDefinition": reference, "include": ["TAGS"] });
        let out: DescribeTaskDefinitionResponse =
            self.json(Service::Ecs, DESCRIBE_TASK_DEFINITION, &input).await?;
        let td = out.task_definition.ok_or(AwsError::Malformed {
            service: Service::Ecs,
            operation: DESCRIBE_TASK_DEFINITION,
            problem: Malformed::Missing("taskDefinition"),
        })?;
        Ok((td, out.tags.unwrap_or_default()))
    }

    /// Sends one ECS call (`target`, the caller's `X-Amz-Target`, and its JSON `body`) to
    /// the upstream, signed with this client's keys for the upstream's host and this
    /// client's region, once: a call the caller made is not repeated behind its back.
    pub async fn relay(&self, target: &str, content_type: &str, body: Vec<u8>) -> Result<Relayed, AwsError> {
        let (endpoint, _) = self.endpoint(Service::Ecs);
        let request = Request {
            service: Service::Ecs,
            operation: "forwarded call",
            method: reqwest::Method::POST,
            url: format!("{endpoint}/"),
            endpoint,
            signing_region: self.region.clone(),
            headers: vec![("content-type", content_type.to_owned()), ("x-amz-target", target.to_owned())],
            body,
            sign_body: true,
        };
        let http = self.aws.http().await?;
        let response = self.signed_send(http, &request).await?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .filter(|(n, _)| RELAYED_HEADERS.contains(&n.as_str()))
            .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        let limit = self.aws.inner.settings.limits.max_response;
        let body = self.read_capped(&request, response, limit).await?;
        Ok(Relayed { status, headers, body })
    }
}
