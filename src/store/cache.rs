//! Records read before and not written since, kept in memory as the JSON bytes the store
//! holds, so a hot read (DescribeTaskDefinition, a cluster check) costs no transaction and no
//! decode, and its bytes go into an answer as they are.
//!
//! Kept in step with commits: a commit drops the keys it wrote once it is visible, and a read
//! may fill a key only when no commit newer than the reader's snapshot wrote it (each key
//! remembers the number of the last commit that wrote it), so a slow reader can never put an
//! older value back after a newer commit.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Beyond this many keys the cache starts over: a bound, not a working-set policy.
const MAX_KEYS: usize = 20_000;

#[derive(Debug, Default)]
struct Slot {
    value: Option<Option<Arc<[u8]>>>,
    /// The number of the last commit that wrote the key.
    written: u64,
}

#[derive(Debug, Default)]
struct Slots {
    by_key: HashMap<(&'static str, String), Slot>,
    /// Readers whose snapshot is older than this may not fill: the commit numbers that
    /// would have told which of their values are stale were forgotten.
    floor: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Cache {
    slots: RwLock<Slots>,
}

impl Cache {
    /// The cached record: `Some(None)` when the key is known to be absent, `None` when unknown.
    pub(crate) fn get(&self, table: &'static str, key: &str) -> Option<Option<Arc<[u8]>>> {
        let slots = self.slots.read().unwrap_or_else(|e| e.into_inner());
        slots.by_key.get(&(table, key.to_owned())).and_then(|s| s.value.clone())
    }

    /// Keeps what a reader saw in a snapshot that holds every commit up to `seen`; `latest`
    /// is the newest commit number now.
    pub(crate) fn fill(
        &self,
        table: &'static str,
        key: &str,
        seen: u64,
        latest: u64,
        value: Option<Arc<[u8]>>,
    ) {
        let mut slots = self.slots.write().unwrap_or_else(|e| e.into_inner());
        if slots.by_key.len() >= MAX_KEYS {
            slots.by_key.clear();
            slots.floor = latest;
        }
        if seen < slots.floor {
            return;
        }
        let slot = slots.by_key.entry((table, key.to_owned())).or_default();
        if slot.written <= seen {
            slot.value = Some(value);
        }
    }

    /// Drops what commit `seq` wrote.
    pub(crate) fn invalidate(&self, seq: u64, keys: impl IntoIterator<Item = (&'static str, String)>) {
        let mut slots = self.slots.write().unwrap_or_else(|e| e.into_inner());
        for k in keys {
            let slot = slots.by_key.entry(k).or_default();
            slot.value = None;
            slot.written = slot.written.max(seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(s: &str) -> Option<Arc<[u8]>> {
        Some(Arc::from(s.as_bytes()))
    }

    #[test]
    fn a_reader_older_than_a_write_never_fills_it() {
        let c = Cache::default();
        c.fill("t", "k", 1, 1, bytes("v1"));
        assert_eq!(c.get("t", "k"), Some(bytes("v1")));
        // Commit 3 writes k; a reader whose snapshot may predate it comes back with v1.
        c.invalidate(3, [("t", "k".to_owned())]);
        assert_eq!(c.get("t", "k"), None);
        c.fill("t", "k", 2, 3, bytes("v1"));
        assert_eq!(c.get("t", "k"), None, "a stale value must not return");
        c.fill("t", "k", 3, 3, bytes("v3"));
        assert_eq!(c.get("t", "k"), Some(bytes("v3")));
        c.fill("t", "gone", 3, 3, None);
        assert_eq!(c.get("t", "gone"), Some(None), "absence is cached too");
        assert_eq!(c.get("other", "k"), None, "tables are apart");
    }
}
