//! Typed configuration: command-line flags over environment variables over defaults.
//!
//! The environment is read only here, through an injectable lookup, so tests build a
//! [`Config`] from a map.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::aws::{Keys, OwnIdentity, Service};
use crate::endpoints::credentials::{CredentialMode, CredentialSettings};
use crate::model::arn::Identity;

pub mod ecs_file;

const DEFAULT_LISTEN: &str = "127.0.0.1:8000";
const DEFAULT_REGION: &str = "us-east-1";
const DEFAULT_ACCOUNT: &str = "000000000000";

/// The variables that name each AWS service's endpoint, first set wins: the SDKs' standard
/// `AWS_ENDPOINT_URL_<SERVICE>`, then the names ecsd and local-ecs-api users already set.
/// `AWS_ENDPOINT_URL` alone is deliberately not read: users point it at ecsd itself to
/// drive the ECS API, and ecsd must not send its own AWS calls there.
const AWS_ENDPOINT_VARIABLES: [(Service, &[&str]); 8] = [
    (Service::Sts, &["AWS_ENDPOINT_URL_STS", "STS_ENDPOINT"]),
    (Service::Iam, &["AWS_ENDPOINT_URL_IAM", "IAM_ENDPOINT"]),
    (
        Service::SecretsManager,
        &[
            "AWS_ENDPOINT_URL_SECRETS_MANAGER",
            "AWS_ENDPOINT_URL_SECRETSMANAGER",
            "SECRET_MANAGER_ENDPOINT_URL",
        ],
    ),
    (Service::Ssm, &["AWS_ENDPOINT_URL_SSM", "SSM_ENDPOINT_URL"]),
    (Service::S3, &["AWS_ENDPOINT_URL_S3"]),
    (Service::Ecr, &["AWS_ENDPOINT_URL_ECR"]),
    (Service::Logs, &["AWS_ENDPOINT_URL_CLOUDWATCH_LOGS", "AWS_ENDPOINT_URL_LOGS"]),
    (Service::Ecs, &["ECS_ENDPOINT_URL"]),
];

/// ecsd: the Amazon ECS API on this host, running ECS tasks on containerd.
///
/// Point the aws CLI, boto3 or any AWS SDK at it with `--endpoint-url http://127.0.0.1:8000`.
#[derive(Debug, Parser)]
#[command(name = "ecsd", version = crate::VERSION, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: serve the ECS API until SIGTERM or SIGINT.
    Serve(ServeArgs),
    /// Print a task's container logs (stdout and stderr) from the data dir.
    Logs(LogsArgs),
    /// Run a command in a task's container over ECS Exec, as `aws ecs execute-command`
    /// does but without the Session Manager plugin; exits with the command's exit code.
    Exec(ExecArgs),
    /// Work with images in containerd.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Show a cluster's services: counts per deployment and the last event.
    Services(ServicesArgs),
    /// Check this host: container runtimes, root or not, cgroups, OCI runtimes, networking,
    /// and what each means for running tasks. Exits 1 when ecsd cannot run tasks here.
    Doctor(DoctorArgs),
    /// Remove what an ecsd that did not stop cleanly left on the host: its firewall rules
    /// (restoring route_localnet). systemd's unit runs it as ExecStopPost.
    Cleanup(CleanupArgs),
    /// Render a task definition from a template (file or image label), environment overlays
    /// and dynamic values, resolve roles and secrets, register it and roll the service out.
    Deploy(Box<crate::cli::deploy::DeployArgs>),
    /// The logging driver containerd's shim runs for each container (not for people).
    #[command(hide = true)]
    LogDriver(crate::runtime::logs::LogDriverArgs),
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Import an OCI image layout tar or a `docker save` tar, or an image of the host's
    /// Podman (--from-podman), into the runtime of ecsd (its containerd namespace, or its
    /// Podman service's store), ready for tasks.
    Import(ImportArgs),
    /// Pull an image from its registry into the runtime of ecsd, ready for tasks, with the
    /// credentials a task would use (docker config, ECS_ENGINE_AUTH_DATA, ECR with ecsd's own
    /// AWS identity).
    Pull(PullArgs),
    /// List the images of ecsd's runtime (its containerd namespace, or its Podman store).
    Ls(LsArgs),
    /// Remove images (refused while a container uses one).
    Rm(RmArgs),
}

/// Where an image subcommand finds the runtime `ecsd serve` runs tasks on: containerd, or
/// ecsd's Podman service.
#[derive(Debug, Clone, Default, Args)]
pub struct RuntimeArgs {
    /// containerd's socket (env ECSD_CONTAINERD_ADDRESS); when nothing answers there, the
    /// embedded containerd of the data dir is used. [default: /run/containerd/containerd.sock]
    #[arg(long, value_name = "PATH")]
    pub containerd_address: Option<PathBuf>,
    /// containerd namespace (env ECSD_NAMESPACE). [default: ecs]
    #[arg(long, value_name = "NAME")]
    pub namespace: Option<String>,
    /// ecsd's data dir (env ECSD_DATA_DIR), to find an embedded containerd or ecsd's Podman
    /// service.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The runtime `ecsd serve` uses (env ECSD_RUNTIME): containerd, podman, or auto
    /// (containerd when one answers, else ecsd's Podman service when it answers). [default: auto]
    #[arg(long, value_enum, value_name = "RUNTIME")]
    pub runtime: Option<RuntimeChoice>,
    /// With the Podman runtime: the Podman service `ecsd serve` was given (env
    /// ECSD_PODMAN_SOCKET). [default: the data dir's own service]
    #[arg(long, value_name = "PATH")]
    pub podman_socket: Option<PathBuf>,
    /// The images of this user's rootless ecsd (env ECSD_ROOTLESS; as a user other than root,
    /// the default when a rootless ecsd of the user runs).
    #[arg(long)]
    pub rootless: bool,
}

/// Arguments of `ecsd image pull`.
#[derive(Debug, Clone, Args)]
pub struct PullArgs {
    /// The image, as a task definition names it (`busybox`, `127.0.0.1:5000/app:1`).
    pub reference: String,
    /// The platform to pull, `linux/amd64` or `linux/arm64[/v8]` [default: this host's];
    /// only this host's is unpacked.
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<String>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Arguments of `ecsd image ls`.
#[derive(Debug, Clone, Args)]
pub struct LsArgs {
    /// `table` or `json`.
    #[arg(long, short, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Arguments of `ecsd image rm`.
#[derive(Debug, Clone, Args)]
pub struct RmArgs {
    /// The images to remove.
    #[arg(required = true)]
    pub references: Vec<String>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// How a listing command prints: a table for people, or JSON for scripts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    #[default]
    Table,
    Json,
}

/// Arguments of `ecsd doctor`.
#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    /// containerd's socket, as `ecsd serve` would use it (env ECSD_CONTAINERD_ADDRESS).
    /// [default: /run/containerd/containerd.sock]
    #[arg(long, value_name = "PATH")]
    pub containerd_address: Option<PathBuf>,
    /// table (facts, then what they mean), or json.
    #[arg(long, short, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Arguments of `ecsd logs`.
#[derive(Debug, Clone, Args)]
pub struct LogsArgs {
    /// The task: its id or ARN.
    pub task: String,
    /// The container's name; may be left out when the task has one container.
    pub container: Option<String>,
    /// Keep printing new lines as they are written.
    #[arg(long, short)]
    pub follow: bool,
    /// ecsd's data dir (env ECSD_DATA_DIR). [default: as for `ecsd serve`]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// Arguments of `ecsd exec`.
#[derive(Debug, Clone, Default, Args)]
#[command(after_help = "\
Examples:
  ecsd exec --task 0123abcd --interactive -- /bin/sh
  ecsd exec --service web -- ls -l /srv
  ecsd exec --service web --pipe 'sh' < script.sh
  ecsd exec --task 0123abcd --pipe 'md5sum' < image.bin
  ecsd exec --task 0123abcd --pipe 'rails runner -' -i 'puts 1'

A terminal is used when stdin is one, or with --interactive; without one, stdin and stdout
are passed byte for byte and stderr apart. The exit code is the command's (255 when ecsd exec
itself fails). The endpoint is --endpoint-url, else AWS_ENDPOINT_URL_ECS, AWS_ENDPOINT_URL,
the profile's endpoint_url, else http://127.0.0.1:8000; region and credentials are read as
the aws CLI reads them.")]
pub struct ExecArgs {
    /// The ECS endpoint: ecsd's API.
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// The cluster (name or ARN). [default: default]
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
    /// The task (id or ARN).
    #[arg(long, value_name = "ID", required_unless_present = "service", conflicts_with = "service")]
    pub task: Option<String>,
    /// A service whose first running task to use.
    #[arg(long, value_name = "NAME")]
    pub service: Option<String>,
    /// The container. [default: the first of the task definition]
    #[arg(long, value_name = "NAME")]
    pub container: Option<String>,
    /// Use a terminal even when stdin is not one.
    #[arg(long)]
    pub interactive: bool,
    /// Run CMD (a command string, split as a shell splits words) with this side's stdin as
    /// its stdin, byte for byte.
    #[arg(long, value_name = "CMD", conflicts_with = "command")]
    pub pipe: Option<String>,
    /// Send TEXT as the command's stdin instead of this side's stdin.
    #[arg(short = 'i', long = "input", value_name = "TEXT")]
    pub input: Option<String>,
    /// The region. [default: as the aws CLI finds it]
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    /// The profile of ~/.aws/config and ~/.aws/credentials.
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// The command and its arguments. [default: /bin/sh]
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Arguments of `ecsd services`.
#[derive(Debug, Clone, Default, Args)]
#[command(after_help = "\
Examples:
  ecsd services                      every ACTIVE service of the default cluster
  ecsd services --cluster prod web   one service
  ecsd services --output json        as DescribeServices answers

The endpoint is --endpoint-url, else AWS_ENDPOINT_URL_ECS, else AWS_ENDPOINT_URL, else
http://127.0.0.1:8000.")]
pub struct ServicesArgs {
    /// Only these services (names or ARNs). [default: every ACTIVE service]
    pub services: Vec<String>,
    /// The cluster (name or ARN). [default: default]
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
    /// The ECS endpoint: ecsd's API.
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// table, or json (DescribeServices' answer).
    #[arg(long, short, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

impl ServicesArgs {
    /// The endpoint to ask: the flag, else the variables the AWS SDKs read, else ecsd's
    /// default address.
    pub fn endpoint(&self, env: &dyn Fn(&str) -> Option<String>) -> String {
        self.endpoint_url
            .clone()
            .or_else(|| env("AWS_ENDPOINT_URL_ECS").filter(|v| !v.is_empty()))
            .or_else(|| env("AWS_ENDPOINT_URL").filter(|v| !v.is_empty()))
            .unwrap_or_else(|| format!("http://{DEFAULT_LISTEN}"))
    }
}

/// Arguments of `ecsd cleanup`.
#[derive(Debug, Clone, Default, Args)]
pub struct CleanupArgs {
    /// The containerd namespace of the ecsd whose leftovers to remove (env ECSD_NAMESPACE).
    /// [default: ecs]
    #[arg(long, value_name = "NAME")]
    pub namespace: Option<String>,
}

/// Arguments of `ecsd image import`.
#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["file", "from_podman"])))]
pub struct ImportArgs {
    /// The image tar (OCI image layout or `docker save` format).
    pub file: Option<PathBuf>,
    /// Copy image REF from the host's Podman store into ecsd's containerd instead (as `podman
    /// images` names it, or its id); it keeps the name REF and, when Podman pulled it, its
    /// registry digest.
    /// The podman binary is ECSD_PODMAN's, else the one on PATH.
    #[arg(long, value_name = "REF")]
    pub from_podman: Option<String>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Flags of `ecsd serve`. Each has an environment variable; a flag wins over it.
#[derive(Debug, Default, Clone, Args)]
#[command(after_help = "\
Environment:
  ECSD_LISTEN              address to listen on (as --listen)
  ECSD_DATA_DIR            state directory (as --data-dir)
  AWS_REGION               region in ARNs (else AWS_DEFAULT_REGION, else us-east-1)
  ECSD_ACCOUNT_ID          12-digit account id in ARNs (default 000000000000)
  ECSD_CONTAINERD_ADDRESS  containerd socket (as --containerd-address)
  ECSD_NAMESPACE           containerd namespace (as --namespace)
  ECSD_RUNTIME             auto, containerd or podman (as --runtime)
  ECSD_ROOTLESS            1 or true: run as an unprivileged user (as --rootless)
  ECSD_PODMAN_SOCKET       a running Podman service's socket (as --podman-socket)
  ECS_CONTAINER_STOP_TIMEOUT   SIGKILL this long after the stop signal (default 30s)
  ECS_CONTAINER_START_TIMEOUT  how long a container waits for its dependencies (default 3m)
  ECSD_TASK_RETENTION      how long STOPPED tasks stay visible (default 1h)
  ECS_ENDPOINT_URL         upstream ECS: task definitions ecsd does not have are fetched there,
                           and ECS operations ecsd does not implement are forwarded there
  ECS_ENDPOINT_AWS_REGION  the upstream's region for names that are not ARNs (default AWS_REGION)
  ECSD_FORWARD_SIGNATURE   aws (re-sign forwarded calls with ecsd's own credentials, default)
                           or passthrough (keep the caller's signature)
  ECS_EXTERNAL_NETWORKS    Podman networks (comma-separated) every awsvpc and bridge-mode
                           sandbox also joins (eth1, ...); ECSD_PODMAN: the podman to ask
  ECSD_SERVICE_STABILIZATION  how long a service task without health checks must run
                           before it counts as healthy in deployments (default 40s, as ECS)
  ECSD_SERVICE_RETENTION   how long deleted (INACTIVE) services stay describable (default 1h)
  ECSD_LOG_DRIVER          the ecsd binary containerd's shim runs to capture container output
                           (default: this binary)
  RUST_LOG, ECSD_LOG       log filter, e.g. info or ecsd=debug (default info)
  ECS_TASK_METADATA_RPS_LIMIT  each task's metadata/credentials requests per second,
                           steady,burst (default 40,60)
  AWS_ENDPOINT_URL_STS, STS_ENDPOINT  STS for task and execution roles (turns on STS mode)
  ECSD_CREDENTIALS         sts or static (default: sts with an STS endpoint, else static)
  ECSD_STATIC_ACCESS_KEY_ID, ECSD_STATIC_SECRET_ACCESS_KEY  the keys tasks get offline
  ECS_ENDPOINT_AWS_ACCESS_KEY_ID, ECS_ENDPOINT_AWS_SECRET_ACCESS_KEY, ECS_ENDPOINT_AWS_PROFILE
                           ecsd's own credentials for the upstream ECS, STS, Secrets Manager and SSM
  AWS_ENDPOINT_URL_SECRETS_MANAGER, AWS_ENDPOINT_URL_SSM, AWS_ENDPOINT_URL_S3
                           where secrets, parameters and S3 environment files are read
                           (also AWS_ENDPOINT_URL_SECRETSMANAGER, SECRET_MANAGER_ENDPOINT_URL,
                           SSM_ENDPOINT_URL)
  AWS_ENDPOINT_URL_IAM (or IAM_ENDPOINT)  IAM: when set, task and execution roles are
                           looked up there (GetRole) and must exist
  AWS_ENDPOINT_URL_ECR, AWS_ENDPOINT_URL_CLOUDWATCH_LOGS (or AWS_ENDPOINT_URL_LOGS)
                           the other AWS services ecsd calls
  ECSD_CONFIG              the config file (default /etc/ecsd/config.toml if present)
  ECSD_ECS_CONFIG          the ECS agent's KEY=value file (default /etc/ecs/ecs.config if present);
                           its values count where the environment leaves a variable unset
  ECS_CLUSTER              the cluster this host joins, created at start (default default)
  ECS_LOGLEVEL             debug, info, warn, error or crit, when RUST_LOG and ECSD_LOG are unset
  ECS_ENGINE_TASK_CLEANUP_WAIT_DURATION  as ECSD_TASK_RETENTION, when that is unset
  ECSD_INTROSPECTION_LISTEN  the agent introspection API's address, or off (as
                           --introspection-listen; default 127.0.0.1:51678)
  ECS_SKIP_LOCALHOST_TRAFFIC_FILTER, ECS_ALLOW_OFFHOST_INTROSPECTION_ACCESS
                           true: do not add ecs-init's localhost filter / off-host block (root)
  ECSD_TASK_SUBNET         the default task network's subnet (default 10.217.0.0/16, bridge ecsd0)
  ECSD_PUBLISH_AWSVPC_PORTS  publish awsvpc tasks' portMappings on the host too (default false)
  ECS_DYNAMIC_HOST_PORT_RANGE  dynamic host ports for bridge mode (default 49153-65535)
  ECS_RESERVED_PORTS       host ports never handed out (default [22, 2375, 2376, 51678, 51679])
  ECS_RESERVED_PORTS_UDP   UDP host ports never handed out (default [])
  ECSD_NETAVARK, ECSD_AARDVARK_DNS  the netavark and aardvark-dns binaries
                           (default /usr/lib/podman/netavark, /usr/lib/podman/aardvark-dns)
  ECSD_SLIRP4NETNS         the slirp4netns that gives ECSD_NETWORK_UPLINK=netns its way out
                           (default slirp4netns, from PATH)
  ECSD_EXEC_IDLE_TIMEOUT   end ECS Exec sessions without input or output this long (default 20m)
  ECSD_EXEC_MAX_SESSIONS   ECS Exec sessions per task at a time (default 10)
  ECSD_EXEC_URL            the ws:// or wss:// base URL ExecuteCommand's streamUrl starts with
                           (default: ws:// and the address the client reached ecsd at)
  ECS_IMAGE_PULL_BEHAVIOR  default, always, once or prefer-cached (default default)
  ECS_IMAGE_PULL_TIMEOUT, ECS_IMAGE_PULL_INACTIVITY_TIMEOUT, ECS_MANIFEST_PULL_TIMEOUT
                           a whole pull (2h), a stalled download (1m), a manifest (1m)
  ECSD_INSECURE_REGISTRIES host[:port] list reached without TLS checks or over HTTP
                           (loopback registries always are)
  ECSD_REGISTRY_MIRRORS    URLs tried before Docker Hub
  ECSD_MAX_CONCURRENT_DOWNLOADS  layers of one image downloaded at once (default 3)
  ECS_ENGINE_AUTH_TYPE, ECS_ENGINE_AUTH_DATA  registry credentials (docker or dockercfg)
  DOCKER_CONFIG            docker config dir with auths and credential helpers (~/.docker)
  ECSD_ECR_REGISTRIES      registries (host[:port] list, or *) authenticated through ECR
                           besides *.dkr.ecr.*.amazonaws.com
  ECS_DISABLE_IMAGE_CLEANUP, ECS_IMAGE_CLEANUP_INTERVAL, ECS_IMAGE_MINIMUM_CLEANUP_AGE,
  ECS_NUM_IMAGES_DELETE_PER_CYCLE, ECS_EXCLUDE_UNTRACKED_IMAGE,
  ECS_ENABLE_UNTRACKED_IMAGE_CLEANUP, NON_ECS_IMAGE_MINIMUM_CLEANUP_AGE
                           image cleanup, as the ECS agent's (30m, 1h, 5, none, false, 1h)")]
pub struct ServeArgs {
    /// Address to serve the ECS API on; port 0 picks a free port. The bound address is
    /// printed as `ecsd listening on http://ADDR`. [default: 127.0.0.1:8000]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,

    /// Directory for ecsd's state; one ecsd at a time may use it.
    /// [default: /var/lib/ecsd as root, else $XDG_DATA_HOME/ecsd]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// containerd's socket. When nothing answers there and `containerd` is installed, ecsd
    /// starts its own under the data dir. [default: /run/containerd/containerd.sock]
    #[arg(long, value_name = "PATH")]
    pub containerd_address: Option<PathBuf>,

    /// containerd namespace of ecsd's images and containers. [default: ecs]
    #[arg(long, value_name = "NAME")]
    pub namespace: Option<String>,

    /// The container runtime: containerd, podman, or auto (containerd when one answers or is
    /// installed, else Podman). [default: auto]
    #[arg(long, value_enum, value_name = "RUNTIME")]
    pub runtime: Option<RuntimeChoice>,

    /// The socket of a running Podman service (`podman system service`) to use instead of the
    /// one ecsd starts under its data dir.
    #[arg(long, value_name = "PATH")]
    pub podman_socket: Option<PathBuf>,

    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// TOML config file declaring task networks (`[networks.NAME]`) and port settings
    /// (`[tasks]`); see deploy/config.toml.example. [default: /etc/ecsd/config.toml if present]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address of the ECS agent's introspection API (/v1/metadata, /v1/tasks, /metrics),
    /// or `off`. [default: 127.0.0.1:51678]
    #[arg(long, value_name = "ADDR")]
    pub introspection_listen: Option<String>,

    /// Run as this unprivileged user: ecsd re-executes itself with its own containerd (or, with
    /// --runtime podman, its own Podman service) inside a rootlesskit user namespace (needs
    /// rootlesskit, newuidmap/newgidmap, ranges in /etc/subuid and /etc/subgid, and
    /// XDG_RUNTIME_DIR). State goes to $XDG_DATA_HOME/ecsd, the runtime's run state, its
    /// socket and the containers' FIFOs to $XDG_RUNTIME_DIR/ecsd, the
    /// config file is $XDG_CONFIG_HOME/ecsd/config.toml. Task cpu and memory limits are not
    /// applied without cgroup delegation, host ports below net.ipv4.ip_unprivileged_port_start
    /// are refused, and bridge and awsvpc task networks run in ecsd's own uplink network
    /// namespace (published TCP ports are forwarded from the host; UDP ones are refused).
    #[arg(long)]
    pub rootless: bool,
}

/// Which container runtime `ecsd serve` runs tasks on.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuntimeChoice {
    /// containerd when one answers or is installed, else Podman.
    #[default]
    Auto,
    Containerd,
    Podman,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The resolved configuration of `ecsd serve`.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub identity: Identity,
    pub ecs_endpoint_url: Option<String>,
    /// `ECS_ENDPOINT_AWS_REGION`: the upstream ECS's region for references without one (an
    /// ARN names its own); else the daemon's region.
    pub ecs_endpoint_region: Option<String>,
    /// `ECSD_FORWARD_SIGNATURE`: how forwarded calls are signed.
    pub forward_signature: ForwardSignature,
    pub containerd_address: PathBuf,
    /// Whether the address was configured: then ecsd uses that containerd and never starts
    /// its own, waiting for it to answer instead.
    pub containerd_address_explicit: bool,
    pub namespace: String,
    /// `--runtime` / `ECSD_RUNTIME`.
    pub runtime: RuntimeChoice,
    /// `--rootless` / `ECSD_ROOTLESS`: an unprivileged user's ecsd (see [`crate::rootless`]).
    pub rootless: bool,
    /// Rootless only: `$XDG_RUNTIME_DIR/ecsd`, for what lives only while ecsd runs
    /// (containerd's state, FIFOs); `None` without an XDG_RUNTIME_DIR (the data dir then).
    pub run_dir: Option<PathBuf>,
    /// `--podman-socket` / `ECSD_PODMAN_SOCKET`: a Podman service to use; `None`: ecsd starts
    /// its own when the runtime is Podman.
    pub podman_socket: Option<PathBuf>,
    /// The binary the shim runs as `log-driver` (`ECSD_LOG_DRIVER`); `None`: this one.
    pub log_driver: Option<PathBuf>,
    pub stop_timeout: Duration,
    pub start_timeout: Duration,
    pub retention: Duration,
    /// The service scheduler's stabilisation time and INACTIVE retention.
    pub services: crate::scheduler::SchedulerConfig,
    /// `ECS_RESERVED_MEMORY` and `ECS_INSTANCE_ATTRIBUTES`: this host as a container instance.
    pub instance: crate::engine::placement::InstanceSettings,
    pub log_format: LogFormat,
    pub log_filter: String,
    /// Task networks and ports.
    pub network: crate::network::Settings,
    /// `ECS_TASK_METADATA_RPS_LIMIT`: each task's endpoints answer this many requests per
    /// second (steady, burst); more get 429.
    pub metadata_rps: (u32, u32),
    /// ecsd's AWS calls: region, endpoints per service, ecsd's own identity.
    pub aws: crate::aws::Settings,
    /// How task roles get their credentials (STS, or static keys offline).
    pub credentials: CredentialSettings,
    /// ECS Exec sessions.
    pub exec: crate::exec::ExecSettings,
    /// Pulls (behaviour, registries, credentials) and image cleanup.
    pub images: crate::engine::images::ImageSettings,
    /// `ECS_CLUSTER`: the cluster this host joins, created at start when missing.
    pub cluster: String,
    /// Where the agent's introspection API is served (`None`: not at all).
    pub introspection: Option<SocketAddr>,
    /// ecs-init's firewall rules, as its two variables leave them.
    pub firewall: Firewall,
    /// What a reader of the configuration should be told once logging is up: ecs.config
    /// keys ecsd ignores.
    pub warnings: Vec<String>,
}

/// Which of ecs-init's rules ecsd adds when it runs as root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Firewall {
    /// Drop packets to 127.0.0.0/8 that do not come from loopback, unless DNAT'd or part of
    /// a connection (`ECS_SKIP_LOCALHOST_TRAFFIC_FILTER=true` turns it off).
    pub localhost_filter: bool,
    /// Drop off-host packets to the introspection port
    /// (`ECS_ALLOW_OFFHOST_INTROSPECTION_ACCESS=true` turns it off).
    pub block_offhost_introspection: bool,
}

const DEFAULT_INTROSPECTION: &str = "127.0.0.1:51678";

/// The tracing filter for one of the agent's `ECS_LOGLEVEL` values.
fn agent_log_level(level: &str) -> Option<&'static str> {
    Some(match level.to_ascii_lowercase().as_str() {
        "debug" => "debug",
        "info" => "info",
        "warn" => "warn",
        "error" | "crit" => "error",
        _ => return None,
    })
}

/// A boolean agent variable: `true` or `false` (any case), unset is false.
fn agent_flag(env: &dyn Fn(&str) -> Option<String>, name: &str) -> Result<bool, ConfigError> {
    match env(name).map(|v| v.trim().to_ascii_lowercase()).filter(|v| !v.is_empty()).as_deref() {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(ConfigError {
            name: name.into(),
            value: other.into(),
            reason: "expected true or false".into(),
        }),
    }
}

/// How a call forwarded to `ECS_ENDPOINT_URL` is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardSignature {
    /// Signed again with ecsd's own upstream credentials for the upstream's host and region
    /// (`aws`, the default): what an endpoint that checks signatures accepts.
    #[default]
    Resign,
    /// Sent with the caller's headers, signature included (`passthrough`): for upstreams
    /// that check nothing, as local-ecs-api did.
    Passthrough,
}

/// A value that cannot be used, reported as `NAME=value: reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}={value}: {reason}")]
pub struct ConfigError {
    pub name: String,
    pub value: String,
    pub reason: String,
}

impl Config {
    /// Resolves `args` against the environment `env` (a lookup such as `std::env::var`) and
    /// the ecs.config file (`ECSD_ECS_CONFIG`, else /etc/ecs/ecs.config when it exists), whose
    /// values count where the environment leaves a variable unset or blank.
    pub fn resolve(args: &ServeArgs, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let explicit = env("ECSD_ECS_CONFIG").filter(|v| !v.is_empty());
        let path = PathBuf::from(explicit.clone().unwrap_or_else(|| ecs_file::DEFAULT_PATH.to_owned()));
        let file = ecs_file::EcsConfig::read(&path, explicit.is_some()).map_err(|e| ConfigError {
            name: "ECSD_ECS_CONFIG".into(),
            value: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut config = Config::resolve_layered(args, &|k| file.under(env, k))?;
        config.warnings = file.warnings.iter().map(|w| format!("{}: {w}", path.display())).collect();
        Ok(config)
    }

    fn resolve_layered(
        args: &ServeArgs,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let non_empty = |k: &str| env(k).filter(|v| !v.is_empty());
        let (listen_name, listen_raw) = match &args.listen {
            Some(v) => ("--listen", v.clone()),
            None => ("ECSD_LISTEN", non_empty("ECSD_LISTEN").unwrap_or_else(|| DEFAULT_LISTEN.to_owned())),
        };
        let listen = listen_raw.parse::<SocketAddr>().map_err(|_| ConfigError {
            name: listen_name.into(),
            value: listen_raw.clone(),
            reason: "not an IP address and port such as 127.0.0.1:8000 (port 0 picks a free port)".into(),
        })?;

        let rootless = args.rootless
            || match non_empty("ECSD_ROOTLESS").map(|v| v.to_ascii_lowercase()).as_deref() {
                None | Some("0") | Some("false") => false,
                Some("1") | Some("true") => true,
                Some(other) => {
                    return Err(ConfigError {
                        name: "ECSD_ROOTLESS".into(),
                        value: other.into(),
                        reason: "expected 1, true, 0 or false".into(),
                    });
                }
            };
        // Checked before the re-exec (crate::rootless::preflight), which says what to fix.
        let run_dir = rootless.then(|| crate::rootless::run_dir(env)).flatten();
        let data_dir = match &args.data_dir {
            Some(d) => d.clone(),
            None => match non_empty("ECSD_DATA_DIR") {
                Some(d) => PathBuf::from(d),
                // Inside its user namespace a rootless ecsd is uid 0: the user's directories
                // still hold its state.
                None if rootless => crate::rootless::xdg_dir(env, "XDG_DATA_HOME", ".local/share"),
                None => default_data_dir(env),
            },
        };

        let (region_name, region) = match non_empty("AWS_REGION") {
            Some(r) => ("AWS_REGION", r),
            None => match non_empty("AWS_DEFAULT_REGION") {
                Some(r) => ("AWS_DEFAULT_REGION", r),
                None => ("AWS_REGION", DEFAULT_REGION.to_owned()),
            },
        };
        if !region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return Err(ConfigError {
                name: region_name.into(),
                value: region,
                reason: "not a region name such as us-east-1".into(),
            });
        }
        let account = non_empty("ECSD_ACCOUNT_ID").unwrap_or_else(|| DEFAULT_ACCOUNT.to_owned());
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ConfigError {
                name: "ECSD_ACCOUNT_ID".into(),
                value: account,
                reason: "an AWS account id is exactly 12 digits".into(),
            });
        }

        let ecs_endpoint_url = non_empty("ECS_ENDPOINT_URL");
        if let Some(url) = &ecs_endpoint_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ConfigError {
                name: "ECS_ENDPOINT_URL".into(),
                value: url.clone(),
                reason: "not an http:// or https:// URL".into(),
            });
        }

        let ecs_endpoint_region = non_empty("ECS_ENDPOINT_AWS_REGION");
        if let Some(r) = &ecs_endpoint_region
            && !r.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(ConfigError {
                name: "ECS_ENDPOINT_AWS_REGION".into(),
                value: r.clone(),
                reason: "not a region name such as us-west-2".into(),
            });
        }
        let forward_signature = match non_empty("ECSD_FORWARD_SIGNATURE").as_deref() {
            None | Some("aws") => ForwardSignature::Resign,
            Some("passthrough") => ForwardSignature::Passthrough,
            Some(other) => {
                return Err(ConfigError {
                    name: "ECSD_FORWARD_SIGNATURE".into(),
                    value: other.into(),
                    reason: "expected aws or passthrough".into(),
                });
            }
        };

        let configured_address = args
            .containerd_address
            .clone()
            .or_else(|| non_empty("ECSD_CONTAINERD_ADDRESS").map(PathBuf::from));
        let containerd_address_explicit = configured_address.is_some();
        let containerd_address =
            configured_address.unwrap_or_else(|| PathBuf::from("/run/containerd/containerd.sock"));
        let namespace = match &args.namespace {
            Some(n) => n.clone(),
            None => non_empty("ECSD_NAMESPACE").unwrap_or_else(|| "ecs".into()),
        };
        let runtime = match (args.runtime, non_empty("ECSD_RUNTIME")) {
            (Some(r), _) => r,
            (None, None) => RuntimeChoice::Auto,
            (None, Some(v)) => RuntimeChoice::from_str(&v, true).map_err(|_| ConfigError {
                name: "ECSD_RUNTIME".into(),
                value: v.clone(),
                reason: "expected auto, containerd or podman".into(),
            })?,
        };
        let podman_socket =
            args.podman_socket.clone().or_else(|| non_empty("ECSD_PODMAN_SOCKET").map(PathBuf::from));
        if let (true, Some(socket)) = (rootless, &podman_socket) {
            return Err(ConfigError {
                name: if args.podman_socket.is_some() { "--podman-socket" } else { "ECSD_PODMAN_SOCKET" }
                    .into(),
                value: socket.display().to_string(),
                reason: "a rootless ecsd runs its own Podman service inside its user namespace, where its \
                         task network namespaces are; a Podman service outside it (such as the user's \
                         own) cannot join them. Leave it unset"
                    .into(),
            });
        }
        let duration = |name: &str, default: Duration, min: Duration| -> Result<Duration, ConfigError> {
            match non_empty(name) {
                None => Ok(default),
                Some(v) => match parse_duration(&v) {
                    Some(d) if d >= min => Ok(d),
                    Some(_) => Err(ConfigError {
                        name: name.into(),
                        value: v,
                        reason: format!("must be at least {}s", min.as_secs()),
                    }),
                    None => Err(ConfigError {
                        name: name.into(),
                        value: v,
                        reason: "not a duration such as 30s, 2m or 1h30m".into(),
                    }),
                },
            }
        };
        let stop_timeout =
            duration("ECS_CONTAINER_STOP_TIMEOUT", Duration::from_secs(30), Duration::from_secs(1))?;
        let start_timeout =
            duration("ECS_CONTAINER_START_TIMEOUT", Duration::from_secs(180), Duration::from_secs(1))?;
        // ecsd's own name first; the agent's is the nearest thing it has (its containers are
        // removed then, and ecsd forgets the task then).
        let retention = match non_empty("ECSD_TASK_RETENTION") {
            Some(_) => duration("ECSD_TASK_RETENTION", Duration::from_secs(3600), Duration::ZERO)?,
            None => {
                duration("ECS_ENGINE_TASK_CLEANUP_WAIT_DURATION", Duration::from_secs(3600), Duration::ZERO)?
            }
        };
        let services = crate::scheduler::SchedulerConfig {
            stabilization: duration("ECSD_SERVICE_STABILIZATION", Duration::from_secs(40), Duration::ZERO)?,
            inactive_retention: duration(
                "ECSD_SERVICE_RETENTION",
                Duration::from_secs(3600),
                Duration::ZERO,
            )?,
        };

        let reserved_memory_mib = match non_empty("ECS_RESERVED_MEMORY") {
            None => 0,
            Some(v) => v.trim().parse::<u32>().map(i64::from).map_err(|_| ConfigError {
                name: "ECS_RESERVED_MEMORY".into(),
                value: v.clone(),
                reason: "not a whole number of MiB such as 256".into(),
            })?,
        };
        let attributes = match non_empty("ECS_INSTANCE_ATTRIBUTES") {
            None => Default::default(),
            Some(v) => crate::model::attribute::instance_attributes(&v).map_err(|e| ConfigError {
                name: "ECS_INSTANCE_ATTRIBUTES".into(),
                value: v.clone(),
                reason: e.to_string(),
            })?,
        };
        let instance = crate::engine::placement::InstanceSettings { reserved_memory_mib, attributes };

        let log_filter = match non_empty("RUST_LOG").or_else(|| non_empty("ECSD_LOG")) {
            Some(f) => f,
            None => match non_empty("ECS_LOGLEVEL") {
                None => "info".to_owned(),
                Some(level) => agent_log_level(&level).map(str::to_owned).ok_or_else(|| ConfigError {
                    name: "ECS_LOGLEVEL".into(),
                    value: level.clone(),
                    reason: "expected debug, info, warn, error or crit".into(),
                })?,
            },
        };
        let cluster =
            non_empty("ECS_CLUSTER").unwrap_or_else(|| crate::model::arn::DEFAULT_CLUSTER.to_owned());
        if cluster.is_empty()
            || cluster.len() > 255
            || !cluster.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ConfigError {
                name: "ECS_CLUSTER".into(),
                value: cluster,
                reason: "a cluster name is up to 255 letters, digits, hyphens and underscores".into(),
            });
        }
        let introspection = match &args.introspection_listen {
            Some(v) => ("--introspection-listen", v.clone()),
            None => (
                "ECSD_INTROSPECTION_LISTEN",
                non_empty("ECSD_INTROSPECTION_LISTEN").unwrap_or_else(|| DEFAULT_INTROSPECTION.to_owned()),
            ),
        };
        let introspection = match introspection {
            (_, v) if v == "off" => None,
            (name, v) => Some(v.parse::<SocketAddr>().map_err(|_| ConfigError {
                name: name.into(),
                value: v.clone(),
                reason: "not an IP address and port such as 127.0.0.1:51678, or off".into(),
            })?),
        };
        let firewall = Firewall {
            localhost_filter: !agent_flag(env, "ECS_SKIP_LOCALHOST_TRAFFIC_FILTER")?,
            block_offhost_introspection: !agent_flag(env, "ECS_ALLOW_OFFHOST_INTROSPECTION_ACCESS")?,
        };

        let network = resolve_network(args, rootless, env)?;
        let metadata_rps = match non_empty("ECS_TASK_METADATA_RPS_LIMIT") {
            None => (40, 60),
            Some(v) => v
                .split_once(',')
                .and_then(|(a, b)| Some((a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?)))
                .filter(|(steady, burst)| *steady > 0 && burst >= steady)
                .ok_or_else(|| ConfigError {
                    name: "ECS_TASK_METADATA_RPS_LIMIT".into(),
                    value: v.clone(),
                    reason: "not STEADY,BURST requests per second such as 40,60 (burst at least steady)"
                        .into(),
                })?,
        };

        let (aws, credentials) = resolve_aws(env, &region)?;
        let exec = resolve_exec(env, &duration)?;
        let images = resolve_images(env, aws.endpoints.get(Service::Ecr).is_some())?;

        Ok(Config {
            network,
            metadata_rps,
            aws,
            credentials,
            exec,
            images,
            listen,
            data_dir,
            identity: Identity { region, account },
            ecs_endpoint_url,
            ecs_endpoint_region,
            forward_signature,
            containerd_address,
            containerd_address_explicit,
            runtime,
            rootless,
            run_dir,
            podman_socket,
            namespace,
            log_driver: non_empty("ECSD_LOG_DRIVER").map(PathBuf::from),
            stop_timeout,
            start_timeout,
            retention,
            services,
            instance,
            log_format: args.log_format,
            log_filter,
            cluster,
            introspection,
            firewall,
            warnings: vec![],
        })
    }
}

/// ECS Exec's settings.
fn resolve_exec(
    env: &dyn Fn(&str) -> Option<String>,
    duration: &dyn Fn(&str, Duration, Duration) -> Result<Duration, ConfigError>,
) -> Result<crate::exec::ExecSettings, ConfigError> {
    let defaults = crate::exec::ExecSettings::default();
    let idle_timeout = duration("ECSD_EXEC_IDLE_TIMEOUT", defaults.idle_timeout, Duration::from_secs(1))?;
    let max_sessions_per_task = match env("ECSD_EXEC_MAX_SESSIONS").filter(|v| !v.is_empty()) {
        None => defaults.max_sessions_per_task,
        Some(v) => v.trim().parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| ConfigError {
            name: "ECSD_EXEC_MAX_SESSIONS".into(),
            value: v.clone(),
            reason: "not a whole number of sessions, at least 1".into(),
        })?,
    };
    let url = match env("ECSD_EXEC_URL").map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()) {
        None => None,
        Some(v) if v.starts_with("ws://") || v.starts_with("wss://") => Some(v),
        Some(v) => {
            return Err(ConfigError {
                name: "ECSD_EXEC_URL".into(),
                value: v,
                reason: "not a ws:// or wss:// URL".into(),
            });
        }
    };
    Ok(crate::exec::ExecSettings { idle_timeout, max_sessions_per_task, url })
}

/// ecsd's AWS settings and how task roles get their keys.
/// `ECS_IMAGE_*`, `ECS_ENGINE_AUTH_*`, the docker config and ecsd's registry settings, as
/// the agent reads its variables (an unknown pull behaviour is `default`, intervals below
/// the agent's floors are raised to them).
pub fn resolve_images(
    env: &dyn Fn(&str) -> Option<String>,
    ecr_endpoint: bool,
) -> Result<crate::engine::images::ImageSettings, ConfigError> {
    use crate::engine::images::{CleanupSettings, ImageSettings, PullBehavior};
    use crate::runtime::registry::RegistrySettings;
    use crate::runtime::registry::credentials::EngineAuth;
    let get = |k: &str| env(k).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let bad = |name: &str, value: &str, reason: &str| ConfigError {
        name: name.into(),
        value: value.into(),
        reason: reason.into(),
    };
    let duration = |name: &str, default: Duration| -> Result<Duration, ConfigError> {
        match get(name) {
            None => Ok(default),
            Some(v) => {
                parse_duration(&v).ok_or_else(|| bad(name, &v, "not a duration such as 30s, 2m or 1h30m"))
            }
        }
    };
    let flag = |name: &str| -> Result<bool, ConfigError> {
        match get(name).as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") => Ok(true),
            Some(v) => Err(bad(name, v, "expected true or false")),
        }
    };
    let list = |name: &str| -> Vec<String> {
        get(name)
            .map(|v| v.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default()
    };
    let defaults = RegistrySettings::default();
    let mut registry = RegistrySettings {
        insecure: list("ECSD_INSECURE_REGISTRIES"),
        mirrors: list("ECSD_REGISTRY_MIRRORS"),
        pull_timeout: duration("ECS_IMAGE_PULL_TIMEOUT", defaults.pull_timeout)?,
        // The agent's floors: 1 minute of inactivity, 30 s for the manifest.
        inactivity_timeout: duration("ECS_IMAGE_PULL_INACTIVITY_TIMEOUT", defaults.inactivity_timeout)?
            .max(Duration::from_secs(60)),
        request_timeout: duration("ECS_MANIFEST_PULL_TIMEOUT", defaults.request_timeout)?
            .max(Duration::from_secs(30)),
        ..defaults
    };
    if registry.pull_timeout.is_zero() {
        return Err(bad("ECS_IMAGE_PULL_TIMEOUT", "0", "must be more than 0"));
    }
    for m in &registry.mirrors {
        if !(m.starts_with("http://") || m.starts_with("https://")) {
            return Err(bad("ECSD_REGISTRY_MIRRORS", m, "each mirror is an http:// or https:// URL"));
        }
    }
    for r in &registry.insecure {
        if r.contains("://") || r.contains('/') {
            return Err(bad(
                "ECSD_INSECURE_REGISTRIES",
                r,
                "each entry is a registry host[:port], without scheme or path",
            ));
        }
    }
    if let Some(v) = get("ECSD_MAX_CONCURRENT_DOWNLOADS") {
        registry.max_concurrent_downloads = v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=32).contains(n))
            .ok_or_else(|| bad("ECSD_MAX_CONCURRENT_DOWNLOADS", &v, "a number from 1 to 32"))?;
    }
    let engine_auth =
        match (get("ECS_ENGINE_AUTH_TYPE"), env("ECS_ENGINE_AUTH_DATA").filter(|v| !v.trim().is_empty())) {
            (Some(kind), Some(data)) => EngineAuth::parse(&kind, &data).map_err(|e| ConfigError {
                name: "ECS_ENGINE_AUTH_DATA".into(),
                // Never the value: it holds passwords.
                value: "(hidden)".into(),
                reason: e.to_string(),
            })?,
            _ => EngineAuth::default(),
        };
    let docker_config = get("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| get("HOME").map(|h| PathBuf::from(h).join(".docker")));
    let cleanup_defaults = CleanupSettings::default();
    let interval = duration("ECS_IMAGE_CLEANUP_INTERVAL", cleanup_defaults.interval)?;
    let per_cycle = match get("ECS_NUM_IMAGES_DELETE_PER_CYCLE") {
        None => cleanup_defaults.per_cycle,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if n >= 1 => n as usize,
            Ok(_) => cleanup_defaults.per_cycle,
            Err(_) => return Err(bad("ECS_NUM_IMAGES_DELETE_PER_CYCLE", &v, "not a number")),
        },
    };
    let cleanup = CleanupSettings {
        enabled: !flag("ECS_DISABLE_IMAGE_CLEANUP")?,
        interval: if interval < Duration::from_secs(600) { cleanup_defaults.interval } else { interval },
        minimum_age: duration("ECS_IMAGE_MINIMUM_CLEANUP_AGE", cleanup_defaults.minimum_age)?,
        per_cycle,
        exclude: list("ECS_EXCLUDE_UNTRACKED_IMAGE"),
        untracked: flag("ECS_ENABLE_UNTRACKED_IMAGE_CLEANUP")?,
        untracked_minimum_age: duration(
            "NON_ECS_IMAGE_MINIMUM_CLEANUP_AGE",
            cleanup_defaults.untracked_minimum_age,
        )?,
    };
    Ok(ImageSettings {
        pull_behavior: get("ECS_IMAGE_PULL_BEHAVIOR").map(|v| PullBehavior::parse(&v)).unwrap_or_default(),
        registry,
        engine_auth,
        docker_config,
        ecr_registries: list("ECSD_ECR_REGISTRIES"),
        ecr_endpoint_configured: ecr_endpoint,
        cleanup,
    })
}

fn resolve_aws(
    env: &dyn Fn(&str) -> Option<String>,
    region: &str,
) -> Result<(crate::aws::Settings, CredentialSettings), ConfigError> {
    // Blank counts as unset; keys are kept as given, URLs trimmed.
    let get = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    let mut aws = crate::aws::Settings::new(region);
    for (service, names) in AWS_ENDPOINT_VARIABLES {
        let Some((name, url)) = names.iter().find_map(|n| get(n).map(|v| (*n, v.trim().to_owned()))) else {
            continue;
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ConfigError {
                name: name.into(),
                value: url,
                reason: "not an http:// or https:// URL".into(),
            });
        }
        aws.endpoints.set(service, &url);
    }
    let mode = match get("ECSD_CREDENTIALS").as_deref() {
        Some("sts") => CredentialMode::Sts,
        Some("static") => CredentialMode::Static,
        Some(other) => {
            return Err(ConfigError {
                name: "ECSD_CREDENTIALS".into(),
                value: other.into(),
                reason: "expected sts or static".into(),
            });
        }
        None if aws.endpoints.get(Service::Sts).is_some() => CredentialMode::Sts,
        None => CredentialMode::Static,
    };
    aws.own_identity = match key_pair(
        env,
        "ECS_ENDPOINT_AWS_ACCESS_KEY_ID",
        "ECS_ENDPOINT_AWS_SECRET_ACCESS_KEY",
        "ECS_ENDPOINT_AWS_SESSION_TOKEN",
    )? {
        Some(keys) => OwnIdentity::Keys(keys),
        None => match get("ECS_ENDPOINT_AWS_PROFILE") {
            Some(profile) => OwnIdentity::Profile(profile),
            None => OwnIdentity::DefaultChain,
        },
    };
    let mut credentials = CredentialSettings { mode, ..CredentialSettings::default() };
    match key_pair(
        env,
        "ECSD_STATIC_ACCESS_KEY_ID",
        "ECSD_STATIC_SECRET_ACCESS_KEY",
        "ECSD_STATIC_SESSION_TOKEN",
    )? {
        Some(keys) => credentials.static_keys = keys,
        // The standard variables are not ours to reject, so a half-set pair is ignored.
        None => {
            if let (Some(id), Some(secret)) = (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY")) {
                credentials.static_keys = Keys::new(&id, &secret, get("AWS_SESSION_TOKEN").as_deref());
            }
        }
    }
    Ok((aws, credentials))
}

/// Both keys of a pair, or neither; a token without keys is an error too. The error names
/// the missing variable and never shows a value.
fn key_pair(
    env: &dyn Fn(&str) -> Option<String>,
    id_name: &str,
    secret_name: &str,
    token_name: &str,
) -> Result<Option<Keys>, ConfigError> {
    let get = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    let missing = |name: &str, because: &str| ConfigError {
        name: name.into(),
        value: String::new(),
        reason: format!("required when {because} is set"),
    };
    match (get(id_name), get(secret_name), get(token_name)) {
        (Some(id), Some(secret), token) => Ok(Some(Keys::new(&id, &secret, token.as_deref()))),
        (Some(_), None, _) => Err(missing(secret_name, id_name)),
        (None, Some(_), _) => Err(missing(id_name, secret_name)),
        (None, None, Some(_)) => Err(missing(id_name, token_name)),
        (None, None, None) => Ok(None),
    }
}

/// Reads the config file (flag, `ECSD_CONFIG`, or /etc/ecsd/config.toml when it exists) and
/// resolves the network settings from it and the environment.
fn resolve_network(
    args: &ServeArgs,
    rootless: bool,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<crate::network::Settings, ConfigError> {
    let explicit = match &args.config {
        Some(p) => Some(("--config", p.clone())),
        None => env("ECSD_CONFIG").filter(|v| !v.is_empty()).map(|v| ("ECSD_CONFIG", PathBuf::from(v))),
    };
    let default = match rootless {
        true => crate::rootless::xdg_dir(env, "XDG_CONFIG_HOME", ".config").join("config.toml"),
        false => PathBuf::from(DEFAULT_CONFIG_FILE),
    };
    let (name, path) = explicit.clone().unwrap_or(("--config", default));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && explicit.is_none() => String::new(),
        Err(e) => {
            return Err(ConfigError {
                name: name.into(),
                value: path.display().to_string(),
                reason: e.to_string(),
            });
        }
    };
    let file: crate::network::settings::FileNetworks = toml::from_str(&text).map_err(|e| ConfigError {
        name: name.into(),
        value: path.display().to_string(),
        reason: e.to_string().trim().replace('\n', " "),
    })?;
    let env = |k: &str| env(k).filter(|v| !v.is_empty());
    if rootless {
        rootless_uplink(&file, &env, &path)?;
    }
    // A rootless ecsd's task networks live in its uplink namespace: it is not root in the
    // host's network namespace, where bridges and firewall rules would go.
    let env = |k: &str| match k {
        "ECSD_NETWORK_UPLINK" if rootless => Some("netns".to_owned()),
        _ => env(k),
    };
    crate::network::Settings::resolve(file, &env).map_err(|e| ConfigError {
        // A variable's error shows its value; a file setting's, the file.
        value: env(&e.name).unwrap_or_else(|| path.display().to_string()),
        name: e.name,
        reason: e.reason,
    })
}

/// What a rootless ecsd refuses of the network settings: an uplink other than its own
/// namespace, and Podman's networks (which are in the host's network namespace).
fn rootless_uplink(
    file: &crate::network::settings::FileNetworks,
    env: &dyn Fn(&str) -> Option<String>,
    path: &std::path::Path,
) -> Result<(), ConfigError> {
    let explicit = env("ECSD_NETWORK_UPLINK")
        .map(|v| ("ECSD_NETWORK_UPLINK", v.clone(), v))
        // A file setting's error shows the file, as Settings::resolve's do.
        .or_else(|| file.tasks.uplink.clone().map(|v| ("tasks.uplink", path.display().to_string(), v)));
    if let Some((name, value, _)) = explicit.filter(|(_, _, v)| v != "netns") {
        return Err(ConfigError {
            name: name.into(),
            value,
            reason: "a rootless ecsd is not root in the host's network namespace, so it cannot make \
                     task bridges or firewall rules there: its task networks always run in its own \
                     uplink namespace (netns); remove the setting or set it to netns"
                .into(),
        });
    }
    if let Some(value) = env("ECS_EXTERNAL_NETWORKS") {
        return Err(ConfigError {
            name: "ECS_EXTERNAL_NETWORKS".into(),
            value,
            reason: "a rootless ecsd's task networks are in its own uplink namespace, out of reach of \
                     Podman's bridges in the host's network namespace"
                .into(),
        });
    }
    Ok(())
}

pub const DEFAULT_CONFIG_FILE: &str = "/etc/ecsd/config.toml";

/// Parses durations as the ECS agent's variables take them (Go's syntax: `30s`, `2m`,
/// `1h30m`, `500ms`), or plain seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.')?;
        let (num, tail) = rest.split_at(digits);
        let value: f64 = num.parse().ok()?;
        let unit_len = tail.find(|c: char| c.is_ascii_digit()).unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let secs = match unit {
            "ms" => value / 1000.0,
            "s" => value,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            _ => return None,
        };
        total += Duration::from_secs_f64(secs);
        rest = next;
    }
    Some(total)
}

fn default_data_dir(env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let is_root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
    if is_root {
        return PathBuf::from("/var/lib/ecsd");
    }
    match env("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d).join("ecsd"),
        None => PathBuf::from(env("HOME").unwrap_or_else(|| ".".into())).join(".local/share/ecsd"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn resolve(args: ServeArgs, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::resolve(&args, &|k| map.get(k).cloned())
    }

    #[test]
    fn runtime_choice_from_flag_env_or_default() {
        assert_eq!(resolve(ServeArgs::default(), &[]).unwrap().runtime, RuntimeChoice::Auto);
        let c = resolve(
            ServeArgs::default(),
            &[("ECSD_RUNTIME", "podman"), ("ECSD_PODMAN_SOCKET", "/run/p.sock")],
        )
        .unwrap();
        assert_eq!((c.runtime, c.podman_socket), (RuntimeChoice::Podman, Some(PathBuf::from("/run/p.sock"))));
        let flag = ServeArgs { runtime: Some(RuntimeChoice::Containerd), ..ServeArgs::default() };
        assert_eq!(resolve(flag, &[("ECSD_RUNTIME", "podman")]).unwrap().runtime, RuntimeChoice::Containerd);
        let e = resolve(ServeArgs::default(), &[("ECSD_RUNTIME", "docker")]).unwrap_err();
        assert_eq!(e.to_string(), "ECSD_RUNTIME=docker: expected auto, containerd or podman");
    }

    #[test]
    fn rootless_state_and_config_live_in_the_users_xdg_directories() {
        let home = [("HOME", "/home/u"), ("XDG_RUNTIME_DIR", "/run/user/7")];
        let c = resolve(ServeArgs { rootless: true, ..ServeArgs::default() }, &home).unwrap();
        assert!(c.rootless);
        assert_eq!(c.data_dir, PathBuf::from("/home/u/.local/share/ecsd"));
        assert_eq!(c.run_dir, Some(PathBuf::from("/run/user/7/ecsd")));
        let env = [("ECSD_ROOTLESS", "1"), ("XDG_DATA_HOME", "/d"), ("HOME", "/home/u")];
        let c = resolve(ServeArgs::default(), &env).unwrap();
        assert_eq!((c.rootless, c.data_dir, c.run_dir), (true, PathBuf::from("/d/ecsd"), None));
        assert!(!resolve(ServeArgs::default(), &[("ECSD_ROOTLESS", "false")]).unwrap().rootless);
        let e = resolve(ServeArgs::default(), &[("ECSD_ROOTLESS", "yes")]).unwrap_err();
        assert_eq!(e.to_string(), "ECSD_ROOTLESS=yes: expected 1, true, 0 or false");
        // The config file is the user's: a missing one is no error, a broken one is named.
        let rootless = || ServeArgs { rootless: true, ..ServeArgs::default() };
        assert!(resolve(rootless(), &[("XDG_CONFIG_HOME", "/nonexistent")]).is_ok());
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("ecsd")).unwrap();
        std::fs::write(dir.path().join("ecsd/config.toml"), "[tasks\n").unwrap();
        let cfg = dir.path().to_str().unwrap().to_owned();
        let vars = [("XDG_CONFIG_HOME", cfg.as_str())];
        let e = resolve(rootless(), &vars).unwrap_err();
        assert_eq!(e.value, format!("{cfg}/ecsd/config.toml"));
    }

    #[test]
    fn rootless_takes_podman_but_not_a_podman_service_of_its_own() {
        let rootless = |runtime| ServeArgs { rootless: true, runtime, ..ServeArgs::default() };
        let home = [("HOME", "/nonexistent")];
        assert_eq!(
            resolve(rootless(Some(RuntimeChoice::Podman)), &home).unwrap().runtime,
            RuntimeChoice::Podman
        );
        let args =
            ServeArgs { podman_socket: Some("/run/user/7/podman/podman.sock".into()), ..rootless(None) };
        let e = resolve(args, &home).unwrap_err();
        assert_eq!(
            (e.name.as_str(), e.value.as_str()),
            ("--podman-socket", "/run/user/7/podman/podman.sock")
        );
        assert!(e.reason.contains("cannot join them"), "{}", e.reason);
        let e = resolve(rootless(None), &[("HOME", "/nonexistent"), ("ECSD_PODMAN_SOCKET", "/p.sock")])
            .unwrap_err();
        assert_eq!(e.name, "ECSD_PODMAN_SOCKET");
        // Positive control: as root, a running service's socket is taken.
        let root = ServeArgs { podman_socket: Some("/p.sock".into()), ..ServeArgs::default() };
        assert_eq!(resolve(root, &home).unwrap().podman_socket, Some(PathBuf::from("/p.sock")));
    }

    #[test]
    fn rootless_task_networks_run_in_the_uplink_namespace() {
        use crate::network::Uplink;
        let rootless = || ServeArgs { rootless: true, ..ServeArgs::default() };
        let home = [("HOME", "/nonexistent")];
        assert_eq!(resolve(rootless(), &home).unwrap().network.uplink, Uplink::Netns);
        assert_eq!(resolve(ServeArgs::default(), &home).unwrap().network.uplink, Uplink::Host);
        let netns = [("HOME", "/nonexistent"), ("ECSD_NETWORK_UPLINK", "netns")];
        assert_eq!(resolve(rootless(), &netns).unwrap().network.uplink, Uplink::Netns);
        // The user's explicit host is an error that says why, from the variable or the file.
        let host = [("HOME", "/nonexistent"), ("ECSD_NETWORK_UPLINK", "host")];
        let e = resolve(rootless(), &host).unwrap_err().to_string();
        assert!(
            e.starts_with(
                "ECSD_NETWORK_UPLINK=host: a rootless ecsd is not root in the host's network namespace"
            ),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("ecsd")).unwrap();
        std::fs::write(dir.path().join("ecsd/config.toml"), "[tasks]\nuplink = \"host\"\n").unwrap();
        let cfg = dir.path().to_str().unwrap().to_owned();
        let e = resolve(rootless(), &[("XDG_CONFIG_HOME", cfg.as_str())]).unwrap_err();
        assert_eq!((e.name.as_str(), e.value), ("tasks.uplink", format!("{cfg}/ecsd/config.toml")));
        assert!(e.reason.contains("uplink namespace (netns)"), "{}", e.reason);
        let podman = [("HOME", "/nonexistent"), ("ECS_EXTERNAL_NETWORKS", "podman")];
        let e = resolve(rootless(), &podman).unwrap_err();
        assert_eq!(e.name, "ECS_EXTERNAL_NETWORKS");
        // Root keeps its choice.
        assert_eq!(resolve(ServeArgs::default(), &host).unwrap().network.uplink, Uplink::Host);
    }

    #[test]
    fn flags_win_over_env_which_wins_over_defaults() {
        let c = resolve(ServeArgs::default(), &[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8000");
        assert_eq!(c.identity, Identity { region: "us-east-1".into(), account: "000000000000".into() });
        assert_eq!(c.log_filter, "info");

        let env = [
            ("ECSD_LISTEN", "127.0.0.1:0"),
            ("ECSD_DATA_DIR", "/tmp/x"),
            ("AWS_DEFAULT_REGION", "eu-west-1"),
            ("ECSD_ACCOUNT_ID", "123456789012"),
        ];
        let c = resolve(ServeArgs::default(), &env).unwrap();
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.identity.region, "eu-west-1");
        assert_eq!(c.identity.account, "123456789012");

        let args = ServeArgs {
            listen: Some("127.0.0.2:9000".into()),
            data_dir: Some("/tmp/y".into()),
            ..ServeArgs::default()
        };
        let c = resolve(args, &[("AWS_REGION", "ap-south-1"), ("AWS_DEFAULT_REGION", "eu-west-1")]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.2:9000");
        assert_eq!(c.data_dir, PathBuf::from("/tmp/y"));
        assert_eq!(c.identity.region, "ap-south-1");
    }

    #[test]
    fn aws_is_offline_by_default_with_placeholder_keys() {
        let c = resolve(ServeArgs::default(), &[]).unwrap();
        assert_eq!(c.credentials, CredentialSettings::default());
        assert_eq!(c.credentials.mode, CredentialMode::Static);
        assert_eq!(c.credentials.static_keys, crate::endpoints::credentials::placeholder_keys());
        assert_eq!(c.credentials.session_duration, Duration::from_secs(3600));
        assert_eq!(c.aws, crate::aws::Settings::new("us-east-1"));
        assert_eq!(c.aws.own_identity, OwnIdentity::DefaultChain);
    }

    #[test]
    fn static_keys_come_from_ecsd_static_then_aws_variables() {
        let c = resolve(
            ServeArgs::default(),
            &[
                ("AWS_ACCESS_KEY_ID", "AKIAOWN"),
                ("AWS_SECRET_ACCESS_KEY", "own-secret"),
                ("AWS_DEFAULT_REGION", "eu-west-1"),
            ],
        )
        .unwrap();
        assert_eq!(c.credentials.static_keys, Keys::new("AKIAOWN", "own-secret", None));
        assert_eq!(c.aws.region, "eu-west-1");
        let c = resolve(
            ServeArgs::default(),
            &[
                ("AWS_ACCESS_KEY_ID", "AKIAOWN"),
                ("AWS_SECRET_ACCESS_KEY", "own-secret"),
                ("ECSD_STATIC_ACCESS_KEY_ID", "AKIASTATIC"),
                ("ECSD_STATIC_SECRET_ACCESS_KEY", "static-secret"),
                ("ECSD_STATIC_SESSION_TOKEN", "static-token"),
            ],
        )
        .unwrap();
        assert_eq!(c.credentials.static_keys, Keys::new("AKIASTATIC", "static-secret", Some("static-token")));
        // A half-set standard pair is not ecsd's to reject: the placeholders stay.
        let c = resolve(ServeArgs::default(), &[("AWS_ACCESS_KEY_ID", "AKIAOWN")]).unwrap();
        assert_eq!(c.credentials.static_keys, crate::endpoints::credentials::placeholder_keys());
    }

    #[test]
    fn an_sts_endpoint_selects_sts_unless_forced() {
        let c = resolve(
            ServeArgs::default(),
            &[("STS_ENDPOINT", "http://127.0.0.1:5000"), ("ECS_ENDPOINT_AWS_PROFILE", "dev")],
        )
        .unwrap();
        assert_eq!(c.credentials.mode, CredentialMode::Sts);
        assert_eq!(c.aws.own_identity, OwnIdentity::Profile("dev".into()));
        let c = resolve(
            ServeArgs::default(),
            &[
                ("AWS_ENDPOINT_URL_STS", "http://127.0.0.1:1"),
                ("STS_ENDPOINT", "http://127.0.0.1:2"),
                ("ECSD_CREDENTIALS", "static"),
            ],
        )
        .unwrap();
        assert_eq!(c.aws.endpoints.get(Service::Sts), Some("http://127.0.0.1:1"));
        assert_eq!(c.credentials.mode, CredentialMode::Static);
        let c = resolve(ServeArgs::default(), &[("ECSD_CREDENTIALS", "sts")]).unwrap();
        assert_eq!((c.credentials.mode, c.aws.endpoints.get(Service::Sts)), (CredentialMode::Sts, None));
        let c = resolve(
            ServeArgs::default(),
            &[
                ("ECS_ENDPOINT_AWS_ACCESS_KEY_ID", "AKIADAEMON"),
                ("ECS_ENDPOINT_AWS_SECRET_ACCESS_KEY", "daemon-secret"),
                ("ECS_ENDPOINT_AWS_PROFILE", "ignored"),
            ],
        )
        .unwrap();
        assert_eq!(c.aws.own_identity, OwnIdentity::Keys(Keys::new("AKIADAEMON", "daemon-secret", None)));
    }

    #[test]
    fn aws_endpoints_take_the_standard_names_first() {
        let c = resolve(
            ServeArgs::default(),
            &[
                ("AWS_ENDPOINT_URL_SECRETSMANAGER", "http://127.0.0.1:1"),
                ("SECRET_MANAGER_ENDPOINT_URL", "http://127.0.0.1:2"),
                ("SSM_ENDPOINT_URL", " https://ssm.local/ "),
                ("IAM_ENDPOINT", "http://127.0.0.1:3"),
                ("AWS_ENDPOINT_URL_CLOUDWATCH_LOGS", "http://127.0.0.1:4"),
                ("AWS_ENDPOINT_URL", "http://127.0.0.1:8000"),
            ],
        )
        .unwrap();
        let e = &c.aws.endpoints;
        assert_eq!(e.get(Service::SecretsManager), Some("http://127.0.0.1:1"));
        assert_eq!(e.get(Service::Ssm), Some("https://ssm.local"));
        assert_eq!(e.get(Service::Iam), Some("http://127.0.0.1:3"));
        assert_eq!(e.get(Service::Logs), Some("http://127.0.0.1:4"));
        // AWS_ENDPOINT_URL is ecsd's own address for the CLI, never where ecsd calls AWS.
        assert_eq!((e.get(Service::S3), e.get(Service::Sts), e.get(Service::Ecr)), (None, None, None));
        let c = resolve(
            ServeArgs::default(),
            &[
                ("AWS_ENDPOINT_URL_SECRETS_MANAGER", "http://127.0.0.1:5"),
                ("AWS_ENDPOINT_URL_SECRETSMANAGER", "http://127.0.0.1:1"),
            ],
        )
        .unwrap();
        assert_eq!(c.aws.endpoints.get(Service::SecretsManager), Some("http://127.0.0.1:5"));
        let c = resolve(ServeArgs::default(), &[("AWS_ENDPOINT_URL_LOGS", "http://127.0.0.1:6")]).unwrap();
        assert_eq!(c.aws.endpoints.get(Service::Logs), Some("http://127.0.0.1:6"));
    }

    #[test]
    fn bad_aws_settings_name_the_variable_and_never_a_secret() {
        let err = |vars: &[(&str, &str)]| resolve(ServeArgs::default(), vars).unwrap_err().to_string();
        assert_eq!(err(&[("ECSD_CREDENTIALS", "iam")]), "ECSD_CREDENTIALS=iam: expected sts or static");
        assert_eq!(
            err(&[("STS_ENDPOINT", "localhost:5000")]),
            "STS_ENDPOINT=localhost:5000: not an http:// or https:// URL"
        );
        assert_eq!(
            err(&[("SSM_ENDPOINT_URL", "ssm.local")]),
            "SSM_ENDPOINT_URL=ssm.local: not an http:// or https:// URL"
        );
        assert_eq!(
            err(&[("ECS_ENDPOINT_AWS_SECRET_ACCESS_KEY", "very-secret")]),
            "ECS_ENDPOINT_AWS_ACCESS_KEY_ID=: required when ECS_ENDPOINT_AWS_SECRET_ACCESS_KEY is set"
        );
        assert_eq!(
            err(&[("ECSD_STATIC_ACCESS_KEY_ID", "AKIA")]),
            "ECSD_STATIC_SECRET_ACCESS_KEY=: required when ECSD_STATIC_ACCESS_KEY_ID is set"
        );
        assert_eq!(
            err(&[("ECSD_STATIC_SESSION_TOKEN", "very-token")]),
            "ECSD_STATIC_ACCESS_KEY_ID=: required when ECSD_STATIC_SESSION_TOKEN is set"
        );
    }

    #[test]
    fn image_settings_follow_the_agent() {
        use crate::engine::images::PullBehavior;
        let c = resolve(ServeArgs::default(), &[("HOME", "/home/u")]).unwrap();
        assert_eq!(c.images.pull_behavior, PullBehavior::Default);
        assert_eq!(c.images.registry.pull_timeout, Duration::from_secs(7200));
        assert_eq!(c.images.cleanup.interval, Duration::from_secs(1800));
        assert_eq!(c.images.docker_config, Some(PathBuf::from("/home/u/.docker")));
        let c = resolve(
            ServeArgs::default(),
            &[
                ("ECS_IMAGE_PULL_BEHAVIOR", "prefer-cached"),
                ("ECS_IMAGE_PULL_INACTIVITY_TIMEOUT", "5s"),
                ("ECS_IMAGE_CLEANUP_INTERVAL", "5m"),
                ("ECS_NUM_IMAGES_DELETE_PER_CYCLE", "0"),
                ("ECSD_INSECURE_REGISTRIES", "reg.local:5000, other.local"),
                ("DOCKER_CONFIG", "/etc/docker-cfg"),
                ("ECS_ENGINE_AUTH_TYPE", "docker"),
                ("ECS_ENGINE_AUTH_DATA", r#"{"reg.local:5000":{"username":"u","password":"p"}}"#),
            ],
        )
        .unwrap();
        assert_eq!(c.images.pull_behavior, PullBehavior::PreferCached);
        assert_eq!(c.images.registry.inactivity_timeout, Duration::from_secs(60));
        assert_eq!(c.images.cleanup.interval, Duration::from_secs(1800));
        assert_eq!(c.images.cleanup.per_cycle, 5);
        assert_eq!(c.images.registry.insecure, vec!["reg.local:5000", "other.local"]);
        assert_eq!(c.images.docker_config, Some(PathBuf::from("/etc/docker-cfg")));
        assert!(!c.images.engine_auth.is_empty());
        let e = resolve(
            ServeArgs::default(),
            &[("ECS_ENGINE_AUTH_TYPE", "docker"), ("ECS_ENGINE_AUTH_DATA", "{\"r\": s3cret")],
        )
        .unwrap_err();
        assert_eq!(e.name, "ECS_ENGINE_AUTH_DATA");
        assert!(!e.to_string().contains("s3cret"), "{e}");
        let e = resolve(ServeArgs::default(), &[("ECSD_REGISTRY_MIRRORS", "mirror.local")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "ECSD_REGISTRY_MIRRORS=mirror.local: each mirror is an http:// or https:// URL"
        );
    }

    #[test]
    fn durations_parse_like_the_agent() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("45"), Some(Duration::from_secs(45)));
        assert_eq!(parse_duration("3 days"), None);
        let e = resolve(ServeArgs::default(), &[("ECS_CONTAINER_STOP_TIMEOUT", "0s")]).unwrap_err();
        assert_eq!(e.to_string(), "ECS_CONTAINER_STOP_TIMEOUT=0s: must be at least 1s");
    }

    #[test]
    fn exec_settings_have_defaults_and_name_bad_values() {
        let c = resolve(ServeArgs::default(), &[]).unwrap();
        assert_eq!(c.exec, crate::exec::ExecSettings::default());
        assert_eq!(c.exec.idle_timeout, Duration::from_secs(1200));
        let c = resolve(
            ServeArgs::default(),
            &[
                ("ECSD_EXEC_IDLE_TIMEOUT", "90s"),
                ("ECSD_EXEC_MAX_SESSIONS", "3"),
                ("ECSD_EXEC_URL", "wss://exec.example/ecsd/"),
            ],
        )
        .unwrap();
        assert_eq!(c.exec.idle_timeout, Duration::from_secs(90));
        assert_eq!(c.exec.max_sessions_per_task, 3);
        assert_eq!(c.exec.url.as_deref(), Some("wss://exec.example/ecsd/"));
        let err = |vars: &[(&str, &str)]| resolve(ServeArgs::default(), vars).unwrap_err().to_string();
        assert_eq!(
            err(&[("ECSD_EXEC_URL", "http://x")]),
            "ECSD_EXEC_URL=http://x: not a ws:// or wss:// URL"
        );
        assert_eq!(
            err(&[("ECSD_EXEC_MAX_SESSIONS", "0")]),
            "ECSD_EXEC_MAX_SESSIONS=0: not a whole number of sessions, at least 1"
        );
        assert_eq!(
            err(&[("ECSD_EXEC_IDLE_TIMEOUT", "soon")]),
            "ECSD_EXEC_IDLE_TIMEOUT=soon: not a duration such as 30s, 2m or 1h30m"
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = resolve(ServeArgs::default(), &[("ECSD_LISTEN", "localhost")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "ECSD_LISTEN=localhost: not an IP address and port such as 127.0.0.1:8000 (port 0 picks a free port)"
        );
        let e = resolve(ServeArgs::default(), &[("ECSD_ACCOUNT_ID", "12")]).unwrap_err();
        assert_eq!(e.to_string(), "ECSD_ACCOUNT_ID=12: an AWS account id is exactly 12 digits");
        let e = resolve(ServeArgs::default(), &[("ECS_ENDPOINT_URL", "moto:5000")]).unwrap_err();
        assert_eq!(e.name, "ECS_ENDPOINT_URL");
        let args = ServeArgs { listen: Some("nope".into()), ..ServeArgs::default() };
        assert_eq!(resolve(args, &[]).unwrap_err().name, "--listen");
    }

    #[test]
    fn ecs_config_sits_below_the_environment_and_above_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let ecs = dir.path().join("ecs.config");
        let toml = dir.path().join("config.toml");
        std::fs::write(
            &ecs,
            "# agent settings\nECS_CLUSTER=prod\nECS_RESERVED_PORTS=[22, 9000]\nECS_LOGLEVEL=debug\n\
             ECS_CONTAINER_STOP_TIMEOUT=\"10s\"\nECS_ENGINE_TASK_CLEANUP_WAIT_DURATION=2h\n\
             ECS_NO_SUCH=1\nECS_UPDATES_ENABLED=true\nECS_SKIP_LOCALHOST_TRAFFIC_FILTER=true\n\
             ECS_RESERVED_MEMORY=256\nECS_INSTANCE_ATTRIBUTES={\"stack\": \"prod\"}\n",
        )
        .unwrap();
        std::fs::write(&toml, "[tasks]\nreserved_ports = [22]\n").unwrap();
        let path = ecs.to_str().unwrap();
        let args = ServeArgs { config: Some(toml.clone()), ..ServeArgs::default() };
        let c = resolve(args.clone(), &[("ECSD_ECS_CONFIG", path)]).unwrap();
        assert_eq!(c.cluster, "prod");
        // ecs.config over the config file.
        assert_eq!(c.network.reserved_ports, [22, 9000]);
        assert_eq!(c.log_filter, "debug");
        assert_eq!(c.stop_timeout, Duration::from_secs(10));
        assert_eq!(c.retention, Duration::from_secs(7200));
        assert_eq!(c.firewall, Firewall { localhost_filter: false, block_offhost_introspection: true });
        assert_eq!(c.instance.reserved_memory_mib, 256);
        assert_eq!(c.instance.attributes.get("stack").map(String::as_str), Some("prod"));
        assert_eq!(
            c.warnings,
            [
                format!("{path}: ECS_NO_SUCH: not an ECS agent variable ecsd knows; ignored"),
                format!(
                    "{path}: ECS_UPDATES_ENABLED: an ECS agent variable ecsd does not honour yet; ignored"
                ),
            ]
        );
        // The environment over ecs.config; ecsd's own names over the agent's.
        let c = resolve(
            args,
            &[
                ("ECSD_ECS_CONFIG", path),
                ("ECS_CLUSTER", "dev"),
                ("ECS_RESERVED_PORTS", "[2222]"),
                ("RUST_LOG", "ecsd=trace"),
                ("ECSD_TASK_RETENTION", "5m"),
            ],
        )
        .unwrap();
        assert_eq!(c.cluster, "dev");
        assert_eq!(c.network.reserved_ports, [2222]);
        assert_eq!(c.log_filter, "ecsd=trace");
        assert_eq!(c.retention, Duration::from_secs(300));
        // Defaults without any of it.
        let c = resolve(ServeArgs::default(), &[("ECSD_ECS_CONFIG", "")]).unwrap();
        assert_eq!(c.cluster, "default");
        assert_eq!(c.introspection, Some("127.0.0.1:51678".parse().unwrap()));
        assert_eq!(c.firewall, Firewall { localhost_filter: true, block_offhost_introspection: true });
        assert_eq!(c.network.reserved_ports_udp, Vec::<u16>::new());
    }

    #[test]
    fn bad_ecs_config_values_and_files_are_start_up_errors() {
        let dir = tempfile::tempdir().unwrap();
        let ecs = dir.path().join("ecs.config");
        let path = ecs.to_str().unwrap().to_owned();
        let with = |text: &str| {
            std::fs::write(&ecs, text).unwrap();
            resolve(ServeArgs::default(), &[("ECSD_ECS_CONFIG", &path)]).unwrap_err().to_string()
        };
        assert_eq!(
            with("ECS_LOGLEVEL=loud\n"),
            "ECS_LOGLEVEL=loud: expected debug, info, warn, error or crit"
        );
        assert_eq!(
            with("ECS_CLUSTER=my cluster\n"),
            "ECS_CLUSTER=my cluster: a cluster name is up to 255 letters, digits, hyphens and underscores"
        );
        assert_eq!(
            with("ECS_CONTAINER_STOP_TIMEOUT=soon\n"),
            "ECS_CONTAINER_STOP_TIMEOUT=soon: not a duration such as 30s, 2m or 1h30m"
        );
        assert_eq!(
            with("ECS_RESERVED_PORTS_UDP=53\n"),
            "ECS_RESERVED_PORTS_UDP=53: '53' is not a JSON list of ports such as [53]"
        );
        assert_eq!(
            with("ECS_ALLOW_OFFHOST_INTROSPECTION_ACCESS=yes\n"),
            "ECS_ALLOW_OFFHOST_INTROSPECTION_ACCESS=yes: expected true or false"
        );
        assert_eq!(
            with("ECS_CLUSTER=a\nECS CLUSTER=b\n"),
            format!(
                "ECSD_ECS_CONFIG={path}: line 2: \"ECS CLUSTER\" is not a variable name (letters, digits and _, not starting with a digit)"
            )
        );
        std::fs::remove_file(&ecs).unwrap();
        let e = resolve(ServeArgs::default(), &[("ECSD_ECS_CONFIG", &path)]).unwrap_err();
        assert_eq!(e.name, "ECSD_ECS_CONFIG");
        let e = resolve(ServeArgs::default(), &[("ECSD_INTROSPECTION_LISTEN", "51678")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "ECSD_INTROSPECTION_LISTEN=51678: not an IP address and port such as 127.0.0.1:51678, or off"
        );
        let c = resolve(ServeArgs::default(), &[("ECSD_INTROSPECTION_LISTEN", "off")]).unwrap();
        assert_eq!(c.introspection, None);
    }

    #[test]
    fn the_upstream_ecs_is_an_aws_endpoint_with_a_region_and_a_signature_mode() {
        let c = resolve(
            ServeArgs::default(),
            &[("ECS_ENDPOINT_URL", "http://127.0.0.1:5000"), ("ECS_ENDPOINT_AWS_REGION", "us-west-2")],
        )
        .unwrap();
        assert_eq!(c.aws.endpoints.get(Service::Ecs), Some("http://127.0.0.1:5000"));
        assert_eq!(c.ecs_endpoint_region.as_deref(), Some("us-west-2"));
        assert_eq!(c.forward_signature, ForwardSignature::Resign);
        let c = resolve(ServeArgs::default(), &[("ECSD_FORWARD_SIGNATURE", "passthrough")]).unwrap();
        assert_eq!(c.forward_signature, ForwardSignature::Passthrough);
        let e = resolve(ServeArgs::default(), &[("ECSD_FORWARD_SIGNATURE", "none")]).unwrap_err();
        assert_eq!(e.to_string(), "ECSD_FORWARD_SIGNATURE=none: expected aws or passthrough");
        let e = resolve(ServeArgs::default(), &[("ECS_ENDPOINT_AWS_REGION", "US West")]).unwrap_err();
        assert_eq!(e.to_string(), "ECS_ENDPOINT_AWS_REGION=US West: not a region name such as us-west-2");
    }
}
