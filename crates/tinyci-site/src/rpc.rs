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
