//! What changed between two programmed route sets, as an [`ApplyReport`] (both nginx owners
//! report through it).

use std::collections::BTreeMap;
use std::fmt::Display;

use crate::routes::{ApplyReport, RouteRef};

/// Counts what changed between two programmed sets; `same` says whether two versions of a route
/// are served the same way.
pub fn diff<K: Ord + Display, V>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
    failed: Vec<(RouteRef, String)>,
    same: impl Fn(&V, &V) -> bool,
) -> ApplyReport {
    let mut report = ApplyReport {
        failed,
        ..ApplyReport::default()
    };
    for (k, v) in new {
        match old.get(k) {
            None => report.added += 1,
            Some(o) if !same(o, v) => report.changed += 1,
            Some(_) => {}
        }
    }
    report.removed = old.keys().filter(|k| !new.contains_key(*k)).count();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_counts_added_changed_removed() {
        let old: BTreeMap<String, u8> = [("a".into(), 1), ("b".into(), 1), ("c".into(), 1)].into();
        let new: BTreeMap<String, u8> = [("a".into(), 1), ("b".into(), 2), ("d".into(), 1)].into();
        let r = diff(&old, &new, vec![], |a, b| a == b);
        assert_eq!((r.added, r.changed, r.removed), (1, 1, 1));
        assert!(diff(&new, &new, vec![], |a, b| a == b).is_noop());
    }
}
