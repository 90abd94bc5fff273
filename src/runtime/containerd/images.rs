//! Images in containerd: resolving a name to this host's manifest and config, and unpacking
//! its layers into overlayfs snapshots (Diff.Apply onto Snapshots.Prepare, then Commit under
//! the layer's chain id), as containerd's own unpacker does.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use containerd_client::services::v1 as api;
use containerd_client::services::v1::snapshots as snap;
use containerd_client::types::Descriptor as ProtoDescriptor;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tracing::{debug, info, warn};

use super::SNAPSHOTTER;
use super::connection::{CALL_TIMEOUT, Conn, StatusKind, at, classify};
use crate::runtime::{Backend, Image, ImageConfig, ImageDefect, ImageSummary, RuntimeError};

pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub(crate) const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub(crate) const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub(crate) const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// Manifests, indexes and configs are small; anything bigger is not one.
pub(crate) const JSON_BLOB_MAX: usize = 8 << 20;
/// Applying one layer writes the whole layer to disk.
const APPLY_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const UNPACK_LEASE_TTL: Duration = Duration::from_secs(3600);

/// An OCI content descriptor, as in manifests and indexes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    pub(crate) fn to_proto(&self) -> ProtoDescriptor {
        ProtoDescriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size,
            annotations: self.annotations.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }

    pub(crate) fn from_proto(d: &ProtoDescriptor) -> Self {
        Descriptor {
            media_type: d.media_type.clone(),
            digest: d.digest.clone(),
            size: d.size,
            platform: None,
            annotations: d.annotations.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An image index (OCI) or manifest list (Docker); also the shape of an OCI layout's
/// `index.json`.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Index {
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Manifest {
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    config: Option<ConfigBody>,
    #[serde(default)]
    rootfs: Option<RootfsSection>,
}

#[derive(Debug, Deserialize)]
struct RootfsSection {
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ConfigBody {
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    stop_signal: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

/// An image resolved for this host: what the engine sees plus what unpacking needs.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    pub image: Image,
    pub layers: Vec<Descriptor>,
    pub diff_ids: Vec<String>,
    /// Chain id of each layer, bottom first; the last names the image's rootfs snapshot.
    pub chain_ids: Vec<String>,
}

/// The kinds of JSON blob an image is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlobKind {
    Index,
    Manifest,
    Other,
}

pub(crate) fn blob_kind(media_type: &str, data: &[u8]) -> BlobKind {
    match media_type {
        OCI_INDEX | DOCKER_MANIFEST_LIST => BlobKind::Index,
        OCI_MANIFEST | DOCKER_MANIFEST => BlobKind::Manifest,
        // Some tools leave the media type out of descriptors: look at the document.
        "" => match serde_json::from_slice::<serde_json::Value>(data) {
            Ok(v) if v.get("manifests").is_some() => BlobKind::Index,
            Ok(v) if v.get("config").is_some() && v.get("layers").is_some() => BlobKind::Manifest,
            _ => BlobKind::Other,
        },
        _ => BlobKind::Other,
    }
}

/// This host's platform in OCI terms: (architecture, variant).
pub(crate) fn host_platform() -> (&'static str, Option<&'static str>) {
    match std::env::consts::ARCH {
        "x86_64" => ("amd64", None),
        "aarch64" => ("arm64", Some("v8")),
        "arm" => ("arm", Some("v7")),
        "x86" => ("386", None),
        "powerpc64" => ("ppc64le", None),
        "loongarch64" => ("loong64", None),
        other => (other, None),
    }
}

/// The manifest of `index` for this host (linux, host architecture; a matching variant is
/// preferred, a missing one accepted).
pub(crate) fn select_manifest(index: &Index) -> Option<&Descriptor> {
    let (arch, variant) = host_platform();
    let candidates = index
        .manifests
        .iter()
        .filter(|d| d.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == arch));
    let mut fallback = None;
    for d in candidates {
        let v = d.platform.as_ref().and_then(|p| p.variant.as_deref());
        if v == variant {
            return Some(d);
        }
        if v.is_none() || fallback.is_none() {
            fallback = Some(d);
        }
    }
    fallback.or_else(|| {
        // An index whose only entry says nothing about its platform (hand-made layouts).
        match index.manifests.as_slice() {
            [only] if only.platform.is_none() => Some(only),
            _ => None,
        }
    })
}

/// Chain ids of `diff_ids`: `chain[0] = diff[0]`, `chain[i] = sha256(chain[i-1] + " " + diff[i])`.
pub(crate) fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff in diff_ids {
        let next = match out.last() {
            None => diff.clone(),
            Some(parent) => format!("sha256:{}", hex::encode(Sha256::digest(format!("{parent} {diff}")))),
        };
        out.push(next);
    }
    out
}

/// Reads blob `digest` whole, refusing anything over `limit` bytes.
pub(crate) async fn read_blob(
    conn: &Conn,
    image: &str,
    digest: &str,
    limit: usize,
) -> Result<Vec<u8>, RuntimeError> {
    let read_at = at("read image content", "content", digest);
    let req = conn.request(api::ReadContentRequest { digest: digest.to_owned(), offset: 0, size: 0 });
    let mut stream = match conn.raw(read_at, CALL_TIMEOUT, conn.content().read(req)).await? {
        Ok(s) => s,
        Err(s) if classify(&s) == StatusKind::NotFound => return Err(missing_content(image, digest)),
        Err(s) => return Err(conn.error(s, read_at)),
    };
    let mut data = Vec::new();
    loop {
        let next = tokio::time::timeout(CALL_TIMEOUT, stream.message())
            .await
            .map_err(|_| RuntimeError::Timeout { operation: read_at.operation, after: CALL_TIMEOUT })?;
        match next {
            Ok(Some(chunk)) => {
                if data.len() + chunk.data.len() > limit {
                    return Err(bad_image(image, ImageDefect::TooLarge { digest: digest.to_owned(), limit }));
                }
                data.extend_from_slice(&chunk.data);
            }
            Ok(None) => return Ok(data),
            Err(s) if classify(&s) == StatusKind::NotFound => return Err(missing_content(image, digest)),
            Err(s) => return Err(conn.error(s, read_at)),
        }
    }
}

fn bad_image(image: &str, defect: ImageDefect) -> RuntimeError {
    RuntimeError::BadImage { image: image.to_owned(), defect }
}

fn missing_content(image: &str, digest: &str) -> RuntimeError {
    bad_image(image, ImageDefect::MissingContent { digest: digest.to_owned() })
}

pub(crate) fn bad_json(image: &str, digest: &str, e: &serde_json::Error) -> RuntimeError {
    bad_image(image, ImageDefect::Malformed { digest: digest.to_owned(), reason: e.to_string() })
}

/// Resolves image `name` (a normalised reference) in the connection's namespace.
pub(crate) async fn resolve(conn: &Conn, name: &str) -> Result<Resolved, RuntimeError> {
    let (target, labels) = find_image(conn, name).await?;
    let mut resolved = resolve_target(conn, name, &target).await?;
    if let Some(d) = registry_digest(&labels, &target.digest) {
        resolved.image.digest = d;
    }
    Ok(resolved)
}

/// The registry's digest of an image whose stored manifest has another (one copied from
/// Podman's store), while the image still names the manifest the label was written for.
fn registry_digest(labels: &HashMap<String, String>, target: &str) -> Option<String> {
    use super::import::{LABEL_REGISTRY_DIGEST, LABEL_REGISTRY_DIGEST_OF};
    let of = labels.get(LABEL_REGISTRY_DIGEST_OF)?;
    (of == target).then(|| labels.get(LABEL_REGISTRY_DIGEST).cloned()).flatten()
}

/// The target descriptor and labels of image `name`. A reference with a digest also finds
/// an image stored under another tag of the same repository whose target has that digest, or
/// whose registry digest it is (as Docker finds `repo@digest` by its repo digests).
async fn find_image(conn: &Conn, name: &str) -> Result<(Descriptor, HashMap<String, String>), RuntimeError> {
    let not_found = || RuntimeError::ImageNotFound {
        reference: name.to_owned(),
        runtime: Backend::Containerd,
        store: conn.namespace().to_owned(),
    };
    let get_at = at("resolve image", "image", name);
    let req = conn.request(api::GetImageRequest { name: name.to_owned() });
    if let Some(resp) = conn.call_opt(get_at, conn.images().get(req)).await? {
        return resp
            .image
            .and_then(|i| Some((Descriptor::from_proto(i.target.as_ref()?), i.labels)))
            .ok_or_else(not_found);
    }
    let Some((repo, digest)) = name.split_once('@') else { return Err(not_found()) };
    let repo = repo.rsplit_once(':').filter(|(_, tag)| !tag.contains('/')).map_or(repo, |(r, _)| r);
    // Either filter matching is enough (containerd ORs them).
    let filters = vec![
        format!("target.digest==\"{digest}\""),
        format!("labels.\"{}\"==\"{digest}\"", super::import::LABEL_REGISTRY_DIGEST),
    ];
    let req = conn.request(api::ListImagesRequest { filters });
    let images = conn.call(get_at, conn.images().list(req)).await?.images;
    images
        .iter()
        .filter(|i| image_repository(&i.name) == repo)
        .filter_map(|i| Some((Descriptor::from_proto(i.target.as_ref()?), i.labels.clone())))
        .find(|(t, labels)| {
            t.digest == digest || registry_digest(labels, &t.digest).as_deref() == Some(digest)
        })
        .ok_or_else(not_found)
}

/// `domain/path` of an image name, without tag or digest.
fn image_repository(name: &str) -> &str {
    let name = name.split_once('@').map_or(name, |(n, _)| n);
    match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => name,
    }
}

/// Resolves `target` (a manifest or an index) of image `name` for this host.
pub(crate) async fn resolve_target(
    conn: &Conn,
    name: &str,
    target: &Descriptor,
) -> Result<Resolved, RuntimeError> {
    let mut desc = target.clone();
    let mut data = read_blob(conn, name, &desc.digest, JSON_BLOB_MAX).await?;
    // Indexes may nest (an index of indexes); two levels are plenty.
    for _ in 0..3 {
        if blob_kind(&desc.media_type, &data) != BlobKind::Index {
            break;
        }
        let index: Index = serde_json::from_slice(&data).map_err(|e| bad_json(name, &desc.digest, &e))?;
        let Some(chosen) = select_manifest(&index) else {
            let (arch, _) = host_platform();
            let offered: Vec<String> = index
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref().map(|p| format!("{}/{}", p.os, p.architecture)))
                .collect();
            let offered = if offered.is_empty() { "none".to_owned() } else { offered.join(", ") };
            return Err(bad_image(name, ImageDefect::NoPlatform { arch, offered }));
        };
        desc = chosen.clone();
        data = read_blob(conn, name, &desc.digest, JSON_BLOB_MAX).await?;
    }
    let manifest: Manifest = serde_json::from_slice(&data).map_err(|e| bad_json(name, &desc.digest, &e))?;
    let config_data = read_blob(conn, name, &manifest.config.digest, JSON_BLOB_MAX).await?;
    let (config, diff_ids) =
        parse_config(&config_data).map_err(|e| bad_json(name, &manifest.config.digest, &e))?;
    if diff_ids.len() != manifest.layers.len() {
        return Err(bad_image(
            name,
            ImageDefect::LayerCount { layers: manifest.layers.len(), diff_ids: diff_ids.len() },
        ));
    }
    Ok(Resolved {
        image: Image {
            name: name.to_owned(),
            digest: target.digest.clone(),
            config_digest: manifest.config.digest.clone(),
            config,
        },
        layers: manifest.layers,
        chain_ids: chain_ids(&diff_ids),
        diff_ids,
    })
}

/// Whether `target` has something to run on this host (a manifest, or an index with one).
pub(crate) async fn has_host_manifest(
    conn: &Conn,
    name: &str,
    target: &Descriptor,
) -> Result<bool, RuntimeError> {
    let data = read_blob(conn, name, &target.digest, JSON_BLOB_MAX).await?;
    if blob_kind(&target.media_type, &data) != BlobKind::Index {
        return Ok(true);
    }
    let index: Index = serde_json::from_slice(&data).map_err(|e| bad_json(name, &target.digest, &e))?;
    Ok(select_manifest(&index).is_some())
}

/// The diff ids of the image config `config_digest`.
pub(crate) async fn diff_ids(
    conn: &Conn,
    image: &str,
    config_digest: &str,
) -> Result<Vec<String>, RuntimeError> {
    let data = read_blob(conn, image, config_digest, JSON_BLOB_MAX).await?;
    parse_config(&data).map(|(_, d)| d).map_err(|e| bad_json(image, config_digest, &e))
}

pub(crate) fn parse_config(data: &[u8]) -> Result<(ImageConfig, Vec<String>), serde_json::Error> {
    let file: ConfigFile = serde_json::from_slice(data)?;
    let body = file.config.unwrap_or_default();
    let config = ImageConfig {
        env: body.env.unwrap_or_default(),
        entrypoint: body.entrypoint,
        cmd: body.cmd,
        working_dir: body.working_dir.filter(|s| !s.is_empty()),
        user: body.user.filter(|s| !s.is_empty()),
        stop_signal: body.stop_signal.filter(|s| !s.is_empty()),
        labels: body.labels.unwrap_or_default(),
    };
    Ok((config, file.rootfs.map(|r| r.diff_ids).unwrap_or_default()))
}

async fn snapshot_exists(conn: &Conn, key: &str) -> Result<bool, RuntimeError> {
    let req =
        conn.request(snap::StatSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: key.to_owned() });
    Ok(conn.call_opt(at("look up snapshot", "snapshot", key), conn.snapshots().stat(req)).await?.is_some())
}

/// Makes sure every layer of `resolved` is unpacked into a committed snapshot named by its
/// chain id, and that containerd's GC keeps them (label on the image config).
pub(crate) async fn ensure_unpacked(conn: &Conn, resolved: &Resolved) -> Result<(), RuntimeError> {
    let Some(top) = resolved.chain_ids.last() else { return Ok(()) };
    if snapshot_exists(conn, top).await? {
        return Ok(());
    }
    let name = &resolved.image.name;
    let lease = format!("ecsd-unpack-{}", uuid::Uuid::new_v4().simple());
    conn.create_lease(&lease, UNPACK_LEASE_TTL).await?;
    let started = std::time::Instant::now();
    let result = unpack_layers(conn, resolved, &lease).await;
    if let Err(e) = conn.delete_lease(&lease).await {
        warn!(lease, error = %e, "cannot delete the unpack lease; it expires by itself");
    }
    result?;
    info!(image = %name, layers = resolved.layers.len(), elapsed_ms = started.elapsed().as_millis() as u64,
          "unpacked image");
    Ok(())
}

async fn unpack_layers(conn: &Conn, resolved: &Resolved, lease: &str) -> Result<(), RuntimeError> {
    let name = &resolved.image.name;
    let mut parent = String::new();
    for (i, (layer, chain)) in resolved.layers.iter().zip(&resolved.chain_ids).enumerate() {
        if !snapshot_exists(conn, chain).await? {
            apply_layer(conn, name, layer, &resolved.diff_ids[i], chain, &parent, lease).await?;
        }
        parent = chain.clone();
    }
    // Without this label GC collects the committed layers: nothing else references them.
    let label = format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}");
    let info = api::Info {
        digest: resolved.image.config_digest.clone(),
        labels: HashMap::from([(label.clone(), parent)]),
        ..Default::default()
    };
    let req = api::UpdateRequest {
        info: Some(info),
        update_mask: Some(prost_types::FieldMask { paths: vec![format!("labels.{label}")] }),
    };
    let digest = &resolved.image.config_digest;
    conn.call(at("label image config", "content", digest), conn.content().update(conn.request(req))).await?;
    Ok(())
}

/// Applies one layer onto `parent` and commits it as `chain`.
async fn apply_layer(
    conn: &Conn,
    image: &str,
    layer: &Descriptor,
    diff_id: &str,
    chain: &str,
    parent: &str,
    lease: &str,
) -> Result<(), RuntimeError> {
    let key = format!("extract-{}-{chain}", uuid::Uuid::new_v4().simple());
    let unpack_at = at("unpack image layer", "layer", &layer.digest);
    let req = snap::PrepareSnapshotRequest {
        snapshotter: SNAPSHOTTER.into(),
        key: key.clone(),
        parent: parent.to_owned(),
        labels: HashMap::new(),
    };
    let mounts = conn.call(unpack_at, conn.snapshots().prepare(conn.leased(req, lease)?)).await?.mounts;
    let result = apply_and_commit(conn, image, layer, diff_id, chain, &key, mounts, lease).await;
    if result.is_err() || matches!(result, Ok(false)) {
        let req =
            conn.request(snap::RemoveSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: key.clone() });
        if let Err(e) =
            conn.call_opt(at("remove snapshot", "snapshot", &key), conn.snapshots().remove(req)).await
        {
            warn!(snapshot = %key, error = %e, "cannot remove the extraction snapshot");
        }
    }
    result.map(|_| ())
}

/// Ok(true) when committed, Ok(false) when someone else committed `chain` first.
#[allow(clippy::too_many_arguments)]
async fn apply_and_commit(
    conn: &Conn,
    image: &str,
    layer: &Descriptor,
    diff_id: &str,
    chain: &str,
    key: &str,
    mounts: Vec<containerd_client::types::Mount>,
    lease: &str,
) -> Result<bool, RuntimeError> {
    let unpack_at = at("unpack image layer", "layer", &layer.digest);
    let mut diff = layer.to_proto();
    // containerd 1.6 only knows the OCI name of an uncompressed layer.
    if diff.media_type == DOCKER_LAYER {
        diff.media_type = OCI_LAYER.into();
    }
    let req = api::ApplyRequest { diff: Some(diff), mounts, payloads: HashMap::new(), sync_fs: false };
    let applied = match conn.raw(unpack_at, APPLY_TIMEOUT, conn.diff().apply(conn.request(req))).await? {
        Ok(r) => r.applied,
        Err(s) if classify(&s) == StatusKind::NotFound => return Err(missing_content(image, &layer.digest)),
        Err(s) => return Err(conn.error(s, unpack_at)),
    };
    let applied_digest = applied.map(|d| d.digest).unwrap_or_default();
    if applied_digest != diff_id {
        return Err(bad_image(
            image,
            ImageDefect::DiffIdMismatch {
                layer: layer.digest.clone(),
                unpacked: applied_digest,
                expected: diff_id.to_owned(),
            },
        ));
    }
    let req = snap::CommitSnapshotRequest {
        snapshotter: SNAPSHOTTER.into(),
        name: chain.to_owned(),
        key: key.to_owned(),
        labels: HashMap::new(),
    };
    match conn.raw(unpack_at, CALL_TIMEOUT, conn.snapshots().commit(conn.leased(req, lease)?)).await? {
        Ok(_) => {
            debug!(image, layer = %layer.digest, chain, "committed layer");
            // As containerd's unpacker: the layer names its uncompressed digest.
            let label = HashMap::from([("containerd.io/uncompressed".to_owned(), diff_id.to_owned())]);
            super::content::set_labels(conn, &layer.digest, label).await?;
            Ok(true)
        }
        Err(s) if classify(&s) == StatusKind::AlreadyExists => Ok(false),
        Err(s) => Err(conn.error(s, unpack_at)),
    }
}

/// Creates image `name` → `target` with `labels`, replacing the target (and those labels) of
/// an existing image of that name.
pub(crate) async fn create_image(
    conn: &Conn,
    name: &str,
    target: &Descriptor,
    labels: &HashMap<String, String>,
) -> Result<(), RuntimeError> {
    let image = api::Image {
        name: name.to_owned(),
        target: Some(target.to_proto()),
        labels: labels.clone(),
        ..Default::default()
    };
    let create_at = at("create image", "image", name);
    let req = conn.request(api::CreateImageRequest { image: Some(image.clone()), source_date_epoch: None });
    match conn.raw(create_at, CALL_TIMEOUT, conn.images().create(req)).await? {
        Ok(_) => Ok(()),
        Err(s) if classify(&s) == StatusKind::AlreadyExists => {
            let mut paths = vec!["target".to_owned()];
            paths.extend(labels.keys().map(|k| format!("labels.{k}")));
            let req = conn.request(api::UpdateImageRequest {
                image: Some(image),
                update_mask: Some(prost_types::FieldMask { paths }),
                source_date_epoch: None,
            });
            conn.call(create_at, conn.images().update(req)).await.map(|_| ())
        }
        Err(s) => Err(conn.error(s, create_at)),
    }
}

/// Every image of the namespace with what `ecsd image ls` and the cleanup need.
pub(crate) async fn list_images(conn: &Conn) -> Result<Vec<ImageSummary>, RuntimeError> {
    let ns = conn.namespace().to_owned();
    let req = conn.request(api::ListImagesRequest { filters: vec![] });
    let images = conn.call(at("list images", "namespace", &ns), conn.images().list(req)).await?.images;
    let mut out = Vec::with_capacity(images.len());
    for i in images {
        let Some(target) = i.target.as_ref().map(Descriptor::from_proto) else { continue };
        let size = image_size(conn, &i.name, &target).await;
        let label = |k: &str| i.labels.get(k).and_then(|v| v.parse::<f64>().ok());
        out.push(ImageSummary {
            name: i.name.clone(),
            digest: target.digest.clone(),
            media_type: target.media_type.clone(),
            size,
            created_at: super::connection::epoch_seconds(i.created_at.as_ref()),
            pulled_at: label(super::pull::LABEL_PULLED_AT),
            last_used_at: label(super::pull::LABEL_LAST_USED),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The bytes of an image for this host as stored (compressed): its index, manifest, config
/// and layers; what is missing counts nothing.
async fn image_size(conn: &Conn, name: &str, target: &Descriptor) -> u64 {
    let mut total = target.size.max(0) as u64;
    let Ok(data) = read_blob(conn, name, &target.digest, JSON_BLOB_MAX).await else { return total };
    let manifest_data = if blob_kind(&target.media_type, &data) == BlobKind::Index {
        let Ok(index) = serde_json::from_slice::<Index>(&data) else { return total };
        let Some(m) = select_manifest(&index) else { return total };
        total += m.size.max(0) as u64;
        match read_blob(conn, name, &m.digest, JSON_BLOB_MAX).await {
            Ok(d) => d,
            Err(_) => return total,
        }
    } else {
        data
    };
    if let Ok(m) = serde_json::from_slice::<Manifest>(&manifest_data) {
        total += m.config.size.max(0) as u64;
        total += m.layers.iter().map(|l| l.size.max(0) as u64).sum::<u64>();
    }
    total
}

/// Sets label `key` of image `name`; a missing image is not an error (it went meanwhile).
pub(crate) async fn label_image(conn: &Conn, name: &str, key: &str, value: &str) -> Result<(), RuntimeError> {
    let image = api::Image {
        name: name.to_owned(),
        labels: HashMap::from([(key.to_owned(), value.to_owned())]),
        ..Default::default()
    };
    let req = conn.request(api::UpdateImageRequest {
        image: Some(image),
        update_mask: Some(prost_types::FieldMask { paths: vec![format!("labels.{key}")] }),
        source_date_epoch: None,
    });
    conn.call_opt(at("label image", "image", name), conn.images().update(req)).await.map(|_| ())
}

/// Removes image `name`, and with it (containerd's GC, run before this returns) its content
/// and snapshots that nothing else references. Refused while a container uses the image.
pub(crate) async fn remove_image(conn: &Conn, name: &str) -> Result<(), RuntimeError> {
    let filter = format!("image=={}", quote_filter(name));
    let req = conn.request(api::ListContainersRequest { filters: vec![filter] });
    let users: Vec<String> = conn
        .call(at("list the containers of an image", "image", name), conn.containers().list(req))
        .await?
        .containers
        .into_iter()
        .map(|c| c.id)
        .collect();
    if !users.is_empty() {
        return Err(RuntimeError::ImageInUse { reference: name.to_owned(), containers: users });
    }
    let req = conn.request(api::DeleteImageRequest { name: name.to_owned(), sync: true, target: None });
    match conn.call_opt(at("remove image", "image", name), conn.images().delete(req)).await? {
        Some(_) => Ok(()),
        None => Err(RuntimeError::ImageNotFound {
            reference: name.to_owned(),
            runtime: Backend::Containerd,
            store: conn.namespace().to_owned(),
        }),
    }
}

/// A value in containerd's filter syntax: quoted, with `"` and `\` escaped.
fn quote_filter(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(arch: &str, variant: Option<&str>, digest: &str) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: digest.into(),
            size: 1,
            platform: Some(Platform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: variant.map(str::to_owned),
            }),
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let a = "sha256:aaaa".to_owned();
        let b = "sha256:bbbb".to_owned();
        let chain = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chain[0], a);
        let want = format!("sha256:{}", hex::encode(Sha256::digest(b"sha256:aaaa sha256:bbbb")));
        assert_eq!(chain[1], want);
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn picks_this_hosts_manifest() {
        let (arch, variant) = host_platform();
        let index = Index {
            manifests: vec![
                desc("s390x", None, "sha256:other"),
                Descriptor { platform: None, ..desc("x", None, "sha256:attestation") },
                desc(arch, variant, "sha256:mine"),
            ],
        };
        assert_eq!(select_manifest(&index).map(|d| d.digest.as_str()), Some("sha256:mine"));
        let none = Index { manifests: vec![desc("s390x", None, "sha256:other")] };
        assert_eq!(select_manifest(&none), None);
        let bare = Index { manifests: vec![Descriptor { platform: None, ..desc("x", None, "sha256:only") }] };
        assert_eq!(select_manifest(&bare).map(|d| d.digest.as_str()), Some("sha256:only"));
    }

    #[test]
    fn config_fields_are_read() {
        let data = br#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["sh"],
            "Entrypoint":null,"WorkingDir":"","User":"1000:1000","StopSignal":"SIGUSR1",
            "Labels":{"a":"b"}},"rootfs":{"type":"layers","diff_ids":["sha256:1","sha256:2"]}}"#;
        let (config, diff_ids) = parse_config(data).unwrap();
        assert_eq!(config.env, vec!["PATH=/bin"]);
        assert_eq!(config.cmd, Some(vec!["sh".to_owned()]));
        assert_eq!(config.entrypoint, None);
        assert_eq!(config.working_dir, None);
        assert_eq!(config.user.as_deref(), Some("1000:1000"));
        assert_eq!(config.stop_signal.as_deref(), Some("SIGUSR1"));
        assert_eq!(config.labels.get("a").map(String::as_str), Some("b"));
        assert_eq!(diff_ids, vec!["sha256:1", "sha256:2"]);
        let (empty, none) = parse_config(b"{}").unwrap();
        assert_eq!(empty, ImageConfig::default());
        assert!(none.is_empty());
    }

    #[test]
    fn blob_kinds() {
        assert_eq!(blob_kind(OCI_INDEX, b""), BlobKind::Index);
        assert_eq!(blob_kind(DOCKER_MANIFEST, b""), BlobKind::Manifest);
        assert_eq!(blob_kind("", br#"{"manifests":[]}"#), BlobKind::Index);
        assert_eq!(blob_kind("", br#"{"config":{},"layers":[]}"#), BlobKind::Manifest);
        assert_eq!(blob_kind(OCI_CONFIG, b"{}"), BlobKind::Other);
    }

    #[test]
    fn repositories_of_image_names() {
        assert_eq!(image_repository("docker.io/library/busybox:latest"), "docker.io/library/busybox");
        assert_eq!(image_repository("localhost:5000/x"), "localhost:5000/x");
        assert_eq!(image_repository("localhost:5000/x:1@sha256:ab"), "localhost:5000/x");
    }
}
