//! Images of the host's Podman store, for `ecsd image import --from-podman REF`: what Podman
//! knows of one (`podman image inspect`) and its bytes as an OCI archive on a pipe
//! (`podman image save --format oci-archive`), which `import` reads as it reads a file.
//!
//! The podman CLI, not its REST API: the CLI needs no Podman service running (hosts start
//! one only through systemd socket activation), reads the store of whoever runs ecsd's
//! command (root's or a user's), and honours Podman's own configuration
//! (`CONTAINERS_STORAGE_CONF`, `containers.conf`). It costs about 40 ms more than the REST
//! call, well inside the second an import of busybox may take.

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use super::RuntimeError;
use super::reference::parse_normalized;

/// Podman's exit status of `podman image exists` for an image it does not have.
const EXISTS_NO: i32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum PodmanImageError {
    #[error(
        "Podman is not installed: there is no {} (install podman, or set ECSD_PODMAN to its path)",
        .program.display()
    )]
    NotInstalled { program: PathBuf },
    #[error("cannot run {}", .program.display())]
    Spawn { program: PathBuf, source: std::io::Error },
    #[error(
        "Podman has no image {reference} (`podman images` lists the images it has; `podman pull {reference}` fetches one)"
    )]
    NoSuchImage { reference: String },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed { command: String, status: ExitStatus, stderr: String },
    #[error("unexpected answer from `{command}`: {reason}")]
    Unexpected { command: String, reason: String },
}

/// One image of Podman's store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodmanImage {
    /// Podman's image id (the config digest's hex).
    pub id: String,
    /// The names Podman gives it (`RepoTags`), as Podman writes them.
    pub tags: Vec<String>,
    /// The manifest digest Podman shows for it (`Digest`).
    pub digest: Option<String>,
    /// Every `repository@digest` a registry gave it (`RepoDigests`).
    pub repo_digests: Vec<String>,
}

impl PodmanImage {
    /// The name the image takes in containerd when asked for as `reference`: the reference
    /// normalised, or for an image id (or a prefix of one), Podman's first name of it.
    pub fn name_for(&self, reference: &str) -> Result<String, RuntimeError> {
        let is_id = reference.len() >= 3
            && self.id.starts_with(reference)
            && reference.bytes().all(|b| b.is_ascii_hexdigit());
        match (is_id, self.tags.first()) {
            (false, _) => super::reference::normalize(reference),
            (true, Some(tag)) => super::reference::normalize(tag),
            (true, None) => Err(RuntimeError::InvalidReference {
                reference: reference.to_owned(),
                reason: "Podman has no name for this image id; name it with `podman tag` first".into(),
            }),
        }
    }

    /// The digest the registry gave the manifest Podman pulled for `name`'s repository;
    /// `None` for images Podman built or loaded. Podman keeps every digest an image was
    /// pulled under, for every repository, so one repository may list several (an index's
    /// and its manifest's): then the one Podman shows as the image's `Digest` is taken.
    pub fn registry_digest(&self, name: &str) -> Option<String> {
        let repository = parse_normalized(name).ok()?.name();
        let mine: Vec<&str> = self
            .repo_digests
            .iter()
            .filter_map(|rd| rd.split_once('@'))
            .filter(|(repo, _)| parse_normalized(repo).is_ok_and(|r| r.name() == repository))
            .map(|(_, d)| d)
            .collect();
        match mine.as_slice() {
            [] => None,
            [only] => Some((*only).to_owned()),
            several => {
                let shown = self.digest.as_deref().filter(|d| several.contains(d));
                Some(shown.unwrap_or(several[0]).to_owned())
            }
        }
    }
}

/// The fields of `podman image inspect` ecsd reads.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Inspected {
    id: String,
    #[serde(default)]
    digest: Option<String>,
    #[serde(default)]
    repo_digests: Option<Vec<String>>,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
}

/// `podman` with `args`, or the error that says Podman is missing.
fn spawn(podman: &Path, args: &[&str], stdout: Stdio) -> Result<Child, PodmanImageError> {
    Command::new(podman)
        .args(args.iter().map(OsStr::new))
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => PodmanImageError::NotInstalled { program: podman.to_owned() },
            _ => PodmanImageError::Spawn { program: podman.to_owned(), source },
        })
}

fn command_line(podman: &Path, args: &[&str]) -> String {
    std::iter::once(podman.display().to_string())
        .chain(args.iter().map(|a| a.to_string()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `podman args` to its end: its exit status, stdout and stderr.
fn output(podman: &Path, args: &[&str]) -> Result<(ExitStatus, Vec<u8>, String), PodmanImageError> {
    let out = spawn(podman, args, Stdio::piped())?
        .wait_with_output()
        .map_err(|source| PodmanImageError::Spawn { program: podman.to_owned(), source })?;
    Ok((out.status, out.stdout, String::from_utf8_lossy(&out.stderr).trim().to_owned()))
}

/// What Podman knows of image `reference` (a name as Podman resolves it, or an image id).
pub fn inspect(podman: &Path, reference: &str) -> Result<PodmanImage, PodmanImageError> {
    let args = ["image", "inspect", "--format", "json", reference];
    let (status, stdout, stderr) = output(podman, &args)?;
    let command = || command_line(podman, &args);
    if !status.success() {
        // Told apart by `podman image exists`' status, not by inspect's message; run only
        // when inspect failed, since each podman process costs about 100 ms.
        let exists = ["image", "exists", reference];
        let (code, _, _) = output(podman, &exists)?;
        return Err(match code.code() {
            Some(EXISTS_NO) => PodmanImageError::NoSuchImage { reference: reference.to_owned() },
            _ => PodmanImageError::Failed { command: command(), status, stderr },
        });
    }
    let listed: Vec<Inspected> = serde_json::from_slice(&stdout)
        .map_err(|e| PodmanImageError::Unexpected { command: command(), reason: e.to_string() })?;
    let Some(image) = listed.into_iter().next() else {
        return Err(PodmanImageError::Unexpected {
            command: command(),
            reason: "it describes no image".into(),
        });
    };
    Ok(PodmanImage {
        id: image.id,
        tags: image.repo_tags.unwrap_or_default(),
        digest: image.digest,
        repo_digests: image.repo_digests.unwrap_or_default(),
    })
}

/// `podman image save --format oci-archive REF` with its output on a pipe. Read the archive
/// from [`Save::reader`], then ask [`Save::finish`] whether Podman wrote all of it.
#[derive(Debug)]
pub struct Save {
    child: Child,
    command: String,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Save {
    pub fn start(podman: &Path, reference: &str) -> Result<Save, PodmanImageError> {
        let args = ["image", "save", "--format", "oci-archive", reference];
        let mut child = spawn(podman, &args, Stdio::piped())?;
        // Drained aside, so a chatty Podman never blocks on a full stderr pipe.
        let stderr = child.stderr.take().map(|mut e| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = e.read_to_string(&mut text);
                text
            })
        });
        Ok(Save { child, command: command_line(podman, &args), stderr })
    }

    /// The archive as Podman writes it (once).
    pub fn reader(&mut self) -> Option<Box<dyn Read + Send>> {
        self.child.stdout.take().map(|o| Box::new(o) as Box<dyn Read + Send>)
    }

    /// Waits for Podman to exit: an error when it did not write the whole archive.
    pub fn finish(mut self) -> Result<(), PodmanImageError> {
        drop(self.child.stdout.take());
        let status = self
            .child
            .wait()
            .map_err(|source| PodmanImageError::Spawn { program: PathBuf::from(&self.command), source })?;
        let stderr = self.stderr.take().and_then(|t| t.join().ok()).unwrap_or_default();
        if status.success() {
            Ok(())
        } else {
            Err(PodmanImageError::Failed {
                command: self.command.clone(),
                status,
                stderr: stderr.trim().to_owned(),
            })
        }
    }
}

impl Drop for Save {
    /// A Save given up half-way (the import failed) does not leave Podman running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(tags: &[&str], digest: Option<&str>, repo_digests: &[&str]) -> PodmanImage {
        PodmanImage {
            id: "9d1329ed96db902e72078aa4bb32179052af0b4e10da14eb798fa1131a010e7e".into(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
            digest: digest.map(str::to_owned),
            repo_digests: repo_digests.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn the_registry_digest_is_the_one_of_the_names_repository() {
        // `podman pull 127.0.0.1:5000/busybox` and `…/multi` (an index whose amd64 manifest is
        // busybox's) leave one image with both digests under both names (Podman 4.3).
        let (index, manifest) = ("sha256:271e", "sha256:67ba");
        let pulled = image(
            &["127.0.0.1:5000/multi:latest", "127.0.0.1:5000/busybox:latest"],
            Some(manifest),
            &[
                "127.0.0.1:5000/busybox@sha256:271e",
                "127.0.0.1:5000/busybox@sha256:67ba",
                "127.0.0.1:5000/multi@sha256:271e",
                "127.0.0.1:5000/multi@sha256:67ba",
            ],
        );
        let several = pulled.registry_digest("127.0.0.1:5000/busybox:latest");
        assert_eq!(several.as_deref(), Some(manifest), "several: the one Podman shows");
        let mut other = pulled.clone();
        other.digest = Some(index.into());
        assert_eq!(other.registry_digest("127.0.0.1:5000/multi:latest").as_deref(), Some(index));
        let one = image(&[], None, &["docker.io/library/busybox@sha256:aaaa", "quay.io/x/y@sha256:bbbb"]);
        let short = one.registry_digest("docker.io/library/busybox:latest");
        assert_eq!(short.as_deref(), Some("sha256:aaaa"), "Podman writes short names in full");
        assert_eq!(one.registry_digest("quay.io/x/y:v1").as_deref(), Some("sha256:bbbb"));
        assert_eq!(one.registry_digest("example.com/other:latest"), None, "none of that repository");
        assert_eq!(image(&[], None, &[]).registry_digest("busybox"), None, "built or loaded: none");
    }

    #[test]
    fn images_asked_for_by_id_take_podmans_name() {
        let named = image(&["localhost/app:v1"], None, &[]);
        assert_eq!(named.name_for("busybox").unwrap(), "docker.io/library/busybox:latest");
        assert_eq!(named.name_for("9d1329ed96db").unwrap(), "localhost/app:v1");
        assert_eq!(
            named.name_for("9d1329ed96db902e72078aa4bb32179052af0b4e10da14eb798fa1131a010e7e").unwrap(),
            "localhost/app:v1"
        );
        // Hex that is not this image's id is a name.
        assert_eq!(named.name_for("abcdef").unwrap(), "docker.io/library/abcdef:latest");
        let unnamed = image(&[], None, &[]).name_for("9d1329").unwrap_err().to_string();
        assert_eq!(
            unnamed,
            "image reference '9d1329' is not valid: Podman has no name for this image id; name it with `podman tag` first"
        );
    }
}
