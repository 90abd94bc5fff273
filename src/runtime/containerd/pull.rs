//! Pulling an image from a registry into containerd 1.6, which has no Transfer service: what
//! `ctr images pull` does, in ecsd.
//!
//! Under a lease (`ecsd-pull-<uuid>`, expiring after a day so a crashed pull is reclaimed):
//! resolve the reference (the platform is chosen before anything is written, so an index
//! without this platform leaves no image behind) → every blob streamed into the content store
//! through Content.Write with its expected size and digest (containerd verifies both at
//! commit; never a whole layer in memory), layers in parallel (bounded), each under the
//! ingest ref `layer-<digest>`, so a download interrupted even by a crash resumes where the
//! ingest stands, and containerd's lock on that ref lets one writer at a time download a
//! blob → children before parents, each parent labelled with containerd's GC references to
//! its children and every blob with `containerd.io/distribution.source.<host>` → the image
//! record (target = what the tag resolved to) → unpack → lease released.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::connection::{Backoff, Conn};
use super::content::{self, ContentWriter, Opened};
use super::images::{self, Descriptor};
use crate::runtime::reference::{self, Reference};
use crate::runtime::registry::manifest::{self, Platform};
use crate::runtime::registry::{Credentials, Registries, RegistryError, Repository};
use crate::runtime::{Image, PullEvent, RuntimeError};

const PULL_LEASE_TTL: Duration = Duration::from_secs(24 * 3600);
/// One Content.Write message; containerd's own copy buffer is 1 MiB.
const WRITE_CHUNK: usize = 1 << 20;
/// Tries per blob when the registry fails in a way that may pass (reset, 5xx).
const BLOB_ATTEMPTS: u32 = 3;
/// The image label ecsd sets when it pulled the image (epoch seconds).
pub const LABEL_PULLED_AT: &str = "io.ecsd.image.pulled-at";
/// The image label ecsd sets when a task last used the image (epoch seconds).
pub const LABEL_LAST_USED: &str = "io.ecsd.image.last-used";

/// What a pull is asked to do.
#[derive(Debug, Default)]
pub struct PullOptions {
    pub credentials: Option<Credentials>,
    /// The platform to pull (the host's when `None`); only the host's is unpacked.
    pub platform: Option<Platform>,
    /// Progress, per layer, for a terminal.
    pub progress: Option<mpsc::UnboundedSender<PullEvent>>,
}

struct Ctx<'a> {
    conn: &'a Conn,
    lease: &'a str,
    progress: Option<&'a mpsc::UnboundedSender<PullEvent>>,
    source: (String, String),
    name: &'a str,
}

impl Ctx<'_> {
    fn send(&self, e: PullEvent) {
        if let Some(p) = self.progress {
            let _ = p.send(e);
        }
    }

    fn source_label(&self) -> HashMap<String, String> {
        HashMap::from([self.source.clone()])
    }
}

/// Pulls `name` (a normalised reference) into the connection's namespace.
pub(crate) async fn pull(
    conn: &Conn,
    registries: &Registries,
    name: &str,
    options: &PullOptions,
) -> Result<Image, RuntimeError> {
    let r = reference::parse_normalized(name)?;
    let name = r.to_string();
    let lease = format!("ecsd-pull-{}", uuid::Uuid::new_v4().simple());
    conn.create_lease(&lease, PULL_LEASE_TTL).await?;
    let started = std::time::Instant::now();
    let result = pull_leased(conn, registries, &r, &name, options, &lease).await;
    if let Err(e) = conn.delete_lease(&lease).await {
        warn!(lease, error = %e, "cannot delete the pull lease; it expires by itself");
    }
    if let Ok(image) = &result {
        info!(image = %name, digest = %image.digest, elapsed_ms = started.elapsed().as_millis() as u64, "pulled");
    }
    result
}

async fn pull_leased(
    conn: &Conn,
    registries: &Registries,
    r: &Reference,
    name: &str,
    options: &PullOptions,
    lease: &str,
) -> Result<Image, RuntimeError> {
    let failed = |error| RuntimeError::pull(name, error);
    let platform = options.platform.clone().unwrap_or_else(Platform::host);
    let res =
        manifest::resolve(registries, r, options.credentials.clone(), &platform).await.map_err(failed)?;
    let host = r.domain.split(':').next().unwrap_or(&r.domain).trim_start_matches('[').to_owned();
    let ctx = Ctx {
        conn,
        lease,
        progress: options.progress.as_ref(),
        source: (format!("containerd.io/distribution.source.{host}"), r.path.clone()),
        name,
    };
    let layers = &res.parsed.layers;
    ctx.send(PullEvent::Resolved {
        reference: name.to_owned(),
        digest: res.top.digest.clone(),
        layers: layers.iter().map(|l| (l.digest.clone(), l.size.max(0) as u64)).collect(),
    });

    // Children first: config and layers, downloaded in parallel.
    let mut blobs: Vec<(&str, &Descriptor)> = vec![("config", &res.parsed.config)];
    blobs.extend(layers.iter().map(|l| ("layer", l)));
    for (_, d) in &blobs {
        if d.size <= 0 || !d.digest.starts_with("sha256:") {
            return Err(failed(RegistryError::Verification {
                what: "descriptor",
                digest: d.digest.clone(),
                problem: "it has no size or no sha256 digest".into(),
            }));
        }
    }
    let parallel = registries.settings().max_concurrent_downloads.max(1);
    let mut pending = Vec::with_capacity(blobs.len());
    for (kind, d) in &blobs {
        pending.push(Box::pin(fetch_blob(&ctx, &res.repo, kind, d)));
    }
    let mut pending = pending.into_iter();
    let mut running = futures_util::stream::FuturesUnordered::new();
    running.extend(pending.by_ref().take(parallel));
    while let Some(done) = running.next().await {
        done?;
        running.extend(pending.next());
    }

    // The platform's manifest, labelled with its children.
    let mut labels = ctx.source_label();
    labels.insert("containerd.io/gc.ref.content.config".into(), res.parsed.config.digest.clone());
    for (i, l) in layers.iter().enumerate() {
        labels.insert(format!("containerd.io/gc.ref.content.l.{i}"), l.digest.clone());
    }
    let manifest_ref = format!("manifest-{}", res.manifest.digest);
    content::write_bytes(conn, lease, Some(&manifest_ref), &res.manifest.bytes, labels).await?;
    // The index, labelled with every entry (as containerd does, before platform filtering).
    if manifest::is_index(&res.top.media_type) {
        let mut labels = ctx.source_label();
        for (i, c) in res.children.iter().enumerate() {
            labels.insert(format!("containerd.io/gc.ref.content.m.{i}"), c.digest.clone());
        }
        let index_ref = format!("index-{}", res.top.digest);
        content::write_bytes(conn, lease, Some(&index_ref), &res.top.bytes, labels).await?;
    }

    let target = Descriptor {
        media_type: res.top.media_type.clone(),
        digest: res.top.digest.clone(),
        size: res.top.bytes.len() as i64,
        ..Default::default()
    };
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    let labels = HashMap::from([(LABEL_PULLED_AT.to_owned(), now.to_string())]);
    images::create_image(conn, name, &target, &labels).await?;

    if !platform.is_host() {
        info!(image = %name, %platform, "pulled for another platform: not unpacked");
        let config = images::read_blob(conn, name, &res.parsed.config.digest, images::JSON_BLOB_MAX).await?;
        let (config, _) = images::parse_config(&config)
            .map_err(|e| images::bad_json(name, &res.parsed.config.digest, &e))?;
        return Ok(Image {
            name: name.to_owned(),
            digest: res.top.digest.clone(),
            config_digest: res.parsed.config.digest.clone(),
            config,
        });
    }
    ctx.send(PullEvent::Unpacking);
    let resolved = images::resolve_target(conn, name, &target).await?;
    images::ensure_unpacked(conn, &resolved).await?;
    Ok(resolved.image)
}

/// Streams blob `d` into the content store under ingest `<kind>-<digest>`, resuming an
/// ingest an earlier (maybe crashed) pull left.
async fn fetch_blob(
    ctx: &Ctx<'_>,
    repo: &Repository<'_>,
    kind: &str,
    d: &Descriptor,
) -> Result<(), RuntimeError> {
    let failed = |error| RuntimeError::pull(ctx.name, error);
    let size = d.size as u64;
    let ingest = format!("{kind}-{}", d.digest);
    let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(2));
    let mut attempts = 0;
    loop {
        let mut w = match ContentWriter::open(ctx.conn, ctx.lease, &ingest, size, Some(&d.digest)).await? {
            Opened::Exists => {
                content::set_labels(ctx.conn, &d.digest, merged_source(ctx, &d.digest).await?).await?;
                ctx.send(PullEvent::Done { digest: d.digest.clone(), downloaded: 0, cached: true });
                return Ok(());
            }
            Opened::Locked => {
                // Another pull is downloading this blob: wait for it (or its crash) to end.
                ctx.conn.server_version().await?;
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
            Opened::Writer(w) => w,
        };
        let offset = u64::try_from(w.offset).unwrap_or(0);
        if offset > size {
            w.restart().await?;
        }
        let resumed = u64::try_from(w.offset).unwrap_or(0);
        ctx.send(PullEvent::Started { digest: d.digest.clone(), total: size, offset: resumed });
        let result = if resumed == size { Ok(0) } else { download(ctx, repo, &mut w, &d.digest, size).await };
        match result {
            Ok(downloaded) => {
                let labels = merged_source(ctx, &d.digest).await?;
                match w.commit(size, &d.digest, labels).await {
                    Ok(()) => {
                        debug!(digest = %d.digest, downloaded, resumed_at = resumed, "blob committed");
                        ctx.send(PullEvent::Done {
                            digest: d.digest.clone(),
                            downloaded,
                            cached: resumed == size,
                        });
                        return Ok(());
                    }
                    Err(RuntimeError::WrongState { message, .. }) => {
                        // Size or digest did not verify: what the ingest holds is garbage.
                        if let Err(e) = content::abort(ctx.conn, &ingest).await {
                            warn!(ingest, error = %e, "cannot abort a download that failed verification");
                        }
                        return Err(failed(RegistryError::Verification {
                            what: "blob",
                            digest: d.digest.clone(),
                            problem: message,
                        }));
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(DownloadError::Registry(e)) if e.is_transient() && attempts + 1 < BLOB_ATTEMPTS => {
                attempts += 1;
                warn!(digest = %d.digest, error = %e, attempt = attempts, "blob download failed; resuming");
                tokio::time::sleep(Duration::from_millis(500) * attempts).await;
            }
            Err(DownloadError::Registry(e)) => return Err(failed(e)),
            Err(DownloadError::Runtime(e)) => return Err(e),
        }
    }
}

enum DownloadError {
    Registry(RegistryError),
    Runtime(RuntimeError),
}

/// Copies the blob from where the ingest stands to its end; returns the bytes received.
async fn download(
    ctx: &Ctx<'_>,
    repo: &Repository<'_>,
    w: &mut ContentWriter,
    digest: &str,
    size: u64,
) -> Result<u64, DownloadError> {
    let offset = u64::try_from(w.offset).unwrap_or(0);
    let mut stream = repo.blob(digest, offset).await.map_err(DownloadError::Registry)?;
    if stream.start != offset {
        // The registry sends the whole blob: start the ingest over.
        w.restart().await.map_err(DownloadError::Runtime)?;
    }
    let mut done = stream.start;
    let mut received = 0u64;
    let mut buf: Vec<u8> = Vec::with_capacity(WRITE_CHUNK);
    let mut last_report = 0u64;
    while let Some(chunk) = stream.chunk().await.map_err(DownloadError::Registry)? {
        received += chunk.len() as u64;
        done += chunk.len() as u64;
        if done > size {
            return Err(DownloadError::Registry(RegistryError::Verification {
                what: "blob",
                digest: digest.to_owned(),
                problem: format!("the registry sent more than its {size} bytes"),
            }));
        }
        buf.extend_from_slice(&chunk);
        if buf.len() >= WRITE_CHUNK {
            w.write(std::mem::replace(&mut buf, Vec::with_capacity(WRITE_CHUNK)))
                .await
                .map_err(DownloadError::Runtime)?;
        }
        if done - last_report >= 256 << 10 {
            last_report = done;
            ctx.send(PullEvent::Progress { digest: digest.to_owned(), done, total: size });
        }
    }
    if !buf.is_empty() {
        w.write(buf).await.map_err(DownloadError::Runtime)?;
    }
    ctx.send(PullEvent::Progress { digest: digest.to_owned(), done, total: size });
    Ok(received)
}

/// The distribution-source label of `digest` with this repository added to the ones it
/// names already (sorted, deduplicated, comma-joined, as containerd keeps it).
async fn merged_source(ctx: &Ctx<'_>, digest: &str) -> Result<HashMap<String, String>, RuntimeError> {
    let (key, repo) = &ctx.source;
    let existing = content::content_info(ctx.conn, digest)
        .await?
        .and_then(|i| i.labels.get(key).cloned())
        .unwrap_or_default();
    let mut repos: Vec<&str> = existing.split(',').filter(|s| !s.is_empty()).collect();
    repos.push(repo);
    repos.sort_unstable();
    repos.dedup();
    let value = repos.join(",");
    // containerd's label limit: key and value together within 4 KiB.
    if key.len() + value.len() > 4096 {
        return Ok(HashMap::new());
    }
    Ok(HashMap::from([(key.clone(), value)]))
}
