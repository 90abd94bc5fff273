//! The tables ecsd keeps and the records in them.
//!
//! Records are the ECS wire shapes themselves where ECS echoes stored state back (clusters,
//! task definitions, settings), so what is stored is exactly what is described.

use serde::{Deserialize, Serialize};

use super::Table;
use crate::model::service::{Revision, ServiceDeploymentRecord, ServiceRecord};
use crate::model::shapes::{Cluster, Setting, Tag, TaskDefinition};
use crate::model::task::TaskRecord;

/// Clusters by name. Counts that derive from tasks and services are not stored here.
pub const CLUSTERS: Table<Cluster> = Table::cached("clusters");
/// Task definitions by [`task_definition_key`].
pub const TASK_DEFINITIONS: Table<TaskDefinition> = Table::cached("task_definitions");
/// Copies of task definitions fetched from the upstream ECS (`ECS_ENDPOINT_URL`), by
/// [`upstream_key`]. Never listed or described as ecsd's own.
pub const UPSTREAM_TASK_DEFINITIONS: Table<TaskDefinition> = Table::new("upstream_task_definitions");
/// Per family bookkeeping, by family name.
pub const FAMILIES: Table<Family> = Table::new("families");
/// Tags by resource ARN.
pub const TAGS: Table<Vec<Tag>> = Table::cached("tags");
/// Account settings by [`setting_key`].
pub const ACCOUNT_SETTINGS: Table<Setting> = Table::new("account_settings");

/// Tasks by [`task_key`]: `cluster\0task id`, so tasks list by cluster.
pub const TASKS: Table<TaskRecord> = Table::new("tasks");
/// Services by [`service_key`]: `cluster\0name`, so services list by cluster in name order.
/// An INACTIVE service stays until the scheduler forgets it or the name is used again.
pub const SERVICES: Table<ServiceRecord> = Table::new("services");
/// Service deployments by [`service_deployment_key`], kept after they leave `deployments[]`.
pub const SERVICE_DEPLOYMENTS: Table<ServiceDeploymentRecord> = Table::new("service_deployments");
/// Service revisions by [`service_deployment_key`] (with the revision id).
pub const SERVICE_REVISIONS: Table<Revision> = Table::new("service_revisions");
/// Tasks' scale-in protection by [`task_key`], apart from the task records, which only
/// their supervisors write.
pub const TASK_PROTECTION: Table<crate::model::task::TaskProtection> = Table::new("task_protection");
/// Custom attributes of this host's container instance, by [`attribute_key`].
pub const ATTRIBUTES: Table<crate::model::shapes::Attribute> = Table::new("attributes");
/// Small facts about this host, by name.
pub const META: Table<String> = Table::new("meta");

pub const ALL_TABLES: &[&str] = &[
    "clusters",
    "task_definitions",
    "families",
    "tags",
    "account_settings",
    "tasks",
    "meta",
    "attributes",
    "upstream_task_definitions",
    "services",
    "service_deployments",
    "service_revisions",
    "task_protection",
];

/// What a family remembers beyond its revisions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Family {
    /// The highest revision ever registered. Revisions are never reused, even after deletion.
    pub last_revision: i32,
    /// How many revisions are ACTIVE now.
    pub active: u32,
}

/// Keys sort by family, then numerically by revision: `\0` sorts below every character a
/// family may contain, and the revision is zero-padded.
pub fn task_definition_key(family: &str, revision: i32) -> String {
    format!("{family}\u{0}{revision:010}")
}

/// The prefix shared by every revision of `family`.
pub fn family_prefix(family: &str) -> String {
    format!("{family}\u{0}")
}

/// An upstream task definition by the upstream region and the reference it answers to (its
/// ARN, or `family:revision`): `region\0reference`.
pub fn upstream_key(region: &str, reference: &str) -> String {
    format!("{region}\u{0}{reference}")
}

/// The [`upstream_key`] of an upstream task definition kept under its own ARN, which names
/// its region.
pub fn upstream_arn_key(arn: &str) -> Option<String> {
    let region = arn.strip_prefix("arn:")?.split(':').nth(2).filter(|r| !r.is_empty())?;
    Some(upstream_key(region, arn))
}

pub fn task_key(cluster: &str, id: &str) -> String {
    format!("{cluster}\u{0}{id}")
}

pub fn service_key(cluster: &str, name: &str) -> String {
    format!("{cluster}\u{0}{name}")
}

/// Service deployments and revisions of a service: `cluster\0service\0id`.
pub fn service_deployment_key(cluster: &str, service: &str, id: &str) -> String {
    format!("{cluster}\u{0}{service}\u{0}{id}")
}

/// Attributes are per cluster (one container instance each): `cluster\0name`.
pub fn attribute_key(cluster: &str, name: &str) -> String {
    format!("{cluster}\u{0}{name}")
}

/// Account settings are per principal: `principal\0name`. The account default (set by
/// PutAccountSettingDefault) is stored under the empty principal.
pub fn setting_key(principal: &str, name: &str) -> String {
    format!("{principal}\u{0}{name}")
}
