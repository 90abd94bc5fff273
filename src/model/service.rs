//! A service as ecsd keeps it: the record the scheduler owns and the store persists, its
//! deployments, service deployments, revisions and events, and the pure rules ECS applies to
//! them (defaults, validation, the rounding of `minimumHealthyPercent` and `maximumPercent`,
//! the circuit breaker's threshold, the start-up back-off, which UpdateService parameters
//! start a deployment, and the counts derived from the service's tasks). No I/O here; the
//! wire shapes of a service are made in `api`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::model::shapes::{
    CapacityProviderStrategyItem, DeploymentAlarms, DeploymentCircuitBreaker, DeploymentConfiguration,
    LoadBalancer, NetworkConfiguration, PlacementConstraint, PlacementStrategy, ServiceConnectConfiguration,
    ServiceRegistry, ServiceVolumeConfiguration, VpcLatticeConfiguration,
};
use crate::model::task::{TaskRecord, TaskStatus};

/// Events a service keeps, newest first.
pub const MAX_EVENTS: usize = 100;
/// How long ECS keeps quiet about an event it has just reported, while its cause lasts.
pub const EVENT_REPEAT_SECS: f64 = 6.0 * 3600.0;
/// The longest wait between attempts to start tasks that keep failing to start.
pub const BACKOFF_CAP_SECS: f64 = 15.0 * 60.0;
/// The first wait once tasks have failed to start twice in a row.
pub const BACKOFF_FIRST_SECS: f64 = 10.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServiceStatus {
    Active,
    Draining,
    Inactive,
}

impl ServiceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceStatus::Active => "ACTIVE",
            ServiceStatus::Draining => "DRAINING",
            ServiceStatus::Inactive => "INACTIVE",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SchedulingStrategy {
    Replica,
    Daemon,
}

impl SchedulingStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            SchedulingStrategy::Replica => "REPLICA",
            SchedulingStrategy::Daemon => "DAEMON",
        }
    }
}

/// A deployment's place in `deployments[]`: the newest is PRIMARY, older ones still draining
/// are ACTIVE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeploymentStatus {
    Primary,
    Active,
}

impl DeploymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentStatus::Primary => "PRIMARY",
            DeploymentStatus::Active => "ACTIVE",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RolloutState {
    InProgress,
    Completed,
    Failed,
}

impl RolloutState {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::InProgress => "IN_PROGRESS",
            RolloutState::Completed => "COMPLETED",
            RolloutState::Failed => "FAILED",
        }
    }
}

/// The status of a service deployment (ListServiceDeployments, DescribeServiceDeployments).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServiceDeploymentStatus {
    Pending,
    InProgress,
    Successful,
    Stopped,
    StopRequested,
    RollbackRequested,
    RollbackInProgress,
    RollbackSuccessful,
    RollbackFailed,
}

impl ServiceDeploymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceDeploymentStatus::Pending => "PENDING",
            ServiceDeploymentStatus::InProgress => "IN_PROGRESS",
            ServiceDeploymentStatus::Successful => "SUCCESSFUL",
            ServiceDeploymentStatus::Stopped => "STOPPED",
            ServiceDeploymentStatus::StopRequested => "STOP_REQUESTED",
            ServiceDeploymentStatus::RollbackRequested => "ROLLBACK_REQUESTED",
            ServiceDeploymentStatus::RollbackInProgress => "ROLLBACK_IN_PROGRESS",
            ServiceDeploymentStatus::RollbackSuccessful => "ROLLBACK_SUCCESSFUL",
            ServiceDeploymentStatus::RollbackFailed => "ROLLBACK_FAILED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        use ServiceDeploymentStatus::*;
        [
            Pending,
            InProgress,
            Successful,
            Stopped,
            StopRequested,
            RollbackRequested,
            RollbackInProgress,
            RollbackSuccessful,
            RollbackFailed,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }

    /// Whether the service deployment has ended (no more changes).
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            ServiceDeploymentStatus::Successful
                | ServiceDeploymentStatus::Stopped
                | ServiceDeploymentStatus::RollbackSuccessful
                | ServiceDeploymentStatus::RollbackFailed
        )
    }
}

/// The circuit breaker's watch over a service deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MonitorStatus {
    Disabled,
    Monitoring,
    Triggered,
    MonitoringComplete,
}

impl MonitorStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MonitorStatus::Disabled => "DISABLED",
            MonitorStatus::Monitoring => "MONITORING",
            MonitorStatus::Triggered => "TRIGGERED",
            MonitorStatus::MonitoringComplete => "MONITORING_COMPLETE",
        }
    }
}

/// One container's image as a deployment runs it: the digest its tag pointed to when the
/// deployment started, when the image store could tell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PinnedImage {
    pub container: String,
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// What a deployment runs: a service revision (immutable once made, but for the image digests
/// resolved when the deployment first launches).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Revision {
    /// The 19-digit id in the service revision's ARN.
    pub id: String,
    pub task_definition: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_provider_strategy: Option<Vec<CapacityProviderStrategyItem>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_family: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_configuration: Option<NetworkConfiguration>,
    #[serde(default)]
    pub load_balancers: Vec<LoadBalancer>,
    #[serde(default)]
    pub service_registries: Vec<ServiceRegistry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_connect_configuration: Option<ServiceConnectConfiguration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_configurations: Option<Vec<ServiceVolumeConfiguration>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_lattice_configurations: Option<Vec<VpcLatticeConfiguration>>,
    /// `None` until the deployment resolves them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<Vec<PinnedImage>>,
    pub created_at: f64,
}

impl Revision {
    /// The launch type its tasks run with: the one given, else FARGATE for a Fargate
    /// capacity provider, else EC2.
    pub fn task_launch_type(&self) -> String {
        if let Some(l) = &self.launch_type {
            return l.clone();
        }
        let fargate = self
            .capacity_provider_strategy
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|i| i.capacity_provider.as_deref().unwrap_or_default().starts_with("FARGATE"));
        if fargate { "FARGATE".to_owned() } else { "EC2".to_owned() }
    }
}

/// One entry of the service's `deployments[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentRecord {
    /// `ecs-svc/<digits>`: every task of the deployment carries it as `startedBy`.
    pub id: String,
    pub status: DeploymentStatus,
    pub revision: Revision,
    pub failed_tasks: i32,
    pub created_at: f64,
    pub updated_at: f64,
    pub rollout_state: RolloutState,
    pub rollout_state_reason: String,
    /// When one of its tasks last became healthy: failures up to then are forgiven.
    #[serde(default)]
    pub healthy_mark: f64,
    /// When the last failed task it counted stopped.
    #[serde(default)]
    pub last_failure_at: f64,
    /// The service deployment it carries out (a rollback shares the failed one's).
    pub service_deployment: String,
}

impl DeploymentRecord {
    pub fn new(revision: Revision, service_deployment: String, now: f64) -> DeploymentRecord {
        let id = new_deployment_id();
        DeploymentRecord {
            rollout_state_reason: in_progress_reason(&id),
            id,
            status: DeploymentStatus::Primary,
            revision,
            failed_tasks: 0,
            created_at: now,
            updated_at: now,
            rollout_state: RolloutState::InProgress,
            healthy_mark: 0.0,
            last_failure_at: 0.0,
            service_deployment,
        }
    }
}

pub fn in_progress_reason(id: &str) -> String {
    format!("ECS deployment {id} in progress.")
}

pub fn completed_reason(id: &str) -> String {
    format!("ECS deployment {id} completed.")
}

pub const CIRCUIT_BREAKER_REASON: &str = "ECS deployment circuit breaker: tasks failed to start.";

pub fn rollback_reason(to: &str) -> String {
    format!("ECS deployment circuit breaker: rolling back to deploymentId {to}.")
}

/// How a service deployment's rollback went, as DescribeServiceDeployments shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RollbackRecord {
    pub reason: String,
    pub started_at: f64,
    /// The revision rolled back to.
    pub revision: String,
}

/// A revision's tasks as a service deployment last counted them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionCount {
    pub revision: String,
    pub requested: i32,
    pub running: i32,
    pub pending: i32,
}

/// A service deployment (the Oct-2024 API): one per deployment-starting change, kept after
/// its entry has left `deployments[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceDeploymentRecord {
    /// The ~21-character id in its ARN.
    pub id: String,
    pub cluster: String,
    pub service: String,
    /// The service incarnation it belongs to (a re-created service starts afresh).
    pub incarnation: String,
    pub status: ServiceDeploymentStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    pub created_at: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<f64>,
    pub updated_at: f64,
    /// The revisions that ran when it started, and the one it deploys.
    pub sources: Vec<RevisionCount>,
    pub target: RevisionCount,
    pub deployment_configuration: DeploymentConfiguration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackRecord>,
    pub circuit_breaker: MonitorStatus,
    pub failure_count: i32,
    pub threshold: i32,
    pub alarms: MonitorStatus,
}

/// One service event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub id: String,
    pub created_at: f64,
    pub message: String,
}

/// The start-up throttle: consecutive tasks that never reached RUNNING.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Backoff {
    pub failures: u32,
    /// When the last of them stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_at: Option<f64>,
    /// No task is started before this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<f64>,
}

impl Backoff {
    /// The wait after `failures` consecutive failures to start: none after the first (one
    /// failure may be bad luck), then from 10 s doubling up to 15 minutes.
    pub fn delay(failures: u32) -> f64 {
        if failures < 2 {
            return 0.0;
        }
        let doublings = (failures - 2).min(20);
        (BACKOFF_FIRST_SECS * f64::from(1u32 << doublings)).min(BACKOFF_CAP_SECS)
    }

    pub fn is_throttling(&self) -> bool {
        self.failures >= 2
    }
}

/// The deployment a circuit-breaker rollback returns to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompletedDeployment {
    pub id: String,
    pub revision: Revision,
}

/// A service: its settings, its deployments, what the scheduler remembers between passes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRecord {
    pub name: String,
    pub cluster: String,
    pub arn: String,
    /// Distinguishes a service from an earlier one of the same name.
    pub incarnation: String,
    pub status: ServiceStatus,
    pub scheduling_strategy: SchedulingStrategy,
    pub desired_count: i32,
    /// The PRIMARY deployment's task definition (a rollback brings the old one back).
    pub task_definition: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_provider_strategy: Option<Vec<CapacityProviderStrategyItem>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_family: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_configuration: Option<NetworkConfiguration>,
    #[serde(default)]
    pub load_balancers: Vec<LoadBalancer>,
    #[serde(default)]
    pub service_registries: Vec<ServiceRegistry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_connect_configuration: Option<ServiceConnectConfiguration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_configurations: Option<Vec<ServiceVolumeConfiguration>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_lattice_configurations: Option<Vec<VpcLatticeConfiguration>>,
    /// With every default filled in.
    pub deployment_configuration: DeploymentConfiguration,
    #[serde(default)]
    pub placement_constraints: Vec<PlacementConstraint>,
    #[serde(default)]
    pub placement_strategy: Vec<PlacementStrategy>,
    pub health_check_grace_period_seconds: i32,
    pub deployment_controller: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    pub created_at: f64,
    pub created_by: String,
    pub enable_ecs_managed_tags: bool,
    pub propagate_tags: String,
    pub enable_execute_command: bool,
    pub availability_zone_rebalancing: String,
    /// CreateService's `clientToken` and request, to tell a retry from a different request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_token: Option<String>,
    #[serde(default)]
    pub create_request: String,
    /// PRIMARY first.
    pub deployments: Vec<DeploymentRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_completed: Option<CompletedDeployment>,
    /// The newest service deployment.
    pub current_service_deployment: String,
    /// Service deployments that have not finished; each is also in the store's table of
    /// service deployments, written with the service.
    #[serde(default)]
    pub open_deployments: Vec<ServiceDeploymentRecord>,
    /// Newest first, at most [`MAX_EVENTS`].
    #[serde(default)]
    pub events: Vec<Event>,
    /// Events reported recently, by what they are about: a repeat waits for its cause to
    /// change or for [`EVENT_REPEAT_SECS`].
    #[serde(default)]
    pub reported: BTreeMap<String, (String, f64)>,
    #[serde(default)]
    pub backoff: Backoff,
    /// Stopped tasks already accounted for (failures, back-off), while the engine keeps them.
    #[serde(default)]
    pub handled_stops: BTreeSet<String>,
    pub updated_at: f64,
    /// When it became INACTIVE: it is forgotten a retention time later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inactive_at: Option<f64>,
}

impl ServiceRecord {
    pub fn primary(&self) -> Option<&DeploymentRecord> {
        self.deployments.first()
    }

    pub fn primary_mut(&mut self) -> Option<&mut DeploymentRecord> {
        self.deployments.first_mut()
    }

    pub fn deployment(&self, id: &str) -> Option<&DeploymentRecord> {
        self.deployments.iter().find(|d| d.id == id)
    }

    pub fn deployment_mut(&mut self, id: &str) -> Option<&mut DeploymentRecord> {
        self.deployments.iter_mut().find(|d| d.id == id)
    }

    /// The group of its tasks.
    pub fn group(&self) -> String {
        service_group(&self.name)
    }

    /// The count the scheduler keeps: the desired count; none while draining; a daemon runs
    /// one task on this one host.
    pub fn target_count(&self) -> i32 {
        match (self.status, self.scheduling_strategy) {
            (ServiceStatus::Active, SchedulingStrategy::Replica) => self.desired_count,
            (ServiceStatus::Active, SchedulingStrategy::Daemon) => 1,
            _ => 0,
        }
    }

    pub fn minimum_healthy_percent(&self) -> i32 {
        self.deployment_configuration.minimum_healthy_percent.unwrap_or(100)
    }

    pub fn maximum_percent(&self) -> i32 {
        self.deployment_configuration.maximum_percent.unwrap_or(200)
    }

    pub fn circuit_breaker(&self) -> DeploymentCircuitBreaker {
        self.deployment_configuration.deployment_circuit_breaker.clone().unwrap_or_default()
    }

    /// The revision the service's settings describe now.
    pub fn revision(&self, now: f64) -> Revision {
        Revision {
            id: new_revision_id(),
            task_definition: self.task_definition.clone(),
            launch_type: self.launch_type.clone(),
            capacity_provider_strategy: self.capacity_provider_strategy.clone(),
            platform_version: self.platform_version.clone(),
            platform_family: self.platform_family.clone(),
            network_configuration: self.network_configuration.clone(),
            load_balancers: self.load_balancers.clone(),
            service_registries: self.service_registries.clone(),
            service_connect_configuration: self.service_connect_configuration.clone(),
            volume_configurations: self.volume_configurations.clone(),
            vpc_lattice_configurations: self.vpc_lattice_configurations.clone(),
            images: None,
            created_at: now,
        }
    }

    /// Adds an event (newest first, capped).
    pub fn push_event(&mut self, message: String, now: f64) {
        self.events.insert(0, Event { id: uuid::Uuid::new_v4().to_string(), created_at: now, message });
        self.events.truncate(MAX_EVENTS);
    }

    /// Reports `message` about `topic` unless the same was reported less than
    /// [`EVENT_REPEAT_SECS`] ago. Returns whether it was reported.
    pub fn report(&mut self, topic: &str, message: String, now: f64) -> bool {
        if let Some((last, at)) = self.reported.get(topic)
            && *last == message
            && now - at < EVENT_REPEAT_SECS
        {
            return false;
        }
        self.reported.insert(topic.to_owned(), (message.clone(), now));
        self.push_event(message, now);
        true
    }

    /// The cause of `topic` is over: the next report of it is news.
    pub fn clear_report(&mut self, topic: &str) {
        self.reported.remove(topic);
    }

    /// When `topic` was last reported.
    pub fn reported_at(&self, topic: &str) -> Option<f64> {
        self.reported.get(topic).map(|(_, at)| *at)
    }
}

/// The task group of a service's tasks.
pub fn service_group(name: &str) -> String {
    format!("service:{name}")
}

fn random_digits(n: usize) -> String {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    let more = uuid::Uuid::new_v4().into_bytes();
    let mut s: String = bytes.iter().chain(more.iter()).map(|b| char::from(b'0' + b % 10)).take(n).collect();
    // No leading zero, as ECS's ids are numbers.
    if s.starts_with('0') {
        s.replace_range(0..1, "7");
    }
    s
}

/// `ecs-svc/` and 19 digits, as ECS's deployment ids.
pub fn new_deployment_id() -> String {
    format!("ecs-svc/{}", random_digits(19))
}

/// The 19-digit id of a service revision.
pub fn new_revision_id() -> String {
    random_digits(19)
}

/// A service deployment's id: 21 characters of `[A-Za-z0-9_-]`, as ECS's.
pub fn new_service_deployment_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    let more = uuid::Uuid::new_v4().into_bytes();
    bytes.iter().chain(more.iter()).take(21).map(|b| char::from(ALPHABET[usize::from(*b) % 64])).collect()
}

/// The most tasks a deployment may run: `maximumPercent` of the desired count, rounded down.
pub fn max_tasks(desired: i32, maximum_percent: i32) -> i32 {
    (i64::from(desired) * i64::from(maximum_percent) / 100) as i32
}

/// The fewest healthy tasks a deployment keeps: `minimumHealthyPercent` of the desired count,
/// rounded up.
pub fn min_healthy(desired: i32, minimum_healthy_percent: i32) -> i32 {
    ((i64::from(desired) * i64::from(minimum_healthy_percent) + 99) / 100) as i32
}

/// How many failed tasks trip the circuit breaker: half the desired count, rounded up, at
/// least 3 and at most 200; a `thresholdConfiguration` changes the rule.
pub fn circuit_breaker_threshold(desired: i32, cb: &DeploymentCircuitBreaker) -> i32 {
    let percent = |p: i32| ((i64::from(desired) * i64::from(p) + 99) / 100) as i32;
    match cb.threshold_configuration.as_ref().map(|t| (t.r#type.as_deref(), t.value)) {
        Some((Some("COUNT"), v)) => v.max(1),
        Some((Some("UNBOUNDED_PERCENT"), v)) => percent(v).max(1),
        Some((Some("BOUNDED_PERCENT"), v)) => percent(v).clamp(3, 200),
        _ => percent(50).clamp(3, 200),
    }
}

/// The deployment configuration with ECS's defaults filled in: 200/100 for a replica
/// service, 100/0 for a daemon; the circuit breaker and alarms off; the rolling strategy.
pub fn deployment_configuration_defaults(
    given: Option<&DeploymentConfiguration>,
    strategy: SchedulingStrategy,
) -> DeploymentConfiguration {
    let (max, min) = match strategy {
        SchedulingStrategy::Replica => (200, 100),
        SchedulingStrategy::Daemon => (100, 0),
    };
    let mut c = given.cloned().unwrap_or_default();
    c.maximum_percent.get_or_insert(max);
    c.minimum_healthy_percent.get_or_insert(min);
    c.deployment_circuit_breaker.get_or_insert_with(DeploymentCircuitBreaker::default);
    c.alarms.get_or_insert_with(|| DeploymentAlarms { alarm_names: Some(vec![]), ..Default::default() });
    c.strategy.get_or_insert_with(|| "ROLLING".to_owned());
    c
}

/// An UpdateService's deployment configuration over the current one: what it gives
/// replaces, what it leaves out stays.
pub fn merge_deployment_configuration(
    current: &DeploymentConfiguration,
    given: &DeploymentConfiguration,
) -> DeploymentConfiguration {
    let mut c = current.clone();
    if given.maximum_percent.is_some() {
        c.maximum_percent = given.maximum_percent;
    }
    if given.minimum_healthy_percent.is_some() {
        c.minimum_healthy_percent = given.minimum_healthy_percent;
    }
    if given.deployment_circuit_breaker.is_some() {
        c.deployment_circuit_breaker = given.deployment_circuit_breaker.clone();
    }
    if let Some(a) = &given.alarms {
        let mut a = a.clone();
        a.alarm_names.get_or_insert_with(Vec::new);
        c.alarms = Some(a);
    }
    if given.strategy.is_some() {
        c.strategy = given.strategy.clone();
    }
    if given.bake_time_in_minutes.is_some() {
        c.bake_time_in_minutes = given.bake_time_in_minutes;
    }
    if given.early_success_criteria.is_some() {
        c.early_success_criteria = given.early_success_criteria.clone();
    }
    c
}

/// The network configuration as ECS echoes it: `assignPublicIp` defaults to DISABLED.
pub fn network_configuration_defaults(nc: Option<NetworkConfiguration>) -> Option<NetworkConfiguration> {
    nc.map(|mut n| {
        if let Some(a) = n.awsvpc_configuration.as_mut() {
            a.assign_public_ip.get_or_insert_with(|| "DISABLED".to_owned());
            a.security_groups.get_or_insert_with(Vec::new);
        }
        n
    })
}

/// Why ECS refuses a service request. The text is ECS's where known; [`ServiceError::kind`]
/// says which exception carries it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    #[error(
        "Service name '{0}' is invalid: up to 255 letters (uppercase and lowercase), numbers, underscores, and hyphens are allowed"
    )]
    InvalidName(String),
    #[error("TaskDefinition is required for a service using the ECS deployment controller.")]
    MissingTaskDefinition,
    #[error("DesiredCount is required for a service using the REPLICA scheduling strategy.")]
    MissingDesiredCount,
    #[error("The desired count must be greater than or equal to 0: it was {0}.")]
    NegativeDesiredCount(i32),
    #[error("Specifying both a launch type and capacity provider strategy is not supported.")]
    LaunchTypeAndCapacityProvider,
    #[error("The daemon scheduling strategy does not support a desired count for services.")]
    DaemonDesiredCount,
    #[error("The daemon scheduling strategy does not support placement strategies.")]
    DaemonPlacementStrategy,
    #[error("The daemon scheduling strategy does not support values above 100 for maximumPercent.")]
    DaemonMaximumPercent,
    #[error("The daemon scheduling strategy is not supported by the FARGATE launch type.")]
    DaemonFargate,
    #[error("minimumHealthyPercent must be between 0 and 100: it was {0}.")]
    MinimumHealthyPercent(i32),
    #[error(
        "maximumPercent must be at least 100 for a service using the REPLICA scheduling strategy: it was {0}."
    )]
    MaximumPercent(i32),
    #[error("healthCheckGracePeriodSeconds must be between 0 and 2147483647: it was {0}.")]
    GracePeriod(i32),
    #[error("{0} placement constraints were given: a service can have at most 10.")]
    TooManyConstraints(usize),
    #[error("{0} placement strategies were given: a service can have at most 5.")]
    TooManyStrategies(usize),
    #[error("A placement constraint of type distinctInstance cannot have an expression.")]
    DistinctInstanceExpression,
    #[error("A placement constraint of type memberOf needs an expression of at most 2000 characters.")]
    MemberOfExpression,
    #[error("Invalid placement strategy: {0}")]
    PlacementStrategy(String),
    #[error("Placement constraints are not supported by the FARGATE launch type.")]
    FargateConstraints,
    #[error(
        "ecsd runs services with the ECS deployment controller only; the {0} deployment controller (task sets) is not supported"
    )]
    DeploymentController(String),
    #[error("ecsd deploys services with the ROLLING strategy only; {0} is not supported")]
    DeploymentStrategy(String),
    #[error("The service cannot be stopped while it is scaled above 0.")]
    ScaledAboveZero,
}

/// Which ECS exception a [`ServiceError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceErrorKind {
    InvalidParameter,
    UnsupportedFeature,
}

impl ServiceError {
    pub fn kind(&self) -> ServiceErrorKind {
        match self {
            ServiceError::DeploymentController(_) | ServiceError::DeploymentStrategy(_) => {
                ServiceErrorKind::UnsupportedFeature
            }
            _ => ServiceErrorKind::InvalidParameter,
        }
    }
}

/// Checks placement constraints and strategies as ECS does; echoes them once valid.
pub fn validate_placement(
    constraints: &[PlacementConstraint],
    strategies: &[PlacementStrategy],
) -> Result<(), ServiceError> {
    if constraints.len() > 10 {
        return Err(ServiceError::TooManyConstraints(constraints.len()));
    }
    for c in constraints {
        let expression = c.expression.as_deref().unwrap_or_default();
        match c.r#type.as_deref() {
            Some("distinctInstance") if !expression.is_empty() => {
                return Err(ServiceError::DistinctInstanceExpression);
            }
            Some("memberOf") if expression.is_empty() || expression.chars().count() > 2000 => {
                return Err(ServiceError::MemberOfExpression);
            }
            _ => {}
        }
    }
    if strategies.len() > 5 {
        return Err(ServiceError::TooManyStrategies(strategies.len()));
    }
    for s in strategies {
        let field = s.field.as_deref();
        let ok = match s.r#type.as_deref() {
            Some("random") => field.is_none_or(str::is_empty),
            Some("spread") => field.is_some_and(|f| {
                ["instanceId", "host"].contains(&f)
                    || f.strip_prefix("attribute:").is_some_and(|a| !a.is_empty())
            }),
            Some("binpack") => {
                field.is_some_and(|f| ["cpu", "memory"].contains(&f.to_ascii_lowercase().as_str()))
            }
            _ => true,
        };
        if !ok {
            let t = s.r#type.as_deref().unwrap_or_default();
            let reason = match t {
                "random" => "a random placement strategy takes no field".to_owned(),
                "spread" => format!(
                    "the spread field '{}' is not valid: use instanceId, host or attribute:<name>",
                    field.unwrap_or_default()
                ),
                _ => format!(
                    "the binpack field '{}' is not valid: use cpu or memory",
                    field.unwrap_or_default()
                ),
            };
            return Err(ServiceError::PlacementStrategy(reason));
        }
    }
    Ok(())
}

/// Checks the percentages against the scheduling strategy.
pub fn validate_deployment_configuration(
    c: &DeploymentConfiguration,
    strategy: SchedulingStrategy,
) -> Result<(), ServiceError> {
    let min = c.minimum_healthy_percent.unwrap_or(100);
    let max = c.maximum_percent.unwrap_or(200);
    if !(0..=100).contains(&min) {
        return Err(ServiceError::MinimumHealthyPercent(min));
    }
    match strategy {
        SchedulingStrategy::Daemon if max > 100 => return Err(ServiceError::DaemonMaximumPercent),
        SchedulingStrategy::Replica if max < 100 => return Err(ServiceError::MaximumPercent(max)),
        _ => {}
    }
    if let Some(s) = c.strategy.as_deref().filter(|s| *s != "ROLLING") {
        return Err(ServiceError::DeploymentStrategy(s.to_owned()));
    }
    Ok(())
}

/// What an UpdateService changes, resolved and checked by the caller (`None`: unchanged).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceUpdate {
    pub desired_count: Option<i32>,
    /// The task definition's full ARN.
    pub task_definition: Option<String>,
    pub capacity_provider_strategy: Option<Vec<CapacityProviderStrategyItem>>,
    pub deployment_configuration: Option<DeploymentConfiguration>,
    pub availability_zone_rebalancing: Option<String>,
    pub network_configuration: Option<NetworkConfiguration>,
    pub placement_constraints: Option<Vec<PlacementConstraint>>,
    pub placement_strategy: Option<Vec<PlacementStrategy>>,
    pub platform_version: Option<String>,
    pub force_new_deployment: bool,
    pub health_check_grace_period_seconds: Option<i32>,
    pub enable_execute_command: Option<bool>,
    pub enable_ecs_managed_tags: Option<bool>,
    pub load_balancers: Option<Vec<LoadBalancer>>,
    pub propagate_tags: Option<String>,
    pub service_registries: Option<Vec<ServiceRegistry>>,
    pub service_connect_configuration: Option<ServiceConnectConfiguration>,
    pub volume_configurations: Option<Vec<ServiceVolumeConfiguration>>,
    pub vpc_lattice_configurations: Option<Vec<VpcLatticeConfiguration>>,
}

impl ServiceUpdate {
    /// Whether applying it to `s` starts a new deployment: a different task definition,
    /// network configuration, platform version, load balancers, service registries, Service
    /// Connect, VPC Lattice or volume configuration, or `forceNewDeployment`. Counts,
    /// deployment configuration, placement, grace period, ECS Exec and tag settings apply in
    /// place (to tasks launched from now on).
    pub fn starts_deployment(&self, s: &ServiceRecord) -> bool {
        fn differs<T: PartialEq>(new: &Option<T>, old: &T) -> bool {
            new.as_ref().is_some_and(|n| n != old)
        }
        self.force_new_deployment
            || differs(&self.task_definition, &s.task_definition)
            || differs(&self.network_configuration, &s.network_configuration.clone().unwrap_or_default())
            || differs(&self.platform_version, &s.platform_version.clone().unwrap_or_default())
            || differs(&self.load_balancers, &s.load_balancers)
            || differs(&self.service_registries, &s.service_registries)
            || differs(
                &self.service_connect_configuration,
                &s.service_connect_configuration.clone().unwrap_or_default(),
            )
            || differs(
                &self.vpc_lattice_configurations,
                &s.vpc_lattice_configurations.clone().unwrap_or_default(),
            )
            || differs(&self.volume_configurations, &s.volume_configurations.clone().unwrap_or_default())
    }

    /// Applies the settings to `s` (not the deployment itself: see [`start_deployment`]).
    pub fn apply_settings(&self, s: &mut ServiceRecord) {
        if let Some(n) = self.desired_count {
            s.desired_count = n;
        }
        if let Some(td) = &self.task_definition {
            s.task_definition = td.clone();
        }
        if let Some(c) = &self.capacity_provider_strategy {
            s.capacity_provider_strategy = Some(c.clone());
            if let Some(p) = s.primary_mut() {
                p.revision.capacity_provider_strategy = Some(c.clone());
            }
        }
        if let Some(c) = &self.deployment_configuration {
            s.deployment_configuration = merge_deployment_configuration(&s.deployment_configuration, c);
        }
        if let Some(v) = &self.availability_zone_rebalancing {
            s.availability_zone_rebalancing = v.clone();
        }
        if let Some(n) = &self.network_configuration {
            s.network_configuration = Some(n.clone());
        }
        if let Some(c) = &self.placement_constraints {
            s.placement_constraints = c.clone();
        }
        if let Some(p) = &self.placement_strategy {
            s.placement_strategy = p.clone();
        }
        if let Some(v) = &self.platform_version {
            s.platform_version = Some(v.clone());
        }
        if let Some(g) = self.health_check_grace_period_seconds {
            s.health_check_grace_period_seconds = g;
        }
        if let Some(e) = self.enable_execute_command {
            s.enable_execute_command = e;
        }
        if let Some(e) = self.enable_ecs_managed_tags {
            s.enable_ecs_managed_tags = e;
        }
        if let Some(l) = &self.load_balancers {
            s.load_balancers = l.clone();
        }
        if let Some(p) = &self.propagate_tags {
            s.propagate_tags = p.clone();
        }
        if let Some(r) = &self.service_registries {
            s.service_registries = r.clone();
        }
        if let Some(c) = &self.service_connect_configuration {
            s.service_connect_configuration = Some(c.clone());
        }
        if let Some(v) = &self.volume_configurations {
            s.volume_configurations = Some(v.clone());
        }
        if let Some(v) = &self.vpc_lattice_configurations {
            s.vpc_lattice_configurations = Some(v.clone());
        }
    }
}

/// Starts a deployment of `revision`: the current PRIMARY becomes ACTIVE (keeping its rollout
/// state), the new one goes first, IN_PROGRESS. Without `rollback_of` it carries a new
/// service deployment (from `sources`, the revisions running now), and an unfinished one it
/// supersedes ends as STOPPED; a rollback carries the service deployment it rolls back.
/// Returns the new deployment's id.
pub fn start_deployment(
    s: &mut ServiceRecord,
    revision: Revision,
    rollback_of: Option<String>,
    sources: Vec<RevisionCount>,
    now: f64,
) -> String {
    for d in &mut s.deployments {
        if d.status == DeploymentStatus::Primary {
            d.status = DeploymentStatus::Active;
            d.updated_at = now;
        }
    }
    let sd = match rollback_of {
        Some(sd) => sd,
        None => {
            for open in &mut s.open_deployments {
                if !open.status.is_finished() {
                    open.status = ServiceDeploymentStatus::Stopped;
                    open.status_reason = Some(SUPERSEDED_REASON.to_owned());
                    open.stopped_at = Some(now);
                    open.finished_at = Some(now);
                    open.updated_at = now;
                }
            }
            let id = new_service_deployment_id();
            let target = revision.id.clone();
            let record = new_service_deployment(s, &id, &target, sources, now);
            s.open_deployments.push(record);
            id
        }
    };
    let d = DeploymentRecord::new(revision, sd.clone(), now);
    let id = d.id.clone();
    s.task_definition = d.revision.task_definition.clone();
    s.deployments.insert(0, d);
    s.current_service_deployment = sd;
    // A new deployment starts with a clean slate: no throttle, no stale placement news.
    s.backoff = Backoff::default();
    for topic in ["throttle", "stall", "place", "steady"] {
        s.clear_report(topic);
    }
    s.updated_at = now;
    id
}

/// Why a service deployment ended when a newer one replaced it before it finished.
pub const SUPERSEDED_REASON: &str = "Service deployment stopped: a newer service deployment replaced it.";

/// A service deployment for a new deployment of revision `target`, with the revisions that
/// run now.
pub fn new_service_deployment(
    s: &ServiceRecord,
    id: &str,
    target: &str,
    sources: Vec<RevisionCount>,
    now: f64,
) -> ServiceDeploymentRecord {
    let cb = s.circuit_breaker();
    let alarms = s.deployment_configuration.alarms.as_ref().is_some_and(|a| a.enable);
    ServiceDeploymentRecord {
        id: id.to_owned(),
        cluster: s.cluster.clone(),
        service: s.name.clone(),
        incarnation: s.incarnation.clone(),
        status: ServiceDeploymentStatus::InProgress,
        status_reason: None,
        created_at: now,
        started_at: Some(now),
        finished_at: None,
        stopped_at: None,
        updated_at: now,
        sources,
        target: RevisionCount {
            revision: target.to_owned(),
            requested: s.target_count(),
            ..Default::default()
        },
        deployment_configuration: s.deployment_configuration.clone(),
        rollback: None,
        circuit_breaker: if cb.enable { MonitorStatus::Monitoring } else { MonitorStatus::Disabled },
        failure_count: 0,
        threshold: circuit_breaker_threshold(s.target_count(), &cb),
        alarms: if alarms { MonitorStatus::Monitoring } else { MonitorStatus::Disabled },
    }
}

impl ServiceRecord {
    pub fn open_deployment_mut(&mut self, id: &str) -> Option<&mut ServiceDeploymentRecord> {
        self.open_deployments.iter_mut().find(|d| d.id == id)
    }
}

/// A service's tasks counted as ECS counts them, per deployment and in all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub running: i32,
    pub pending: i32,
    /// By deployment id: (running, pending, live and not asked to stop).
    pub by_deployment: BTreeMap<String, (i32, i32, i32)>,
}

impl Counts {
    /// `runningCount` counts tasks whose last status is RUNNING, `pendingCount` those not yet
    /// RUNNING (PROVISIONING, PENDING, ACTIVATING).
    pub fn of<'a>(tasks: impl IntoIterator<Item = &'a TaskRecord>) -> Counts {
        let mut c = Counts::default();
        for t in tasks {
            let d = c.by_deployment.entry(t.started_by.clone().unwrap_or_default()).or_default();
            if t.last == TaskStatus::Running {
                c.running += 1;
                d.0 += 1;
            } else if t.last.is_pending() {
                c.pending += 1;
                d.1 += 1;
            }
            if t.last != TaskStatus::Stopped && t.desired == TaskStatus::Running {
                d.2 += 1;
            }
        }
        c
    }

    pub fn of_deployment(&self, id: &str) -> (i32, i32, i32) {
        self.by_deployment.get(id).copied().unwrap_or_default()
    }

    /// The desired count `deployments[]` shows: the service's for the PRIMARY, what still
    /// runs for an older one.
    pub fn desired_of(&self, d: &DeploymentRecord, service_desired: i32) -> i32 {
        match d.status {
            DeploymentStatus::Primary => service_desired,
            DeploymentStatus::Active => self.of_deployment(&d.id).2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::shapes::ThresholdConfiguration;

    #[test]
    fn minimum_rounds_up_and_maximum_rounds_down() {
        // ECS's own examples: 75 % of 2 is 2; 125 % of 3 is 3.
        let cases = [
            // (desired, min%, max%, minHealthy, maxTasks)
            (2, 75, 125, 2, 2),
            (3, 100, 125, 3, 3),
            (4, 100, 200, 4, 8),
            (4, 50, 100, 2, 4),
            (3, 50, 100, 2, 3),
            (1, 0, 100, 0, 1),
            (10, 100, 200, 10, 20),
            (0, 100, 200, 0, 0),
            (5, 33, 150, 2, 7),
        ];
        for (d, min, max, want_min, want_max) in cases {
            assert_eq!(min_healthy(d, min), want_min, "minHealthy of {d} at {min}%");
            assert_eq!(max_tasks(d, max), want_max, "maxTasks of {d} at {max}%");
        }
    }

    #[test]
    fn the_circuit_breaker_threshold_is_half_the_desired_count_within_3_and_200() {
        let cb = DeploymentCircuitBreaker { enable: true, rollback: true, ..Default::default() };
        for (desired, want) in [(0, 3), (1, 3), (3, 3), (6, 3), (7, 4), (25, 13), (399, 200), (1000, 200)] {
            assert_eq!(circuit_breaker_threshold(desired, &cb), want, "desired {desired}");
        }
        let count = DeploymentCircuitBreaker {
            threshold_configuration: Some(ThresholdConfiguration { r#type: Some("COUNT".into()), value: 1 }),
            ..cb.clone()
        };
        assert_eq!(circuit_breaker_threshold(10, &count), 1);
        let unbounded = DeploymentCircuitBreaker {
            threshold_configuration: Some(ThresholdConfiguration {
                r#type: Some("UNBOUNDED_PERCENT".into()),
                value: 10,
            }),
            ..cb
        };
        assert_eq!(circuit_breaker_threshold(4, &unbounded), 1);
    }

    #[test]
    fn the_start_up_back_off_grows_to_15_minutes() {
        let delays: Vec<f64> = (0..12).map(Backoff::delay).collect();
        assert_eq!(&delays[..6], &[0.0, 0.0, 10.0, 20.0, 40.0, 80.0]);
        assert!(delays.windows(2).all(|w| w[0] <= w[1]), "{delays:?}");
        assert_eq!(Backoff::delay(11), BACKOFF_CAP_SECS);
        assert_eq!(Backoff::delay(u32::MAX), BACKOFF_CAP_SECS);
    }

    #[test]
    fn ids_look_like_ecs_ids() {
        let id = new_deployment_id();
        let digits = id.strip_prefix("ecs-svc/").unwrap();
        assert_eq!(digits.len(), 19);
        assert!(digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0'), "{id}");
        let sd = new_service_deployment_id();
        assert_eq!(sd.len(), 21);
        assert!(sd.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'), "{sd}");
        assert_ne!(new_revision_id(), new_revision_id());
    }

    #[test]
    fn defaults_depend_on_the_scheduling_strategy() {
        let r = deployment_configuration_defaults(None, SchedulingStrategy::Replica);
        assert_eq!((r.maximum_percent, r.minimum_healthy_percent), (Some(200), Some(100)));
        assert_eq!(r.deployment_circuit_breaker, Some(DeploymentCircuitBreaker::default()));
        assert_eq!(r.alarms.unwrap().alarm_names, Some(vec![]));
        let d = deployment_configuration_defaults(None, SchedulingStrategy::Daemon);
        assert_eq!((d.maximum_percent, d.minimum_healthy_percent), (Some(100), Some(0)));
        let given = DeploymentConfiguration { minimum_healthy_percent: Some(50), ..Default::default() };
        let g = deployment_configuration_defaults(Some(&given), SchedulingStrategy::Replica);
        assert_eq!((g.maximum_percent, g.minimum_healthy_percent), (Some(200), Some(50)));
        let merged = merge_deployment_configuration(
            &g,
            &DeploymentConfiguration { maximum_percent: Some(150), ..Default::default() },
        );
        assert_eq!((merged.maximum_percent, merged.minimum_healthy_percent), (Some(150), Some(50)));
    }

    #[test]
    fn percentages_are_checked_against_the_strategy() {
        let c = |min, max| DeploymentConfiguration {
            minimum_healthy_percent: Some(min),
            maximum_percent: Some(max),
            ..Default::default()
        };
        assert!(validate_deployment_configuration(&c(100, 100), SchedulingStrategy::Replica).is_ok());
        assert!(validate_deployment_configuration(&c(0, 100), SchedulingStrategy::Replica).is_ok());
        assert_eq!(
            validate_deployment_configuration(&c(101, 200), SchedulingStrategy::Replica),
            Err(ServiceError::MinimumHealthyPercent(101))
        );
        assert_eq!(
            validate_deployment_configuration(&c(50, 90), SchedulingStrategy::Replica),
            Err(ServiceError::MaximumPercent(90))
        );
        assert_eq!(
            validate_deployment_configuration(&c(0, 200), SchedulingStrategy::Daemon),
            Err(ServiceError::DaemonMaximumPercent)
        );
        let blue_green =
            DeploymentConfiguration { strategy: Some("BLUE_GREEN".into()), ..Default::default() };
        assert_eq!(
            validate_deployment_configuration(&blue_green, SchedulingStrategy::Replica).unwrap_err().kind(),
            ServiceErrorKind::UnsupportedFeature
        );
    }

    #[test]
    fn placement_shapes_are_checked() {
        let pc = |t: &str, e: Option<&str>| PlacementConstraint {
            r#type: Some(t.into()),
            expression: e.map(str::to_owned),
        };
        let ps = |t: &str, f: Option<&str>| PlacementStrategy {
            r#type: Some(t.into()),
            field: f.map(str::to_owned),
        };
        assert!(validate_placement(&[pc("distinctInstance", None)], &[]).is_ok());
        assert_eq!(
            validate_placement(&[pc("distinctInstance", Some("x"))], &[]),
            Err(ServiceError::DistinctInstanceExpression)
        );
        assert_eq!(validate_placement(&[pc("memberOf", None)], &[]), Err(ServiceError::MemberOfExpression));
        assert!(validate_placement(&[pc("memberOf", Some("attribute:ecs.os-type == linux"))], &[]).is_ok());
        for ok in [
            ps("random", None),
            ps("spread", Some("attribute:ecs.availability-zone")),
            ps("binpack", Some("MEMORY")),
        ] {
            assert!(validate_placement(&[], std::slice::from_ref(&ok)).is_ok(), "{ok:?}");
        }
        for bad in [ps("random", Some("cpu")), ps("spread", Some("cpu")), ps("binpack", Some("disk"))] {
            assert!(matches!(validate_placement(&[], &[bad]), Err(ServiceError::PlacementStrategy(_))));
        }
        let many: Vec<PlacementConstraint> = (0..11).map(|_| pc("distinctInstance", None)).collect();
        assert_eq!(validate_placement(&many, &[]), Err(ServiceError::TooManyConstraints(11)));
    }

    fn service() -> ServiceRecord {
        serde_json::from_value(serde_json::json!({
            "name": "web", "cluster": "default", "arn": "arn:svc", "incarnation": "i1",
            "status": "ACTIVE", "schedulingStrategy": "REPLICA", "desiredCount": 2,
            "taskDefinition": "arn:td:1", "deploymentConfiguration": {},
            "healthCheckGracePeriodSeconds": 0, "deploymentController": "ECS",
            "createdAt": 1.0, "createdBy": "me", "enableEcsManagedTags": false,
            "propagateTags": "NONE", "enableExecuteCommand": false,
            "availabilityZoneRebalancing": "ENABLED", "deployments": [],
            "currentServiceDeployment": "sd", "updatedAt": 1.0
        }))
        .unwrap()
    }

    #[test]
    fn which_updates_start_a_deployment() {
        let s = service();
        let starts = |u: ServiceUpdate| u.starts_deployment(&s);
        assert!(!starts(ServiceUpdate::default()));
        assert!(!starts(ServiceUpdate { desired_count: Some(5), ..Default::default() }));
        assert!(!starts(ServiceUpdate {
            deployment_configuration: Some(DeploymentConfiguration::default()),
            placement_constraints: Some(vec![]),
            health_check_grace_period_seconds: Some(30),
            enable_execute_command: Some(true),
            enable_ecs_managed_tags: Some(true),
            propagate_tags: Some("SERVICE".into()),
            capacity_provider_strategy: Some(vec![]),
            ..Default::default()
        }));
        // The same task definition again is no change.
        assert!(!starts(ServiceUpdate { task_definition: Some("arn:td:1".into()), ..Default::default() }));
        assert!(starts(ServiceUpdate { task_definition: Some("arn:td:2".into()), ..Default::default() }));
        assert!(starts(ServiceUpdate { force_new_deployment: true, ..Default::default() }));
        assert!(starts(ServiceUpdate {
            network_configuration: Some(NetworkConfiguration {
                awsvpc_configuration: Some(Default::default())
            }),
            ..Default::default()
        }));
        assert!(starts(ServiceUpdate { platform_version: Some("1.4.0".into()), ..Default::default() }));
        assert!(starts(ServiceUpdate {
            load_balancers: Some(vec![LoadBalancer::default()]),
            ..Default::default()
        }));
        assert!(!starts(ServiceUpdate { load_balancers: Some(vec![]), ..Default::default() }));
        assert!(starts(ServiceUpdate {
            service_registries: Some(vec![ServiceRegistry::default()]),
            ..Default::default()
        }));
    }

    #[test]
    fn a_new_deployment_goes_first_and_the_old_primary_keeps_its_rollout_state() {
        let mut s = service();
        let rev = s.revision(1.0);
        start_deployment(&mut s, rev, None, vec![], 1.0);
        s.deployments[0].rollout_state = RolloutState::Completed;
        let first = s.deployments[0].id.clone();
        let mut rev2 = s.revision(2.0);
        rev2.task_definition = "arn:td:2".into();
        let first_sd = s.current_service_deployment.clone();
        let id = start_deployment(&mut s, rev2, None, vec![], 2.0);
        assert_eq!(s.deployments[0].id, id);
        assert_eq!(s.deployments.len(), 2);
        assert_eq!(s.deployments[0].status, DeploymentStatus::Primary);
        assert_eq!(s.deployments[0].rollout_state, RolloutState::InProgress);
        assert_eq!(s.deployments[0].rollout_state_reason, in_progress_reason(&s.deployments[0].id));
        assert_eq!(
            (s.deployments[1].id.as_str(), s.deployments[1].status),
            (first.as_str(), DeploymentStatus::Active)
        );
        assert_eq!(s.deployments[1].rollout_state, RolloutState::Completed);
        assert_eq!(s.task_definition, "arn:td:2");
        assert_eq!(s.current_service_deployment, s.deployments[0].service_deployment);
        // The first service deployment had not finished: the second one ends it.
        let first = s.open_deployments.iter().find(|d| d.id == first_sd).unwrap();
        assert_eq!(first.status, ServiceDeploymentStatus::Stopped);
        assert_eq!(s.open_deployments.last().unwrap().status, ServiceDeploymentStatus::InProgress);
    }

    #[test]
    fn events_are_newest_first_capped_and_repeats_wait() {
        let mut s = service();
        for i in 0..105 {
            s.push_event(format!("e{i}"), f64::from(i));
        }
        assert_eq!(s.events.len(), MAX_EVENTS);
        assert_eq!(s.events[0].message, "e104");
        assert!(uuid::Uuid::parse_str(&s.events[0].id).is_ok());
        assert!(s.report("steady", "steady".into(), 1000.0));
        assert!(!s.report("steady", "steady".into(), 1000.0 + EVENT_REPEAT_SECS - 1.0));
        assert!(s.report("steady", "steady".into(), 1000.0 + EVENT_REPEAT_SECS));
        assert!(s.report("steady", "other".into(), 1000.0 + EVENT_REPEAT_SECS + 1.0), "a new cause is news");
        s.clear_report("steady");
        assert!(s.report("steady", "other".into(), 1000.0 + EVENT_REPEAT_SECS + 2.0));
    }
}
