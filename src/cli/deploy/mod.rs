//! `ecsd deploy`: the template-in-the-image deploy in one command. A task definition
//! template (a file, or the `ECS_TASK_TEMPLATE` label of the image) is merged with
//! per-environment overlays and dynamic values, its roles and secrets resolved to ARNs, and
//! the result rendered, checked, or registered and rolled out.
//!
//! An API client like the other subcommands: ECS, IAM, STS, Secrets Manager and SSM calls go
//! through the `aws` module; the image label is read with the runtime's config-only
//! registry fetch. Secret values are never read.

mod apply;
pub mod args;
pub mod config;
mod diff;
mod ecs;
pub mod error;
pub mod input;
mod label;
pub mod merge;
pub mod normalise;
pub mod progress;
pub mod render;
pub mod resolve;
mod rollback;
mod run;
mod session;
mod status;
pub mod unified;
pub mod value;
mod wait;

use std::process::ExitCode;

pub use args::DeployArgs;

/// Runs `ecsd deploy`; errors are printed as `error: …` with their exit code.
pub async fn main(args: DeployArgs, env: &dyn Fn(&str) -> Option<String>) -> ExitCode {
    match run::run(&args, env).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
