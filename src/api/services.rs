//! CreateService, UpdateService, DeleteService, DescribeServices, ListServices,
//! ListServicesByNamespace, and the service deployment and revision operations
//! (ListServiceDeployments, DescribeServiceDeployments, StopServiceDeployment,
//! DescribeServiceRevisions). Requests are checked and resolved against the store here; the
//! scheduler owns the services and runs them. Counts are derived from the engine's tasks on
//! every read.

use std::ops::{Bound, ControlFlow};
use std::sync::Arc;

use super::pagination::{Page, after_token, encode_token};
use super::{ApiError, Ctx, Exception, cluster_name, clusters, tasks};
use crate::engine::{LaunchSpec, check_launch_type};
use crate::model::arn::{ArnError, ResourceArn};
use crate::model::service::{
    self, Counts, DeploymentRecord, Revision, SchedulingStrategy, ServiceDeploymentRecord,
    ServiceDeploymentStatus, ServiceError, ServiceErrorKind, ServiceRecord, ServiceStatus, ServiceUpdate,
};
use crate::model::shapes::{
    CreateServiceRequest, CreateServiceResponse, DeleteServiceRequest, DeleteServiceResponse, Deployment,
    DeploymentController, DescribeServiceDeploymentsRequest, DescribeServiceDeploymentsResponse,
    DescribeServiceRevisionsRequest, DescribeServiceRevisionsResponse, DescribeServicesRequest,
    DescribeServicesResponse, Failure, ListServiceDeploymentsRequest, ListServiceDeploymentsResponse,
    ListServicesByNamespaceRequest, ListServicesByNamespaceResponse, ListServicesRequest,
    ListServicesResponse, NetworkConfiguration, Rollback, Service, ServiceConnectConfiguration,
    ServiceCurrentRevisionSummary, ServiceDeployment, ServiceDeploymentAlarms, ServiceDeploymentBrief,
    ServiceDeploymentCircuitBreaker, ServiceEvent, ServiceRevision, ServiceRevisionSummary,
    StopServiceDeploymentRequest, StopServiceDeploymentResponse, Tag, TaskDefinition, UpdateServiceRequest,
    UpdateServiceResponse,
};
use crate::model::tags;
use crate::model::task::TaskRecord;
use crate::model::task_definition::valid_name;
use crate::scheduler::SchedulerError;
use crate::store::records::{
    CLUSTERS, SERVICE_DEPLOYMENTS, SERVICE_REVISIONS, SERVICES, TAGS, service_deployment_key, service_key,
};
use crate::store::{Reader, Scan, prefix_end};

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let exception = match e.kind() {
            ServiceErrorKind::InvalidParameter => Exception::InvalidParameter,
            ServiceErrorKind::UnsupportedFeature => Exception::UnsupportedFeature,
        };
        ApiError::new(exception, e.to_string())
    }
}

impl From<SchedulerError> for ApiError {
    fn from(e: SchedulerError) -> Self {
        let exception = match e {
            SchedulerError::Invalid(e) => return e.into(),
            SchedulerError::Store(e) => return e.into(),
            SchedulerError::ServiceNotFound => Exception::ServiceNotFound,
            SchedulerError::ServiceNotActive => Exception::ServiceNotActive,
            SchedulerError::ClusterNotFound => Exception::ClusterNotFound,
            SchedulerError::NotIdempotent | SchedulerError::Draining => Exception::InvalidParameter,
            SchedulerError::DeploymentNotFound => Exception::ServiceDeploymentNotFound,
            SchedulerError::DeploymentFinished(_) => Exception::Conflict,
            SchedulerError::ShuttingDown => Exception::Server,
        };
        ApiError::new(exception, e.to_string())
    }
}

fn service_not_found() -> ApiError {
    ApiError::new(Exception::ServiceNotFound, "Service not found.")
}

/// The cluster a request names, which must be ACTIVE.
fn active_cluster(ctx: &Ctx, r: &Reader<'_>, reference: Option<&str>) -> Result<String, ApiError> {
    let name = cluster_name(ctx, reference)?;
    if clusters::exists(r, &name)? { Ok(name) } else { Err(ApiError::cluster_not_found()) }
}

/// The service name a reference (a name, or a service ARN of `cluster`) gives. `None`: an
/// ARN of another cluster, region or account, which names no service here.
fn service_name(ctx: &Ctx, cluster: &str, reference: &str) -> Result<Option<String>, ApiError> {
    if !reference.starts_with("arn:") {
        return Ok(Some(reference.to_owned()));
    }
    match ctx.identity.parse(reference) {
        Ok(ResourceArn::Service { cluster: c, name }) => Ok((c == cluster).then_some(name)),
        Ok(_) => Err(ApiError::invalid_parameter(format!("'{reference}' is not a service ARN"))),
        Err(ArnError::Foreign(_)) => Ok(None),
        Err(e) => Err(ApiError::invalid_parameter(e.to_string())),
    }
}

fn service_arn_of(ctx: &Ctx, cluster: &str, reference: &str) -> String {
    if reference.starts_with("arn:") {
        reference.to_owned()
    } else {
        ctx.identity.service_arn(cluster, reference)
    }
}

/// The task definition a service names: ACTIVE, by family (latest ACTIVE revision),
/// family:revision or ARN; ecsd's own, else (with `ECS_ENDPOINT_URL`) the upstream's, as
/// RunTask finds it.
async fn definition(ctx: &Arc<Ctx>, reference: &str) -> Result<TaskDefinition, ApiError> {
    let upstream = tasks::upstream_definition(ctx, reference).await?;
    ctx.store.read(|r| tasks::definition(ctx, r, reference, upstream))
}

/// The service's tasks, as the engine has them (any status it still keeps).
fn service_tasks(ctx: &Ctx, s: &ServiceRecord) -> Vec<Arc<TaskRecord>> {
    let group = s.group();
    ctx.engine
        .tasks(&s.cluster, None)
        .into_iter()
        .filter(|t| t.group == group && t.started_by.as_deref().is_some_and(|b| b.starts_with("ecs-svc/")))
        .collect()
}

/// The role a service shows: the one given (a name becomes the account's role), else ECS's
/// service-linked role when it uses awsvpc or load balancers.
fn role_arn(ctx: &Ctx, role: Option<&str>, awsvpc: bool, load_balanced: bool) -> Option<String> {
    match role.filter(|r| !r.is_empty()) {
        Some(r) if r.starts_with("arn:") => Some(r.to_owned()),
        Some(r) => Some(format!("arn:aws:iam::{}:role/{r}", ctx.identity.account)),
        None if awsvpc || load_balanced => Some(format!(
            "arn:aws:iam::{}:role/aws-service-role/ecs.amazonaws.com/AWSServiceRoleForECS",
            ctx.identity.account
        )),
        None => None,
    }
}

fn is_fargate(revision: &Revision) -> bool {
    revision.task_launch_type() == "FARGATE"
}

fn deployment_view(s: &ServiceRecord, d: &DeploymentRecord, counts: &Counts) -> Deployment {
    let (running, pending, _) = counts.of_deployment(&d.id);
    let fargate = is_fargate(&d.revision);
    Deployment {
        id: Some(d.id.clone()),
        status: Some(d.status.as_str().to_owned()),
        task_definition: Some(d.revision.task_definition.clone()),
        desired_count: counts.desired_of(d, s.target_count()),
        pending_count: pending,
        running_count: running,
        failed_tasks: d.failed_tasks,
        created_at: Some(d.created_at),
        updated_at: Some(d.updated_at),
        capacity_provider_strategy: d.revision.capacity_provider_strategy.clone(),
        launch_type: d.revision.launch_type.clone(),
        platform_version: fargate.then(|| {
            d.revision.platform_version.clone().filter(|v| v != "LATEST").unwrap_or_else(|| "1.4.0".into())
        }),
        platform_family: fargate.then(|| "Linux".to_owned()),
        network_configuration: d.revision.network_configuration.clone(),
        rollout_state: Some(d.rollout_state.as_str().to_owned()),
        rollout_state_reason: Some(d.rollout_state_reason.clone()),
        service_connect_configuration: d.revision.service_connect_configuration.clone(),
        volume_configurations: d.revision.volume_configurations.clone(),
        vpc_lattice_configurations: d.revision.vpc_lattice_configurations.clone(),
        ..Deployment::default()
    }
}

/// The service as DescribeServices shows it: the record, with counts from its tasks now.
pub fn view(ctx: &Ctx, s: &ServiceRecord, tags: Option<Vec<Tag>>) -> Service {
    view_of(ctx, s, tags, &service_tasks(ctx, s))
}

fn view_of(ctx: &Ctx, s: &ServiceRecord, tags: Option<Vec<Tag>>, tasks: &[Arc<TaskRecord>]) -> Service {
    let counts = Counts::of(tasks.iter().map(|t| t.as_ref()));
    let revision_arn = |id: &str| ctx.identity.service_revision_arn(&s.cluster, &s.name, id);
    let mut revisions: Vec<ServiceCurrentRevisionSummary> = vec![];
    for (i, d) in s.deployments.iter().enumerate() {
        let (running, pending, live) = counts.of_deployment(&d.id);
        if i > 0 && running + pending + live == 0 {
            continue;
        }
        let arn = revision_arn(&d.revision.id);
        let requested = counts.desired_of(d, s.target_count());
        match revisions.iter_mut().find(|r| r.arn.as_deref() == Some(arn.as_str())) {
            Some(r) => {
                r.requested_task_count += requested;
                r.running_task_count += running;
                r.pending_task_count += pending;
            }
            None => revisions.push(ServiceCurrentRevisionSummary {
                arn: Some(arn),
                requested_task_count: requested,
                running_task_count: running,
                pending_task_count: pending,
            }),
        }
    }
    let primary_fargate = s.primary().is_some_and(|p| is_fargate(&p.revision));
    Service {
        service_arn: Some(s.arn.clone()),
        service_name: Some(s.name.clone()),
        cluster_arn: Some(ctx.identity.cluster_arn(&s.cluster)),
        load_balancers: Some(s.load_balancers.clone()),
        service_registries: Some(s.service_registries.clone()),
        status: Some(s.status.as_str().to_owned()),
        desired_count: match s.scheduling_strategy {
            SchedulingStrategy::Replica => s.desired_count,
            SchedulingStrategy::Daemon => s.target_count(),
        },
        running_count: counts.running,
        pending_count: counts.pending,
        launch_type: s.launch_type.clone(),
        capacity_provider_strategy: s.capacity_provider_strategy.clone(),
        platform_version: primary_fargate
            .then(|| s.platform_version.clone().unwrap_or_else(|| "LATEST".into())),
        platform_family: primary_fargate.then(|| "Linux".to_owned()),
        task_definition: Some(s.task_definition.clone()),
        deployment_configuration: Some(s.deployment_configuration.clone()),
        task_sets: None,
        deployments: Some(s.deployments.iter().map(|d| deployment_view(s, d, &counts)).collect()),
        role_arn: s.role_arn.clone(),
        events: Some(
            s.events
                .iter()
                .map(|e| ServiceEvent {
                    id: Some(e.id.clone()),
                    created_at: Some(e.created_at),
                    message: Some(e.message.clone()),
                })
                .collect(),
        ),
        created_at: Some(s.created_at),
        current_service_deployment: Some(ctx.identity.service_deployment_arn(
            &s.cluster,
            &s.name,
            &s.current_service_deployment,
        )),
        current_service_revisions: Some(revisions),
        placement_constraints: Some(s.placement_constraints.clone()),
        placement_strategy: Some(s.placement_strategy.clone()),
        network_configuration: s.network_configuration.clone(),
        health_check_grace_period_seconds: Some(s.health_check_grace_period_seconds),
        scheduling_strategy: Some(s.scheduling_strategy.as_str().to_owned()),
        deployment_controller: Some(DeploymentController { r#type: Some(s.deployment_controller.clone()) }),
        tags,
        created_by: Some(s.created_by.clone()),
        enable_ecs_managed_tags: s.enable_ecs_managed_tags,
        propagate_tags: Some(s.propagate_tags.clone()),
        enable_execute_command: s.enable_execute_command,
        availability_zone_rebalancing: Some(s.availability_zone_rebalancing.clone()),
        resource_management_type: Some("CUSTOMER".to_owned()),
    }
}

/// Checks that a task of `definition` with `network` can launch as `launch_type` here.
fn check_launch(
    ctx: &Ctx,
    cluster: &str,
    definition: &TaskDefinition,
    network: Option<NetworkConfiguration>,
    launch_type: &str,
) -> Result<(), ApiError> {
    if launch_type != "EC2" || definition.requires_compatibilities.as_ref().is_some_and(|c| !c.is_empty()) {
        check_launch_type(definition, launch_type)?;
    }
    let spec = LaunchSpec {
        cluster: cluster.to_owned(),
        definition: definition.clone(),
        overrides: None,
        started_by: None,
        group: None,
        launch_type: launch_type.to_owned(),
        tags: vec![],
        enable_execute_command: false,
        network_configuration: network,
        container_instance_arn: String::new(),
        platform_version: None,
    };
    ctx.engine.check_launch(&spec)?;
    Ok(())
}

fn check_grace(g: Option<i32>) -> Result<(), ServiceError> {
    match g {
        Some(g) if g < 0 => Err(ServiceError::GracePeriod(g)),
        _ => Ok(()),
    }
}

fn check_controller(c: Option<&DeploymentController>) -> Result<String, ServiceError> {
    match c.and_then(|c| c.r#type.as_deref()) {
        None | Some("ECS") => Ok("ECS".to_owned()),
        Some(other) => Err(ServiceError::DeploymentController(other.to_owned())),
    }
}

pub async fn create(ctx: &Arc<Ctx>, req: CreateServiceRequest) -> Result<CreateServiceResponse, ApiError> {
    let name = req.service_name.clone().unwrap_or_default();
    if !valid_name(&name) {
        return Err(ServiceError::InvalidName(name).into());
    }
    let controller = check_controller(req.deployment_controller.as_ref())?;
    let strategy = match req.scheduling_strategy.as_deref() {
        Some("DAEMON") => SchedulingStrategy::Daemon,
        _ => SchedulingStrategy::Replica,
    };
    let desired = match (strategy, req.desired_count) {
        (SchedulingStrategy::Daemon, Some(_)) => return Err(ServiceError::DaemonDesiredCount.into()),
        (SchedulingStrategy::Daemon, None) => 0,
        (SchedulingStrategy::Replica, None) => return Err(ServiceError::MissingDesiredCount.into()),
        (SchedulingStrategy::Replica, Some(n)) if n < 0 => {
            return Err(ServiceError::NegativeDesiredCount(n).into());
        }
        (SchedulingStrategy::Replica, Some(n)) => n,
    };
    let given_strategy = req.capacity_provider_strategy.clone().filter(|s| !s.is_empty());
    if req.launch_type.is_some() && given_strategy.is_some() {
        return Err(ServiceError::LaunchTypeAndCapacityProvider.into());
    }
    let placement_constraints = req.placement_constraints.clone().unwrap_or_default();
    let placement_strategy = req.placement_strategy.clone().unwrap_or_default();
    service::validate_placement(&placement_constraints, &placement_strategy)?;
    if strategy == SchedulingStrategy::Daemon && !placement_strategy.is_empty() {
        return Err(ServiceError::DaemonPlacementStrategy.into());
    }
    if let Some(c) = &req.deployment_configuration {
        service::validate_deployment_configuration(c, strategy)?;
    }
    check_grace(req.health_check_grace_period_seconds)?;
    let tags = req.tags.clone().unwrap_or_default();
    tags::validate(&tags)?;
    let reference = req.task_definition.clone().ok_or(ServiceError::MissingTaskDefinition)?;

    let (cluster, default_strategy) = ctx.store.read(|r| {
        let cluster = active_cluster(ctx, r, req.cluster.as_deref())?;
        let default_strategy = r
            .get(CLUSTERS, &cluster)?
            .and_then(|c| c.default_capacity_provider_strategy)
            .filter(|s| !s.is_empty());
        Ok::<_, ApiError>((cluster, default_strategy))
    })?;
    let td = definition(ctx, &reference).await?;
    let (launch_type, capacity_provider_strategy) = match (&req.launch_type, given_strategy) {
        (Some(l), _) => (Some(l.clone()), None),
        (None, Some(s)) => (None, Some(s)),
        (None, None) => match default_strategy {
            Some(s) => (None, Some(s)),
            None => (Some("EC2".to_owned()), None),
        },
    };
    let network_configuration = service::network_configuration_defaults(req.network_configuration.clone());
    let mut rec = ServiceRecord {
        name: name.clone(),
        cluster: cluster.clone(),
        arn: ctx.identity.service_arn(&cluster, &name),
        incarnation: uuid::Uuid::new_v4().simple().to_string(),
        status: ServiceStatus::Active,
        scheduling_strategy: strategy,
        desired_count: desired,
        task_definition: td.task_definition_arn.clone().unwrap_or_default(),
        launch_type,
        capacity_provider_strategy,
        platform_version: None,
        platform_family: None,
        network_configuration: network_configuration.clone(),
        load_balancers: req.load_balancers.clone().unwrap_or_default(),
        service_registries: req.service_registries.clone().unwrap_or_default(),
        service_connect_configuration: req.service_connect_configuration.clone(),
        volume_configurations: req.volume_configurations.clone(),
        vpc_lattice_configurations: req.vpc_lattice_configurations.clone(),
        deployment_configuration: service::deployment_configuration_defaults(
            req.deployment_configuration.as_ref(),
            strategy,
        ),
        placement_constraints,
        placement_strategy,
        health_check_grace_period_seconds: req.health_check_grace_period_seconds.unwrap_or(0),
        deployment_controller: controller,
        role_arn: None,
        created_at: ctx.now(),
        created_by: ctx.identity.root_principal(),
        enable_ecs_managed_tags: req.enable_ecs_managed_tags,
        propagate_tags: req.propagate_tags.clone().unwrap_or_else(|| "NONE".to_owned()),
        enable_execute_command: req.enable_execute_command,
        availability_zone_rebalancing: req
            .availability_zone_rebalancing
            .clone()
            .unwrap_or_else(|| "ENABLED".to_owned()),
        client_token: req.client_token.clone(),
        create_request: {
            let mut fingerprint = req.clone();
            fingerprint.client_token = None;
            serde_json::to_string(&fingerprint).unwrap_or_default()
        },
        deployments: vec![],
        last_completed: None,
        current_service_deployment: String::new(),
        open_deployments: vec![],
        events: vec![],
        reported: Default::default(),
        backoff: Default::default(),
        handled_stops: Default::default(),
        updated_at: ctx.now(),
        inactive_at: None,
    };
    let first = rec.revision(ctx.now());
    let fargate = is_fargate(&first);
    if fargate {
        rec.platform_version = Some(req.platform_version.clone().unwrap_or_else(|| "LATEST".to_owned()));
        rec.platform_family = Some("Linux".to_owned());
        if strategy == SchedulingStrategy::Daemon {
            return Err(ServiceError::DaemonFargate.into());
        }
        if !rec.placement_constraints.is_empty() {
            return Err(ServiceError::FargateConstraints.into());
        }
    }
    let awsvpc = td.network_mode.as_deref() == Some("awsvpc");
    rec.role_arn = role_arn(ctx, req.role.as_deref(), awsvpc, !rec.load_balancers.is_empty());
    check_launch(ctx, &cluster, &td, network_configuration, &first.task_launch_type())?;
    let first = rec.revision(ctx.now());
    service::start_deployment(&mut rec, first, None, vec![], ctx.now());
    let (rec, created) = ctx.scheduler.create(rec, tags.clone()).await?;
    // A new service answers as ECS's does, before its scheduler has started anything (its
    // worker may have launched tasks by now); a retried creation shows what runs.
    let tasks = if created { vec![] } else { service_tasks(ctx, &rec) };
    let mut wire = view_of(ctx, &rec, Some(tags), &tasks);
    if wire.tags.as_ref().is_some_and(|t| t.is_empty()) {
        wire.tags = None;
    }
    Ok(CreateServiceResponse { service: Some(wire) })
}

/// The stored service a request names, in an ACTIVE cluster.
fn find(
    ctx: &Ctx,
    r: &Reader<'_>,
    cluster: Option<&str>,
    reference: &str,
) -> Result<ServiceRecord, ApiError> {
    let cluster = active_cluster(ctx, r, cluster)?;
    let name = service_name(ctx, &cluster, reference)?.ok_or_else(service_not_found)?;
    r.get(SERVICES, &service_key(&cluster, &name))?.ok_or_else(service_not_found)
}

pub async fn update(ctx: &Arc<Ctx>, req: UpdateServiceRequest) -> Result<UpdateServiceResponse, ApiError> {
    let reference = req.service.clone().unwrap_or_default();
    let current = ctx.store.read(|r| find(ctx, r, req.cluster.as_deref(), &reference))?;
    let td = match &req.task_definition {
        Some(t) => Some(definition(ctx, t).await?),
        None => None,
    };
    if current.status != ServiceStatus::Active {
        return Err(SchedulerError::ServiceNotActive.into());
    }
    let strategy = current.scheduling_strategy;
    match req.desired_count {
        Some(_) if strategy == SchedulingStrategy::Daemon => {
            return Err(ServiceError::DaemonDesiredCount.into());
        }
        Some(n) if n < 0 => return Err(ServiceError::NegativeDesiredCount(n).into()),
        _ => {}
    }
    if let Some(c) = &req.deployment_configuration {
        let merged = service::merge_deployment_configuration(&current.deployment_configuration, c);
        service::validate_deployment_configuration(&merged, strategy)?;
    }
    if req.deployment_controller.is_some() {
        let wanted = check_controller(req.deployment_controller.as_ref())?;
        if wanted != current.deployment_controller {
            return Err(ServiceError::DeploymentController(wanted).into());
        }
    }
    let constraints =
        req.placement_constraints.clone().unwrap_or_else(|| current.placement_constraints.clone());
    let strategies = req.placement_strategy.clone().unwrap_or_else(|| current.placement_strategy.clone());
    service::validate_placement(&constraints, &strategies)?;
    if strategy == SchedulingStrategy::Daemon && !strategies.is_empty() {
        return Err(ServiceError::DaemonPlacementStrategy.into());
    }
    check_grace(req.health_check_grace_period_seconds)?;
    let network_configuration = service::network_configuration_defaults(req.network_configuration.clone());
    let update = ServiceUpdate {
        desired_count: req.desired_count,
        task_definition: td.as_ref().and_then(|t| t.task_definition_arn.clone()),
        capacity_provider_strategy: req.capacity_provider_strategy.clone(),
        deployment_configuration: req.deployment_configuration.clone(),
        availability_zone_rebalancing: req.availability_zone_rebalancing.clone(),
        network_configuration: network_configuration.clone(),
        placement_constraints: req.placement_constraints.clone(),
        placement_strategy: req.placement_strategy.clone(),
        platform_version: req.platform_version.clone(),
        force_new_deployment: req.force_new_deployment,
        health_check_grace_period_seconds: req.health_check_grace_period_seconds,
        enable_execute_command: req.enable_execute_command,
        enable_ecs_managed_tags: req.enable_ecs_managed_tags,
        load_balancers: req.load_balancers.clone(),
        propagate_tags: req.propagate_tags.clone(),
        service_registries: req.service_registries.clone(),
        service_connect_configuration: req.service_connect_configuration.clone(),
        volume_configurations: req.volume_configurations.clone(),
        vpc_lattice_configurations: req.vpc_lattice_configurations.clone(),
    };
    if update.task_definition.is_some() || update.network_configuration.is_some() {
        let td = match td {
            Some(td) => td,
            None => definition(ctx, &current.task_definition).await?,
        };
        let network = network_configuration.or_else(|| current.network_configuration.clone());
        let launch_type =
            current.primary().map(|p| p.revision.task_launch_type()).unwrap_or_else(|| "EC2".into());
        check_launch(ctx, &current.cluster, &td, network, &launch_type)?;
    }
    let rec = ctx.scheduler.update(&current.cluster, &current.name, update).await?;
    Ok(UpdateServiceResponse { service: Some(view(ctx, &rec, None)) })
}

pub async fn delete(ctx: &Arc<Ctx>, req: DeleteServiceRequest) -> Result<DeleteServiceResponse, ApiError> {
    let reference = req.service.clone().unwrap_or_default();
    let current = ctx.store.read(|r| find(ctx, r, req.cluster.as_deref(), &reference))?;
    let rec = ctx.scheduler.delete(&current.cluster, &current.name, req.force.unwrap_or(false)).await?;
    Ok(DeleteServiceResponse { service: Some(view(ctx, &rec, None)) })
}

pub fn describe(ctx: &Ctx, req: DescribeServicesRequest) -> Result<DescribeServicesResponse, ApiError> {
    let refs = req.services.clone().unwrap_or_default();
    if refs.is_empty() || refs.len() > 10 {
        return Err(ApiError::invalid_parameter(format!(
            "services must name 1 to 10 services; it names {}",
            refs.len()
        )));
    }
    let with_tags = req.include.as_deref().unwrap_or_default().iter().any(|i| i == "TAGS");
    ctx.store.read(|r| {
        let cluster = active_cluster(ctx, r, req.cluster.as_deref())?;
        let mut services = vec![];
        let mut failures = vec![];
        for reference in refs {
            let found = match service_name(ctx, &cluster, &reference)? {
                Some(name) => r.get(SERVICES, &service_key(&cluster, &name))?,
                None => None,
            };
            match found {
                Some(s) => {
                    let tags = if with_tags { Some(r.get(TAGS, &s.arn)?.unwrap_or_default()) } else { None };
                    services.push(view(ctx, &s, tags));
                }
                None => failures.push(Failure {
                    arn: Some(service_arn_of(ctx, &cluster, &reference)),
                    reason: Some("MISSING".into()),
                    detail: None,
                }),
            }
        }
        Ok(DescribeServicesResponse { services: Some(services), failures: Some(failures) })
    })
}

/// `maxResults` (1 to 100, default 10) and `nextToken`.
fn page(max_results: Option<i32>, next_token: Option<&str>, default: usize) -> Result<Page, ApiError> {
    let mut page = Page::new(max_results, next_token, 100)?;
    if max_results.is_none() {
        page.limit = default;
    }
    Ok(page)
}

pub fn list(ctx: &Ctx, req: ListServicesRequest) -> Result<ListServicesResponse, ApiError> {
    let page = page(req.max_results, req.next_token.as_deref(), 10)?;
    ctx.store.read(|r| {
        let cluster = active_cluster(ctx, r, req.cluster.as_deref())?;
        let prefix = service_key(&cluster, "");
        let end = prefix_end(&prefix);
        let scan = Scan { from: Bound::Included(&prefix), to: Bound::Excluded(&end), reverse: false };
        let (arns, next) = page.collect(r, SERVICES, scan, |_, s: ServiceRecord| {
            let launch_type = s.primary().map(|p| p.revision.task_launch_type());
            let keep = s.status == ServiceStatus::Active
                && req.launch_type.as_ref().is_none_or(|l| launch_type.as_ref() == Some(l))
                && req.scheduling_strategy.as_deref().is_none_or(|st| st == s.scheduling_strategy.as_str())
                && req.resource_management_type.as_deref().is_none_or(|m| m == "CUSTOMER");
            keep.then_some(s.arn)
        })?;
        Ok(ListServicesResponse { service_arns: Some(arns), next_token: next })
    })
}

/// Services whose Service Connect namespace is `namespace` (its name or ARN), in any
/// cluster. Without Cloud Map, a namespace no service names lists nothing.
pub fn list_by_namespace(
    ctx: &Ctx,
    req: ListServicesByNamespaceRequest,
) -> Result<ListServicesByNamespaceResponse, ApiError> {
    let namespace = req.namespace.clone().unwrap_or_default();
    let page = page(req.max_results, req.next_token.as_deref(), 10)?;
    let matches = |sc: &ServiceConnectConfiguration| {
        sc.namespace.as_deref().is_some_and(|n| {
            n == namespace
                || n.rsplit('/').next() == Some(&namespace)
                || namespace.rsplit('/').next() == Some(n)
        })
    };
    let (arns, next) = ctx.store.read(|r| {
        page.collect(r, SERVICES, Scan::all(), |_, s: ServiceRecord| {
            (s.status == ServiceStatus::Active
                && s.service_connect_configuration.as_ref().is_some_and(matches))
            .then_some(s.arn)
        })
    })?;
    Ok(ListServicesByNamespaceResponse { service_arns: Some(arns), next_token: next })
}

/// The service deployments of the service as stored (any status), newest first.
fn service_deployments(r: &Reader<'_>, s: &ServiceRecord) -> Result<Vec<ServiceDeploymentRecord>, ApiError> {
    let prefix = service_deployment_key(&s.cluster, &s.name, "");
    let end = prefix_end(&prefix);
    let mut all = vec![];
    r.scan(
        SERVICE_DEPLOYMENTS,
        Scan { from: Bound::Included(&prefix), to: Bound::Excluded(&end), reverse: false },
        |_, sd: ServiceDeploymentRecord| {
            if sd.incarnation == s.incarnation {
                all.push(sd);
            }
            ControlFlow::Continue(())
        },
    )?;
    all.sort_by(|a, b| b.created_at.total_cmp(&a.created_at).then(a.id.cmp(&b.id)));
    Ok(all)
}

fn sd_arn(ctx: &Ctx, sd: &ServiceDeploymentRecord) -> String {
    ctx.identity.service_deployment_arn(&sd.cluster, &sd.service, &sd.id)
}

pub fn list_deployments(
    ctx: &Ctx,
    req: ListServiceDeploymentsRequest,
) -> Result<ListServiceDeploymentsResponse, ApiError> {
    let limit = match req.max_results {
        None => 20,
        Some(n) if (1..=100).contains(&n) => n as usize,
        Some(n) => {
            return Err(ApiError::invalid_parameter(format!(
                "maxResults must be between 1 and 100; it was {n}"
            )));
        }
    };
    let after = after_token(req.next_token.as_deref())?;
    let statuses: Vec<ServiceDeploymentStatus> = req
        .status
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter_map(|s| ServiceDeploymentStatus::parse(s))
        .collect();
    let reference = req.service.clone().unwrap_or_default();
    ctx.store.read(|r| {
        let s = find(ctx, r, req.cluster.as_deref(), &reference)?;
        let all = service_deployments(r, &s)?;
        let window = req.created_at.as_ref();
        let kept: Vec<&ServiceDeploymentRecord> = all
            .iter()
            .filter(|sd| statuses.is_empty() || statuses.contains(&sd.status))
            .filter(|sd| window.and_then(|w| w.after).is_none_or(|a| sd.created_at >= a))
            .filter(|sd| window.and_then(|w| w.before).is_none_or(|b| sd.created_at <= b))
            .collect();
        let start = match &after {
            Some(id) => kept.iter().position(|sd| &sd.id == id).map_or(kept.len(), |i| i + 1),
            None => 0,
        };
        let page: Vec<&ServiceDeploymentRecord> = kept.iter().skip(start).take(limit).copied().collect();
        let next =
            (start + page.len() < kept.len()).then(|| page.last().map(|sd| encode_token(&sd.id))).flatten();
        let briefs = page
            .iter()
            .map(|sd| ServiceDeploymentBrief {
                service_deployment_arn: Some(sd_arn(ctx, sd)),
                service_arn: Some(s.arn.clone()),
                cluster_arn: Some(ctx.identity.cluster_arn(&sd.cluster)),
                started_at: sd.started_at,
                created_at: Some(sd.created_at),
                finished_at: sd.finished_at,
                target_service_revision_arn: Some(ctx.identity.service_revision_arn(
                    &sd.cluster,
                    &sd.service,
                    &sd.target.revision,
                )),
                status: Some(sd.status.as_str().to_owned()),
                status_reason: sd.status_reason.clone(),
            })
            .collect();
        Ok(ListServiceDeploymentsResponse { service_deployments: Some(briefs), next_token: next })
    })
}

fn summary(ctx: &Ctx, sd: &ServiceDeploymentRecord, c: &service::RevisionCount) -> ServiceRevisionSummary {
    ServiceRevisionSummary {
        arn: Some(ctx.identity.service_revision_arn(&sd.cluster, &sd.service, &c.revision)),
        requested_task_count: c.requested,
        running_task_count: c.running,
        pending_task_count: c.pending,
        ..Default::default()
    }
}

fn service_deployment_view(ctx: &Ctx, sd: &ServiceDeploymentRecord) -> ServiceDeployment {
    let alarm_names = sd.deployment_configuration.alarms.as_ref().and_then(|a| a.alarm_names.clone());
    ServiceDeployment {
        service_deployment_arn: Some(sd_arn(ctx, sd)),
        service_arn: Some(ctx.identity.service_arn(&sd.cluster, &sd.service)),
        cluster_arn: Some(ctx.identity.cluster_arn(&sd.cluster)),
        created_at: Some(sd.created_at),
        started_at: sd.started_at,
        finished_at: sd.finished_at,
        stopped_at: sd.stopped_at,
        updated_at: Some(sd.updated_at),
        source_service_revisions: Some(sd.sources.iter().map(|c| summary(ctx, sd, c)).collect()),
        target_service_revision: Some(summary(ctx, sd, &sd.target)),
        status: Some(sd.status.as_str().to_owned()),
        status_reason: sd.status_reason.clone(),
        deployment_configuration: Some(sd.deployment_configuration.clone()),
        rollback: sd.rollback.as_ref().map(|rb| Rollback {
            reason: Some(rb.reason.clone()),
            started_at: Some(rb.started_at),
            service_revision_arn: Some(ctx.identity.service_revision_arn(
                &sd.cluster,
                &sd.service,
                &rb.revision,
            )),
        }),
        deployment_circuit_breaker: Some(ServiceDeploymentCircuitBreaker {
            status: Some(sd.circuit_breaker.as_str().to_owned()),
            failure_count: sd.failure_count,
            threshold: sd.threshold,
        }),
        alarms: Some(ServiceDeploymentAlarms {
            status: Some(sd.alarms.as_str().to_owned()),
            alarm_names,
            triggered_alarm_names: Some(vec![]),
        }),
        ..ServiceDeployment::default()
    }
}

/// `(cluster, service, id)` of a service deployment or revision ARN of this region and
/// account; `None` for any other ARN.
fn parts(ctx: &Ctx, arn: &str, deployment: bool) -> Option<(String, String, String)> {
    match ctx.identity.parse(arn) {
        Ok(ResourceArn::ServiceDeployment { cluster, service, id }) if deployment => {
            Some((cluster, service, id))
        }
        Ok(ResourceArn::ServiceRevision { cluster, service, id }) if !deployment => {
            Some((cluster, service, id))
        }
        _ => None,
    }
}

fn missing(arn: String) -> Failure {
    Failure { arn: Some(arn), reason: Some("MISSING".into()), detail: None }
}

fn check_arn_count(what: &str, n: usize) -> Result<(), ApiError> {
    if n == 0 || n > 20 {
        return Err(ApiError::invalid_parameter(format!("{what} must name 1 to 20 ARNs; it names {n}")));
    }
    Ok(())
}

pub fn describe_deployments(
    ctx: &Ctx,
    req: DescribeServiceDeploymentsRequest,
) -> Result<DescribeServiceDeploymentsResponse, ApiError> {
    let arns = req.service_deployment_arns.clone().unwrap_or_default();
    check_arn_count("serviceDeploymentArns", arns.len())?;
    ctx.store.read(|r| {
        let mut found = vec![];
        let mut failures = vec![];
        for arn in arns {
            let sd = match parts(ctx, &arn, true) {
                Some((c, s, id)) => r.get(SERVICE_DEPLOYMENTS, &service_deployment_key(&c, &s, &id))?,
                None => None,
            };
            match sd {
                Some(sd) => found.push(service_deployment_view(ctx, &sd)),
                None => failures.push(missing(arn)),
            }
        }
        Ok(DescribeServiceDeploymentsResponse { service_deployments: Some(found), failures: Some(failures) })
    })
}

fn revision_view(ctx: &Ctx, cluster: &str, service: &str, rev: &Revision) -> ServiceRevision {
    let fargate = is_fargate(rev);
    ServiceRevision {
        service_revision_arn: Some(ctx.identity.service_revision_arn(cluster, service, &rev.id)),
        service_arn: Some(ctx.identity.service_arn(cluster, service)),
        cluster_arn: Some(ctx.identity.cluster_arn(cluster)),
        task_definition: Some(rev.task_definition.clone()),
        capacity_provider_strategy: rev.capacity_provider_strategy.clone(),
        launch_type: rev.launch_type.clone(),
        platform_version: fargate.then(|| rev.platform_version.clone().unwrap_or_else(|| "LATEST".into())),
        platform_family: fargate.then(|| "Linux".to_owned()),
        load_balancers: Some(rev.load_balancers.clone()),
        service_registries: Some(rev.service_registries.clone()),
        network_configuration: rev.network_configuration.clone(),
        container_images: Some(
            rev.images
                .iter()
                .flatten()
                .map(|i| crate::model::shapes::ContainerImage {
                    container_name: Some(i.container.clone()),
                    image_digest: i.digest.clone(),
                    image: Some(i.image.clone()),
                })
                .collect(),
        ),
        guard_duty_enabled: false,
        service_connect_configuration: Some(rev.service_connect_configuration.clone().unwrap_or_default()),
        volume_configurations: rev.volume_configurations.clone(),
        created_at: Some(rev.created_at),
        vpc_lattice_configurations: rev.vpc_lattice_configurations.clone(),
        ..ServiceRevision::default()
    }
}

pub fn describe_revisions(
    ctx: &Ctx,
    req: DescribeServiceRevisionsRequest,
) -> Result<DescribeServiceRevisionsResponse, ApiError> {
    let arns = req.service_revision_arns.clone().unwrap_or_default();
    check_arn_count("serviceRevisionArns", arns.len())?;
    ctx.store.read(|r| {
        let mut found = vec![];
        let mut failures = vec![];
        for arn in arns {
            let rev = match parts(ctx, &arn, false) {
                Some((c, s, id)) => {
                    r.get(SERVICE_REVISIONS, &service_deployment_key(&c, &s, &id))?.map(|rev| (c, s, rev))
                }
                None => None,
            };
            match rev {
                Some((c, s, rev)) => found.push(revision_view(ctx, &c, &s, &rev)),
                None => failures.push(missing(arn)),
            }
        }
        Ok(DescribeServiceRevisionsResponse { service_revisions: Some(found), failures: Some(failures) })
    })
}

pub async fn stop_deployment(
    ctx: &Arc<Ctx>,
    req: StopServiceDeploymentRequest,
) -> Result<StopServiceDeploymentResponse, ApiError> {
    let arn = req.service_deployment_arn.clone().unwrap_or_default();
    match req.stop_type.as_deref() {
        None | Some("ROLLBACK") => {}
        Some(other) => {
            return Err(ApiError::invalid_parameter(format!(
                "stopType {other} is not supported: a rolling service deployment is stopped with ROLLBACK"
            )));
        }
    }
    let not_found = || ApiError::new(Exception::ServiceDeploymentNotFound, "Service deployment not found.");
    let (cluster, service, id) = parts(ctx, &arn, true).ok_or_else(not_found)?;
    ctx.scheduler.stop_deployment(&cluster, &service, &id).await?;
    Ok(StopServiceDeploymentResponse { service_deployment_arn: Some(arn) })
}

/// ACTIVE and DRAINING services of a cluster, for its counters and DeleteCluster.
pub fn count(r: &Reader<'_>, cluster: &str) -> Result<(i32, i32), crate::store::StoreError> {
    let prefix = service_key(cluster, "");
    let end = prefix_end(&prefix);
    let (mut active, mut draining) = (0, 0);
    r.scan(
        SERVICES,
        Scan { from: Bound::Included(&prefix), to: Bound::Excluded(&end), reverse: false },
        |_, s: ServiceRecord| {
            match s.status {
                ServiceStatus::Active => active += 1,
                ServiceStatus::Draining => draining += 1,
                ServiceStatus::Inactive => {}
            }
            ControlFlow::Continue(())
        },
    )?;
    Ok((active, draining))
}

/// Whether a service of this name exists in the cluster and is not INACTIVE (for tagging).
pub fn exists(r: &Reader<'_>, cluster: &str, name: &str) -> Result<bool, crate::store::StoreError> {
    Ok(r.get(SERVICES, &service_key(cluster, name))?.is_some_and(|s| s.status != ServiceStatus::Inactive))
}

/// Whether the cluster has a service of this name, in any status (for ListTasks).
pub fn known(r: &Reader<'_>, cluster: &str, name: &str) -> Result<bool, crate::store::StoreError> {
    Ok(r.get(SERVICES, &service_key(cluster, name))?.is_some())
}
