//! The HTTP listener (`[http] listen`): the run pages ([`crate::pages`]), `/healthz` (the
//! process answers), `/readyz` (the store answers too), `/metrics` (Prometheus), and whatever
//! the site answers itself (`/hooks/…`, `/oauth/…`, through [`Backend::endpoint`]). Plain
//! HTTP/1.1 (hyper): put a TLS-terminating proxy in front of it beyond loopback, and name that
//! proxy's address in `public_url`.
//!
//! Every request body is read with a bound ([`read_body`]); query strings (which carry OAuth
//! codes and states) are never logged.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Either, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::pages;
use crate::render::html_escape;
use crate::view::{Backend, WebSettings};

/// Most HTTP connections served at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 1024;
/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
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
}

/// Serves `listener` until `shutdown` resolves; then drops every connection.
pub async fn serve<B: Backend>(
    listener: TcpListener,
    backend: Rc<B>,
    settings: WebSettings,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let served = Rc::new(Served { backend, settings });
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
        if connections.len() >= MAX_CONNECTIONS {
            warn!(%peer, "http connection refused: {MAX_CONNECTIONS} already open");
            continue;
        }
        let served = served.clone();
        connections.spawn_local(async move {
            let service = service_fn(move |request| {
                let served = served.clone();
                async move { Ok::<_, Infallible>(route(&served, peer, request).await) }
            });
            let result = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
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
    request: Request<Incoming>,
) -> Response<Body> {
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
    debug!(%peer, %method, %path, status = response.status().as_u16(), "http request");
    response
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

/// Reads a body of at most `limit` bytes, or the reply refusing it.
pub async fn read_body(request: Request<Incoming>, limit: usize) -> Result<Vec<u8>, Reply> {
    match Limited::new(request.into_body(), limit).collect().await {
        Ok(body) => Ok(body.to_bytes().to_vec()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over {limit} bytes refused"),
        )),
        Err(e) => Err(text(
            StatusCode::BAD_REQUEST,
            format!("cannot read the request body: {e}"),
        )),
    }
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
