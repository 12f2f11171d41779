//! Observing every call to a capability we serve: a tracing span per call (`rpc`, with the
//! interface and method, and once it ends its outcome and duration, inside the connection's
//! span that names the peer) and one report
//! per finished call (outcome and duration) to a [`CallObserver`], which the site turns into
//! metrics.
//!
//! Wrap a server with [`Observed::new`] and make its client as usual:
//! `capnp_rpc::new_client::<gateway::Client, _>(Observed::new(server, observer))`. The
//! wrapping sits in the dispatch path Cap'n Proto already has, so the servers themselves do
//! nothing for it and no call can be missed.

use std::rc::Rc;
use std::time::{Duration, Instant};

use capnp::capability::{DispatchCallResult, FromServer, Params, Promise, Results, Server};
use tinyci_schema as schema;
use tracing::Instrument;

/// How a call ended, as metrics label it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Returned normally.
    Ok,
    /// Refused or failed (`Failed`: denials, bad input, errors).
    Failed,
    /// The connection went away mid-call.
    Disconnected,
    /// Refused for load.
    Overloaded,
    /// The method is not implemented.
    Unimplemented,
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Disconnected => "disconnected",
            Outcome::Overloaded => "overloaded",
            Outcome::Unimplemented => "unimplemented",
        }
    }

    fn of(result: &Result<(), capnp::Error>) -> Self {
        match result {
            Ok(()) => Outcome::Ok,
            Err(e) => match e.kind {
                capnp::ErrorKind::Disconnected => Outcome::Disconnected,
                capnp::ErrorKind::Overloaded => Outcome::Overloaded,
                capnp::ErrorKind::Unimplemented => Outcome::Unimplemented,
                _ => Outcome::Failed,
            },
        }
    }
}

/// Told about every finished call.
pub trait CallObserver {
    /// `interface.method` finished with `outcome` after `elapsed`.
    fn finished(
        &self,
        interface: &'static str,
        method: &'static str,
        outcome: Outcome,
        elapsed: Duration,
    );
}

/// A server whose calls are observed.
pub struct Observed<S> {
    server: Rc<S>,
    observer: Rc<dyn CallObserver>,
}

impl<S> Observed<S> {
    /// Wraps `server`; `observer` hears of each finished call.
    pub fn new(server: S, observer: Rc<dyn CallObserver>) -> Self {
        Self {
            server: Rc::new(server),
            observer,
        }
    }
}

impl<S> std::fmt::Debug for Observed<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observed")
    }
}

/// The dispatch of an [`Observed`] server: the generated dispatch, timed and traced.
pub struct ObservedDispatch<D, S> {
    inner: D,
    outer: Rc<Observed<S>>,
    interface: &'static str,
    methods: &'static [&'static str],
}

impl<D, S> std::fmt::Debug for ObservedDispatch<D, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObservedDispatch")
            .field("interface", &self.interface)
            .finish_non_exhaustive()
    }
}

impl<D: Clone, S> Clone for ObservedDispatch<D, S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            outer: self.outer.clone(),
            interface: self.interface,
            methods: self.methods,
        }
    }
}

impl<D, S> std::ops::Deref for ObservedDispatch<D, S> {
    type Target = Observed<S>;

    fn deref(&self) -> &Observed<S> {
        &self.outer
    }
}

impl<D: Server, S> Server for ObservedDispatch<D, S> {
    fn dispatch_call(
        self,
        interface_id: u64,
        method_id: u16,
        params: Params<capnp::any_pointer::Owned>,
        results: Results<capnp::any_pointer::Owned>,
    ) -> DispatchCallResult {
        let interface = self.interface;
        let method = self
            .methods
            .get(usize::from(method_id))
            .copied()
            .unwrap_or("unknown");
        let observer = self.outer.observer.clone();
        let span = tracing::debug_span!(
            "rpc",
            interface,
            method,
            outcome = tracing::field::Empty,
            elapsed_us = tracing::field::Empty
        );
        let started = Instant::now();
        let dispatched = {
            let _entered = span.enter();
            self.inner
                .dispatch_call(interface_id, method_id, params, results)
        };
        let is_streaming = dispatched.is_streaming;
        let promise = dispatched.promise;
        let recorder = span.clone();
        let observed = async move {
            let result = promise.await;
            let outcome = Outcome::of(&result);
            let elapsed = started.elapsed();
            recorder.record("outcome", outcome.as_str());
            recorder.record(
                "elapsed_us",
                u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            );
            match &result {
                Ok(()) => tracing::debug!("rpc done"),
                Err(e) => tracing::debug!(error = %e, "rpc done"),
            }
            observer.finished(interface, method, outcome, elapsed);
            result
        }
        .instrument(span);
        DispatchCallResult::new(Promise::from_future(observed), is_streaming)
    }

    fn as_ptr(&self) -> usize {
        self.inner.as_ptr()
    }
}

/// Implements `FromServer<Observed<S>>` for an interface's client, with its method names in
/// ordinal order (checked against `schema/tinyci.capnp` by a test).
macro_rules! observed {
    ($($module:ident: $name:literal [$($method:literal),* $(,)?];)*) => {
        $(
            impl<S: schema::$module::Server + 'static> FromServer<Observed<S>>
                for schema::$module::Client
            {
                type Dispatch = ObservedDispatch<schema::$module::ServerDispatch<S>, S>;

                fn from_server(observed: Rc<Observed<S>>) -> Self::Dispatch {
                    ObservedDispatch {
                        inner: <schema::$module::Client as FromServer<S>>::from_server(
                            observed.server.clone(),
                        ),
                        outer: observed,
                        interface: $name,
                        methods: &[$($method),*],
                    }
                }
            }
        )*

        /// Every observable interface and its methods, for the schema check.
        #[cfg(test)]
        const TABLES: &[(&str, &[&str])] = &[$(($name, &[$($method),*])),*];
    };
}

observed! {
    gateway: "Gateway" ["info", "redeem"];
    session: "Session" ["grant", "submitter", "worker", "logs", "admin", "users", "repos", "secrets"];
    handle: "Handle" [];
    byte_sink: "ByteSink" ["write", "finish"];
    submitter: "Submitter" ["upload", "submit", "ticket"];
    ticket: "Ticket" ["submission", "runs", "cancel", "watch", "cancelRun", "retryRun"];
    worker: "Worker" ["next", "resume"];
    job: "Job" ["spec", "source", "log", "artifacts", "heartbeat", "started", "complete", "release",
        "secrets"];
    log_sink: "LogSink" ["write", "acknowledged", "close"];
    log_reader: "LogReader" ["read", "follow", "artifacts", "download", "run", "ticket"];
    asset_sink: "AssetSink" ["put"];
    admin: "Admin" [
        "status", "runners", "setRunner", "queues", "setQueue", "runs", "cancel", "retry",
        "grants", "revoke", "users", "repos", "logs", "submitter", "ticket", "addUser",
        "setUserCapability", "enableRepo", "disableRepo", "reloadFederation", "run",
        "retryFailed", "secrets", "secretDeliveries",
    ];
    user_directory: "UserDirectory" ["list", "add", "setCapability"];
    repo_settings: "RepoSettings" ["list", "enable", "disable"];
    secret_store: "SecretStore" ["set", "list", "remove"];
}

#[cfg(test)]
mod tests {
    use super::TABLES;

    /// The method tables above must list each interface's methods in ordinal order, as
    /// `schema/tinyci.capnp` declares them (the schema is append-only, so a new method only
    /// needs appending here).
    #[test]
    fn method_tables_match_the_schema() {
        let schema = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../schema/tinyci.capnp"
        ))
        .unwrap();
        for (interface, methods) in TABLES {
            let start = schema
                .find(&format!("\ninterface {interface} {{"))
                .unwrap_or_else(|| panic!("no interface {interface} in the schema"));
            let body = &schema[start..];
            let body = &body[..body.find("\n}").unwrap()];
            let mut declared: Vec<(u16, String)> = body
                .lines()
                .filter_map(|line| {
                    let line = line.trim_start();
                    let (name, rest) = line.split_once(" @")?;
                    let (ordinal, _) = rest.split_once(' ')?;
                    (!name.contains(' ') && !line.starts_with('#'))
                        .then(|| Some((ordinal.parse().ok()?, name.to_owned())))?
                })
                .collect();
            declared.sort();
            let declared: Vec<&str> = declared.iter().map(|(_, n)| n.as_str()).collect();
            assert_eq!(&declared, methods, "methods of {interface}");
        }
    }
}
