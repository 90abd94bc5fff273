//! The `ecsd` binary: parse the command line, start tracing, run, wait for a signal.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use ecsd::config::{Cli, Command, Config, LogFormat, ServeArgs};
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(&args),
    }
}

fn serve(args: &ServeArgs) -> ExitCode {
    let config = match Config::resolve(args, &|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ecsd: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ecsd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let daemon = match ecsd::start(&config).await {
            Ok(d) => d,
            Err(e) => {
                let chain = ecsd::error_chain(&e);
                error!(error = %chain, "ecsd could not start");
                eprintln!("ecsd: {chain}");
                return ExitCode::FAILURE;
            }
        };
        println!("ecsd listening on http://{}", daemon.addr());
        let _ = std::io::stdout().flush();
        let signal = wait_for_signal().await;
        info!(signal, "shutting down");
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
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot watch SIGTERM; only SIGINT stops ecsd");
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}
