//! The template label of an image, read from its registry without pulling its layers.

use crate::runtime::registry::manifest::Platform;
use crate::runtime::registry::{Registries, RegistrySettings, fetch_config};

use super::error::DeployError;
use super::input::parse_label;
use super::value::Json;

/// The template in label `label` of `image`, and the digest the tag resolved to.
pub async fn read(
    image: &str,
    label: &str,
    platform: &str,
    insecure: &[String],
) -> Result<(Json, String), DeployError> {
    let platform = Platform::parse(platform).ok_or_else(|| DeployError::Platform(platform.to_owned()))?;
    let registries =
        Registries::new(RegistrySettings { insecure: insecure.to_vec(), ..RegistrySettings::default() });
    let remote = fetch_config(&registries, image, None, &platform)
        .await
        .map_err(|cause| DeployError::Registry { image: image.to_owned(), cause: Box::new(cause) })?;
    let Some(text) = remote.config.labels.get(label) else {
        return Err(DeployError::NoLabel {
            image: image.to_owned(),
            label: label.to_owned(),
            labels: remote.config.labels.keys().cloned().collect(),
        });
    };
    Ok((parse_label(text, image, label)?, remote.digest))
}
