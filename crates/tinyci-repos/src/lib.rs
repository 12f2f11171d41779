//! GitHub, for the site: the REST client (webhooks, commit statuses, comments, file contents,
//! source tarballs, the authenticated user, OAuth code exchange), webhook signature
//! verification and webhook payload parsing.
//!
//! **Architecture Invariant:** the only crate that knows `octocrab`; everyone else calls the
//! types here. It must not depend on capnp, heed or `tinyci-site`, and holds no state: storing
//! hooks, secrets, delivery ids and tokens is the caller's job. Both base URLs (the REST API
//! and the web host that serves OAuth) are configurable, so tests point them at
//! `tinyci-fakegithub` over plain HTTP on 127.0.0.1. Exactly one rustls crypto provider
//! (aws-lc-rs) is compiled in, as everywhere in the workspace.

mod client;
mod types;
mod webhook;

pub use client::{ApiError, Endpoint, GitHub, GitHubConfig, RepoPermissions};
pub use types::{
    CommitStatus, HookId, InvalidName, MAX_DESCRIPTION_CHARS, NewHook, OAuthApp, OAuthToken,
    RepoName, StatusState, User, truncate_description,
};
pub use webhook::{
    MAX_WEBHOOK_BYTES, PrAction, WebhookError, WebhookEvent, parse_event, repository_of,
    verify_signature,
};
