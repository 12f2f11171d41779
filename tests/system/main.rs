//! Whole-system tests: the real `tinyci` binary, real sites on loopback ports, real mTLS and
//! LMDB in temporary directories.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod abuse;
mod admin_json;
mod artifacts;
mod browser;
mod config_errors;
mod discovery;
mod federation;
mod github;
mod grants;
mod isolation;
mod jobs;
mod logs;
mod metrics;
mod packaging;
mod partition;
mod runners;
mod secrets;
mod site_lifecycle;
mod web;
