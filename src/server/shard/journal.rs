//! The hand-off between the shard's messaging and its journal writer
//! (`server::journal`), when the store is on disk.
//!
//! In: the writer task's calls through [`JournalSource`]: take the records the owner's
//! store encoded, restate everything for a compaction, report how far the journal is
//! durable, report the disk budget. Out: at the end of every turn that encoded records,
//! the writer's signal raised; on `on_durable`, the owner's held answers released into
//! the messaging output and flushed to sockets like any turn's output.

use std::rc::Rc;
use std::time::Instant;

use crate::msg::store::{MemStore, Store};
use crate::server::journal::{JournalSource, Signal};

use super::Shard;

impl Shard {
    /// The writer's signal: raised at the end of a turn that encoded records.
    pub fn attach_journal(
        &mut self,
        signal: Rc<Signal>,
        stats: Rc<std::cell::RefCell<crate::server::journal::JournalStats>>,
    ) {
        self.journal = Some(signal);
        self.journal_stats = Some(stats);
    }

    fn store_mut(&mut self) -> Option<&mut MemStore> {
        Some(self.msg.as_mut()?.owner_mut().store_mut())
    }

    /// Raises the writer's signal if the store encoded records this turn.
    pub(super) fn signal_journal(&mut self) {
        let Some(signal) = &self.journal else { return };
        let pending = self
            .msg
            .as_ref()
            .and_then(|m| m.owner().store().journal())
            .is_some_and(|j| j.encoder.pending() > 0);
        if pending {
            signal.raise();
        }
    }
}

impl JournalSource for Shard {
    fn take_journal(&mut self) -> Option<(Vec<u8>, u64)> {
        let journal = self.store_mut()?.journal_mut()?;
        if journal.encoder.pending() == 0 {
            return None;
        }
        let end = journal.encoder.end();
        Some((journal.encoder.take(Vec::new()), end))
    }

    fn restate_journal(&mut self) -> (Vec<u8>, Vec<u8>, u64) {
        let before = self.take_journal().map(|(bytes, _)| bytes).unwrap_or_default();
        let Some(msg) = self.msg.as_mut() else {
            return (before, Vec::new(), 0);
        };
        msg.owner_mut().restate_all();
        let (restated, end) = self.take_journal().unwrap_or_else(|| {
            (
                Vec::new(),
                self.msg.as_ref().map_or(0, |m| m.owner().store().journal_end()),
            )
        });
        (before, restated, end)
    }

    fn on_durable(&mut self, upto: u64) {
        self.now = Instant::now();
        if let Some(msg) = self.msg.as_mut() {
            msg.on_durable(upto, self.now);
        }
        self.flush_turn();
    }

    fn set_store_full(&mut self, full: bool) {
        if let Some(store) = self.store_mut() {
            store.set_full(full);
        }
    }
}
