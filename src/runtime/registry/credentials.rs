//! Registry credentials a host already has: `ECS_ENGINE_AUTH_TYPE`/`ECS_ENGINE_AUTH_DATA` as
//! the ECS agent reads them (`docker` and `dockercfg`), and Docker's `config.json` (`auths`,
//! `credHelpers`, `credsStore`, with helpers run as Docker runs them). ECR tokens and
//! `repositoryCredentials` need AWS and the task's execution role: the engine adds those.
//!
//! Pure parsing plus the helper processes; no secret is ever logged or put in an error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;

use super::Credentials;

/// The key Docker's tools file Docker Hub's credentials under.
pub const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// Why host credentials could not be read. Never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialSourceError {
    #[error("ECS_ENGINE_AUTH_TYPE={kind}: unknown auth configuration type (expected docker or dockercfg)")]
    EngineAuthType { kind: String },
    #[error("ECS_ENGINE_AUTH_DATA: could not parse '{kind}' type auth config: {reason}")]
    EngineAuthData { kind: String, reason: String },
    #[error("cannot read the docker config {path}: {reason}")]
    DockerConfig { path: PathBuf, reason: String },
    #[error("docker credential helper docker-credential-{helper} failed for {server}: {reason}")]
    Helper { helper: String, server: String, reason: String },
}

/// Credentials per registry from `ECS_ENGINE_AUTH_DATA`, keys without their scheme.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EngineAuth {
    entries: BTreeMap<String, Credentials>,
}

impl std::fmt::Debug for EngineAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineAuth").field("registries", &self.entries.keys().collect::<Vec<_>>()).finish()
    }
}

impl EngineAuth {
    /// Parses `data` of type `kind` (`docker`: registry → {username, password}; `dockercfg`:
    /// registry → {auth: base64(user:pass)}, the legacy `.dockercfg`, whose modern `{"auths":…}`
    /// wrapper the agent does not accept either).
    pub fn parse(kind: &str, data: &str) -> Result<EngineAuth, CredentialSourceError> {
        let bad = |reason: String| CredentialSourceError::EngineAuthData { kind: kind.to_owned(), reason };
        if !matches!(kind, "docker" | "dockercfg") {
            return Err(CredentialSourceError::EngineAuthType { kind: kind.to_owned() });
        }
        #[derive(Deserialize)]
        struct Entry {
            #[serde(default)]
            username: Option<String>,
            #[serde(default)]
            password: Option<String>,
            #[serde(default)]
            auth: Option<String>,
        }
        let map: BTreeMap<String, serde_json::Value> = serde_json::from_str(data)
            .map_err(|e| bad(format!("not a JSON object: line {} column {}", e.line(), e.column())))?;
        let mut entries = BTreeMap::new();
        for (registry, value) in map {
            let Ok(entry) = serde_json::from_value::<Entry>(value) else { continue };
            let creds = match kind {
                "docker" => match (entry.username, entry.password) {
                    (Some(u), Some(p)) if !u.is_empty() => Credentials::Basic { username: u, password: p },
                    _ => continue,
                },
                "dockercfg" => match entry.auth.as_deref().and_then(decode_auth) {
                    Some(c) => c,
                    // As the agent: "Malformed auth data for registry …; must contain ':'".
                    None => continue,
                },
                _ => continue,
            };
            entries.insert(strip_scheme(&registry).to_owned(), creds);
        }
        Ok(EngineAuth { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The credentials for `domain`/`path`: Docker Hub under `index.docker.io/v1/`, else the
    /// registry's own key, a longer `host/namespace` key winning when the image is under it.
    pub fn lookup(&self, domain: &str, path: &str) -> Option<Credentials> {
        if is_docker_hub(domain) {
            return self.entries.get(strip_scheme(DOCKER_HUB_KEY)).cloned();
        }
        let image = format!("{domain}/{path}");
        self.entries
            .iter()
            .filter(|(k, _)| {
                let k = k.trim_end_matches('/');
                k == domain
                    || (k.starts_with(&format!("{domain}/"))
                        && (image == k || image.starts_with(&format!("{k}/"))))
            })
            .max_by_key(|(k, _)| k.len())
            .map(|(_, c)| c.clone())
    }
}

fn is_docker_hub(domain: &str) -> bool {
    matches!(domain, "docker.io" | "index.docker.io" | "registry-1.docker.io")
}

fn strip_scheme(s: &str) -> &str {
    s.strip_prefix("https://").or_else(|| s.strip_prefix("http://")).unwrap_or(s)
}

/// `base64(user:pass)` (padding optional) as credentials.
fn decode_auth(auth: &str) -> Option<Credentials> {
    let engine = base64::engine::general_purpose::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::general_purpose::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let raw = engine.decode(auth.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    (!u.is_empty()).then(|| Credentials::basic(u, p.trim_end_matches('\n')))
}

/// Docker's `config.json`, the parts that hold credentials.
#[derive(Debug, Default, Deserialize)]
struct DockerConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

/// `https://host/v2/` and `host` name the same registry in `auths`.
fn registry_of_key(key: &str) -> &str {
    let k = strip_scheme(key);
    let host = k.split('/').next().unwrap_or(k);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io",
        h => h,
    }
}

/// The credentials Docker would use for registry `domain`, from the docker config in
/// `dir` (`$DOCKER_CONFIG`, else `~/.docker`): its credential helper, its credential store,
/// else `auths`. `Ok(None)` when the file or the entry does not exist.
pub async fn docker_config_lookup(
    dir: &Path,
    domain: &str,
) -> Result<Option<Credentials>, CredentialSourceError> {
    let path = dir.join("config.json");
    let text = match tokio::fs::read_to_string(&path).await {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CredentialSourceError::DockerConfig { path, reason: e.to_string() }),
    };
    let file: DockerConfigFile =
        serde_json::from_str(&text).map_err(|e| CredentialSourceError::DockerConfig {
            path: path.clone(),
            reason: format!("not a docker config: line {} column {}", e.line(), e.column()),
        })?;
    let domain = if is_docker_hub(domain) { "docker.io" } else { domain };
    let server = if domain == "docker.io" { DOCKER_HUB_KEY.to_owned() } else { domain.to_owned() };
    let helper = file
        .cred_helpers
        .iter()
        .find(|(k, _)| registry_of_key(k) == domain)
        .map(|(_, h)| h.clone())
        .or(file.creds_store.clone())
        .filter(|h| !h.is_empty());
    if let Some(helper) = helper
        && let Some(c) = run_helper(&helper, &server).await?
    {
        return Ok(Some(c));
    }
    let Some(entry) = file.auths.iter().find(|(k, _)| registry_of_key(k) == domain).map(|(_, e)| e) else {
        return Ok(None);
    };
    if let Some(t) = entry.identitytoken.as_deref().filter(|t| !t.is_empty()) {
        return Ok(Some(Credentials::IdentityToken(t.to_owned())));
    }
    if let Some(t) = entry.registrytoken.as_deref().filter(|t| !t.is_empty()) {
        return Ok(Some(Credentials::Bearer(t.to_owned())));
    }
    if let Some(c) = entry.auth.as_deref().filter(|a| !a.is_empty()).and_then(decode_auth) {
        return Ok(Some(c));
    }
    match (&entry.username, &entry.password) {
        (Some(u), Some(p)) if !u.is_empty() => Ok(Some(Credentials::basic(u, p))),
        _ => Ok(None),
    }
}

/// Runs `docker-credential-<helper> get` with `server` on stdin, as Docker does. A helper
/// that has nothing for the server is `Ok(None)`.
pub async fn run_helper(helper: &str, server: &str) -> Result<Option<Credentials>, CredentialSourceError> {
    if !helper.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.') {
        return Err(CredentialSourceError::Helper {
            helper: helper.to_owned(),
            server: server.to_owned(),
            reason: "not a helper name".into(),
        });
    }
    run_program(Path::new(&format!("docker-credential-{helper}")), helper, server).await
}

/// Runs the helper `program` (found on PATH when it has no `/`).
async fn run_program(
    program: &Path,
    helper: &str,
    server: &str,
) -> Result<Option<Credentials>, CredentialSourceError> {
    use tokio::io::AsyncWriteExt;
    let fail = |reason: String| CredentialSourceError::Helper {
        helper: helper.to_owned(),
        server: server.to_owned(),
        reason,
    };
    let mut child = tokio::process::Command::new(program)
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(server.as_bytes()).await.map_err(|e| fail(e.to_string()))?;
    }
    let out = tokio::time::timeout(HELPER_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| fail(format!("no answer within {} s", HELPER_TIMEOUT.as_secs())))?
        .map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        // Docker's helpers print "credentials not found in native keychain" for an unknown
        // server; any failure means no credentials here, as Docker treats it.
        return Ok(None);
    }
    #[derive(Deserialize)]
    struct Answer {
        #[serde(rename = "Username", default)]
        username: String,
        #[serde(rename = "Secret", default)]
        secret: String,
    }
    let a: Answer = serde_json::from_slice(&out.stdout)
        .map_err(|_| fail("its answer is not the expected JSON".into()))?;
    if a.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(if a.username == "<token>" {
        Credentials::IdentityToken(a.secret)
    } else {
        Credentials::Basic { username: a.username, password: a.secret }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_type_engine_auth() {
        let a = EngineAuth::parse(
            "docker",
            r#"{"https://index.docker.io/v1/":{"username":"hub","password":"p1","email":"e@x"},
                "my.registry.example.com":{"username":"u","password":"p2"},
                "my.registry.example.com/team":{"username":"t","password":"p3"}}"#,
        )
        .unwrap();
        assert_eq!(a.lookup("docker.io", "library/busybox"), Some(Credentials::basic("hub", "p1")));
        assert_eq!(a.lookup("my.registry.example.com", "other/app"), Some(Credentials::basic("u", "p2")));
        assert_eq!(a.lookup("my.registry.example.com", "team/app"), Some(Credentials::basic("t", "p3")));
        assert_eq!(a.lookup("my.registry.example.com", "teammate/app"), Some(Credentials::basic("u", "p2")));
        assert_eq!(a.lookup("other.example.com", "x"), None);
        assert!(!format!("{a:?}").contains("p1"));
    }

    #[test]
    fn dockercfg_type_engine_auth() {
        let a = EngineAuth::parse(
            "dockercfg",
            r#"{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYXNz","email":"e"},
            "127.0.0.1:5000":{"auth":"dXNlcjpwYXNz"}, "bad":{"auth":"bm9jb2xvbg=="}}"#,
        )
        .unwrap();
        assert_eq!(a.lookup("docker.io", "x/y"), Some(Credentials::basic("user", "pass")));
        assert_eq!(a.lookup("127.0.0.1:5000", "x"), Some(Credentials::basic("user", "pass")));
        assert_eq!(a.lookup("bad", "x"), None);
        // The modern wrapper is a registry named "auths" to the agent: no credentials.
        let wrapped =
            EngineAuth::parse("dockercfg", r#"{"auths":{"127.0.0.1:5000":{"auth":"dXNlcjpwYXNz"}}}"#)
                .unwrap();
        assert!(wrapped.is_empty());
        assert!(matches!(EngineAuth::parse("ecr", "{}"), Err(CredentialSourceError::EngineAuthType { .. })));
        let e = EngineAuth::parse("docker", "{not json").unwrap_err().to_string();
        assert!(e.starts_with("ECS_ENGINE_AUTH_DATA: could not parse 'docker' type auth config"), "{e}");
        assert!(!e.contains("not json"));
    }

    #[tokio::test]
    async fn docker_config_auths_and_helpers() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(docker_config_lookup(dir.path(), "docker.io").await.unwrap(), None);
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"aHViOnB3"},
                "http://127.0.0.1:5000/v2/":{"auth":"dXNlcjpwYXNz"},
                "tok.example":{"identitytoken":"refresh"}},
               "credHelpers":{"helped.example":"ecsd-test-missing-helper"}}"#,
        )
        .unwrap();
        assert_eq!(
            docker_config_lookup(dir.path(), "docker.io").await.unwrap(),
            Some(Credentials::basic("hub", "pw"))
        );
        assert_eq!(
            docker_config_lookup(dir.path(), "127.0.0.1:5000").await.unwrap(),
            Some(Credentials::basic("user", "pass"))
        );
        assert_eq!(
            docker_config_lookup(dir.path(), "tok.example").await.unwrap(),
            Some(Credentials::IdentityToken("refresh".into()))
        );
        // A helper that cannot run is an error that names it, not silence.
        let e = docker_config_lookup(dir.path(), "helped.example").await.unwrap_err();
        assert!(
            matches!(&e, CredentialSourceError::Helper { helper, .. } if helper == "ecsd-test-missing-helper"),
            "{e}"
        );
        std::fs::write(dir.path().join("config.json"), "{").unwrap();
        assert!(matches!(
            docker_config_lookup(dir.path(), "docker.io").await,
            Err(CredentialSourceError::DockerConfig { .. })
        ));
    }

    #[tokio::test]
    async fn helpers_run_as_docker_runs_them() {
        let dir = tempfile::tempdir().unwrap();
        let helper = dir.path().join("docker-credential-ecsdtest");
        std::fs::write(
            &helper,
            "#!/bin/sh\nread server\ncase $server in\n  reg.example) echo '{\"ServerURL\":\"reg.example\",\"Username\":\"hu\",\"Secret\":\"hs\"}';;\n  tok.example) echo '{\"Username\":\"<token>\",\"Secret\":\"rt\"}';;\n  *) echo 'credentials not found in native keychain'; exit 1;;\nesac\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let get = |server: &'static str| run_program(&helper, "ecsdtest", server);
        assert_eq!(get("reg.example").await.unwrap(), Some(Credentials::basic("hu", "hs")));
        assert_eq!(get("tok.example").await.unwrap(), Some(Credentials::IdentityToken("rt".into())));
        assert_eq!(get("unknown.example").await.unwrap(), None);
        assert!(matches!(run_helper("bad/name", "x").await, Err(CredentialSourceError::Helper { .. })));
    }
}
