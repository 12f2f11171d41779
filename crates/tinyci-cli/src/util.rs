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

/// Input the user gave that cannot be used (exit code 3).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct InputError(pub(crate) String);

/// The config a command uses: the one given, else ./site.toml.
pub(crate) fn config_path(given: Option<PathBuf>) -> PathBuf {
    given.unwrap_or_else(|| PathBuf::from("site.toml"))
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

/// `90s`, `30m`, `12h`, `7d`, `2w`.
pub(crate) fn parse_ttl(text: &str) -> Result<Duration, String> {
    let invalid = || {
        format!(
            "invalid duration {text:?}: expected a number and a unit (s, m, h, d, w), e.g. 7d or 12h"
        )
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(invalid)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(invalid()),
    };
    if number == 0 {
        return Err(format!("invalid duration {text:?}: must be more than zero"));
    }
    number
        .checked_mul(unit_secs)
        .filter(|secs| *secs <= 100 * 365 * 86_400)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("invalid duration {text:?}: more than 100 years"))
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
