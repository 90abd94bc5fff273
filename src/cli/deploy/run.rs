//! The verbs: load the documents, assemble, resolve, then print (render), report (verify)
//! or roll out (apply).

use std::io::Write;
use std::path::Path;

use super::args::{DeployArgs, Flags, Output, Verb};
use super::error::DeployError;
use super::input::{FileRole, parse_set, read_document};
use super::progress::Progress;
use super::render::{Dynamic, assemble};
use super::resolve::{Resolved, Resolver};
use super::session::Session;
use super::value::Json;
use super::wait::Target;
use super::{apply, config, diff, label, rollback, session, status, wait};

/// The definition ready to register, and what was found on the way.
#[derive(Debug)]
pub struct Prepared {
    pub doc: Json,
    pub resolved: Vec<Resolved>,
    /// Where the template came from: a file or `label NAME of IMAGE@DIGEST`.
    pub template_source: String,
    pub sources: Vec<String>,
}

/// Runs `ecsd deploy` and returns its exit code; warnings, progress and (once the settings
/// are read) errors go to stderr through [`Progress`]. An error in the settings themselves is
/// returned.
pub async fn run(args: &DeployArgs, env: &dyn Fn(&str) -> Option<String>) -> Result<u8, DeployError> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| Path::new(".").to_owned());
    let flags = &config::resolve(args.flags.clone(), env, &cwd)?;
    let cluster = flags.cluster.clone().unwrap_or_else(|| "default".to_owned());
    let service = flags.service.clone().unwrap_or_default();
    let progress = Progress::new(flags.output() == Output::Json, &cluster, &service);
    let result = verb(args, flags, env, &progress).await;
    Ok(progress.finish(result))
}

async fn verb(
    args: &DeployArgs,
    flags: &Flags,
    env: &dyn Fn(&str) -> Option<String>,
    progress: &Progress,
) -> Result<u8, DeployError> {
    let session = session::open(flags, env).await?;
    let verb = args.verb.clone().unwrap_or(Verb::Apply);
    let needs_service = match verb {
        Verb::Apply => Some("apply"),
        Verb::Diff { .. } => Some("diff"),
        Verb::Status { .. } => Some("status"),
        Verb::Wait => Some("wait"),
        Verb::Rollback { .. } => Some("rollback"),
        Verb::Render | Verb::Verify => None,
    };
    let cluster = flags.cluster.clone().unwrap_or_else(|| "default".to_owned());
    let service = match (needs_service, &flags.service) {
        (Some(verb), None) => return Err(DeployError::NoService { verb }),
        (_, service) => service.clone().unwrap_or_default(),
    };
    let target = Target {
        client: &session.client,
        cluster: &cluster,
        service: &service,
        timeout: flags.timeout(),
        no_wait: flags.no_wait,
        until: flags.wait_until(),
        progress,
    };
    match verb {
        // The verbs about the service alone need no template.
        Verb::Status { events } => status::status(&session, &cluster, &service, events).await,
        Verb::Wait => wait::follow(&target).await,
        Verb::Rollback { to } => rollback::rollback(&target, to.as_deref()).await,
        Verb::Render => {
            let prepared = prepare(flags, &session, progress).await?;
            print(&(prepared.doc.stringify(flags.indent()) + "\n"))?;
            Ok(0)
        }
        Verb::Verify => {
            verify_report(flags, &prepare(flags, &session, progress).await?)?;
            Ok(0)
        }
        Verb::Diff { exit_code } => {
            diff::diff(flags, &session, &prepare(flags, &session, progress).await?, exit_code).await
        }
        Verb::Apply => {
            apply::apply(flags, &session, &prepare(flags, &session, progress).await?, progress).await
        }
    }
}

/// Steps 2–7 of the pipeline: template, overlays, dynamic values, merge, strip, resolve.
pub async fn prepare(flags: &Flags, session: &Session, progress: &Progress) -> Result<Prepared, DeployError> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| Path::new(".").to_owned());
    let image = flags.image();
    let (template, template_source, label_digest) = match (&flags.template, &image) {
        (Some(path), _) => (read_document(path, &cwd, FileRole::Template)?, path.display().to_string(), None),
        (None, Some(image)) => {
            let (doc, digest) = label::read(image, flags.template_label(), flags.platform(), session).await?;
            (doc, format!("label {} of {image}@{digest}", flags.template_label()), Some(digest))
        }
        (None, None) => return Err(DeployError::NoTemplate { label: flags.template_label().to_owned() }),
    };
    // Pinned to the digest the label was read from, so a tag moved meanwhile changes nothing.
    let image = match (image, flags.pin_digest) {
        (Some(image), true) => {
            let digest = match label_digest {
                Some(d) => d,
                None => label::digest(&image, flags.platform(), session).await?,
            };
            Some(label::pinned(&image, &digest))
        }
        (None, true) => return Err(DeployError::PinWithoutImage),
        (image, false) => image,
    };
    let mut overlays = Vec::new();
    for path in &flags.env_files {
        overlays.push((path.display().to_string(), read_document(path, &cwd, FileRole::Overlay)?));
    }
    let sets = flags.sets.iter().map(|s| parse_set(s)).collect::<Result<Vec<_>, _>>()?;
    let dynamic = Dynamic {
        image: image.clone(),
        execution_role: flags.execution_role.clone(),
        task_role: flags.task_role.clone(),
    };
    let (mut doc, warnings) = assemble(flags.merge(), template, &overlays, &dynamic, &sets)?;
    for w in warnings {
        progress.warn(&w.to_string());
    }
    let mut resolver =
        Resolver::new(&session.client, &session.region, flags.secret_prefix(), flags.account_id.clone());
    resolver.lookup = flags.secrets_lookup.unwrap_or_default();
    resolver.resolve(&mut doc).await?;
    for w in &resolver.warnings {
        progress.warn(&w.to_string());
    }
    let sources = overlays.into_iter().map(|(name, _)| name).collect();
    Ok(Prepared { doc, resolved: resolver.resolved, template_source, sources })
}

fn verify_report(flags: &Flags, prepared: &Prepared) -> Result<(), DeployError> {
    let family = prepared.doc.get("family").and_then(Json::as_str).unwrap_or("(no family)");
    match flags.output() {
        Output::Json => {
            let resolved: Vec<serde_json::Value> = prepared
                .resolved
                .iter()
                .map(|r| serde_json::json!({"what": r.what, "how": r.how, "arn": r.arn}))
                .collect();
            let report = serde_json::json!({
                "family": family,
                "template": prepared.template_source,
                "overlays": prepared.sources,
                "resolved": resolved,
                "ok": true,
            });
            print(&format!("{report}\n"))
        }
        Output::Text => {
            let mut text = format!("template: {}\n", prepared.template_source);
            for s in &prepared.sources {
                text.push_str(&format!("overlay: {s}\n"));
            }
            for r in &prepared.resolved {
                text.push_str(&format!("{} <- {}: {}\n", r.what, r.how, r.arn));
            }
            text.push_str(&format!("verify OK: {family} renders and resolves; nothing was written\n"));
            print(&text)
        }
    }
}

pub fn print(text: &str) -> Result<(), DeployError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(DeployError::Output(e)),
        _ => Ok(()),
    }
}
