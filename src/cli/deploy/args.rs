//! The flags of `ecsd deploy` and its verbs.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use super::merge::Mode;

/// Arguments of `ecsd deploy`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Examples:
  ecsd deploy --endpoint-url http://127.0.0.1:8000 --cluster demo --service web \\
      --image 127.0.0.1:5000/web:1.4.2 --env staging.json --execution-role ecsTaskExecutionRole
  ecsd deploy render --merge lodash --registry 1234.dkr.ecr.eu-west-1.amazonaws.com \\
      --app meteorapp --tag 1.4.2 --env staging.json --execution-role ecsTaskExecutionRole
  ecsd deploy verify --template ecs_task_template.json --image busybox --env staging.json

Exit codes: 0 done (or nothing to deploy), 1 unexpected or transport failure, 2 bad input,
3 a role, secret, parameter or image label could not be resolved, 4 ECS rejected a request,
5 the deployment failed or was rolled back, 6 waiting timed out, 7 the deployment failed and
so did --rollback-on-failure's rollback, 130/143 interrupted by SIGINT/SIGTERM while waiting
(the deployment goes on); diff --exit-code: 10 when the definitions differ.

Settings: a flag, else ECSD_DEPLOY_<FLAG> (e.g. ECSD_DEPLOY_EXECUTION_ROLE), else
ecsd-deploy.toml (keys are the long flags; [env.NAME] tables chosen by --environment NAME).")]
pub struct DeployArgs {
    #[command(subcommand)]
    pub verb: Option<Verb>,
    #[command(flatten)]
    pub flags: Flags,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Verb {
    /// Render, register the task definition and update the service (the default verb).
    Apply,
    /// Print the final RegisterTaskDefinition input (what `aws ecs register-task-definition
    /// --cli-input-json` accepts). Resolves roles and secrets; writes nothing.
    Render,
    /// Resolve everything (template, overlays, roles, secrets) and report; writes nothing.
    Verify,
    /// Show how the rendered definition differs from the service's current revision, ECS's
    /// defaults and orderings ignored (a unified diff on stdout); writes nothing.
    Diff {
        /// Exit 10 when they differ, 0 when they are the same (1 stays "an error").
        #[arg(long)]
        exit_code: bool,
    },
    /// Show the service's revision, counts, deployments and last events.
    Status {
        /// How many of the newest events to show.
        #[arg(long, value_name = "N", default_value_t = 10)]
        events: usize,
    },
    /// Wait on the service's deployment in flight, with apply's outcomes and exit codes.
    Wait,
    /// Stop the deployment in flight (ECS rolls it back), or else update the service to the
    /// last revision a deployment completed with; then wait like apply.
    Rollback {
        /// The revision to roll back to instead (family:revision or ARN).
        #[arg(long, value_name = "FAMILY:REV")]
        to: Option<String>,
    },
}

/// When a wait on a deployment is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum WaitUntil {
    /// The deployment is the service's only one, with all its tasks running.
    #[default]
    Stable,
    /// ECS calls the deployment done: its service deployment SUCCESSFUL (where ECS offers
    /// service deployments; else its rolloutState COMPLETED), older tasks may still drain.
    Deployed,
}

/// How a secret without `valueFrom` is found by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum SecretsLookup {
    /// DescribeSecret per name (can be allowed per secret in IAM).
    #[default]
    Describe,
    /// One paginated ListSecrets (the post's way), names matched exactly.
    List,
}

impl SecretsLookup {
    /// The Secrets Manager operation it calls.
    pub fn operation(self) -> &'static str {
        match self {
            SecretsLookup::Describe => "DescribeSecret",
            SecretsLookup::List => "ListSecrets",
        }
    }
}

/// How the rendered definition is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
}

/// The flags every verb takes (they may come before or after the verb).
#[derive(Debug, Clone, Args)]
pub struct Flags {
    /// The ECS endpoint, e.g. http://127.0.0.1:8000 for a local ecsd. [default: AWS_ENDPOINT_URL_ECS,
    /// AWS_ENDPOINT_URL, else ECS of the region]
    #[arg(long, global = true, value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// The AWS region. [default: AWS_REGION, AWS_DEFAULT_REGION, the profile's, us-east-1]
    #[arg(long, global = true, value_name = "REGION")]
    pub region: Option<String>,
    /// The AWS profile for credentials and region.
    #[arg(long, global = true, value_name = "NAME")]
    pub profile: Option<String>,
    /// The cluster (name or ARN). [default: default]
    #[arg(long, global = true, value_name = "NAME")]
    pub cluster: Option<String>,
    /// The service to deploy to (required by apply, diff, status, wait and rollback).
    #[arg(long, global = true, value_name = "NAME")]
    pub service: Option<String>,
    /// The image of the first container, and where the template label is read from.
    #[arg(long, global = true, value_name = "URI", conflicts_with_all = ["registry", "app", "tag"])]
    pub image: Option<String>,
    /// With --app and --tag: the image is REGISTRY/APP:TAG (the post's variables).
    #[arg(long, global = true, value_name = "REGISTRY", requires_all = ["app", "tag"])]
    pub registry: Option<String>,
    #[arg(long, global = true, value_name = "APP", requires_all = ["registry", "tag"])]
    pub app: Option<String>,
    #[arg(long, global = true, value_name = "TAG", requires_all = ["registry", "app"])]
    pub tag: Option<String>,
    /// A template file (JSON or YAML) instead of the image's label.
    #[arg(long, global = true, value_name = "FILE")]
    pub template: Option<PathBuf>,
    /// The image label holding the template. [default: ECS_TASK_TEMPLATE]
    #[arg(long, global = true, value_name = "NAME")]
    pub template_label: Option<String>,
    /// An environment overlay (JSON, or YAML when named .yaml/.yml), merged in order.
    #[arg(long = "env", global = true, value_name = "FILE")]
    pub env_files: Vec<PathBuf>,
    /// The environment: its overlay NAME.json (or .yaml/.yml) in --env-dir, merged before the
    /// --env files, and the [env.NAME] table of ecsd-deploy.toml.
    #[arg(long, global = true, value_name = "NAME")]
    pub environment: Option<String>,
    /// Where --environment's overlay is looked for. [default: .]
    #[arg(long, global = true, value_name = "DIR")]
    pub env_dir: Option<PathBuf>,
    /// Settings for the flags not given, below ECSD_DEPLOY_<FLAG> variables: a TOML file whose
    /// keys are the long flags. [default: ECSD_DEPLOY_CONFIG, else ./ecsd-deploy.toml if present]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A last-wins value at a JSON pointer, e.g. /containerDefinitions/0/cpu=256.
    #[arg(long = "set", global = true, value_name = "POINTER=JSON")]
    pub sets: Vec<String>,
    /// How overlays merge: strategic (lists of containers, environment, secrets... matched
    /// by key), lodash (the post's _.merge, byte for byte), merge-patch (RFC 7396).
    /// [default: strategic]
    #[arg(long = "merge", global = true, value_enum, value_name = "MODE")]
    pub merge: Option<Mode>,
    /// The task execution role, by name (looked up with iam:GetRole) or ARN.
    #[arg(long, global = true, value_name = "NAME|ARN")]
    pub execution_role: Option<String>,
    /// The task role, by name or ARN.
    #[arg(long, global = true, value_name = "NAME|ARN")]
    pub task_role: Option<String>,
    /// A secret without valueFrom named N is the Secrets Manager secret named PREFIX+N.
    #[arg(long, global = true, value_name = "PREFIX")]
    pub secret_prefix: Option<String>,
    /// How a secret without valueFrom is found: DescribeSecret per name, or one ListSecrets
    /// with exact name matching. [default: describe]
    #[arg(long, global = true, value_enum, value_name = "HOW")]
    pub secrets_lookup: Option<SecretsLookup>,
    /// The account for role ARNs when iam:GetRole is denied. [default: sts:GetCallerIdentity]
    #[arg(long, global = true, value_name = "ID")]
    pub account_id: Option<String>,
    /// Registries (host[:port]) reached over plain HTTP or without certificate checks;
    /// loopback registries always are.
    #[arg(long, global = true, value_name = "HOST")]
    pub insecure_registry: Vec<String>,
    /// The platform whose image config holds the label in a multi-platform image.
    /// [default: linux/amd64]
    #[arg(long, global = true, value_name = "OS/ARCH")]
    pub platform: Option<String>,
    /// The image by digest (repo@sha256:…) in the rendered definition: the digest the label
    /// was read from, else the one the tag resolves to now.
    #[arg(long, global = true)]
    pub pin_digest: bool,
    /// Indentation of the rendered JSON. [default: 2]
    #[arg(long, global = true, value_name = "N")]
    pub indent: Option<usize>,
    /// apply: render, resolve and compare with the service's current revision; write nothing.
    #[arg(long, global = true)]
    pub dry_run: bool,
    /// apply: register and update even when the rendered definition is unchanged.
    #[arg(long, global = true)]
    pub force_new_deployment: bool,
    /// apply, rollback: return once the service is updated, without waiting for the deployment.
    #[arg(long, global = true)]
    pub no_wait: bool,
    /// apply, wait, rollback: wait until the service is stable (only this deployment, all its
    /// tasks running) or until ECS calls the deployment deployed. [default: stable]
    #[arg(long, global = true, value_enum, value_name = "WHEN")]
    pub wait_until: Option<WaitUntil>,
    /// apply: the service's desired count, sent with UpdateService (also when the definition is
    /// unchanged). [default: keep the service's]
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(i32).range(0..))]
    pub desired_count: Option<i32>,
    /// apply: when the deployment fails or the wait times out, and ECS has not rolled it back
    /// itself, roll back as `ecsd deploy rollback` does; exit 5 when that worked, 7 when not.
    #[arg(long, global = true)]
    pub rollback_on_failure: bool,
    /// apply, wait, rollback: how long to wait for the deployment (e.g. 90s, 15m, 1h; bare numbers are
    /// seconds). [default: 15m]
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<std::time::Duration>,
    /// Progress on stderr as plain lines, or (json) one JSON object per line ending with a
    /// "result" object carrying the exit code; verify's report on stdout likewise. [default: text]
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    pub output: Option<Output>,
}

impl Flags {
    pub fn template_label(&self) -> &str {
        self.template_label.as_deref().unwrap_or("ECS_TASK_TEMPLATE")
    }

    pub fn merge(&self) -> Mode {
        self.merge.unwrap_or_default()
    }

    pub fn secret_prefix(&self) -> &str {
        self.secret_prefix.as_deref().unwrap_or_default()
    }

    pub fn platform(&self) -> &str {
        self.platform.as_deref().unwrap_or("linux/amd64")
    }

    pub fn indent(&self) -> usize {
        self.indent.unwrap_or(2)
    }

    pub fn timeout(&self) -> std::time::Duration {
        self.timeout.unwrap_or(std::time::Duration::from_secs(15 * 60))
    }

    pub fn output(&self) -> Output {
        self.output.unwrap_or_default()
    }

    pub fn wait_until(&self) -> WaitUntil {
        self.wait_until.unwrap_or_default()
    }

    /// The image the flags name: --image, or REGISTRY/APP:TAG.
    pub fn image(&self) -> Option<String> {
        match (&self.image, &self.registry, &self.app, &self.tag) {
            (Some(image), ..) => Some(image.clone()),
            (None, Some(r), Some(a), Some(t)) => Some(format!("{}/{a}:{t}", r.trim_end_matches('/'))),
            _ => None,
        }
    }
}

/// `90s`, `15m`, `1h`, `1h30m` or bare seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("'{s}' is not a duration such as 90s, 15m or 1h");
    if let Ok(n) = s.parse::<u64>() {
        return Ok(std::time::Duration::from_secs(n));
    }
    let (mut total, mut number) = (0u64, String::new());
    for c in s.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: u64 = number.parse().map_err(|_| bad())?;
        number.clear();
        total += n * match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(bad()),
        };
    }
    if !number.is_empty() || s.is_empty() {
        return Err(bad());
    }
    Ok(std::time::Duration::from_secs(total))
}
