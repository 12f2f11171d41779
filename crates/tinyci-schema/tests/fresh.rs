//! The committed generated code must match what `capnp compile` makes of `schema/` today.
//! Regenerate with `TINYCI_UPDATE_SCHEMA=1 cargo test -p tinyci-schema --test fresh`.

#![allow(clippy::unwrap_used, reason = "a test: failing loudly is the point")]

use std::path::{Path, PathBuf};
use std::process::Command;

fn capnp_available() -> Result<(), String> {
    match Command::new("capnp").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        _ => return Err("the `capnp` compiler is not on PATH".into()),
    }
    // `-> stream` methods import /capnp/stream.capnp, which Debian ships in libcapnp-dev.
    let has_stream = ["/usr/include", "/usr/local/include"]
        .iter()
        .any(|dir| Path::new(dir).join("capnp/stream.capnp").exists());
    if has_stream {
        Ok(())
    } else {
        Err("capnp/stream.capnp is missing (Debian: apt-get install libcapnp-dev)".into())
    }
}

#[test]
fn generated_code_matches_schema() {
    if let Err(why) = capnp_available() {
        // CI installs capnproto and libcapnp-dev, so this skip only happens on developer
        // machines without them; the committed code still builds there.
        eprintln!("SKIP generated_code_matches_schema: {why}");
        return;
    }
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let schema_dir = crate_dir.join("../../schema");
    let out = tempfile::tempdir().unwrap();
    capnpc::CompilerCommand::new()
        .src_prefix(&schema_dir)
        .file(schema_dir.join("tinyci.capnp"))
        .output_path(out.path())
        .run()
        .unwrap();
    let fresh = std::fs::read_to_string(out.path().join("tinyci_capnp.rs")).unwrap();
    let committed_path = crate_dir.join("src/tinyci_capnp.rs");
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    if fresh == committed {
        return;
    }
    if std::env::var_os("TINYCI_UPDATE_SCHEMA").is_some() {
        std::fs::write(&committed_path, fresh).unwrap();
        eprintln!("rewrote {}", committed_path.display());
        return;
    }
    panic!(
        "{} is stale: schema/ changed without regenerating. Run \
         `TINYCI_UPDATE_SCHEMA=1 cargo test -p tinyci-schema --test fresh` and commit the result.",
        committed_path.display()
    );
}
