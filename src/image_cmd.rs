//! `ecsd image import`, `pull`, `ls` and `rm`: against the runtime `ecsd serve` runs tasks on
//! (containerd: the configured socket, else the data dir's embedded containerd; or ecsd's
//! Podman service), with the registry settings and credentials a task would get (ECR with
//! ecsd's own AWS identity).

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ecsd::config::{
    Config, ImportArgs, LsArgs, OutputFormat, PullArgs, RmArgs, RuntimeArgs, RuntimeChoice, ServeArgs,
};
use ecsd::engine::registry_auth::{AwsKeys, KeysError, RegistryAuth};
use ecsd::runtime::import::ImportError;
use ecsd::runtime::registry::manifest::Platform;
use ecsd::runtime::{
    ContainerdOptions, ContainerdRuntime, PodmanOptions, PodmanRuntime, PullEvent, PullOptions, Runtime,
    reference,
};
use tokio::sync::mpsc;

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("ecsd: {message}");
    ExitCode::FAILURE
}

/// The runtime an image subcommand works on.
enum Target {
    Containerd { address: PathBuf, runtime: ContainerdRuntime },
    Podman(PodmanRuntime),
}

impl Target {
    fn runtime(&self) -> &dyn Runtime {
        match self {
            Target::Containerd { runtime, .. } => runtime,
            Target::Podman(runtime) => runtime,
        }
    }
}

/// Which runtime an image subcommand takes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Found {
    Containerd(PathBuf),
    Podman(PathBuf),
    /// `auto`, and nothing answers: the message names every place looked at.
    Nothing(String),
}

/// What answers where, as probed.
struct Probed<'a> {
    /// The configured (or default) containerd socket; `explicit` when the user named it.
    containerd: (&'a Path, bool),
    explicit: bool,
    /// The data dir's embedded containerd.
    embedded: (&'a Path, bool),
    /// ecsd's Podman service (or the one `--podman-socket` names).
    podman: (&'a Path, bool),
}

/// `--runtime containerd`: the named socket, else whichever containerd answers, else the
/// default (which then says it is not there). `podman`: ecsd's service. `auto`: a named
/// containerd socket; else the containerd that answers; else ecsd's Podman service if it
/// answers; else nothing, said with where ecsd looked.
fn pick(choice: RuntimeChoice, p: &Probed<'_>) -> Found {
    let containerd = || match (p.explicit, p.containerd.1, p.embedded.1) {
        (false, false, true) => Some(p.embedded.0.to_owned()),
        (true, _, _) | (false, true, _) => Some(p.containerd.0.to_owned()),
        (false, false, false) => None,
    };
    match choice {
        RuntimeChoice::Containerd => {
            Found::Containerd(containerd().unwrap_or_else(|| p.containerd.0.to_owned()))
        }
        RuntimeChoice::Podman => Found::Podman(p.podman.0.to_owned()),
        RuntimeChoice::Auto => match containerd() {
            Some(address) => Found::Containerd(address),
            None if p.podman.1 => Found::Podman(p.podman.0.to_owned()),
            None => Found::Nothing(format!(
                "no runtime of ecsd answers: not containerd at {}, not the data dir's embedded containerd at {}, \
                 not ecsd's Podman service at {}; is `ecsd serve` running (with this --data-dir)?",
                p.containerd.0.display(),
                p.embedded.0.display(),
                p.podman.0.display()
            )),
        },
    }
}

/// Whether, as a user other than root with no ECSD_ROOTLESS said either way, a rootless ecsd of
/// this user has its state here (its rootlesskit's directory).
fn rootless_by_default() -> bool {
    use std::os::unix::fs::MetadataExt;
    let user = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() != 0);
    user && std::env::var("ECSD_ROOTLESS").map_or(true, |v| v.is_empty())
        && ecsd::rootless::run_dir(&|k| std::env::var(k).ok()).is_some_and(|run| run.join("rk").is_dir())
}

/// The config and the runtime of an image subcommand (`importing`: containerd is not asked
/// for its version first); `Err` is the exit code.
async fn open(args: &RuntimeArgs, importing: bool) -> Result<(Config, Target), ExitCode> {
    let explicit = args.containerd_address.is_some()
        || std::env::var("ECSD_CONTAINERD_ADDRESS").is_ok_and(|v| !v.is_empty());
    let serve = ServeArgs {
        data_dir: args.data_dir.clone(),
        containerd_address: args.containerd_address.clone(),
        namespace: args.namespace.clone(),
        runtime: args.runtime,
        podman_socket: args.podman_socket.clone(),
        rootless: args.rootless || rootless_by_default(),
        ..ServeArgs::default()
    };
    let config = Config::resolve(&serve, &|k| std::env::var(k).ok()).map_err(|e| {
        eprintln!("ecsd: {e}");
        ExitCode::from(2)
    })?;
    let embedded = ecsd::embedded_layout(&config).socket;
    let podman = ecsd::podman_socket(&config);
    // libpod's _ping, not its version: that one runs conmon and the OCI runtime (~0.4 s).
    let podman_answers = || async { PodmanRuntime::new(PodmanOptions::new(&podman)).ping().await.is_ok() };
    // Only what the choice can take is asked.
    let answers = |a: PathBuf| {
        let namespace = config.namespace.clone();
        let ask = config.runtime != RuntimeChoice::Podman;
        async move { ask && ecsd::runtime::embedded::answers(&a, &namespace).await }
    };
    let probed = Probed {
        containerd: (&config.containerd_address, answers(config.containerd_address.clone()).await),
        explicit,
        embedded: (&embedded, answers(embedded.clone()).await),
        podman: (&podman, config.runtime == RuntimeChoice::Auto && podman_answers().await),
    };
    let target = match pick(config.runtime, &probed) {
        Found::Containerd(address) => {
            let options = ContainerdOptions::new(&address, &config.namespace, &config.data_dir.join("run"))
                .map_err(|e| fail(ecsd::error_chain(&e)))?;
            let runtime = ContainerdRuntime::new(options)
                .map_err(|e| fail(ecsd::error_chain(&e)))?
                .with_registry(config.images.registry.clone());
            // An import connects by itself, after what is about its argument (Podman's image).
            if !importing {
                runtime.version().await.map_err(|e| fail(ecsd::error_chain(&e)))?;
            }
            Target::Containerd { address, runtime }
        }
        Found::Podman(socket) => {
            let mut options = PodmanOptions::new(&socket);
            options.registry = config.images.registry.clone();
            let runtime = PodmanRuntime::new(options);
            runtime.ping().await.map_err(|e| {
                fail(format!("{}; is `ecsd serve --runtime podman` running?", ecsd::error_chain(&e)))
            })?;
            Target::Podman(runtime)
        }
        Found::Nothing(message) => return Err(fail(message)),
    };
    Ok((config, target))
}

/// `ecsd image import FILE` or `--from-podman REF`.
pub async fn import(args: &ImportArgs) -> ExitCode {
    let (config, target) = match open(&args.runtime, true).await {
        Ok(v) => v,
        Err(code) => return code,
    };
    use ecsd::runtime::import::{import, import_from_podman};
    let imported = match (&target, &args.from_podman, &args.file) {
        (Target::Podman(_), Some(_), _) => {
            eprintln!(
                "ecsd: --from-podman copies into ecsd's containerd, and ecsd runs on Podman here: save the \
                 image (podman image save -o FILE REF) and import FILE, or run ecsd serve --podman-socket \
                 with the host's Podman service to use its images as they are"
            );
            return ExitCode::from(2);
        }
        (Target::Containerd { address, .. }, Some(reference), _) => {
            import_from_podman(address, &config.namespace, &config.network.podman, reference)
                .await
                .map(|i| vec![format!("{} {}", i.name, i.digest)])
        }
        (Target::Containerd { address, .. }, None, Some(file)) => {
            import(address, &config.namespace, file).await
        }
        (Target::Podman(runtime), None, Some(file)) => runtime.import(file).await,
        (_, None, None) => {
            eprintln!("ecsd: name an image archive FILE, or an image of Podman's with --from-podman REF");
            return ExitCode::from(2);
        }
    };
    match imported {
        Ok(lines) => {
            for line in lines {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ecsd: {}", ecsd::error_chain(&e));
            // An image that is not there, or not a name: the command line is wrong.
            let usage = matches!(
                e,
                ImportError::Podman(ecsd::runtime::from_podman::PodmanImageError::NoSuchImage { .. })
                    | ImportError::Runtime(ecsd::runtime::RuntimeError::InvalidReference { .. })
            );
            if usage { ExitCode::from(2) } else { ExitCode::FAILURE }
        }
    }
}

/// ecsd's own AWS identity, for ECR logins and Secrets Manager from the command line.
struct OwnKeys(ecsd::aws::Aws);

#[async_trait]
impl AwsKeys for OwnKeys {
    async fn keys(&self) -> Result<ecsd::aws::Keys, KeysError> {
        self.0.own_keys().await.map(|k| k.keys).map_err(KeysError::Own)
    }
}

pub async fn pull(args: &PullArgs) -> ExitCode {
    let (config, target) = match open(&args.runtime, false).await {
        Ok(v) => v,
        Err(code) => return code,
    };
    let runtime = target.runtime();
    let platform = match args.platform.as_deref().map(|p| (p, Platform::parse(p))) {
        None => None,
        Some((_, Some(p))) => Some(p),
        Some((p, None)) => {
            eprintln!("ecsd: --platform {p}: not a linux platform such as linux/amd64 or linux/arm64/v8");
            return ExitCode::from(2);
        }
    };
    let r = match reference::parse_normalized(&args.reference) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let name = r.to_string();
    let aws = ecsd::aws::Aws::new(config.aws.clone());
    let auth = RegistryAuth::new(config.images.clone(), aws.clone());
    let credentials = match auth.for_image(&r, None, &OwnKeys(aws)).await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let display = tokio::spawn(show_progress(rx, std::io::stderr().is_terminal()));
    let started = Instant::now();
    let result = runtime.pull(&name, PullOptions { credentials, platform, progress: Some(tx) }).await;
    let _ = display.await;
    match result {
        Ok(image) => {
            eprintln!("pulled {} in {:.1} s", image.name, started.elapsed().as_secs_f64());
            println!("{} {}", image.name, image.digest);
            ExitCode::SUCCESS
        }
        Err(e) => fail(ecsd::error_chain(&e)),
    }
}

/// One line per layer, redrawn in place on a terminal; plain lines when a layer starts and
/// ends otherwise.
async fn show_progress(mut rx: mpsc::UnboundedReceiver<PullEvent>, terminal: bool) {
    let mut order: Vec<String> = Vec::new();
    let mut state: HashMap<String, (u64, u64, &'static str)> = HashMap::new();
    let mut drawn = 0usize;
    let mut last_draw = Instant::now() - Duration::from_secs(1);
    let mut err = std::io::stderr();
    while let Some(event) = rx.recv().await {
        match event {
            PullEvent::Resolved { reference, digest, layers } => {
                let _ = writeln!(err, "{reference}: resolved to {digest}, {} layer(s)", layers.len());
                for (d, size) in layers {
                    state.insert(d.clone(), (0, size, "waiting"));
                    order.push(d);
                }
            }
            PullEvent::Started { digest, total, offset } => {
                if let Some(s) = state.get_mut(&digest) {
                    *s = (offset, total, if offset > 0 { "resuming" } else { "downloading" });
                }
                if !terminal && order.contains(&digest) {
                    let from = if offset > 0 { format!(" from byte {offset}") } else { String::new() };
                    let _ = writeln!(err, "{}: downloading {}{from}", short(&digest), mib(total));
                }
            }
            PullEvent::Progress { digest, done, total } => {
                if let Some(s) = state.get_mut(&digest) {
                    *s = (done, total, "downloading");
                }
            }
            PullEvent::Done { digest, downloaded, cached } => {
                if let Some(s) = state.get_mut(&digest) {
                    *s = (s.1, s.1, if cached { "already present" } else { "done" });
                }
                if !terminal && order.contains(&digest) {
                    let what = if cached {
                        "already present".to_owned()
                    } else {
                        format!("done ({} received)", mib(downloaded))
                    };
                    let _ = writeln!(err, "{}: {what}", short(&digest));
                }
            }
            PullEvent::Unpacking => {
                if terminal {
                    redraw(&mut err, &order, &state, drawn);
                }
                let _ = writeln!(err, "unpacking");
                drawn = 0;
                continue;
            }
        }
        if terminal && last_draw.elapsed() >= Duration::from_millis(100) {
            drawn = redraw(&mut err, &order, &state, drawn);
            last_draw = Instant::now();
        }
    }
    if terminal && drawn > 0 {
        redraw(&mut err, &order, &state, drawn);
    }
}

fn redraw(
    err: &mut std::io::Stderr,
    order: &[String],
    state: &HashMap<String, (u64, u64, &'static str)>,
    drawn: usize,
) -> usize {
    let mut out = String::new();
    if drawn > 0 {
        out.push_str(&format!("\x1b[{drawn}A"));
    }
    for d in order {
        let (done, total, what) = state.get(d).copied().unwrap_or((0, 0, "waiting"));
        let width = 30usize;
        let filled =
            if total == 0 { 0 } else { ((done as f64 / total as f64) * width as f64) as usize }.min(width);
        out.push_str(&format!(
            "\x1b[2K{}  [{}{}] {:>9} / {:<9} {what}\n",
            short(d),
            "=".repeat(filled),
            " ".repeat(width - filled),
            mib(done),
            mib(total)
        ));
    }
    let _ = err.write_all(out.as_bytes());
    let _ = err.flush();
    order.len()
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

fn mib(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

pub async fn ls(args: &LsArgs) -> ExitCode {
    let (_, target) = match open(&args.runtime, false).await {
        Ok(v) => v,
        Err(code) => return code,
    };
    let runtime = target.runtime();
    let images = match runtime.images().await {
        Ok(i) => i,
        Err(e) => return fail(ecsd::error_chain(&e)),
    };
    let mut out = std::io::stdout().lock();
    if args.output == OutputFormat::Json {
        let _ = serde_json::to_writer_pretty(&mut out, &images);
        let _ = writeln!(out);
        return ExitCode::SUCCESS;
    }
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    let width = images.iter().map(|i| i.name.len()).max().unwrap_or(4).max(4);
    let _ = writeln!(out, "{:width$}  {:<19}  {:>10}  LAST USED", "NAME", "DIGEST", "SIZE");
    for i in &images {
        let used = match i.last_used_at {
            Some(t) => ago(now - t),
            None => "never".to_owned(),
        };
        let digest = format!("sha256:{}", short(&i.digest));
        let _ = writeln!(out, "{:width$}  {:<19}  {:>10}  {used}", i.name, digest, mib(i.size));
    }
    ExitCode::SUCCESS
}

fn ago(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s} seconds ago"),
        60..3600 => format!("{} minutes ago", s / 60),
        3600..86400 => format!("{} hours ago", s / 3600),
        _ => format!("{} days ago", s / 86400),
    }
}

pub async fn rm(args: &RmArgs) -> ExitCode {
    let (_, target) = match open(&args.runtime, false).await {
        Ok(v) => v,
        Err(code) => return code,
    };
    let runtime = target.runtime();
    let mut code = ExitCode::SUCCESS;
    for r in &args.references {
        let name = match reference::normalize(r) {
            Ok(n) => n,
            Err(e) => {
                code = fail(e);
                continue;
            }
        };
        match runtime.remove_image(&name).await {
            Ok(()) => println!("{name}"),
            Err(e) => code = fail(ecsd::error_chain(&e)),
        }
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probed<'a>(containerd: bool, explicit: bool, embedded: bool, podman: bool) -> Probed<'a> {
        Probed {
            containerd: (Path::new("/run/containerd/containerd.sock"), containerd),
            explicit,
            embedded: (Path::new("/d/containerd/containerd.sock"), embedded),
            podman: (Path::new("/d/podman/podman.sock"), podman),
        }
    }

    #[test]
    fn auto_takes_the_containerd_that_answers_then_ecsds_podman_service() {
        let c = |p: &str| Found::Containerd(PathBuf::from(p));
        let auto = |p: Probed<'_>| pick(RuntimeChoice::Auto, &p);
        assert_eq!(auto(probed(true, false, true, true)), c("/run/containerd/containerd.sock"));
        assert_eq!(auto(probed(false, false, true, true)), c("/d/containerd/containerd.sock"));
        assert_eq!(
            auto(probed(false, false, false, true)),
            Found::Podman(PathBuf::from("/d/podman/podman.sock"))
        );
        // A containerd socket the user named is the one, answering or not.
        assert_eq!(auto(probed(false, true, true, true)), c("/run/containerd/containerd.sock"));
        let Found::Nothing(message) = auto(probed(false, false, false, false)) else {
            panic!("found something")
        };
        assert!(
            message.contains("/run/containerd/containerd.sock")
                && message.contains("/d/containerd/containerd.sock")
                && message.contains("/d/podman/podman.sock"),
            "{message}"
        );
    }

    #[test]
    fn a_named_runtime_is_taken_as_named() {
        let p = pick(RuntimeChoice::Podman, &probed(true, false, true, false));
        assert_eq!(p, Found::Podman(PathBuf::from("/d/podman/podman.sock")));
        // containerd: whichever containerd answers, else its address (whose error then says so).
        let c = pick(RuntimeChoice::Containerd, &probed(false, false, true, true));
        assert_eq!(c, Found::Containerd(PathBuf::from("/d/containerd/containerd.sock")));
        let c = pick(RuntimeChoice::Containerd, &probed(false, false, false, true));
        assert_eq!(c, Found::Containerd(PathBuf::from("/run/containerd/containerd.sock")));
    }
}
