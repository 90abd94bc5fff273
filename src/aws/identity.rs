//! Keys to sign with, and where ecsd's own keys come from.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use aws_config::Region;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};

use super::AwsError;

/// Keys without an expiry (static keys, profiles) are read again after this long.
const RELOAD_STATIC: Duration = Duration::from_secs(15 * 60);
/// Keys with an expiry are replaced when less than this is left.
const RENEW_BEFORE: Duration = Duration::from_secs(5 * 60);

/// An access key pair with an optional session token. `Debug` shows only the key id.
#[derive(Clone, PartialEq, Eq)]
pub struct Keys {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keys")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"** redacted **")
            .field("session_token", &self.session_token.as_ref().map(|_| "** redacted **"))
            .finish()
    }
}

impl Keys {
    /// Keys; an empty token is no token.
    pub fn new(access_key_id: &str, secret_access_key: &str, session_token: Option<&str>) -> Keys {
        Keys {
            access_key_id: access_key_id.to_owned(),
            secret_access_key: secret_access_key.to_owned(),
            session_token: session_token.filter(|t| !t.is_empty()).map(str::to_owned),
        }
    }
}

/// Keys and the time they stop working, when they do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedKeys {
    pub keys: Keys,
    pub expires: Option<SystemTime>,
}

/// Where ecsd's own keys (the caller of AssumeRole, or the keys of a task without an
/// execution role) come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnIdentity {
    Keys(Keys),
    /// A profile of `~/.aws/config` and `~/.aws/credentials`.
    Profile(String),
    /// The SDKs' standard chain: `AWS_ACCESS_KEY_ID`…, `AWS_PROFILE`, web identity,
    /// container credentials, IMDS. It reads the process environment itself.
    DefaultChain,
}

/// Resolves [`OwnIdentity`] into keys, reusing them while they are fresh.
pub(crate) struct OwnKeys {
    identity: OwnIdentity,
    region: String,
    provider: tokio::sync::OnceCell<SharedCredentialsProvider>,
    cached: Mutex<Option<(IssuedKeys, SystemTime)>>,
}

impl fmt::Debug for OwnKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnKeys").field("identity", &self.identity).finish_non_exhaustive()
    }
}

impl OwnKeys {
    pub(crate) fn new(identity: OwnIdentity, region: &str) -> OwnKeys {
        OwnKeys {
            identity,
            region: region.to_owned(),
            provider: tokio::sync::OnceCell::new(),
            cached: Mutex::new(None),
        }
    }

    pub(crate) async fn get(&self) -> Result<IssuedKeys, AwsError> {
        if let OwnIdentity::Keys(keys) = &self.identity {
            return Ok(IssuedKeys { keys: keys.clone(), expires: None });
        }
        let now = SystemTime::now();
        if let Some((keys, fetched)) = self.cached.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let fresh = match keys.expires {
                Some(expires) => expires > now + RENEW_BEFORE,
                None => now.duration_since(*fetched).is_ok_and(|age| age < RELOAD_STATIC),
            };
            if fresh {
                return Ok(keys.clone());
            }
        }
        let provider = self.provider.get_or_init(|| self.provider()).await;
        let creds =
            provider.provide_credentials().await.map_err(|cause| AwsError::OwnCredentials { cause })?;
        let issued = IssuedKeys {
            keys: Keys::new(creds.access_key_id(), creds.secret_access_key(), creds.session_token()),
            expires: creds.expiry(),
        };
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = Some((issued.clone(), now));
        Ok(issued)
    }

    async fn provider(&self) -> SharedCredentialsProvider {
        match &self.identity {
            OwnIdentity::Keys(keys) => {
                SharedCredentialsProvider::new(aws_credential_types::Credentials::new(
                    &keys.access_key_id,
                    &keys.secret_access_key,
                    keys.session_token.clone(),
                    None,
                    "ecsd",
                ))
            }
            OwnIdentity::Profile(name) => SharedCredentialsProvider::new(
                aws_config::profile::ProfileFileCredentialsProvider::builder().profile_name(name).build(),
            ),
            OwnIdentity::DefaultChain => SharedCredentialsProvider::new(
                aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
                    .region(Region::new(self.region.clone()))
                    .build()
                    .await,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_secret_and_the_token() {
        let keys = Keys::new("AKIAEXAMPLE", "very-secret", Some("very-token"));
        let debug = format!("{keys:?} {:?}", OwnIdentity::Keys(keys.clone()));
        assert!(debug.contains("AKIAEXAMPLE"), "{debug}");
        assert!(!debug.contains("very-"), "{debug}");
        assert_eq!(Keys::new("a", "b", Some("")).session_token, None);
    }

    #[tokio::test]
    async fn a_profile_that_does_not_exist_is_a_typed_error() {
        // Whatever profile files this machine has, they have no profile of this name.
        let name = format!("ecsd-test-no-such-profile-{}", uuid::Uuid::new_v4());
        let own = OwnKeys::new(OwnIdentity::Profile(name.clone()), "us-east-1");
        let err = own.get().await.unwrap_err();
        assert!(matches!(err, AwsError::OwnCredentials { .. }), "{err:?}");
        assert!(err.to_string().contains("credential provider"), "{err}");
        // Positive control: keys given directly need no provider.
        let keys = Keys::new("AKIAEXAMPLE", "s", None);
        let own = OwnKeys::new(OwnIdentity::Keys(keys.clone()), "us-east-1");
        assert_eq!(own.get().await.unwrap(), IssuedKeys { keys, expires: None });
    }
}
