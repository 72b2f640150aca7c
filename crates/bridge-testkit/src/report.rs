//! The kit's report.

use std::fmt;

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckResult {
    /// Held.
    Passed,
    /// Did not hold: what was expected and what happened.
    Failed(String),
    /// Not run, with the reason.
    Skipped(String),
}

/// Every check's outcome, in the order run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// `(check name, outcome)`.
    pub checks: Vec<(String, CheckResult)>,
}

impl Report {
    /// Records an outcome.
    pub fn record(&mut self, name: &str, result: Result<(), String>) {
        let r = match result {
            Ok(()) => CheckResult::Passed,
            Err(e) => CheckResult::Failed(e),
        };
        self.checks.push((name.to_owned(), r));
    }

    /// Records a skipped check.
    pub fn skip(&mut self, name: &str, why: &str) {
        self.checks.push((name.to_owned(), CheckResult::Skipped(why.to_owned())));
    }

    /// The failed checks.
    pub fn failures(&self) -> Vec<(&str, &str)> {
        self.checks
            .iter()
            .filter_map(|(n, r)| match r {
                CheckResult::Failed(e) => Some((n.as_str(), e.as_str())),
                _ => None,
            })
            .collect()
    }

    /// The outcome of the check `name`, if it ran.
    pub fn get(&self, name: &str) -> Option<&CheckResult> {
        self.checks.iter().find(|(n, _)| n == name).map(|(_, r)| r)
    }

    /// Panics, listing every failure, unless all checks passed or were skipped.
    pub fn assert_passed(&self) {
        if !self.failures().is_empty() {
            panic!("connector conformance kit failed:\n{self}");
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, r) in &self.checks {
            match r {
                CheckResult::Passed => writeln!(f, "  ok      {name}")?,
                CheckResult::Failed(e) => writeln!(f, "  FAILED  {name}: {e}")?,
                CheckResult::Skipped(why) => writeln!(f, "  skipped {name}: {why}")?,
            }
        }
        let failed = self.failures().len();
        write!(f, "{} checks, {} failed", self.checks.len(), failed)
    }
}
