//! The site's web side: the HTTP listener ([`serve`]), the run pages and their live log
//! (Server-Sent Events), ANSI to HTML, `/healthz`, `/readyz` and `/metrics`.
//!
//! It is handed what it shows and nothing more: read-only views of runs and the one
//! [`Backend`] trait the site implements (copies out of the site's records, never a handle on
//! them), and for anything not public, the viewer's in-process `Session` capability, which
//! decides what a page shows or does exactly as it would over RPC. The GitHub webhook and the
//! OAuth login steps are answered by the site ([`Backend::endpoint`]) with the helpers here.
//!
//! Must not depend on the store, the queue, the grant machinery or GitHub: what it renders is
//! handed to it, and what it may do is what its capabilities allow.

mod ansi;
mod pages;
pub mod render;
mod server;
mod view;

pub use ansi::AnsiHtml;
pub use server::{
    Body, LocalStream, MAX_HEAD_BYTES, Reply, SESSION_COOKIE, WebLimits, json, message_page,
    read_body, reply, serve, session_cookie, text,
};
pub use view::{
    ArtifactFile, ArtifactView, Backend, Follow, GrantEnd, LogPages, RunChanges, RunView, SignedIn,
    SubmissionView, ViewError, Viewer, WebSettings,
};
