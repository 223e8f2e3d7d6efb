//! The load binary's one table: a row per target of the performance issue, each with
//! keycard's figure, the baseline measured in the same run, their ratio and the target.

use std::fmt::Write as _;

/// Which way a ratio must go to meet its target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    /// keycard / baseline must be at least the bound (throughput: "at least 60% of raw").
    AtLeast(f64),
    /// keycard / baseline must be at most the bound (latency: "at most 1.5x raw").
    AtMost(f64),
    /// No baseline: the figure itself is compared with the bound (a size, a time).
    Absolute { at_most: f64 },
}

/// One row of the table.
#[derive(Debug, Clone)]
pub struct Row {
    /// What is measured, e.g. "FetchX509SVID p99, reused connection".
    pub what: String,
    /// keycard's figure as a number in `unit`.
    pub keycard: f64,
    /// The baseline measured in the same run, in `unit`; `None` for absolute targets.
    pub baseline: Option<f64>,
    /// What the baseline is, e.g. "raw tonic, same payload".
    pub baseline_name: String,
    /// Unit of both figures, e.g. "µs", "SVIDs/s", "MiB", "s".
    pub unit: String,
    /// The target the row is held to.
    pub goal: Goal,
}

impl Row {
    /// keycard / baseline, when there is a baseline.
    pub fn ratio(&self) -> Option<f64> {
        self.baseline.filter(|b| *b > 0.0).map(|b| self.keycard / b)
    }

    /// Whether the target is met.
    pub fn met(&self) -> bool {
        match (self.goal, self.ratio()) {
            (Goal::AtLeast(bound), Some(r)) => r >= bound,
            (Goal::AtMost(bound), Some(r)) => r <= bound,
            (Goal::Absolute { at_most }, _) => self.keycard <= at_most,
            (_, None) => false,
        }
    }

    fn target_text(&self) -> String {
        match self.goal {
            Goal::AtLeast(b) => format!(">= {:.0}% of baseline", b * 100.0),
            Goal::AtMost(b) => format!("<= {b:.2}x baseline"),
            Goal::Absolute { at_most } => format!("<= {} {}", figure(at_most), self.unit),
        }
    }
}

/// A figure with as many digits as it deserves.
pub fn figure(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// The rows as one Markdown table (what README.md's Performance section shows).
pub fn render(rows: &[Row]) -> String {
    let mut out = String::from(
        "| what | keycard | baseline (same run) | ratio | target | met |\n|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let baseline = match r.baseline {
            Some(b) => format!("{} {} ({})", figure(b), r.unit, r.baseline_name),
            None => r.baseline_name.clone(),
        };
        let ratio = r.ratio().map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".to_owned());
        let _ = writeln!(
            out,
            "| {} | {} {} | {} | {} | {} | {} |",
            r.what,
            figure(r.keycard),
            r.unit,
            baseline,
            ratio,
            r.target_text(),
            if r.met() { "yes" } else { "**no**" }
        );
    }
    out
}
