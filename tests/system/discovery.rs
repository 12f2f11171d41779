//! mDNS discovery with real sites: between two network namespaces joined by a veth pair when
//! the test may create them (it prints which), otherwise on this host's own network; and an
//! impostor announcing a pinned partner's name with another CA.

use std::path::Path;
use std::process::Command;

use crate::support::{SiteProcess, grant_queue_take, run_in, wait_until};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Initializes site `name` in `dir` with mDNS announcing on.
fn init_announcing(dir: &Path, name: &str) {
    let init = run_in(dir, &["site", "init", "--name", name]);
    assert!(init.status.success(), "{}", text(&init.stderr));
    let config = dir.join("site.toml");
    let mut toml = std::fs::read_to_string(&config).unwrap();
    toml.push_str("\n[discovery]\nmdns = true\n");
    std::fs::write(config, toml).unwrap();
}

fn pin(dir: &Path, other_dir: &Path, other: &str) {
    let ca = other_dir.join("certs/ca.crt");
    let out = run_in(
        dir,
        &["federation", "add", other, "--ca", ca.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// Two network namespaces joined by a veth pair, removed on drop.
struct Namespaces {
    names: [String; 2],
    addrs: [&'static str; 2],
}

impl Namespaces {
    /// Creates them, or says why it cannot.
    fn create() -> Result<Self, String> {
        let id = std::process::id() % 100_000;
        let names = [format!("tci{id}a"), format!("tci{id}b")];
        let ns = Self {
            names: names.clone(),
            addrs: ["10.231.7.1", "10.231.7.2"],
        };
        let veth = [format!("tv{id}a"), format!("tv{id}b")];
        let ip = |args: &[&str]| -> Result<(), String> {
            let out = Command::new("ip")
                .args(args)
                .output()
                .map_err(|e| format!("ip: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "ip {}: {}",
                    args.join(" "),
                    text(&out.stderr).trim()
                ))
            }
        };
        for name in &names {
            ip(&["netns", "add", name])?;
        }
        ip(&[
            "link", "add", &veth[0], "type", "veth", "peer", "name", &veth[1],
        ])?;
        for i in 0..2 {
            let (name, dev, addr) = (&names[i], &veth[i], ns.addrs[i]);
            ip(&["link", "set", dev, "netns", name])?;
            ip(&["-n", name, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", name, "link", "set", dev, "up"])?;
            ip(&["-n", name, "link", "set", "lo", "up"])?;
        }
        Ok(ns)
    }

    /// `tinyci args…` inside namespace `i`, in `dir`.
    fn tinyci(&self, i: usize, dir: &Path, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command
            .args([
                "netns",
                "exec",
                &self.names[i],
                env!("CARGO_BIN_EXE_tinyci"),
            ])
            .args(args)
            .current_dir(dir);
        crate::support::without_callers_environment(&mut command);
        command
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.names {
            // Deleting a namespace also deletes the veth end inside it, and so the pair.
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

#[test]
fn a_runner_finds_its_partner_over_mdns_and_connects_through_the_pin() {
    let east = tempfile::tempdir().unwrap();
    let west = tempfile::tempdir().unwrap();
    init_announcing(east.path(), "east");
    init_announcing(west.path(), "west");
    pin(east.path(), west.path(), "west");
    pin(west.path(), east.path(), "east");
    let token = west.path().join("east.token");
    grant_queue_take(east.path(), "west", "gpu", &token);

    let namespaces = Namespaces::create();
    let up = ["site", "up", "--config", "site.toml", "--no-local-runner"];
    let (mut site, peers, runner) = match &namespaces {
        Ok(ns) => {
            println!(
                "mDNS test: between network namespaces {} and {} joined by a veth pair",
                ns.names[0], ns.names[1]
            );
            let listen = format!("{}:0", ns.addrs[0]);
            let mut args = up.to_vec();
            args.extend_from_slice(&["--listen", &listen]);
            let site = SiteProcess::from_command(ns.tinyci(0, east.path(), &args));
            (
                site,
                ns.tinyci(
                    1,
                    west.path(),
                    &["peers", "--expect", "east", "--timeout", "60s"],
                ),
                ns.tinyci(
                    1,
                    west.path(),
                    &[
                        "runner",
                        "--site",
                        "auto",
                        "--token",
                        token.to_str().unwrap(),
                        "--executor",
                        "shell",
                    ],
                ),
            )
        }
        Err(why) => {
            println!("mDNS test: on this host's network (cannot create network namespaces: {why})");
            let mut args = up.to_vec();
            args.extend_from_slice(&["--listen", "0.0.0.0:0"]);
            let site = SiteProcess::spawn(east.path(), &args);
            let mut peers = crate::support::tinyci();
            peers
                .current_dir(west.path())
                .args(["peers", "--expect", "east", "--timeout", "60s"]);
            let mut runner = crate::support::tinyci();
            runner.current_dir(west.path()).args([
                "runner",
                "--site",
                "auto",
                "--token",
                token.to_str().unwrap(),
                "--executor",
                "shell",
            ]);
            (site, peers, runner)
        }
    };
    site.wait_for("listening on ");

    // West sees east, announced with the CA west pinned: a partner.
    let mut peers = peers;
    let listed = peers.output().unwrap();
    // (`peers` returns as soon as east is seen, or after 60s without it.)
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let listed = text(&listed.stdout);
    let line = listed
        .lines()
        .find(|l| l.starts_with("east "))
        .unwrap_or_else(|| panic!("east not found: {listed}"));
    assert!(line.contains(" partner "), "{line}");
    if let Ok(ns) = &namespaces {
        assert!(line.contains(ns.addrs[0]), "{line}");
    }

    // West's runner finds east by itself and joins it.
    let mut runner = SiteProcess::from_command(runner);
    let found = runner.wait_for("found site east at ");
    assert!(!found.is_empty());
    let east_addr = site
        .stdout
        .iter()
        .find_map(|l| l.strip_prefix("listening on "))
        .unwrap()
        .to_owned();
    wait_until("west's runner should join east", || {
        let mut runners = match &namespaces {
            Ok(ns) => ns.tinyci(0, east.path(), &["admin", "runners", "--addr", &east_addr]),
            Err(_) => {
                let port = east_addr.rsplit(':').next().unwrap_or_default();
                let mut command = crate::support::tinyci();
                command.current_dir(east.path()).args([
                    "admin",
                    "runners",
                    "--addr",
                    &format!("127.0.0.1:{port}"),
                ]);
                command
            }
        };
        text(&runners.output().unwrap().stdout).contains("west-runner")
    });
}

#[test]
fn an_impostor_announcing_a_partners_name_is_untrusted_and_refused() {
    // The real alpha only exists as the CA beta pinned; the impostor is another "alpha".
    let real = tempfile::tempdir().unwrap();
    let impostor = tempfile::tempdir().unwrap();
    let beta = tempfile::tempdir().unwrap();
    init_announcing(real.path(), "alpha");
    init_announcing(impostor.path(), "alpha");
    init_announcing(beta.path(), "beta");
    pin(beta.path(), real.path(), "alpha");
    let token = beta.path().join("alpha.token");
    grant_queue_take(real.path(), "beta", "gpu", &token);
    let mut fake = SiteProcess::start(
        impostor.path(),
        &[
            "--config",
            "site.toml",
            "--listen",
            "0.0.0.0:0",
            "--no-local-runner",
        ],
    );
    fake.wait_for("listening on ");

    let listed = run_in(
        beta.path(),
        &["peers", "--expect", "alpha", "--timeout", "60s"],
    );
    let listed = text(&listed.stdout);
    let line = listed
        .lines()
        .find(|l| l.starts_with("alpha "))
        .unwrap_or_else(|| panic!("alpha not found: {listed}"));
    assert!(line.contains(" untrusted "), "{line}");
    assert!(line.contains("announces CA sha256"), "{line}");

    // Beta's runner will not dial it: it stops, saying why.
    let runner = run_in(
        beta.path(),
        &[
            "runner",
            "--site",
            "auto",
            "--token",
            token.to_str().unwrap(),
            "--executor",
            "shell",
            "--discovery-timeout",
            "10s",
        ],
    );
    assert!(!runner.status.success());
    let why = text(&runner.stderr);
    assert!(
        why.contains("refusing to connect: only untrusted announcements of site alpha"),
        "{why}"
    );
    drop(fake);
}
