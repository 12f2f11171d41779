//! Headless Chromium (Debian's `chromium`) driven over the DevTools protocol, for the web page
//! tests: navigate, evaluate script in the page, wait for what it shows, click, read cookies,
//! take screenshots. One browser process per test, with its own profile directory.
//!
//! When no Chromium is installed the tests print SKIP, unless `TINYCI_REQUIRE_BROWSER=1`
//! (as `.ci/run` sets after installing it), which makes a missing browser a failure.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// A hang guard, not a timing assertion.
const PATIENCE: Duration = Duration::from_secs(120);

/// A phone-sized window: the pages must work there.
pub(crate) const PHONE: (u32, u32) = (390, 844);

pub(crate) struct Browser {
    child: Child,
    socket: WebSocket<MaybeTlsStream<TcpStream>>,
    session: String,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("TINYCI_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| {
            ["chromium", "chromium-browser", "google-chrome"]
                .into_iter()
                .map(move |name| dir.join(name))
        })
        .find(|candidate| candidate.is_file())
}

impl Browser {
    /// Starts Chromium with a `window` sized viewport and one blank page; `None` (after
    /// printing SKIP) if there is no Chromium and none is required.
    pub(crate) fn launch(test: &str, window: (u32, u32)) -> Option<Browser> {
        let Some(chromium) = find_chromium() else {
            assert!(
                std::env::var_os("TINYCI_REQUIRE_BROWSER").is_none(),
                "TINYCI_REQUIRE_BROWSER is set but no Chromium was found: apt-get install chromium"
            );
            eprintln!("SKIP {test}: no Chromium found (apt-get install chromium)");
            return None;
        };
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(chromium)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
                &format!("--window-size={},{}", window.0, window.1),
                &format!("--user-data-dir={}", profile.path().display()),
                "about:blank",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Chromium names its DevTools endpoint on stderr; the rest of stderr is drained so it
        // never blocks on a full pipe.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let url = rx
            .recv_timeout(PATIENCE)
            .expect("Chromium did not say where DevTools listens");
        let (socket, _) = tungstenite::connect(url.as_str()).unwrap();
        if let MaybeTlsStream::Plain(stream) = socket.get_ref() {
            stream.set_read_timeout(Some(PATIENCE)).unwrap();
        }
        let mut browser = Browser {
            child,
            socket,
            session: String::new(),
            next_id: 0,
            _profile: profile,
        };
        let target = browser.browser_call("Target.createTarget", json!({"url": "about:blank"}));
        let target_id = target["targetId"].as_str().unwrap().to_owned();
        let attached = browser.browser_call(
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        );
        browser.session = attached["sessionId"].as_str().unwrap().to_owned();
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": window.0, "height": window.1, "deviceScaleFactor": 1, "mobile": window.0 < 600}),
        );
        Some(browser)
    }

    /// Sends one command; its result, or the protocol's error.
    fn send(&mut self, method: &str, params: Value, session: bool) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if session {
            message["sessionId"] = json!(self.session);
        }
        self.socket
            .send(Message::text(message.to_string()))
            .unwrap();
        loop {
            let reply = self.socket.read().unwrap();
            let Message::Text(text) = reply else {
                continue;
            };
            let value: Value = serde_json::from_str(text.as_str()).unwrap();
            if value["id"] == json!(id) {
                return match value.get("error") {
                    Some(error) => Err(error.clone()),
                    None => Ok(value["result"].clone()),
                };
            }
        }
    }

    fn browser_call(&mut self, method: &str, params: Value) -> Value {
        self.send(method, params, false)
            .unwrap_or_else(|e| panic!("{method} failed: {e}"))
    }

    /// A command to the page.
    pub(crate) fn call(&mut self, method: &str, params: Value) -> Value {
        self.send(method, params, true)
            .unwrap_or_else(|e| panic!("{method} failed: {e}"))
    }

    /// Clicks the element `selector` names. The click runs after this command returns, so a
    /// click that navigates cannot cut the command's own answer off.
    pub(crate) fn click(&mut self, selector: &str) {
        let found = self.eval(&format!(
            "(() => {{ const e = document.querySelector({sel}); if (!e) return false; \
             setTimeout(() => e.click(), 0); return true; }})()",
            sel = json!(selector)
        ));
        assert_eq!(found, json!(true), "nothing to click at {selector}");
    }

    /// Opens `url` in the page and waits until it has loaded.
    pub(crate) fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
        // The old document may still answer for a moment: callers wait for what they expect.
        self.wait_for(
            &format!("{url} to load"),
            "document.readyState === 'complete' && location.href !== 'about:blank'",
        );
    }

    /// Evaluates `expression` in the page; its value (JSON).
    pub(crate) fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(
            result.get("exceptionDetails").is_none(),
            "{expression} threw: {}",
            result["exceptionDetails"]
        );
        result["result"]["value"].clone()
    }

    /// Waits until `expression` is truthy in the page (it may navigate meanwhile); returns
    /// its value. Panics after [`PATIENCE`] with what the page showed.
    pub(crate) fn wait_for(&mut self, what: &str, expression: &str) -> Value {
        let deadline = Instant::now() + PATIENCE;
        let guarded = format!(
            "(() => {{ try {{ return ({expression}); }} catch (e) {{ return false; }} }})()"
        );
        loop {
            // While the page navigates, the protocol answers "target navigated" or "context
            // destroyed": not there yet, so look again.
            let value = self
                .send(
                    "Runtime.evaluate",
                    json!({"expression": guarded, "returnByValue": true, "awaitPromise": true}),
                    true,
                )
                .map(|result| result["result"]["value"].clone())
                .unwrap_or(Value::Null);
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return value;
            }
            if Instant::now() > deadline {
                let body = self.eval("document.body ? document.body.innerText : ''");
                panic!("the page never showed {what}; it shows:\n{body}");
            }
            // The page changes on its own (events arriving); look again shortly.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The page's text.
    pub(crate) fn text(&mut self, selector: &str) -> String {
        let value = self.eval(&format!(
            "(document.querySelector({sel}) || {{}}).innerText || ''",
            sel = json!(selector)
        ));
        value.as_str().unwrap_or_default().to_owned()
    }

    /// Cookies the page's browser holds for `url`, as `name=value` pairs.
    pub(crate) fn cookies(&mut self, url: &str) -> Vec<(String, String)> {
        let result = self.call("Network.getCookies", json!({"urls": [url]}));
        result["cookies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_owned(),
                    c["value"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// Saves a PNG of the whole page to `path`.
    pub(crate) fn screenshot(&mut self, path: &Path) {
        let shot = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
        eprintln!("screenshot saved: {}", path.display());
    }
}

/// Where test artifacts (screenshots) go: `target/tmp/web/`.
pub(crate) fn artifact_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("web")
        .join(name)
}
