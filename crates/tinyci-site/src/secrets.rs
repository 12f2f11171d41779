//! Job secrets: sealed at rest, handed only to a lease whose run their scope matches, audited
//! per delivery, withdrawn from running jobs when removed, and masked by the site as a second
//! line behind the runner.
//!
//! The book ([`SecretBook`]) owns the `secrets` and `secret_deliveries` tables. A value is
//! sealed under the site's secrets key with its repository, name and whole scope as
//! associated data, so a row edited to widen its scope no longer opens. Plaintext exists only
//! in memory: in a `set` call, a `Job.secrets` answer, and the masking forms of runs that hold
//! secrets now.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;

use tinyci_core::{
    MAX_SECRET_BYTES_PER_REPO, MAX_SECRET_VALUE, MAX_SECRETS_PER_REPO, RunId, ScopeError,
    SecretScope, TooShort, TrustTier, check_secret_name, masked_forms,
};
use tinyci_pki::{SecretsError, SecretsKey};
use tinyci_schema::{job_control, secret_delivery_info, secret_info, secret_store};
use tinyci_store::records::{SecretDelivery, StoredSecret};
use tinyci_store::tables::{SECRET_DELIVERIES, SECRETS};
use tinyci_store::{Store, StoreError};
use tracing::{info, warn};

use crate::membrane::Liveness;
use crate::rpc::read_text;
use crate::session::len;

/// Why a secret could not be set, removed or delivered. Never holds a value.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SecretError {
    /// The name or scope is malformed.
    #[error("{0}")]
    Scope(#[from] ScopeError),
    /// The value is too short to mask.
    #[error("{0}")]
    TooShort(#[from] TooShort),
    /// The value is too long.
    #[error("a secret value may be at most {MAX_SECRET_VALUE} bytes; this one is {0}")]
    TooLong(usize),
    /// A variable's value must be text.
    #[error(
        "secret {0} is delivered as a variable, so its value must be UTF-8 text without NUL bytes; deliver it as a file instead (--as-file)"
    )]
    NotText(String),
    /// The repository holds as many secrets as it may.
    #[error(
        "repository {0} already holds {MAX_SECRETS_PER_REPO} secrets; remove one first (tinyci secret rm)"
    )]
    TooMany(String),
    /// The repository's secrets would hold too many bytes together.
    #[error(
        "repository {0}'s secrets would hold more than {MAX_SECRET_BYTES_PER_REPO} bytes together; remove one first (tinyci secret rm)"
    )]
    TooLarge(String),
    /// The capability does not cover the repository.
    #[error("denied secrets:manage on repo {repo}: this capability covers {scope} only")]
    OutOfScope {
        /// The repository asked for.
        repo: String,
        /// The one it covers.
        scope: String,
    },
    /// No such secret.
    #[error("repository {repo} has no secret {name}")]
    NotFound {
        /// The repository.
        repo: String,
        /// The name.
        name: String,
    },
    /// The store failed.
    #[error("the secrets table: {0}")]
    Store(#[from] StoreError),
    /// A stored value does not open (another site's key, or an edited row).
    #[error("{0}")]
    Seal(#[from] SecretsError),
    /// A blocking task died.
    #[error("the store task failed: {0}")]
    Task(String),
}

/// One secret as a lease receives it (no `Debug`: it holds the value).
pub(crate) struct Delivered {
    pub(crate) name: String,
    pub(crate) value: Vec<u8>,
    pub(crate) as_file: bool,
    /// The row's sealed bytes when it was read: the same row is still set only while these
    /// are (every `set` seals afresh).
    sealed: Vec<u8>,
}

/// A running job that was given secrets: where to send a withdrawal.
struct Holder {
    repo: String,
    lease: u32,
    names: BTreeSet<String>,
    control: job_control::Client,
}

/// The byte strings to mask for one attempt's secrets (see [`tinyci_core::masked_forms`]).
pub(crate) type Forms = Rc<Vec<Vec<u8>>>;

/// The site's job secrets.
pub(crate) struct SecretBook {
    store: Store,
    key: SecretsKey,
    /// Runs holding secrets now, by run id.
    holders: RefCell<HashMap<RunId, Holder>>,
    /// Masking forms of each live run's attempt; an empty entry says "none", so a log write
    /// looks up the store once.
    forms: RefCell<HashMap<RunId, (u32, Forms)>>,
}

impl std::fmt::Debug for SecretBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretBook")
            .field("holders", &self.holders.borrow().len())
            .finish_non_exhaustive()
    }
}

fn secret_key(repo: &str, name: &str) -> Vec<u8> {
    let mut key = repo.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(name.as_bytes());
    key
}

fn delivery_prefix(run: RunId) -> Vec<u8> {
    run.get().to_be_bytes().to_vec()
}

fn delivery_key(run: RunId, attempt: u32, name: &str) -> Vec<u8> {
    let mut key = delivery_prefix(run);
    key.extend_from_slice(&attempt.to_be_bytes());
    key.extend_from_slice(name.as_bytes());
    key
}

/// The most tiers one secret may name (there are four kinds; partners are named one by one).
const MAX_TIERS: u32 = 16;

/// What sealing adds to a value: version, nonce and tag.
const SEAL_OVERHEAD: usize = 1 + 12 + 16;

/// What a sealed value is bound to: its row and its whole scope, each field prefixed with
/// its length so no two rows' contexts can read alike.
fn seal_context(secret: &StoredSecret) -> String {
    let mut context = String::from("job-secret");
    let fields = [
        secret.repo.as_str(),
        secret.name.as_str(),
        secret.ref_pattern.as_str(),
        if secret.as_file { "file" } else { "variable" },
    ]
    .into_iter()
    .chain(secret.tiers.iter().map(String::as_str));
    for field in fields {
        context.push_str(&format!(":{}:{field}", field.len()));
    }
    context
}

/// The masking forms of `values`. Every stored value was refused under `MIN_SECRET_LEN` at
/// `set`; one that is not (an edited store) is left out rather than emptying the whole list.
fn forms_of<'a>(values: impl Iterator<Item = &'a [u8]>) -> Vec<Vec<u8>> {
    masked_forms(values.filter(|v| v.len() >= tinyci_core::MIN_SECRET_LEN)).unwrap_or_default()
}

fn scope_of(secret: &StoredSecret) -> Result<SecretScope, ScopeError> {
    SecretScope::parse(&secret.ref_pattern, &secret.tiers)
}

/// A delivery as `admin runs show` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeliveryRecord {
    pub(crate) name: String,
    pub(crate) attempt: u32,
    pub(crate) runner: String,
    pub(crate) at: u64,
}

/// What a lease's run is, as the site established it: the facts a scope is matched against.
pub(crate) struct LeaseFacts<'a> {
    pub(crate) run: RunId,
    pub(crate) attempt: u32,
    pub(crate) repo: &'a str,
    pub(crate) git_ref: &'a str,
    /// The site established the ref itself (see [`SecretScope::admits`]).
    pub(crate) ref_verified: bool,
    pub(crate) tier: &'a TrustTier,
    pub(crate) runner: &'a str,
}

impl SecretBook {
    pub(crate) fn new(store: Store, key: SecretsKey) -> Self {
        Self {
            store,
            key,
            holders: RefCell::default(),
            forms: RefCell::default(),
        }
    }

    async fn write<R: Send + 'static>(
        &self,
        work: impl FnOnce(&mut tinyci_store::WriteTxn<'_>) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, SecretError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.write(work))
            .await
            .map_err(|e| SecretError::Task(e.to_string()))?
            .map_err(SecretError::from)
    }

    /// Creates or replaces a secret.
    pub(crate) async fn set(
        &self,
        mut secret: StoredSecret,
        value: &[u8],
    ) -> Result<StoredSecret, SecretError> {
        check_secret_name(&secret.name)?;
        let scope = scope_of(&secret)?;
        secret.tiers = scope.tiers.iter().map(ToString::to_string).collect();
        if value.len() > MAX_SECRET_VALUE {
            return Err(SecretError::TooLong(value.len()));
        }
        masked_forms([value])?;
        if !secret.as_file && (std::str::from_utf8(value).is_err() || value.contains(&0)) {
            return Err(SecretError::NotText(secret.name));
        }
        secret.sealed = self.key.seal(value, &seal_context(&secret));
        let key = secret_key(&secret.repo, &secret.name);
        let prefix = secret_key(&secret.repo, "");
        let row = secret.clone();
        let repo = secret.repo.clone();
        // The sealed size stands for the value's (a fixed overhead each).
        let adding = row.sealed.len();
        let refused = self
            .write(move |txn| {
                let mut count = 0;
                let mut bytes = adding;
                for entry in txn.iter_prefix(SECRETS, prefix.as_slice())? {
                    let (other, held) = entry?;
                    if other != key.as_slice() {
                        count += 1;
                        bytes += held.sealed.len();
                    }
                }
                if count >= MAX_SECRETS_PER_REPO {
                    return Ok(Some(SecretError::TooMany(repo)));
                }
                if bytes > MAX_SECRET_BYTES_PER_REPO + (count + 1) * SEAL_OVERHEAD {
                    return Ok(Some(SecretError::TooLarge(repo)));
                }
                txn.put(SECRETS, key.as_slice(), &row)?;
                Ok(None)
            })
            .await?;
        if let Some(refusal) = refused {
            return Err(refusal);
        }
        info!(repo = %secret.repo, name = %secret.name, scope = %scope, by = %secret.set_by, "secret set");
        Ok(secret)
    }

    /// Every secret of `repo` (`*`: all), without values' plaintext.
    pub(crate) fn list(&self, repo: &str) -> Result<Vec<StoredSecret>, SecretError> {
        let prefix = secret_key(repo, "");
        Ok(self.store.read(|txn| {
            // LMDB refuses an empty prefix: every repository is the whole range.
            let rows = if repo == "*" {
                txn.iter_range(SECRETS, &..)?
            } else {
                txn.iter_prefix(SECRETS, prefix.as_slice())?
            };
            rows.map(|entry| entry.map(|(_, secret)| secret))
                .collect::<Result<Vec<_>, _>>()
        })?)
    }

    /// The secrets of exactly `repo`: a run's repository is never a pattern, so a run
    /// recorded under `*` gets nothing rather than everything.
    fn of_repo(&self, repo: &str) -> Result<Vec<StoredSecret>, SecretError> {
        if repo == "*" {
            return Ok(Vec::new());
        }
        self.list(repo)
    }

    /// Deletes a secret and tells every running job that holds it to delete its file.
    pub(crate) async fn remove(&self, repo: &str, name: &str) -> Result<StoredSecret, SecretError> {
        let key = secret_key(repo, name);
        let removed = self
            .write(move |txn| {
                let secret = txn.get(SECRETS, key.as_slice())?;
                if secret.is_some() {
                    txn.delete(SECRETS, key.as_slice())?;
                }
                Ok(secret)
            })
            .await?
            .ok_or_else(|| SecretError::NotFound {
                repo: repo.to_owned(),
                name: name.to_owned(),
            })?;
        info!(%repo, %name, "secret removed");
        for (run, holder) in self.holders.borrow().iter() {
            if holder.repo != repo || !holder.names.contains(name) {
                continue;
            }
            let mut request = holder.control.withdraw_secrets_request();
            request.get().set_run(run.to_string());
            request.get().set_attempt(holder.lease);
            request.get().init_names(1).set(0, name);
            let (run, lease) = (*run, holder.lease);
            let call = request.send().promise;
            tokio::task::spawn_local(async move {
                if let Err(e) = call.await {
                    warn!(%run, lease, error = %e, "could not tell a runner to withdraw a removed secret");
                }
            });
        }
        Ok(removed)
    }

    /// The secrets a lease's run may have, recorded as delivered (durably, before they are
    /// returned) and remembered for masking its log.
    pub(crate) async fn deliver(
        &self,
        lease: &LeaseFacts<'_>,
        at: u64,
    ) -> Result<Vec<Delivered>, SecretError> {
        let mut delivered = Vec::new();
        for secret in self.of_repo(lease.repo)? {
            let scope = match scope_of(&secret) {
                Ok(scope) => scope,
                Err(e) => {
                    warn!(repo = %secret.repo, name = %secret.name, error = %e, "a stored secret's scope is unreadable; not delivered");
                    continue;
                }
            };
            if !scope.admits(lease.git_ref, lease.ref_verified, lease.tier) {
                continue;
            }
            let value = self.key.open(&secret.sealed, &seal_context(&secret))?;
            delivered.push(Delivered {
                name: secret.name,
                value,
                as_file: secret.as_file,
                sealed: secret.sealed,
            });
        }
        if !delivered.is_empty() {
            let rows: Vec<(Vec<u8>, SecretDelivery)> = delivered
                .iter()
                .map(|d| {
                    (
                        delivery_key(lease.run, lease.attempt, &d.name),
                        SecretDelivery {
                            runner: lease.runner.to_owned(),
                            at,
                        },
                    )
                })
                .collect();
            self.write(move |txn| {
                for (key, row) in &rows {
                    // The first delivery to a lease is the one on record.
                    if txn.get(SECRET_DELIVERIES, key.as_slice())?.is_none() {
                        txn.put(SECRET_DELIVERIES, key.as_slice(), row)?;
                    }
                }
                Ok(())
            })
            .await?;
            info!(run = %lease.run, attempt = lease.attempt, runner = %lease.runner,
                names = %delivered.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(","),
                "secrets delivered");
        }
        let forms = forms_of(delivered.iter().map(|d| d.value.as_slice()));
        self.forms
            .borrow_mut()
            .insert(lease.run, (lease.attempt, Rc::new(forms)));
        Ok(delivered)
    }

    /// Of `delivered`, those still set now. Called right after [`SecretBook::hold`]: a
    /// removal that raced the delivery is either seen here or finds the holder, so no removed
    /// secret is handed out without its job being told to withdraw it.
    pub(crate) fn still_set(
        &self,
        repo: &str,
        delivered: Vec<Delivered>,
    ) -> Result<Vec<Delivered>, SecretError> {
        if delivered.is_empty() {
            return Ok(delivered);
        }
        let present: HashMap<String, Vec<u8>> = self
            .of_repo(repo)?
            .into_iter()
            .map(|s| (s.name, s.sealed))
            .collect();
        Ok(delivered
            .into_iter()
            .filter(|d| present.get(&d.name) == Some(&d.sealed))
            .collect())
    }

    /// Remembers that the lease `(run, lease)` holds `names` and answers to `control`.
    pub(crate) fn hold(
        &self,
        run: RunId,
        lease: u32,
        repo: &str,
        names: BTreeSet<String>,
        control: job_control::Client,
    ) {
        if names.is_empty() {
            return;
        }
        self.holders.borrow_mut().insert(
            run,
            Holder {
                repo: repo.to_owned(),
                lease,
                names,
                control,
            },
        );
    }

    /// A resumed lease answers to a new control.
    pub(crate) fn rebind(&self, run: RunId, lease: u32, control: job_control::Client) {
        if let Some(holder) = self.holders.borrow_mut().get_mut(&run)
            && holder.lease == lease
        {
            holder.control = control;
        }
    }

    /// The lease `(run, lease)` ended: forget it and its masking forms.
    pub(crate) fn release(&self, run: RunId, lease: u32) {
        let mut holders = self.holders.borrow_mut();
        if holders.get(&run).is_some_and(|h| h.lease == lease) {
            holders.remove(&run);
        }
        let mut forms = self.forms.borrow_mut();
        if forms
            .get(&run)
            .is_some_and(|(attempt, _)| *attempt == lease)
        {
            forms.remove(&run);
        }
    }

    /// `run` holds no lease now (queued again, or finished): forget every holder and
    /// masking entry of it, whichever attempt, so nothing outlives a lease that lapsed
    /// without its runner coming back.
    pub(crate) fn run_released(&self, run: RunId) {
        self.holders.borrow_mut().remove(&run);
        self.forms.borrow_mut().remove(&run);
    }

    /// The forms to mask in the log of `(run, attempt)`: of the secrets it was given (after a
    /// restart, read back from the audit trail and the sealed rows).
    /// Only a live run's forms are remembered (`live`): a sink used after its run ended
    /// must not leave an entry nothing removes.
    pub(crate) fn forms_for(&self, run: RunId, attempt: u32, repo: &str, live: bool) -> Forms {
        if let Some((_, forms)) = self
            .forms
            .borrow()
            .get(&run)
            .filter(|(known, _)| *known == attempt)
        {
            return forms.clone();
        }
        let names: Vec<String> = self
            .deliveries(run)
            .unwrap_or_default()
            .into_iter()
            .filter(|d| d.attempt == attempt)
            .map(|d| d.name)
            .collect();
        let values: Vec<Vec<u8>> = self
            .of_repo(repo)
            .unwrap_or_default()
            .into_iter()
            .filter(|s| names.contains(&s.name))
            .filter_map(|s| self.key.open(&s.sealed, &seal_context(&s)).ok())
            .collect();
        let forms = Rc::new(forms_of(values.iter().map(Vec::as_slice)));
        if live {
            self.forms
                .borrow_mut()
                .insert(run, (attempt, forms.clone()));
        }
        forms
    }

    /// Every delivery to every attempt of `run`.
    pub(crate) fn deliveries(&self, run: RunId) -> Result<Vec<DeliveryRecord>, SecretError> {
        let prefix = delivery_prefix(run);
        let rows = self.store.read(|txn| {
            txn.iter_prefix(SECRET_DELIVERIES, prefix.as_slice())?
                .map(|entry| entry.map(|(key, row)| (key.to_vec(), row)))
                .collect::<Result<Vec<_>, _>>()
        })?;
        Ok(rows
            .into_iter()
            .filter_map(|(key, row)| {
                let attempt = u32::from_be_bytes(key.get(8..12)?.try_into().ok()?);
                let name = String::from_utf8(key.get(12..)?.to_vec()).ok()?;
                Some(DeliveryRecord {
                    name,
                    attempt,
                    runner: row.runner,
                    at: row.at,
                })
            })
            .collect())
    }
}

/// `SecretStore`: one repository's secrets (or every one's, for `*`), for a holder of
/// `secrets:manage` there, or the admin.
pub(crate) struct SecretStoreCap {
    book: Rc<SecretBook>,
    scope: String,
    /// The verified identity acting, recorded as `set_by`.
    actor: String,
    /// A site user acting: asked on every call whether they still may.
    user: Option<crate::access::ActingUser>,
    clock: crate::SiteClock,
    liveness: Rc<Liveness>,
}

impl SecretStoreCap {
    pub(crate) fn new(
        book: Rc<SecretBook>,
        scope: String,
        (actor, user): (String, Option<crate::access::ActingUser>),
        clock: crate::SiteClock,
        liveness: Rc<Liveness>,
    ) -> Self {
        Self {
            book,
            scope,
            actor,
            user,
            clock,
            liveness,
        }
    }

    /// For a site user: whether they still hold the `secrets` capability and GitHub's admin
    /// permission on `repo`, now (either may have been taken away since).
    async fn user_may(&self, repo: &str) -> Result<(), capnp::Error> {
        let Some(user) = &self.user else {
            return Ok(());
        };
        user.may(
            tinyci_users::Capability::Secrets,
            repo,
            crate::access::Want::Admin,
        )
        .await
        .map_err(|why| {
            crate::rpc::failed_as(&format!("denied secrets:manage on repo {repo}"), &why)
        })
    }

    fn covers(&self, repo: &str) -> Result<(), capnp::Error> {
        tinyci_grant::vocab::validate_repo(repo)
            .map_err(|e| capnp::Error::failed(e.to_string()))?;
        if repo == "*" || (self.scope != "*" && self.scope != repo) {
            return Err(crate::rpc::failed(&SecretError::OutOfScope {
                repo: repo.to_owned(),
                scope: self.scope.clone(),
            }));
        }
        Ok(())
    }
}

fn fill_secret_info(mut out: secret_info::Builder<'_>, secret: &StoredSecret) {
    out.set_repo(&secret.repo);
    out.set_name(&secret.name);
    out.set_ref_pattern(&secret.ref_pattern);
    let mut tiers = out.reborrow().init_tiers(len(secret.tiers.len()));
    for (i, tier) in secret.tiers.iter().enumerate() {
        tiers.set(len(i), tier.as_str());
    }
    out.set_as_file(secret.as_file);
    out.set_set_by(&secret.set_by);
    out.set_set_at(i64::try_from(secret.set_at).unwrap_or(i64::MAX));
}

/// Writes `deliveries` into a `List(SecretDeliveryInfo)`.
pub(crate) fn fill_deliveries(
    mut out: capnp::struct_list::Builder<'_, secret_delivery_info::Owned>,
    deliveries: &[DeliveryRecord],
) {
    for (i, d) in deliveries.iter().enumerate() {
        let mut row = out.reborrow().get(len(i));
        row.set_name(&d.name);
        row.set_attempt(d.attempt);
        row.set_runner(&d.runner);
        row.set_at(i64::try_from(d.at).unwrap_or(i64::MAX));
    }
}

impl secret_store::Server for SecretStoreCap {
    async fn set(
        self: Rc<Self>,
        params: secret_store::SetParams,
        mut results: secret_store::SetResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let params = params.get()?;
        let repo = read_text(params.get_repo(), "repo")?;
        self.covers(&repo)?;
        self.user_may(&repo).await?;
        let tiers = params.get_tiers()?;
        if tiers.len() > MAX_TIERS {
            return Err(capnp::Error::failed(format!(
                "tiers: {} named; at most {MAX_TIERS}",
                tiers.len()
            )));
        }
        let tiers = tiers
            .iter()
            .map(|t| crate::rpc::read_short_text(t, "tiers"))
            .collect::<Result<Vec<_>, _>>()?;
        let tiers = if tiers.is_empty() {
            SecretScope::default_tiers()
                .iter()
                .map(ToString::to_string)
                .collect()
        } else {
            tiers
        };
        let ref_pattern = crate::rpc::read_short_text(params.get_ref_pattern(), "refPattern")?;
        let secret = StoredSecret {
            repo,
            name: crate::rpc::read_short_text(params.get_name(), "name")?,
            ref_pattern: if ref_pattern.is_empty() {
                "*".to_owned()
            } else {
                ref_pattern
            },
            tiers,
            as_file: params.get_as_file(),
            set_by: self.actor.clone(),
            set_at: (self.clock.0)(),
            sealed: Vec::new(),
        };
        let stored = self
            .book
            .set(secret, params.get_value()?)
            .await
            .map_err(|e| crate::rpc::failed(&e))?;
        fill_secret_info(results.get().init_secret(), &stored);
        Ok(())
    }

    async fn list(
        self: Rc<Self>,
        _: secret_store::ListParams,
        mut results: secret_store::ListResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        self.user_may(&self.scope).await?;
        let secrets = self
            .book
            .list(&self.scope)
            .map_err(|e| crate::rpc::failed(&e))?;
        let mut out = results.get().init_secrets(len(secrets.len()));
        for (i, secret) in secrets.iter().enumerate() {
            fill_secret_info(out.reborrow().get(len(i)), secret);
        }
        Ok(())
    }

    async fn remove(
        self: Rc<Self>,
        params: secret_store::RemoveParams,
        mut results: secret_store::RemoveResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let params = params.get()?;
        let repo = read_text(params.get_repo(), "repo")?;
        self.covers(&repo)?;
        self.user_may(&repo).await?;
        let name = crate::rpc::read_short_text(params.get_name(), "name")?;
        let removed = self
            .book
            .remove(&repo, &name)
            .await
            .map_err(|e| crate::rpc::failed(&e))?;
        fill_secret_info(results.get().init_secret(), &removed);
        Ok(())
    }
}
