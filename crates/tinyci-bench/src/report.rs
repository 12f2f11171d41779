//! One figure measured beside its baseline, and the table they are printed in.

use std::fmt;
use std::time::Duration;

/// Which way is better for a figure's unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Better {
    /// Throughputs: calls/s, MB/s.
    Higher,
    /// Latencies and memory.
    Lower,
}

/// One measured figure: ours, the baseline's, and the goal stated as a ratio.
#[derive(Debug, Clone)]
pub(crate) struct Figure {
    /// What was measured, e.g. "rpc 64 in flight: calls/s".
    pub(crate) name: String,
    /// Unit of `ours` and `baseline`, e.g. "calls/s", "ms", "KiB".
    pub(crate) unit: &'static str,
    pub(crate) ours: f64,
    /// The baseline's value in the same unit; `None` when a figure has no baseline (an
    /// absolute figure such as p99 submission-to-lease) or the baseline was skipped.
    pub(crate) baseline: Option<f64>,
    /// The baseline's name, e.g. "tonic", "PostgreSQL SKIP LOCKED".
    pub(crate) baseline_name: &'static str,
    pub(crate) better: Better,
    /// The goal in words, e.g. "≥ 1.5× tonic" or "< 10 ms"; empty when there is none.
    pub(crate) goal: String,
    /// Whether the goal was met, when there is one and it could be judged.
    pub(crate) goal_met: Option<bool>,
}

impl Figure {
    /// A figure with no goal; `baseline` is `(value, name)`, or `None` for an absolute figure.
    pub(crate) fn new(
        name: impl Into<String>,
        unit: &'static str,
        better: Better,
        ours: f64,
        baseline: Option<(f64, &'static str)>,
    ) -> Self {
        Self {
            name: name.into(),
            unit,
            ours,
            baseline: baseline.map(|(value, _)| value),
            baseline_name: baseline.map_or("", |(_, name)| name),
            better,
            goal: String::new(),
            goal_met: None,
        }
    }

    /// The same figure judged against `goal` (in words); `met` is `None` when it could not be
    /// judged.
    pub(crate) fn with_goal(mut self, goal: impl Into<String>, met: Option<bool>) -> Self {
        self.goal = goal.into();
        self.goal_met = met;
        self
    }

    /// Ours over the baseline, oriented so that > 1 means ours is better.
    pub(crate) fn advantage(&self) -> Option<f64> {
        let baseline = self.baseline?;
        if baseline == 0.0 || self.ours == 0.0 {
            return None;
        }
        Some(match self.better {
            Better::Higher => self.ours / baseline,
            Better::Lower => baseline / self.ours,
        })
    }
}

impl fmt::Display for Figure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<52} {:>12.2} {:<8}", self.name, self.ours, self.unit)?;
        match self.baseline {
            Some(baseline) => write!(f, " {:>12.2} ({})", baseline, self.baseline_name)?,
            None => write!(f, " {:>12} {:<}", "-", "")?,
        }
        if let Some(advantage) = self.advantage() {
            write!(f, "  {advantage:.2}×")?;
        }
        if !self.goal.is_empty() {
            let verdict = match self.goal_met {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "not judged",
            };
            write!(f, "  goal {}: {verdict}", self.goal)?;
        }
        Ok(())
    }
}

/// Prints figures as they come, so a long run shows progress.
pub(crate) fn print(figures: &[Figure]) {
    for figure in figures {
        println!("{figure}");
    }
}

/// Latency percentiles of a sample (sorted in place). `q` in 0..=1.
pub(crate) fn percentile(samples: &mut [Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let rank = ((samples.len() - 1) as f64 * q).round() as usize;
    samples[rank.min(samples.len() - 1)]
}

/// Milliseconds as f64, for figures.
pub(crate) fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advantage_is_oriented_so_bigger_is_better() {
        let mut figure = Figure {
            name: "x".into(),
            unit: "calls/s",
            ours: 300.0,
            baseline: Some(100.0),
            baseline_name: "b",
            better: Better::Higher,
            goal: String::new(),
            goal_met: None,
        };
        assert_eq!(figure.advantage(), Some(3.0));
        figure.better = Better::Lower;
        assert!((figure.advantage().unwrap() - 1.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn percentiles_pick_ranks() {
        let mut samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        samples.reverse();
        assert_eq!(percentile(&mut samples, 0.5), Duration::from_millis(51));
        assert_eq!(percentile(&mut samples, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&mut samples, 0.0), Duration::from_millis(1));
    }
}
