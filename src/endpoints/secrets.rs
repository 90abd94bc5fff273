//! A container's `secrets[]` and `environmentFiles`, resolved into environment variables
//! with the execution role's keys (from
//! [`CredentialStore::for_execution`](super::credentials::CredentialStore::for_execution))
//! before the container starts.
//!
//! - `valueFrom` as a Secrets Manager ARN, optionally followed by
//!   `:json-key:version-stage:version-id` (each part may be empty), is read with
//!   GetSecretValue; anything else is an SSM parameter name or ARN, read with
//!   GetParameters (WithDecryption, 10 names per call, per region), as the ECS agent does.
//! - Environment files are S3 objects (`arn:aws:s3:::bucket/key`, as in ECS) or, as an
//!   ecsd extension, local files (an absolute path or a `file://` URL), in Docker's
//!   env-file syntax.
//!
//! Endpoints (read once, by `config`, through [`SecretSettings::from_env`]):
//! `AWS_ENDPOINT_URL_SECRETSMANAGER`, else `SECRET_MANAGER_ENDPOINT_URL`;
//! `AWS_ENDPOINT_URL_SSM`, else `SSM_ENDPOINT_URL`; `AWS_ENDPOINT_URL_S3` (path-style
//! requests). Unset: the service's AWS endpoint for the region.
//!
//! Errors read like ECS's stopped reasons (`ResourceInitializationError: …`) and name the
//! secret or file; they never contain a secret value.
//!
//! The three calls (GetSecretValue, GetParameters, S3 GetObject) are SigV4-signed HTTP
//! requests made here with aws-sigv4 and reqwest: aws-sdk-ssm alone added about 140 s of
//! compile time (debug) and aws-sdk-secretsmanager 30 s, for one operation each.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::SignableBody;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::task::JoinSet;

use super::credentials::{Credentials, endpoint_from_env};
use crate::model::shapes::{EnvironmentFile, Secret};

/// GetParameters takes at most this many names.
const SSM_BATCH: usize = 10;
/// Environment files and service responses larger than this are refused (the whole
/// environment of a process is limited to a few MiB anyway).
const MAX_BODY: usize = 1 << 20;
/// Bound on one HTTP request to an AWS service.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts per call when the failure is transient (transport, 5xx, throttling).
const ATTEMPTS: u32 = 3;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretSettings {
    pub secretsmanager_endpoint: Option<String>,
    pub ssm_endpoint: Option<String>,
    pub s3_endpoint: Option<String>,
}

impl SecretSettings {
    /// Resolves the endpoints from `env`; errors read `NAME=value: reason`.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<SecretSettings, String> {
        Ok(SecretSettings {
            secretsmanager_endpoint: endpoint_from_env(
                env,
                &["AWS_ENDPOINT_URL_SECRETSMANAGER", "SECRET_MANAGER_ENDPOINT_URL"],
            )?,
            ssm_endpoint: endpoint_from_env(env, &["AWS_ENDPOINT_URL_SSM", "SSM_ENDPOINT_URL"])?,
            s3_endpoint: endpoint_from_env(env, &["AWS_ENDPOINT_URL_S3"])?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error(
        "ResourceInitializationError: unable to pull secrets or registry auth: no HTTPS client: {detail}"
    )]
    Http { detail: String },
    #[error("ResourceInitializationError: secret {index} of the container has no {field}")]
    Incomplete { index: usize, field: &'static str },
    #[error(
        "ResourceInitializationError: unable to pull secrets or registry auth: execution resource retrieval \
         failed: unable to retrieve secret from asm: trying to retrieve secret with value {value_from} resulted \
         in error: an invalid ARN format for the AWS Secrets Manager secret was specified. Specify a valid ARN \
         and try again."
    )]
    AsmArn { value_from: String },
    #[error(
        "ResourceInitializationError: unable to pull secrets or registry auth: execution resource retrieval \
         failed: unable to retrieve secret from asm: failed to fetch secret {value_from} from secrets manager: \
         {detail}"
    )]
    Asm { value_from: String, detail: String },
    #[error(
        "ResourceInitializationError: unable to pull secrets or registry auth: execution resource retrieval \
         failed: unable to retrieve secret from asm: secret {value_from}: retrieved secret from Secrets Manager \
         did not contain json key {key}"
    )]
    AsmJsonKey { value_from: String, key: String },
    #[error(
        "ResourceInitializationError: unable to pull secrets or registry auth: execution resource retrieval \
         failed: unable to retrieve secret from asm: secret {value_from}: json key {key} was asked for but the \
         secret value is not a JSON object"
    )]
    AsmNotJson { value_from: String, key: String },
    #[error(
        "ResourceInitializationError: unable to pull secrets or registry auth: execution resource retrieval \
         failed: unable to retrieve secret from asm: secret {value_from} has no SecretString (a binary secret \
         cannot be an environment variable)"
    )]
    AsmBinary { value_from: String },
    #[error(
        "ResourceInitializationError: unable to pull secrets or registry auth: execution resource retrieval \
         failed: unable to retrieve secrets from ssm: fetching secret data from SSM Parameter Store in \
         {region} for {names}: {detail}"
    )]
    Ssm { region: String, names: String, detail: String },
    #[error(
        "ResourceInitializationError: unable to pull secrets or registry auth: execution resource retrieval \
         failed: unable to retrieve secrets from ssm: invalid parameters: {names}"
    )]
    SsmInvalid { names: String },
    #[error(
        "ResourceInitializationError: failed to download env files: environment file {value:?} is neither an \
         S3 object ARN (arn:aws:s3:::bucket/key) nor an absolute path or file:// URL"
    )]
    EnvFileValue { value: String },
    #[error(
        "ResourceInitializationError: failed to download env files: unable to read environment file {path}: {detail}"
    )]
    EnvFileRead { path: String, detail: String },
    #[error(
        "ResourceInitializationError: failed to download env files: unable to download env file with key {key} \
         from bucket {bucket}: {detail}"
    )]
    EnvFileS3 { bucket: String, key: String, detail: String },
    #[error(
        "ResourceInitializationError: failed to download env files: environment file {file} line {line}: {reason}"
    )]
    EnvFileSyntax { file: String, line: usize, reason: String },
}

/// Resolves `secrets` into `(name, value)` pairs in their order, reading each distinct
/// `valueFrom` once, concurrently. `region` is the task's; an ARN's own region wins. The
/// first failing secret (in order) is the error.
pub async fn resolve(
    settings: &SecretSettings,
    creds: &Credentials,
    region: &str,
    secrets: &[Secret],
) -> Result<Vec<(String, String)>, SecretError> {
    let mut wanted = Vec::with_capacity(secrets.len());
    for (index, s) in secrets.iter().enumerate() {
        let name = s.name.as_deref().ok_or(SecretError::Incomplete { index, field: "name" })?;
        let value_from =
            s.value_from.as_deref().ok_or(SecretError::Incomplete { index, field: "valueFrom" })?;
        wanted.push((name, value_from));
    }

    let aws = Aws::new(creds).map_err(|detail| SecretError::Http { detail })?;
    // Each job is keyed by the position of its first secret, so the reported error is the
    // same whichever call fails first.
    let mut jobs = JoinSet::new();
    let mut seen = HashSet::new();
    let mut ssm_names: BTreeMap<&str, Vec<(usize, String)>> = BTreeMap::new();
    for (position, &(_, value_from)) in wanted.iter().enumerate() {
        if !seen.insert(value_from) {
            continue;
        }
        if arn_field(value_from, 2) == Some("secretsmanager") {
            let asm = AsmRef::parse(value_from)?;
            let (aws, endpoint) = (aws.clone(), settings.secretsmanager_endpoint.clone());
            let region = asm.region.clone().unwrap_or_else(|| region.to_owned());
            jobs.spawn(async move {
                (position, fetch_asm(&aws, endpoint.as_deref(), &region, asm).await.map(|v| vec![v]))
            });
        } else {
            let r = arn_field(value_from, 3).filter(|r| !r.is_empty()).unwrap_or(region);
            ssm_names.entry(r).or_default().push((position, value_from.to_owned()));
        }
    }
    for (r, names) in ssm_names {
        for chunk in names.chunks(SSM_BATCH) {
            let position = chunk[0].0;
            let chunk: Vec<String> = chunk.iter().map(|(_, name)| name.clone()).collect();
            let (aws, endpoint, region) = (aws.clone(), settings.ssm_endpoint.clone(), r.to_owned());
            jobs.spawn(async move { (position, fetch_ssm(&aws, endpoint.as_deref(), &region, chunk).await) });
        }
    }

    let mut results: BTreeMap<usize, Result<Vec<(String, String)>, SecretError>> = BTreeMap::new();
    while let Some(joined) = jobs.join_next().await {
        match joined {
            Ok((position, result)) => {
                results.insert(position, result);
            }
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Cancelled: only as the runtime shuts down, when nobody reads the result.
            Err(_) => {}
        }
    }
    let mut values: HashMap<String, String> = HashMap::new();
    for (_, result) in results {
        values.extend(result?);
    }
    Ok(wanted
        .into_iter()
        .map(|(name, value_from)| (name.to_owned(), values.get(value_from).cloned().unwrap_or_default()))
        .collect())
}

/// Field `n` of an ARN (`arn:partition:service:region:account:resource`), if `s` is one.
fn arn_field(s: &str, n: usize) -> Option<&str> {
    s.strip_prefix("arn:")?;
    s.split(':').nth(n)
}

/// A Secrets Manager `valueFrom`: `arn:…:secret:NAME[:json-key:version-stage:version-id]`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AsmRef {
    value_from: String,
    secret_id: String,
    region: Option<String>,
    json_key: Option<String>,
    version_stage: Option<String>,
    version_id: Option<String>,
}

impl AsmRef {
    fn parse(value_from: &str) -> Result<AsmRef, SecretError> {
        let parts: Vec<&str> = value_from.split(':').collect();
        let invalid = || SecretError::AsmArn { value_from: value_from.to_owned() };
        if parts.len() < 7 || parts[5] != "secret" || parts[6].is_empty() {
            return Err(invalid());
        }
        let some = |s: &str| Some(s.to_owned()).filter(|s| !s.is_empty());
        let (json_key, version_stage, version_id) = match parts.len() {
            7 => (None, None, None),
            10 => (some(parts[7]), some(parts[8]), some(parts[9])),
            _ => return Err(invalid()),
        };
        Ok(AsmRef {
            value_from: value_from.to_owned(),
            secret_id: parts[..7].join(":"),
            region: some(parts[3]),
            json_key,
            version_stage,
            version_id,
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GetSecretValueOutput {
    secret_string: Option<String>,
}

async fn fetch_asm(
    aws: &Aws,
    endpoint: Option<&str>,
    region: &str,
    asm: AsmRef,
) -> Result<(String, String), SecretError> {
    let mut input = serde_json::json!({ "SecretId": asm.secret_id });
    if let Some(stage) = &asm.version_stage {
        input["VersionStage"] = stage.as_str().into();
    }
    if let Some(id) = &asm.version_id {
        input["VersionId"] = id.as_str().into();
    }
    let out: GetSecretValueOutput = aws
        .json(endpoint, "secretsmanager", region, "secretsmanager.GetSecretValue", &input)
        .await
        .map_err(|detail| SecretError::Asm { value_from: asm.value_from.clone(), detail })?;
    let Some(text) = out.secret_string else {
        return Err(SecretError::AsmBinary { value_from: asm.value_from });
    };
    let Some(key) = asm.json_key else {
        return Ok((asm.value_from, text));
    };
    let not_json = || SecretError::AsmNotJson { value_from: asm.value_from.clone(), key: key.clone() };
    let object = match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Object(object)) => object,
        _ => return Err(not_json()),
    };
    let value = match object.get(&key) {
        Some(serde_json::Value::String(s)) => s.clone(),
        // Numbers, booleans and nested values as their JSON text.
        Some(other) => other.to_string(),
        None => return Err(SecretError::AsmJsonKey { value_from: asm.value_from, key }),
    };
    Ok((asm.value_from, value))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GetParametersOutput {
    #[serde(default)]
    parameters: Vec<Parameter>,
    #[serde(default)]
    invalid_parameters: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Parameter {
    #[serde(default)]
    name: String,
    value: Option<String>,
    #[serde(default)]
    selector: String,
    #[serde(rename = "ARN", default)]
    arn: String,
}

/// One GetParameters call; every name must come back.
async fn fetch_ssm(
    aws: &Aws,
    endpoint: Option<&str>,
    region: &str,
    names: Vec<String>,
) -> Result<Vec<(String, String)>, SecretError> {
    let input = serde_json::json!({ "Names": names, "WithDecryption": true });
    let out: GetParametersOutput = aws
        .json(endpoint, "ssm", region, "AmazonSSM.GetParameters", &input)
        .await
        .map_err(|detail| SecretError::Ssm { region: region.to_owned(), names: names.join(","), detail })?;
    if !out.invalid_parameters.is_empty() {
        return Err(SecretError::SsmInvalid { names: out.invalid_parameters.join(",") });
    }
    names
        .into_iter()
        .map(|wanted| {
            let found = out.parameters.iter().find(|p| p.answers(&wanted));
            match found.and_then(|p| p.value.clone()) {
                Some(value) => Ok((wanted, value)),
                None => Err(SecretError::SsmInvalid { names: wanted }),
            }
        })
        .collect()
}

impl Parameter {
    /// Whether this parameter answers the request `wanted`: a name (with an optional
    /// `:version` or `:label` selector) or an ARN. A parameter asked for by ARN comes back
    /// under its ARN or its name, depending on the implementation.
    fn answers(&self, wanted: &str) -> bool {
        let name = self.name.as_str();
        if wanted == name || wanted == format!("{name}{}", self.selector) || wanted == self.arn {
            return true;
        }
        // arn:…:parameter/a/b names /a/b; arn:…:parameter/name names name.
        match arn_field(wanted, 5).and_then(|_| wanted.split_once(":parameter/")) {
            Some((_, rest)) if rest.contains('/') => name.strip_prefix('/') == Some(rest),
            Some((_, rest)) => name == rest,
            None => false,
        }
    }
}

/// Reads `files` in order into `(name, value)` pairs. Within a file a later line wins;
/// across files the first file that sets a name wins (ECS processes them "from the top
/// down"); the container's own `environment` should win over all of them. `creds` are
/// needed only for S3 objects.
pub async fn read_env_files(
    settings: &SecretSettings,
    creds: Option<&Credentials>,
    region: &str,
    files: &[EnvironmentFile],
) -> Result<Vec<(String, String)>, SecretError> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    for file in files {
        let value = file.value.as_deref().unwrap_or_default();
        let text = fetch_env_file(settings, creds, region, value).await?;
        let mut vars: Vec<(String, String)> = Vec::new();
        for (k, v) in parse_env_file(&text).map_err(|(line, reason)| SecretError::EnvFileSyntax {
            file: value.to_owned(),
            line,
            reason,
        })? {
            match vars.iter_mut().find(|(name, _)| *name == k) {
                Some(existing) => existing.1 = v,
                None => vars.push((k, v)),
            }
        }
        for (k, v) in vars {
            if seen.insert(k.clone()) {
                out.push((k, v));
            }
        }
    }
    Ok(out)
}

async fn fetch_env_file(
    settings: &SecretSettings,
    creds: Option<&Credentials>,
    region: &str,
    value: &str,
) -> Result<String, SecretError> {
    if let Some((bucket, key)) = parse_s3_arn(value) {
        let s3_error =
            |detail: String| SecretError::EnvFileS3 { bucket: bucket.into(), key: key.into(), detail };
        let creds = creds.ok_or_else(|| s3_error("no execution role credentials to read S3 with".into()))?;
        let aws = Aws::new(creds).map_err(s3_error)?;
        let bytes =
            aws.s3_get(settings.s3_endpoint.as_deref(), region, bucket, key).await.map_err(s3_error)?;
        return String::from_utf8(bytes).map_err(|_| s3_error("the object is not UTF-8 text".into()));
    }
    let path = value.strip_prefix("file://").unwrap_or(value);
    if !path.starts_with('/') {
        return Err(SecretError::EnvFileValue { value: value.to_owned() });
    }
    let read_error = |detail: String| SecretError::EnvFileRead { path: path.to_owned(), detail };
    let meta = tokio::fs::metadata(path).await.map_err(|e| read_error(e.to_string()))?;
    if meta.len() > MAX_BODY as u64 {
        return Err(read_error(format!("larger than {MAX_BODY} bytes")));
    }
    let bytes = tokio::fs::read(path).await.map_err(|e| read_error(e.to_string()))?;
    String::from_utf8(bytes).map_err(|_| read_error("not UTF-8 text".into()))
}

/// `arn:PARTITION:s3:::bucket/key` into bucket and key.
fn parse_s3_arn(value: &str) -> Option<(&str, &str)> {
    let rest = value.strip_prefix("arn:")?;
    let (_partition, rest) = rest.split_once(':')?;
    let path = rest.strip_prefix("s3:::")?;
    let (bucket, key) = path.split_once('/')?;
    (!bucket.is_empty() && !key.is_empty()).then_some((bucket, key))
}

/// Docker's env-file syntax: leading whitespace is dropped, blank lines and lines
/// starting with `#` are skipped, `NAME=VALUE` sets NAME to everything after the first
/// `=` (no quoting, no trimming). A line without `=` is skipped: Docker would copy that
/// variable from its own environment, and ecsd's must not leak into a task. Errors are
/// `(line number, reason)` and never quote a value.
pub fn parse_env_file(text: &str) -> Result<Vec<(String, String)>, (usize, String)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut vars = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = line.split_once('=') else { continue };
        if name.is_empty() {
            return Err((i + 1, "no variable name before =".into()));
        }
        if name.contains(char::is_whitespace) {
            return Err((i + 1, format!("variable '{name}' contains whitespaces")));
        }
        vars.push((name.to_owned(), value.to_owned()));
    }
    Ok(vars)
}

/// Signs requests with one set of keys and sends them.
#[derive(Clone)]
struct Aws {
    http: reqwest::Client,
    creds: aws_credential_types::Credentials,
}

impl Aws {
    fn new(creds: &Credentials) -> Result<Aws, String> {
        let http =
            reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().map_err(|e| error_chain(&e))?;
        Ok(Aws { http, creds: creds.to_sdk() })
    }

    /// Calls AWS JSON 1.1 operation `target` of `service` (its signing name) at
    /// `endpoint`, or the service's regional AWS endpoint. The error is the service's
    /// `Code: message` or the transport error; transient failures are tried again.
    async fn json<T: DeserializeOwned>(
        &self,
        endpoint: Option<&str>,
        service: &str,
        region: &str,
        target: &str,
        input: &serde_json::Value,
    ) -> Result<T, String> {
        let url = match endpoint {
            Some(e) => format!("{}/", e.trim_end_matches('/')),
            None => format!("https://{service}.{region}.{}/", dns_suffix(region)),
        };
        let body = input.to_string().into_bytes();
        let headers = [("content-type", "application/x-amz-json-1.1"), ("x-amz-target", target)];
        let mut attempt = 1;
        loop {
            let request = self.signed("POST", &url, service, region, &headers, SignableBody::Bytes(&body))?;
            let error = match request.body(body.clone()).send().await {
                Err(e) => error_chain(&e),
                Ok(response) => {
                    let status = response.status();
                    let bytes = read_capped(response).await?;
                    if status.is_success() {
                        // serde's message could quote part of a secret, so it is not shown.
                        return serde_json::from_slice(&bytes)
                            .map_err(|_| format!("unreadable {target} response"));
                    }
                    let error = json_error(&bytes).unwrap_or_else(|| format!("HTTP {status}"));
                    if !(status.is_server_error()
                        || error.contains("Throttling")
                        || error.starts_with("TooMany"))
                    {
                        return Err(error);
                    }
                    error
                }
            };
            if attempt == ATTEMPTS {
                return Err(error);
            }
            tokio::time::sleep(Duration::from_millis(200) * 2u32.pow(attempt)).await;
            attempt += 1;
        }
    }

    /// GetObject: path-style against a configured endpoint, else the regional
    /// virtual-hosted one. The error is S3's `Code: Message` or the transport error.
    async fn s3_get(
        &self,
        endpoint: Option<&str>,
        region: &str,
        bucket: &str,
        key: &str,
    ) -> Result<Vec<u8>, String> {
        let key = uri_encode_path(key);
        let url = match endpoint {
            Some(e) => format!("{}/{bucket}/{key}", e.trim_end_matches('/')),
            None => format!("https://{bucket}.s3.{region}.{}/{key}", dns_suffix(region)),
        };
        let request = self.signed("GET", &url, "s3", region, &[], SignableBody::UnsignedPayload)?;
        let response = request.send().await.map_err(|e| error_chain(&e))?;
        let status = response.status();
        let body = read_capped(response).await?;
        if status.is_success() {
            return Ok(body);
        }
        let text = String::from_utf8_lossy(&body);
        let element = |tag: &str| {
            let start = text.find(&format!("<{tag}>"))? + tag.len() + 2;
            let len = text[start..].find(&format!("</{tag}>"))?;
            Some(text[start..start + len].to_owned())
        };
        Err(match (element("Code"), element("Message")) {
            (Some(code), Some(message)) => format!("{code}: {message}"),
            (Some(code), None) => code,
            _ => format!("HTTP {status}"),
        })
    }

    /// A request carrying `headers` and SigV4's headers for `body` (S3's rules for "s3").
    fn signed(
        &self,
        method: &str,
        url: &str,
        service: &str,
        region: &str,
        headers: &[(&str, &str)],
        body: SignableBody<'_>,
    ) -> Result<reqwest::RequestBuilder, String> {
        use aws_sigv4::http_request::{
            PayloadChecksumKind, PercentEncodingMode, SignableRequest, SigningSettings,
            UriPathNormalizationMode, sign,
        };

        let mut settings = SigningSettings::default();
        if service == "s3" {
            settings.percent_encoding_mode = PercentEncodingMode::Single;
            settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
            settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        }
        let identity = self.creds.clone().into();
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name(service)
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| e.to_string())?
            .into();
        let signable =
            SignableRequest::new(method, url, headers.iter().copied(), body).map_err(|e| e.to_string())?;
        let (instructions, _) = sign(signable, &params).map_err(|e| e.to_string())?.into_parts();
        let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let mut request = self.http.request(method, url);
        for (name, value) in headers.iter().copied().chain(instructions.headers()) {
            request = request.header(name, value);
        }
        Ok(request)
    }
}

/// `amazonaws.com`, or `amazonaws.com.cn` for the China regions.
fn dns_suffix(region: &str) -> &'static str {
    if region.starts_with("cn-") { "amazonaws.com.cn" } else { "amazonaws.com" }
}

/// The body, refused past [`MAX_BODY`].
async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| error_chain(&e))? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(format!("the response is larger than {MAX_BODY} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `Code: message` of an AWS JSON error body (`__type` may carry a `namespace#` prefix).
fn json_error(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let kind = v.get("__type").and_then(|t| t.as_str())?;
    let code = kind.rsplit('#').next().unwrap_or(kind);
    match v.get("message").or_else(|| v.get("Message")).and_then(|m| m.as_str()) {
        Some(message) => Some(format!("{code}: {message}")),
        None => Some(code.to_owned()),
    }
}

/// An error and its sources, `: `-separated (reqwest's own text omits the cause).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// S3's URI encoding of an object key: every byte but unreserved ones and `/`.
fn uri_encode_path(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::credentials::test_support::{Moto, env_of, fake_authorization};
    use super::*;

    const ACCOUNT: &str = "123456789012";

    fn test_creds() -> Credentials {
        Credentials {
            role_arn: String::new(),
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            token: String::new(),
            expiration: "2030-01-01T00:00:00Z".into(),
        }
    }

    fn settings(moto: &Moto) -> SecretSettings {
        SecretSettings::from_env(&env_of(&[
            ("SECRET_MANAGER_ENDPOINT_URL", &moto.endpoint),
            ("AWS_ENDPOINT_URL_SSM", &moto.endpoint),
            ("AWS_ENDPOINT_URL_S3", &moto.endpoint),
        ]))
        .unwrap()
    }

    fn secret(name: &str, value_from: &str) -> Secret {
        Secret { name: Some(name.into()), value_from: Some(value_from.into()) }
    }

    async fn call(moto: &Moto, service: &str, target: &str, input: serde_json::Value) -> serde_json::Value {
        let aws = Aws::new(&test_creds()).unwrap();
        aws.json(Some(&moto.endpoint), service, "us-east-1", target, &input).await.unwrap()
    }

    async fn create_secret(moto: &Moto, name: &str, value: &str) -> String {
        let input = serde_json::json!({ "Name": name, "SecretString": value });
        let out = call(moto, "secretsmanager", "secretsmanager.CreateSecret", input).await;
        out["ARN"].as_str().unwrap().to_owned()
    }

    async fn put_parameter(moto: &Moto, name: &str, value: &str, kind: &str) {
        let input = serde_json::json!({ "Name": name, "Value": value, "Type": kind });
        call(moto, "ssm", "AmazonSSM.PutParameter", input).await;
    }

    #[test]
    fn settings_take_the_standard_names_first() {
        let s = SecretSettings::from_env(&env_of(&[
            ("AWS_ENDPOINT_URL_SECRETSMANAGER", "http://127.0.0.1:1"),
            ("SECRET_MANAGER_ENDPOINT_URL", "http://127.0.0.1:2"),
            ("SSM_ENDPOINT_URL", "https://ssm.local"),
        ]))
        .unwrap();
        assert_eq!(
            s,
            SecretSettings {
                secretsmanager_endpoint: Some("http://127.0.0.1:1".into()),
                ssm_endpoint: Some("https://ssm.local".into()),
                s3_endpoint: None,
            }
        );
        assert_eq!(SecretSettings::from_env(&env_of(&[])).unwrap(), SecretSettings::default());
        assert_eq!(
            SecretSettings::from_env(&env_of(&[("SSM_ENDPOINT_URL", "ssm.local")])).unwrap_err(),
            "SSM_ENDPOINT_URL=ssm.local: not an http:// or https:// URL"
        );
    }

    #[test]
    fn asm_value_from_forms() {
        let base = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:db-AbCdEf";
        let plain = AsmRef::parse(base).unwrap();
        assert_eq!(
            (plain.secret_id.as_str(), plain.region.as_deref(), plain.json_key),
            (base, Some("eu-west-1"), None)
        );
        let full = AsmRef::parse(&format!("{base}:password:AWSPREVIOUS:")).unwrap();
        assert_eq!(full.secret_id, base);
        assert_eq!(
            (full.json_key.as_deref(), full.version_stage.as_deref(), full.version_id),
            (Some("password"), Some("AWSPREVIOUS"), None)
        );
        let id = AsmRef::parse(&format!("{base}:::0123456789abcdef0123456789abcdef")).unwrap();
        assert_eq!((id.json_key, id.version_id.as_deref()), (None, Some("0123456789abcdef0123456789abcdef")));
        for bad in [
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:db:password",
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret",
            "arn:aws:secretsmanager:eu-west-1:123456789012:other:db",
        ] {
            assert_eq!(
                AsmRef::parse(bad).unwrap_err().to_string(),
                format!(
                    "ResourceInitializationError: unable to pull secrets or registry auth: execution resource \
                     retrieval failed: unable to retrieve secret from asm: trying to retrieve secret with value \
                     {bad} resulted in error: an invalid ARN format for the AWS Secrets Manager secret was \
                     specified. Specify a valid ARN and try again."
                )
            );
        }
    }

    #[test]
    fn env_file_syntax_is_dockers() {
        let text = "\u{feff}# comment\n\nA=1\n  B=two words \r\nC=x=y\nNOVALUE\nEMPTY=\n   # indented comment\nA=3\n";
        assert_eq!(
            parse_env_file(text).unwrap(),
            [("A", "1"), ("B", "two words "), ("C", "x=y"), ("EMPTY", ""), ("A", "3")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        assert_eq!(parse_env_file("OK=1\n=secret").unwrap_err(), (2, "no variable name before =".to_owned()));
        assert_eq!(
            parse_env_file("MY VAR=1").unwrap_err(),
            (1, "variable 'MY VAR' contains whitespaces".to_owned())
        );
    }

    #[test]
    fn s3_arns_and_keys() {
        assert_eq!(parse_s3_arn("arn:aws:s3:::bucket/dir/app.env"), Some(("bucket", "dir/app.env")));
        assert_eq!(parse_s3_arn("arn:aws-cn:s3:::b/k.env"), Some(("b", "k.env")));
        assert_eq!(parse_s3_arn("arn:aws:s3:::bucket"), None);
        assert_eq!(parse_s3_arn("/etc/app.env"), None);
        assert_eq!(uri_encode_path("dir/a b+c.env"), "dir/a%20b%2Bc.env");
    }

    #[tokio::test]
    async fn local_env_files_merge_top_down() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("first.env");
        let second = dir.path().join("second.env");
        std::fs::write(&first, "A=1\nB=2\nA=1b\n").unwrap();
        std::fs::write(&second, "B=ignored\nC=3\n").unwrap();
        let files = [
            EnvironmentFile { value: Some(first.display().to_string()), r#type: Some("s3".into()) },
            EnvironmentFile {
                value: Some(format!("file://{}", second.display())),
                r#type: Some("s3".into()),
            },
        ];
        let vars = read_env_files(&SecretSettings::default(), None, "us-east-1", &files).await.unwrap();
        assert_eq!(vars, [("A", "1b"), ("B", "2"), ("C", "3")].map(|(k, v)| (k.to_owned(), v.to_owned())));

        let missing = dir.path().join("missing.env").display().to_string();
        let err = read_env_files(
            &SecretSettings::default(),
            None,
            "us-east-1",
            &[EnvironmentFile { value: Some(missing.clone()), r#type: Some("s3".into()) }],
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with(&format!(
                "ResourceInitializationError: failed to download env files: unable to read environment file {missing}: "
            )),
            "{err}"
        );
        let err = read_env_files(
            &SecretSettings::default(),
            None,
            "us-east-1",
            &[EnvironmentFile { value: Some("relative.env".into()), r#type: Some("s3".into()) }],
        )
        .await
        .unwrap_err();
        assert_eq!(err, SecretError::EnvFileValue { value: "relative.env".into() });
    }

    #[tokio::test]
    async fn secrets_manager_and_ssm_values_resolve() {
        let moto = Moto::start().await;
        let plain = create_secret(&moto, "plain", "hunter2").await;
        let json = create_secret(&moto, "db", r#"{"username":"admin","password":"pw1","port":5432}"#).await;
        // A new version moves AWSCURRENT; the first becomes AWSPREVIOUS.
        let input = serde_json::json!({
            "SecretId": json,
            "SecretString": r#"{"username":"admin","password":"pw2","port":5432}"#,
        });
        call(&moto, "secretsmanager", "secretsmanager.PutSecretValue", input).await;
        put_parameter(&moto, "/app/db/host", "db.internal", "String").await;
        put_parameter(&moto, "/app/db/token", "s3cure", "SecureString").await;
        put_parameter(&moto, "flat", "flat-value", "String").await;

        let secrets = [
            secret("PLAIN", &plain),
            secret("USER", &format!("{json}:username::")),
            secret("PASSWORD", &format!("{json}:password::")),
            secret("OLD_PASSWORD", &format!("{json}:password:AWSPREVIOUS:")),
            secret("PORT", &format!("{json}:port::")),
            secret("DB_HOST", "/app/db/host"),
            secret("DB_TOKEN", &format!("arn:aws:ssm:us-east-1:{ACCOUNT}:parameter/app/db/token")),
            secret("FLAT", "flat"),
            secret("PLAIN_AGAIN", &plain),
        ];
        let vars = resolve(&settings(&moto), &test_creds(), "us-east-1", &secrets).await.unwrap();
        assert_eq!(
            vars,
            [
                ("PLAIN", "hunter2"),
                ("USER", "admin"),
                ("PASSWORD", "pw2"),
                ("OLD_PASSWORD", "pw1"),
                ("PORT", "5432"),
                ("DB_HOST", "db.internal"),
                ("DB_TOKEN", "s3cure"),
                ("FLAT", "flat-value"),
                ("PLAIN_AGAIN", "hunter2"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        let whole =
            resolve(&settings(&moto), &test_creds(), "us-east-1", &[secret("DB", &json)]).await.unwrap();
        assert!(whole[0].1.contains(r#""password":"pw2""#), "{whole:?}");
    }

    #[tokio::test]
    async fn more_than_ten_parameters_are_batched() {
        let moto = Moto::start().await;
        let mut secrets = Vec::new();
        for i in 0..23 {
            let name = format!("/batch/p{i}");
            put_parameter(&moto, &name, &format!("v{i}"), "String").await;
            secrets.push(secret(&format!("P{i}"), &name));
        }
        let vars = resolve(&settings(&moto), &test_creds(), "us-east-1", &secrets).await.unwrap();
        assert_eq!(vars.len(), 23);
        assert!(
            vars.iter().enumerate().all(|(i, (k, v))| *k == format!("P{i}") && *v == format!("v{i}")),
            "{vars:?}"
        );
    }

    #[tokio::test]
    async fn missing_secrets_keys_and_parameters_are_named() {
        let moto = Moto::start().await;
        let json = create_secret(&moto, "creds", r#"{"user":"u"}"#).await;
        let text = create_secret(&moto, "text", "not json").await;
        let s = settings(&moto);
        let c = test_creds();

        let missing = format!("arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:missing-AbCdEf");
        let err = resolve(&s, &c, "us-east-1", &[secret("X", &missing)]).await.unwrap_err().to_string();
        let prefix = format!(
            "ResourceInitializationError: unable to pull secrets or registry auth: execution resource retrieval \
             failed: unable to retrieve secret from asm: failed to fetch secret {missing} from secrets manager: \
             ResourceNotFoundException: "
        );
        assert!(err.starts_with(&prefix), "{err}");

        let err =
            resolve(&s, &c, "us-east-1", &[secret("X", &format!("{json}:password::"))]).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "ResourceInitializationError: unable to pull secrets or registry auth: execution resource \
                 retrieval failed: unable to retrieve secret from asm: secret {json}:password::: retrieved secret \
                 from Secrets Manager did not contain json key password"
            )
        );
        let err = resolve(&s, &c, "us-east-1", &[secret("X", &format!("{text}:k::"))]).await.unwrap_err();
        assert_eq!(err, SecretError::AsmNotJson { value_from: format!("{text}:k::"), key: "k".into() });
        assert!(!err.to_string().contains("not json"), "the value never shows: {err}");

        put_parameter(&moto, "/present", "yes", "String").await;
        let err = resolve(&s, &c, "us-east-1", &[secret("A", "/present"), secret("B", "/absent")])
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "ResourceInitializationError: unable to pull secrets or registry auth: execution resource retrieval \
             failed: unable to retrieve secrets from ssm: invalid parameters: /absent"
        );

        // The first failing secret in order is reported, whichever call fails first.
        let err =
            resolve(&s, &c, "us-east-1", &[secret("B", "/absent"), secret("X", &missing)]).await.unwrap_err();
        assert_eq!(err, SecretError::SsmInvalid { names: "/absent".into() });
    }

    #[tokio::test]
    async fn s3_env_files_are_read_with_signed_requests() {
        let moto = Moto::start().await;
        let http = reqwest::Client::new();
        for (url, body) in [
            (format!("{}/envs", moto.endpoint), String::new()),
            (format!("{}/envs/app/prod.env", moto.endpoint), "FROM_S3=yes\n# c\nLEVEL=debug\n".to_owned()),
        ] {
            let status = http
                .put(url)
                .header("authorization", fake_authorization("s3"))
                .body(body)
                .send()
                .await
                .unwrap()
                .status();
            assert!(status.is_success(), "{status}");
        }
        let s = settings(&moto);
        let file = |v: &str| EnvironmentFile { value: Some(v.into()), r#type: Some("s3".into()) };
        let vars =
            read_env_files(&s, Some(&test_creds()), "us-east-1", &[file("arn:aws:s3:::envs/app/prod.env")])
                .await
                .unwrap();
        assert_eq!(vars, [("FROM_S3", "yes"), ("LEVEL", "debug")].map(|(k, v)| (k.to_owned(), v.to_owned())));

        let err =
            read_env_files(&s, Some(&test_creds()), "us-east-1", &[file("arn:aws:s3:::envs/missing.env")])
                .await
                .unwrap_err()
                .to_string();
        assert!(
            err.starts_with(
                "ResourceInitializationError: failed to download env files: unable to download env file with key \
                 missing.env from bucket envs: NoSuchKey"
            ),
            "{err}"
        );
    }
}
