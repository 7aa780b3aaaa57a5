//! Clients of KvService: the layered channel stack the generated client runs on.

mod stack;

pub use stack::{ClientStack, KvChannel, default_retry_policy};
