//! The template label of an image, read from its registry without pulling its layers, with
//! the credentials `ecsd image pull` would use (ECR login, `ECS_ENGINE_AUTH_DATA`, the docker
//! config), never logged.

use crate::engine::registry_auth::RegistryAuth;
use crate::runtime::reference;
use crate::runtime::registry::manifest::{Platform, RemoteImage};
use crate::runtime::registry::{Registries, fetch_config};

use super::error::DeployError;
use super::input::parse_label;
use super::session::{Session, SessionKeys};
use super::value::Json;

/// The template in label `label` of `image`, and the digest the tag resolved to.
pub async fn read(
    image: &str,
    label: &str,
    platform: &str,
    session: &Session,
) -> Result<(Json, String), DeployError> {
    let remote = remote(image, platform, session).await?;
    let Some(text) = remote.config.labels.get(label) else {
        return Err(DeployError::NoLabel {
            image: image.to_owned(),
            label: label.to_owned(),
            labels: remote.config.labels.keys().cloned().collect(),
        });
    };
    Ok((parse_label(text, image, label)?, remote.digest))
}

/// The digest `image`'s tag resolves to (the index's, for a multi-platform image).
pub async fn digest(image: &str, platform: &str, session: &Session) -> Result<String, DeployError> {
    Ok(remote(image, platform, session).await?.digest)
}

/// `image` by digest: `repo@sha256:…`, its tag dropped (one by digest already is kept).
pub fn pinned(image: &str, digest: &str) -> String {
    if image.contains('@') {
        return image.to_owned();
    }
    let name_start = image.rfind('/').map_or(0, |i| i + 1);
    let name = match image[name_start..].rfind(':') {
        Some(colon) => &image[..name_start + colon],
        None => image,
    };
    format!("{name}@{digest}")
}

async fn remote(image: &str, platform: &str, session: &Session) -> Result<RemoteImage, DeployError> {
    let platform = Platform::parse(platform).ok_or_else(|| DeployError::Platform(platform.to_owned()))?;
    let registry_error = |cause| DeployError::Registry { image: image.to_owned(), cause: Box::new(cause) };
    let r = reference::parse_normalized(image).map_err(registry_error)?;
    let auth = RegistryAuth::new(session.images.clone(), session.aws.clone());
    let credentials = auth
        .for_image(&r, None, &SessionKeys(&session.keys))
        .await
        .map_err(|cause| DeployError::RegistryAuth { image: image.to_owned(), cause: Box::new(cause) })?;
    let registries = Registries::new(session.images.registry.clone());
    fetch_config(&registries, image, credentials, &platform).await.map_err(registry_error)
}

#[cfg(test)]
mod tests {
    use super::pinned;

    #[test]
    fn pinning_replaces_the_tag_and_keeps_a_registry_port() {
        let d = "sha256:abc";
        assert_eq!(pinned("127.0.0.1:5000/web:1.4.2", d), "127.0.0.1:5000/web@sha256:abc");
        assert_eq!(pinned("127.0.0.1:5000/web", d), "127.0.0.1:5000/web@sha256:abc");
        assert_eq!(pinned("busybox", d), "busybox@sha256:abc");
        assert_eq!(pinned("r.example/team/app:latest", d), "r.example/team/app@sha256:abc");
        assert_eq!(pinned("busybox@sha256:def", d), "busybox@sha256:def");
    }
}
