//! Fair share on a shared queue: when several submitter groups (trust tiers: `local`, `repo`,
//! `fork`, each `partner:<site>`) have runs waiting on one queue, leases go out in proportion
//! to their weights (`[queues.NAME] shares` in `site.toml`), FIFO within a group, so one
//! group's burst cannot starve the others.
//!
//! Stride scheduling: each group has a *pass*, advanced by `STRIDE / weight` per lease; the
//! waiting group with the lowest pass is served next. A group that was idle rejoins at the
//! queue's current pass, so it banks no credit while away. In memory only: after a restart
//! every group starts level, which is fair.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tinyci_core::RunId;

/// The pass a weight-1 lease costs; a weight-`w` lease costs `STRIDE / w`.
const STRIDE: u64 = 1 << 20;

/// Every queue's groups and their passes.
#[derive(Debug, Default)]
pub(crate) struct FairShare {
    queues: HashMap<String, QueueShares>,
}

#[derive(Debug, Default)]
struct QueueShares {
    /// The pass of the group served last: where an idle group rejoins.
    now: u64,
    groups: BTreeMap<String, GroupPass>,
}

#[derive(Debug, Default, Clone, Copy)]
struct GroupPass {
    pass: u64,
    leased: u64,
}

/// One queue's waiting runs, FIFO within each submitter group. Looking for the next run costs
/// a scan of each group to its first run the runner may take, not of the whole backlog, so a
/// flood from one group does not slow leasing for the others.
#[derive(Debug, Default)]
pub(crate) struct Backlog {
    groups: BTreeMap<String, BTreeSet<RunId>>,
    group_of: HashMap<RunId, String>,
}

impl Backlog {
    /// Queues `run` in `group` (ids grow, so each group's order is FIFO).
    pub(crate) fn insert(&mut self, run: RunId, group: String) {
        if let Some(old) = self.group_of.insert(run, group.clone())
            && old != group
        {
            self.remove_from(&old, run);
        }
        self.groups.entry(group).or_default().insert(run);
    }

    /// Takes `run` off the backlog; whether it was on it.
    pub(crate) fn remove(&mut self, run: RunId) -> bool {
        match self.group_of.remove(&run) {
            Some(group) => {
                self.remove_from(&group, run);
                true
            }
            None => false,
        }
    }

    fn remove_from(&mut self, group: &str, run: RunId) {
        if let Some(ids) = self.groups.get_mut(group) {
            ids.remove(&run);
            if ids.is_empty() {
                self.groups.remove(group);
            }
        }
    }

    /// Runs waiting.
    pub(crate) fn len(&self) -> usize {
        self.group_of.len()
    }

    /// Each group's waiting runs, oldest first.
    pub(crate) fn groups(&self) -> impl Iterator<Item = (&str, &BTreeSet<RunId>)> {
        self.groups.iter().map(|(g, ids)| (g.as_str(), ids))
    }

    /// Every waiting run, in no particular order.
    pub(crate) fn runs(&self) -> impl Iterator<Item = RunId> + '_ {
        self.group_of.keys().copied()
    }
}

/// A group's oldest run a runner could take now.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub(crate) group: String,
    pub(crate) weight: u32,
    pub(crate) run: RunId,
}

impl FairShare {
    /// Which candidate to serve: the group with the lowest pass (an idle group counts as
    /// rejoining now); among equals, the oldest run.
    pub(crate) fn pick(&self, queue: &str, candidates: &[Candidate]) -> Option<usize> {
        let shares = self.queues.get(queue);
        let pass_of = |group: &str| {
            shares.map_or(0, |s| {
                s.groups.get(group).map_or(s.now, |g| g.pass.max(s.now))
            })
        };
        candidates
            .iter()
            .enumerate()
            .min_by_key(|(_, c)| (pass_of(&c.group), c.run))
            .map(|(i, _)| i)
    }

    /// Records a lease to `group` on `queue`.
    pub(crate) fn charge(&mut self, queue: &str, group: &str, weight: u32) {
        let shares = self.queues.entry(queue.to_owned()).or_default();
        let now = shares.now;
        let entry = shares.groups.entry(group.to_owned()).or_default();
        let start = entry.pass.max(now);
        entry.pass = start + STRIDE / u64::from(weight.max(1));
        entry.leased += 1;
        shares.now = start;
    }

    /// Leases each group got on `queue` since the site started.
    #[cfg(test)]
    fn leased(&self, queue: &str) -> BTreeMap<String, u64> {
        self.queues
            .get(queue)
            .map(|s| {
                s.groups
                    .iter()
                    .map(|(g, p)| (g.clone(), p.leased))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `(queue, group, leases since the site started)` for every group ever served.
    pub(crate) fn all_leased(&self) -> impl Iterator<Item = (&str, &str, u64)> {
        self.queues.iter().flat_map(|(queue, s)| {
            s.groups
                .iter()
                .map(move |(group, p)| (queue.as_str(), group.as_str(), p.leased))
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Serves `n` leases to always-backlogged groups; returns each group's count.
    fn serve(share: &mut FairShare, groups: &[(&str, u32)], n: usize) -> BTreeMap<String, u64> {
        for i in 0..n {
            let candidates: Vec<Candidate> = groups
                .iter()
                .enumerate()
                .map(|(j, (group, weight))| Candidate {
                    group: (*group).to_owned(),
                    weight: *weight,
                    run: RunId((i * groups.len() + j) as u64),
                })
                .collect();
            let pick = share.pick("q", &candidates).unwrap();
            share.charge("q", &candidates[pick].group, candidates[pick].weight);
        }
        share.leased("q")
    }

    #[test]
    fn backlogged_groups_get_leases_in_proportion_to_their_weights() {
        let mut share = FairShare::default();
        let got = serve(&mut share, &[("partner:beta", 3), ("partner:gamma", 1)], 40);
        assert_eq!(got["partner:beta"], 30);
        assert_eq!(got["partner:gamma"], 10);
    }

    #[test]
    fn a_backlog_keeps_each_group_fifo_and_forgets_what_leaves() {
        let mut backlog = Backlog::default();
        for (id, group) in [(3, "fork"), (1, "local"), (2, "fork"), (4, "local")] {
            backlog.insert(RunId(id), group.to_owned());
        }
        let order: Vec<(&str, Vec<u64>)> = backlog
            .groups()
            .map(|(g, ids)| (g, ids.iter().map(|r| r.get()).collect()))
            .collect();
        assert_eq!(order, [("fork", vec![2, 3]), ("local", vec![1, 4])]);
        assert!(backlog.remove(RunId(2)));
        assert!(!backlog.remove(RunId(2)));
        assert!(backlog.remove(RunId(3)));
        assert_eq!(backlog.len(), 2);
        assert_eq!(backlog.groups().count(), 1, "an emptied group is gone");
    }

    #[test]
    fn an_idle_group_rejoins_level_without_banked_credit() {
        let mut share = FairShare::default();
        serve(&mut share, &[("local", 1)], 100);
        // `fork` was idle for 100 leases: it now alternates with `local`, not 100 in a row.
        let got = serve(&mut share, &[("local", 1), ("fork", 1)], 10);
        assert_eq!(got["fork"], 5);
        assert_eq!(got["local"], 105);
    }
}
