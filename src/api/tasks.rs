//! RunTask, StartTask, StopTask, DescribeTasks, ListTasks: requests resolved against the
//! store (cluster, task definition, tags) and carried out by the engine.

use std::sync::Arc;

use super::pagination::{decode_token, encode_token};
use super::{ApiError, Ctx, Exception, cluster_name, clusters, container_instances, view};
use crate::aws::AwsError;
use crate::engine::{LaunchError, LaunchErrorKind, LaunchSpec, Placed, check_launch_type};
use crate::model::arn::{ArnError, ResourceArn};
use crate::model::shapes::{
    DescribeTasksRequest, DescribeTasksResponse, Failure, ListTasksRequest, ListTasksResponse,
    NetworkConfiguration, RunTaskRequest, RunTaskResponse, StartTaskRequest, StartTaskResponse,
    StopTaskRequest, StopTaskResponse, Tag, TaskDefinition, TaskOverride,
};
use crate::model::tags;
use crate::model::task::{StopReason, TaskRecord, TaskStatus};
use crate::model::task_definition;
use crate::store::Reader;
use crate::store::records::{
    TAGS, TASK_DEFINITIONS, UPSTREAM_TASK_DEFINITIONS, task_definition_key, upstream_arn_key, upstream_key,
};

fn not_found_task() -> ApiError {
    ApiError::invalid_parameter("The referenced task was not found.")
}

impl From<LaunchError> for ApiError {
    fn from(e: LaunchError) -> Self {
        let exception = match e.kind() {
            LaunchErrorKind::Client => Exception::Client,
            LaunchErrorKind::InvalidParameter => Exception::InvalidParameter,
            LaunchErrorKind::UnsupportedFeature => Exception::UnsupportedFeature,
        };
        ApiError::new(exception, e.to_string())
    }
}

impl From<crate::engine::EngineError> for ApiError {
    fn from(e: crate::engine::EngineError) -> Self {
        match e {
            crate::engine::EngineError::Store(s) => s.into(),
            crate::engine::EngineError::Launch(l) => l.into(),
            crate::engine::EngineError::Runtime(r) => ApiError::new(Exception::Server, r.to_string()),
        }
    }
}

/// The task definition ecsd itself has for `reference`, whatever its status; `None` when it
/// has none (an ARN of another region or account included).
pub(super) fn local_definition(
    ctx: &Ctx,
    r: &Reader<'_>,
    reference: &str,
) -> Result<Option<TaskDefinition>, ApiError> {
    let parsed = match ctx.identity.task_definition_ref(reference) {
        Ok(parsed) => parsed,
        Err(ArnError::Foreign(_)) => return Ok(None),
        Err(e) => return Err(ApiError::client(format!("taskDefinition: {e}"))),
    };
    Ok(match parsed.revision {
        Some(rev) => r.get(TASK_DEFINITIONS, &task_definition_key(&parsed.family, rev))?,
        None => super::task_definitions::latest_active(r, &parsed.family)?,
    })
}

/// Resolves the task definition RunTask names: ecsd's own, else the upstream copy
/// [`upstream_definition`] brought; it must be ACTIVE.
pub(super) fn definition(
    ctx: &Ctx,
    r: &Reader<'_>,
    reference: &str,
    upstream: Option<TaskDefinition>,
) -> Result<TaskDefinition, ApiError> {
    match local_definition(ctx, r, reference)?.or(upstream) {
        Some(td) if td.status.as_deref() == Some("ACTIVE") => Ok(td),
        Some(_) => Err(ApiError::client(format!(
            "TaskDefinition is inactive: {reference} is no longer ACTIVE; register or name an ACTIVE revision"
        ))),
        None => Err(ApiError::client("TaskDefinition not found.")),
    }
}

/// With `ECS_ENDPOINT_URL` set, the upstream's task definition for a `reference` ecsd has
/// none of its own for (local registrations win): the copy kept from an earlier call, else
/// fetched with DescribeTaskDefinition now and kept under the upstream ARN (and under the
/// reference when it names a revision, so a later call does not ask again; a bare family
/// is asked each time, since its latest revision can change).
pub(super) async fn upstream_definition(
    ctx: &Arc<Ctx>,
    reference: &str,
) -> Result<Option<TaskDefinition>, ApiError> {
    let Some(upstream) = &ctx.forward else {
        return Ok(None);
    };
    if reference.is_empty() || ctx.store.read(|r| local_definition(ctx, r, reference))?.is_some() {
        return Ok(None);
    }
    let key = upstream_key(&upstream.region_of(reference), reference);
    if let Some(td) = ctx.store.read(|r| r.get(UPSTREAM_TASK_DEFINITIONS, &key))? {
        return Ok(Some(td));
    }
    let (fetched, tags) = upstream.task_definition(reference).await.map_err(|e| match e {
        AwsError::Service { .. } => ApiError::client(format!(
            "TaskDefinition not found. ECS_ENDPOINT_URL {} answered: {e}",
            upstream.url()
        )),
        e => ApiError::new(
            Exception::Server,
            format!(
                "ecsd could not fetch the task definition {reference} from ECS_ENDPOINT_URL {}: {e}",
                upstream.url()
            ),
        ),
    })?;
    let td = task_definition::adopt(&fetched, &ctx.identity).map_err(|e| {
        ApiError::client(format!(
            "The task definition {reference} of ECS_ENDPOINT_URL {} cannot run here: {e}",
            upstream.url()
        ))
    })?;
    let arn = td.task_definition_arn.clone().unwrap_or_default();
    let names_revision = ctx.identity.task_definition_ref(reference).is_ok_and(|r| r.revision.is_some())
        || reference.starts_with("arn:");
    ctx.store.write(|w| {
        if !arn.is_empty() {
            // Where the scheduler finds it again by ARN.
            let by_arn =
                upstream_arn_key(&arn).unwrap_or_else(|| upstream_key(&upstream.region_of(&arn), &arn));
            w.put(UPSTREAM_TASK_DEFINITIONS, &by_arn, &td)?;
            // For propagateTags TASK_DEFINITION, found where a local definition's are.
            if !tags.is_empty() {
                w.put(TAGS, &arn, &tags)?;
            }
        }
        if names_revision {
            w.put(UPSTREAM_TASK_DEFINITIONS, &key, &td)?;
        }
        Ok::<_, ApiError>(())
    })?;
    tracing::info!(
        reference,
        arn,
        upstream = upstream.url(),
        "task definition fetched from the upstream ECS"
    );
    Ok(Some(td))
}

/// Launches `count` tasks; a task that cannot be placed is a failure, not an error, as in ECS.
async fn launch(
    ctx: &Arc<Ctx>,
    spec: LaunchSpec,
    count: usize,
) -> Result<(Vec<crate::model::shapes::Task>, Vec<Failure>), ApiError> {
    let placed = ctx.engine.launch(&spec, count).await?;
    let cluster_arn = ctx.identity.cluster_arn(&spec.cluster);
    let az = ctx.engine.availability_zone();
    let mut tasks = vec![];
    let mut failures = vec![];
    for p in placed {
        match p {
            Placed::Launched(record) => {
                let mut wire = view::task(&record, &cluster_arn, &az);
                wire.tags = Some(spec.tags.clone());
                tasks.push(wire);
            }
            Placed::Unplaced(short) => failures.push(Failure {
                arn: Some(spec.container_instance_arn.clone()),
                reason: Some(short.to_string()),
                detail: None,
            }),
            Placed::AgentUnavailable(e) => failures.push(Failure {
                arn: Some(spec.container_instance_arn.clone()),
                reason: Some("AGENT".into()),
                detail: Some(e.to_string()),
            }),
        }
    }
    Ok((tasks, failures))
}

fn active_cluster(ctx: &Ctx, r: &Reader<'_>, reference: Option<&str>) -> Result<String, ApiError> {
    let name = cluster_name(ctx, reference)?;
    if clusters::exists(r, &name)? { Ok(name) } else { Err(ApiError::cluster_not_found()) }
}

fn check_tags(tags: Option<&[Tag]>) -> Result<Vec<Tag>, ApiError> {
    let t = tags.unwrap_or_default().to_vec();
    tags::validate(&t)?;
    Ok(t)
}

/// What RunTask and StartTask share: an ACTIVE cluster, an ACTIVE task definition and the
/// request's tags (with the definition's when `propagateTags` asks). The engine checks the
/// rest (network configuration, overrides) when it launches.
struct Request<'a> {
    cluster: Option<&'a str>,
    task_definition: Option<&'a str>,
    network_configuration: Option<NetworkConfiguration>,
    overrides: Option<TaskOverride>,
    launch_type: String,
    tags: Option<&'a [Tag]>,
    propagate_tags: Option<&'a str>,
    started_by: Option<String>,
    group: Option<String>,
    enable_execute_command: bool,
    platform_version: Option<String>,
}

async fn resolve(ctx: &Arc<Ctx>, req: Request<'_>) -> Result<LaunchSpec, ApiError> {
    let tags = check_tags(req.tags)?;
    let reference = req.task_definition.unwrap_or_default();
    let upstream = upstream_definition(ctx, reference).await?;
    let (cluster, definition, td_tags) = ctx.store.read(|r| {
        let cluster = active_cluster(ctx, r, req.cluster)?;
        let td = definition(ctx, r, reference, upstream)?;
        let td_tags = if req.propagate_tags == Some("TASK_DEFINITION") {
            r.get(TAGS, td.task_definition_arn.as_deref().unwrap_or_default())?.unwrap_or_default()
        } else {
            vec![]
        };
        Ok::<_, ApiError>((cluster, td, td_tags))
    })?;
    let spec = LaunchSpec {
        container_instance_arn: container_instances::arn(ctx, &cluster)?,
        cluster,
        definition,
        overrides: req.overrides,
        started_by: req.started_by,
        group: req.group,
        launch_type: req.launch_type,
        tags: tags::merge(&td_tags, &tags)?,
        enable_execute_command: req.enable_execute_command,
        network_configuration: req.network_configuration,
        platform_version: req.platform_version,
    };
    Ok(spec)
}

pub async fn run(ctx: &Arc<Ctx>, req: RunTaskRequest) -> Result<RunTaskResponse, ApiError> {
    let count = req.count.unwrap_or(1);
    if !(1..=10).contains(&count) {
        return Err(ApiError::invalid_parameter(format!("count must be between 1 and 10; it was {count}")));
    }
    if req.launch_type.is_some() && req.capacity_provider_strategy.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid_parameter(
            "Specifying both a launch type and capacity provider strategy is not supported.",
        ));
    }
    let launch_type = match (&req.launch_type, &req.capacity_provider_strategy) {
        (Some(l), _) => l.clone(),
        (None, Some(s))
            if s.iter().any(|i| i.capacity_provider.as_deref().unwrap_or("").starts_with("FARGATE")) =>
        {
            "FARGATE".to_owned()
        }
        _ => "EC2".to_owned(),
    };
    let spec = resolve(
        ctx,
        Request {
            cluster: req.cluster.as_deref(),
            task_definition: req.task_definition.as_deref(),
            network_configuration: req.network_configuration,
            overrides: req.overrides,
            launch_type,
            tags: req.tags.as_deref(),
            propagate_tags: req.propagate_tags.as_deref(),
            started_by: req.started_by,
            group: req.group,
            enable_execute_command: req.enable_execute_command,
            platform_version: req.platform_version,
        },
    )
    .await?;
    check_launch_type(&spec.definition, &spec.launch_type)?;
    let (tasks, failures) = launch(ctx, spec, count as usize).await?;
    Ok(RunTaskResponse { tasks: Some(tasks), failures: Some(failures) })
}

pub async fn start(ctx: &Arc<Ctx>, req: StartTaskRequest) -> Result<StartTaskResponse, ApiError> {
    let instances = req.container_instances.clone().unwrap_or_default();
    if instances.is_empty() || instances.len() > 10 {
        return Err(ApiError::invalid_parameter(format!(
            "containerInstances must name 1 to 10 container instances; it names {}",
            instances.len()
        )));
    }
    let spec = resolve(
        ctx,
        Request {
            cluster: req.cluster.as_deref(),
            task_definition: req.task_definition.as_deref(),
            network_configuration: req.network_configuration,
            overrides: req.overrides,
            launch_type: "EC2".into(),
            tags: req.tags.as_deref(),
            propagate_tags: req.propagate_tags.as_deref(),
            started_by: req.started_by,
            group: req.group,
            enable_execute_command: req.enable_execute_command,
            platform_version: None,
        },
    )
    .await?;
    let mut failures = vec![];
    let mut count = 0;
    for i in &instances {
        if container_instances::is_ours(ctx, &spec.cluster, i)? {
            count += 1;
        } else {
            let arn = if i.starts_with("arn:") {
                i.clone()
            } else {
                ctx.identity.container_instance_arn(&spec.cluster, i)
            };
            failures.push(Failure { arn: Some(arn), reason: Some("MISSING".into()), detail: None });
        }
    }
    let (tasks, more) = if count > 0 { launch(ctx, spec, count).await? } else { (vec![], vec![]) };
    failures.extend(more);
    Ok(StartTaskResponse { tasks: Some(tasks), failures: Some(failures) })
}

/// The task id a reference (an id, or a task ARN of `cluster`) names.
pub(super) fn task_id(ctx: &Ctx, cluster: &str, reference: &str) -> Option<String> {
    if reference.starts_with("arn:") {
        match ctx.identity.parse(reference) {
            Ok(ResourceArn::Task { cluster: c, id }) if c == cluster => Some(id),
            _ => None,
        }
    } else {
        Some(reference.to_owned())
    }
}

/// Finds a task by id or ARN within a cluster.
fn find(ctx: &Ctx, cluster: &str, reference: &str) -> Option<Arc<TaskRecord>> {
    ctx.engine.task(cluster, &task_id(ctx, cluster, reference)?)
}

pub async fn stop(ctx: &Arc<Ctx>, req: StopTaskRequest) -> Result<StopTaskResponse, ApiError> {
    if req.reason.as_ref().is_some_and(|r| r.chars().count() > 1024) {
        return Err(ApiError::invalid_parameter("reason can be at most 1024 characters"));
    }
    let cluster = ctx.store.read(|r| active_cluster(ctx, r, req.cluster.as_deref()))?;
    let task = find(ctx, &cluster, req.task.as_deref().unwrap_or_default()).ok_or_else(not_found_task)?;
    let recorded =
        ctx.engine.stop(&cluster, &task.id, StopReason::user(req.reason)).await.ok_or_else(not_found_task)?;
    let wire = view::task(&recorded, &ctx.identity.cluster_arn(&cluster), &ctx.engine.availability_zone());
    Ok(StopTaskResponse { task: Some(wire) })
}

/// DescribeTasks, a hot read: tasks from the engine's view, the cluster and tags from the
/// store's memory, nothing on the blocking pool once those were read.
pub async fn describe(ctx: &Arc<Ctx>, req: DescribeTasksRequest) -> Result<Vec<u8>, ApiError> {
    let refs = req.tasks.unwrap_or_default();
    if refs.is_empty() || refs.len() > 100 {
        return Err(ApiError::invalid_parameter(format!(
            "tasks must name 1 to 100 tasks; it names {}",
            refs.len()
        )));
    }
    let with_tags = req.include.as_deref().unwrap_or_default().iter().any(|i| i == "TAGS");
    let cluster = cluster_name(ctx, req.cluster.as_deref())?;
    if !clusters::is_active(ctx, &cluster).await? {
        return Err(ApiError::cluster_not_found());
    }
    let cluster_arn = ctx.identity.cluster_arn(&cluster);
    let az = ctx.engine.availability_zone();
    let mut tasks = vec![];
    let mut failures = vec![];
    for reference in refs {
        match find(ctx, &cluster, &reference) {
            Some(t) => {
                let mut wire = view::task(&t, &cluster_arn, &az);
                if with_tags {
                    let raw = super::cached(ctx, TAGS, &t.arn).await?;
                    let tags: Vec<Tag> = match raw {
                        Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                            ApiError::new(
                                Exception::Server,
                                format!("the tags of {} cannot be read: {e}", t.arn),
                            )
                        })?,
                        None => vec![],
                    };
                    wire.tags = Some(tags);
                }
                tasks.push(wire);
            }
            None => {
                let arn = if reference.starts_with("arn:") {
                    reference
                } else {
                    ctx.identity.task_arn(&cluster, &reference)
                };
                failures.push(Failure { arn: Some(arn), reason: Some("MISSING".into()), detail: None });
            }
        }
    }
    super::encode(&DescribeTasksResponse { tasks: Some(tasks), failures: Some(failures) })
}

pub fn list(ctx: &Ctx, req: ListTasksRequest) -> Result<ListTasksResponse, ApiError> {
    let page = super::pagination::Page::new(req.max_results, None, 100)?;
    let after = match req.next_token.as_deref() {
        None | Some("") => None,
        Some(t) => Some(decode_token(t).ok_or_else(|| {
            ApiError::invalid_parameter(
                "The nextToken is not valid: pass the nextToken of the previous response unchanged",
            )
        })?),
    };
    let desired = req.desired_status.clone().unwrap_or_else(|| "RUNNING".to_owned());
    let (cluster, instance_ok) = ctx.store.read(|r| {
        let cluster = active_cluster(ctx, r, req.cluster.as_deref())?;
        if let Some(service) = &req.service_name
            && !super::services::known(r, &cluster, service)?
        {
            return Err(ApiError::new(Exception::ServiceNotFound, "Service not found."));
        }
        let ok = match &req.container_instance {
            Some(i) => container_instances::is_ours(ctx, &cluster, i)?,
            None => true,
        };
        Ok::<_, ApiError>((cluster, ok))
    })?;
    if !instance_ok {
        return Ok(ListTasksResponse { task_arns: Some(vec![]), next_token: None });
    }
    let service_group = req.service_name.as_ref().map(|s| format!("service:{s}"));
    let mut arns = vec![];
    let mut next = None;
    for t in ctx.engine.tasks(&cluster, after.as_deref()) {
        let desired_ok = match desired.as_str() {
            "STOPPED" => t.desired == TaskStatus::Stopped,
            // ECS documents that filtering on PENDING returns nothing.
            "PENDING" => false,
            _ => t.desired == TaskStatus::Running,
        };
        let keep = desired_ok
            && req.family.as_ref().is_none_or(|f| t.definition.family.as_ref() == Some(f))
            && req.started_by.as_ref().is_none_or(|s| t.started_by.as_ref() == Some(s))
            && req.launch_type.as_ref().is_none_or(|l| &t.launch_type == l)
            && service_group.as_ref().is_none_or(|g| &t.group == g);
        if !keep {
            continue;
        }
        if arns.len() == page.limit {
            next = arns.last().map(|(id, _): &(String, String)| encode_token(id));
            break;
        }
        arns.push((t.id.clone(), t.arn.clone()));
    }
    Ok(ListTasksResponse { task_arns: Some(arns.into_iter().map(|(_, a)| a).collect()), next_token: next })
}
