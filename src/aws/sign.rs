//! SigV4 signing: the one place ecsd signs AWS requests (with aws-sigv4).

use std::time::SystemTime;

use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};

use super::error::SigningFailure;
use super::identity::Keys;

/// What is signed of a request's body.
#[derive(Debug, Clone, Copy)]
pub enum Payload<'a> {
    /// The bytes sent, hashed into the signature.
    Bytes(&'a [u8]),
    /// S3's `UNSIGNED-PAYLOAD` (the body is not part of the signature).
    Unsigned,
}

/// A request to sign: `headers` are the ones that will be sent besides SigV4's own, and
/// all of them are signed.
#[derive(Debug, Clone, Copy)]
pub struct Unsigned<'a> {
    pub method: &'a str,
    pub url: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub payload: Payload<'a>,
}

/// Who signs for what: the signing name of the service (`sts`, `s3`…) and the region.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub name: &'a str,
    pub region: &'a str,
}

/// The headers to add to `request` (`authorization`, `x-amz-date`, and
/// `x-amz-security-token` / `x-amz-content-sha256` where they apply), signed at `time`.
/// S3's signing rules (no double encoding or normalisation of the path, the payload hash
/// as a header) apply when the scope's name is `s3`.
pub fn sign(
    keys: &Keys,
    scope: Scope<'_>,
    time: SystemTime,
    request: &Unsigned<'_>,
) -> Result<Vec<(&'static str, String)>, SigningFailure> {
    let mut settings = SigningSettings::default();
    if scope.name == "s3" {
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    }
    let credentials = aws_credential_types::Credentials::new(
        &keys.access_key_id,
        &keys.secret_access_key,
        keys.session_token.clone(),
        None,
        "ecsd",
    );
    let identity = credentials.into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(scope.region)
        .name(scope.name)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|_| SigningFailure::Parameters)?
        .into();
    let body = match request.payload {
        Payload::Bytes(b) => SignableBody::Bytes(b),
        Payload::Unsigned => SignableBody::UnsignedPayload,
    };
    let signable = SignableRequest::new(request.method, request.url, request.headers.iter().copied(), body)
        .map_err(|_| SigningFailure::Request)?;
    let (instructions, _) =
        aws_sigv4::http_request::sign(signable, &params).map_err(|_| SigningFailure::Request)?.into_parts();
    let (headers, _) = instructions.into_parts();
    Ok(headers.into_iter().map(|h| (h.name(), h.value().to_owned())).collect())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// 2015-08-30T12:36:00Z, the time of the AWS SigV4 test suite.
    fn suite_time() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160)
    }

    fn suite_keys(token: Option<&str>) -> Keys {
        Keys::new("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    }

    fn header<'a>(signed: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
        signed.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The `get-vanilla` and `get-vanilla-with-session-token` cases of AWS's published
    /// SigV4 test suite: the expected signatures are the suite's, not aws-sigv4's output.
    #[test]
    fn the_published_test_suite_signatures() {
        let request = Unsigned {
            method: "GET",
            url: "https://example.amazonaws.com/",
            headers: &[],
            payload: Payload::Bytes(b""),
        };
        let scope = Scope { name: "service", region: "us-east-1" };
        let signed = sign(&suite_keys(None), scope, suite_time(), &request).unwrap();
        assert_eq!(header(&signed, "x-amz-date"), Some("20150830T123600Z"));
        assert_eq!(
            header(&signed, "authorization"),
            Some(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
                 SignedHeaders=host;x-amz-date, \
                 Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
            )
        );

        let token = "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267";
        let signed = sign(&suite_keys(Some(token)), scope, suite_time(), &request).unwrap();
        assert_eq!(header(&signed, "x-amz-security-token"), Some(token));
        assert_eq!(
            header(&signed, "authorization"),
            Some(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
                 SignedHeaders=host;x-amz-date;x-amz-security-token, \
                 Signature=07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8"
            )
        );
    }

    /// A JSON 1.1 call as ecsd sends it. The expected signature was derived with botocore
    /// 1.44.5 by `testdata/botocore_sign.py` (`SigV4Auth` on an `AWSRequest` with the same method, URL,
    /// headers, body, keys and time), independently of aws-sigv4.
    #[test]
    fn a_json_call_signs_as_botocore_does() {
        let body = br#"{"SecretId":"arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf"}"#;
        let request = Unsigned {
            method: "POST",
            url: "https://secretsmanager.us-east-1.amazonaws.com/",
            headers: &[
                ("content-type", "application/x-amz-json-1.1"),
                ("x-amz-target", "secretsmanager.GetSecretValue"),
            ],
            payload: Payload::Bytes(body),
        };
        let scope = Scope { name: "secretsmanager", region: "us-east-1" };
        let signed = sign(&suite_keys(Some("the-token")), scope, suite_time(), &request).unwrap();
        assert_eq!(header(&signed, "authorization"), Some(BOTOCORE_JSON));
        assert_eq!(header(&signed, "x-amz-content-sha256"), None, "only S3 sends the payload hash");
    }

    /// S3 GetObject with an unsigned payload and a key that needs encoding, against
    /// botocore's `S3SigV4Auth` (no double encoding, no path normalisation).
    #[test]
    fn an_s3_get_signs_as_botocore_does() {
        let request = Unsigned {
            method: "GET",
            url: "https://envs.s3.eu-west-1.amazonaws.com/dir/a%20b%2Bc.env",
            headers: &[],
            payload: Payload::Unsigned,
        };
        let scope = Scope { name: "s3", region: "eu-west-1" };
        let signed = sign(&suite_keys(None), scope, suite_time(), &request).unwrap();
        assert_eq!(header(&signed, "x-amz-content-sha256"), Some("UNSIGNED-PAYLOAD"));
        assert_eq!(header(&signed, "authorization"), Some(BOTOCORE_S3));
    }

    #[test]
    fn a_wrong_secret_gives_another_signature() {
        let request = Unsigned {
            method: "GET",
            url: "https://example.amazonaws.com/",
            headers: &[],
            payload: Payload::Bytes(b""),
        };
        let scope = Scope { name: "service", region: "us-east-1" };
        let wrong = Keys::new("AKIDEXAMPLE", "not-the-secret", None);
        let signed = sign(&wrong, scope, suite_time(), &request).unwrap();
        let auth = header(&signed, "authorization").unwrap();
        assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/"), "{auth}");
        assert!(!auth.contains("5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"), "{auth}");
    }

    #[test]
    fn an_unusable_url_is_a_signing_failure() {
        let request =
            Unsigned { method: "GET", url: "not a url", headers: &[], payload: Payload::Bytes(b"") };
        let scope = Scope { name: "service", region: "us-east-1" };
        assert_eq!(sign(&suite_keys(None), scope, suite_time(), &request), Err(SigningFailure::Request));
    }

    const BOTOCORE_JSON: &str = "AWS4-HMAC-SHA256 \
        Credential=AKIDEXAMPLE/20150830/us-east-1/secretsmanager/aws4_request, \
        SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-amz-target, \
        Signature=4f870a76744f6b16430f75bc3aa55af4aa8cd3eadd6aa1f7e927edfa12372812";
    const BOTOCORE_S3: &str = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/eu-west-1/s3/aws4_request, \
        SignedHeaders=host;x-amz-content-sha256;x-amz-date, \
        Signature=6cfcc2007d9badeb877aa1c7393bfbc5eb22838e0974b58fb42e9ce9cae8da4f";
}
