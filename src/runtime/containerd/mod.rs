//! The runtime on containerd: the only code that imports containerd-client and tonic.
//!
//! | file | concern |
//! |---|---|
//! | `connection` | the namespaced channel, request helpers, leases, error classification |
//! | `runtime` | [`ContainerdRuntime`]: images, snapshots, containers, tasks |
//! | `events` | the exit stream, kept alive across containerd restarts |
//! | `exec` | processes started in running containers, streamed through FIFOs |
//! | `fifo` | the FIFO set of one exec'd process |
//! | `images` | resolving and unpacking images present in containerd; listing and removing them |
//! | `content` | Content.Write sessions (STAT, WRITE, COMMIT), labels on content |
//! | `pull` | pulling from a registry into the content store, then unpacking |
//! | `import` | `ecsd image import`: OCI layout and `docker save` archives |
//! | `embedded` | the containerd ecsd starts itself when none answers |
//! | `logs` | the `binary://` log driver the shim runs, and the log reader |

mod connection;
mod content;
pub mod embedded;
mod events;
mod exec;
mod fifo;
pub(crate) mod images;
pub mod import;
pub mod logs;
pub mod pull;
mod runtime;

pub use runtime::{ContainerdOptions, ContainerdRuntime};

/// The snapshotter every container and unpacked image uses.
pub const SNAPSHOTTER: &str = "overlayfs";
/// The containerd runtime (shim) of every container.
pub const RUNC_RUNTIME: &str = "io.containerd.runc.v2";
