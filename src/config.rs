//! Typed configuration: command-line flags over environment variables over defaults.
//!
//! The environment is read only here, through an injectable lookup, so tests build a
//! [`Config`] from a map.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::model::arn::Identity;

const DEFAULT_LISTEN: &str = "127.0.0.1:8000";
const DEFAULT_REGION: &str = "us-east-1";
const DEFAULT_ACCOUNT: &str = "000000000000";

/// ecsd: the Amazon ECS API on this host, running ECS tasks on containerd.
///
/// Point the aws CLI, boto3 or any AWS SDK at it with `--endpoint-url http://127.0.0.1:8000`.
#[derive(Debug, Parser)]
#[command(name = "ecsd", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: serve the ECS API until SIGTERM or SIGINT.
    Serve(ServeArgs),
}

/// Flags of `ecsd serve`. Each has an environment variable; a flag wins over it.
#[derive(Debug, Default, Clone, Args)]
#[command(after_help = "\
Environment:
  ECSD_LISTEN              address to listen on (as --listen)
  ECSD_DATA_DIR            state directory (as --data-dir)
  AWS_REGION               region in ARNs (else AWS_DEFAULT_REGION, else us-east-1)
  ECSD_ACCOUNT_ID          12-digit account id in ARNs (default 000000000000)
  ECS_ENDPOINT_URL         forward ECS operations ecsd does not implement to this endpoint
  RUST_LOG, ECSD_LOG       log filter, e.g. info or ecsd=debug (default info)")]
pub struct ServeArgs {
    /// Address to serve the ECS API on; port 0 picks a free port. The bound address is
    /// printed as `ecsd listening on http://ADDR`. [default: 127.0.0.1:8000]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,

    /// Directory for ecsd's state; one ecsd at a time may use it.
    /// [default: /var/lib/ecsd as root, else $XDG_DATA_HOME/ecsd]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
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
    pub log_format: LogFormat,
    pub log_filter: String,
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
    /// Resolves `args` against the environment `env` (a lookup such as `std::env::var`).
    pub fn resolve(args: &ServeArgs, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
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

        let data_dir = match &args.data_dir {
            Some(d) => d.clone(),
            None => match non_empty("ECSD_DATA_DIR") {
                Some(d) => PathBuf::from(d),
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

        let log_filter =
            non_empty("RUST_LOG").or_else(|| non_empty("ECSD_LOG")).unwrap_or_else(|| "info".to_owned());

        Ok(Config {
            listen,
            data_dir,
            identity: Identity { region, account },
            ecs_endpoint_url,
            log_format: args.log_format,
            log_filter,
        })
    }
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
}
