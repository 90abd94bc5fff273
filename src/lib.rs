//! ecsd: the Amazon ECS API on a Linux host, running ECS tasks on containerd.

pub mod model;
