//! The FIFO set of one exec'd process, as containerd's `cio` makes for `ctr task exec`: a
//! private directory holding `stdin`, `stdout` and `stderr` FIFOs whose paths go into the
//! Exec request, and whose other ends the shim opens when the process starts.
//!
//! Our ends are opened before the process starts and never block: outputs are read-only
//! non-blocking (the shim's blocking open for writing then succeeds at once), stdin is opened
//! read-write (allowed on Linux), so the shim's open for reading finds a writer. Once the
//! process has started every end is open, and the paths can go.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rustix::fs::Mode;
use tokio::net::unix::pipe;

use crate::runtime::RuntimeError;

/// The paths of one process's FIFOs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FifoSet {
    pub dir: PathBuf,
    pub stdin: Option<PathBuf>,
    pub stdout: PathBuf,
    pub stderr: Option<PathBuf>,
}

/// Our ends of a [`FifoSet`].
#[derive(Debug)]
pub(crate) struct Ends {
    pub stdin: Option<pipe::Sender>,
    pub stdout: pipe::Receiver,
    pub stderr: Option<pipe::Receiver>,
}

impl FifoSet {
    /// Makes directory `parent/id` (mode 0700) with the FIFOs (mode 0600); nothing is left
    /// behind on failure.
    pub(crate) fn create(
        parent: &Path,
        id: &str,
        stdin: bool,
        stderr: bool,
    ) -> Result<FifoSet, RuntimeError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| RuntimeError::io("create the exec directory", parent, e))?;
        let dir = parent.join(id);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| RuntimeError::io("create the FIFO directory", &dir, e))?;
        let set = FifoSet {
            stdin: stdin.then(|| dir.join("stdin")),
            stdout: dir.join("stdout"),
            stderr: stderr.then(|| dir.join("stderr")),
            dir,
        };
        let paths = [set.stdin.as_ref(), Some(&set.stdout), set.stderr.as_ref()];
        for path in paths.into_iter().flatten() {
            if let Err(e) = rustix::fs::mkfifoat(rustix::fs::CWD, path, Mode::RUSR | Mode::WUSR) {
                set.remove();
                return Err(RuntimeError::io("create the FIFO", path, e.into()));
            }
        }
        Ok(set)
    }

    /// Opens our ends (see the module docs). Must be called inside a tokio runtime.
    pub(crate) fn open(&self) -> Result<Ends, RuntimeError> {
        let reader = |path: &Path| {
            pipe::OpenOptions::new()
                .open_receiver(path)
                .map_err(|e| RuntimeError::io("open the FIFO for reading", path, e))
        };
        let stdin = match &self.stdin {
            Some(path) => Some(
                pipe::OpenOptions::new()
                    .read_write(true)
                    .open_sender(path)
                    .map_err(|e| RuntimeError::io("open the FIFO for writing", path, e))?,
            ),
            None => None,
        };
        let stdout = reader(&self.stdout)?;
        let stderr = self.stderr.as_deref().map(reader).transpose()?;
        Ok(Ends { stdin, stdout, stderr })
    }

    /// Removes the directory and its FIFOs; what is gone already is no error.
    pub(crate) fn remove(&self) {
        remove_dir(&self.dir);
    }

    /// The path of an absent stream as containerd expects it: empty.
    pub(crate) fn uri(path: Option<&PathBuf>) -> String {
        path.map(|p| p.to_string_lossy().into_owned()).unwrap_or_default()
    }
}

/// Removes a FIFO directory, logging what cannot be removed.
pub(crate) fn remove_dir(dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot remove an exec FIFO directory"),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn fifos_carry_bytes_both_ways_and_end_with_their_writers() {
        let tmp = tempfile::tempdir().unwrap();
        let set = FifoSet::create(&tmp.path().join("exec"), "exec-1", true, true).unwrap();
        for p in [set.stdin.as_ref().unwrap(), &set.stdout, set.stderr.as_ref().unwrap()] {
            let meta = std::fs::metadata(p).unwrap();
            assert!(meta.file_type().is_fifo(), "{p:?}");
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        }
        let ends = set.open().unwrap();

        // The other side opens as the shim does: blocking, after ours.
        let stdout = set.stdout.clone();
        let writer = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().write(true).open(stdout).unwrap();
            f.write_all(b"from the process").unwrap();
        });
        let stdin = set.stdin.clone().unwrap();
        let reader = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut f = std::fs::File::open(stdin).unwrap();
            let mut got = vec![0; 8];
            f.read_exact(&mut got).unwrap();
            got
        });
        let mut out = ends.stdout;
        let mut text = String::new();
        out.read_to_string(&mut text).await.unwrap();
        assert_eq!(text, "from the process");
        writer.await.unwrap();

        let mut input = ends.stdin.unwrap();
        input.write_all(b"to stdin").await.unwrap();
        assert_eq!(reader.await.unwrap(), b"to stdin");

        set.remove();
        assert!(!set.dir.exists());
        // Again: nothing there is no error.
        set.remove();
    }

    #[test]
    fn a_set_without_stdin_or_stderr_has_only_stdout() {
        let tmp = tempfile::tempdir().unwrap();
        let set = FifoSet::create(tmp.path(), "exec-2", false, false).unwrap();
        let names: Vec<String> = std::fs::read_dir(&set.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["stdout"]);
        assert_eq!(FifoSet::uri(set.stdin.as_ref()), "");
        assert_eq!(FifoSet::uri(Some(&set.stdout)), set.stdout.to_string_lossy());
        // The same id twice is refused, and the first set is untouched.
        assert!(matches!(
            FifoSet::create(tmp.path(), "exec-2", false, false),
            Err(RuntimeError::Io { operation: "create the FIFO directory", .. })
        ));
        assert!(set.stdout.exists());
    }
}
