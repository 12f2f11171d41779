//! Pure rendering for the pages: HTML escaping, status badges, times, sizes, URL paths,
//! Server-Sent Event framing, and the one stylesheet and script. No I/O, no state.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use bytes::Bytes;
use tinyci_core::RunStatus;

/// The pages' stylesheet.
pub const SITE_CSS: &str = include_str!("assets/site.css");
/// The run page's one script (follows the live log).
pub const RUN_JS: &str = include_str!("assets/run.js");

/// Escapes text for HTML content and attribute values.
pub fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A status as the pages show it: a symbol and a word (readable without colour), with a class
/// for colour.
pub fn badge(status: RunStatus) -> String {
    let (symbol, class) = match status {
        RunStatus::Queued => ("○", "queued"),
        RunStatus::Leased | RunStatus::Running => ("●", "running"),
        RunStatus::Passed => ("✓", "passed"),
        RunStatus::Failed | RunStatus::TimedOut | RunStatus::Errored => ("✗", "failed"),
        RunStatus::Canceled => ("⊘", "canceled"),
    };
    format!(
        "<span class=\"badge {class}\"><span aria-hidden=\"true\">{symbol}</span> {}</span>",
        status.as_str()
    )
}

/// How many runs are in each status, in words (`2 passed, 1 failed`).
pub fn counts(statuses: &[RunStatus]) -> String {
    let mut by: BTreeMap<&str, usize> = BTreeMap::new();
    for s in statuses {
        *by.entry(s.as_str()).or_default() += 1;
    }
    by.iter()
        .map(|(s, n)| format!("{n} {s}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A commit id as the pages show it.
pub fn short_sha(sha: &str) -> &str {
    sha.get(..10).unwrap_or(sha)
}

/// A branch ref without `refs/heads/`.
pub fn short_ref(git_ref: &str) -> &str {
    git_ref.strip_prefix("refs/heads/").unwrap_or(git_ref)
}

/// Epoch milliseconds as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn format_time(ms: u64) -> String {
    let (date, time) = civil(ms);
    format!("{date} {time} UTC")
}

/// Epoch milliseconds as a `<time>` element: read as [`format_time`] says it, machine-read
/// (and by assistive technology) from its `datetime`, `YYYY-MM-DDTHH:MM:SSZ`.
pub fn time_element(ms: u64) -> String {
    let (date, time) = civil(ms);
    format!("<time datetime=\"{date}T{time}Z\">{date} {time} UTC</time>")
}

/// Epoch milliseconds as a UTC civil date `YYYY-MM-DD` and time `HH:MM:SS`.
fn civil(ms: u64) -> (String, String) {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        format!("{year:04}-{month:02}-{day:02}"),
        format!("{:02}:{:02}:{:02}", rem / 3600, (rem % 3600) / 60, rem % 60),
    )
}

/// A byte count in B, KiB or MiB.
pub fn human_size(bytes: u64) -> String {
    match bytes {
        b if b < 1024 => format!("{b} B"),
        b if b < 1024 * 1024 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
    }
}

/// Percent-encodes an artifact path for a URL, keeping its `/` separators.
pub fn percent_encode_path(path: &str) -> String {
    path.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Decodes `%XX` escapes of a URL path (a `+` stays a plus there).
pub fn percent_decode(text: &str) -> String {
    let hex = |b: u8| {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(hi * 16 + lo);
            i += 3;
            continue;
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `Content-Security-Policy` every answer carries: nothing from anywhere but this site,
/// no inline script, no framing; forms post to this site and to `form_targets` (origins), and
/// only there, redirects after a post included (Chromium applies `form-action` to those).
pub fn content_security_policy(form_targets: &[&str]) -> String {
    let mut form_action = String::from("'self'");
    for target in form_targets {
        form_action.push(' ');
        form_action.push_str(target);
    }
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src 'self'; form-action {form_action}; base-uri 'none'; frame-ancestors 'none'"
    )
}

/// The origin of `url` as a header or a policy writes it (`https://github.com`), if it has
/// one (an opaque origin has none).
pub fn origin_of(url: &str) -> Option<String> {
    let origin = url::Url::parse(url).ok()?.origin();
    origin.is_tuple().then(|| origin.ascii_serialization())
}

/// Whether an `Origin` header names the origin of `public_url`, compared as origins (scheme,
/// host, port) after URL parsing: `https://CI.example.com` is `https://ci.example.com:443/`.
/// An opaque origin (`null`, a `file:` page) or anything unparsable is never this site.
pub fn same_origin(origin: &str, public_url: &str) -> bool {
    match (url::Url::parse(origin), url::Url::parse(public_url)) {
        (Ok(origin), Ok(site)) => {
            let (origin, site) = (origin.origin(), site.origin());
            origin.is_tuple() && origin == site
        }
        _ => false,
    }
}

/// A `next` path a login may send the browser on to: a path on this site only.
pub fn safe_next(next: &str) -> Option<String> {
    let ok = next.starts_with('/')
        && !next.starts_with("//")
        && !next.contains('\\')
        && next.len() <= 512
        && next.chars().all(|c| c.is_ascii_graphic());
    ok.then(|| next.to_owned())
}

/// One event: `data` split into lines as the format wants (the browser joins them with \n).
/// The format ends a line at CR, LF or CRLF: every one of them in `data` starts a new `data:`
/// field, so no text (a runner's name, a message) can end the event or start another field.
pub fn sse_event(id: Option<u64>, event: &str, data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + 64);
    if let Some(id) = id {
        let _ = writeln!(out, "id: {id}");
    }
    let _ = writeln!(out, "event: {event}");
    for line in data.split("\r\n").flat_map(|l| l.split(['\r', '\n'])) {
        let _ = writeln!(out, "data: {line}");
    }
    out.push('\n');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_is_escaped_in_text_and_attributes() {
        assert_eq!(
            html_escape("<a href='x' title=\"y\">&</a>"),
            "&lt;a href=&#39;x&#39; title=&quot;y&quot;&gt;&amp;&lt;/a&gt;"
        );
    }

    #[test]
    fn times_are_utc_civil_dates() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_time(1_795_833_296_000), "2026-11-28 02:34:56 UTC");
        assert_eq!(format_time(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(
            time_element(1_795_833_296_000),
            "<time datetime=\"2026-11-28T02:34:56Z\">2026-11-28 02:34:56 UTC</time>"
        );
    }

    #[test]
    fn events_split_data_into_lines() {
        assert_eq!(
            sse_event(Some(12), "chunk", "a\nb"),
            Bytes::from_static(b"id: 12\nevent: chunk\ndata: a\ndata: b\n\n")
        );
        // A carriage return is a line end too: it cannot smuggle in a field or an event.
        assert_eq!(
            sse_event(None, "status", "running on r1\r\revent: done\r\ndata: x"),
            Bytes::from_static(
                b"event: status\ndata: running on r1\ndata: \ndata: event: done\ndata: data: x\n\n"
            )
        );
    }

    #[test]
    fn origins_are_compared_after_normalization() {
        for (origin, public_url) in [
            ("https://ci.example.com", "https://ci.example.com"),
            ("https://ci.example.com", "https://ci.example.com/tinyci"),
            ("https://ci.example.com", "https://ci.example.com:443"),
            ("https://ci.example.com", "https://CI.Example.COM/"),
            ("https://CI.example.com", "https://ci.example.com"),
            ("HTTPS://ci.example.com:443", "https://ci.example.com"),
            ("http://127.0.0.1:12345", "http://127.0.0.1:12345/"),
            ("http://[::1]:8080", "http://[0:0:0:0:0:0:0:1]:8080"),
        ] {
            assert!(same_origin(origin, public_url), "{origin} vs {public_url}");
        }
        for (origin, public_url) in [
            ("http://127.0.0.1:1", "http://127.0.0.1:12345"),
            ("http://ci.example.com", "https://ci.example.com"),
            ("https://ci.example.com:8443", "https://ci.example.com"),
            (
                "https://ci.example.com.evil.example",
                "https://ci.example.com",
            ),
            ("https://evil.example", "https://ci.example.com"),
            ("null", "https://ci.example.com"),
            ("", "https://ci.example.com"),
            ("file:///etc/passwd", "file:///etc/passwd"),
        ] {
            assert!(!same_origin(origin, public_url), "{origin} vs {public_url}");
        }
    }

    #[test]
    fn only_local_paths_are_followed_after_login() {
        assert_eq!(safe_next("/runs/r-1").as_deref(), Some("/runs/r-1"));
        for bad in [
            "//evil.example/x",
            "https://evil.example",
            "/\\evil",
            "runs",
            "/a b",
        ] {
            assert_eq!(safe_next(bad), None, "{bad}");
        }
    }

    #[test]
    fn artifact_paths_round_trip_through_urls() {
        let name = "out/report 1+2%.txt";
        let encoded = percent_encode_path(name);
        assert_eq!(encoded, "out/report%201%2B2%25.txt");
        assert_eq!(percent_decode(&encoded), name);
    }
}
