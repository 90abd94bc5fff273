//! `ecsd image import FILE`: loads an OCI image layout tar or a `docker save` tar (optionally
//! gzip-compressed) into containerd, names the images, and unpacks them for this host.
//!
//! The archive is read once, as a stream: every blob is written through Content.Write (with
//! its expected digest when the archive names it) under a lease, so nothing is collected
//! before an image references it. Images are named from the `io.containerd.image.name` or
//! `org.opencontainers.image.ref.name` annotations of `index.json`, or from `RepoTags` in a
//! docker `manifest.json`, normalised as Docker does.
//!
//! `--from-podman REF` reads the archive from `podman image save` as it is written, names
//! the one image in it REF (normalised), and records the digest the image's registry gave it
//! (Podman re-compresses layers on save, so the manifest written here has another digest):
//! tasks of the image then report the registry's digest as `imageDigest`, as if pulled.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use containerd_client::services::v1 as api;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::connection::{Conn, at};
use super::content::{self, ContentWriter, Opened, content_exists};
use super::images::{self as image, BlobKind, Descriptor, Index, Manifest};
use crate::runtime::from_podman::{self, PodmanImageError};
use crate::runtime::{RuntimeError, reference};

const IMPORT_LEASE_TTL: Duration = Duration::from_secs(3600);
const CHUNK: usize = 1 << 20;
/// index.json, manifest.json and friends.
const METADATA_MAX: u64 = 16 << 20;
const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The image label holding the digest the image's registry gives its manifest, when the
/// stored manifest has another (an image copied from Podman's store).
pub const LABEL_REGISTRY_DIGEST: &str = "io.ecsd.image.registry-digest";
/// The stored manifest digest that [`LABEL_REGISTRY_DIGEST`] stands for: the label counts
/// only while the image still names that manifest.
pub const LABEL_REGISTRY_DIGEST_OF: &str = "io.ecsd.image.registry-digest-of";

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read image archive {archive}")]
    Read { archive: String, source: std::io::Error },
    #[error("{archive} is not an image archive: {reason}")]
    Format { archive: String, reason: String },
    #[error(
        "{archive} has no image names (no io.containerd.image.name or org.opencontainers.image.ref.name annotation and no RepoTags); name the images when saving them"
    )]
    Unnamed { archive: String },
    #[error("{archive} holds {count} images where one was expected")]
    NotOne { archive: String, count: usize },
    #[error(transparent)]
    Podman(#[from] PodmanImageError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// An image archive to read.
enum Source {
    File(PathBuf),
    /// A stream (Podman's save), named for messages.
    Stream {
        name: String,
        reader: Box<dyn Read + Send>,
    },
}

impl Source {
    fn name(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Stream { name, .. } => name.clone(),
        }
    }

    fn open(self) -> std::io::Result<Box<dyn Read + Send>> {
        match self {
            Source::File(p) => Ok(Box::new(std::fs::File::open(p)?)),
            Source::Stream { reader, .. } => Ok(reader),
        }
    }
}

/// How to name what an archive holds: from the archive, or (`Some`) as this one image.
#[derive(Debug, Default)]
struct Naming {
    name: Option<String>,
    registry_digest: Option<String>,
}

/// What `ecsd image import --from-podman` made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FromPodman {
    /// The image's name in containerd.
    pub name: String,
    /// The digest tasks of it report: the registry's when Podman knows it, else the stored
    /// manifest's.
    pub digest: String,
    /// Whether that is the registry's digest.
    pub registry_digest: bool,
}

/// Imports the images in `file` into containerd at `address`, namespace `namespace`, and
/// returns their names.
pub async fn import(address: &Path, namespace: &str, file: &Path) -> Result<Vec<String>, ImportError> {
    let conn = connect(address, namespace).await?;
    let imported = import_on(&conn, Source::File(file.to_owned()), Naming::default()).await?;
    Ok(imported.into_iter().map(|(name, _)| name).collect())
}

/// Copies image `reference` of Podman's store (Podman's `podman` binary) into containerd at
/// `address`, namespace `namespace`, under the reference's normalised name.
pub async fn import_from_podman(
    address: &Path,
    namespace: &str,
    podman: &Path,
    reference: &str,
) -> Result<FromPodman, ImportError> {
    // Podman's save, its inspect and the connection to containerd go side by side (each
    // podman process costs about 100 ms). Podman's errors come first: they are about the
    // argument. Until the archive is read, dropping `save` stops Podman.
    let mut save = from_podman::Save::start(podman, reference)?;
    let (program, asked) = (podman.to_owned(), reference.to_owned());
    let inspecting = tokio::task::spawn_blocking(move || from_podman::inspect(&program, &asked));
    let (found, conn) = tokio::join!(inspecting, connect(address, namespace));
    let found = found.map_err(|e| ImportError::Read {
        archive: reference.to_owned(),
        source: std::io::Error::other(e),
    })??;
    let name = found.name_for(reference)?;
    let registry_digest = found.registry_digest(&name);
    let conn = conn?;
    let archive = format!("Podman's image {}", found.id);
    let Some(reader) = save.reader() else {
        let source = std::io::Error::other("podman image save gave no output pipe");
        return Err(ImportError::Read { archive, source });
    };
    let source = Source::Stream { name: archive.clone(), reader };
    let naming = Naming { name: Some(name.clone()), registry_digest: registry_digest.clone() };
    let imported = import_on(&conn, source, naming).await;
    let saved = tokio::task::spawn_blocking(move || save.finish())
        .await
        .map_err(|e| ImportError::Read { archive, source: std::io::Error::other(e) })?;
    let imported = match (imported, saved) {
        // What Podman says explains a short archive better than what was missing from it.
        (
            Err(
                ImportError::Read { .. }
                | ImportError::Format { .. }
                | ImportError::Unnamed { .. }
                | ImportError::NotOne { .. },
            ),
            Err(podman),
        ) => return Err(podman.into()),
        (Err(e), Err(podman)) => {
            debug!(error = %podman, "podman image save stopped as the import failed");
            return Err(e);
        }
        (imported, Ok(())) => imported?,
        // Every blob arrived with its digest checked: the image is whole whatever Podman says.
        (Ok(imported), Err(podman)) => {
            warn!(error = %podman, "podman image save failed after writing the whole image");
            imported
        }
    };
    let stored = imported.into_iter().next().map(|(_, d)| d).unwrap_or_default();
    Ok(FromPodman {
        name,
        registry_digest: registry_digest.is_some(),
        digest: registry_digest.unwrap_or(stored),
    })
}

async fn connect(address: &Path, namespace: &str) -> Result<Conn, ImportError> {
    let conn = Conn::new(address, namespace)?;
    conn.server_version().await?;
    Ok(conn)
}

/// Imports `source` and returns each image's name and stored target digest.
async fn import_on(
    conn: &Conn,
    source: Source,
    naming: Naming,
) -> Result<Vec<(String, String)>, ImportError> {
    let lease = format!("ecsd-import-{}", uuid::Uuid::new_v4().simple());
    conn.create_lease(&lease, IMPORT_LEASE_TTL).await?;
    let result = import_leased(conn, &lease, source, naming).await;
    if let Err(e) = conn.delete_lease(&lease).await {
        warn!(lease, error = %e, "cannot delete the import lease; it expires by itself");
    }
    result
}

async fn import_leased(
    conn: &Conn,
    lease: &str,
    source: Source,
    naming: Naming,
) -> Result<Vec<(String, String)>, ImportError> {
    let started = std::time::Instant::now();
    let file = source.name();
    let file = file.as_str();
    let archive = load_archive(conn, lease, source).await?;
    let mut images: Vec<(String, Descriptor)> = Vec::new();
    if let Some(index) = archive.small.get("index.json") {
        let index: Index = serde_json::from_slice(index)
            .map_err(|e| format_error(file, format!("index.json is not an OCI image index: {e}")))?;
        for d in &index.manifests {
            let name = match &naming.name {
                Some(n) => Some(n.clone()),
                None => oci_name(d),
            };
            if let Some(name) = name {
                let target = Descriptor { platform: None, annotations: BTreeMap::new(), ..d.clone() };
                images.push((name, target));
            }
        }
    }
    if images.is_empty()
        && let Some(manifest) = archive.small.get("manifest.json")
    {
        images = docker_images(conn, lease, file, &archive, manifest).await?;
    }
    if images.is_empty() {
        return Err(
            if archive.small.contains_key("index.json") || archive.small.contains_key("manifest.json") {
                ImportError::Unnamed { archive: file.to_owned() }
            } else {
                format_error(
                    file,
                    "it has neither index.json (OCI image layout) nor manifest.json (docker save)".into(),
                )
            },
        );
    }
    if naming.name.is_some() && images.len() != 1 {
        return Err(ImportError::NotOne { archive: file.to_owned(), count: images.len() });
    }

    let mut names = Vec::new();
    let mut imported = Vec::new();
    for (name, target) in &images {
        label_children(conn, name, target, 0).await?;
        let mut labels = HashMap::new();
        if let Some(d) = &naming.registry_digest {
            labels.insert(LABEL_REGISTRY_DIGEST.to_owned(), d.clone());
            labels.insert(LABEL_REGISTRY_DIGEST_OF.to_owned(), target.digest.clone());
        }
        image::create_image(conn, name, target, &labels).await?;
        if image::has_host_manifest(conn, name, target).await? {
            let resolved = image::resolve_target(conn, name, target).await?;
            image::ensure_unpacked(conn, &resolved).await?;
        } else {
            let (arch, _) = image::host_platform();
            warn!(image = %name, "imported without unpacking: no manifest for linux/{arch}");
        }
        if !names.contains(name) {
            names.push(name.clone());
            imported.push((name.clone(), target.digest.clone()));
        }
    }
    info!(archive = %file, images = ?names, elapsed_ms = started.elapsed().as_millis() as u64, "imported");
    Ok(imported)
}

pub(crate) fn format_error(file: &str, reason: String) -> ImportError {
    ImportError::Format { archive: file.to_owned(), reason }
}

/// The image name of an `index.json` entry: a full name annotation, or a ref name that is a
/// whole reference (a bare tag such as `latest` names nothing without a base name).
pub(crate) fn oci_name(d: &Descriptor) -> Option<String> {
    let full = d.annotations.get(ANNOTATION_IMAGE_NAME);
    let reference = d.annotations.get(ANNOTATION_REF_NAME).filter(|r| r.contains(['/', ':']));
    for raw in [full, reference].into_iter().flatten() {
        match reference::normalize(raw) {
            Ok(n) => return Some(n),
            Err(e) => warn!(name = %raw, error = %e, "ignoring an image name that is not a valid reference"),
        }
    }
    None
}

/// What the archive held: small metadata files, and where each blob went.
#[derive(Debug, Default)]
struct Archive {
    small: HashMap<String, Vec<u8>>,
    blobs: HashMap<String, Blob>,
    links: HashMap<String, String>,
}

#[derive(Debug, Clone)]
struct Blob {
    digest: String,
    size: i64,
    compression: Compression,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

pub(crate) fn sniff(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

impl Archive {
    /// The blob at `path`, through symbolic links (docker save links duplicate layers).
    fn blob(&self, path: &str) -> Option<&Blob> {
        let mut p = clean(Path::new(path))?;
        for _ in 0..16 {
            if let Some(b) = self.blobs.get(&p) {
                return Some(b);
            }
            p = self.links.get(&p)?.clone();
        }
        None
    }
}

/// A tar entry's path relative to the archive root (`./a/b` → `a/b`); `None` if it escapes.
pub(crate) fn clean(path: &Path) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str()?.to_owned()),
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    Some(parts.join("/"))
}

/// The digest a `blobs/ALG/HEX` path promises.
fn blob_path_digest(path: &str) -> Option<String> {
    let rest = path.strip_prefix("blobs/")?;
    let (alg, hex) = rest.split_once('/')?;
    (alg == "sha256" && hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("{alg}:{hex}"))
}

fn is_metadata(path: &str) -> bool {
    matches!(path, "index.json" | "manifest.json" | "oci-layout" | "repositories")
}

/// Files written to the content store: layout blobs, and docker save's layers and configs.
fn is_blob(path: &str) -> bool {
    blob_path_digest(path).is_some()
        || path.ends_with(".tar")
        || (!path.contains('/') && path.ends_with(".json"))
}

/// What the blocking tar reader sends to the async writer.
enum Msg {
    Small { path: String, data: Vec<u8> },
    Begin { path: String, size: u64 },
    Chunk(Vec<u8>),
    End,
    Link { path: String, target: String },
}

fn read_archive(source: Source, tx: &mpsc::Sender<Msg>) -> std::io::Result<()> {
    let mut reader = BufReader::with_capacity(CHUNK, source.open()?);
    let compressed = sniff(reader.fill_buf()?) == Compression::Gzip;
    let input: Box<dyn Read> =
        if compressed { Box::new(flate2::read::GzDecoder::new(reader)) } else { Box::new(reader) };
    let mut archive = tar::Archive::new(input);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let Some(path) = clean(&entry.path()?) else { continue };
        let kind = entry.header().entry_type();
        // A send fails only when the writer gave up; its error is the one to report.
        if kind.is_symlink() || kind.is_hard_link() {
            let Some(target) = entry.link_name()? else { continue };
            let target = if kind.is_symlink() {
                Path::new(&path).parent().unwrap_or(Path::new("")).join(target)
            } else {
                target.into_owned()
            };
            let Some(target) = clean(&target) else { continue };
            if tx.blocking_send(Msg::Link { path, target }).is_err() {
                return Ok(());
            }
        } else if kind.is_file() {
            let size = entry.size();
            if is_metadata(&path) {
                let mut data = Vec::new();
                entry.by_ref().take(METADATA_MAX).read_to_end(&mut data)?;
                if tx.blocking_send(Msg::Small { path, data }).is_err() {
                    return Ok(());
                }
            } else if is_blob(&path) {
                if tx.blocking_send(Msg::Begin { path, size }).is_err() {
                    return Ok(());
                }
                loop {
                    let mut chunk = Vec::with_capacity(CHUNK);
                    let n = entry.by_ref().take(CHUNK as u64).read_to_end(&mut chunk)?;
                    if n == 0 {
                        break;
                    }
                    if tx.blocking_send(Msg::Chunk(chunk)).is_err() {
                        return Ok(());
                    }
                }
                if tx.blocking_send(Msg::End).is_err() {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

async fn load_archive(conn: &Conn, lease: &str, source: Source) -> Result<Archive, ImportError> {
    let (tx, mut rx) = mpsc::channel::<Msg>(4);
    let file = source.name();
    let file = file.as_str();
    let reader = tokio::task::spawn_blocking(move || read_archive(source, &tx));
    let mut archive = Archive::default();
    let mut current: Option<BlobSink> = None;
    let read_error = |source| ImportError::Read { archive: file.to_owned(), source };
    while let Some(msg) = rx.recv().await {
        match msg {
            Msg::Small { path, data } => {
                archive.small.insert(path, data);
            }
            Msg::Link { path, target } => {
                archive.links.insert(path, target);
            }
            Msg::Begin { path, size } => current = Some(BlobSink::begin(conn, lease, path, size).await?),
            Msg::Chunk(data) => {
                if let Some(sink) = current.as_mut() {
                    sink.write(data).await?;
                }
            }
            Msg::End => {
                if let Some(sink) = current.take() {
                    let (path, blob) = sink.finish(file).await?;
                    archive.blobs.insert(path, blob);
                }
            }
        }
    }
    match reader.await {
        Ok(Ok(())) => Ok(archive),
        Ok(Err(e)) => Err(read_error(e)),
        Err(e) => Err(read_error(std::io::Error::other(e))),
    }
}

/// One blob on its way from the archive to the content store.
struct BlobSink {
    path: String,
    expected: Option<String>,
    size: u64,
    hasher: Sha256,
    written: u64,
    head: Vec<u8>,
    writer: Option<Box<ContentWriter>>,
}

impl BlobSink {
    async fn begin(conn: &Conn, lease: &str, path: String, size: u64) -> Result<BlobSink, RuntimeError> {
        let expected = blob_path_digest(&path);
        let writer = match &expected {
            Some(d) if content_exists(conn, d).await? => None,
            _ => open_writer(conn, lease, size, expected.as_deref()).await?,
        };
        Ok(BlobSink { path, expected, size, hasher: Sha256::new(), written: 0, head: Vec::new(), writer })
    }

    async fn write(&mut self, data: Vec<u8>) -> Result<(), RuntimeError> {
        if self.head.len() < 4 {
            self.head.extend(data.iter().take(4 - self.head.len()));
        }
        self.hasher.update(&data);
        self.written += data.len() as u64;
        if let Some(w) = self.writer.as_mut() {
            w.write(data).await?;
        }
        Ok(())
    }

    async fn finish(self, file: &str) -> Result<(String, Blob), ImportError> {
        let digest = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        if self.written != self.size || self.expected.as_ref().is_some_and(|e| *e != digest) {
            return Err(format_error(
                file,
                format!("{} is corrupt: its content does not match its name", self.path),
            ));
        }
        if let Some(w) = self.writer {
            w.commit(self.size, &digest, HashMap::new()).await?;
        }
        let blob = Blob { digest, size: self.size as i64, compression: sniff(&self.head) };
        Ok((self.path, blob))
    }
}

/// A writer for one archive blob (a fresh ingest, fed from the blob's first byte); `None`
/// when containerd has the content already.
async fn open_writer(
    conn: &Conn,
    lease: &str,
    size: u64,
    expected: Option<&str>,
) -> Result<Option<Box<ContentWriter>>, RuntimeError> {
    let reference = format!("ecsd-import-{}", uuid::Uuid::new_v4().simple());
    match ContentWriter::open(conn, lease, &reference, size, expected).await? {
        Opened::Writer(w) => Ok(Some(w.skipping())),
        // A fresh random ingest cannot be held by anyone else.
        Opened::Exists | Opened::Locked => Ok(None),
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Vec<String>,
}

/// Images of a `docker save` archive, each given an OCI manifest written to the store.
async fn docker_images(
    conn: &Conn,
    lease: &str,
    file: &str,
    archive: &Archive,
    manifest_json: &[u8],
) -> Result<Vec<(String, Descriptor)>, ImportError> {
    let entries: Vec<DockerEntry> = serde_json::from_slice(manifest_json)
        .map_err(|e| format_error(file, format!("manifest.json is not a docker save manifest: {e}")))?;
    let missing =
        |p: &str| format_error(file, format!("manifest.json names {p}, which the archive does not hold"));
    let mut images = Vec::new();
    for entry in entries {
        let config = archive.blob(&entry.config).ok_or_else(|| missing(&entry.config))?;
        let mut layers = Vec::new();
        for l in &entry.layers {
            let blob = archive.blob(l).ok_or_else(|| missing(l))?;
            let media_type = match blob.compression {
                Compression::None => image::OCI_LAYER,
                Compression::Gzip => image::OCI_LAYER_GZIP,
                Compression::Zstd => image::OCI_LAYER_ZSTD,
            };
            layers
                .push(serde_json::json!({"mediaType": media_type, "digest": blob.digest, "size": blob.size}));
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": image::OCI_MANIFEST,
            "config": {"mediaType": image::OCI_CONFIG, "digest": config.digest, "size": config.size},
            "layers": layers,
        });
        let data = serde_json::to_vec(&manifest).map_err(|e| format_error(file, e.to_string()))?;
        let digest = content::write_bytes(conn, lease, None, &data, HashMap::new()).await?;
        let target = Descriptor {
            media_type: image::OCI_MANIFEST.into(),
            digest,
            size: data.len() as i64,
            ..Default::default()
        };
        for tag in entry.repo_tags.unwrap_or_default() {
            match reference::normalize(&tag) {
                Ok(name) => images.push((name, target.clone())),
                Err(e) => warn!(tag = %tag, error = %e, "ignoring a RepoTag that is not a valid reference"),
            }
        }
    }
    Ok(images)
}

/// Labels `desc` (an index or manifest) with containerd's GC references to its children, so
/// they live as long as the image does.
async fn label_children(conn: &Conn, image: &str, desc: &Descriptor, depth: u32) -> Result<(), RuntimeError> {
    if depth > 3 || !content_exists(conn, &desc.digest).await? {
        return Ok(());
    }
    let data = image::read_blob(conn, image, &desc.digest, image::JSON_BLOB_MAX).await?;
    let bad = |e: serde_json::Error| image::bad_json(image, &desc.digest, &e);
    let mut labels = HashMap::new();
    match image::blob_kind(&desc.media_type, &data) {
        BlobKind::Index => {
            let index: Index = serde_json::from_slice(&data).map_err(bad)?;
            for (i, child) in index.manifests.iter().enumerate() {
                labels.insert(format!("containerd.io/gc.ref.content.m.{i}"), child.digest.clone());
                Box::pin(label_children(conn, image, child, depth + 1)).await?;
            }
        }
        BlobKind::Manifest => {
            let manifest: Manifest = serde_json::from_slice(&data).map_err(bad)?;
            labels.insert("containerd.io/gc.ref.content.config".to_owned(), manifest.config.digest.clone());
            for (i, layer) in manifest.layers.iter().enumerate() {
                labels.insert(format!("containerd.io/gc.ref.content.l.{i}"), layer.digest.clone());
            }
        }
        BlobKind::Other => return Ok(()),
    }
    let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
    let info = api::Info { digest: desc.digest.clone(), labels, ..Default::default() };
    let req = api::UpdateRequest { info: Some(info), update_mask: Some(prost_types::FieldMask { paths }) };
    conn.call(at("label image content", "content", &desc.digest), conn.content().update(conn.request(req)))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotated(pairs: &[(&str, &str)]) -> Descriptor {
        Descriptor {
            annotations: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn names_come_from_annotations() {
        let d = annotated(&[
            (ANNOTATION_IMAGE_NAME, "docker.io/library/busybox:latest"),
            (ANNOTATION_REF_NAME, "latest"),
        ]);
        assert_eq!(oci_name(&d).as_deref(), Some("docker.io/library/busybox:latest"));
        let d = annotated(&[(ANNOTATION_REF_NAME, "example.com/app:v1")]);
        assert_eq!(oci_name(&d).as_deref(), Some("example.com/app:v1"));
        let d = annotated(&[(ANNOTATION_REF_NAME, "busybox:1.36")]);
        assert_eq!(oci_name(&d).as_deref(), Some("docker.io/library/busybox:1.36"));
        assert_eq!(oci_name(&annotated(&[(ANNOTATION_REF_NAME, "latest")])), None);
        assert_eq!(oci_name(&annotated(&[])), None);
        assert_eq!(oci_name(&annotated(&[(ANNOTATION_IMAGE_NAME, "Bad/Name")])), None);
    }

    #[test]
    fn archive_paths() {
        assert_eq!(clean(Path::new("./blobs/sha256/ab")).as_deref(), Some("blobs/sha256/ab"));
        assert_eq!(clean(Path::new("a/../b")).as_deref(), Some("b"));
        assert_eq!(clean(Path::new("../x")), None);
        let hex = "a".repeat(64);
        assert_eq!(blob_path_digest(&format!("blobs/sha256/{hex}")), Some(format!("sha256:{hex}")));
        assert_eq!(blob_path_digest("blobs/sha256/short"), None);
        assert!(is_blob("abc/layer.tar"));
        assert!(is_blob("0123.json"));
        assert!(!is_blob("abc/json"));
        assert!(!is_blob("abc/VERSION"));
        assert!(is_metadata("manifest.json"));
    }

    #[test]
    fn links_resolve_to_blobs() {
        let mut a = Archive::default();
        let blob = Blob { digest: "sha256:1".into(), size: 1, compression: Compression::None };
        a.blobs.insert("blobs/sha256/x".into(), blob);
        a.links.insert("abc/layer.tar".into(), "blobs/sha256/x".into());
        a.links.insert("loop1".into(), "loop2".into());
        a.links.insert("loop2".into(), "loop1".into());
        assert_eq!(a.blob("abc/layer.tar").map(|b| b.digest.as_str()), Some("sha256:1"));
        assert_eq!(a.blob("./blobs/sha256/x").map(|b| b.size), Some(1));
        assert!(a.blob("loop1").is_none());
        assert!(a.blob("missing").is_none());
    }

    #[test]
    fn compression_is_sniffed() {
        assert_eq!(sniff(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd]), Compression::Zstd);
        assert_eq!(sniff(b"usta"), Compression::None);
        assert_eq!(sniff(b""), Compression::None);
    }
}
