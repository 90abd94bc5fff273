//! The template label of an image, read from its registry without pulling its layers, with
//! the credentials `ecsd image pull` would use (ECR login, `ECS_ENGINE_AUTH_DATA`, the docker
//! config), never logged.

use crate::engine::registry_auth::RegistryAuth;
use crate::runtime::reference;
use crate::runtime::registry::manifest::Platform;
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
    let platform = Platform::parse(platform).ok_or_else(|| DeployError::Platform(platform.to_owned()))?;
    let registry_error = |cause| DeployError::Registry { image: image.to_owned(), cause: Box::new(cause) };
    let r = reference::parse_normalized(image).map_err(registry_error)?;
    let auth = RegistryAuth::new(session.images.clone(), session.aws.clone());
    let credentials = auth
        .for_image(&r, None, &SessionKeys(&session.keys))
        .await
        .map_err(|cause| DeployError::RegistryAuth { image: image.to_owned(), cause: Box::new(cause) })?;
    let registries = Registries::new(session.images.registry.clone());
    let remote = fetch_config(&registries, image, credentials, &platform).await.map_err(registry_error)?;
    let Some(text) = remote.config.labels.get(label) else {
        return Err(DeployError::NoLabel {
            image: image.to_owned(),
            label: label.to_owned(),
            labels: remote.config.labels.keys().cloned().collect(),
        });
    };
    Ok((parse_label(text, image, label)?, remote.digest))
}
