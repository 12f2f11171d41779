//! A real site in-process: real mTLS on 127.0.0.1:0, real LMDB in a temp dir, clients with
//! certificates from the site's CA, tokens minted with the site's root key.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod conformance;
mod fuzz;
mod grants;
mod logs;
mod restart;
mod secrets;
mod sources;
mod support;
mod web;
