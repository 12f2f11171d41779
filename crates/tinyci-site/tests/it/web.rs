//! The run pages' browser sessions on the site's clock: a GitHub login signs a browser in,
//! and the session ends when the site's clock (not the OS's) passes its lifetime.

use std::net::SocketAddr;
use std::time::Duration;

use tinyci_fakegithub::FakeGitHub;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{ManualClock, TestSite, local};

const CLIENT_ID: &str = "Iv1.webclock";
const CLIENT_SECRET: &str = "web-clock-secret";

/// One HTTP/1.1 request over a fresh connection: status, headers, body.
async fn http(
    addr: SocketAddr,
    path: &str,
    cookie: Option<&str>,
) -> (u16, Vec<(String, String)>, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let cookie = cookie
        .map(|c| format!("cookie: tinyci_session={c}\r\n"))
        .unwrap_or_default();
    let request =
        format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\n{cookie}connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

fn header<'h>(headers: &'h [(String, String)], name: &str) -> &'h str {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} header in {headers:?}"))
}

fn session_of(headers: &[(String, String)]) -> String {
    header(headers, "set-cookie")
        .split(';')
        .next()
        .and_then(|c| c.strip_prefix("tinyci_session="))
        .unwrap()
        .to_owned()
}

#[test]
fn a_browser_session_ends_when_the_site_clock_passes_its_lifetime() {
    local(async {
        let fake = FakeGitHub::start().await;
        fake.add_user("gho_octocat", "octocat", 583_231);
        fake.add_oauth_code("code-1", CLIENT_ID, CLIENT_SECRET, "gho_octocat");
        let clock = ManualClock::new();
        let mut site = TestSite::start_on(&clock).await;
        std::fs::write(site.path("certs/oauth.secret"), CLIENT_SECRET).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            site.path("certs/oauth.secret"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        site.restart_with(&format!(
            "[http]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://127.0.0.1:1\"\n\n\
             [github]\napi_url = \"{}\"\nweb_url = \"{}\"\nclient_id = \"{CLIENT_ID}\"\n\
             client_secret_file = \"certs/oauth.secret\"\nsecrets_key = \"certs/secrets.key\"\n",
            fake.api_url(),
            fake.web_url()
        ))
        .await;
        let addr = site.http_addr();

        // Start a browser login, then come back from GitHub with its code.
        let (status, headers, _) = http(addr, "/oauth/login?next=%2F", None).await;
        assert_eq!(status, 303);
        let started = session_of(&headers);
        let state = header(&headers, "location")
            .split(['?', '&'])
            .find_map(|p| p.strip_prefix("state="))
            .unwrap()
            .to_owned();
        let (status, headers, body) = http(
            addr,
            &format!("/oauth/callback?code=code-1&state={state}"),
            Some(&started),
        )
        .await;
        assert_eq!(status, 303, "{body}");
        let signed_in = session_of(&headers);
        assert_ne!(signed_in, started, "sign-in issues a fresh cookie");

        let (_, _, page) = http(addr, "/", Some(&signed_in)).await;
        assert!(page.contains("signed in as octocat"), "{page}");

        // Just short of the lifetime by the site's clock: still signed in.
        clock.advance(Duration::from_secs(12 * 3600 - 60));
        let (_, _, page) = http(addr, "/", Some(&signed_in)).await;
        assert!(page.contains("signed in as octocat"), "{page}");

        // Past it: signed out, though hardly any real time went by.
        clock.advance(Duration::from_secs(120));
        let (_, _, page) = http(addr, "/", Some(&signed_in)).await;
        assert!(!page.contains("signed in as"), "{page}");
        assert!(page.contains("Sign in with GitHub"), "{page}");
        site.down().await;
    });
}
