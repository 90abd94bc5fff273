//! Images as the ECS agent handles them: whether a task's image is pulled
//! (`ECS_IMAGE_PULL_BEHAVIOR`), what a failed pull does to the task, and the periodic cleanup
//! of images no task uses (`ECS_IMAGE_CLEANUP_*`).
//!
//! | behaviour | pulls when | a failed pull |
//! |---|---|---|
//! | `default` | always | runs from the local image if there is one, else fails the task |
//! | `always` | always | fails the task |
//! | `once` | ecsd has not pulled this name yet (an imported image is pulled once; cleanup forgets) | fails the task |
//! | `prefer-cached` | the image is not present | as `default`; image cleanup is off |
//!
//! What ecsd pulled and when a task last used an image are labels on containerd's image
//! records (`io.ecsd.image.pulled-at`, `io.ecsd.image.last-used`), so they survive restarts
//! and `ecsd image ls` shows them.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use tracing::{info, warn};

use crate::runtime::registry::RegistrySettings;
use crate::runtime::registry::credentials::EngineAuth;
use crate::runtime::{ImageSummary, Runtime, RuntimeError, reference};

/// `ECS_IMAGE_PULL_BEHAVIOR`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PullBehavior {
    #[default]
    Default,
    Always,
    Once,
    PreferCached,
}

impl PullBehavior {
    /// The agent's parsing: anything unknown is `default`.
    pub fn parse(s: &str) -> PullBehavior {
        match s.trim() {
            "always" => PullBehavior::Always,
            "once" => PullBehavior::Once,
            "prefer-cached" => PullBehavior::PreferCached,
            _ => PullBehavior::Default,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PullBehavior::Default => "default",
            PullBehavior::Always => "always",
            PullBehavior::Once => "once",
            PullBehavior::PreferCached => "prefer-cached",
        }
    }

    /// Whether a failed pull stops the task even when the image is present.
    pub fn pull_failure_is_fatal(self) -> bool {
        matches!(self, PullBehavior::Always | PullBehavior::Once)
    }
}

/// `ECS_*IMAGE*CLEANUP*` settings, with the agent's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanupSettings {
    /// `!ECS_DISABLE_IMAGE_CLEANUP`.
    pub enabled: bool,
    /// `ECS_IMAGE_CLEANUP_INTERVAL` (30m; less than 10m is taken as the default).
    pub interval: Duration,
    /// `ECS_IMAGE_MINIMUM_CLEANUP_AGE` (1h), since ecsd pulled the image.
    pub minimum_age: Duration,
    /// `ECS_NUM_IMAGES_DELETE_PER_CYCLE` (5).
    pub per_cycle: usize,
    /// `ECS_EXCLUDE_UNTRACKED_IMAGE`: `name:tag`s never removed.
    pub exclude: Vec<String>,
    /// `ECS_ENABLE_UNTRACKED_IMAGE_CLEANUP`: also remove images ecsd never pulled nor ran.
    pub untracked: bool,
    /// `NON_ECS_IMAGE_MINIMUM_CLEANUP_AGE` (1h), since the image was created.
    pub untracked_minimum_age: Duration,
}

impl Default for CleanupSettings {
    fn default() -> Self {
        CleanupSettings {
            enabled: true,
            interval: Duration::from_secs(30 * 60),
            minimum_age: Duration::from_secs(3600),
            per_cycle: 5,
            exclude: vec![],
            untracked: false,
            untracked_minimum_age: Duration::from_secs(3600),
        }
    }
}

/// Everything about images the daemon is configured with.
#[derive(Debug, Clone, Default)]
pub struct ImageSettings {
    pub pull_behavior: PullBehavior,
    /// Insecure registries, mirrors, timeouts, parallel downloads.
    pub registry: RegistrySettings,
    /// `ECS_ENGINE_AUTH_TYPE`/`ECS_ENGINE_AUTH_DATA`.
    pub engine_auth: EngineAuth,
    /// The docker config directory (`$DOCKER_CONFIG`, else `~/.docker`).
    pub docker_config: Option<PathBuf>,
    /// `ECSD_ECR_REGISTRIES`: registries (`host[:port]`, or `*` for all) that are ECR besides
    /// the `*.dkr.ecr.*.amazonaws.com` hosts.
    pub ecr_registries: Vec<String>,
    /// Whether `AWS_ENDPOINT_URL_ECR` names an ECR-compatible endpoint: then any
    /// `<account>.dkr.ecr.<region>.<domain>` host is ECR too.
    pub ecr_endpoint_configured: bool,
    pub cleanup: CleanupSettings,
}

/// What to do about one image of a task before its containers are created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    Pull,
    UseLocal,
}

/// The local copy of `name` among `local`: the image of that name, or, for a reference pinned
/// to a digest (`name@sha256:…`, as a service deployment runs it), an image with that digest.
pub fn local_copy<'a>(local: &'a [ImageSummary], name: &str) -> Option<&'a ImageSummary> {
    local.iter().find(|i| i.name == name).or_else(|| {
        let (_, digest) = name.split_once('@')?;
        local.iter().find(|i| i.digest == digest)
    })
}

/// Whether `behavior` pulls an image whose local copy is `local` (`None`: not present).
pub fn plan(behavior: PullBehavior, local: Option<&ImageSummary>) -> Plan {
    match (behavior, local) {
        (PullBehavior::Default | PullBehavior::Always, _) => Plan::Pull,
        (PullBehavior::Once, Some(i)) if i.pulled_at.is_some() => Plan::UseLocal,
        (PullBehavior::Once, _) => Plan::Pull,
        (PullBehavior::PreferCached, Some(_)) => Plan::UseLocal,
        (PullBehavior::PreferCached, None) => Plan::Pull,
    }
}

/// The images a cleanup cycle removes, in order: first the least recently used images ecsd
/// tracks (pulled or ran) that are old enough, no live task names, and are not excluded; then,
/// with untracked cleanup on, the smallest untracked ones old enough. At most `per_cycle`.
pub fn cleanup_candidates(
    images: &[ImageSummary],
    in_use: &HashSet<String>,
    settings: &CleanupSettings,
    now: f64,
) -> Vec<String> {
    let excluded: HashSet<String> = settings
        .exclude
        .iter()
        .filter_map(|e| reference::normalize(e).ok().or_else(|| Some(e.clone())))
        .collect();
    let eligible = |i: &&ImageSummary| !in_use.contains(&i.name) && !excluded.contains(&i.name);
    let mut tracked: Vec<&ImageSummary> = images
        .iter()
        .filter(eligible)
        .filter(|i| i.pulled_at.is_some() || i.last_used_at.is_some())
        .filter(|i| now - i.pulled_at.unwrap_or(i.created_at) >= settings.minimum_age.as_secs_f64())
        .collect();
    tracked.sort_by(|a, b| {
        let used = |i: &ImageSummary| i.last_used_at.or(i.pulled_at).unwrap_or(i.created_at);
        used(a).total_cmp(&used(b)).then_with(|| a.name.cmp(&b.name))
    });
    let mut out: Vec<String> = tracked.iter().take(settings.per_cycle).map(|i| i.name.clone()).collect();
    if settings.untracked && out.len() < settings.per_cycle {
        let mut untracked: Vec<&ImageSummary> = images
            .iter()
            .filter(eligible)
            .filter(|i| i.pulled_at.is_none() && i.last_used_at.is_none())
            .filter(|i| now - i.created_at >= settings.untracked_minimum_age.as_secs_f64())
            .collect();
        untracked.sort_by_key(|i| (i.size, i.name.clone()));
        let room = settings.per_cycle - out.len();
        out.extend(untracked.iter().take(room).map(|i| i.name.clone()));
    }
    out
}

/// One cleanup cycle against `runtime`: removes the candidates, one at a time; an image a
/// container still uses is kept (containerd refuses). Returns what was removed.
pub async fn clean(
    runtime: &dyn Runtime,
    in_use: &HashSet<String>,
    settings: &CleanupSettings,
    now: f64,
) -> Result<Vec<String>, RuntimeError> {
    let images = runtime.images().await?;
    let mut removed = Vec::new();
    for name in cleanup_candidates(&images, in_use, settings, now) {
        match runtime.remove_image(&name).await {
            Ok(()) => {
                info!(image = %name, "removed an unused image");
                removed.push(name);
            }
            Err(RuntimeError::ImageInUse { .. }) | Err(RuntimeError::ImageNotFound { .. }) => {}
            Err(e) => warn!(image = %name, error = %e, "cannot remove an unused image"),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_pinned_to_a_digest_finds_the_local_image_with_that_digest() {
        let mut busybox = img("docker.io/library/busybox:latest", None, None, 0.0, 1);
        busybox.digest = "sha256:aa".into();
        let local = vec![img("docker.io/library/alpine:latest", None, None, 0.0, 1), busybox];
        let found = |n: &str| local_copy(&local, n).map(|i| i.name.as_str());
        assert_eq!(found("docker.io/library/busybox:latest"), Some("docker.io/library/busybox:latest"));
        assert_eq!(
            found("docker.io/library/busybox:latest@sha256:aa"),
            Some("docker.io/library/busybox:latest")
        );
        assert_eq!(
            found("docker.io/library/busybox:latest@sha256:bb"),
            None,
            "another digest is not present"
        );
        assert_eq!(found("docker.io/library/nginx:latest"), None);
    }

    fn img(name: &str, pulled: Option<f64>, used: Option<f64>, created: f64, size: u64) -> ImageSummary {
        ImageSummary {
            name: name.into(),
            digest: String::new(),
            media_type: String::new(),
            size,
            created_at: created,
            pulled_at: pulled,
            last_used_at: used,
        }
    }

    #[test]
    fn pull_behaviours_decide_as_the_agent() {
        let pulled = img("a", Some(1.0), None, 1.0, 1);
        let imported = img("a", None, None, 1.0, 1);
        assert_eq!(plan(PullBehavior::Default, Some(&pulled)), Plan::Pull);
        assert_eq!(plan(PullBehavior::Always, Some(&pulled)), Plan::Pull);
        assert_eq!(plan(PullBehavior::Once, Some(&pulled)), Plan::UseLocal);
        assert_eq!(plan(PullBehavior::Once, Some(&imported)), Plan::Pull);
        assert_eq!(plan(PullBehavior::Once, None), Plan::Pull);
        assert_eq!(plan(PullBehavior::PreferCached, Some(&imported)), Plan::UseLocal);
        assert_eq!(plan(PullBehavior::PreferCached, None), Plan::Pull);
        assert_eq!(PullBehavior::parse("prefer-cached"), PullBehavior::PreferCached);
        assert_eq!(PullBehavior::parse("sometimes"), PullBehavior::Default);
        assert!(PullBehavior::Once.pull_failure_is_fatal() && !PullBehavior::Default.pull_failure_is_fatal());
    }

    #[test]
    fn cleanup_takes_the_least_recently_used_unused_old_images() {
        let h = 3600.0;
        let now = 100.0 * h;
        let images = vec![
            img("docker.io/library/old:1", Some(now - 10.0 * h), Some(now - 5.0 * h), 0.0, 10),
            img("docker.io/library/older:1", Some(now - 10.0 * h), Some(now - 9.0 * h), 0.0, 10),
            img("docker.io/library/young:1", Some(now - 600.0), None, 0.0, 10),
            img("docker.io/library/used:1", Some(now - 10.0 * h), None, 0.0, 10),
            img("docker.io/library/kept:1", Some(now - 10.0 * h), None, 0.0, 10),
            img("docker.io/library/imported:1", None, None, now - 10.0 * h, 10),
            img("docker.io/library/tiny:1", None, None, now - 10.0 * h, 1),
        ];
        let in_use = HashSet::from(["docker.io/library/used:1".to_owned()]);
        let settings = CleanupSettings { exclude: vec!["kept:1".into()], ..CleanupSettings::default() };
        assert_eq!(
            cleanup_candidates(&images, &in_use, &settings, now),
            vec!["docker.io/library/older:1", "docker.io/library/old:1"]
        );
        let one = CleanupSettings { per_cycle: 1, ..settings.clone() };
        assert_eq!(cleanup_candidates(&images, &in_use, &one, now), vec!["docker.io/library/older:1"]);
        let untracked = CleanupSettings { untracked: true, per_cycle: 3, ..settings };
        assert_eq!(
            cleanup_candidates(&images, &in_use, &untracked, now),
            vec!["docker.io/library/older:1", "docker.io/library/old:1", "docker.io/library/tiny:1"]
        );
    }
}
