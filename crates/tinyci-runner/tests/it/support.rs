//! Building specs and collecting output.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tinyci_runner::{ExecSpec, OutputChunk, Stream};
use tokio::sync::mpsc;

pub(crate) fn spec(source: &Path, command: &[&str]) -> ExecSpec {
    ExecSpec {
        label: "r-test".into(),
        command: command.iter().map(|s| s.to_string()).collect(),
        source_dir: source.to_owned(),
        workdir: ".".into(),
        mountpoint: "/src".into(),
        image: String::new(),
        pull: None,
        registry_credentials: false,
        env: BTreeMap::new(),
        timeout: Duration::from_secs(300),
        privileged: false,
        network: true,
        cpu: None,
        memory: None,
        grace: Duration::from_secs(2),
        secret_env: Default::default(),
        secrets_dir: None,
    }
}

/// Everything a run printed, per stream.
#[derive(Debug, Default)]
pub(crate) struct Collected {
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
    pub(crate) system: Vec<u8>,
    pub(crate) chunks: usize,
}

pub(crate) async fn collect(mut rx: mpsc::Receiver<OutputChunk>) -> Collected {
    let mut c = Collected::default();
    while let Some(chunk) = rx.recv().await {
        assert!(chunk.data.len() <= tinyci_runner::MAX_CHUNK);
        c.chunks += 1;
        match chunk.stream {
            Stream::Stdout => c.stdout.extend(chunk.data),
            Stream::Stderr => c.stderr.extend(chunk.data),
            Stream::System => c.system.extend(chunk.data),
        }
    }
    c
}

/// Receives chunks until stdout contains `needle`; returns what was seen.
pub(crate) async fn wait_for_stdout(rx: &mut mpsc::Receiver<OutputChunk>, needle: &str) -> String {
    let mut seen = Vec::new();
    while let Some(chunk) = rx.recv().await {
        if chunk.stream == Stream::Stdout {
            seen.extend(chunk.data);
            let text = String::from_utf8_lossy(&seen).into_owned();
            if text.contains(needle) {
                return text;
            }
        }
    }
    panic!(
        "output ended without {needle:?}; saw {:?}",
        String::from_utf8_lossy(&seen)
    );
}
