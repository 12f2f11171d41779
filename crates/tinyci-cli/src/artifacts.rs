//! `tinyci artifacts RUN [--get NAME [-o FILE]]`: list a run's artifacts, or download one
//! with its SHA-256 checked end to end.

use std::cell::RefCell;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use anyhow::{Context, Result, bail};
use clap::Args;
use sha2::{Digest, Sha256};
use tinyci_schema::{byte_sink, log_reader};
use tinyci_site::{SiteClient, SiteConfig, admin_capability, rpc_error};

use crate::util::{InputError, config_path, local_runtime};

/// List a run's artifacts (size, SHA-256, name), or download one with --get.
///
/// Uses the admin certificate from site.toml, with the admin token (every repository) or,
/// with --token, a grant held by the admin certificate's identity that allows `logs:read` on
/// the run's repository; with --site NAME --token, a partner site's grant held by this site. A download is written to a temporary file beside FILE and renamed
/// only once its size and SHA-256 match what the site recorded.
#[derive(Debug, Args)]
pub(crate) struct ArtifactsArgs {
    /// The run (r-N).
    run: String,
    /// Download this artifact (its name as listed) instead of listing.
    #[arg(long, value_name = "NAME")]
    get: Option<String>,
    /// Where to write the download, `-` for standard output [default: the artifact's file
    /// name, in the current directory].
    #[arg(short = 'o', long = "output", value_name = "FILE", requires = "get")]
    output: Option<PathBuf>,
    /// Print the list as JSON: `[{"name", "size", "sha256"}]` (size in bytes, sha256 in
    /// hex; `[]` when the run has none).
    #[arg(long, conflicts_with = "get")]
    json: bool,
    /// The run's repository [default: every repository with the admin token; the grant's
    /// only repository with --token].
    #[arg(long, value_name = "OWNER/NAME")]
    repo: Option<String>,
    #[command(flatten)]
    grant: crate::remote::GrantArgs,
    #[command(flatten)]
    site: crate::jobs::SiteArgs,
}

/// One listed artifact.
struct Listed {
    name: String,
    size: u64,
    sha256: Vec<u8>,
}

pub(crate) fn artifacts(mut args: ArtifactsArgs) -> Result<()> {
    args.grant = args.grant.resolved()?;
    let config = SiteConfig::load(&config_path(args.site.config.clone()))?;
    local_runtime()?.block_on(async move {
        let (client, reader) = log_reader(&config, &args).await?;
        let rpc = |e| rpc_error(&client, e);
        let mut request = reader.artifacts_request();
        request.get().set_run(&args.run);
        let response = request.send().promise.await.map_err(rpc)?;
        let list = response
            .get()
            .and_then(|r| r.get_artifacts())
            .map_err(rpc)?;
        let mut listed = Vec::with_capacity(list.len() as usize);
        for info in list.iter() {
            listed.push(Listed {
                name: info
                    .get_name()
                    .and_then(|n| Ok(n.to_string()?))
                    .map_err(rpc)?,
                size: info.get_size(),
                sha256: info.get_sha256().map_err(rpc)?.to_vec(),
            });
        }
        match &args.get {
            None if args.json => crate::jobs::print_json(&serde_json::Value::Array(
                listed
                    .iter()
                    .map(|a| {
                        serde_json::json!({
                            "name": a.name,
                            "size": a.size,
                            "sha256": hex(&a.sha256),
                        })
                    })
                    .collect(),
            )),
            None => {
                print_list(&args.run, &listed)?;
                Ok(())
            }
            Some(name) => {
                let Some(artifact) = listed.iter().find(|a| &a.name == name) else {
                    let names: Vec<&str> = listed.iter().map(|a| a.name.as_str()).collect();
                    if names.is_empty() {
                        bail!("run {} has no artifact {name:?} (it has none)", args.run);
                    }
                    bail!(
                        "run {} has no artifact {name:?} (it has: {})",
                        args.run,
                        names.join(", ")
                    );
                };
                let output = match &args.output {
                    Some(path) => path.clone(),
                    None => default_output(name)?,
                };
                download(&client, &reader, &args.run, artifact, &output).await
            }
        }
    })
}

/// A `LogReader` through the admin token (scoped to `--repo`, else every repository) or
/// through `--token` at this site or `--site` (scoped to `--repo`, else the grant's only
/// repository).
async fn log_reader(
    config: &SiteConfig,
    args: &ArtifactsArgs,
) -> Result<(SiteClient, log_reader::Client)> {
    if let Some(token) = &args.grant.token {
        let (client, session) =
            crate::remote::session_with(config, args.site.addr, args.grant.site.as_deref(), token)
                .await?;
        let reader =
            crate::remote::grant_log_reader(&client, &session, args.repo.as_deref()).await?;
        return Ok((client, reader));
    }
    let (client, admin) = admin_capability(config, args.site.addr).await?;
    let mut request = admin.logs_request();
    request.get().set_repo(args.repo.as_deref().unwrap_or("*"));
    let reader = request.send().pipeline.get_reader();
    Ok((client, reader))
}

fn print_list(run: &str, listed: &[Listed]) -> Result<()> {
    if listed.is_empty() {
        eprintln!("run {run} has no artifacts");
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{:>12}  {:<64}  NAME", "SIZE", "SHA256")?;
    for artifact in listed {
        writeln!(
            out,
            "{:>12}  {:<64}  {}",
            artifact.size,
            hex(&artifact.sha256),
            artifact.name
        )?;
    }
    out.flush()?;
    Ok(())
}

/// The artifact's last component, as a file in the current directory.
fn default_output(name: &str) -> Result<PathBuf> {
    match name.rsplit('/').next() {
        Some(base) if !base.is_empty() && base != "." && base != ".." => Ok(PathBuf::from(base)),
        _ => Err(InputError(format!(
            "cannot name a file after artifact {name:?}; give one with -o FILE"
        ))
        .into()),
    }
}

/// Downloads `artifact` into `output` (`-` for standard output): through a temporary file
/// beside it, renamed once the size and SHA-256 match the listing and the site's `finish`.
async fn download(
    client: &SiteClient,
    reader: &log_reader::Client,
    run: &str,
    artifact: &Listed,
    output: &Path,
) -> Result<()> {
    let target = if output == Path::new("-") {
        Target::Stdout(std::io::stdout())
    } else {
        let file_name = output
            .file_name()
            .ok_or_else(|| InputError(format!("{} is not a file name", output.display())))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(file_name);
        tmp_name.push(format!(".{}.part", std::process::id()));
        let tmp = output.with_file_name(tmp_name);
        let file =
            File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        Target::File { file, tmp }
    };
    let state = Rc::new(RefCell::new(Receiving {
        target: Some(target),
        hasher: Sha256::new(),
        size: 0,
        limit: artifact.size,
        finished: None,
    }));
    let mut request = reader.download_request();
    request.get().set_run(run);
    request.get().set_name(&artifact.name);
    request.get().set_sink(capnp_rpc::new_client(DownloadSink {
        state: state.clone(),
    }));
    let result = request.send().promise.await;
    let mut state = state.borrow_mut();
    let target = state.target.take();
    let outcome = check_download(result, &state, artifact)
        .map_err(|e| match e.downcast::<capnp::Error>() {
            Ok(e) => rpc_error(client, e).into(),
            Err(e) => e,
        })
        .and_then(|()| match &target {
            Some(Target::File { file, tmp }) => {
                file.sync_all()
                    .with_context(|| format!("cannot write {}", tmp.display()))?;
                std::fs::rename(tmp, output).with_context(|| {
                    format!("cannot move {} to {}", tmp.display(), output.display())
                })?;
                eprintln!(
                    "wrote {} ({} bytes, sha256 {})",
                    output.display(),
                    artifact.size,
                    hex(&artifact.sha256)
                );
                Ok(())
            }
            Some(Target::Stdout(stdout)) => stdout
                .lock()
                .flush()
                .context("cannot write to standard output"),
            None => Ok(()),
        });
    if outcome.is_err()
        && let Some(Target::File { tmp, .. }) = &target
    {
        let _ = std::fs::remove_file(tmp);
    }
    outcome
}

/// Whether the download ended with every byte, matching the listing.
fn check_download(
    result: capnp::Result<capnp::capability::Response<log_reader::download_results::Owned>>,
    state: &Receiving,
    artifact: &Listed,
) -> Result<()> {
    result?;
    let Some(digest) = state.finished else {
        bail!(
            "the site ended the download of {:?} without finishing it",
            artifact.name
        );
    };
    if state.size != artifact.size || digest.as_slice() != artifact.sha256.as_slice() {
        bail!(
            "artifact {:?} arrived as {} bytes with sha256 {}, but the site lists {} bytes with \
             sha256 {}; not kept",
            artifact.name,
            state.size,
            hex(&digest),
            artifact.size,
            hex(&artifact.sha256)
        );
    }
    Ok(())
}

enum Target {
    File { file: File, tmp: PathBuf },
    Stdout(std::io::Stdout),
}

struct Receiving {
    /// Where the bytes go; taken when the download ends.
    target: Option<Target>,
    hasher: Sha256,
    size: u64,
    /// The listed size: no more bytes are taken.
    limit: u64,
    /// The SHA-256 of what arrived, once `finish` confirmed it.
    finished: Option<[u8; 32]>,
}

/// The `ByteSink` the site streams a download into.
struct DownloadSink {
    state: Rc<RefCell<Receiving>>,
}

impl byte_sink::Server for DownloadSink {
    async fn write(self: Rc<Self>, params: byte_sink::WriteParams) -> Result<(), capnp::Error> {
        let chunk = params.get()?.get_chunk()?;
        let mut state = self.state.borrow_mut();
        state.size += chunk.len() as u64;
        if state.size > state.limit {
            return Err(capnp::Error::failed(format!(
                "download refused: more than the listed {} bytes arrived",
                state.limit
            )));
        }
        state.hasher.update(chunk);
        let written = match state.target.as_mut() {
            Some(Target::File { file, .. }) => file.write_all(chunk),
            Some(Target::Stdout(stdout)) => stdout.lock().write_all(chunk),
            None => Ok(()),
        };
        written.map_err(|e| capnp::Error::failed(format!("cannot write the download: {e}")))
    }

    async fn finish(
        self: Rc<Self>,
        params: byte_sink::FinishParams,
        mut results: byte_sink::FinishResults,
    ) -> Result<(), capnp::Error> {
        let expected = params.get()?.get_sha256()?;
        let mut state = self.state.borrow_mut();
        let digest: [u8; 32] = std::mem::take(&mut state.hasher).finalize().into();
        if digest.as_slice() != expected {
            return Err(capnp::Error::failed(
                "download refused: SHA-256 mismatch (corrupted in transit)".into(),
            ));
        }
        state.finished = Some(digest);
        results.get().set_size(state.size);
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downloads_are_named_after_the_artifact_unless_told() {
        assert_eq!(
            default_output("out/a.bin").ok(),
            Some(PathBuf::from("a.bin"))
        );
        assert_eq!(
            default_output("report.txt").ok(),
            Some(PathBuf::from("report.txt"))
        );
        assert!(default_output("dir/").is_err());
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
    }
}
