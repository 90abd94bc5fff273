//! The `ecsd` binary: parse the command line, start tracing, run, wait for a signal.

use std::io::Write;
use std::process::ExitCode;

mod image_cmd;

use clap::Parser;
use ecsd::config::{
    CleanupArgs, Cli, Command, Config, DoctorArgs, ImageCommand, LogFormat, LogsArgs, OutputFormat,
    ServeArgs, ServicesArgs,
};
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(&args),
        Command::Logs(args) => logs(&args),
        Command::Exec(args) => ecsd::cli::exec::main(args, &env),
        Command::Image(ImageCommand::Import(args)) => client_runtime(image_cmd::import(&args)),
        Command::Image(ImageCommand::Pull(args)) => client_runtime(image_cmd::pull(&args)),
        Command::Image(ImageCommand::Ls(args)) => client_runtime(image_cmd::ls(&args)),
        Command::Image(ImageCommand::Rm(args)) => client_runtime(image_cmd::rm(&args)),
        Command::Services(args) => services(&args),
        Command::Doctor(args) => doctor(&args),
        Command::Cleanup(args) => client_runtime(cleanup(args)),
        Command::Deploy(args) => client_runtime(ecsd::cli::deploy::main(*args, &env)),
        Command::LogDriver(args) => ecsd::runtime::logs::run_log_driver(args),
    }
}

/// `ecsd doctor`: the host's facts and what they mean.
fn doctor(args: &DoctorArgs) -> ExitCode {
    let config = match client_config(ServeArgs {
        containerd_address: args.containerd_address.clone(),
        ..ServeArgs::default()
    }) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let facts = ecsd::host::HostFacts::probe(
        &ecsd::host::RealHost,
        &config.containerd_address,
        &config.network.slirp4netns,
    );
    let mut findings = facts.findings();
    // A user with rootlesskit installed: whether the rest of its set-up is there too.
    if facts.euid != 0 && facts.rootlesskit.is_some() && facts.uidmap {
        let finding = match ecsd::rootless::preflight(&ecsd::host::RealHost, &env, &owner_of) {
            Ok(plan) => ecsd::host::Finding {
                level: ecsd::host::Level::Ok,
                text: format!(
                    "ecsd serve --rootless can start: subordinate ids found, state in {}, runtime files in {}",
                    config.data_dir.display(),
                    plan.run_dir.display()
                ),
            },
            Err(e) => ecsd::host::Finding { level: ecsd::host::Level::Blocker, text: e.to_string() },
        };
        match finding.level {
            ecsd::host::Level::Blocker => findings.insert(0, finding),
            _ => findings.push(finding),
        }
    }
    let can_serve = findings.iter().all(|f| f.level != ecsd::host::Level::Blocker);
    let text = match args.output {
        OutputFormat::Json => {
            let all = serde_json::json!({ "facts": facts, "findings": findings, "canServe": can_serve });
            format!("{}\n", serde_json::to_string_pretty(&all).unwrap_or_default())
        }
        OutputFormat::Table => {
            let path = |p: &Option<std::path::PathBuf>| {
                p.as_ref().map_or("not found".into(), |p| p.display().to_string())
            };
            let mut out = String::new();
            let facts_text = [
                ("user", format!("uid {}{}", facts.euid, if facts.rootless { " (rootless)" } else { "" })),
                (
                    "containerd",
                    format!(
                        "{}; socket {} {}",
                        path(&facts.containerd.binary),
                        facts.containerd.socket.display(),
                        if facts.containerd.answers { "answers" } else { "does not answer" }
                    ),
                ),
                (
                    "podman",
                    format!(
                        "{}; socket {} {}",
                        path(&facts.podman.binary),
                        facts.podman.socket.display(),
                        if facts.podman.answers { "answers" } else { "does not answer" }
                    ),
                ),
                (
                    "cgroups",
                    format!("{:?}{}", facts.cgroup, if facts.cgroup_delegated { ", delegated" } else { "" })
                        .to_lowercase(),
                ),
                (
                    "OCI runtimes",
                    facts.oci_runtimes.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
                ),
                ("netavark", path(&facts.netavark)),
                ("slirp4netns", path(&facts.slirp4netns)),
                ("/dev/net/tun", if facts.tun_usable { "usable" } else { "not usable by this user" }.into()),
                (
                    "rootlesskit",
                    format!(
                        "{}; newuidmap/newgidmap {}",
                        path(&facts.rootlesskit),
                        if facts.uidmap { "installed" } else { "not installed" }
                    ),
                ),
                (
                    "unprivileged ports from",
                    facts.unprivileged_port_start.map_or("unknown".into(), |p| p.to_string()),
                ),
            ];
            for (name, value) in facts_text {
                out.push_str(&format!("{name:<24}{value}\n"));
            }
            out.push('\n');
            for f in &findings {
                let level = match f.level {
                    ecsd::host::Level::Ok => "ok",
                    ecsd::host::Level::Note => "note",
                    ecsd::host::Level::Blocker => "BLOCKER",
                };
                out.push_str(&format!("{level:<8}{}\n", f.text));
            }
            out
        }
    };
    let _ = std::io::stdout().write_all(text.as_bytes());
    if can_serve { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// Runs a client subcommand on a small async runtime.
fn client_runtime(fut: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r.block_on(fut),
        Err(e) => {
            eprintln!("ecsd: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The configuration a client subcommand shares with `ecsd serve` (data dir, containerd).
fn client_config(serve: ServeArgs) -> Result<Config, ExitCode> {
    Config::resolve(&serve, &env).map_err(|e| {
        eprintln!("ecsd: {e}");
        ExitCode::from(2)
    })
}

fn logs(args: &LogsArgs) -> ExitCode {
    let config = match client_config(ServeArgs { data_dir: args.data_dir.clone(), ..ServeArgs::default() }) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let id = args.task.rsplit('/').next().unwrap_or(&args.task);
    let task_dir = config.data_dir.join("tasks").join(id);
    if !task_dir.is_dir() {
        eprintln!(
            "ecsd: no task {id} in {}: it is unknown here, or it stopped and expired",
            config.data_dir.display()
        );
        return ExitCode::FAILURE;
    }
    let mut names: Vec<String> = std::fs::read_dir(&task_dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().join("logs").is_dir())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let name = match (&args.container, names.as_slice()) {
        (Some(n), _) if names.contains(n) => n.clone(),
        (Some(n), _) => {
            eprintln!("ecsd: task {id} has no logs of a container named {n}; it has: {}", names.join(", "));
            return ExitCode::FAILURE;
        }
        (None, [only]) => only.clone(),
        (None, []) => {
            eprintln!("ecsd: task {id} has no container logs yet");
            return ExitCode::FAILURE;
        }
        (None, many) => {
            eprintln!("ecsd: task {id} has several containers; name one of: {}", many.join(", "));
            return ExitCode::from(2);
        }
    };
    let mut out = std::io::stdout().lock();
    match ecsd::runtime::logs::read_logs(&task_dir.join(name).join("logs"), args.follow, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ecsd: cannot read the logs: {e}");
            ExitCode::FAILURE
        }
    }
}

/// ecs-init's post-stop: the firewall rules of a crashed ecsd, as its configuration (the
/// environment and ecs.config) planned them.
async fn cleanup(args: CleanupArgs) -> ExitCode {
    let config = match client_config(ServeArgs { namespace: args.namespace, ..ServeArgs::default() }) {
        Ok(c) => c,
        Err(code) => return code,
    };
    use std::os::unix::fs::MetadataExt;
    if !std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0) {
        println!("not root: ecsd adds no firewall rules, so there are none to remove");
        return ExitCode::SUCCESS;
    }
    let plan = ecsd::network::firewall::FirewallPlan {
        localhost_filter: config.firewall.localhost_filter,
        introspection_port: None,
    };
    let runner = std::sync::Arc::new(ecsd::network::Processes::default());
    let firewall = ecsd::network::firewall::HostFirewall::new(
        runner,
        &config.namespace,
        plan,
        std::path::Path::new("/proc/sys"),
    );
    match firewall.remove_leftovers().await {
        Ok(true) => {
            println!("removed the firewall rules tagged {}", firewall.tag());
            ExitCode::SUCCESS
        }
        Ok(false) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ecsd: {}", ecsd::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn services(args: &ServicesArgs) -> ExitCode {
    client_runtime(services_output(args))
}

async fn services_output(args: &ServicesArgs) -> ExitCode {
    use ecsd::cli::services::{Query, fetch, json, table};
    let query = Query {
        endpoint: args.endpoint(&env),
        cluster: args.cluster.clone(),
        services: args.services.clone(),
    };
    match fetch(&query).await {
        Ok(services) => {
            let text = match args.output {
                OutputFormat::Table => table(&services),
                OutputFormat::Json => json(&services) + "\n",
            };
            let mut out = std::io::stdout().lock();
            match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ecsd: cannot write the output: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("ecsd: {}", ecsd::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The uid owning `path` (`None` when it cannot be read).
fn owner_of(path: &std::path::Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.uid())
}

/// `ecsd serve --rootless` outside its namespace: checks the user's set-up, then becomes
/// rootlesskit running this ecsd again (so the pid the user started is rootlesskit's, and
/// killing it ends the whole namespace).
fn reexec_rootless() -> ExitCode {
    use std::os::unix::process::CommandExt;
    let plan = match ecsd::rootless::preflight(&ecsd::host::RealHost, &env, &owner_of) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ecsd: {e}");
            return ExitCode::from(2);
        }
    };
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ecsd: cannot find this program's path to run it under rootlesskit: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = plan.prepare() {
        eprintln!("ecsd: {}", ecsd::error_chain(&e));
        return ExitCode::FAILURE;
    }
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let e = plan.command(&exe, &args).exec();
    let e = ecsd::rootless::RootlessError::Exec { program: plan.rootlesskit.clone(), source: e };
    eprintln!("ecsd: {}", ecsd::error_chain(&e));
    ExitCode::FAILURE
}

fn serve(args: &ServeArgs) -> ExitCode {
    let config = match Config::resolve(args, &|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ecsd: {e}");
            return ExitCode::from(2);
        }
    };
    if config.rootless {
        if !ecsd::rootless::inside(&env) {
            return reexec_rootless();
        }
        if let Err(e) = ecsd::rootless::prepare_inside(std::path::Path::new("/run")) {
            eprintln!("ecsd: {}", ecsd::error_chain(&e));
            return ExitCode::FAILURE;
        }
    }
    init_tracing(&config);
    for warning in &config.warnings {
        warn!("{warning}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ecsd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        // Handlers go in before anything is announced, so a signal right after the
        // "listening" line is a clean shutdown, not the default death.
        let signals = match Signals::new() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("ecsd: cannot watch SIGTERM and SIGINT: {e}");
                return ExitCode::FAILURE;
            }
        };
        let daemon = match ecsd::start(&config).await {
            Ok(d) => d,
            Err(e) => {
                eprintln!("ecsd: {}", ecsd::error_chain(&e));
                return ExitCode::FAILURE;
            }
        };
        println!("ecsd listening on http://{}", daemon.addr());
        let _ = std::io::stdout().flush();
        // systemd (Type=notify) hears READY=1 once the API answers a request.
        let notify_socket = env("NOTIFY_SOCKET");
        if notify_socket.is_some() {
            let ready = ecsd::notify::answers(daemon.addr(), std::time::Duration::from_secs(30))
                .await
                .and_then(|()| {
                    let status = format!(
                        "READY=1\nSTATUS=serving the ECS API on {}\nMAINPID={}",
                        daemon.addr(),
                        std::process::id()
                    );
                    ecsd::notify::notify(notify_socket.as_deref(), &status)
                });
            if let Err(e) = ready {
                warn!(error = %e, "cannot tell systemd ecsd is ready");
            }
        }
        let signal = signals.wait().await;
        info!(signal, "shutting down");
        if let Err(e) = ecsd::notify::notify(notify_socket.as_deref(), "STOPPING=1") {
            warn!(error = %e, "cannot tell systemd ecsd is stopping");
        }
        match daemon.shutdown().await {
            Ok(()) => {
                info!("stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                error!(error = %e, "shutdown failed");
                ExitCode::FAILURE
            }
        }
    })
}

fn init_tracing(config: &Config) {
    let filter = EnvFilter::try_new(&config.log_filter).unwrap_or_else(|e| {
        eprintln!("ecsd: RUST_LOG={}: {e}; using info", config.log_filter);
        EnvFilter::new("info")
    });
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// SIGTERM and SIGINT, watched from creation on.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    async fn wait(mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
