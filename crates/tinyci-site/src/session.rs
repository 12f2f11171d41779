//! `Session`: what a redeemed token became. Each method authorizes one right on one scope
//! (once, when the capability is made) and returns a capability bound to exactly that scope
//! and to the session's [`Liveness`].

use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use tinyci_grant::vocab::{validate_queue, validate_repo};
use tinyci_grant::{Context, Grant, Operation, Right};
use tinyci_net::Peer;
use tinyci_schema::{grant_info, session};
use tracing::{debug, info};

use crate::Services;
use crate::access::Want;
use crate::caps::{AdminCap, LogReaderCap, SubmitterCap};
use crate::denied::Denied;
use crate::grants::Redeemed;
use crate::jobs::WorkerCap;
use crate::rpc::{failed_as, read_text};
use tinyci_users::Capability;

/// Whether a session's grant allows one right on a resource (the denial, for people, if not).
pub(crate) type RightCheck = Rc<dyn Fn(&str) -> Result<(), Denied>>;

pub(crate) struct Session {
    services: Rc<Services>,
    redeemed: Redeemed,
    peer: Peer,
}

impl Session {
    pub(crate) fn new(services: Rc<Services>, redeemed: Redeemed, peer: Peer) -> Self {
        Self {
            services,
            redeemed,
            peer,
        }
    }

    /// Authorizes `right` on `resource` for this session's peer, now. The only token check
    /// after redemption, made once per capability handed out, never per call on it.
    fn authorize(&self, right: Right, resource: &str) -> Result<(), capnp::Error> {
        self.redeemed.liveness.check()?;
        self.permits(right, resource)
            .map_err(|denied| denied.to_rpc())
    }

    /// The site user this session's certificate names, if it is one: their access is also
    /// what they hold now and what GitHub lets them do ([`crate::access`]), as on the pages.
    fn site_user(&self) -> Option<tinyci_users::UserName> {
        let identity = &self.peer.identity;
        (identity.site_name() == self.services.grants.site()
            && identity.role() == tinyci_pki::Role::User)
            .then(|| identity.name().and_then(|n| n.parse().ok()))
            .flatten()
    }

    /// The site user behind this session, if any, with the authority that answers for them.
    fn acting_user(&self) -> Option<crate::access::ActingUser> {
        self.site_user().map(|name| crate::access::ActingUser {
            name,
            access: self.services.access.clone(),
        })
    }

    /// For a site user: whether they still hold the capability behind site-scoped `right`
    /// (their token may predate its removal by moments; the store is the truth).
    fn holds_now(&self, right: Right) -> Result<(), capnp::Error> {
        let (Some(user), Some(capability)) =
            (self.site_user(), crate::settings::capability_for(right))
        else {
            return Ok(());
        };
        let holds = self
            .services
            .users
            .get(&user)
            .map_err(|e| capnp::Error::failed(format!("cannot read site user {user}: {e}")))?
            .is_some_and(|u| u.has(capability));
        if holds {
            Ok(())
        } else {
            Err(capnp::Error::failed(format!(
                "denied {right}: user {user} does not hold the {capability} capability"
            )))
        }
    }

    /// For a site user: whether they may exercise `capability` with `want` on `repo` now.
    async fn user_may(
        &self,
        capability: tinyci_users::Capability,
        repo: &str,
        want: crate::access::Want,
    ) -> Result<(), Denied> {
        match self.site_user() {
            None => Ok(()),
            Some(user) => {
                self.services
                    .access
                    .check(&user, capability, repo, want)
                    .await
            }
        }
    }

    /// Whether the grant allows `right` on `resource`; the denial, for people, if not. For a
    /// right a capability exercises on some of its methods only (`assets:read` on a log
    /// reader, `runs:cancel` on a submitter): decided once, when the capability is made.
    fn permits(&self, right: Right, resource: &str) -> Result<(), Denied> {
        self.check_of(right)(resource)
    }

    /// A check of `right` on any resource with this session's grant, for a capability that
    /// learns the resource later (a worker's jobs: `logs:write` on each run's repository).
    fn check_of(&self, right: Right) -> RightCheck {
        let token = self.redeemed.token.clone();
        let peer = self.redeemed.peer_names.clone();
        let site = self.services.grants.site().to_string();
        let clock = self.services.clock.clone();
        Rc::new(move |resource: &str| {
            let ctx = Context {
                this_site: &site,
                peer: &peer,
                now: tinyci_core::system_time((clock.0)()),
            };
            let op = Operation::new(right, resource);
            match token.authorize(&op, &ctx) {
                Ok(()) => {
                    debug!(%op, "session granted right");
                    Ok(())
                }
                Err(e) => {
                    info!(%op, error = %e, "session denied right");
                    Err(Denied::Grant(std::sync::Arc::new(e)))
                }
            }
        })
    }
}

impl session::Server for Session {
    async fn grant(
        self: Rc<Self>,
        _: session::GrantParams,
        mut results: session::GrantResults,
    ) -> Result<(), capnp::Error> {
        self.redeemed.liveness.check()?;
        fill_grant_info(results.get().init_grant(), self.redeemed.token.grant());
        Ok(())
    }

    async fn submitter(
        self: Rc<Self>,
        params: session::SubmitterParams,
        mut results: session::SubmitterResults,
    ) -> Result<(), capnp::Error> {
        let repo = read_text(params.get()?.get_repo(), "repo")?;
        validate_repo(&repo).map_err(|e| capnp::Error::failed(e.to_string()))?;
        crate::jobs::one_repository(&repo)?;
        self.authorize(Right::QueueSubmit, &repo)?;
        // A site user submits only where GitHub lets their account push.
        self.user_may(Capability::Submit, &repo, Want::Write)
            .await
            .map_err(|why| failed_as(&format!("denied queue:submit on repo {repo}"), &why))?;
        // Where this work comes from is the certificate's to say, not the grant's or the
        // client's: a partner's token minted for `queue:submit` still submits partner work.
        let tier = crate::tiers::tier_of_peer(&self.peer.identity, self.services.grants.site())
            .map_err(|e| crate::rpc::failed(&e))?;
        // Superseding cancels others' runs: only for holders of `runs:cancel` here.
        let mut cancel = self.permits(Right::RunsCancel, &repo);
        if cancel.is_ok() {
            cancel = self.user_may(Capability::Cancel, &repo, Want::Write).await;
        }
        let cap = SubmitterCap::new(
            self.services.run_handles(),
            repo,
            self.peer.identity.to_string(),
            tier,
            cancel,
            self.acting_user(),
            self.redeemed.liveness.clone(),
        );
        results
            .get()
            .set_submitter(crate::rpc::observed(&self.services.metrics, cap));
        Ok(())
    }

    async fn worker(
        self: Rc<Self>,
        params: session::WorkerParams,
        mut results: session::WorkerResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get()?;
        let queue = read_text(params.get_queue(), "queue")?;
        validate_queue(&queue).map_err(|e| capnp::Error::failed(e.to_string()))?;
        if queue == "*" {
            return Err(capnp::Error::failed(
                "a worker takes from one named queue, not '*'".into(),
            ));
        }
        let info = params.get_runner()?;
        let claimed = read_text(info.get_name(), "runner.name")?;
        // The name leases are held under comes from the certificate, never from the claim.
        let runner =
            crate::tiers::runner_name(&self.peer.identity, self.services.grants.site(), &claimed)
                .map_err(|e| crate::rpc::failed(&e))?;
        let executors = info.get_executors()?;
        if executors.len() > 8 {
            return Err(capnp::Error::failed(format!(
                "runner.executors: {} executors named; at most 8",
                executors.len()
            )));
        }
        let executors = executors
            .iter()
            .map(|e| crate::rpc::read_short_text(e, "runner.executors"))
            .collect::<Result<Vec<String>, capnp::Error>>()?;
        let labels = crate::tiers::runner_labels(info.get_labels()?)?;
        let offer = crate::tiers::offer_of(&executors, info.get_allow_privileged(), labels);
        self.authorize(Right::QueueTake, &queue)?;
        if self.services.queue.drained(&runner) {
            return Err(crate::jobs::drained_refusal(&runner));
        }
        // For operators only: nothing here decides what the runner is leased.
        let profile = tinyci_queue::RunnerProfile {
            identity: self.peer.identity.to_string(),
            hostname: crate::rpc::read_short_text(info.get_hostname(), "runner.hostname")?,
            version: crate::rpc::read_short_text(info.get_version(), "runner.version")?,
            executors: executors.into_iter().take(8).collect(),
            slots: info.get_slots(),
            connected_at: 0,
        };
        // A single-use grant (an ephemeral runner's) takes one job; the site keeps count by
        // its authority block, whatever connection or worker asks.
        let single_use = self
            .redeemed
            .token
            .grant()
            .single_use
            .then(|| self.redeemed.token.grant().revocation_ids.first().cloned())
            .flatten()
            .map(|grant| crate::jobs::SingleUse {
                grant,
                authority: self.services.grants.clone(),
            });
        let cap = WorkerCap::new(
            self.services.run_handles(),
            queue,
            crate::jobs::WorkerRunner {
                name: runner,
                offer,
                profile,
                single_use,
                // A partner certificate this site issued speaks for the partner's machine
                // (its runner name says so, `tiers::runner_name`), not for one of ours.
                own_site: self.peer.identity.site_name() == self.services.grants.site()
                    && self.peer.identity.role() != tinyci_pki::Role::Partner,
            },
            self.check_of(Right::LogsWrite),
            self.redeemed.liveness.clone(),
        );
        results
            .get()
            .set_worker(crate::rpc::observed(&self.services.metrics, cap));
        Ok(())
    }

    async fn logs(
        self: Rc<Self>,
        params: session::LogsParams,
        mut results: session::LogsResults,
    ) -> Result<(), capnp::Error> {
        let repo = read_text(params.get()?.get_scope()?.get_repo(), "scope.repo")?;
        validate_repo(&repo).map_err(|e| capnp::Error::failed(e.to_string()))?;
        self.authorize(Right::LogsRead, &repo)?;
        let assets = self.permits(Right::AssetsRead, &repo);
        let user = self.site_user();
        if user.is_some() && repo != "*" {
            self.user_may(Capability::Logs, &repo, Want::Read)
                .await
                .map_err(|why| failed_as(&format!("denied logs:read on repo {repo}"), &why))?;
        }
        let cap = LogReaderCap::new(
            self.services.run_handles(),
            repo,
            assets,
            self.acting_user(),
            self.check_of(Right::RunsCancel),
            self.peer.identity.to_string(),
            self.redeemed.liveness.clone(),
        );
        results
            .get()
            .set_reader(crate::rpc::observed(&self.services.metrics, cap));
        Ok(())
    }

    async fn users(
        self: Rc<Self>,
        _: session::UsersParams,
        mut results: session::UsersResults,
    ) -> Result<(), capnp::Error> {
        self.authorize(Right::UsersModify, self.services.grants.site().as_str())?;
        self.holds_now(Right::UsersModify)?;
        let cap = crate::settings::UserDirectoryCap::new(
            self.services.settings_handles(),
            self.peer.identity.clone(),
            self.redeemed.liveness.clone(),
        );
        results
            .get()
            .set_users(crate::rpc::observed(&self.services.metrics, cap));
        Ok(())
    }

    async fn repos(
        self: Rc<Self>,
        _: session::ReposParams,
        mut results: session::ReposResults,
    ) -> Result<(), capnp::Error> {
        self.authorize(Right::ReposModify, self.services.grants.site().as_str())?;
        self.holds_now(Right::ReposModify)?;
        let cap = crate::settings::RepoSettingsCap::new(
            self.services.settings_handles(),
            self.peer.identity.clone(),
            self.site_user(),
            self.redeemed.liveness.clone(),
        );
        results
            .get()
            .set_repos(crate::rpc::observed(&self.services.metrics, cap));
        Ok(())
    }

    async fn secrets(
        self: Rc<Self>,
        params: session::SecretsParams,
        mut results: session::SecretsResults,
    ) -> Result<(), capnp::Error> {
        let repo = read_text(params.get()?.get_repo(), "repo")?;
        validate_repo(&repo).map_err(|e| capnp::Error::failed(e.to_string()))?;
        self.authorize(Right::SecretsManage, &repo)?;
        if self.site_user().is_some() {
            if repo == "*" {
                return Err(capnp::Error::failed(
                    "denied secrets:manage on repo *: a site user manages one repository at a time"
                        .into(),
                ));
            }
            self.user_may(Capability::Secrets, &repo, Want::Admin)
                .await
                .map_err(|why| failed_as(&format!("denied secrets:manage on repo {repo}"), &why))?;
        }
        let cap = crate::secrets::SecretStoreCap::new(
            self.services.secrets.clone(),
            repo,
            (self.peer.identity.to_string(), self.acting_user()),
            self.services.clock.clone(),
            self.redeemed.liveness.clone(),
        );
        results
            .get()
            .set_secrets(crate::rpc::observed(&self.services.metrics, cap));
        Ok(())
    }

    async fn admin(
        self: Rc<Self>,
        _: session::AdminParams,
        mut results: session::AdminResults,
    ) -> Result<(), capnp::Error> {
        self.authorize(Right::Admin, self.services.grants.site().as_str())?;
        let cap = AdminCap::new(
            self.services.clone(),
            self.peer.identity.clone(),
            self.redeemed.liveness.clone(),
        );
        results
            .get()
            .set_admin(crate::rpc::observed(&self.services.metrics, cap));
        Ok(())
    }
}

/// Writes a grant's description (never the token) into `info`. Public for the benchmarks'
/// tokenless twin of `Session.grant`, which must do exactly this work.
pub fn fill_grant_info(mut info: grant_info::Builder<'_>, grant: &Grant) {
    info.set_holder(grant.holder.to_string());
    let mut rights = info.reborrow().init_rights(len(grant.rights.len()));
    for (i, right) in grant.rights.iter().enumerate() {
        rights.set(len(i), right.as_str());
    }
    let mut repos = info.reborrow().init_repos(len(grant.repos.len()));
    for (i, repo) in grant.repos.iter().enumerate() {
        repos.set(len(i), repo.as_str());
    }
    let mut queues = info.reborrow().init_queues(len(grant.queues.len()));
    for (i, queue) in grant.queues.iter().enumerate() {
        queues.set(len(i), queue.as_str());
    }
    info.set_expires_at(grant.expires_at.map_or(0, epoch_millis));
    let mut ids = info
        .reborrow()
        .init_revocation_ids(len(grant.revocation_ids.len()));
    for (i, id) in grant.revocation_ids.iter().enumerate() {
        ids.set(len(i), id.as_str());
    }
    info.set_summary(grant.summary());
}

/// A list length or index as capnp wants it. Grants are tiny; saturate rather than wrap.
pub(crate) fn len(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

pub(crate) fn epoch_millis(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
