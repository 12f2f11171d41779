//! The HTTP listener (`[http] listen`): the run pages ([`crate::pages`]), `/healthz` (the
//! process answers), `/readyz` (the store answers too), `/metrics` (Prometheus), and whatever
//! the site answers itself (`/hooks/…`, `/oauth/…`, through [`Backend::endpoint`]). Plain
//! HTTP/1.1 (hyper): put a TLS-terminating proxy in front of it beyond loopback, and name that
//! proxy's address in `public_url`.
//!
//! What a client can make the listener hold is bounded ([`WebLimits`]): connections in all
//! and per address, the time to send headers and a body, each body's size, and the bytes of
//! all bodies being received at once. A client past a limit gets a clear refusal (or, at
//! accept, a closed connection) and other clients are served as before. Query strings (which
//! carry OAuth codes and states) are never logged.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Either, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tinyci_core::Counts;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::pages;
use crate::render::html_escape;
use crate::view::{Backend, WebSettings};

/// What one listener lets clients make it hold.
#[derive(Clone, Debug)]
pub struct WebLimits {
    /// Connections served at once; more are closed at accept.
    pub max_connections: usize,
    /// Connections from one IP address at once; more from it are closed at accept, so one
    /// client cannot take the others' share.
    pub max_connections_per_address: usize,
    /// Time a client has to send a request's headers (and, between requests, to start the
    /// next one).
    pub header_timeout: Duration,
    /// Time a client has to send a request's whole body, from the moment its headers arrived.
    pub body_timeout: Duration,
    /// Bytes of request bodies being received at once, over all connections: a body is
    /// refused (503) when its size does not fit in what is left.
    pub max_body_bytes_in_flight: usize,
}

impl Default for WebLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_connections_per_address: 64,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_body_bytes_in_flight: 64 * 1024 * 1024,
        }
    }
}

/// Most bytes of a request's head (its line and headers) a connection buffers; a longer head
/// is answered 431. hyper's own default is about 400 KB: held by every connection that sends
/// its headers slowly, the listener's 1,024 connections could make the site hold 400 MB.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// When a request's body must have arrived, and the budget it is received from: put in each
/// request's extensions by the listener, read by [`read_body`].
#[derive(Clone, Debug)]
struct BodyTerms {
    deadline: Instant,
    budget: Arc<Semaphore>,
}

/// The cookie naming a browser's session.
pub const SESSION_COOKIE: &str = "tinyci_session";

/// A whole answer.
pub type Reply = Response<Full<Bytes>>;
/// A body sent piece by piece from this thread (the site's `LocalSet`).
pub type LocalStream = Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, std::io::Error>>>>;
/// Every HTTP answer: whole, or streamed.
pub type Body = Either<Full<Bytes>, StreamBody<LocalStream>>;

/// What a listener serves from.
struct Served<B> {
    backend: Rc<B>,
    settings: WebSettings,
    body_budget: Arc<Semaphore>,
}

/// Serves `listener` until `shutdown` resolves; then drops every connection.
pub async fn serve<B: Backend>(
    listener: TcpListener,
    backend: Rc<B>,
    settings: WebSettings,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let limits = settings.limits.clone();
    let served = Rc::new(Served {
        backend,
        body_budget: Arc::new(Semaphore::new(limits.max_body_bytes_in_flight)),
        settings,
    });
    let per_address: Rc<Counts<IpAddr>> = Rc::default();
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "http accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        if connections.len() >= limits.max_connections {
            warn!(%peer, limit = limits.max_connections, "http connection refused: the listener is full");
            continue;
        }
        let Some(slot) = per_address.take(peer.ip(), limits.max_connections_per_address) else {
            debug!(%peer, limit = limits.max_connections_per_address, "http connection refused: too many from this address");
            continue;
        };
        let served = served.clone();
        let header_timeout = limits.header_timeout;
        connections.spawn_local(async move {
            let _slot = slot;
            let service = service_fn(move |request| {
                let served = served.clone();
                async move { Ok::<_, Infallible>(route(&served, peer, request).await) }
            });
            let result = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = result {
                debug!(%peer, error = %e, "http connection ended with an error");
            }
        });
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

async fn route<B: Backend>(
    served: &Served<B>,
    peer: SocketAddr,
    mut request: Request<Incoming>,
) -> Response<Body> {
    request.extensions_mut().insert(BodyTerms {
        deadline: Instant::now() + served.settings.limits.body_timeout,
        budget: served.body_budget.clone(),
    });
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let backend = served.backend.as_ref();
    let response = match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => whole(text(StatusCode::OK, "ok")),
        (&Method::GET, "/readyz") => whole(match backend.ready() {
            Ok(()) => text(StatusCode::OK, "ready"),
            Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }),
        (&Method::GET, "/metrics") => whole(reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            backend.metrics(),
        )),
        (_, "/healthz" | "/readyz" | "/metrics") => whole(text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed on {path}"),
        )),
        _ if path.starts_with("/hooks/") || path.starts_with("/oauth/") => {
            match backend.endpoint(request).await {
                Some(reply) => whole(reply),
                None => whole(text(StatusCode::NOT_FOUND, format!("no page at {path}"))),
            }
        }
        _ => match pages::route(&served.backend, &served.settings, request).await {
            Some(reply) => reply,
            None => whole(text(StatusCode::NOT_FOUND, format!("no page at {path}"))),
        },
    };
    let mut response = response;
    security_headers(response.headers_mut());
    debug!(%peer, %method, %path, status = response.status().as_u16(), "http request");
    response
}

/// The headers every answer carries, set here once so that none can miss them (an error, a
/// login step, a 404 from the hooks): no caching unless the answer says otherwise (pages show
/// live state and are per user), no framing, no script or style from anywhere but this site,
/// no inline script, no content-type sniffing, no referrer beyond this site.
fn security_headers(headers: &mut http::HeaderMap) {
    use http::HeaderValue;
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    // An answer whose form must post elsewhere (the login form, which GitHub continues) sets
    // its own, from the same function.
    if !headers.contains_key(header::CONTENT_SECURITY_POLICY)
        && let Ok(policy) = HeaderValue::from_str(&crate::render::content_security_policy(&[]))
    {
        headers.insert(header::CONTENT_SECURITY_POLICY, policy);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
}

/// A whole reply as an answer.
pub(crate) fn whole(response: Reply) -> Response<Body> {
    response.map(Either::Left)
}

/// A reply of `content_type`.
pub fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

/// A plain-text reply, ending in a newline.
pub fn text(status: StatusCode, body: impl Into<String>) -> Reply {
    let mut body = body.into();
    if !body.ends_with('\n') {
        body.push('\n');
    }
    reply(status, "text/plain; charset=utf-8", body)
}

/// A JSON reply.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Reply {
    reply(status, "application/json", value.to_string())
}

/// A small page saying `message` (escaped), never cached: what the login steps answer.
pub fn message_page(status: StatusCode, title: &str, message: &str) -> Reply {
    let body = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · tinyci</title></head>\n<body><main><h1>{title}</h1><p>{message}</p></main></body></html>\n",
        title = html_escape(title),
        message = html_escape(message),
    );
    let mut response = reply(status, "text/html; charset=utf-8", body);
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

/// Reads a body of at most `limit` bytes before the listener's body deadline, within its
/// budget of bytes being received, or the reply refusing it.
///
/// The budget is taken as bytes arrive, not reserved for a body's declared length up front:
/// reserving let a few hundred clients that declare large bodies and send a byte each hold
/// the whole budget until their deadline, refusing every webhook meanwhile (measured by the
/// abuse benchmark). Now a client holds what it has sent, and a body whose bytes no longer fit
/// is refused (503) when they arrive.
pub async fn read_body(request: Request<Incoming>, limit: usize) -> Result<Vec<u8>, Reply> {
    let terms = request.extensions().get::<BodyTerms>().cloned();
    // What this body can grow to: its declared length when it declares one (hyper holds the
    // sender to it), else the endpoint's limit.
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|d| d > limit) {
        return Err(too_large(limit));
    }
    let size = declared.unwrap_or(limit);
    let deadline = terms.as_ref().map_or_else(
        || Instant::now() + WebLimits::default().body_timeout,
        |t| t.deadline,
    );
    let budget = terms.map(|t| t.budget);
    let mut incoming = Limited::new(request.into_body(), size);
    let mut body = Vec::new();
    // Released when the body is handed on (or refused): its bytes leave the budget.
    let mut held: Option<tokio::sync::OwnedSemaphorePermit> = None;
    let receive = async {
        while let Some(frame) = incoming.frame().await {
            let Ok(data) = frame.map_err(BodyFailure::Read)?.into_data() else {
                continue;
            };
            if let Some(budget) = &budget {
                let bytes = u32::try_from(data.len()).unwrap_or(u32::MAX);
                let permit = budget
                    .clone()
                    .try_acquire_many_owned(bytes)
                    .map_err(|_| BodyFailure::Busy)?;
                match &mut held {
                    Some(held) => held.merge(permit),
                    None => held = Some(permit),
                }
            }
            body.extend_from_slice(&data);
        }
        Ok(())
    };
    match tokio::time::timeout_at(deadline, receive).await {
        Ok(Ok(())) => Ok(body),
        Ok(Err(BodyFailure::Busy)) => Err(text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the site is receiving too much at once: retry shortly",
        )),
        Ok(Err(BodyFailure::Read(e))) if e.is::<http_body_util::LengthLimitError>() => {
            Err(too_large(limit))
        }
        Ok(Err(BodyFailure::Read(e))) => Err(text(
            StatusCode::BAD_REQUEST,
            format!("cannot read the request body: {e}"),
        )),
        Err(_) => Err(text(
            StatusCode::REQUEST_TIMEOUT,
            "request body refused: it did not arrive in time",
        )),
    }
}

/// Why receiving a body stopped early.
enum BodyFailure {
    /// Its bytes did not fit in the listener's budget.
    Busy,
    /// The body failed or passed its limit.
    Read(Box<dyn std::error::Error + Send + Sync>),
}

fn too_large(limit: usize) -> Reply {
    text(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body over {limit} bytes refused"),
    )
}

/// The browser's session cookie, if it sent one of a sane length.
pub fn session_cookie<T>(request: &Request<T>) -> Option<String> {
    request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.to_owned())
        .filter(|v| v.len() <= 128)
}
