//! Repeated measures: each figure keeps every run's value, and is reported
//! as the median with its runs; a target is a ratio to a baseline measured
//! in the same run, interleaved with it.

use serde_json::{Map, Value, json};

/// How many times each measure and its baseline run, interleaved
/// (`BENCH_RUNS`, default 3).
pub fn bench_runs() -> usize {
    std::env::var("BENCH_RUNS").ok().and_then(|runs| runs.parse().ok()).filter(|runs| *runs > 0).unwrap_or(3)
}

/// One figure's values, one per run (a run that failed adds nothing).
#[derive(Debug, Default, Clone)]
pub struct Runs(Vec<f64>);

impl Runs {
    pub fn push(&mut self, value: f64) {
        if value.is_finite() {
            self.0.push(value);
        }
    }

    pub fn add(&mut self, value: Option<f64>) {
        if let Some(value) = value {
            self.push(value);
        }
    }

    pub fn median(&self) -> Option<f64> {
        crate::median(self.0.clone())
    }

    pub fn values(&self) -> &[f64] {
        &self.0
    }

    /// Each run's ratio to its baseline's value in the same run (runs are
    /// paired by position: the measure and its baseline interleaved).
    pub fn ratios(&self, baseline: &Runs) -> Runs {
        Runs(self.0.iter().zip(&baseline.0).filter(|(_, b)| **b > 0.0).map(|(v, b)| v / b).collect())
    }

    /// `min..max` of the runs, for the report.
    pub fn spread(&self) -> String {
        let min = self.0.iter().copied().reduce(f64::min);
        let max = self.0.iter().copied().reduce(f64::max);
        match (min, max) {
            (Some(min), Some(max)) if self.0.len() > 1 => format!("{}..{}", short(min), short(max)),
            _ => String::new(),
        }
    }
}

impl From<Vec<f64>> for Runs {
    fn from(values: Vec<f64>) -> Self {
        let mut runs = Runs::default();
        for value in values {
            runs.push(value);
        }
        runs
    }
}

impl From<Option<f64>> for Runs {
    fn from(value: Option<f64>) -> Self {
        let mut runs = Runs::default();
        runs.add(value);
        runs
    }
}

fn short(value: f64) -> String {
    if value.abs() >= 100.0 { format!("{value:.0}") } else { format!("{value:.2}") }
}

fn rounded(value: f64) -> Value {
    json!((value * 100.0).round() / 100.0)
}

/// Writes `name` (the median, or null) and `name_runs` (every run).
pub fn put(summary: &mut Map<String, Value>, name: &str, runs: &Runs) {
    summary.insert(name.to_owned(), runs.median().map_or(Value::Null, rounded));
    summary.insert(format!("{name}_runs"), Value::Array(runs.0.iter().map(|v| rounded(*v)).collect()));
}

/// Which way a target points.
#[derive(Debug, Clone, Copy)]
pub enum Bound {
    AtLeast(f64),
    AtMost(f64),
}

/// A target: a figure's median (a ratio to a baseline, or a latency at a
/// rate derived from one) against its bound.
pub struct Target {
    pub name: &'static str,
    pub figure: Runs,
    pub bound: Bound,
}

impl Target {
    pub fn met(&self) -> Option<bool> {
        let median = self.figure.median()?;
        Some(match self.bound {
            Bound::AtLeast(floor) => median >= floor,
            Bound::AtMost(ceiling) => median <= ceiling,
        })
    }

    pub fn bound_text(&self) -> String {
        match self.bound {
            Bound::AtLeast(floor) => format!(">= {floor}"),
            Bound::AtMost(ceiling) => format!("<= {ceiling}"),
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "median": self.figure.median().map_or(Value::Null, rounded),
            "runs": self.figure.0.iter().map(|v| rounded(*v)).collect::<Vec<_>>(),
            "bound": self.bound_text(),
            "met": self.met(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_pair_runs_by_position_and_the_median_is_the_middle_run() {
        let measure = Runs(vec![10.0, 30.0, 20.0]);
        let baseline = Runs(vec![20.0, 30.0, 80.0]);
        assert_eq!(measure.ratios(&baseline).values(), &[0.5, 1.0, 0.25]);
        assert_eq!(measure.ratios(&baseline).median(), Some(0.5));
        assert_eq!(measure.spread(), "10.00..30.00");
        let target = Target { name: "t", figure: measure.ratios(&baseline), bound: Bound::AtLeast(0.7) };
        assert_eq!(target.met(), Some(false));
        let empty = Target { name: "t", figure: Runs::default(), bound: Bound::AtMost(1.0) };
        assert_eq!(empty.met(), None);
    }
}
