//! One integration-test binary for tinyci-repos: webhook verification and parsing against
//! fixtures, and every client operation against `tinyci-fakegithub`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: failing loudly is the point"
)]

mod api;
mod webhook;
