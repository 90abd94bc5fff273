//! Integration tests: ecsd in-process on 127.0.0.1:0, driven by the real AWS SDK for Rust
//! (aws-sdk-ecs) and, for protocol edge cases, by raw HTTP.

mod account_settings;
mod attributes;
mod clusters;
mod common;
mod deploy;
mod durability;
mod exec;
mod images;
mod introspection;
mod networking;
mod protocol;
mod services;
#[path = "../support/mod.rs"]
mod support;
mod tags;
mod task_definitions;
mod tasks;
mod upstream;
