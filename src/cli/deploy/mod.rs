//! `ecsd deploy`: the template-in-the-image deploy in one command. A task definition
//! template (a file, or the `ECS_TASK_TEMPLATE` label of the image) is merged with
//! per-environment overlays and dynamic values, its roles and secrets resolved to ARNs, and
//! the result rendered, checked, or registered and rolled out.
//!
//! An API client like the other subcommands: ECS, IAM and Secrets Manager calls go through
//! the `aws` module; the image label is read with the runtime's config-only registry fetch.

pub mod merge;
pub mod value;
