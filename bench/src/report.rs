//! The output format: `<system> <metric> <value>` lines and `ratio` lines.

use std::io::Write;

/// Print one figure, `<system> <metric> <value>`, and flush (a long run shows progress).
pub fn figure(system: &str, metric: &str, value: f64) {
    let value = if value.fract() == 0.0 || value.abs() >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{system} {metric} {value}");
    let _ = out.flush();
}

/// Print a goal's ratio: `ratio <name> <value> (goal <op> <target>: met|NOT met)`.
/// `higher_is_better` says whether the ratio must be at least or at most `target`.
pub fn ratio(name: &str, value: f64, target: f64, higher_is_better: bool) {
    let met = if higher_is_better {
        value >= target
    } else {
        value <= target
    };
    let op = if higher_is_better { ">=" } else { "<=" };
    let verdict = if met { "met" } else { "NOT met" };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "ratio {name} {value:.3} (goal {op} {target}: {verdict})"
    );
    let _ = out.flush();
}

/// Print a ratio that has no goal, for information: `ratio <name> <value> (for information)`.
pub fn ratio_info(name: &str, value: f64) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "ratio {name} {value:.3} (for information)");
    let _ = out.flush();
}

/// A progress or context line that is not a figure, on stderr.
pub fn note(msg: impl AsRef<str>) {
    eprintln!("bench: {}", msg.as_ref());
}

/// Percentile `q` (0..=100) of a histogram, in its unit.
pub fn pct(h: &hdrhistogram::Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q / 100.0) as f64
}
