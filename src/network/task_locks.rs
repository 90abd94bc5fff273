//! Turns per task: a task's network operations run one after another (a create and the
//! removals of its supervisor and of the sweeper never interleave), while different
//! tasks' operations run side by side. Each task also counts its creates, so an undo
//! scheduled for a cancelled create can tell whether a newer create came after it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
struct Slot {
    turn: tokio::sync::Mutex<()>,
    creates: AtomicU64,
}

type Slots = Arc<Mutex<HashMap<String, Arc<Slot>>>>;

#[derive(Debug, Default)]
pub(crate) struct TaskLocks {
    slots: Slots,
}

impl TaskLocks {
    /// A handle on the task's slot; the slot lives as long as someone holds one.
    pub(crate) fn ticket(&self, task_id: &str) -> Ticket {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = slots.entry(task_id.to_owned()).or_default().clone();
        Ticket { slots: self.slots.clone(), task_id: task_id.to_owned(), slot: Some(slot) }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[derive(Debug)]
pub(crate) struct Ticket {
    slots: Slots,
    task_id: String,
    slot: Option<Arc<Slot>>,
}

impl Ticket {
    fn slot(&self) -> &Slot {
        self.slot.as_ref().expect("a ticket has its slot until dropped")
    }

    /// Waits for the task's turn (first come, first served).
    pub(crate) async fn turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.slot().turn.lock().await
    }

    /// Counts a new create of the task; returns its number.
    pub(crate) fn count_create(&self) -> u64 {
        self.slot().creates.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The number of the task's latest create.
    pub(crate) fn latest_create(&self) -> u64 {
        self.slot().creates.load(Ordering::SeqCst)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        drop(self.slot.take());
        // Only the map's own reference left: nobody waits on this task.
        if slots.get(&self.task_id).is_some_and(|s| Arc::strong_count(s) == 1) {
            slots.remove(&self.task_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn turns_are_per_task_and_slots_go_with_their_last_ticket() {
        let locks = TaskLocks::default();
        let a = locks.ticket("a");
        let a2 = locks.ticket("a");
        let b = locks.ticket("b");
        assert_eq!(locks.len(), 2);
        let held = a.turn().await;
        assert!(a2.slot().turn.try_lock().is_err(), "a second turn of the same task waits");
        drop(b.turn().await);
        drop(held);
        assert!(a2.slot().turn.try_lock().is_ok());
        assert_eq!((a.count_create(), a2.count_create(), a.latest_create()), (1, 2, 2));
        drop((a, b));
        assert_eq!(locks.len(), 1, "a2 still holds task a's slot");
        drop(a2);
        assert_eq!(locks.len(), 0);
        assert_eq!(locks.ticket("a").latest_create(), 0, "a new slot counts from zero");
    }
}
