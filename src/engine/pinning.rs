//! Image digests for callers that pin them: the service scheduler resolves each deployment's
//! image tags once, so that every task of the deployment runs the same image.

use super::Engine;
use crate::runtime::RuntimeError;
use crate::runtime::reference::normalize;

impl Engine {
    /// The manifest digest `reference` names in the image store now, when a task can run
    /// the image by it (`reference@digest` resolves to the same image). `None`: the image is
    /// not in the store, `reference` has a digest already, or the store cannot find images
    /// by digest.
    pub async fn pinnable_digest(&self, reference: &str) -> Result<Option<String>, RuntimeError> {
        let normalized = normalize(reference)?;
        if normalized.contains('@') {
            return Ok(None);
        }
        let image = match self.runtime.image(&normalized).await {
            Ok(image) => image,
            Err(RuntimeError::ImageNotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let pinned = normalize(&format!("{reference}@{}", image.digest))?;
        match self.runtime.image(&pinned).await {
            Ok(by_digest) if by_digest.digest == image.digest => Ok(Some(image.digest)),
            Ok(_) | Err(RuntimeError::ImageNotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
