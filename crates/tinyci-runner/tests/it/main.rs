//! Executors running real processes and real containers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod docker;
mod pull;
mod sandbox;
mod shell;
mod support;
