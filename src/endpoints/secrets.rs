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
//! The calls (GetSecretValue, GetParameters, S3 GetObject) and their endpoints are
//! [`crate::aws`]'s; what a `valueFrom` means, which region, how names are batched and
//! which failure is reported are this module's, as the ECS agent does them.
//!
//! Errors read like ECS's stopped reasons (`ResourceInitializationError: …`) and name the
//! secret or file; they never contain a secret value.

use std::collections::{BTreeMap, HashMap, HashSet};

use tokio::task::JoinSet;

use super::credentials::Credentials;
use crate::aws::{Aws, AwsError, Client, GET_PARAMETERS_MAX, Parameter};
use crate::model::shapes::{EnvironmentFile, Secret};

/// Local environment files larger than this are refused (the whole environment of a
/// process is limited to a few MiB anyway); S3 objects are bounded by the AWS client.
const MAX_ENV_FILE: u64 = 1 << 20;

/// Why a container's secrets or environment files cannot be resolved: the task's stopped
/// reason. The AWS error is part of the text, so it is not also exposed as `source()`.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
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
         {error}"
    )]
    Asm { value_from: String, error: AwsError },
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
         {region} for {names}: {error}"
    )]
    Ssm { region: String, names: String, error: AwsError },
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
        "ResourceInitializationError: failed to download env files: unable to read environment file {path}: {error}"
    )]
    EnvFileRead { path: String, error: std::io::Error },
    #[error(
        "ResourceInitializationError: failed to download env files: unable to read environment file {path}: \
         larger than {MAX_ENV_FILE} bytes"
    )]
    EnvFileTooLarge { path: String },
    #[error(
        "ResourceInitializationError: failed to download env files: unable to read environment file {path}: \
         not UTF-8 text"
    )]
    EnvFileNotText { path: String },
    #[error(
        "ResourceInitializationError: failed to download env files: unable to download env file with key {key} \
         from bucket {bucket}: {error}"
    )]
    EnvFileS3 { bucket: String, key: String, error: AwsError },
    #[error(
        "ResourceInitializationError: failed to download env files: unable to download env file with key {key} \
         from bucket {bucket}: no execution role credentials to read S3 with"
    )]
    EnvFileS3NoKeys { bucket: String, key: String },
    #[error(
        "ResourceInitializationError: failed to download env files: unable to download env file with key {key} \
         from bucket {bucket}: the object is not UTF-8 text"
    )]
    EnvFileS3NotText { bucket: String, key: String },
    #[error(
        "ResourceInitializationError: failed to download env files: environment file {file} line {line}: {reason}"
    )]
    EnvFileSyntax { file: String, line: usize, reason: EnvLineError },
}

/// What is wrong with a line of an environment file (never quoting a value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvLineError {
    #[error("no variable name before =")]
    NoName,
    #[error("variable '{name}' contains whitespaces")]
    NameWithWhitespace { name: String },
}

/// Resolves `secrets` into `(name, value)` pairs in their order, reading each distinct
/// `valueFrom` once, concurrently. `region` is the task's; an ARN's own region wins. The
/// first failing secret (in order) is the error.
pub async fn resolve(
    aws: &Aws,
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

    let client = aws.client(creds.keys());
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
            let client = client.in_region(asm.region.as_deref().unwrap_or(region));
            jobs.spawn(async move { (position, fetch_asm(&client, asm).await.map(|v| vec![v])) });
        } else {
            let r = arn_field(value_from, 3).filter(|r| !r.is_empty()).unwrap_or(region);
            ssm_names.entry(r).or_default().push((position, value_from.to_owned()));
        }
    }
    for (r, names) in ssm_names {
        // One call per batch, as the agent does, so a failure names only its batch.
        for chunk in names.chunks(GET_PARAMETERS_MAX) {
            let position = chunk[0].0;
            let chunk: Vec<String> = chunk.iter().map(|(_, name)| name.clone()).collect();
            let client = client.in_region(r);
            jobs.spawn(async move { (position, fetch_ssm(&client, chunk).await) });
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

/// GetSecretValue in the client's region (the secret's own, else the task's).
async fn fetch_asm(client: &Client, asm: AsmRef) -> Result<(String, String), SecretError> {
    let out = client
        .get_secret_value(&asm.secret_id, asm.version_stage.as_deref(), asm.version_id.as_deref())
        .await
        .map_err(|error| SecretError::Asm { value_from: asm.value_from.clone(), error })?;
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

/// One GetParameters call (at most [`GET_PARAMETERS_MAX`] names) in the client's region;
/// every name must come back.
async fn fetch_ssm(client: &Client, names: Vec<String>) -> Result<Vec<(String, String)>, SecretError> {
    let out = client.get_parameters(&names, true).await.map_err(|error| SecretError::Ssm {
        region: client.region().to_owned(),
        names: names.join(","),
        error,
    })?;
    if !out.invalid_parameters.is_empty() {
        return Err(SecretError::SsmInvalid { names: out.invalid_parameters.join(",") });
    }
    names
        .into_iter()
        .map(|wanted| {
            let found = out.parameters.iter().find(|p| answers(p, &wanted));
            match found.and_then(|p| p.value.clone()) {
                Some(value) => Ok((wanted, value)),
                None => Err(SecretError::SsmInvalid { names: wanted }),
            }
        })
        .collect()
}

/// Whether parameter `p` answers the request `wanted`: a name (with an optional
/// `:version` or `:label` selector) or an ARN. A parameter asked for by ARN comes back
/// under its ARN or its name, depending on the implementation.
fn answers(p: &Parameter, wanted: &str) -> bool {
    let name = p.name.as_str();
    if wanted == name || wanted == format!("{name}{}", p.selector) || wanted == p.arn {
        return true;
    }
    // arn:…:parameter/a/b names /a/b; arn:…:parameter/name names name.
    match arn_field(wanted, 5).and_then(|_| wanted.split_once(":parameter/")) {
        Some((_, rest)) if rest.contains('/') => name.strip_prefix('/') == Some(rest),
        Some((_, rest)) => name == rest,
        None => false,
    }
}

/// Reads `files` in order into `(name, value)` pairs. Within a file a later line wins;
/// across files the first file that sets a name wins (ECS processes them "from the top
/// down"); the container's own `environment` should win over all of them. `creds` are
/// needed only for S3 objects.
pub async fn read_env_files(
    aws: &Aws,
    creds: Option<&Credentials>,
    region: &str,
    files: &[EnvironmentFile],
) -> Result<Vec<(String, String)>, SecretError> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    for file in files {
        let value = file.value.as_deref().unwrap_or_default();
        let text = fetch_env_file(aws, creds, region, value).await?;
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
    aws: &Aws,
    creds: Option<&Credentials>,
    region: &str,
    value: &str,
) -> Result<String, SecretError> {
    if let Some((bucket, key)) = parse_s3_arn(value) {
        let (b, k) = (bucket.to_owned(), key.to_owned());
        let Some(creds) = creds else {
            return Err(SecretError::EnvFileS3NoKeys { bucket: b, key: k });
        };
        let client = aws.client(creds.keys()).in_region(region);
        let bytes = match client.s3_get_object(bucket, key).await {
            Ok(bytes) => bytes,
            Err(error) => return Err(SecretError::EnvFileS3 { bucket: b, key: k, error }),
        };
        return String::from_utf8(bytes).map_err(|_| SecretError::EnvFileS3NotText { bucket: b, key: k });
    }
    let path = value.strip_prefix("file://").unwrap_or(value);
    if !path.starts_with('/') {
        return Err(SecretError::EnvFileValue { value: value.to_owned() });
    }
    let read_error = |error| SecretError::EnvFileRead { path: path.to_owned(), error };
    let meta = tokio::fs::metadata(path).await.map_err(read_error)?;
    if meta.len() > MAX_ENV_FILE {
        return Err(SecretError::EnvFileTooLarge { path: path.to_owned() });
    }
    let bytes = tokio::fs::read(path).await.map_err(read_error)?;
    String::from_utf8(bytes).map_err(|_| SecretError::EnvFileNotText { path: path.to_owned() })
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
pub fn parse_env_file(text: &str) -> Result<Vec<(String, String)>, (usize, EnvLineError)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut vars = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = line.split_once('=') else { continue };
        if name.is_empty() {
            return Err((i + 1, EnvLineError::NoName));
        }
        if name.contains(char::is_whitespace) {
            return Err((i + 1, EnvLineError::NameWithWhitespace { name: name.to_owned() }));
        }
        vars.push((name.to_owned(), value.to_owned()));
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::super::credentials::test_support::{Moto, aws_at, fake_authorization, moto_aws};
    use super::*;
    use crate::aws::Service;

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

    /// No AWS at all: for what must not call it.
    fn nowhere() -> Aws {
        aws_at("http://127.0.0.1:9")
    }

    fn secret(name: &str, value_from: &str) -> Secret {
        Secret { name: Some(name.into()), value_from: Some(value_from.into()) }
    }

    async fn call(
        moto: &Moto,
        service: Service,
        target: &'static str,
        input: serde_json::Value,
    ) -> serde_json::Value {
        moto_aws(moto).client(test_creds().keys()).json(service, target, &input).await.unwrap()
    }

    async fn create_secret(moto: &Moto, name: &str, value: &str) -> String {
        let input = serde_json::json!({ "Name": name, "SecretString": value });
        let out = call(moto, Service::SecretsManager, "secretsmanager.CreateSecret", input).await;
        out["ARN"].as_str().unwrap().to_owned()
    }

    async fn put_parameter(moto: &Moto, name: &str, value: &str, kind: &str) {
        let input = serde_json::json!({ "Name": name, "Value": value, "Type": kind });
        call(moto, Service::Ssm, "AmazonSSM.PutParameter", input).await;
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
        assert_eq!(parse_env_file("OK=1\n=secret").unwrap_err(), (2, EnvLineError::NoName));
        let (line, reason) = parse_env_file("MY VAR=1").unwrap_err();
        assert_eq!((line, reason.to_string()), (1, "variable 'MY VAR' contains whitespaces".to_owned()));
    }

    #[test]
    fn s3_arns_and_keys() {
        assert_eq!(parse_s3_arn("arn:aws:s3:::bucket/dir/app.env"), Some(("bucket", "dir/app.env")));
        assert_eq!(parse_s3_arn("arn:aws-cn:s3:::b/k.env"), Some(("b", "k.env")));
        assert_eq!(parse_s3_arn("arn:aws:s3:::bucket"), None);
        assert_eq!(parse_s3_arn("/etc/app.env"), None);
    }

    #[tokio::test]
    async fn an_unreachable_service_is_named_in_the_stopped_reason() {
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let endpoint = format!("http://127.0.0.1:{port}");
        let aws = aws_at(&endpoint);
        let arn = format!("arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:db-AbCdEf");
        let err = resolve(&aws, &test_creds(), "us-east-1", &[secret("DB", &arn)]).await.unwrap_err();
        assert!(matches!(err, SecretError::Asm { error: AwsError::Unreachable { .. }, .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "ResourceInitializationError: unable to pull secrets or registry auth: execution resource retrieval \
                 failed: unable to retrieve secret from asm: failed to fetch secret {arn} from secrets manager: \
                 cannot reach Secrets Manager at {endpoint}: "
            )),
            "{text}"
        );
        assert!(!text.contains(&test_creds().secret_access_key), "{text}");

        let err = resolve(&aws, &test_creds(), "eu-west-1", &[secret("P", "/app/p")])
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!(
                "ResourceInitializationError: unable to pull secrets or registry auth: execution resource retrieval \
                 failed: unable to retrieve secrets from ssm: fetching secret data from SSM Parameter Store in \
                 eu-west-1 for /app/p: cannot reach SSM at {endpoint}: "
            )),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_s3_env_file_needs_execution_keys() {
        let files =
            [EnvironmentFile { value: Some("arn:aws:s3:::envs/app.env".into()), r#type: Some("s3".into()) }];
        let err = read_env_files(&nowhere(), None, "us-east-1", &files).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "ResourceInitializationError: failed to download env files: unable to download env file with key \
             app.env from bucket envs: no execution role credentials to read S3 with"
        );
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
        let vars = read_env_files(&nowhere(), None, "us-east-1", &files).await.unwrap();
        assert_eq!(vars, [("A", "1b"), ("B", "2"), ("C", "3")].map(|(k, v)| (k.to_owned(), v.to_owned())));

        let missing = dir.path().join("missing.env").display().to_string();
        let err = read_env_files(
            &nowhere(),
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
            &nowhere(),
            None,
            "us-east-1",
            &[EnvironmentFile { value: Some("relative.env".into()), r#type: Some("s3".into()) }],
        )
        .await
        .unwrap_err();
        assert!(matches!(&err, SecretError::EnvFileValue { value } if value == "relative.env"), "{err:?}");
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
        call(&moto, Service::SecretsManager, "secretsmanager.PutSecretValue", input).await;
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
        let vars = resolve(&moto_aws(&moto), &test_creds(), "us-east-1", &secrets).await.unwrap();
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
            resolve(&moto_aws(&moto), &test_creds(), "us-east-1", &[secret("DB", &json)]).await.unwrap();
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
        let vars = resolve(&moto_aws(&moto), &test_creds(), "us-east-1", &secrets).await.unwrap();
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
        let s = moto_aws(&moto);
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
        assert!(
            matches!(&err, SecretError::AsmNotJson { value_from, key } if *value_from == format!("{text}:k::") && key == "k"),
            "{err:?}"
        );
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
        assert!(matches!(&err, SecretError::SsmInvalid { names } if names == "/absent"), "{err:?}");
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
        let s = moto_aws(&moto);
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
