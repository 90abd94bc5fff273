//! Registry authentication on the wire: the credentials a pull carries, the registry's
//! `WWW-Authenticate` challenge, and the Bearer-token handshake of the distribution spec
//! (token server at the challenge's realm, Basic credentials or an identity token to get a
//! token for `repository:<repo>:pull`).
//!
//! Tokens are cached per registry, repository and credentials until shortly before they
//! expire, so a changed password (a new ECR token) is never answered with a stale token.

use std::fmt;

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

/// What a pull authenticates with. `Debug` shows the kind only.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A user name and password (or an ECR token as password of user `AWS`).
    Basic { username: String, password: String },
    /// An OAuth refresh token from `docker login` (`identitytoken` in config.json).
    IdentityToken(String),
    /// A registry token sent as `Bearer` on every request, as it is.
    Bearer(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"** redacted **")
                .finish(),
            Credentials::IdentityToken(_) => f.write_str("IdentityToken(** redacted **)"),
            Credentials::Bearer(_) => f.write_str("Bearer(** redacted **)"),
        }
    }
}

impl Credentials {
    pub fn basic(username: &str, password: &str) -> Credentials {
        Credentials::Basic { username: username.to_owned(), password: password.to_owned() }
    }

    /// A digest of the credentials, to key caches without keeping the secret as a key.
    pub(crate) fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        match self {
            Credentials::Basic { username, password } => {
                h.update(b"basic\0");
                h.update(username.as_bytes());
                h.update(b"\0");
                h.update(password.as_bytes());
            }
            Credentials::IdentityToken(t) => {
                h.update(b"identity\0");
                h.update(t.as_bytes());
            }
            Credentials::Bearer(t) => {
                h.update(b"bearer\0");
                h.update(t.as_bytes());
            }
        }
        hex::encode(&h.finalize()[..16])
    }

    /// The `Authorization` value for a registry that asked for Basic.
    pub(crate) fn basic_header(&self) -> Option<String> {
        match self {
            Credentials::Basic { username, password } => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
            )),
            _ => None,
        }
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String>, scope: Option<String> },
}

/// Parses the first challenge of a `WWW-Authenticate` value: `Bearer realm="…",service="…"`
/// or `Basic realm="…"`. `None` for a scheme ecsd cannot answer.
pub(crate) fn parse_challenge(value: &str) -> Option<Challenge> {
    let value = value.trim();
    let (scheme, rest) = value.split_once(char::is_whitespace).unwrap_or((value, ""));
    let params = parse_params(rest);
    let get = |k: &str| params.iter().find(|(n, _)| n.eq_ignore_ascii_case(k)).map(|(_, v)| v.clone());
    if scheme.eq_ignore_ascii_case("basic") {
        Some(Challenge::Basic)
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Some(Challenge::Bearer { realm: get("realm")?, service: get("service"), scope: get("scope") })
    } else {
        None
    }
}

/// `k="v", k2=v2` with backslash escapes inside quotes.
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            name.push(c);
            chars.next();
        }
        if name.is_empty() {
            return out;
        }
        if chars.next() != Some('=') {
            continue;
        }
        while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((name.trim().to_owned(), value.trim().to_owned()));
    }
}

/// A token server's answer.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct TokenResponse {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

impl TokenResponse {
    pub(crate) fn token(self) -> Option<(String, Option<u64>)> {
        let expires = self.expires_in;
        self.token
            .filter(|t| !t.is_empty())
            .or(self.access_token.filter(|t| !t.is_empty()))
            .map(|t| (t, expires))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="http://127.0.0.1:9/token",service="ecsd-test",scope="repository:a/b:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:9/token".into(),
                service: Some("ecsd-test".into()),
                scope: Some("repository:a/b:pull".into()),
            })
        );
        assert_eq!(parse_challenge(r#"Basic realm="ecsd-test""#), Some(Challenge::Basic));
        assert_eq!(
            parse_challenge(r#"bearer realm="https://auth.docker.io/token", service = "registry.docker.io""#),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: None,
            })
        );
        assert!(matches!(
            parse_challenge(r#"Bearer realm="a\"b""#),
            Some(Challenge::Bearer { realm, .. }) if realm == "a\"b"
        ));
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(parse_challenge("Bearer service=\"x\""), None);
    }

    #[test]
    fn credentials_never_show_their_secret() {
        let c = Credentials::basic("user", "s3cret!");
        assert!(!format!("{c:?}").contains("s3cret"));
        assert_eq!(c.basic_header().as_deref(), Some("Basic dXNlcjpzM2NyZXQh"));
        assert!(!format!("{:?}", Credentials::IdentityToken("tok".into())).contains("tok"));
        assert_ne!(c.fingerprint(), Credentials::basic("user", "other").fingerprint());
    }

    #[test]
    fn token_answers() {
        let t: TokenResponse = serde_json::from_str(r#"{"token":"a","expires_in":300}"#).unwrap();
        assert_eq!(t.token(), Some(("a".into(), Some(300))));
        let t: TokenResponse = serde_json::from_str(r#"{"access_token":"b"}"#).unwrap();
        assert_eq!(t.token(), Some(("b".into(), None)));
        let t: TokenResponse = serde_json::from_str(r#"{"token":""}"#).unwrap();
        assert_eq!(t.token(), None);
    }
}
