//! CreateCluster, DescribeClusters, ListClusters, UpdateCluster, UpdateClusterSettings,
//! DeleteCluster.

use super::pagination::Page;
use super::{ApiError, Ctx, Exception, cluster_name};
use crate::model::shapes::{
    Cluster, ClusterSetting, CreateClusterRequest, CreateClusterResponse, DeleteClusterRequest,
    DeleteClusterResponse, DescribeClustersRequest, DescribeClustersResponse, Failure, KeyValuePair,
    ListClustersRequest, ListClustersResponse, UpdateClusterRequest, UpdateClusterResponse,
    UpdateClusterSettingsRequest, UpdateClusterSettingsResponse,
};
use crate::model::tags;
use crate::model::task_definition::valid_name;
use crate::store::records::{CLUSTERS, TAGS};
use crate::store::{Reader, Scan, StoreError, Writer};

pub const ACTIVE: &str = "ACTIVE";
pub const INACTIVE: &str = "INACTIVE";
/// The capacity providers every cluster may use without creating them.
const BUILT_IN_CAPACITY_PROVIDERS: &[&str] = &["FARGATE", "FARGATE_SPOT"];

/// What a cluster's describe includes beyond its own record.
#[derive(Debug, Default, Clone, Copy)]
struct Include {
    attachments: bool,
    configurations: bool,
    settings: bool,
    statistics: bool,
    tags: bool,
}

impl Include {
    fn all() -> Self {
        Include { attachments: true, configurations: true, settings: true, statistics: true, tags: true }
    }

    fn from(include: Option<&[String]>) -> Self {
        let has = |f: &str| include.unwrap_or_default().iter().any(|i| i == f);
        Include {
            attachments: has("ATTACHMENTS"),
            configurations: has("CONFIGURATIONS"),
            settings: has("SETTINGS"),
            statistics: has("STATISTICS"),
            tags: has("TAGS"),
        }
    }
}

/// Task and service counts of a cluster.
#[derive(Debug, Default, Clone, Copy)]
pub struct Usage {
    pub running_tasks: i32,
    pub pending_tasks: i32,
    pub active_services: i32,
    pub draining_services: i32,
    pub stopping_tasks: i32,
    pub container_instances: i32,
}

/// What the cluster's tasks are doing now, from the engine's view, and its services as
/// stored.
pub fn usage(ctx: &Ctx, r: &Reader<'_>, cluster: &str) -> Result<Usage, StoreError> {
    use crate::model::task::TaskStatus;
    let (active_services, draining_services) = super::services::count(r, cluster)?;
    let mut u = Usage { container_instances: 1, active_services, draining_services, ..Usage::default() };
    for t in ctx.engine.tasks(cluster, None) {
        match t.last {
            TaskStatus::Stopped => {}
            TaskStatus::Running => u.running_tasks += 1,
            s if s.is_pending() => u.pending_tasks += 1,
            // DEACTIVATING, STOPPING and DEPROVISIONING tasks still hold the cluster.
            _ => u.stopping_tasks += 1,
        }
    }
    Ok(u)
}

fn default_settings() -> Vec<ClusterSetting> {
    vec![ClusterSetting { name: Some("containerInsights".into()), value: Some("disabled".into()) }]
}

fn validate_cluster_name(name: &str) -> Result<(), ApiError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::invalid_parameter(format!(
            "Cluster name '{name}' is invalid: up to 255 letters (uppercase and lowercase), numbers, underscores, and hyphens are allowed"
        )))
    }
}

fn validate_settings(settings: &[ClusterSetting]) -> Result<(), ApiError> {
    for (i, s) in settings.iter().enumerate() {
        let value = s.value.as_deref().unwrap_or_default();
        if s.name.as_deref() == Some("containerInsights")
            && !["enabled", "disabled", "enhanced"].contains(&value)
        {
            return Err(ApiError::invalid_parameter(format!(
                "settings[{i}].value '{value}' is not valid for containerInsights: use enabled, disabled or enhanced"
            )));
        }
    }
    Ok(())
}

fn validate_capacity_providers(providers: &[String]) -> Result<(), ApiError> {
    for p in providers {
        if !BUILT_IN_CAPACITY_PROVIDERS.contains(&p.as_str()) {
            return Err(ApiError::invalid_parameter(format!(
                "The specified capacity provider '{p}' does not exist: ecsd offers FARGATE and FARGATE_SPOT"
            )));
        }
    }
    Ok(())
}

fn merge_settings(existing: &mut Vec<ClusterSetting>, new: &[ClusterSetting]) {
    for s in new {
        match existing.iter_mut().find(|e| e.name == s.name) {
            Some(e) => e.value = s.value.clone(),
            None => existing.push(s.clone()),
        }
    }
}

/// The cluster as describe shows it: the stored record plus derived counts and the parts
/// `include` asks for.
fn view(ctx: &Ctx, r: &Reader<'_>, mut c: Cluster, include: Include) -> Result<Cluster, StoreError> {
    let name = c.cluster_name.clone().unwrap_or_default();
    let u = usage(ctx, r, &name)?;
    c.registered_container_instances_count = u.container_instances;
    c.running_tasks_count = u.running_tasks;
    c.pending_tasks_count = u.pending_tasks;
    c.active_services_count = u.active_services;
    c.statistics = Some(if include.statistics {
        [
            ("runningEC2TasksCount", u.running_tasks),
            ("runningFargateTasksCount", 0),
            ("pendingEC2TasksCount", u.pending_tasks),
            ("pendingFargateTasksCount", 0),
            ("activeEC2ServiceCount", u.active_services),
            ("activeFargateServiceCount", 0),
            ("drainingEC2ServiceCount", u.draining_services),
            ("drainingFargateServiceCount", 0),
        ]
        .into_iter()
        .map(|(k, v)| KeyValuePair { name: Some(k.into()), value: Some(v.to_string()) })
        .collect()
    } else {
        vec![]
    });
    if include.tags {
        let arn = c.cluster_arn.clone().unwrap_or_default();
        c.tags = Some(r.get(TAGS, &arn)?.unwrap_or_default());
    } else {
        c.tags = None;
    }
    if !include.settings {
        c.settings = None;
    }
    if !include.configurations {
        c.configuration = None;
    }
    if !include.attachments {
        c.attachments = None;
        c.attachments_status = None;
    }
    Ok(c)
}

/// Reads an ACTIVE cluster inside a write, or fails with ClusterNotFoundException.
fn active(w: &Writer<'_>, name: &str) -> Result<Cluster, ApiError> {
    match w.get(CLUSTERS, name)? {
        Some(c) if c.status.as_deref() == Some(ACTIVE) => Ok(c),
        _ => Err(ApiError::cluster_not_found()),
    }
}

/// Creates `name` if it does not exist (or was deleted). Used at start-up for `default`.
pub fn ensure(ctx: &Ctx, name: &str) -> Result<(), ApiError> {
    ctx.store.write(|w| {
        if w.get(CLUSTERS, name)?.is_some_and(|c| c.status.as_deref() == Some(ACTIVE)) {
            return Ok(());
        }
        w.put(CLUSTERS, name, &new_cluster(ctx, name, None, None, None, None))?;
        Ok::<_, ApiError>(())
    })
}

fn new_cluster(
    ctx: &Ctx,
    name: &str,
    settings: Option<Vec<ClusterSetting>>,
    configuration: Option<crate::model::shapes::ClusterConfiguration>,
    capacity_providers: Option<Vec<String>>,
    strategy: Option<Vec<crate::model::shapes::CapacityProviderStrategyItem>>,
) -> Cluster {
    let mut all_settings = default_settings();
    merge_settings(&mut all_settings, &settings.unwrap_or_default());
    Cluster {
        cluster_arn: Some(ctx.identity.cluster_arn(name)),
        cluster_name: Some(name.to_owned()),
        status: Some(ACTIVE.into()),
        settings: Some(all_settings),
        configuration,
        capacity_providers: Some(capacity_providers.unwrap_or_default()),
        default_capacity_provider_strategy: Some(strategy.unwrap_or_default()),
        ..Cluster::default()
    }
}

pub fn create(ctx: &Ctx, req: CreateClusterRequest) -> Result<CreateClusterResponse, ApiError> {
    let name = req.cluster_name.clone().unwrap_or_else(|| crate::model::arn::DEFAULT_CLUSTER.to_owned());
    validate_cluster_name(&name)?;
    let new_tags = req.tags.clone().unwrap_or_default();
    tags::validate(&new_tags)?;
    validate_settings(req.settings.as_deref().unwrap_or_default())?;
    validate_capacity_providers(req.capacity_providers.as_deref().unwrap_or_default())?;
    let cluster = ctx.store.write(|w| {
        let existing = w.get(CLUSTERS, &name)?;
        let cluster = match existing {
            // CreateCluster is idempotent: an ACTIVE cluster of that name is returned as is.
            Some(c) if c.status.as_deref() == Some(ACTIVE) => c,
            _ => {
                let c = new_cluster(
                    ctx,
                    &name,
                    req.settings,
                    req.configuration,
                    req.capacity_providers,
                    req.default_capacity_provider_strategy,
                );
                w.put(CLUSTERS, &name, &c)?;
                let arn = ctx.identity.cluster_arn(&name);
                w.delete(TAGS, &arn)?;
                if !new_tags.is_empty() {
                    w.put(TAGS, &arn, &new_tags)?;
                }
                c
            }
        };
        Ok::<_, ApiError>(view(ctx, &w.reader(), cluster, Include::all())?)
    })?;
    Ok(CreateClusterResponse { cluster: Some(cluster) })
}

pub fn describe(ctx: &Ctx, req: DescribeClustersRequest) -> Result<DescribeClustersResponse, ApiError> {
    let include = Include::from(req.include.as_deref());
    let refs = req.clusters.unwrap_or_else(|| vec![crate::model::arn::DEFAULT_CLUSTER.to_owned()]);
    if refs.len() > 100 {
        return Err(ApiError::invalid_parameter(format!(
            "clusters can name at most 100 clusters; it names {}",
            refs.len()
        )));
    }
    ctx.store.read(|r| {
        let mut clusters = vec![];
        let mut failures = vec![];
        for reference in refs {
            let found = match ctx.identity.cluster_name(Some(&reference)) {
                Ok(name) => r.get(CLUSTERS, &name)?,
                Err(_) => None,
            };
            match found {
                Some(c) => clusters.push(view(ctx, r, c, include)?),
                None => {
                    let arn = if reference.starts_with("arn:") {
                        reference
                    } else {
                        ctx.identity.cluster_arn(&reference)
                    };
                    failures.push(Failure { arn: Some(arn), reason: Some("MISSING".into()), detail: None });
                }
            }
        }
        Ok(DescribeClustersResponse { clusters: Some(clusters), failures: Some(failures) })
    })
}

pub fn list(ctx: &Ctx, req: ListClustersRequest) -> Result<ListClustersResponse, ApiError> {
    let page = Page::new(req.max_results, req.next_token.as_deref(), 100)?;
    let (arns, next) = ctx.store.read(|r| {
        page.collect(r, CLUSTERS, Scan::all(), |_, c| {
            (c.status.as_deref() == Some(ACTIVE)).then(|| c.cluster_arn.unwrap_or_default())
        })
    })?;
    Ok(ListClustersResponse { cluster_arns: Some(arns), next_token: next })
}

pub fn update(ctx: &Ctx, req: UpdateClusterRequest) -> Result<UpdateClusterResponse, ApiError> {
    let name = cluster_name(ctx, req.cluster.as_deref())?;
    validate_settings(req.settings.as_deref().unwrap_or_default())?;
    let cluster = ctx.store.write(|w| {
        let mut c = active(w, &name)?;
        if let Some(settings) = &req.settings {
            merge_settings(c.settings.get_or_insert_with(default_settings), settings);
        }
        if req.configuration.is_some() {
            c.configuration = req.configuration;
        }
        if req.service_connect_defaults.is_some() {
            c.service_connect_defaults = req
                .service_connect_defaults
                .map(|d| crate::model::shapes::ClusterServiceConnectDefaults { namespace: d.namespace });
        }
        w.put(CLUSTERS, &name, &c)?;
        Ok::<_, ApiError>(view(
            ctx,
            &w.reader(),
            c,
            Include { settings: true, configurations: true, ..Include::default() },
        )?)
    })?;
    Ok(UpdateClusterResponse { cluster: Some(cluster) })
}

pub fn update_settings(
    ctx: &Ctx,
    req: UpdateClusterSettingsRequest,
) -> Result<UpdateClusterSettingsResponse, ApiError> {
    let name = cluster_name(ctx, req.cluster.as_deref())?;
    let settings = req.settings.unwrap_or_default();
    validate_settings(&settings)?;
    let cluster = ctx.store.write(|w| {
        let mut c = active(w, &name)?;
        merge_settings(c.settings.get_or_insert_with(default_settings), &settings);
        w.put(CLUSTERS, &name, &c)?;
        Ok::<_, ApiError>(view(ctx, &w.reader(), c, Include { settings: true, ..Include::default() })?)
    })?;
    Ok(UpdateClusterSettingsResponse { cluster: Some(cluster) })
}

pub fn delete(ctx: &Ctx, req: DeleteClusterRequest) -> Result<DeleteClusterResponse, ApiError> {
    let name = cluster_name(ctx, req.cluster.as_deref())?;
    let cluster = ctx.store.write(|w| {
        let mut c = active(w, &name)?;
        let u = usage(ctx, &w.reader(), &name)?;
        if u.active_services + u.draining_services > 0 {
            return Err(ApiError::new(
                Exception::ClusterContainsServices,
                "The Cluster cannot be deleted while Services are active.",
            ));
        }
        if u.running_tasks + u.pending_tasks + u.stopping_tasks > 0 {
            return Err(ApiError::new(
                Exception::ClusterContainsTasks,
                "The Cluster cannot be deleted while Tasks are active.",
            ));
        }
        c.status = Some(INACTIVE.into());
        w.put(CLUSTERS, &name, &c)?;
        for a in super::attributes::custom(&w.reader(), &name)? {
            let key = crate::store::records::attribute_key(&name, a.name.as_deref().unwrap_or_default());
            w.delete(crate::store::records::ATTRIBUTES, &key)?;
        }
        w.delete(TAGS, &ctx.identity.cluster_arn(&name))?;
        Ok(view(ctx, &w.reader(), c, Include { settings: true, configurations: true, ..Include::default() })?)
    })?;
    Ok(DeleteClusterResponse { cluster: Some(cluster) })
}

/// Whether an ACTIVE cluster of this name exists, from the store's memory when it can.
pub async fn is_active(ctx: &std::sync::Arc<Ctx>, name: &str) -> Result<bool, ApiError> {
    let Some(raw) = super::cached(ctx, CLUSTERS, name).await? else { return Ok(false) };
    let c: Cluster = serde_json::from_slice(&raw)
        .map_err(|e| ApiError::new(Exception::Server, format!("cluster {name} cannot be read: {e}")))?;
    Ok(c.status.as_deref() == Some(ACTIVE))
}

/// Whether an ACTIVE cluster of this name exists (for tagging).
pub fn exists(r: &Reader<'_>, name: &str) -> Result<bool, StoreError> {
    Ok(r.get(CLUSTERS, name)?.is_some_and(|c| c.status.as_deref() == Some(ACTIVE)))
}
