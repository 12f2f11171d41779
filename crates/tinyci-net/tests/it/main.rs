//! Transport tests: a real mTLS capnp-rpc server on 127.0.0.1:0 with certificates from real
//! CAs, and clients that behave well or badly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tinyci_net::{ClientConnection, Listener, NetLimits, ServerStats, dial, serve};
use tinyci_pki::{Credentials, Role, SiteCa, SiteName, TrustAnchors};
use tinyci_schema::gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio_rustls::rustls;

mod bad_clients;

/// Runs `f` on a current-thread runtime inside a LocalSet, as every capnp user must.
fn local<F: Future>(f: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&runtime, f)
}

fn site(name: &str) -> SiteName {
    SiteName::new(name).unwrap()
}

thread_local! {
    /// `Gateway.info` calls answered on this thread's servers.
    static INFO_SERVED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// When set, `Gateway.info` calls wait until it turns true before answering.
    static INFO_HELD: std::cell::RefCell<Option<tokio::sync::watch::Receiver<bool>>> =
        const { std::cell::RefCell::new(None) };
}

/// A Gateway that only answers `info`, echoing who it thinks the peer is.
struct EchoGateway {
    peer: String,
}

impl gateway::Server for EchoGateway {
    async fn info(
        self: Rc<Self>,
        _: gateway::InfoParams,
        mut results: gateway::InfoResults,
    ) -> Result<(), capnp::Error> {
        INFO_SERVED.with(|n| n.set(n.get() + 1));
        let held = INFO_HELD.with_borrow(Clone::clone);
        if let Some(mut held) = held {
            let _ = held.wait_for(|released| *released).await;
        }
        let mut info = results.get().init_info();
        info.set_site_id("alpha");
        info.set_peer(&self.peer);
        Ok(())
    }
}

struct TestServer {
    addr: SocketAddr,
    ca: SiteCa,
    stats: Arc<ServerStats>,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

impl TestServer {
    /// Starts site `alpha`, trusting its own CA and, if given, partner `beta`'s.
    async fn start(partner: Option<&SiteCa>, limits: NetLimits) -> Self {
        // Clients still connected at `stop` are cut after the grace period; keep it short.
        let limits = NetLimits {
            shutdown_grace: Duration::from_millis(200),
            ..limits
        };
        let ca = SiteCa::generate(site("alpha")).unwrap();
        let leaf = ca.issue_site_cert(&["localhost".into()]).unwrap();
        let creds = Credentials::from_pem(&leaf.cert_pem, &leaf.key_pem).unwrap();
        let mut trust = TrustAnchors::new(site("alpha"), ca.cert_pem()).unwrap();
        if let Some(partner) = partner {
            trust.add_partner(site("beta"), partner.cert_pem()).unwrap();
        }
        let tls = tinyci_pki::tls::server_config(&creds, &trust).unwrap();
        let listener = Listener::bind("127.0.0.1:0".parse().unwrap(), tls, limits)
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = listener.stats();
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::task::spawn_local(serve(
            listener,
            |peer| {
                capnp_rpc::new_client::<gateway::Client, _>(EchoGateway {
                    peer: peer.identity.to_string(),
                })
                .client
            },
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            addr,
            ca,
            stats,
            stop: Some(stop),
            done,
        }
    }

    fn client_tls(&self, issuer: &SiteCa, role: Role, name: &str) -> Arc<rustls::ClientConfig> {
        let leaf = issuer.issue_member_cert(role, name).unwrap();
        let creds = Credentials::from_pem(&leaf.cert_pem, &leaf.key_pem).unwrap();
        tinyci_pki::tls::client_config(&creds, self.ca.cert_pem(), site("alpha")).unwrap()
    }

    async fn connect(
        &self,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<(gateway::Client, ClientConnection), tinyci_net::NetError> {
        dial(
            &self.addr.to_string(),
            tls,
            &site("alpha"),
            &NetLimits::default(),
        )
        .await
    }

    /// Connects as an admin of alpha and returns the peer identity the server saw.
    async fn good_call(&self) -> String {
        let tls = self.client_tls(&self.ca, Role::Admin, "ana");
        let (gw, _conn) = self.connect(tls).await.unwrap();
        info_peer(&gw).await.unwrap()
    }

    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.done.await.unwrap();
    }
}

async fn info_peer(gw: &gateway::Client) -> Result<String, capnp::Error> {
    let response = gw.info_request().send().promise.await?;
    Ok(response.get()?.get_info()?.get_peer()?.to_string()?)
}

#[test]
fn good_client_is_served_with_its_certificate_identity() {
    local(async {
        let server = TestServer::start(None, NetLimits::default()).await;
        assert_eq!(server.good_call().await, "tinyci://alpha/admin/ana");
        let runner_tls = server.client_tls(&server.ca, Role::Runner, "r1");
        let (gw, _conn) = server.connect(runner_tls).await.unwrap();
        assert_eq!(info_peer(&gw).await.unwrap(), "tinyci://alpha/runner/r1");
        server.stop().await;
    });
}

#[test]
fn client_from_another_ca_is_refused_and_server_keeps_serving() {
    local(async {
        let server = TestServer::start(None, NetLimits::default()).await;
        let mallory = SiteCa::generate(site("alpha")).unwrap();
        let tls = server.client_tls(&mallory, Role::Admin, "ana");
        // TLS 1.3: the refusal arrives with the first call, or already at dial.
        let refused = match server.connect(tls).await {
            Err(_) => true,
            Ok((gw, _conn)) => info_peer(&gw).await.is_err(),
        };
        assert!(refused, "a certificate from a foreign CA was accepted");
        assert!(server.stats.refused.load(Ordering::Relaxed) >= 1);
        assert_eq!(server.good_call().await, "tinyci://alpha/admin/ana");
        server.stop().await;
    });
}

#[test]
fn partner_ca_vouches_only_for_its_own_site() {
    local(async {
        let beta = SiteCa::generate(site("beta")).unwrap();
        let server = TestServer::start(Some(&beta), NetLimits::default()).await;
        // beta's site certificate, used as a client: accepted, seen as beta.
        let beta_site = beta.issue_site_cert(&[]).unwrap();
        let creds = Credentials::from_pem(&beta_site.cert_pem, &beta_site.key_pem).unwrap();
        let tls =
            tinyci_pki::tls::client_config(&creds, server.ca.cert_pem(), site("alpha")).unwrap();
        let (gw, _conn) = server.connect(tls).await.unwrap();
        assert_eq!(info_peer(&gw).await.unwrap(), "tinyci://beta/site");

        // A certificate signed by beta's CA that claims to be alpha's admin: refused.
        let forged = bad_clients::forge_member_cert(&beta, "tinyci://alpha/admin/evil");
        let tls =
            tinyci_pki::tls::client_config(&forged, server.ca.cert_pem(), site("alpha")).unwrap();
        let refused = match server.connect(tls).await {
            Err(_) => true,
            Ok((gw, _conn)) => info_peer(&gw).await.is_err(),
        };
        assert!(
            refused,
            "a partner CA was allowed to vouch for this site's admin"
        );
        assert_eq!(server.good_call().await, "tinyci://alpha/admin/ana");
        server.stop().await;
    });
}

#[test]
fn client_without_certificate_is_refused() {
    local(async {
        let server = TestServer::start(None, NetLimits::default()).await;
        let refused = match server.connect(bad_clients::no_client_cert_config()).await {
            Err(_) => true,
            Ok((gw, _conn)) => info_peer(&gw).await.is_err(),
        };
        assert!(refused, "a client without a certificate was served");
        assert_eq!(server.good_call().await, "tinyci://alpha/admin/ana");
        server.stop().await;
    });
}

#[test]
fn plaintext_tcp_client_is_refused() {
    local(async {
        let server = TestServer::start(None, NetLimits::default()).await;
        let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        // A plausible capnp frame (one segment of one word) sent in the clear.
        tcp.write_all(&[0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
            .await
            .unwrap();
        let mut buf = vec![0u8; 1024];
        // The server answers with a TLS alert at most, then closes: read until EOF.
        let mut total = 0;
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        assert!(
            total < 64,
            "the server spoke more than an alert in plaintext"
        );
        assert_eq!(server.good_call().await, "tinyci://alpha/admin/ana");
        server.stop().await;
    });
}

#[test]
fn random_bytes_after_handshake_close_that_connection_only() {
    local(async {
        let server = TestServer::start(None, NetLimits::default()).await;
        // A well-behaved client that stays connected throughout.
        let tls = server.client_tls(&server.ca, Role::Runner, "steady");
        let (steady, _steady_conn) = server.connect(tls).await.unwrap();
        assert_eq!(
            info_peer(&steady).await.unwrap(),
            "tinyci://alpha/runner/steady"
        );

        for seed in 0..3u64 {
            let tls = server.client_tls(&server.ca, Role::Runner, "noisy");
            let mut stream = bad_clients::tls_stream(server.addr, tls).await;
            stream
                .write_all(&bad_clients::random_bytes(seed, 8192))
                .await
                .unwrap();
            stream.flush().await.unwrap();
            // The server must hang up on us.
            let mut buf = vec![0u8; 4096];
            let closed = tokio::time::timeout(Duration::from_secs(30), async {
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            })
            .await;
            assert!(closed.is_ok(), "server kept a connection that sent garbage");
        }
        assert_eq!(
            info_peer(&steady).await.unwrap(),
            "tinyci://alpha/runner/steady"
        );
        assert_eq!(server.good_call().await, "tinyci://alpha/admin/ana");
        server.stop().await;
    });
}

#[test]
fn client_refuses_a_server_of_another_site() {
    local(async {
        let server = TestServer::start(None, NetLimits::default()).await;
        // Pin a different CA for "alpha": the real server cannot prove it is that alpha.
        let other = SiteCa::generate(site("alpha")).unwrap();
        let leaf = server.ca.issue_member_cert(Role::Admin, "ana").unwrap();
        let creds = Credentials::from_pem(&leaf.cert_pem, &leaf.key_pem).unwrap();
        let tls = tinyci_pki::tls::client_config(&creds, other.cert_pem(), site("alpha")).unwrap();
        let err = server.connect(tls).await.err().expect("dial must fail");
        assert!(err.to_string().contains("TLS handshake"), "{err}");

        // The right CA but expecting site "beta": refused by identity.
        let tls =
            tinyci_pki::tls::client_config(&creds, server.ca.cert_pem(), site("beta")).unwrap();
        assert!(
            dial::<gateway::Client>(
                &server.addr.to_string(),
                tls,
                &site("beta"),
                &NetLimits::default()
            )
            .await
            .is_err()
        );
        server.stop().await;
    });
}

#[test]
fn connections_over_the_limit_are_closed() {
    local(async {
        let limits = NetLimits {
            max_connections: 1,
            ..NetLimits::default()
        };
        let server = TestServer::start(None, limits).await;
        let tls = server.client_tls(&server.ca, Role::Admin, "first");
        let (first, _first_conn) = server.connect(tls).await.unwrap();
        info_peer(&first).await.unwrap();
        let tls = server.client_tls(&server.ca, Role::Admin, "second");
        let second = match server.connect(tls).await {
            Err(_) => false,
            Ok((gw, _conn)) => info_peer(&gw).await.is_ok(),
        };
        assert!(!second, "a connection over the limit was served");
        // The first is unaffected.
        info_peer(&first).await.unwrap();
        server.stop().await;
    });
}

#[test]
fn shutdown_stops_accepting() {
    local(async {
        let server = TestServer::start(None, NetLimits::default()).await;
        let addr = server.addr;
        server.stop().await;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    });
}

/// Connects from `source` (any 127.0.0.0/8 address is this host's loopback) and sends
/// nothing: a socket that never starts TLS.
async fn idle_socket_from(source: &str, to: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// Whether the server closed `stream` without a byte (a refused connection).
async fn closed_unanswered(stream: &mut tokio::net::TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.read(&mut byte).await, Ok(0) | Err(_))
}

#[test]
fn one_address_holding_idle_sockets_does_not_lock_others_out() {
    local(async {
        let limits = NetLimits {
            max_connections_per_address: 3,
            ..NetLimits::default()
        };
        let server = TestServer::start(None, limits).await;
        // An attacker's address fills its share with sockets that never start TLS...
        let mut idle = Vec::new();
        for _ in 0..3 {
            idle.push(idle_socket_from("127.0.0.2", server.addr).await);
        }
        // ...and its next socket is closed at once, counted as over a limit.
        let mut over = idle_socket_from("127.0.0.2", server.addr).await;
        assert!(closed_unanswered(&mut over).await);
        assert_eq!(server.stats.over_limit.load(Ordering::Relaxed), 1);
        // A client from another address is served meanwhile.
        assert_eq!(server.good_call().await, "tinyci://alpha/admin/ana");
        drop(idle);
        server.stop().await;
    });
}

#[test]
fn handshakes_in_progress_are_bounded() {
    local(async {
        let limits = NetLimits {
            max_handshakes: 2,
            ..NetLimits::default()
        };
        let server = TestServer::start(None, limits).await;
        let _stalled = [
            idle_socket_from("127.0.0.3", server.addr).await,
            idle_socket_from("127.0.0.4", server.addr).await,
        ];
        let mut third = idle_socket_from("127.0.0.5", server.addr).await;
        assert!(closed_unanswered(&mut third).await);
        assert_eq!(server.stats.over_limit.load(Ordering::Relaxed), 1);
        server.stop().await;
    });
}

#[test]
fn one_identity_cannot_hold_every_connection() {
    local(async {
        let limits = NetLimits {
            max_connections_per_identity: 2,
            ..NetLimits::default()
        };
        let server = TestServer::start(None, limits).await;
        let tls = server.client_tls(&server.ca, Role::Runner, "greedy");
        let (a, _a) = server.connect(tls.clone()).await.unwrap();
        let (b, _b) = server.connect(tls.clone()).await.unwrap();
        info_peer(&a).await.unwrap();
        info_peer(&b).await.unwrap();
        let third = match server.connect(tls).await {
            Err(_) => false,
            Ok((gw, _conn)) => info_peer(&gw).await.is_ok(),
        };
        assert!(!third, "a third connection of one identity was served");
        assert_eq!(server.stats.over_limit.load(Ordering::Relaxed), 1);
        // Another identity is served, and the first two still are.
        assert_eq!(server.good_call().await, "tinyci://alpha/admin/ana");
        info_peer(&a).await.unwrap();
        server.stop().await;
    });
}

/// One RPC frame: a `Bootstrap` (question 0) when `call` is 0, else a `Gateway.info` call
/// (question `call`) on the bootstrap's answer.
fn rpc_frame(call: u32) -> Vec<u8> {
    use capnp_rpc::rpc_capnp::message;
    let mut builder = capnp::message::Builder::new_default();
    let root = builder.init_root::<message::Builder<'_>>();
    if call == 0 {
        root.init_bootstrap().set_question_id(0);
    } else {
        let mut c = root.init_call();
        c.set_question_id(call);
        c.reborrow()
            .init_target()
            .init_promised_answer()
            .set_question_id(0);
        c.set_interface_id(<gateway::Client as capnp::traits::HasTypeId>::TYPE_ID);
        c.set_method_id(0);
        c.init_params()
            .init_content()
            .init_as::<gateway::info_params::Builder<'_>>();
    }
    capnp::serialize::write_message_to_words(&builder)
}

#[test]
fn a_peer_that_pipelines_calls_without_reading_replies_is_paused_not_buffered() {
    local(async {
        let server = TestServer::start(None, NetLimits::default()).await;
        let tls = server.client_tls(&server.ca, Role::Admin, "flood");
        let stream = tinyci_net::dial_bytes(
            &server.addr.to_string(),
            tls,
            &site("alpha"),
            &NetLimits::default(),
        )
        .await
        .unwrap();
        // Only the write half is used: the replies are never read.
        let (_unread, mut write) = tokio::io::split(stream);
        const CALLS: u32 = 2_000_000;
        let flood = tokio::task::spawn_local(async move {
            write.write_all(&rpc_frame(0)).await.unwrap();
            let mut batch = Vec::new();
            for call in 1..=CALLS {
                batch.extend(rpc_frame(call));
                if batch.len() >= 64 * 1024 {
                    if write.write_all(&batch).await.is_err() {
                        return;
                    }
                    batch.clear();
                }
            }
            let _ = write.write_all(&batch).await;
        });
        // The server stops reading once its replies back up...
        tokio::time::timeout(Duration::from_secs(120), server.stats.paused.notified())
            .await
            .expect("the server kept reading calls whose replies nobody reads");
        assert!(server.stats.reads_paused.load(Ordering::Relaxed) >= 1);
        let served = INFO_SERVED.with(std::cell::Cell::get);
        assert!(served < u64::from(CALLS), "{served} calls answered");
        // ...and serves others meanwhile.
        assert_eq!(server.good_call().await, "tinyci://alpha/admin/ana");
        flood.abort();
        server.stop().await;
    });
}

/// Reads one Cap'n Proto frame and says whether it is a `Return`.
async fn read_is_return(read: &mut (impl tokio::io::AsyncRead + Unpin)) -> bool {
    let mut count = [0u8; 4];
    read.read_exact(&mut count).await.unwrap();
    let segments = u32::from_le_bytes(count) as usize + 1;
    let mut sizes = vec![0u8; (4 + 4 * segments).div_ceil(8) * 8 - 4];
    read.read_exact(&mut sizes).await.unwrap();
    let words: usize = sizes[..4 * segments]
        .chunks_exact(4)
        .map(|w| u32::from_le_bytes(w.try_into().unwrap()) as usize)
        .sum();
    let mut frame = count.to_vec();
    frame.extend_from_slice(&sizes);
    let start = frame.len();
    frame.resize(start + words * 8, 0);
    read.read_exact(&mut frame[start..]).await.unwrap();
    let message =
        capnp::serialize::read_message_from_flat_slice(&mut &frame[..], Default::default())
            .unwrap();
    let root: capnp_rpc::rpc_capnp::message::Reader<'_> = message.get_root().unwrap();
    matches!(root.which(), Ok(capnp_rpc::rpc_capnp::message::Return(_)))
}

/// A peer that sends many calls the server cannot answer yet is not read past
/// `max_outstanding_calls`: the server holds that many calls, not all of them, and serves others
/// meanwhile; once the calls are answered it reads on, and every call gets its answer.
#[test]
fn a_connection_holds_at_most_its_outstanding_calls() {
    local(async {
        const CAP: usize = 64;
        const CALLS: u32 = 5_000;
        let (release, held) = tokio::sync::watch::channel(false);
        INFO_HELD.with_borrow_mut(|slot| *slot = Some(held));
        let server = TestServer::start(
            None,
            NetLimits {
                max_outstanding_calls: CAP,
                ..NetLimits::default()
            },
        )
        .await;
        let tls = server.client_tls(&server.ca, Role::Admin, "flood");
        let stream = tinyci_net::dial_bytes(
            &server.addr.to_string(),
            tls,
            &site("alpha"),
            &NetLimits::default(),
        )
        .await
        .unwrap();
        let (mut read, mut write) = tokio::io::split(stream);
        let flood = tokio::task::spawn_local(async move {
            let mut all = rpc_frame(0);
            for call in 1..=CALLS {
                all.extend(rpc_frame(call));
            }
            write.write_all(&all).await.unwrap();
            write
        });
        // The server stops reading at the cap...
        tokio::time::timeout(Duration::from_secs(60), server.stats.paused.notified())
            .await
            .expect("the server kept reading past the outstanding-call cap");
        assert!(server.stats.calls_capped.load(Ordering::Relaxed) >= 1);
        let outstanding = server.stats.outstanding_calls.load(Ordering::Relaxed);
        // One read of the socket may carry more calls than the room left: at most a buffer's
        // worth past the cap.
        assert!(
            (CAP as i64..CAP as i64 + 512).contains(&outstanding),
            "{outstanding} calls outstanding with a cap of {CAP}"
        );
        let entered = INFO_SERVED.with(std::cell::Cell::get);
        assert!(entered <= outstanding as u64, "{entered} calls entered");
        // ...and serves others meanwhile (the held method is only `info`'s answer).
        let other = server.client_tls(&server.ca, Role::Admin, "other");
        let (gw, _conn) = server.connect(other).await.unwrap();
        drop(gw);
        // Released, every call is answered and the count returns to nothing.
        release.send_replace(true);
        let mut returns = 0;
        while returns < CALLS + 1 {
            if read_is_return(&mut read).await {
                returns += 1;
            }
        }
        let _write = flood.await.unwrap();
        assert_eq!(INFO_SERVED.with(std::cell::Cell::get), u64::from(CALLS));
        assert_eq!(server.stats.outstanding_calls.load(Ordering::Relaxed), 0);
        server.stop().await;
    });
}
