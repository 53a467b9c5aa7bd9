//! The mass-removal guard: one bad ClearML answer must not tear down all routes.

use crate::routes::RouteSet;
use std::collections::HashSet;

/// One ClearML answer that would remove the routes of at least this share (numerator,
/// denominator) of the routed tasks is not believed until the next answer agrees.
const MASS_REMOVAL_SHARE: (usize, usize) = (1, 2);

/// A listing (after the by-id confirmation of missing tasks) whose plan would remove every route
/// of half or more of the routed tasks is held (the routes in force and the port allocator stay
/// as they were, the plan is dropped) until the next cycle's answer drops the same tasks (or a
/// subset of them). A server that lost its database, a wrong company, or a proxy answering an
/// empty list thus costs nothing; a real mass stop costs one poll interval.
#[derive(Debug, Default)]
pub(super) struct MassRemovalGuard {
    /// The tasks a held answer dropped; the next answer must drop no others to be believed.
    pending: Option<HashSet<String>>,
    /// Cycles held so far (the `task_router_clearml_removals_held_total` counter).
    held_total: u64,
}

/// What [`MassRemovalGuard::check`] decided.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum GuardVerdict {
    /// Believe the answer: plan from it.
    Proceed,
    /// Do not believe it yet: keep the routes in force.
    Hold { gone: usize, routed: usize },
}

impl MassRemovalGuard {
    /// `routed`: tasks with ClearML routes in force; `kept`: tasks that still have a route in
    /// the plan made from the answer (after the by-id confirmation of missing tasks). A task
    /// counts as dropped whether the answer lost it, stopped it or emptied its runtime.
    pub(super) fn check(&mut self, routed: &HashSet<String>, kept: &HashSet<&str>) -> GuardVerdict {
        let gone: HashSet<String> = routed
            .iter()
            .filter(|id| !kept.contains(id.as_str()))
            .cloned()
            .collect();
        let (num, den) = MASS_REMOVAL_SHARE;
        let mass = !gone.is_empty() && gone.len() * den >= routed.len() * num;
        if !mass {
            self.pending = None;
            return GuardVerdict::Proceed;
        }
        let confirmed = self
            .pending
            .as_ref()
            .is_some_and(|pending| gone.is_subset(pending));
        if confirmed {
            self.pending = None;
            return GuardVerdict::Proceed;
        }
        let verdict = GuardVerdict::Hold {
            gone: gone.len(),
            routed: routed.len(),
        };
        self.pending = Some(gone);
        self.held_total += 1;
        verdict
    }

    /// How many routed tasks a held answer dropped (0 when nothing is held).
    pub(super) fn held(&self) -> usize {
        self.pending.as_ref().map_or(0, HashSet::len)
    }

    /// How many answers were held so far.
    pub(super) fn held_cycles(&self) -> u64 {
        self.held_total
    }
}

/// The tasks that own at least one route of `set` (what the guard counts).
pub(super) fn route_owners(set: &RouteSet) -> HashSet<String> {
    set.tcp
        .values()
        .map(|r| r.owner.id.task_id.clone())
        .chain(set.http.values().map(|r| r.owner.id.task_id.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> HashSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_mass_removal_guard_wants_two_agreeing_answers() {
        let mut g = MassRemovalGuard::default();
        let routed = ids(&["a", "b", "c", "d"]);
        // One of four going: believed at once.
        assert_eq!(
            g.check(&routed, &["a", "b", "c"].into()),
            GuardVerdict::Proceed
        );
        // Every task missing: held, then believed when the next answer agrees.
        assert_eq!(
            g.check(&routed, &HashSet::new()),
            GuardVerdict::Hold { gone: 4, routed: 4 }
        );
        assert_eq!(g.held(), 4);
        assert_eq!(g.check(&routed, &HashSet::new()), GuardVerdict::Proceed);
        assert_eq!(g.held(), 0);
        // Half going, then the answer recovers: nothing goes, the pending drop is forgotten.
        assert_eq!(
            g.check(&routed, &["a", "b"].into()),
            GuardVerdict::Hold { gone: 2, routed: 4 }
        );
        assert_eq!(
            g.check(&routed, &["a", "b", "c", "d"].into()),
            GuardVerdict::Proceed
        );
        assert_eq!(g.held(), 0);
        assert_eq!(
            g.check(&routed, &["a", "b"].into()),
            GuardVerdict::Hold { gone: 2, routed: 4 }
        );
        // A second answer dropping others than the first: held again, on the new set.
        assert_eq!(
            g.check(&routed, &["c", "d"].into()),
            GuardVerdict::Hold { gone: 2, routed: 4 }
        );
        // A subset of what was held: believed.
        assert_eq!(
            g.check(&routed, &["a", "c", "d"].into()),
            GuardVerdict::Proceed
        );
        assert_eq!(g.held_cycles(), 4);
        // Nothing routed: nothing to guard.
        assert_eq!(
            g.check(&HashSet::new(), &HashSet::new()),
            GuardVerdict::Proceed
        );
    }
}
