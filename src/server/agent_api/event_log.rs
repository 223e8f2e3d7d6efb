//! The entry event log behind sync by cursor: every change the authorized-entry cache
//! applies (an entry created, changed or deleted) gets the next position of this log, and an
//! agent's cursor names the last position it has seen, so an idle agent costs a comparison.
//!
//! # Positions are apply order, not store revisions
//!
//! A position is handed out when the server *applies* a change it read from the datastore,
//! never taken from the entry's revision. The two orders agree on SQLite (writers are
//! serialized, so revisions commit in order), but a store with concurrent writers (the HA
//! PostgreSQL one) can make revision 7 visible before revision 5 commits. Were cursors
//! store revisions, an agent that had seen 7 would never be sent 5. Here the late change is
//! appended when it is read, at a position above every cursor already served, so it reaches
//! every agent. (Reading such a late commit from the datastore at all is the follower's
//! job: it must re-read below its revision until no transaction below it is still open.)
//!
//! # Bounds
//!
//! The log keeps the last [`MAX_EVENTS`] events; a cursor older than the oldest one kept,
//! from before a restart, or from another server (the log's random `epoch` differs) gets a
//! full answer, never a silent gap.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;

use keycard_workload_api::SpiffeId;

use crate::selector::SelectorSet;
use crate::server::entry::Entry;

/// Most events kept; older cursors get a full answer.
pub const MAX_EVENTS: usize = 100_000;

/// One applied change of one entry.
#[derive(Debug, Clone)]
pub struct Event {
    /// The entry as it was before (None: it was created).
    pub before: Option<Arc<Entry>>,
    /// The entry as it is after (None: it was deleted).
    pub after: Option<Arc<Entry>>,
}

/// What changed for one agent since its cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentChanges {
    /// The agent must replace its copy (the log cannot tell it what changed).
    Full,
    /// Entries to send (the latest state of each) and IDs to drop.
    Delta {
        /// Changed or newly authorized entries, by ID.
        changed: BTreeMap<String, Arc<Entry>>,
        /// IDs deleted or no longer authorized, that the agent may hold.
        removed: Vec<String>,
    },
}

/// The log; see the module documentation.
#[derive(Debug)]
pub struct EventLog {
    /// Random per log, so cursors of another server or an earlier run are recognized.
    epoch: u64,
    /// Position of the event before the oldest kept (the oldest cursor still answerable).
    floor: u64,
    events: VecDeque<Event>,
    limit: usize,
}

impl Default for EventLog {
    fn default() -> Self {
        Self::with_limit(MAX_EVENTS)
    }
}

impl EventLog {
    /// An empty log keeping at most `limit` events, with a fresh random epoch.
    pub fn with_limit(limit: usize) -> Self {
        Self { epoch: rand::random(), floor: 0, events: VecDeque::new(), limit: limit.max(1) }
    }

    /// The log's epoch (part of every cursor it serves).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The position of the newest event (0: none yet).
    pub fn head(&self) -> u64 {
        self.floor + self.events.len() as u64
    }

    /// Appends a change at the next position, dropping the oldest event beyond the limit.
    pub fn push(&mut self, event: Event) {
        self.events.push_back(event);
        while self.events.len() > self.limit {
            self.events.pop_front();
            self.floor += 1;
        }
    }

    /// The events after position `since`, or None when the log no longer (or never) had
    /// them: `since` below the oldest kept or above the head.
    pub fn since(&self, since: u64) -> Option<impl Iterator<Item = &Event>> {
        if since < self.floor || since > self.head() {
            return None;
        }
        Some(self.events.range((since - self.floor) as usize..))
    }

    /// What changed since `since` for the agent with node selectors `selectors` whose
    /// authorized parents are `parents` (its own ID and the IDs of the node aliases it
    /// matches, computed now). Any change of a node alias the agent matches, before or after
    /// the change, changes `parents` itself: that agent gets [`AgentChanges::Full`].
    pub fn changes_for(
        &self,
        since: u64,
        server_id: &SpiffeId,
        selectors: &SelectorSet,
        parents: &HashSet<&SpiffeId>,
    ) -> AgentChanges {
        let Some(events) = self.since(since) else { return AgentChanges::Full };
        let matching_alias = |e: &Option<Arc<Entry>>| {
            e.as_ref().is_some_and(|e| {
                &e.spec.parent_id == server_id && e.spec.selectors.is_subset_of(selectors)
            })
        };
        let mine = |e: &Option<Arc<Entry>>| {
            e.as_ref().is_some_and(|e| parents.contains(&e.spec.parent_id))
        };
        let mut latest: BTreeMap<&str, Option<Arc<Entry>>> = BTreeMap::new();
        for event in events {
            if matching_alias(&event.before) || matching_alias(&event.after) {
                return AgentChanges::Full;
            }
            let Some(id) = event.after.as_ref().or(event.before.as_ref()).map(|e| e.id.as_str())
            else {
                continue;
            };
            if mine(&event.after) {
                latest.insert(id, event.after.clone());
            } else if mine(&event.before) || latest.contains_key(id) {
                latest.insert(id, None);
            }
        }
        let mut changed = BTreeMap::new();
        let mut removed = Vec::new();
        for (id, entry) in latest {
            match entry {
                Some(e) => {
                    changed.insert(id.to_owned(), e);
                }
                None => removed.push(id.to_owned()),
            }
        }
        AgentChanges::Delta { changed, removed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_survive_trimming_and_old_cursors_are_refused() {
        let mut log = EventLog::with_limit(3);
        assert_eq!(log.head(), 0);
        assert_eq!(log.since(0).map(Iterator::count), Some(0));
        for _ in 0..5 {
            log.push(Event { before: None, after: None });
        }
        assert_eq!(log.head(), 5);
        assert!(log.since(1).is_none(), "trimmed: the gap must not be silent");
        assert_eq!(log.since(2).map(Iterator::count), Some(3));
        assert_eq!(log.since(5).map(Iterator::count), Some(0));
        assert!(log.since(6).is_none(), "a cursor from the future is someone else's");
        assert_ne!(EventLog::default().epoch(), EventLog::default().epoch());
    }
}
