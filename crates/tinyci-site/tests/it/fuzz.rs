//! The wire fuzzer: mutations of valid Cap'n Proto RPC messages (bootstrap, `Gateway.info`,
//! `Gateway.redeem`, a pipelined `Session` call, and, behind a valid redemption of a real
//! token, `Session`, `Submitter`, `Worker` and `LogReader` calls) sent over real mTLS
//! connections to a real site, a bounded number of cases from fixed seeds. It fails on a panic on the site's thread,
//! on a connection the site neither answers nor closes within a deadline, and on a site that
//! stops answering a well-behaved client. Inputs under `tests/fuzz-corpus/` (hostile shapes
//! written by hand, and any input that ever found a bug) are replayed first.

use std::cell::Cell;
use std::time::Duration;

use capnp::message::Builder;
use capnp_rpc::rpc_capnp::message;
use tinyci_net::NetLimits;
use tinyci_pki::{Credentials, Role, SiteName};
use tinyci_schema::gateway;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::{TestSite, local};

/// Cases per run: enough to cover each message kind with many mutations, few enough for CI.
const CASES: u64 = 2000;
/// How long the site has to answer or close one hostile connection.
const DEADLINE: Duration = Duration::from_secs(30);

thread_local! {
    /// Panics on this thread (the site runs on the test's thread, in its `LocalSet`).
    static PANICS: Cell<u64> = const { Cell::new(0) };
}

fn count_panics_on_this_thread() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|p| p.set(p.get() + 1));
            previous(info);
        }));
    });
}

fn frame(build: impl FnOnce(message::Builder<'_>)) -> Vec<u8> {
    let mut builder = Builder::new_default();
    build(builder.init_root::<message::Builder<'_>>());
    capnp::serialize::write_message_to_words(&builder)
}

fn bootstrap(question: u32) -> Vec<u8> {
    frame(|m| m.init_bootstrap().set_question_id(question))
}

/// A call of `method` on the answer to `target`'s question, with `params` filled in. The
/// bootstrap's answer (question 0) is the capability itself; any other answer's capability
/// is the first pointer of its results (`session`, `submitter`, `worker`, `reader`).
fn call(
    question: u32,
    target: u32,
    interface: u64,
    method: u16,
    params: impl FnOnce(capnp::any_pointer::Builder<'_>),
) -> Vec<u8> {
    frame(|m| {
        let mut call = m.init_call();
        call.set_question_id(question);
        let mut promised = call.reborrow().init_target().init_promised_answer();
        promised.set_question_id(target);
        if target != 0 {
            promised.init_transform(1).get(0).set_get_pointer_field(0);
        }
        call.set_interface_id(interface);
        call.set_method_id(method);
        params(call.init_params().init_content());
    })
}

/// The valid messages mutations start from: each a valid prefix, sent as is, and the message
/// that is mutated after it. `token` is a real grant of the fuzzer's, so calls behind the
/// redemption reach the capabilities it hands out.
fn seeds(token: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let gateway = <gateway::Client as capnp::traits::HasTypeId>::TYPE_ID;
    let session = <tinyci_schema::session::Client as capnp::traits::HasTypeId>::TYPE_ID;
    let submitter = <tinyci_schema::submitter::Client as capnp::traits::HasTypeId>::TYPE_ID;
    let worker = <tinyci_schema::worker::Client as capnp::traits::HasTypeId>::TYPE_ID;
    let log_reader = <tinyci_schema::log_reader::Client as capnp::traits::HasTypeId>::TYPE_ID;
    let alone = |message: Vec<u8>| (Vec::new(), message);
    // Bootstrap (question 0), a valid redemption (question 1), then what each seed needs.
    let redeemed = |then: &[Vec<u8>]| {
        let mut prefix = bootstrap(0);
        prefix.extend(call(1, 0, gateway, 1, |p| {
            p.init_as::<gateway::redeem_params::Builder<'_>>()
                .set_token(token);
        }));
        for message in then {
            prefix.extend_from_slice(message);
        }
        prefix
    };
    let submitter_of = call(2, 1, session, 1, |p| {
        p.init_as::<tinyci_schema::session::submitter_params::Builder<'_>>()
            .set_repo("org/x");
    });
    let worker_of = call(2, 1, session, 2, |p| {
        let mut params = p.init_as::<tinyci_schema::session::worker_params::Builder<'_>>();
        params.set_queue("default");
        params.init_runner().set_name("fuzzer");
    });
    let reader_of = call(2, 1, session, 3, |p| {
        p.init_as::<tinyci_schema::session::logs_params::Builder<'_>>()
            .init_scope()
            .set_repo("org/x");
    });
    vec![
        alone(bootstrap(0)),
        alone(call(1, 0, gateway, 0, |p| {
            p.init_as::<gateway::info_params::Builder<'_>>();
        })),
        alone(call(2, 0, gateway, 1, |p| {
            p.init_as::<gateway::redeem_params::Builder<'_>>()
                .set_token("EoUCCpoBCgdzaXRlOmFscGhhGAMiCgoICIAIEgMYgQg");
        })),
        // Pipelined on the redeem's answer: whatever session it would have held.
        alone(call(3, 2, session, 0, |p| {
            p.init_as::<gateway::info_params::Builder<'_>>();
        })),
        alone(frame(|m| m.init_finish().set_question_id(1))),
        // Behind a valid redemption: the session's own methods...
        (redeemed(&[]), submitter_of.clone()),
        (redeemed(&[]), worker_of.clone()),
        (redeemed(&[]), reader_of.clone()),
        // ...and the capabilities they hand out.
        (
            redeemed(std::slice::from_ref(&submitter_of)),
            call(3, 2, submitter, 1, |p| {
                let mut request = p
                    .init_as::<tinyci_schema::submitter::submit_params::Builder<'_>>()
                    .init_request();
                request.set_ref("refs/heads/main");
                request.set_sha("0123456789abcdef0123456789abcdef01234567");
                request.set_all(true);
                request.set_source_sha256(&[7; 32]);
            }),
        ),
        (
            redeemed(std::slice::from_ref(&submitter_of)),
            call(3, 2, submitter, 0, |p| {
                p.init_as::<tinyci_schema::submitter::upload_params::Builder<'_>>();
            }),
        ),
        (
            redeemed(std::slice::from_ref(&worker_of)),
            call(3, 2, worker, 1, |p| {
                let mut params = p.init_as::<tinyci_schema::worker::resume_params::Builder<'_>>();
                params.set_run("r-1");
                params.set_attempt(1);
            }),
        ),
        (
            redeemed(std::slice::from_ref(&reader_of)),
            call(3, 2, log_reader, 0, |p| {
                let mut params = p.init_as::<tinyci_schema::log_reader::read_params::Builder<'_>>();
                params.set_run("r-1");
                params.set_from(0);
                params.set_max(1 << 20);
            }),
        ),
        (
            redeemed(std::slice::from_ref(&reader_of)),
            call(3, 2, log_reader, 4, |p| {
                p.init_as::<tinyci_schema::log_reader::run_params::Builder<'_>>()
                    .set_id("r-1");
            }),
        ),
    ]
}

/// A small deterministic generator (xorshift64), so every run tries the same cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n.max(1) as u64).unwrap()
    }
}

/// One to eight edits of `bytes`: flipped bits, bytes set to extremes, words overwritten
/// with random values (segment counts and sizes, pointers), cuts and repeats.
fn mutate(rng: &mut Rng, mut bytes: Vec<u8>) -> Vec<u8> {
    for _ in 0..=rng.below(8) {
        if bytes.is_empty() {
            break;
        }
        let at = rng.below(bytes.len());
        match rng.below(6) {
            0 => bytes[at] ^= 1 << rng.below(8),
            1 => bytes[at] = [0x00, 0xff, 0x7f, 0x80][rng.below(4)],
            2 => {
                let word = rng.next().to_le_bytes();
                let end = (at + 8).min(bytes.len());
                bytes[at..end].copy_from_slice(&word[..end - at]);
            }
            3 => bytes.truncate(at),
            4 => {
                let piece: Vec<u8> = bytes[at..].iter().take(64).copied().collect();
                bytes.splice(at..at, piece);
            }
            _ => {
                let u32_at = at - at % 4;
                if u32_at + 4 <= bytes.len() {
                    let value = [0u32, 1, 0x3fff_ffff, u32::MAX][rng.below(4)];
                    bytes[u32_at..u32_at + 4].copy_from_slice(&value.to_le_bytes());
                }
            }
        }
    }
    bytes
}

/// Sends `input` on a fresh mTLS connection as the site's admin, then says it is done
/// sending; the site must answer and close (or just close) within [`DEADLINE`].
async fn send(site: &TestSite, credentials: &Credentials, input: &[u8]) -> Result<(), String> {
    let tls = tinyci_pki::tls::client_config(
        credentials,
        site_ca_pem(site).as_str(),
        SiteName::new("alpha").unwrap(),
    )
    .unwrap();
    let mut stream = tinyci_net::dial_bytes(
        &site.addr().to_string(),
        tls,
        &SiteName::new("alpha").unwrap(),
        &NetLimits::default(),
    )
    .await
    .map_err(|e| format!("cannot connect: {e}"))?;
    // The site may close as soon as it reads something malformed: a failed write is an answer.
    let _ = stream.write_all(input).await;
    let _ = stream.shutdown().await;
    let mut answer = Vec::new();
    match tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answer)).await {
        Ok(_) => Ok(()),
        Err(_) => Err(format!(
            "the site neither answered nor closed within {DEADLINE:?}"
        )),
    }
}

fn site_ca_pem(site: &TestSite) -> String {
    std::fs::read_to_string(site.path("certs/ca.crt")).unwrap()
}

/// Whether a well-behaved client still gets `Gateway.info` answered.
async fn site_answers(site: &TestSite) -> bool {
    let (gateway, _connection) = site.connect(Role::Admin, "admin").await;
    gateway.info_request().send().promise.await.is_ok()
}

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-corpus");
    let mut inputs: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "bin"))
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            (path.display().to_string(), bytes)
        })
        .collect();
    inputs.sort();
    inputs
}

#[test]
fn mutated_rpc_messages_neither_crash_hang_nor_stop_the_site() {
    count_panics_on_this_thread();
    local(async {
        let site = TestSite::start().await;
        let leaf = site.ca.issue_member_cert(Role::Admin, "fuzzer").unwrap();
        let credentials = Credentials::from_pem(&leaf.cert_pem, &leaf.key_pem).unwrap();
        let corpus = corpus();
        assert!(!corpus.is_empty(), "the corpus holds at least its seeds");
        for (name, input) in &corpus {
            send(&site, &credentials, input)
                .await
                .unwrap_or_else(|e| panic!("corpus input {name}: {e}"));
        }
        let token = site.mint(
            "admin:fuzzer",
            &["queue:submit", "queue:take", "logs:read", "logs:write"],
            &["org/x"],
            &["default"],
            Some(std::time::SystemTime::now() + Duration::from_secs(3600)),
        );
        let seeds = seeds(&token);
        let mut rng = Rng(0x5eed_f00d_cafe_d00d);
        for case in 0..CASES {
            let (prefix, seed) = seeds[rng.below(seeds.len())].clone();
            // A valid bootstrap first, so mutated calls reach past it about half the time;
            // seeds behind a redemption carry their own valid prefix.
            let mut input = prefix;
            if input.is_empty() && rng.below(2) == 0 {
                input.extend(bootstrap(0));
            }
            input.extend(mutate(&mut rng, seed));
            if let Err(e) = send(&site, &credentials, &input).await {
                panic!("case {case}: {e}; input (hex) {}", hex::encode(&input));
            }
            if case % 250 == 249 {
                assert!(
                    site_answers(&site).await,
                    "the site stopped answering after case {case}"
                );
            }
        }
        assert!(site_answers(&site).await, "the site stopped answering");
        assert_eq!(
            PANICS.with(Cell::get),
            0,
            "the site panicked on hostile input"
        );
    });
}
