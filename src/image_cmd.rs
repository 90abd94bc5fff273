//! `ecsd image pull`, `ls` and `rm`: against the containerd and namespace `ecsd serve` uses
//! (the configured socket, else the data dir's embedded containerd), with the registry
//! settings and credentials a task would get (ECR with ecsd's own AWS identity).

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ecsd::config::{Config, ContainerdArgs, LsArgs, OutputFormat, PullArgs, RmArgs, ServeArgs};
use ecsd::engine::registry_auth::{AwsKeys, KeysError, RegistryAuth};
use ecsd::runtime::registry::manifest::Platform;
use ecsd::runtime::{ContainerdOptions, ContainerdRuntime, PullEvent, PullOptions, Runtime, reference};
use tokio::sync::mpsc;

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("ecsd: {message}");
    ExitCode::FAILURE
}

/// The config and the runtime of an image subcommand; `Err` is the exit code.
async fn open(args: &ContainerdArgs) -> Result<(Config, ContainerdRuntime), ExitCode> {
    let explicit = args.containerd_address.is_some()
        || std::env::var("ECSD_CONTAINERD_ADDRESS").is_ok_and(|v| !v.is_empty());
    let serve = ServeArgs {
        data_dir: args.data_dir.clone(),
        containerd_address: args.containerd_address.clone(),
        namespace: args.namespace.clone(),
        ..ServeArgs::default()
    };
    let config = Config::resolve(&serve, &|k| std::env::var(k).ok()).map_err(|e| {
        eprintln!("ecsd: {e}");
        ExitCode::from(2)
    })?;
    let mut address = config.containerd_address.clone();
    if !explicit && !ecsd::runtime::embedded::answers(&address, &config.namespace).await {
        let embedded = ecsd::runtime::embedded::Layout::new(&config.data_dir).socket;
        if ecsd::runtime::embedded::answers(&embedded, &config.namespace).await {
            address = embedded;
        }
    }
    let options = ContainerdOptions::new(&address, &config.namespace, &config.data_dir.join("run"))
        .map_err(|e| fail(ecsd::error_chain(&e)))?;
    let runtime = ContainerdRuntime::new(options)
        .map_err(|e| fail(ecsd::error_chain(&e)))?
        .with_registry(config.images.registry.clone());
    runtime.version().await.map_err(|e| fail(ecsd::error_chain(&e)))?;
    Ok((config, runtime))
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
    let (config, runtime) = match open(&args.containerd).await {
        Ok(v) => v,
        Err(code) => return code,
    };
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
    let (_, runtime) = match open(&args.containerd).await {
        Ok(v) => v,
        Err(code) => return code,
    };
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
    let (_, runtime) = match open(&args.containerd).await {
        Ok(v) => v,
        Err(code) => return code,
    };
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
