//! RunTask, StartTask, StopTask, DescribeTasks, ListTasks.

use std::sync::Arc;

use super::container_instances::{self, Demand, Wanted};
use super::pagination::{decode_token, encode_token};
use super::{ApiError, Ctx, Exception, cluster_name, clusters};
use crate::engine::record::{AttachmentStatus, EniAttachment};
use crate::engine::{ContainerRecord, ContainerStatus, STOP_USER, TaskRecord, TaskStatus, task_key};
use crate::model::arn::{ArnError, ResourceArn};
use crate::model::shapes::{
    ContainerDefinition, DescribeTasksRequest, DescribeTasksResponse, Failure, KeyValuePair,
    ListTasksRequest, ListTasksResponse, NetworkConfiguration, RunTaskRequest, RunTaskResponse,
    StartTaskRequest, StartTaskResponse, StopTaskRequest, StopTaskResponse, Tag, TaskDefinition,
    TaskOverride,
};
use crate::model::tags;
use crate::network::NetworkDef;
use crate::store::Reader;
use crate::store::records::{TAGS, TASK_DEFINITIONS, TASKS, task_definition_key};

/// What RunTask and StartTask share: everything needed to make task records.
struct Launch {
    cluster: String,
    definition: TaskDefinition,
    overrides: Option<TaskOverride>,
    started_by: Option<String>,
    group: Option<String>,
    launch_type: String,
    tags: Vec<Tag>,
    propagate_tags: Option<String>,
    enable_execute_command: bool,
    network_configuration: Option<NetworkConfiguration>,
    /// The network an awsvpc task's subnet picked.
    network: Option<NetworkDef>,
}

fn not_found_task() -> ApiError {
    ApiError::invalid_parameter("The referenced task was not found.")
}

/// Resolves the task definition RunTask names: it must be ACTIVE.
fn definition(ctx: &Ctx, r: &Reader<'_>, reference: &str) -> Result<TaskDefinition, ApiError> {
    let parsed = ctx.identity.task_definition_ref(reference).map_err(|e| match e {
        ArnError::Foreign(_) => ApiError::client("TaskDefinition not found."),
        e => ApiError::client(format!("taskDefinition: {e}")),
    })?;
    let td = match parsed.revision {
        Some(rev) => r.get(TASK_DEFINITIONS, &task_definition_key(&parsed.family, rev))?,
        None => super::task_definitions::latest_active(r, &parsed.family)?,
    };
    match td {
        Some(td) if td.status.as_deref() == Some("ACTIVE") => Ok(td),
        Some(_) => Err(ApiError::client(format!(
            "TaskDefinition is inactive: {parsed} is no longer ACTIVE; register or name an ACTIVE revision"
        ))),
        None => Err(ApiError::client("TaskDefinition not found.")),
    }
}

/// The container definitions with the request's container overrides applied, as ECS does:
/// command replaces, environment merges by name (the override wins), cpu and memory replace.
fn apply_overrides(
    td: &TaskDefinition,
    overrides: Option<&TaskOverride>,
) -> Result<Vec<ContainerDefinition>, ApiError> {
    let mut containers = td.container_definitions.clone().unwrap_or_default();
    for o in overrides.and_then(|o| o.container_overrides.as_deref()).unwrap_or_default() {
        let name = o.name.clone().unwrap_or_default();
        let Some(c) = containers.iter_mut().find(|c| c.name.as_deref() == Some(name.as_str())) else {
            return Err(ApiError::invalid_parameter(format!(
                "Override for container named {name} is not a container in the TaskDefinition."
            )));
        };
        if let Some(cmd) = &o.command {
            c.command = Some(cmd.clone());
        }
        if let Some(env) = &o.environment {
            let mut merged: Vec<KeyValuePair> = c.environment.clone().unwrap_or_default();
            for kv in env {
                match merged.iter_mut().find(|e| e.name == kv.name) {
                    Some(e) => e.value = kv.value.clone(),
                    None => merged.push(kv.clone()),
                }
            }
            c.environment = Some(merged);
        }
        if let Some(files) = &o.environment_files {
            c.environment_files.get_or_insert_with(Vec::new).extend(files.iter().cloned());
        }
        if let Some(cpu) = o.cpu {
            c.cpu = cpu;
        }
        if o.memory.is_some() {
            c.memory = o.memory;
        }
        if o.memory_reservation.is_some() {
            c.memory_reservation = o.memory_reservation;
        }
        if let Some(rr) = &o.resource_requirements {
            c.resource_requirements = Some(rr.clone());
        }
    }
    Ok(containers)
}

/// Checks the network configuration against the task definition's network mode and, for
/// awsvpc, returns the configured network its first subnet picks.
fn validate_network(
    ctx: &Ctx,
    td: &TaskDefinition,
    nc: Option<&NetworkConfiguration>,
    launch_type: &str,
) -> Result<Option<NetworkDef>, ApiError> {
    let awsvpc = td.network_mode.as_deref() == Some("awsvpc");
    let vpc = nc.and_then(|n| n.awsvpc_configuration.as_ref());
    let subnets = vpc.and_then(|a| a.subnets.as_deref()).unwrap_or_default();
    if !awsvpc {
        return match nc {
            Some(_) => Err(ApiError::invalid_parameter(
                "Network Configuration is not valid for the given networkMode of this task definition.",
            )),
            None => Ok(None),
        };
    }
    let Some(vpc) = vpc.filter(|_| !subnets.is_empty()) else {
        return Err(ApiError::invalid_parameter(
            "Network Configuration must be provided when networkMode 'awsvpc' is specified.",
        ));
    };
    if subnets.len() > 16 {
        return Err(ApiError::invalid_parameter("subnets can have at most 16 items."));
    }
    if vpc.security_groups.as_ref().is_some_and(|g| g.len() > 5) {
        return Err(ApiError::invalid_parameter("securityGroups can have at most 5 items."));
    }
    if vpc.assign_public_ip.as_deref() == Some("ENABLED") && launch_type != "FARGATE" {
        return Err(ApiError::invalid_parameter("Assign public IP is not supported for this launch type."));
    }
    if let Some(unknown) = subnets.iter().find(|id| ctx.network.network_for_subnet(id).is_none()) {
        let have: Vec<String> = ctx.network.networks.iter().map(NetworkDef::subnet_id).collect();
        return Err(ApiError::invalid_parameter(format!(
            "Error retrieving subnet information for [{}]: The subnet ID '{unknown}' does not exist (ecsd networks: {})",
            subnets.join(", "),
            have.join(", ")
        )));
    }
    Ok(ctx.network.network_for_subnet(&subnets[0]).cloned())
}

/// Task-shared PID and IPC namespaces need a process holding them for the task's life (the
/// agent's pause container); ecsd does not keep one yet, so it says so up front rather than
/// failing every container at creation.
fn validate_supported(td: &TaskDefinition) -> Result<(), ApiError> {
    for (field, value) in [("pidMode", &td.pid_mode), ("ipcMode", &td.ipc_mode)] {
        if value.as_deref() == Some("task") {
            return Err(ApiError::new(
                Exception::UnsupportedFeature,
                format!(
                    "{field} 'task' is not supported by ecsd yet: use 'host', or leave {field} out for a namespace per container"
                ),
            ));
        }
    }
    Ok(())
}

fn validate_launch_type(td: &TaskDefinition, launch_type: &str) -> Result<(), ApiError> {
    let compatible = td.compatibilities.as_deref().unwrap_or_default().iter().any(|c| c == launch_type);
    if compatible {
        Ok(())
    } else {
        Err(ApiError::client(format!("Task definition does not support launch_type {launch_type}.")))
    }
}

fn random_hex(n_uuids: usize) -> String {
    (0..n_uuids).map(|_| uuid::Uuid::new_v4().simple().to_string()).collect()
}

/// The interface an awsvpc task will get on `network`, before the engine attaches it.
fn precreated(network: &NetworkDef) -> EniAttachment {
    EniAttachment {
        id: uuid::Uuid::new_v4().to_string(),
        status: AttachmentStatus::Precreated,
        network: network.name.clone(),
        subnet_id: network.subnet_id(),
        network_interface_id: format!("eni-{}", &random_hex(1)[..17]),
        mac_address: None,
        private_ipv4_address: None,
        private_dns_name: None,
    }
}

/// A new task record in PROVISIONING.
fn new_record(ctx: &Ctx, launch: &Launch, instance_arn: &str) -> Result<TaskRecord, ApiError> {
    let id = random_hex(1);
    let arn = ctx.identity.task_arn(&launch.cluster, &id);
    let effective = apply_overrides(&launch.definition, launch.overrides.as_ref())?;
    let containers = effective
        .iter()
        .map(|c| ContainerRecord {
            name: c.name.clone().unwrap_or_default(),
            runtime_id: random_hex(2),
            arn: ctx.identity.container_arn(&launch.cluster, &id, &uuid::Uuid::new_v4().to_string()),
            image: c.image.clone().unwrap_or_default(),
            image_digest: None,
            image_id: None,
            status: ContainerStatus::Pending,
            exit_code: None,
            reason: None,
            created_at: None,
            started_at: None,
            finished_at: None,
            stop_sent_at: None,
            killed: None,
            stop_signal: None,
            health: c.health_check.as_ref().map(|_| crate::engine::Health::default()),
            network_bindings: vec![],
            netns: None,
            ipv4: None,
            endpoint_id: Some(uuid::Uuid::new_v4().to_string()),
        })
        .collect();
    let family = launch.definition.family.clone().unwrap_or_default();
    let o = launch.overrides.as_ref();
    Ok(TaskRecord {
        id,
        cluster: launch.cluster.clone(),
        arn,
        definition: launch.definition.clone(),
        containers_effective: effective,
        overrides: launch.overrides.clone(),
        started_by: launch.started_by.clone(),
        group: launch.group.clone().unwrap_or_else(|| format!("family:{family}")),
        launch_type: launch.launch_type.clone(),
        enable_execute_command: launch.enable_execute_command,
        network_configuration: launch.network_configuration.clone(),
        container_instance_arn: (launch.launch_type != "FARGATE").then(|| instance_arn.to_owned()),
        cpu: o.and_then(|o| o.cpu.clone()).or_else(|| launch.definition.cpu.clone()),
        memory: o.and_then(|o| o.memory.clone()).or_else(|| launch.definition.memory.clone()),
        desired: TaskStatus::Running,
        last: TaskStatus::Provisioning,
        version: 1,
        created_at: ctx.now(),
        pull_started_at: None,
        pull_stopped_at: None,
        connectivity_at: None,
        started_at: None,
        stopping_at: None,
        execution_stopped_at: None,
        stopped_at: None,
        stop_code: None,
        stopped_reason: None,
        netns: None,
        attachment: launch.network.as_ref().map(precreated),
        credentials_id: None,
        containers,
    })
}

/// Places and launches `count` tasks; a task that cannot be placed is a failure, not an
/// error, as in ECS.
async fn launch(
    ctx: &Arc<Ctx>,
    launch: Launch,
    count: usize,
) -> Result<(Vec<crate::model::shapes::Task>, Vec<Failure>), ApiError> {
    let instance_arn = container_instances::arn(ctx, &launch.cluster)?;
    let mut failures = vec![];
    if let Err(e) = ctx.engine.runtime_ready().await {
        failures.push(Failure {
            arn: Some(instance_arn),
            reason: Some("AGENT".into()),
            detail: Some(e.to_string()),
        });
        return Ok((vec![], failures));
    }
    let mut tasks = vec![];
    let td_tags = if launch.propagate_tags.as_deref() == Some("TASK_DEFINITION") {
        ctx.store
            .read(|r| r.get(TAGS, launch.definition.task_definition_arn.as_deref().unwrap_or_default()))?
            .unwrap_or_default()
    } else {
        vec![]
    };
    let task_tags = tags::merge(&td_tags, &launch.tags)?;
    let containers = apply_overrides(&launch.definition, launch.overrides.as_ref())?;
    let demand = Demand::of(&launch.definition, &containers);
    let ports = container_instances::wanted_ports(&ctx.network, &launch.definition, &containers);
    for _ in 0..count {
        let record = match place(ctx, &launch, &instance_arn, demand, &ports, &task_tags)? {
            Ok(record) => record,
            Err(short) => {
                failures.push(Failure {
                    arn: Some(instance_arn.clone()),
                    reason: Some(short.into()),
                    detail: None,
                });
                continue;
            }
        };
        let cluster_arn = ctx.identity.cluster_arn(&record.cluster);
        let mut wire = record.to_wire(&cluster_arn, &ctx.engine.availability_zone());
        wire.tags = Some(task_tags.clone());
        tasks.push(wire);
    }
    Ok((tasks, failures))
}

/// Places one task on the host and launches it; `Ok(Err(reason))` when the host lacks what
/// it needs (`RESOURCE:MEMORY`, `RESOURCE:PORTS`, ...).
fn place(
    ctx: &Arc<Ctx>,
    launch: &Launch,
    instance_arn: &str,
    demand: Demand,
    ports: &[Vec<Wanted>],
    task_tags: &[Tag],
) -> Result<Result<TaskRecord, &'static str>, ApiError> {
    let _placing = ctx.placement.lock().unwrap_or_else(|e| e.into_inner());
    let usage = container_instances::usage(ctx)?;
    if launch.launch_type != "FARGATE"
        && let Some(short) = usage.shortfall(demand)
    {
        return Ok(Err(short));
    }
    let bindings = match container_instances::bind_ports(&ctx.network, &usage, ports) {
        Ok(b) => b,
        Err(short) => return Ok(Err(short)),
    };
    let mut record = new_record(ctx, launch, instance_arn)?;
    for (c, b) in record.containers.iter_mut().zip(bindings) {
        c.network_bindings = b;
    }
    if !task_tags.is_empty() {
        ctx.store.write(|w| w.put(TAGS, &record.arn, &task_tags.to_vec()))?;
    }
    ctx.engine.launch(record).map(Ok).map_err(engine_error)
}

fn engine_error(e: crate::engine::EngineError) -> ApiError {
    match e {
        crate::engine::EngineError::Store(s) => s.into(),
        crate::engine::EngineError::Runtime(r) => ApiError::new(Exception::Server, r.to_string()),
    }
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

/// What RunTask and StartTask resolve from a request before placing tasks.
struct Resolved {
    cluster: String,
    definition: TaskDefinition,
    network: Option<NetworkDef>,
}

/// The checks RunTask and StartTask share: an ACTIVE cluster, an ACTIVE task definition,
/// network configuration that fits its network mode and names a configured subnet,
/// overrides that name its containers.
fn resolve(
    ctx: &Ctx,
    cluster: Option<&str>,
    task_definition: Option<&str>,
    network: Option<&NetworkConfiguration>,
    overrides: Option<&TaskOverride>,
    launch_type: &str,
) -> Result<Resolved, ApiError> {
    let (cluster, definition) = ctx.store.read(|r| {
        let cluster = active_cluster(ctx, r, cluster)?;
        let td = definition(ctx, r, task_definition.unwrap_or_default())?;
        Ok::<_, ApiError>((cluster, td))
    })?;
    let network = validate_network(ctx, &definition, network, launch_type)?;
    validate_supported(&definition)?;
    apply_overrides(&definition, overrides)?;
    Ok(Resolved { cluster, definition, network })
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
    let tags = check_tags(req.tags.as_deref())?;
    let Resolved { cluster, definition, network } = resolve(
        ctx,
        req.cluster.as_deref(),
        req.task_definition.as_deref(),
        req.network_configuration.as_ref(),
        req.overrides.as_ref(),
        &launch_type,
    )?;
    validate_launch_type(&definition, &launch_type)?;
    let l = Launch {
        cluster,
        definition,
        overrides: req.overrides,
        started_by: req.started_by,
        group: req.group,
        launch_type,
        tags,
        propagate_tags: req.propagate_tags,
        enable_execute_command: req.enable_execute_command,
        network_configuration: req.network_configuration,
        network,
    };
    let (tasks, failures) = launch(ctx, l, count as usize).await?;
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
    let tags = check_tags(req.tags.as_deref())?;
    let Resolved { cluster, definition, network } = resolve(
        ctx,
        req.cluster.as_deref(),
        req.task_definition.as_deref(),
        req.network_configuration.as_ref(),
        req.overrides.as_ref(),
        "EC2",
    )?;
    let mut failures = vec![];
    let mut count = 0;
    for i in &instances {
        if container_instances::is_ours(ctx, &cluster, i)? {
            count += 1;
        } else {
            let arn = if i.starts_with("arn:") {
                i.clone()
            } else {
                ctx.identity.container_instance_arn(&cluster, i)
            };
            failures.push(Failure { arn: Some(arn), reason: Some("MISSING".into()), detail: None });
        }
    }
    let l = Launch {
        cluster,
        definition,
        overrides: req.overrides,
        started_by: req.started_by,
        group: req.group,
        launch_type: "EC2".into(),
        tags,
        propagate_tags: req.propagate_tags,
        enable_execute_command: req.enable_execute_command,
        network_configuration: req.network_configuration,
        network,
    };
    let (tasks, more) = if count > 0 { launch(ctx, l, count).await? } else { (vec![], vec![]) };
    failures.extend(more);
    Ok(StartTaskResponse { tasks: Some(tasks), failures: Some(failures) })
}

/// Finds a task by id or ARN within a cluster.
fn find(ctx: &Ctx, r: &Reader<'_>, cluster: &str, reference: &str) -> Result<Option<TaskRecord>, ApiError> {
    let id = if reference.starts_with("arn:") {
        match ctx.identity.parse(reference) {
            Ok(ResourceArn::Task { cluster: c, id }) if c == cluster => id,
            _ => return Ok(None),
        }
    } else {
        reference.to_owned()
    };
    Ok(r.get(TASKS, &task_key(cluster, &id))?)
}

pub async fn stop(ctx: &Arc<Ctx>, req: StopTaskRequest) -> Result<StopTaskResponse, ApiError> {
    let reason = req.reason.clone().unwrap_or_else(|| "Task stopped by user".to_owned());
    if reason.chars().count() > 1024 {
        return Err(ApiError::invalid_parameter("reason can be at most 1024 characters"));
    }
    let (cluster, record) = ctx.store.read(|r| {
        let cluster = active_cluster(ctx, r, req.cluster.as_deref())?;
        let task =
            find(ctx, r, &cluster, req.task.as_deref().unwrap_or_default())?.ok_or_else(not_found_task)?;
        Ok::<_, ApiError>((cluster, task))
    })?;
    let mut record = record;
    if ctx.engine.stop(&record.id, STOP_USER, reason.clone()).await && record.desired == TaskStatus::Running {
        // The supervisor applies the stop; the answer shows it as ECS does, at once.
        record.desired = TaskStatus::Stopped;
        record.stop_code = Some(STOP_USER.into());
        record.stopped_reason = Some(reason);
        record.stopping_at = Some(ctx.now());
    }
    let wire = record.to_wire(&ctx.identity.cluster_arn(&cluster), &ctx.engine.availability_zone());
    Ok(StopTaskResponse { task: Some(wire) })
}

pub fn describe(ctx: &Ctx, req: DescribeTasksRequest) -> Result<DescribeTasksResponse, ApiError> {
    let refs = req.tasks.unwrap_or_default();
    if refs.is_empty() || refs.len() > 100 {
        return Err(ApiError::invalid_parameter(format!(
            "tasks must name 1 to 100 tasks; it names {}",
            refs.len()
        )));
    }
    let with_tags = req.include.as_deref().unwrap_or_default().iter().any(|i| i == "TAGS");
    ctx.store.read(|r| {
        let cluster = active_cluster(ctx, r, req.cluster.as_deref())?;
        let cluster_arn = ctx.identity.cluster_arn(&cluster);
        let az = ctx.engine.availability_zone();
        let mut tasks = vec![];
        let mut failures = vec![];
        for reference in refs {
            match find(ctx, r, &cluster, &reference)? {
                Some(t) => {
                    let mut wire = t.to_wire(&cluster_arn, &az);
                    if with_tags {
                        wire.tags = Some(r.get(TAGS, &t.arn)?.unwrap_or_default());
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
        Ok(DescribeTasksResponse { tasks: Some(tasks), failures: Some(failures) })
    })
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
    for t in ctx.engine.tasks_of(&cluster)? {
        if after.as_deref().is_some_and(|a| t.id.as_str() <= a) {
            continue;
        }
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
