//! The engine's in-memory view of every task it knows (live ones and STOPPED ones kept for the
//! retention time), kept in step with the store: a change enters the view only once its write
//! is durable, and every change is published to subscribers.
//!
//! Reads (DescribeTasks, ListTasks, the task endpoints, placement, the cluster counters) are
//! served from here without a store transaction or a JSON decode.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, RwLock};

use tokio::sync::broadcast;

use crate::model::task::{TaskRecord, TaskStatus};
use crate::store::records::task_key;

/// How many events a slow subscriber may fall behind before it is told it lagged.
const EVENTS: usize = 4096;

/// One change of a task: its record as now durably recorded.
#[derive(Debug, Clone)]
pub struct TaskEvent {
    pub task: Arc<TaskRecord>,
}

#[derive(Debug)]
pub(crate) struct TaskView {
    tasks: RwLock<BTreeMap<String, Arc<TaskRecord>>>,
    events: broadcast::Sender<TaskEvent>,
}

impl TaskView {
    pub(crate) fn new(tasks: impl IntoIterator<Item = TaskRecord>) -> TaskView {
        let tasks = tasks.into_iter().map(|t| (task_key(&t.cluster, &t.id), Arc::new(t))).collect();
        TaskView { tasks: RwLock::new(tasks), events: broadcast::channel(EVENTS).0 }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<TaskRecord>>> {
        self.tasks.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a durable change and tells subscribers. Returns the shared record.
    pub(crate) fn put(&self, task: TaskRecord) -> Arc<TaskRecord> {
        let task = Arc::new(task);
        let key = task_key(&task.cluster, &task.id);
        self.tasks.write().unwrap_or_else(|e| e.into_inner()).insert(key, Arc::clone(&task));
        // No subscriber is not an error.
        let _ = self.events.send(TaskEvent { task: Arc::clone(&task) });
        task
    }

    pub(crate) fn remove(&self, cluster: &str, id: &str) {
        self.tasks.write().unwrap_or_else(|e| e.into_inner()).remove(&task_key(cluster, id));
    }

    pub(crate) fn get(&self, cluster: &str, id: &str) -> Option<Arc<TaskRecord>> {
        self.read().get(&task_key(cluster, id)).cloned()
    }

    /// A cluster's tasks (any status) in task id order, from just after `after`.
    pub(crate) fn of_cluster(&self, cluster: &str, after: Option<&str>) -> Vec<Arc<TaskRecord>> {
        let prefix = task_key(cluster, "");
        let from = match after {
            Some(id) => Bound::Excluded(task_key(cluster, id)),
            None => Bound::Included(prefix.clone()),
        };
        self.read()
            .range((from, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(_, t)| Arc::clone(t))
            .collect()
    }

    /// Every task that is not STOPPED, in any cluster.
    pub(crate) fn live(&self) -> Vec<Arc<TaskRecord>> {
        self.read().values().filter(|t| t.last != TaskStatus::Stopped).cloned().collect()
    }

    pub(crate) fn all(&self) -> Vec<Arc<TaskRecord>> {
        self.read().values().cloned().collect()
    }

    /// Tells subscribers that something about `task` kept outside its record changed (its
    /// protection), so they look at it again.
    pub(crate) fn touch(&self, task: Arc<TaskRecord>) {
        let _ = self.events.send(TaskEvent { task });
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<TaskEvent> {
        self.events.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(cluster: &str, id: &str, last: TaskStatus) -> TaskRecord {
        serde_json::from_value(serde_json::json!({
            "id": id, "cluster": cluster, "arn": format!("arn:{cluster}/{id}"),
            "definition": {}, "containersEffective": [], "group": "g", "launchType": "EC2",
            "desired": "RUNNING", "last": last, "version": 1, "createdAt": 1.0, "containers": []
        }))
        .unwrap()
    }

    #[test]
    fn clusters_list_in_id_order_from_a_cursor() {
        let view = TaskView::new([
            task("a", "2", TaskStatus::Running),
            task("a", "1", TaskStatus::Stopped),
            task("ab", "0", TaskStatus::Running),
            task("b", "0", TaskStatus::Running),
        ]);
        let ids = |v: Vec<Arc<TaskRecord>>| v.iter().map(|t| t.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(view.of_cluster("a", None)), ["1", "2"]);
        assert_eq!(ids(view.of_cluster("a", Some("1"))), ["2"]);
        assert_eq!(ids(view.of_cluster("ab", None)), ["0"]);
        assert_eq!(view.live().len(), 3);
    }

    #[test]
    fn changes_reach_subscribers_in_order() {
        let view = TaskView::new([]);
        let mut rx = view.subscribe();
        view.put(task("a", "1", TaskStatus::Pending));
        view.put(task("a", "1", TaskStatus::Running));
        assert_eq!(rx.try_recv().unwrap().task.last, TaskStatus::Pending);
        assert_eq!(rx.try_recv().unwrap().task.last, TaskStatus::Running);
        assert_eq!(view.get("a", "1").unwrap().last, TaskStatus::Running);
    }
}
