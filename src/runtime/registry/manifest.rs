//! Manifests and indexes as a pull meets them: their media types, the choice of a platform's
//! manifest, resolving a reference to what its tag names (with Docker Hub's mirrors tried
//! first), and reading an image's config without its layers.

use std::time::Duration;

use tracing::warn;

use super::{CONFIG_MAX, Credentials, Fetched, Registries, RegistryError, Repository};
use crate::runtime::containerd::images::{self as image, Descriptor, Index, Manifest};
use crate::runtime::reference::{self, Reference};
use crate::runtime::{ImageConfig, RuntimeError};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_SCHEMA1: &[&str] = &[
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];
/// How often a transient failure to resolve is tried again, and the first wait.
const RESOLVE_ATTEMPTS: u32 = 3;
const RESOLVE_BACKOFF: Duration = Duration::from_millis(500);

pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

/// The platform to pull for: linux on `architecture` (OCI names: amd64, arm64).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// This host's platform.
    pub fn host() -> Platform {
        let (arch, variant) = image::host_platform();
        Platform { architecture: arch.to_owned(), variant: variant.map(str::to_owned) }
    }

    /// `linux/arm64`, `linux/arm64/v8`, `arm64`; also ECS's `cpuArchitecture` (X86_64, ARM64).
    pub fn parse(s: &str) -> Option<Platform> {
        let mut parts: Vec<&str> = s.split('/').collect();
        if parts.len() > 1 {
            if parts[0] != "linux" {
                return None;
            }
            parts.remove(0);
        }
        let arch = match parts.first()?.to_ascii_lowercase().as_str() {
            "x86_64" | "amd64" => "amd64".to_owned(),
            "arm64" | "aarch64" => "arm64".to_owned(),
            a if !a.is_empty() && a.bytes().all(|b| b.is_ascii_alphanumeric()) => a.to_owned(),
            _ => return None,
        };
        Some(Platform { architecture: arch, variant: parts.get(1).map(|v| v.to_string()) })
    }

    pub fn is_host(&self) -> bool {
        self.architecture == Platform::host().architecture
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "linux/{}", self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The media type of a manifest: what its body says, else the Content-Type, else its shape.
/// Schema 1 is refused here.
pub(super) fn media_type(reference: &str, content_type: &str, body: &[u8]) -> Result<String, RegistryError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Head {
        #[serde(default)]
        schema_version: Option<u32>,
        #[serde(default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
        #[serde(default)]
        config: Option<serde_json::Value>,
    }
    let head: Head = serde_json::from_slice(body).map_err(|e| RegistryError::Protocol {
        what: format!("the manifest of {reference}"),
        reason: format!("not JSON: {e}"),
    })?;
    if head.schema_version == Some(1) || DOCKER_SCHEMA1.contains(&content_type) {
        return Err(RegistryError::Schema1 { reference: reference.to_owned() });
    }
    let known = [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];
    let chosen = match head.media_type.filter(|m| !m.is_empty()) {
        Some(m) => m,
        None if known.contains(&content_type) => content_type.to_owned(),
        None if head.manifests.is_some() => OCI_INDEX.to_owned(),
        None if head.config.is_some() => OCI_MANIFEST.to_owned(),
        None => content_type.to_owned(),
    };
    if !known.contains(&chosen.as_str()) {
        return Err(RegistryError::UnsupportedMediaType {
            reference: reference.to_owned(),
            media_type: chosen,
        });
    }
    Ok(chosen)
}

/// The entry of `index` for `platform`: linux, same architecture; the same variant is
/// preferred, no variant accepted (and arm64 without a variant is v8).
pub(crate) fn select<'a>(index: &'a Index, platform: &Platform) -> Option<&'a Descriptor> {
    let mut fallback = None;
    for d in &index.manifests {
        let Some(p) = d.platform.as_ref() else { continue };
        if p.os != "linux" || p.architecture != platform.architecture {
            continue;
        }
        let v = p.variant.as_deref();
        let want = platform.variant.as_deref();
        if v == want
            || (platform.architecture == "arm64"
                && matches!((v, want), (None, Some("v8")) | (Some("v8"), None)))
        {
            return Some(d);
        }
        if want.is_none() || v.is_none() {
            fallback = fallback.or(Some(d));
        }
    }
    fallback
}

/// What a reference resolved to at a registry.
#[derive(Debug)]
pub(crate) struct Resolution<'a> {
    /// Where it was found (the session blobs are fetched from).
    pub(crate) repo: Repository<'a>,
    /// What the tag names: an index or a manifest (`imageDigest`).
    pub(crate) top: Fetched,
    /// The platform's manifest (the same as `top` when that is a manifest).
    pub(crate) manifest: Fetched,
    pub(crate) parsed: Manifest,
    /// The index's entries, when `top` is an index.
    pub(crate) children: Vec<Descriptor>,
}

/// Resolves `r` for `platform`: the tag (or digest) to its manifest or index, an index to the
/// platform's manifest. Docker Hub's mirrors are tried first; any failure there falls back to
/// the next, and the last endpoint's failure is the answer.
pub(crate) async fn resolve<'a>(
    registries: &'a Registries,
    r: &Reference,
    credentials: Option<Credentials>,
    platform: &Platform,
) -> Result<Resolution<'a>, RegistryError> {
    let shown = r.to_string();
    let tag_or_digest = r.digest.clone().or_else(|| r.tag.clone()).unwrap_or_else(|| "latest".into());
    let endpoints = registries.endpoints(&r.domain);
    let count = endpoints.len();
    let mut last = None;
    for (i, endpoint) in endpoints.into_iter().enumerate() {
        let mirror = endpoint.mirror;
        let host = endpoint.host.clone();
        let repo = registries.repository(endpoint, &r.path, &shown, credentials.clone());
        match resolve_at(repo, &shown, &tag_or_digest, platform).await {
            Ok(res) => return Ok(res),
            Err(e) if mirror && i + 1 < count => {
                warn!(mirror = %host, error = %e, "registry mirror failed; trying the next");
                last = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or(RegistryError::NotFound { reference: shown, code: None, message: None }))
}

async fn resolve_at<'a>(
    repo: Repository<'a>,
    shown: &str,
    tag_or_digest: &str,
    platform: &Platform,
) -> Result<Resolution<'a>, RegistryError> {
    let top = retry(|| repo.manifest(tag_or_digest)).await?;
    let (manifest, children) = if is_index(&top.media_type) {
        let index: Index = serde_json::from_slice(&top.bytes).map_err(|e| RegistryError::Protocol {
            what: format!("the index of {shown}"),
            reason: e.to_string(),
        })?;
        let Some(chosen) = select(&index, platform) else {
            let offered: Vec<String> = index
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref())
                .filter(|p| p.os != "unknown")
                .map(|p| match &p.variant {
                    Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                    None => format!("{}/{}", p.os, p.architecture),
                })
                .collect();
            return Err(RegistryError::NoPlatform {
                reference: shown.to_owned(),
                platform: platform.to_string(),
                offered: if offered.is_empty() { "none".into() } else { offered.join(", ") },
            });
        };
        let digest = chosen.digest.clone();
        let m = retry(|| repo.manifest(&digest)).await?;
        if is_index(&m.media_type) {
            return Err(RegistryError::UnsupportedMediaType {
                reference: shown.to_owned(),
                media_type: format!("{} nested in an index", m.media_type),
            });
        }
        (m, index.manifests)
    } else {
        (top.clone(), vec![])
    };
    let parsed: Manifest = serde_json::from_slice(&manifest.bytes).map_err(|e| RegistryError::Protocol {
        what: format!("the manifest of {shown}"),
        reason: e.to_string(),
    })?;
    Ok(Resolution { repo, top, manifest, parsed, children })
}

/// `f` again after a transient failure, a bounded number of times.
async fn retry<T, F, Fut>(mut f: F) -> Result<T, RegistryError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RegistryError>>,
{
    let mut wait = RESOLVE_BACKOFF;
    for attempt in 1.. {
        match f().await {
            Err(e) if e.is_transient() && attempt < RESOLVE_ATTEMPTS => {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            other => return other,
        }
    }
    unreachable!("the loop returns")
}

/// An image as its registry describes it, without its layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteImage {
    /// The normalised reference.
    pub name: String,
    /// What the tag resolved to (the index digest of a multi-platform image).
    pub digest: String,
    /// The platform's manifest.
    pub manifest_digest: String,
    pub config_digest: String,
    pub config: ImageConfig,
}

/// Reads the config (env, entrypoint, labels…) of image `reference` for `platform` from its
/// registry, fetching only the manifest (and index) and the config blob: no layer is
/// downloaded. OCI and Docker v2 schema 2, single- and multi-platform.
pub async fn fetch_config(
    registries: &Registries,
    reference: &str,
    credentials: Option<Credentials>,
    platform: &Platform,
) -> Result<RemoteImage, RuntimeError> {
    let r = reference::parse_normalized(reference)?;
    let name = r.to_string();
    let pull = |error| RuntimeError::pull(&name, error);
    let res = resolve(registries, &r, credentials, platform).await.map_err(pull)?;
    let config_digest = res.parsed.config.digest.clone();
    let bytes = res.repo.blob_bytes(&config_digest, CONFIG_MAX).await.map_err(pull)?;
    let (config, _) = image::parse_config(&bytes).map_err(|e| {
        pull(RegistryError::Protocol { what: format!("the config of {name}"), reason: e.to_string() })
    })?;
    Ok(RemoteImage {
        name: name.clone(),
        digest: res.top.digest.clone(),
        manifest_digest: res.manifest.digest.clone(),
        config_digest,
        config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::containerd::images::Platform as P;

    fn entry(arch: &str, variant: Option<&str>, digest: &str) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: digest.into(),
            size: 1,
            platform: Some(P {
                architecture: arch.into(),
                os: "linux".into(),
                variant: variant.map(Into::into),
            }),
            annotations: Default::default(),
        }
    }

    #[test]
    fn platforms_parse_from_flags_and_ecs_names() {
        let arm = Platform { architecture: "arm64".into(), variant: None };
        assert_eq!(Platform::parse("linux/arm64"), Some(arm.clone()));
        assert_eq!(Platform::parse("ARM64"), Some(arm));
        assert_eq!(Platform::parse("X86_64").unwrap().architecture, "amd64");
        assert_eq!(Platform::parse("linux/arm/v7").unwrap().variant.as_deref(), Some("v7"));
        assert_eq!(Platform::parse("windows/amd64"), None);
        assert_eq!(Platform::parse(""), None);
        assert_eq!(Platform::parse("linux/arm64/v8").unwrap().to_string(), "linux/arm64/v8");
    }

    #[test]
    fn an_index_entry_is_chosen_by_platform() {
        let index = Index {
            manifests: vec![
                entry("amd64", None, "sha256:a"),
                entry("arm64", Some("v8"), "sha256:b"),
                Descriptor { platform: None, ..entry("x", None, "sha256:att") },
            ],
        };
        let pick = |a: &str, v: Option<&str>| {
            select(&index, &Platform { architecture: a.into(), variant: v.map(Into::into) })
                .map(|d| d.digest.clone())
        };
        assert_eq!(pick("amd64", None).as_deref(), Some("sha256:a"));
        assert_eq!(pick("arm64", None).as_deref(), Some("sha256:b"));
        assert_eq!(pick("arm64", Some("v8")).as_deref(), Some("sha256:b"));
        assert_eq!(pick("s390x", None), None);
    }

    #[test]
    fn media_types_and_schema1() {
        let r = "x/y:1";
        assert_eq!(media_type(r, "", br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#).unwrap(), OCI_INDEX);
        assert_eq!(
            media_type(r, DOCKER_MANIFEST, br#"{"schemaVersion":2,"config":{}}"#).unwrap(),
            DOCKER_MANIFEST
        );
        assert_eq!(
            media_type(r, "application/json", br#"{"schemaVersion":2,"config":{},"layers":[]}"#).unwrap(),
            OCI_MANIFEST
        );
        assert!(matches!(
            media_type(
                r,
                "application/vnd.docker.distribution.manifest.v1+prettyjws",
                br#"{"schemaVersion":1}"#
            ),
            Err(RegistryError::Schema1 { .. })
        ));
        assert!(matches!(
            media_type(r, "", br#"{"schemaVersion":1,"fsLayers":[]}"#),
            Err(RegistryError::Schema1 { .. })
        ));
        assert!(matches!(
            media_type(r, "", br#"{"schemaVersion":2,"mediaType":"application/x-other"}"#),
            Err(RegistryError::UnsupportedMediaType { .. })
        ));
        assert!(matches!(media_type(r, "", b"<html>"), Err(RegistryError::Protocol { .. })));
    }
}
