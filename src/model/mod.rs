//! ECS domain types and their validation. No I/O happens here.
//!
//! The wire shapes themselves are generated from the official ECS model (`shapes`); this
//! module adds what the model cannot say: ARNs, ECS's own rules for task definitions, tags,
//! the task record every layer above shares (`task`), services and their deployments
//! (`service`), network modes and port ranges.

pub mod arn;
pub mod attribute;
pub mod awslogs;
pub mod check;
pub mod network;
pub mod service;
pub mod shapes;
pub mod tags;
pub mod task;
pub mod task_definition;
pub mod time;
