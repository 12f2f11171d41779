//! The site's web side, as far as it has left `tinyci-site`: rendering terminal output to
//! HTML (`ansi`) and the pages' pure rendering helpers, stylesheet and script (`render`).
//! The HTTP listener, routes and pages still live in `tinyci-site` (`http.rs`, `web.rs`) and
//! come here once they are handed capabilities instead of the site's services.
//!
//! Must not depend on the store, the queue or capnp: what it renders is handed to it.

mod ansi;
pub mod render;

pub use ansi::AnsiHtml;
