//! What a task reaches at 169.254.170.2: its metadata (v3, v4, stats) and its role's
//! credentials, served in-process by one listener per task namespace, so a request belongs
//! to the task whose socket it arrived on; plus the secrets and environment files resolved
//! for its containers at start.

pub mod credentials;
pub mod metadata;
pub mod secrets;
pub mod server;
pub mod stats;
