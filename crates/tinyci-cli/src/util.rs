//! Plumbing shared by the commands: config lookup, the capnp runtime, token arguments, TTLs.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

/// `println!` for long-running commands: a closed stdout (`tinyci site up | head`) must not
/// crash a site or a runner, so write errors are ignored instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}
pub(crate) use say;

/// A command line that cannot work as given, found after parsing (exit code 2, as clap's).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub(crate) String);

/// Input the user gave that cannot be used (exit code 3).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct InputError(pub(crate) String);

/// Runs that ended other than passed (exit code 4): tinyci did its part, the code did not
/// pass. Kept apart from "could not reach the site" (exit code 1) so scripts can retry one
/// and report the other.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct RunsDidNotPass(pub(crate) String);

/// The site configuration where `--config` is not given.
pub(crate) const CONFIG_ENV: &str = "TINYCI_CONFIG";
/// A `tinyci login` profile directory to act as where neither `--profile` nor `--token` is.
pub(crate) const PROFILE_ENV: &str = "TINYCI_PROFILE";
/// A grant to act with where neither `--token` nor `--profile` is: unlike `--token TEXT`, it
/// does not show in `ps`.
pub(crate) const TOKEN_ENV: &str = "TINYCI_TOKEN";

/// What `tinyci --help` says about the environment.
pub(crate) const ENVIRONMENT: &str = "\
Environment:
  TINYCI_CONFIG   the site configuration where --config is not given [default: ./site.toml]
  TINYCI_TOKEN    a grant to act with where neither --token nor --profile is given (not seen
                  in `ps`, unlike --token TEXT): submit, wait, cancel, logs, artifacts, secret
  TINYCI_PROFILE  a `tinyci login` profile directory to act as where neither --profile,
                  --token nor a site (--config, --addr) is given: submit, wait, cancel, logs,
                  secret, admin user, admin repo. Without it, and with no site configuration
                  here, the one profile `tinyci login` wrote is used (and said so).
  NO_COLOR        when set and not empty, no colour: not in diagnostics, nor from job logs
  RUST_LOG        how much the diagnostics on stderr say, e.g. RUST_LOG=debug";

/// Whether output may carry colour: not when `NO_COLOR` is set and not empty (no-color.org).
pub(crate) fn colour_wanted() -> bool {
    env_value("NO_COLOR").is_none()
}

/// An environment variable's value, unless unset or empty.
pub(crate) fn env_value(name: &str) -> Option<std::ffi::OsString> {
    std::env::var_os(name).filter(|value| !value.is_empty())
}

/// The config a command uses: the one given, else `$TINYCI_CONFIG`, else ./site.toml.
pub(crate) fn config_path(given: Option<PathBuf>) -> PathBuf {
    given
        .or_else(|| env_value(CONFIG_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("site.toml"))
}

/// The grant in `$TINYCI_TOKEN`, if set.
pub(crate) fn env_token() -> Result<Option<String>> {
    env_value(TOKEN_ENV)
        .map(|token| {
            token
                .into_string()
                .map(|token| token.trim().to_owned())
                .map_err(|_| InputError(format!("{TOKEN_ENV} is not UTF-8: not a token")).into())
        })
        .transpose()
}

/// Who acts when the command line names no one: a grant from `$TINYCI_TOKEN`, else a
/// profile as [`resolve_profile`] finds one. Flags always win over the environment, and
/// `named_site` (the command line gave `--config` or `--addr`) over any profile.
pub(crate) fn resolve_actor(
    profile: Option<PathBuf>,
    token: Option<String>,
    named_site: bool,
) -> Result<(Option<PathBuf>, Option<String>)> {
    if profile.is_some() || token.is_some() {
        return Ok((profile, token));
    }
    match env_token()? {
        Some(_) if env_value(PROFILE_ENV).is_some() && !named_site => Err(InputError(format!(
            "{TOKEN_ENV} and {PROFILE_ENV} are both set: unset one, or say who acts with \
             --token or --profile"
        ))
        .into()),
        Some(token) => Ok((None, Some(token))),
        None => Ok((resolve_profile(None, named_site)?, None)),
    }
}

/// The profile to act through: `--profile`, else `$TINYCI_PROFILE`, else (with no site
/// configuration at hand) the one profile `tinyci login` wrote, said on stderr. None when the
/// command line names a site (`named_site`): its configuration's admin acts.
pub(crate) fn resolve_profile(
    profile: Option<PathBuf>,
    named_site: bool,
) -> Result<Option<PathBuf>> {
    if profile.is_some() || named_site {
        return Ok(profile);
    }
    if let Some(dir) = env_value(PROFILE_ENV) {
        return Ok(Some(PathBuf::from(dir)));
    }
    if env_value(CONFIG_ENV).is_some() || Path::new("site.toml").exists() {
        return Ok(None);
    }
    let found = crate::github::sole_login_profile()?;
    if let Some(dir) = &found {
        // Which site this acts at depends on where it runs: say so.
        eprintln!(
            "no site.toml here: acting through the login profile {} (--profile or --config \
             to choose)",
            dir.display()
        );
    }
    Ok(found)
}

/// A current-thread runtime driving a LocalSet: capnp-rpc objects are `!Send`.
pub(crate) struct LocalRuntime {
    runtime: tokio::runtime::Runtime,
}

impl LocalRuntime {
    pub(crate) fn block_on<F: std::future::Future>(self, future: F) -> F::Output {
        tokio::task::LocalSet::new().block_on(&self.runtime, future)
    }
}

pub(crate) fn local_runtime() -> Result<LocalRuntime> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    Ok(LocalRuntime { runtime })
}

/// A token given as `-` (standard input), a file path, or the token text itself.
pub(crate) fn read_token_arg(arg: &str) -> Result<String> {
    if arg == "-" {
        let mut text = String::new();
        std::io::stdin()
            .take(tinyci_grant::MAX_TOKEN_BYTES as u64 + 1)
            .read_to_string(&mut text)
            .context("failed to read a token from standard input")?;
        return Ok(text.trim().to_owned());
    }
    let path = Path::new(arg);
    if path.is_file() {
        let meta = std::fs::metadata(path)?;
        if meta.len() > tinyci_grant::MAX_TOKEN_BYTES as u64 {
            return Err(InputError(format!(
                "{arg} is {} bytes: too large to be a token",
                meta.len()
            ))
            .into());
        }
        let text =
            std::fs::read_to_string(path).with_context(|| format!("failed to read {arg}"))?;
        return Ok(text.trim().to_owned());
    }
    Ok(arg.trim().to_owned())
}

/// A flag's duration, in the grammar site.toml uses too (`90s`, `30m`, `12h`, `7d`, `2w`),
/// more than zero: no flag has a use for zero.
pub(crate) fn parse_ttl(text: &str) -> Result<Duration, String> {
    match tinyci_site::config::parse_duration(text) {
        Ok(duration) if duration.is_zero() => Err(format!(
            "{text:?} is not a duration here: it must be more than zero"
        )),
        Ok(duration) => Ok(duration),
        Err(why) => Err(why.to_string()),
    }
}

/// Writes a token to `out` with mode 0600, or prints it on stdout.
pub(crate) fn emit_token(token: &str, out: Option<&Path>) -> Result<()> {
    match out {
        Some(path) => {
            tinyci_pki::write_secret_file(path, format!("{token}\n").as_bytes())?;
            eprintln!("wrote {} (mode 0600)", path.display());
        }
        None => println!("{token}"),
    }
    Ok(())
}

/// A Unix time in milliseconds as `2026-12-04 19:30:00Z`, for tables people read.
pub(crate) fn utc_millis(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(at) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z",
            at.year(),
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute(),
            at.second()
        ),
        Err(_) => format!("{ms}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_parse_with_units_and_refuse_nonsense() {
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_ttl("2w"), Ok(Duration::from_secs(14 * 86_400)));
        for bad in ["", "7", "d", "7y", "0h", "-1h", "1.5h", "99999999999999w"] {
            assert!(parse_ttl(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
