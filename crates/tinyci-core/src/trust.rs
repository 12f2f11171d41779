//! Trust tiers and the site's dispatch policy: who a submission comes from, which queues take
//! work from whom, and how isolated that work must run.
//!
//! A [`TrustTier`] is decided by the site from verified facts only (the certificate identity
//! of the connection that submitted, or a webhook payload whose signature was checked); no
//! client-chosen field feeds it. A [`DispatchPolicy`] (from `site.toml`'s `[queues.NAME]`)
//! turns a tier and a queue into [`Needs`]: the least [`Isolation`] a runner must provide,
//! whether the run may reach the network, and whether it may be privileged. A runner's
//! [`Offer`] either satisfies those needs or the run waits, saying why; it never falls back
//! to a weaker runner.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::PlannedRun;

/// Where a submission comes from, as the site established it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TrustTier {
    /// The site's own admins (and the site itself).
    Local,
    /// A GitHub push, or a pull request from a branch of the same repository, to an enabled
    /// repository, or a site user's upload of a repository GitHub lets them push to: code by
    /// people GitHub lets write to it.
    Repo,
    /// A pull request from a fork: code by anyone.
    Fork,
    /// A partner site (the name of the site whose CA vouched for the submitter).
    Partner(String),
}

/// A tier that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid trust tier {0:?}: expected local, repo, fork or partner:<site>")]
pub struct TierError(pub String);

/// Site names as `tinyci-pki` spells them (repeated here: core depends on no tinyci crate).
fn is_site_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

impl TrustTier {
    /// The partner tier of site `name`.
    pub fn partner(name: &str) -> Result<Self, TierError> {
        if is_site_name(name) {
            Ok(TrustTier::Partner(name.to_owned()))
        } else {
            Err(TierError(format!("partner:{name}")))
        }
    }

    /// Whether work of this tier may ever be privileged (with the site's consent): only the
    /// site's own people and a repository's writers, never forks or partners.
    pub fn may_be_privileged(&self) -> bool {
        matches!(self, TrustTier::Local | TrustTier::Repo)
    }
}

impl fmt::Display for TrustTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrustTier::Local => f.write_str("local"),
            TrustTier::Repo => f.write_str("repo"),
            TrustTier::Fork => f.write_str("fork"),
            TrustTier::Partner(name) => write!(f, "partner:{name}"),
        }
    }
}

impl FromStr for TrustTier {
    type Err = TierError;

    fn from_str(s: &str) -> Result<Self, TierError> {
        match s {
            "local" => Ok(TrustTier::Local),
            "repo" => Ok(TrustTier::Repo),
            "fork" => Ok(TrustTier::Fork),
            _ => match s.strip_prefix("partner:") {
                Some(name) => TrustTier::partner(name),
                None => Err(TierError(s.to_owned())),
            },
        }
    }
}

/// How strongly a runner separates a job from its host. Ordered: each level provides what
/// the ones below it do, so a run needing `Sandbox` may run in a container but never on the
/// host.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
pub enum Isolation {
    /// Processes on the runner host, as the runner's user: they see what it sees.
    #[default]
    Host,
    /// A Linux-namespace sandbox (bubblewrap): the job sees its work directory and read-only
    /// system directories, its own PID namespace, and no network unless allowed.
    Sandbox,
    /// A container (Docker) with the job's work directory as its only host mount.
    Container,
}

impl Isolation {
    /// Every level, weakest first.
    pub const ALL: [Isolation; 3] = [Isolation::Host, Isolation::Sandbox, Isolation::Container];

    /// The name used in `site.toml`, on the wire and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Host => "host",
            Isolation::Sandbox => "sandbox",
            Isolation::Container => "container",
        }
    }
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An isolation level that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid isolation {0:?}: expected host, sandbox or container")]
pub struct IsolationError(pub String);

impl FromStr for Isolation {
    type Err = IsolationError;

    fn from_str(s: &str) -> Result<Self, IsolationError> {
        Isolation::ALL
            .into_iter()
            .find(|i| i.as_str() == s)
            .ok_or_else(|| IsolationError(s.to_owned()))
    }
}

/// When a container executor fetches a run's image from its registry. A runner has one
/// (`tinyci runner --pull`); a queue's `pull` in `site.toml` overrides it for that queue's
/// runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum PullPolicy {
    /// Pull before every run, so a moved tag (`rust:1`) is followed.
    Always,
    /// Pull only when the image is not on the runner host.
    #[default]
    Missing,
    /// Never pull: the image must be on the host already (air-gapped or pre-loaded hosts).
    Never,
}

impl PullPolicy {
    /// Every policy.
    pub const ALL: [PullPolicy; 3] = [PullPolicy::Always, PullPolicy::Missing, PullPolicy::Never];

    /// The name used in `site.toml`, on the command line, on the wire and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "always",
            PullPolicy::Missing => "missing",
            PullPolicy::Never => "never",
        }
    }
}

impl fmt::Display for PullPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A pull policy that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid pull policy {0:?}: expected always, missing or never")]
pub struct PullPolicyError(pub String);

impl FromStr for PullPolicy {
    type Err = PullPolicyError;

    fn from_str(s: &str) -> Result<Self, PullPolicyError> {
        PullPolicy::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| PullPolicyError(s.to_owned()))
    }
}

/// Names tiers in a queue's policy: one tier, or every partner at once (`partner`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TierPattern {
    /// Exactly this tier.
    Tier(TrustTier),
    /// Any `partner:<site>`.
    AnyPartner,
}

impl TierPattern {
    /// Whether it names `tier`.
    pub fn matches(&self, tier: &TrustTier) -> bool {
        match self {
            TierPattern::Tier(t) => t == tier,
            TierPattern::AnyPartner => matches!(tier, TrustTier::Partner(_)),
        }
    }

    /// How closely it names `tier` (an exact name beats `partner`), if at all.
    fn closeness(&self, tier: &TrustTier) -> Option<u8> {
        match self {
            TierPattern::Tier(t) if t == tier => Some(2),
            TierPattern::AnyPartner if matches!(tier, TrustTier::Partner(_)) => Some(1),
            _ => None,
        }
    }
}

impl fmt::Display for TierPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TierPattern::Tier(t) => t.fmt(f),
            TierPattern::AnyPartner => f.write_str("partner"),
        }
    }
}

impl FromStr for TierPattern {
    type Err = TierError;

    fn from_str(s: &str) -> Result<Self, TierError> {
        if s == "partner" {
            Ok(TierPattern::AnyPartner)
        } else {
            s.parse().map(TierPattern::Tier)
        }
    }
}

/// What one queue takes and how: `[queues.NAME]` in `site.toml`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuePolicy {
    /// Tiers the queue takes work from; others are refused at submission.
    pub tiers: BTreeSet<TierPattern>,
    /// The least isolation a tier's runs need; the closest pattern wins, and a tier no
    /// pattern names needs [`QueuePolicy::DEFAULT_UNTRUSTED_ISOLATION`].
    pub isolation: BTreeMap<TierPattern, Isolation>,
    /// Tiers whose runs may reach the network: the host's for a sandbox (loopback and every
    /// service listening on it included), Docker's bridge for a container (which reaches the
    /// host's addresses too). Others get a network namespace with loopback only.
    pub network: BTreeSet<TierPattern>,
    /// Repositories (`owner/name`) whose `local` or `repo` runs on this queue may be
    /// privileged containers, when their `tinyci.yml` asks too. Nothing else can be.
    pub privileged_repos: BTreeSet<String>,
    /// When runners fetch this queue's images; `None` leaves it to each runner's own policy.
    pub pull: Option<PullPolicy>,
    /// Each submitter group's weight when several have runs waiting here (the closest
    /// pattern wins; a group none names weighs 1): leases go out in these proportions.
    pub shares: BTreeMap<TierPattern, u32>,
}

impl Default for QueuePolicy {
    /// Every tier is taken; only `local` work may run unsandboxed on a host or reach the
    /// network (a sandbox with the network shares the host's, loopback included, so the site
    /// and anything else listening there); nothing is privileged.
    fn default() -> Self {
        Self {
            tiers: [
                TierPattern::Tier(TrustTier::Local),
                TierPattern::Tier(TrustTier::Repo),
                TierPattern::Tier(TrustTier::Fork),
                TierPattern::AnyPartner,
            ]
            .into(),
            isolation: [(TierPattern::Tier(TrustTier::Local), Isolation::Host)].into(),
            network: [TierPattern::Tier(TrustTier::Local)].into(),
            privileged_repos: BTreeSet::new(),
            pull: None,
            shares: BTreeMap::new(),
        }
    }
}

impl QueuePolicy {
    /// What a tier needs when no isolation entry names it: a sandbox or a container.
    pub const DEFAULT_UNTRUSTED_ISOLATION: Isolation = Isolation::Sandbox;

    fn closest<'a, V>(
        map: impl Iterator<Item = (&'a TierPattern, V)>,
        tier: &TrustTier,
    ) -> Option<V> {
        map.filter_map(|(p, v)| p.closeness(tier).map(|c| (c, v)))
            .max_by_key(|(c, _)| *c)
            .map(|(_, v)| v)
    }

    /// Whether the queue takes `tier`'s work.
    pub fn takes(&self, tier: &TrustTier) -> bool {
        self.tiers.iter().any(|p| p.matches(tier))
    }

    /// The least isolation `tier`'s runs need here.
    pub fn isolation_for(&self, tier: &TrustTier) -> Isolation {
        let named = Self::closest(self.isolation.iter().map(|(p, i)| (p, *i)), tier);
        named.unwrap_or(match tier {
            TrustTier::Local => Isolation::Host,
            _ => Self::DEFAULT_UNTRUSTED_ISOLATION,
        })
    }

    /// The most a share weight may be.
    pub const MAX_SHARE: u32 = 1000;

    /// `tier`'s weight among the groups waiting on this queue.
    pub fn share_of(&self, tier: &TrustTier) -> u32 {
        Self::closest(self.shares.iter().map(|(p, w)| (p, *w)), tier).unwrap_or(1)
    }

    /// Whether `tier`'s runs may reach the network here.
    pub fn network_for(&self, tier: &TrustTier) -> bool {
        self.network.iter().any(|p| p.matches(tier))
    }
}

/// The most labels a runner or a run may carry.
pub const MAX_LABELS: usize = 32;

/// Whether `label` may name a runner label: 1-63 bytes of ASCII letters, digits, `.`, `_`,
/// `-`, `=` or `/` (`gpu`, `arch=arm64`, `zone/eu-1`). Returns why not.
pub fn check_label(label: &str) -> Result<(), String> {
    if label.is_empty() || label.len() > 63 {
        return Err(format!("invalid label {label:?}: 1-63 bytes"));
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b".-_=/".contains(&b))
    {
        return Err(format!(
            "invalid label {label:?}: only ASCII letters, digits and . _ - = /"
        ));
    }
    Ok(())
}

/// What a run needs of the runner that takes it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Needs {
    /// The least isolation.
    pub isolation: Isolation,
    /// Whether it may reach the network.
    pub network: bool,
    /// Whether it runs as a privileged container (implies [`Isolation::Container`]).
    pub privileged: bool,
    /// Whether it names a container image: then only a container executor runs it (a shell
    /// would ignore the image and run the command on its host). A run without one can only
    /// run as processes (on a host or in the sandbox).
    pub image: bool,
    /// Labels the runner must have, every one (the task files' `labels:`), sorted.
    pub labels: Vec<String>,
}

impl fmt::Display for Needs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.privileged, self.image, self.isolation) {
            (true, _, _) => {
                f.write_str("a runner started with --allow-privileged and a container executor")
            }
            (false, true, _) => {
                f.write_str("a runner with a container executor (the run names an image)")
            }
            (false, false, Isolation::Host) => f.write_str("any runner"),
            (false, false, Isolation::Sandbox) => f.write_str("a runner with the sandbox"),
            (false, false, Isolation::Container) => f.write_str(
                "a runner with container isolation (and an image to run in: this run names none)",
            ),
        }?;
        if !self.labels.is_empty() {
            write!(f, " labelled {}", self.labels.join(", "))?;
        }
        Ok(())
    }
}

/// What a runner provides: the strongest isolation among its executors, the strongest among
/// those that run processes (host shell, sandbox), whether it was started with
/// `--allow-privileged`, and its operator-given labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    /// The strongest isolation it can run a job in.
    pub isolation: Isolation,
    /// The strongest isolation it runs plain processes in (`None`: containers only), which
    /// is all a run without an image can use.
    pub processes: Option<Isolation>,
    /// Whether it runs privileged containers at all.
    pub privileged: bool,
    /// Its labels (`tinyci runner --label`), sorted.
    pub labels: Vec<String>,
}

impl Default for Offer {
    /// A plain shell runner on a host.
    fn default() -> Self {
        Self::processes(Isolation::Host)
    }
}

impl Offer {
    /// A runner whose only executor runs processes with `isolation`.
    pub const fn processes(isolation: Isolation) -> Self {
        Self {
            isolation,
            processes: Some(isolation),
            privileged: false,
            labels: Vec::new(),
        }
    }

    /// Whether it has a container executor (only containers provide that isolation).
    pub fn containers(&self) -> bool {
        self.isolation == Isolation::Container
    }

    /// Whether a run with `needs` may be leased to this runner.
    pub fn satisfies(&self, needs: &Needs) -> bool {
        // A run with an image goes to a container executor or nowhere: a shell would ignore
        // the image (and `privileged`) and run the command on its host.
        let have = if needs.image {
            self.containers().then_some(Isolation::Container)
        } else {
            self.processes
        };
        have.is_some_and(|have| have >= needs.isolation)
            && (!needs.privileged || self.privileged)
            && needs.labels.iter().all(|l| self.labels.contains(l))
    }

    /// An order on offers, weakest first: a run goes to the weakest runner that can take it,
    /// keeping stronger (and more labelled) ones free for what only they can run.
    pub fn strength(&self) -> (Isolation, Option<Isolation>, bool, usize) {
        (
            self.isolation,
            self.processes,
            self.privileged,
            self.labels.len(),
        )
    }
}

impl fmt::Display for Offer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.isolation.as_str())?;
        match self.processes {
            Some(p) if p == self.isolation => {}
            Some(p) => write!(f, ", processes: {p}")?,
            None => f.write_str(", images only")?,
        }
        if self.privileged {
            f.write_str(", privileged")?;
        }
        if !self.labels.is_empty() {
            write!(f, ", labels: {}", self.labels.join(" "))?;
        }
        Ok(())
    }
}

/// Why the site will not queue a run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The queue does not take this tier's work.
    #[error("queue {queue} does not take {tier} work (its site policy takes: {takes})")]
    TierNotTaken {
        /// The queue.
        queue: String,
        /// The submission's tier.
        tier: TrustTier,
        /// What it takes, for the message.
        takes: String,
    },
    /// A run asks to be privileged and the site does not allow it.
    #[error(
        "run {run} asks for a privileged container, but the site's policy for queue {queue} \
         does not allow that for {tier} work of {repo} (only local or repo work of a repository \
         listed in privileged_repos may be privileged)"
    )]
    PrivilegedNotAllowed {
        /// `task:run`.
        run: String,
        /// The queue.
        queue: String,
        /// The submission's tier.
        tier: TrustTier,
        /// The repository.
        repo: String,
    },
}

/// Every queue's policy: `[queues.NAME]` sections, and the default for queues not named.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DispatchPolicy {
    /// Per named queue.
    pub queues: BTreeMap<String, QueuePolicy>,
    /// For any other queue.
    pub default: QueuePolicy,
}

impl DispatchPolicy {
    /// The policy of `queue`.
    pub fn queue(&self, queue: &str) -> &QueuePolicy {
        self.queues.get(queue).unwrap_or(&self.default)
    }

    /// What a run of `tier`'s work on `queue` needs; refuses what the queue does not take and
    /// privilege the site does not grant. `privileged` is what the run's task files ask for
    /// (already refused by the task-file parser unless the repository's `tinyci.yml` allows
    /// it): a request, never a decision.
    pub fn admit(&self, repo: &str, tier: &TrustTier, run: &PlannedRun) -> Result<Needs, Refusal> {
        let queue = run.queue.as_ref();
        let privileged = run.privileged;
        let policy = self.queue(queue);
        if !policy.takes(tier) {
            return Err(Refusal::TierNotTaken {
                queue: queue.to_owned(),
                tier: tier.clone(),
                takes: if policy.tiers.is_empty() {
                    "nothing".to_owned()
                } else {
                    policy
                        .tiers
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            });
        }
        if privileged && !(tier.may_be_privileged() && policy.privileged_repos.contains(repo)) {
            return Err(Refusal::PrivilegedNotAllowed {
                run: run.qualified_name(),
                queue: queue.to_owned(),
                tier: tier.clone(),
                repo: repo.to_owned(),
            });
        }
        Ok(self.needs(tier, run))
    }

    /// What an admitted run needs now (a stored run's needs follow the current policy, so a
    /// tightened `site.toml` applies to work already queued).
    pub fn needs(&self, tier: &TrustTier, run: &PlannedRun) -> Needs {
        let policy = self.queue(run.queue.as_ref());
        let isolation = policy.isolation_for(tier);
        Needs {
            isolation: if run.privileged {
                Isolation::Container
            } else {
                isolation
            },
            network: policy.network_for(tier),
            privileged: run.privileged,
            image: run.image.is_some(),
            labels: run.labels.clone(),
        }
    }
}

/// Why a queued run is still waiting, given the runners connected to its queue (name and
/// offer); `None` when one of them could take it (it is simply busy).
pub fn waiting_reason(
    queue: &str,
    tier: &TrustTier,
    needs: &Needs,
    connected: &[(String, Offer)],
) -> Option<String> {
    if connected.iter().any(|(_, offer)| offer.satisfies(needs)) {
        return None;
    }
    let have = if connected.is_empty() {
        "none is connected".to_owned()
    } else {
        let mut seen: Vec<String> = connected
            .iter()
            .map(|(name, offer)| format!("{name} ({offer})"))
            .collect();
        seen.sort();
        seen.dedup();
        format!("connected: {}", seen.join(", "))
    };
    Some(format!(
        "waiting for {needs} on queue {queue} ({tier} work; {have})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tier(s: &str) -> TrustTier {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    fn run(queue: &str, privileged: bool, image: Option<&str>) -> PlannedRun {
        PlannedRun {
            task_dir: "ci".into(),
            name: "dind".into(),
            command: vec!["true".into()],
            image: image.map(str::to_owned),
            queue: queue.parse().unwrap_or_else(|e| panic!("{e}")),
            timeout_secs: 60,
            env: BTreeMap::new(),
            mountpoint: "/src".into(),
            workdir: "/src".into(),
            privileged,
            metadata: BTreeMap::new(),
            resources: Default::default(),
            artifacts: Vec::new(),
            labels: Vec::new(),
        }
    }

    const SANDBOX: Offer = Offer::processes(Isolation::Sandbox);
    const DOCKER_ONLY: Offer = Offer {
        isolation: Isolation::Container,
        processes: None,
        privileged: false,
        labels: Vec::new(),
    };

    #[test]
    fn tiers_round_trip_and_refuse_nonsense() {
        for t in ["local", "repo", "fork", "partner:beta"] {
            assert_eq!(tier(t).to_string(), t);
        }
        for bad in [
            "",
            "Local",
            "partner:",
            "partner:Beta",
            "partner:a/b",
            "admin",
        ] {
            assert!(bad.parse::<TrustTier>().is_err(), "{bad}");
        }
    }

    #[test]
    fn default_policy_keeps_untrusted_work_off_hosts_and_off_the_network() {
        let policy = DispatchPolicy::default();
        let host = Offer::default();
        for t in ["repo", "fork", "partner:beta"] {
            let needs = policy
                .admit("o/r", &tier(t), &run("default", false, None))
                .unwrap();
            assert!(!host.satisfies(&needs), "{t} on a host");
            assert!(SANDBOX.satisfies(&needs), "{t} in a sandbox");
            assert!(!needs.network, "{t} on the network");
        }
        let local = policy
            .admit("o/r", &TrustTier::Local, &run("default", false, None))
            .unwrap();
        assert!(host.satisfies(&local));
        assert!(local.network);
    }

    #[test]
    fn a_run_without_an_image_needs_a_runner_that_runs_processes() {
        let policy = DispatchPolicy::default();
        let plain = policy.needs(&TrustTier::Fork, &run("default", false, None));
        let imaged = policy.needs(&TrustTier::Fork, &run("default", false, Some("alpine")));
        assert!(!DOCKER_ONLY.satisfies(&plain));
        assert!(DOCKER_ONLY.satisfies(&imaged));
        let both = Offer {
            processes: Some(Isolation::Sandbox),
            ..DOCKER_ONLY
        };
        assert!(both.satisfies(&plain) && both.satisfies(&imaged));
        assert_eq!(both.to_string(), "container, processes: sandbox");
        assert_eq!(DOCKER_ONLY.to_string(), "container, images only");
    }

    #[test]
    fn privilege_needs_the_site_the_tier_and_the_runner() {
        let mut policy = DispatchPolicy::default();
        policy.default.privileged_repos.insert("o/dind".to_owned());
        let dind = run("default", true, Some("docker:dind"));
        let refused =
            |t: &str, repo: &str| policy.admit(repo, &tier(t), &dind).unwrap_err().to_string();
        assert!(refused("fork", "o/dind").contains("fork work of o/dind"));
        assert!(refused("partner:beta", "o/dind").contains("privileged"));
        assert!(refused("local", "o/other").contains("privileged_repos"));
        let needs = policy.admit("o/dind", &TrustTier::Repo, &dind).unwrap();
        assert_eq!(needs.isolation, Isolation::Container);
        assert!(!DOCKER_ONLY.satisfies(&needs));
        assert!(
            Offer {
                privileged: true,
                ..DOCKER_ONLY
            }
            .satisfies(&needs)
        );
    }

    #[test]
    fn closest_pattern_wins_and_untaken_tiers_are_refused() {
        let mut queue = QueuePolicy {
            tiers: [TierPattern::Tier(TrustTier::Local), TierPattern::AnyPartner].into(),
            ..QueuePolicy::default()
        };
        queue
            .isolation
            .insert(TierPattern::AnyPartner, Isolation::Container);
        queue
            .isolation
            .insert(TierPattern::Tier(tier("partner:beta")), Isolation::Sandbox);
        let policy = DispatchPolicy {
            queues: [("gpu".to_owned(), queue)].into(),
            default: QueuePolicy::default(),
        };
        let gpu = run("gpu", false, None);
        assert_eq!(
            policy.needs(&tier("partner:beta"), &gpu).isolation,
            Isolation::Sandbox
        );
        assert_eq!(
            policy.needs(&tier("partner:gamma"), &gpu).isolation,
            Isolation::Container
        );
        let refused = policy.admit("o/r", &TrustTier::Fork, &gpu).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "queue gpu does not take fork work (its site policy takes: local, partner)"
        );
        // Other queues keep the default.
        assert!(
            policy
                .admit("o/r", &TrustTier::Fork, &run("default", false, None))
                .is_ok()
        );
    }

    #[test]
    fn waiting_reason_names_what_is_missing() {
        let needs = DispatchPolicy::default().needs(&TrustTier::Fork, &run("default", false, None));
        let host = ("local".to_owned(), Offer::default());
        assert_eq!(
            waiting_reason(
                "default",
                &TrustTier::Fork,
                &needs,
                std::slice::from_ref(&host)
            )
            .unwrap(),
            "waiting for a runner with the sandbox on queue default \
             (fork work; connected: local (host))"
        );
        assert!(
            waiting_reason("default", &TrustTier::Fork, &needs, &[])
                .unwrap()
                .contains("none is connected")
        );
        let sandbox = ("r1".to_owned(), SANDBOX);
        assert_eq!(
            waiting_reason("default", &TrustTier::Fork, &needs, &[host, sandbox]),
            None
        );
    }
}
