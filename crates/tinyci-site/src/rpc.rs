//! Small helpers for reading RPC parameters with errors that name the field.

/// Reads a text field, naming it if it is missing or not UTF-8.
pub(crate) fn read_text(
    field: capnp::Result<capnp::text::Reader<'_>>,
    name: &str,
) -> Result<String, capnp::Error> {
    let text = field.map_err(|e| capnp::Error::failed(format!("malformed {name}: {e}")))?;
    text.to_string()
        .map_err(|e| capnp::Error::failed(format!("malformed {name}: not UTF-8 ({e})")))
}

/// Reads a text field a peer describes itself with (a hostname, a version), refusing more
/// than 255 bytes: the site keeps it for as long as the peer is connected.
pub(crate) fn read_short_text(
    field: capnp::Result<capnp::text::Reader<'_>>,
    name: &str,
) -> Result<String, capnp::Error> {
    let text = read_text(field, name)?;
    if text.len() > 255 {
        return Err(capnp::Error::failed(format!(
            "{name} is {} bytes; at most 255",
            text.len()
        )));
    }
    // A short field names something (a ref, a runner, a queue): no control character, NUL
    // least of all, belongs in one, and NUL would end its key in the store's indexes early.
    if let Some(c) = text.chars().find(|c| c.is_control()) {
        return Err(capnp::Error::failed(format!(
            "{name} holds a control character ({:?}); refused",
            c
        )));
    }
    Ok(text)
}

/// The client of a capability this site serves, with its calls traced and counted (see
/// `tinyci_net::observe`). Every capability the site hands out is made here.
pub(crate) fn observed<C, S>(metrics: &std::rc::Rc<crate::metrics::Metrics>, server: S) -> C
where
    C: capnp::capability::FromServer<tinyci_net::observe::Observed<S>>,
{
    capnp_rpc::new_client(tinyci_net::observe::Observed::new(
        server,
        crate::metrics::observer(metrics),
    ))
}

/// A refusal or failure as the caller sees it: the error's message and every source's,
/// joined, so a typed error keeps its cause on the wire.
pub(crate) fn failed(error: &(dyn std::error::Error + 'static)) -> capnp::Error {
    capnp::Error::failed(chain(error))
}

/// As [`failed`], after saying what was refused: "`what`: message: cause".
pub(crate) fn failed_as(what: &str, error: &(dyn std::error::Error + 'static)) -> capnp::Error {
    capnp::Error::failed(format!("{what}: {}", chain(error)))
}

pub(crate) use tinyci_core::error_chain as chain;
