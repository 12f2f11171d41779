//! Site users and GitHub repositories as capabilities of their own: `UserDirectory` for
//! holders of `users:modify`, `RepoSettings` for holders of `repos:modify`, so managing them
//! does not take the whole `Admin`. `Admin`'s methods of the same names do the same work
//! through the functions here: one implementation, two doors.

use std::rc::Rc;

use tinyci_pki::PeerIdentity;
use tinyci_schema::{repo_settings, user_directory};
use tinyci_users::{Capability, User, UserName};
use tracing::info;

use crate::SiteClock;
use crate::access::{RepoAccess, Want};
use crate::caps::{
    fill_repo_info, fill_repo_list, fill_user_info, fill_user_list, github_error, parse_capability,
    parse_user, users_error,
};
use crate::grants::GrantAuthority;
use crate::membrane::Liveness;
use crate::rpc::read_text;
use crate::session::len;

/// What managing users and repositories reaches, and nothing else of the site: the user
/// records, the access cache a capability change invalidates, the grant authority (taking a
/// capability away revokes the user's tokens), GitHub (webhooks), the store (the list of
/// repositories) and the clock.
#[derive(Clone)]
pub(crate) struct SettingsHandles {
    pub(crate) users: tinyci_users::Users,
    pub(crate) access: Rc<RepoAccess>,
    pub(crate) grants: Rc<GrantAuthority>,
    pub(crate) github: Option<Rc<tinyci_github::GitHubService>>,
    pub(crate) store: tinyci_store::Store,
    pub(crate) clock: SiteClock,
}

impl SettingsHandles {
    fn now_ms(&self) -> u64 {
        (self.clock.0)()
    }

    fn github(&self) -> Result<&Rc<tinyci_github::GitHubService>, tinyci_github::GitHubError> {
        crate::configured_github(&self.github)
    }
}

/// Creates site user `name` with `capabilities`, recorded as made by `by`.
pub(crate) async fn add_user(
    services: &SettingsHandles,
    by: &PeerIdentity,
    name: &str,
    capabilities: capnp::text_list::Reader<'_>,
) -> Result<User, capnp::Error> {
    let name = parse_user(name)?;
    let mut caps = std::collections::BTreeSet::new();
    for cap in capabilities.iter() {
        caps.insert(parse_capability(cap?.to_str()?)?);
    }
    // The GitHub account of that name now, pinned by its id: a login is a name anyone may
    // hold later (after a rename, or for a user meant for certificates only), so only this
    // account may ever sign in as the user.
    let github = match &services.github {
        Some(github) => github.account_named(name.as_str()).await.map_err(|e| {
            capnp::Error::failed(format!(
                "cannot ask GitHub which account is named {name}, to pin it to the user: {e}"
            ))
        })?,
        None => None,
    };
    let user = services
        .users
        .add(&name, caps, github, &by.to_string(), services.now_ms())
        .await
        .map_err(users_error)?;
    info!(user = %user.name, %by, github = ?user.github, "user added");
    Ok(user)
}

/// Gives or takes away one capability. Taking one away revokes the user's login tokens now,
/// with every live session on them (they log in again for a token with what they still hold).
pub(crate) async fn set_capability(
    services: &SettingsHandles,
    by: &PeerIdentity,
    name: &str,
    capability: &str,
    granted: bool,
) -> Result<User, capnp::Error> {
    let name = parse_user(name)?;
    let capability = parse_capability(capability)?;
    let user = services
        .users
        .set_capability(&name, capability, granted)
        .await
        .map_err(users_error)?;
    info!(user = %user.name, %capability, granted, %by, "user capability changed");
    services.access.forget(&user.name);
    if !granted {
        let revoked = services
            .grants
            .revoke_holder(&format!("user:{}", user.name), by)
            .await
            .map_err(|e| capnp::Error::failed(format!("cannot revoke the user's tokens: {e}")))?;
        info!(user = %user.name, revoked, "revoked the user's login tokens");
    }
    Ok(user)
}

/// Enables `name`, acting on GitHub as site user `github_user` (empty: the site's own
/// token). A site user acting here (`acting`) may only act as themselves.
pub(crate) async fn enable_repo(
    services: &SettingsHandles,
    by: &PeerIdentity,
    acting: Option<&UserName>,
    name: &str,
    github_user: &str,
    public: bool,
) -> Result<tinyci_store::records::RepoRecord, capnp::Error> {
    let user = if github_user.is_empty() {
        None
    } else {
        Some(parse_user(github_user)?.to_string())
    };
    if let Some(acting) = acting {
        if user.as_deref() != Some(acting.as_str()) {
            return Err(capnp::Error::failed(format!(
                "cannot enable {name}: site user {acting} enables repositories with their own \
                 GitHub account only (name {acting}, not {})",
                user.as_deref().unwrap_or("the site's token")
            )));
        }
        user_administers(services, acting, name, "enable").await?;
    }
    let github = services
        .github()
        .map_err(|e| crate::rpc::failed_as(&format!("cannot enable {name}"), &e))?;
    github
        .enable_repo(name, user, public, &by.to_string())
        .await
        .map_err(|e| capnp::Error::failed(format!("cannot enable {name}: {e}")))
}

/// For a site user: whether GitHub lets their account administer `name` (what enabling or
/// disabling its webhook takes), and they still hold `modify:ci`.
async fn user_administers(
    services: &SettingsHandles,
    user: &UserName,
    name: &str,
    what: &str,
) -> Result<(), capnp::Error> {
    services
        .access
        .check(user, Capability::ModifyCi, name, Want::Admin)
        .await
        .map_err(|why| crate::rpc::failed_as(&format!("cannot {what} {name}"), &why))
}

/// Disables `name` (its webhook deleted), recorded as done by `by`; a site user (`acting`)
/// only where GitHub lets them administer the repository.
pub(crate) async fn disable_repo(
    services: &SettingsHandles,
    by: &PeerIdentity,
    acting: Option<&UserName>,
    name: &str,
) -> Result<tinyci_store::records::RepoRecord, capnp::Error> {
    if let Some(acting) = acting {
        user_administers(services, acting, name, "disable").await?;
    }
    let github = services
        .github()
        .map_err(|e| crate::rpc::failed_as(&format!("cannot disable {name}"), &e))?;
    github
        .disable_repo(name, &by.to_string())
        .await
        .map_err(|e| capnp::Error::failed(format!("cannot disable {name}: {e}")))
}

/// `UserDirectory` for one session.
pub(crate) struct UserDirectoryCap {
    services: SettingsHandles,
    peer: PeerIdentity,
    liveness: Rc<Liveness>,
}

impl UserDirectoryCap {
    pub(crate) fn new(
        services: SettingsHandles,
        peer: PeerIdentity,
        liveness: Rc<Liveness>,
    ) -> Self {
        Self {
            services,
            peer,
            liveness,
        }
    }
}

impl user_directory::Server for UserDirectoryCap {
    async fn list(
        self: Rc<Self>,
        _: user_directory::ListParams,
        mut results: user_directory::ListResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let users = self.services.users.list().map_err(users_error)?;
        fill_user_list(results.get().init_users(len(users.len())), &users);
        Ok(())
    }

    async fn add(
        self: Rc<Self>,
        params: user_directory::AddParams,
        mut results: user_directory::AddResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let params = params.get()?;
        let name = read_text(params.get_name(), "name")?;
        let user = add_user(
            &self.services,
            &self.peer,
            &name,
            params.get_capabilities()?,
        )
        .await?;
        fill_user_info(results.get().init_user(), &user);
        Ok(())
    }

    async fn set_capability(
        self: Rc<Self>,
        params: user_directory::SetCapabilityParams,
        mut results: user_directory::SetCapabilityResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let params = params.get()?;
        let user = set_capability(
            &self.services,
            &self.peer,
            &read_text(params.get_name(), "name")?,
            &read_text(params.get_capability(), "capability")?,
            params.get_granted(),
        )
        .await?;
        fill_user_info(results.get().init_user(), &user);
        Ok(())
    }
}

/// `RepoSettings` for one session; `acting` is the site user holding it, if one does.
pub(crate) struct RepoSettingsCap {
    services: SettingsHandles,
    peer: PeerIdentity,
    acting: Option<UserName>,
    liveness: Rc<Liveness>,
}

impl RepoSettingsCap {
    pub(crate) fn new(
        services: SettingsHandles,
        peer: PeerIdentity,
        acting: Option<UserName>,
        liveness: Rc<Liveness>,
    ) -> Self {
        Self {
            services,
            peer,
            acting,
            liveness,
        }
    }
}

impl repo_settings::Server for RepoSettingsCap {
    async fn list(
        self: Rc<Self>,
        _: repo_settings::ListParams,
        mut results: repo_settings::ListResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let mut repos = tinyci_github::known_repos(&self.services.store).map_err(github_error)?;
        // A site user sees the repositories GitHub lets them read, and no others.
        if let Some(user) = &self.acting {
            let services = &self.services;
            let mut readable = Vec::with_capacity(repos.len());
            for repo in repos {
                let allowed = services
                    .access
                    .check(user, Capability::ModifyCi, &repo.name, Want::Read)
                    .await;
                if allowed.is_ok() {
                    readable.push(repo);
                }
            }
            repos = readable;
        }
        fill_repo_list(results.get().init_repos(len(repos.len())), &repos);
        Ok(())
    }

    async fn enable(
        self: Rc<Self>,
        params: repo_settings::EnableParams,
        mut results: repo_settings::EnableResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let params = params.get()?;
        let repo = enable_repo(
            &self.services,
            &self.peer,
            self.acting.as_ref(),
            &read_text(params.get_name(), "name")?,
            &read_text(params.get_github_user(), "githubUser")?,
            params.get_public(),
        )
        .await?;
        fill_repo_info(results.get().init_repo(), &repo);
        Ok(())
    }

    async fn disable(
        self: Rc<Self>,
        params: repo_settings::DisableParams,
        mut results: repo_settings::DisableResults,
    ) -> Result<(), capnp::Error> {
        self.liveness.check()?;
        let name = read_text(params.get()?.get_name(), "name")?;
        let repo = disable_repo(&self.services, &self.peer, self.acting.as_ref(), &name).await?;
        fill_repo_info(results.get().init_repo(), &repo);
        Ok(())
    }
}

/// Whether `capability` is one a user must hold now for `right` (site users only).
pub(crate) fn capability_for(right: tinyci_grant::Right) -> Option<Capability> {
    match right {
        tinyci_grant::Right::UsersModify => Some(Capability::ModifyUser),
        tinyci_grant::Right::ReposModify => Some(Capability::ModifyCi),
        _ => None,
    }
}
