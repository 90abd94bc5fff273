//! Image references, normalised exactly as Docker does (`reference.ParseNormalizedNamed`
//! followed by `TagNameOnly`): `busybox` is `docker.io/library/busybox:latest`.
//!
//! Pure string work: no registry is consulted and nothing is resolved.

use super::RuntimeError;

const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
const OFFICIAL_REPO_PREFIX: &str = "library/";
const DEFAULT_TAG: &str = "latest";
const NAME_TOTAL_LENGTH_MAX: usize = 255;

/// A parsed, normalised reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Registry host, with port if any: `docker.io`, `localhost:5000`.
    pub domain: String,
    /// Repository path inside the registry: `library/busybox`.
    pub path: String,
    pub tag: Option<String>,
    /// `algorithm:hex`, e.g. `sha256:…`.
    pub digest: Option<String>,
}

impl Reference {
    /// `domain/path`, the repository name without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Normalises `reference` to its full form: `busybox` → `docker.io/library/busybox:latest`,
/// `user/img` → `docker.io/user/img:latest`; a reference with a digest gets no default tag,
/// and `name:tag@digest` keeps both.
pub fn normalize(reference: &str) -> Result<String, RuntimeError> {
    parse_normalized(reference).map(|r| r.to_string())
}

/// Parses and normalises `reference` (see [`normalize`]).
pub fn parse_normalized(reference: &str) -> Result<Reference, RuntimeError> {
    let invalid = |reason: &str| RuntimeError::InvalidReference {
        reference: reference.to_owned(),
        reason: reason.to_owned(),
    };
    if reference.len() == 64 && reference.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(invalid("a 64-character hexadecimal string is an image id, not a repository name"));
    }
    let (domain, remainder) = split_docker_domain(reference);
    let remote_name = match remainder.find(':') {
        Some(i) => &remainder[..i],
        None => remainder.as_str(),
    };
    if remote_name.to_lowercase() != remote_name {
        return Err(invalid("the repository name must be lowercase"));
    }
    let mut parsed = parse(&format!("{domain}/{remainder}")).map_err(invalid)?;
    if parsed.tag.is_none() && parsed.digest.is_none() {
        parsed.tag = Some(DEFAULT_TAG.to_owned());
    }
    Ok(parsed)
}

/// Docker's `splitDockerDomain`: the first path component is a registry only if it looks like
/// a host (has `.` or `:`, or is `localhost`, or has uppercase letters).
fn split_docker_domain(name: &str) -> (String, String) {
    let (mut domain, mut remainder) = match name.find('/') {
        Some(i) => {
            let first = &name[..i];
            if !first.contains(['.', ':']) && first != "localhost" && first.to_lowercase() == first {
                (DEFAULT_DOMAIN.to_owned(), name.to_owned())
            } else {
                (first.to_owned(), name[i + 1..].to_owned())
            }
        }
        None => (DEFAULT_DOMAIN.to_owned(), name.to_owned()),
    };
    if domain == LEGACY_DEFAULT_DOMAIN {
        domain = DEFAULT_DOMAIN.to_owned();
    }
    if domain == DEFAULT_DOMAIN && !remainder.contains('/') {
        remainder = format!("{OFFICIAL_REPO_PREFIX}{remainder}");
    }
    (domain, remainder)
}

/// Docker's `reference.Parse` on a string that starts with a domain.
fn parse(s: &str) -> Result<Reference, &'static str> {
    if s.is_empty() {
        return Err("the repository name is empty");
    }
    let (name_tag, digest) = match s.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (s, None),
    };
    let last_slash = name_tag.rfind('/');
    let (name, tag) = match name_tag.rfind(':') {
        Some(colon) if last_slash.is_none_or(|slash| colon > slash) => {
            (&name_tag[..colon], Some(&name_tag[colon + 1..]))
        }
        _ => (name_tag, None),
    };
    let Some((domain, path)) = name.split_once('/') else {
        return Err("invalid reference format");
    };
    if !valid_domain(domain) {
        return Err("invalid reference format: the registry host is not valid");
    }
    if !path.split('/').all(valid_path_component) {
        return if path.to_lowercase() != path {
            Err("the repository name must be lowercase")
        } else {
            Err("invalid reference format")
        };
    }
    if name.len() > NAME_TOTAL_LENGTH_MAX {
        return Err("the repository name must not be longer than 255 characters");
    }
    if let Some(tag) = tag
        && !valid_tag(tag)
    {
        return Err("invalid reference format: the tag is not valid");
    }
    if let Some(digest) = digest {
        validate_digest(digest)?;
    }
    Ok(Reference {
        domain: domain.to_owned(),
        path: path.to_owned(),
        tag: tag.map(str::to_owned),
        digest: digest.map(str::to_owned),
    })
}

/// `host[:port]`, where host is a DNS name, an IPv4 address or a bracketed IPv6 address.
fn valid_domain(domain: &str) -> bool {
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else { return false };
        if v6.is_empty() || !v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => ("", Some(port)),
                None => return false,
            },
        }
    } else {
        match domain.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (domain, None),
        }
    };
    if let Some(port) = port
        && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    host.is_empty() && domain.starts_with('[')
        || !host.is_empty() && host.split('.').all(valid_domain_component)
}

/// `[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`
fn valid_domain_component(c: &str) -> bool {
    let b = c.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn valid_path_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let b = c.as_bytes();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `[\w][\w.-]{0,127}`
fn valid_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let b = tag.as_bytes();
    !b.is_empty() && b.len() <= 128 && word(b[0]) && b.iter().all(|x| word(*x) || *x == b'.' || *x == b'-')
}

/// A digest as go-digest validates it: a known algorithm and its exact lowercase hex length.
fn validate_digest(digest: &str) -> Result<(), &'static str> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err("invalid reference format: the digest is not algorithm:hex");
    };
    let len = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err("invalid reference format: unsupported digest algorithm"),
    };
    if hex.len() != len || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err("invalid reference format: the digest is not valid");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "9e4f60b1943ae9091a927be345db681016e0259e6ee4edb2490f7ef9a189d260";

    fn ok(input: &str, want: &str) {
        match normalize(input) {
            Ok(got) => assert_eq!(got, want, "normalize({input:?})"),
            Err(e) => panic!("normalize({input:?}) failed: {e}"),
        }
    }

    fn bad(input: &str) -> String {
        match normalize(input) {
            Err(RuntimeError::InvalidReference { reason, reference }) => {
                assert_eq!(reference, input);
                reason
            }
            other => panic!("normalize({input:?}) = {other:?}, want InvalidReference"),
        }
    }

    #[test]
    fn docker_hub_short_names() {
        ok("busybox", "docker.io/library/busybox:latest");
        ok("busybox:1.36", "docker.io/library/busybox:1.36");
        ok("user/img", "docker.io/user/img:latest");
        ok("user/img:v1", "docker.io/user/img:v1");
        ok("library/busybox", "docker.io/library/busybox:latest");
        ok("docker.io/busybox", "docker.io/library/busybox:latest");
        ok("index.docker.io/busybox", "docker.io/library/busybox:latest");
        ok("docker.io/library/busybox:latest", "docker.io/library/busybox:latest");
        ok("a/b/c/d", "docker.io/a/b/c/d:latest");
    }

    #[test]
    fn registries_with_ports_and_hosts() {
        ok("localhost/x", "localhost/x:latest");
        ok("localhost:5000/x", "localhost:5000/x:latest");
        ok("registry:5000/a/b:tag", "registry:5000/a/b:tag");
        ok("public.ecr.aws/nginx/nginx:1.25", "public.ecr.aws/nginx/nginx:1.25");
        ok(
            "123456789012.dkr.ecr.us-east-1.amazonaws.com/app:v2",
            "123456789012.dkr.ecr.us-east-1.amazonaws.com/app:v2",
        );
        ok("[::1]:5000/x", "[::1]:5000/x:latest");
        ok("Example.COM/x", "Example.COM/x:latest");
        // Without '/', `localhost:5000` is the image localhost with tag 5000.
        ok("localhost:5000", "docker.io/library/localhost:5000");
    }

    #[test]
    fn digests() {
        ok(&format!("busybox@sha256:{HEX}"), &format!("docker.io/library/busybox@sha256:{HEX}"));
        ok(&format!("busybox:1.36@sha256:{HEX}"), &format!("docker.io/library/busybox:1.36@sha256:{HEX}"));
        ok(&format!("localhost:5000/x@sha256:{HEX}"), &format!("localhost:5000/x@sha256:{HEX}"));
        bad(&format!("busybox@sha256:{}", &HEX[..63]));
        bad(&format!("busybox@sha256:{}", HEX.to_uppercase()));
        bad(&format!("busybox@md5:{HEX}"));
        bad("busybox@");
    }

    #[test]
    fn separators_in_paths() {
        ok("a_b/c__d/e-f/g--h/i.j", "docker.io/a_b/c__d/e-f/g--h/i.j:latest");
        bad("a/b___c");
        bad("a/-b");
        bad("a/b-");
        bad("a/b..c");
        bad("a//b");
    }

    #[test]
    fn rejects_invalid_references() {
        assert_eq!(bad("Busybox"), "the repository name must be lowercase");
        assert_eq!(bad("user/Img"), "the repository name must be lowercase");
        assert_eq!(bad("registry:5000/Up"), "the repository name must be lowercase");
        assert!(bad(HEX).contains("image id"));
        bad("");
        bad("busybox:");
        bad("busybox:-tag");
        bad(&format!("busybox:{}", "t".repeat(129)));
        bad("bad host/x");
        bad("-host.com/x");
        bad("host:port/x");
        bad(&format!("docker.io/{}", "a".repeat(250)));
        ok(
            &format!("busybox:{}", "t".repeat(128)),
            &format!("docker.io/library/busybox:{}", "t".repeat(128)),
        );
    }

    #[test]
    fn parsed_parts() {
        let r = parse_normalized("registry:5000/a/b:tag").unwrap();
        assert_eq!(r.domain, "registry:5000");
        assert_eq!(r.path, "a/b");
        assert_eq!(r.tag.as_deref(), Some("tag"));
        assert_eq!(r.digest, None);
        assert_eq!(r.name(), "registry:5000/a/b");
    }
}
