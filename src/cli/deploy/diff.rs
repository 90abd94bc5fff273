//! `diff`: the rendered definition against the service's current revision, both normalised
//! (ECS's defaults and orderings do not show), as a unified diff on stdout.

use serde_json::Value;

use super::apply::{Comparison, compare};
use super::args::Flags;
use super::error::DeployError;
use super::render::request;
use super::run::{Prepared, print};
use super::session::Session;
use super::unified::unified;

/// Exit status of `diff --exit-code` when the definitions differ (1 means an error here).
pub const DIFFERENT: u8 = 10;

/// Prints the diff; returns [`DIFFERENT`] when `exit_code` and the definitions differ, else 0.
pub async fn diff(
    flags: &Flags,
    session: &Session,
    prepared: &Prepared,
    exit_code: bool,
) -> Result<u8, DeployError> {
    let service = flags.service.clone().ok_or(DeployError::NoService { verb: "diff" })?;
    let cluster = flags.cluster.clone().unwrap_or_else(|| "default".to_owned());
    let Comparison { current_td, current, rendered, changed, .. } =
        compare(&session.client, &cluster, &service, &request(&prepared.doc)).await?;
    let old_name =
        if current_td.is_empty() { "(the service has no revision)".to_owned() } else { current_td };
    let inputs: Vec<&str> = std::iter::once(prepared.template_source.as_str())
        .chain(prepared.sources.iter().map(String::as_str))
        .collect();
    let new_name = format!("rendered ({})", inputs.join(" + "));
    print(&unified(&pretty(&current), &pretty(&rendered), &old_name, &new_name))?;
    Ok(if exit_code && !changed.is_empty() { DIFFERENT } else { 0 })
}

/// Indented JSON, keys sorted; nothing for no revision.
fn pretty(v: &Value) -> String {
    if v.is_null() {
        return String::new();
    }
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}
