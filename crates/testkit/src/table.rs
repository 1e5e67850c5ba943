//! Table-driven tests: a slice of cases, each with a name, checked by one function that
//! names the case that failed.

use std::panic::{AssertUnwindSafe, catch_unwind};

/// Checks every case of `cases` with `check`, each to its end even after an earlier one
/// failed, then fails naming every case that failed, with its message.
pub fn check_each<C>(cases: &[C], name: impl Fn(&C) -> &str, check: impl Fn(&C)) {
    let mut failed = Vec::new();
    for case in cases {
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| check(case))) {
            let why = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            failed.push(format!("{}: {why}", name(case)));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} cases failed:\n{}",
        failed.len(),
        cases.len(),
        failed.join("\n")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_case_runs_and_the_failures_are_named() {
        let ran = std::cell::Cell::new(0);
        let r = catch_unwind(AssertUnwindSafe(|| {
            check_each(
                &[("one", 1), ("two", 2), ("three", 3)],
                |c| c.0,
                |c| {
                    ran.set(ran.get() + 1);
                    assert!(c.1 != 2, "two is refused");
                },
            )
        }));
        assert_eq!(ran.get(), 3);
        let e = r.unwrap_err();
        let msg = e.downcast_ref::<String>().unwrap();
        assert!(msg.contains("1 of 3 cases failed"), "{msg}");
        assert!(msg.contains("two: two is refused"), "{msg}");
        check_each(&[("fine", ())], |c| c.0, |_| {});
    }
}
