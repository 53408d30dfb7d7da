//! The Prometheus text exposition format, which each layer writes its own metrics
//! in (`/metrics` joins them).

use std::fmt::{Display, Write as _};

/// Appends the `# HELP` and `# TYPE` lines of the metric family `name` (`kind`:
/// `counter`, `gauge` or `histogram`).
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Appends a family of one unlabelled sample: its header and `name value`.
pub fn sample(out: &mut String, name: &str, kind: &str, help: &str, value: impl Display) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}
