//! The client subcommands of the `ecsd` binary: API clients of an ecsd (or any ECS endpoint),
//! never reaching into a daemon's internals.

pub mod exec;
pub mod services;
