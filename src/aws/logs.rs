//! CloudWatch Logs over AWS JSON 1.1: CreateLogGroup, CreateLogStream, PutLogEvents.

use serde::{Deserialize, Serialize};

use super::{AwsError, Client, Service};

/// One event of a PutLogEvents call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InputLogEvent {
    /// Milliseconds since the epoch.
    pub timestamp: i64,
    pub message: String,
}

/// What PutLogEvents says about events it did not take (the call itself succeeded).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RejectedLogEventsInfo {
    pub too_new_log_event_start_index: Option<i64>,
    pub too_old_log_event_end_index: Option<i64>,
    pub expired_log_event_end_index: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PutLogEventsOutput {
    rejected_log_events_info: Option<RejectedLogEventsInfo>,
}

/// The error code CloudWatch Logs answers a create of something that exists with.
pub const ALREADY_EXISTS: &str = "ResourceAlreadyExistsException";

impl Client {
    /// Creates log group `group`; [`ALREADY_EXISTS`] when it exists.
    pub async fn create_log_group(&self, group: &str) -> Result<(), AwsError> {
        let input = serde_json::json!({ "logGroupName": group });
        self.json::<serde_json::Value>(Service::Logs, "Logs_20140328.CreateLogGroup", &input).await?;
        Ok(())
    }

    /// Creates log stream `stream` in `group`; [`ALREADY_EXISTS`] when it exists.
    pub async fn create_log_stream(&self, group: &str, stream: &str) -> Result<(), AwsError> {
        let input = serde_json::json!({ "logGroupName": group, "logStreamName": stream });
        self.json::<serde_json::Value>(Service::Logs, "Logs_20140328.CreateLogStream", &input).await?;
        Ok(())
    }

    /// Sends `events` (in timestamp order, within the service's batch limits) to `stream`.
    pub async fn put_log_events(
        &self,
        group: &str,
        stream: &str,
        events: &[InputLogEvent],
    ) -> Result<Option<RejectedLogEventsInfo>, AwsError> {
        let input = serde_json::json!({
            "logGroupName": group,
            "logStreamName": stream,
            "logEvents": events,
        });
        let out: PutLogEventsOutput = self.json(Service::Logs, "Logs_20140328.PutLogEvents", &input).await?;
        Ok(out.rejected_log_events_info)
    }
}
