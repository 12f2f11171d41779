//! Where a submission comes from, decided by the site from verified facts only: the identity
//! in the certificate of the connection that submitted (which the TLS layer checked against
//! the site's own CA or a pinned partner's), or a GitHub delivery whose signature was checked.
//! Nothing a client sends (a ref, a title, a field of an archive) takes part.

use tinyci_core::{Isolation, Offer, TrustTier};
use tinyci_pki::{PeerIdentity, Role, SiteName};

/// Why a connection's certificate places no work or takes none under the name it claims.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TierRefusal {
    /// A partner whose name is not a site name (cannot come from a valid pin, but the tier
    /// is built from certificate text, so it is checked).
    #[error("cannot place work from {peer}")]
    BadPartner {
        peer: PeerIdentity,
        #[source]
        source: tinyci_core::TierError,
    },
    /// Runners take work; they do not submit it.
    #[error("{0} is a runner: runner certificates take work, they do not submit it")]
    Runner(PeerIdentity),
    /// A runner claims a name its certificate does not give it.
    #[error(
        "runner name {claimed:?} does not match this connection's certificate ({peer}): it \
         takes work as {local:?}"
    )]
    WrongName {
        claimed: String,
        peer: PeerIdentity,
        local: String,
    },
}

/// The tier of work submitted over RPC by `peer`: `local` for the site's admins and the site
/// itself, `repo` for its users, `partner:NAME` for a partner. Runners do not submit: a
/// runner's certificate is refused rather than given a tier.
pub(crate) fn tier_of_peer(
    peer: &PeerIdentity,
    this_site: &SiteName,
) -> Result<TrustTier, TierRefusal> {
    let partner = |name: &str| {
        TrustTier::partner(name).map_err(|source| TierRefusal::BadPartner {
            peer: peer.clone(),
            source,
        })
    };
    if peer.site_name() != this_site {
        // Vouched for by a pinned partner CA: whatever its role there, it is that partner.
        return partner(peer.site_name().as_str());
    }
    match peer.role() {
        Role::Site | Role::Admin => Ok(TrustTier::Local),
        // A site user (any GitHub account an admin or `[github] allow` let in) uploads code
        // of a repository GitHub lets them push to: a repository writer's work, as a push is.
        // It must not run beside the site's keys because an account signed in.
        Role::User => Ok(TrustTier::Repo),
        Role::Partner => partner(peer.name().unwrap_or_default()),
        Role::Runner => Err(TierRefusal::Runner(peer.clone())),
    }
}

/// The runner name a connection takes work under, from its certificate alone: a runner
/// certificate's name, the site's own `<site>-runner` for a site certificate (as `tinyci
/// runner --site` names itself), the member's name otherwise; anything a partner's CA vouched
/// for carries `@<partner>`, so a partner's runner can never be mistaken for (and resume the
/// leases of) one of ours. `claimed` (what the runner says) must match the name before `@`.
pub(crate) fn runner_name(
    peer: &PeerIdentity,
    this_site: &SiteName,
    claimed: &str,
) -> Result<String, TierRefusal> {
    // Whose machine this is: a partner certificate we issued speaks for that partner (one
    // another site issued is that site's, whatever it names).
    let owner = match (peer.role(), peer.name()) {
        (Role::Partner, Some(partner)) if peer.site_name() == this_site => partner,
        _ => peer.site_name().as_str(),
    };
    let local = match (peer.role(), peer.name()) {
        (Role::Site | Role::Partner, _) | (_, None) => format!("{owner}-runner"),
        (_, Some(name)) => name.to_owned(),
    };
    if claimed != local {
        return Err(TierRefusal::WrongName {
            claimed: claimed.to_owned(),
            peer: peer.clone(),
            local,
        });
    }
    Ok(if owner == this_site.as_str() {
        local
    } else {
        format!("{local}@{owner}")
    })
}

/// What a runner offers, from the executors it names and whether it allows privileged
/// containers. Unknown executor names add nothing: a runner is never credited with more
/// isolation than a name this site knows provides. A runner that names none is taken for a
/// plain shell runner (older runners named nothing).
pub(crate) fn offer_of(executors: &[String], allow_privileged: bool, labels: Vec<String>) -> Offer {
    let processes = executors
        .iter()
        .filter_map(|e| match e.as_str() {
            "shell" => Some(Isolation::Host),
            "sandbox" => Some(Isolation::Sandbox),
            _ => None,
        })
        .max();
    let containers = executors.iter().any(|e| e == "docker");
    let processes = match (processes, containers) {
        (None, false) => Some(Isolation::Host),
        (processes, _) => processes,
    };
    Offer {
        isolation: if containers {
            Isolation::Container
        } else {
            processes.unwrap_or_default()
        },
        processes,
        // Only a container executor can run a privileged container.
        privileged: allow_privileged && containers,
        labels,
    }
}

/// A runner's labels as it lists them: each valid, at most [`tinyci_core::MAX_LABELS`],
/// sorted and each once. Labels only narrow what a runner is leased (a run lists the labels
/// it needs), so a runner claiming one gains nothing a site's policy withholds.
pub(crate) fn runner_labels(
    list: capnp::text_list::Reader<'_>,
) -> Result<Vec<String>, capnp::Error> {
    if list.len() as usize > tinyci_core::MAX_LABELS {
        return Err(capnp::Error::failed(format!(
            "runner.labels: {} labels; at most {}",
            list.len(),
            tinyci_core::MAX_LABELS
        )));
    }
    let mut labels = Vec::new();
    for label in list.iter() {
        let label = crate::rpc::read_text(label, "runner.labels")?;
        tinyci_core::check_label(&label)
            .map_err(|e| capnp::Error::failed(format!("runner.labels: {e}")))?;
        labels.push(label);
    }
    labels.sort();
    labels.dedup();
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(name: &str) -> SiteName {
        SiteName::new(name).unwrap_or_else(|e| panic!("{e}"))
    }

    fn member(site_name: &str, role: Role, name: &str) -> PeerIdentity {
        PeerIdentity::member(site(site_name), role, name).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn own_admins_and_the_site_itself_are_local_and_users_are_repository_writers() {
        let alpha = site("alpha");
        for peer in [
            member("alpha", Role::Admin, "admin"),
            PeerIdentity::site(alpha.clone()),
        ] {
            assert_eq!(tier_of_peer(&peer, &alpha), Ok(TrustTier::Local), "{peer}");
        }
        assert_eq!(
            tier_of_peer(&member("alpha", Role::User, "ana"), &alpha),
            Ok(TrustTier::Repo)
        );
    }

    #[test]
    fn anything_another_site_vouches_for_is_that_partner() {
        let alpha = site("alpha");
        // A partner's admin or user certificate does not make its holder local here.
        for peer in [
            PeerIdentity::site(site("beta")),
            member("beta", Role::Admin, "admin"),
            member("beta", Role::User, "mallory"),
            member("beta", Role::Runner, "r1"),
        ] {
            assert_eq!(
                tier_of_peer(&peer, &alpha),
                Ok(TrustTier::Partner("beta".into())),
                "{peer}"
            );
        }
        // A partner certificate this site issued names the partner.
        assert_eq!(
            tier_of_peer(&member("alpha", Role::Partner, "gamma"), &alpha),
            Ok(TrustTier::Partner("gamma".into()))
        );
    }

    #[test]
    fn own_runners_do_not_submit() {
        let refused = tier_of_peer(&member("alpha", Role::Runner, "r1"), &site("alpha"));
        assert!(refused.is_err_and(|e| e.to_string().contains("runner")));
    }

    #[test]
    fn runner_names_come_from_certificates_and_partners_are_namespaced() {
        let alpha = site("alpha");
        let own = member("alpha", Role::Runner, "r1");
        assert_eq!(runner_name(&own, &alpha, "r1"), Ok("r1".into()));
        assert!(runner_name(&own, &alpha, "r2").is_err_and(|e| e.to_string().contains("\"r1\"")));
        // A partner's runner certificate named like ours is still not ours.
        let foreign = member("beta", Role::Runner, "r1");
        assert_eq!(runner_name(&foreign, &alpha, "r1"), Ok("r1@beta".into()));
        let partner_site = PeerIdentity::site(site("beta"));
        assert_eq!(
            runner_name(&partner_site, &alpha, "beta-runner"),
            Ok("beta-runner@beta".into())
        );
        assert!(runner_name(&partner_site, &alpha, "r1").is_err());
        assert!(runner_name(&partner_site, &alpha, "r1\r\nevent: done").is_err());
        let issued = member("alpha", Role::Partner, "beta");
        assert_eq!(
            runner_name(&issued, &alpha, "beta-runner"),
            Ok("beta-runner@beta".into())
        );
        let own_site = PeerIdentity::site(alpha.clone());
        assert_eq!(
            runner_name(&own_site, &alpha, "alpha-runner"),
            Ok("alpha-runner".into())
        );
    }

    #[test]
    fn offers_come_only_from_known_executors() {
        let names = |list: &[&str]| list.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(
            offer_of(&names(&["shell"]), true, Vec::new()).isolation,
            Isolation::Host
        );
        assert!(!offer_of(&names(&["shell"]), true, Vec::new()).privileged);
        assert_eq!(
            offer_of(&names(&["sandbox", "shell"]), false, Vec::new()).isolation,
            Isolation::Sandbox
        );
        let docker = offer_of(&names(&["docker"]), true, Vec::new());
        assert_eq!(docker.isolation, Isolation::Container);
        assert_eq!(docker.processes, None);
        assert!(docker.privileged);
        let both = offer_of(&names(&["docker", "sandbox"]), false, Vec::new());
        assert_eq!(both.processes, Some(Isolation::Sandbox));
        assert_eq!(
            offer_of(&names(&["vm", "chroot"]), false, Vec::new()),
            Offer::default()
        );
        assert_eq!(offer_of(&[], false, Vec::new()), Offer::default());
    }
}
