//! Network namespaces made and entered in-process, the way iproute2 and Podman make them:
//! a dedicated thread unshares a new network namespace and bind-mounts its own
//! `/proc/thread-self/ns/net` onto a file, then ends, so no thread of the tokio pool is ever
//! left in another namespace.
//!
//! `ip netns add` cannot be used inside a user namespace that shares the host's network
//! namespace (rootless ecsd under `rootlesskit --net=host`): it makes the namespace, then
//! fails to switch back into the host's, which it does not own. This module never switches
//! back: its threads die in the namespace they entered.
//!
//! This is the only module of `network` with `unsafe` code (one `unshare`).

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use rustix::mount::{MountPropagationFlags, UnmountFlags};
use rustix::thread::{LinkNameSpaceType, UnshareFlags};

/// What [`add`] or [`delete`] was doing when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetnsStep {
    /// Making the namespace directory a shared mount point, as iproute2 does, so a namespace
    /// mounted in it is seen (and deletable) from every mount namespace that shares it.
    SharedDir,
    /// Creating the file the namespace is mounted on.
    File,
    /// `unshare(CLONE_NEWNET)`: not allowed without CAP_SYS_ADMIN in ecsd's user namespace.
    Unshare,
    /// Bind-mounting the namespace onto its file.
    Mount,
    /// Unmounting the namespace or removing its file.
    Unmount,
    /// Entering the namespace (`setns`).
    Enter,
    /// Starting the thread that does it.
    Thread,
}

impl std::fmt::Display for NetnsStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NetnsStep::SharedDir => "make its directory a shared mount",
            NetnsStep::File => "create its file",
            NetnsStep::Unshare => "unshare a new network namespace",
            NetnsStep::Mount => "bind-mount it onto its file",
            NetnsStep::Unmount => "unmount and remove it",
            NetnsStep::Enter => "enter it",
            NetnsStep::Thread => "start a thread for it",
        })
    }
}

/// A failure of [`add`], [`delete`] or [`spawn_in`], with the step and the OS's error.
#[derive(Debug, thiserror::Error)]
#[error("network namespace {}: cannot {step}", path.display())]
pub struct NetnsError {
    pub path: PathBuf,
    pub step: NetnsStep,
    #[source]
    pub source: io::Error,
}

impl NetnsError {
    fn at(path: &Path, step: NetnsStep) -> impl FnOnce(io::Error) -> NetnsError + '_ {
        move |source| NetnsError { path: path.to_owned(), step, source }
    }

    /// Whether trying again can help: not when ecsd lacks the privilege.
    pub fn is_transient(&self) -> bool {
        !matches!(self.source.kind(), io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem)
    }
}

fn rustix_err(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// Makes `dir` a shared mount point (binding it onto itself first when it is not a mount
/// point), as `ip netns add` does.
fn share_dir(dir: &Path) -> Result<(), NetnsError> {
    let err = NetnsError::at(dir, NetnsStep::SharedDir);
    std::fs::create_dir_all(dir).map_err(NetnsError::at(dir, NetnsStep::SharedDir))?;
    let shared = MountPropagationFlags::SHARED | MountPropagationFlags::REC;
    match rustix::mount::mount_change(dir, shared) {
        Ok(()) => Ok(()),
        // Not a mount point yet.
        Err(rustix::io::Errno::INVAL) => rustix::mount::mount_bind_recursive(dir, dir)
            .and_then(|()| rustix::mount::mount_change(dir, shared))
            .map_err(|e| err(rustix_err(e))),
        Err(e) => Err(err(rustix_err(e))),
    }
}

/// Creates the network namespace `<dir>/<name>`, with nothing in it but a loopback that is
/// down. Fails if the file exists.
pub async fn add(dir: &Path, name: &str) -> Result<PathBuf, NetnsError> {
    let path = dir.join(name);
    if path.exists() {
        return Err(NetnsError::at(&path, NetnsStep::File)(io::ErrorKind::AlreadyExists.into()));
    }
    share_dir(dir)?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(NetnsError::at(&path, NetnsStep::File))?;
    let target = path.clone();
    let made = on_thread(&path, move || {
        // SAFETY: CLONE_NEWNET only changes this thread's network namespace; unlike
        // CLONE_FILES it leaves the file-descriptor table shared, and the thread ends right
        // after the mount, so no other code ever runs in the new namespace on it.
        #[allow(unsafe_code)]
        unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNET) }
            .map_err(|e| (NetnsStep::Unshare, rustix_err(e)))?;
        rustix::mount::mount_bind("/proc/thread-self/ns/net", &target)
            .map_err(|e| (NetnsStep::Mount, rustix_err(e)))
    })
    .await;
    if let Err(e) = made {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

/// Unmounts and removes the network namespace at `path`; removing what is gone succeeds.
/// The namespace itself lives on while a process is in it.
pub fn delete(path: &Path) -> Result<(), NetnsError> {
    let err = NetnsError::at(path, NetnsStep::Unmount);
    match rustix::mount::unmount(path, UnmountFlags::DETACH) {
        // EINVAL: a file that is not (or no longer) mounted.
        Ok(()) | Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(err(rustix_err(e))),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(NetnsError::at(path, NetnsStep::Unmount)(e)),
    }
}

/// Runs `f` on a new thread that has entered the network namespace at `netns`, and ends
/// with it: what `f` makes there (a socket, a child process) stays in that namespace.
pub async fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T, NetnsError> {
    let path = netns.to_owned();
    on_thread(netns, move || {
        let file = File::open(&path).map_err(|e| (NetnsStep::Enter, e))?;
        rustix::thread::move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network))
            .map_err(|e| (NetnsStep::Enter, rustix_err(e)))?;
        f().map_err(|e| (NetnsStep::Enter, e))
    })
    .await
}

/// Runs `f` on a dedicated thread (never one of tokio's: `f` may leave it in another
/// namespace) and waits for it without blocking the runtime.
async fn on_thread<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> Result<T, (NetnsStep, io::Error)> + Send + 'static,
) -> Result<T, NetnsError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("ecsd-netns".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(NetnsError::at(path, NetnsStep::Thread))?;
    match rx.await {
        Ok(result) => result.map_err(|(step, source)| NetnsError { path: path.to_owned(), step, source }),
        Err(_) => Err(NetnsError {
            path: path.to_owned(),
            step: NetnsStep::Thread,
            source: io::Error::other("the namespace thread panicked"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_namespace_whose_file_exists_is_not_made_over_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("taken"), b"").unwrap();
        let e = add(dir.path(), "taken").await.unwrap_err();
        assert_eq!((e.step, e.source.kind()), (NetnsStep::File, io::ErrorKind::AlreadyExists), "{e}");
        assert!(dir.path().join("taken").exists(), "the existing file stays");
    }

    #[test]
    fn deleting_what_is_gone_succeeds_and_a_plain_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        delete(&dir.path().join("gone")).unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"").unwrap();
        delete(&plain).unwrap();
        assert!(!plain.exists());
    }

    #[test]
    fn a_missing_privilege_is_not_worth_retrying() {
        let e = |kind| NetnsError { path: "/run/netns/x".into(), step: NetnsStep::Unshare, source: kind };
        let denied = e(io::Error::from_raw_os_error(1));
        assert!(!denied.is_transient());
        assert_eq!(
            denied.to_string(),
            "network namespace /run/netns/x: cannot unshare a new network namespace"
        );
        assert!(e(io::Error::from_raw_os_error(16)).is_transient(), "EBUSY");
    }

    #[tokio::test]
    async fn entering_a_namespace_that_is_not_one_fails_typed() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"").unwrap();
        let e = in_netns(&plain, || Ok(())).await.unwrap_err();
        assert_eq!(e.step, NetnsStep::Enter, "{e}");
        // Positive control: this process's own namespace can be entered (as root), or is
        // refused for want of privilege (EPERM), never mistaken for a bad file.
        match in_netns(Path::new("/proc/self/ns/net"), || Ok(7)).await {
            Ok(n) => assert_eq!(n, 7),
            Err(e) => assert_eq!(e.source.kind(), io::ErrorKind::PermissionDenied, "{e}"),
        }
    }
}
