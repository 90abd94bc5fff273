//! An in-memory runtime for testing the engine and the API without root or containerd.
//! Processes do not run: a test decides when they exit, and signals behave like a
//! well-behaved process (SIGTERM/SIGKILL end it with 128+signal) unless told otherwise.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{
    ContainerState, Event, ExecResult, Image, ImageConfig, ProcessStatus, Rootfs, Runtime, RuntimeError,
    Stdio,
};

#[derive(Debug, Default)]
struct State {
    images: HashMap<String, ImageConfig>,
    containers: BTreeMap<String, (BTreeMap<String, String>, ProcessStatus)>,
    ignore_signals: HashSet<i32>,
    ignoring: HashSet<String>,
    health: HashMap<String, i32>,
    signals: Vec<(String, i32)>,
    unavailable: bool,
    /// Calls refused while unavailable.
    refused: usize,
    next_pid: u32,
}

/// See the module docs.
#[derive(Debug)]
pub struct FakeRuntime {
    state: Mutex<State>,
    /// The subscriber of the newest `events()` call (a restarted engine subscribes again).
    events_tx: Mutex<Option<mpsc::Sender<Event>>>,
}

impl Default for FakeRuntime {
    fn default() -> Self {
        FakeRuntime {
            state: Mutex::new(State { next_pid: 100, ..State::default() }),
            events_tx: Mutex::new(None),
        }
    }
}

impl FakeRuntime {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes an image available under its normalised name.
    pub fn add_image(&self, name: &str, config: ImageConfig) {
        self.lock().images.insert(name.to_owned(), config);
    }

    /// Containers whose label `key` is `value`, by runtime id.
    pub fn find(&self, key: &str, value: &str) -> Vec<String> {
        self.lock()
            .containers
            .iter()
            .filter(|(_, (labels, _))| labels.get(key).map(String::as_str) == Some(value))
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub fn status(&self, id: &str) -> Option<ProcessStatus> {
        self.lock().containers.get(id).map(|(_, s)| *s)
    }

    /// Ends a running container's process with `code`.
    pub async fn exit(&self, id: &str, code: i32) {
        let at = now();
        {
            let mut s = self.lock();
            match s.containers.get_mut(id) {
                Some((_, st @ ProcessStatus::Running { .. })) => *st = ProcessStatus::Exited { code, at },
                _ => return,
            }
        }
        let tx = self.events_tx.lock().ok().and_then(|t| t.clone());
        if let Some(tx) = tx {
            let _ = tx.send(Event::Exit { id: id.to_owned(), code, at }).await;
        }
    }

    /// The container disappears without an exit being reported (as after a host reboot).
    pub fn forget(&self, id: &str) {
        self.lock().containers.remove(id);
    }

    /// The container ignores these signals (SIGKILL cannot be ignored).
    pub fn ignore_signal(&self, id: &str, signal: i32) {
        let mut s = self.lock();
        s.ignore_signals.insert(signal);
        s.ignoring.insert(id.to_owned());
    }

    /// Health checks of this container exit with `code` from now on.
    pub fn set_health(&self, id: &str, code: i32) {
        self.lock().health.insert(id.to_owned(), code);
    }

    /// The signals sent so far, in order.
    pub fn signals(&self) -> Vec<(String, i32)> {
        self.lock().signals.clone()
    }

    pub fn set_unavailable(&self, unavailable: bool) {
        self.lock().unavailable = unavailable;
    }

    /// How many calls were refused because the runtime was set unavailable.
    pub fn refused(&self) -> usize {
        self.lock().refused
    }

    fn check(&self) -> Result<(), RuntimeError> {
        let mut s = self.lock();
        if s.unavailable {
            s.refused += 1;
            Err(RuntimeError::Unavailable {
                address: "fake".into(),
                message: "set unavailable by the test".into(),
            })
        } else {
            Ok(())
        }
    }
}

fn now() -> f64 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    d.as_millis() as f64 / 1000.0
}

#[async_trait]
impl Runtime for FakeRuntime {
    async fn image(&self, reference: &str) -> Result<Image, RuntimeError> {
        self.check()?;
        let config = self.lock().images.get(reference).cloned().ok_or_else(|| {
            RuntimeError::ImageNotFound { reference: reference.to_owned(), namespace: "fake".into() }
        })?;
        Ok(Image {
            name: reference.to_owned(),
            digest: format!("sha256:{:064x}", reference.len()),
            config_digest: format!("sha256:{:064x}", reference.len() + 1),
            config,
        })
    }

    async fn prepare(&self, _id: &str, _image: &Image) -> Result<Rootfs, RuntimeError> {
        self.check()?;
        Ok(Rootfs { layers: vec![] })
    }

    async fn create(
        &self,
        id: &str,
        _spec: &oci_spec::runtime::Spec,
        labels: &BTreeMap<String, String>,
        _stdio: &Stdio,
    ) -> Result<(), RuntimeError> {
        self.check()?;
        let mut s = self.lock();
        if s.containers.contains_key(id) {
            return Err(RuntimeError::Failed {
                operation: "create",
                message: format!("container {id} exists"),
            });
        }
        s.containers.insert(id.to_owned(), (labels.clone(), ProcessStatus::Created));
        Ok(())
    }

    async fn start(&self, id: &str) -> Result<u32, RuntimeError> {
        self.check()?;
        let mut s = self.lock();
        s.next_pid += 1;
        let pid = s.next_pid;
        match s.containers.get_mut(id) {
            Some((_, st @ ProcessStatus::Created)) => {
                *st = ProcessStatus::Running { pid };
                Ok(pid)
            }
            _ => Err(RuntimeError::NotFound { what: "task", id: id.to_owned() }),
        }
    }

    async fn signal(&self, id: &str, signal: i32) -> Result<(), RuntimeError> {
        self.check()?;
        let ends = {
            let mut s = self.lock();
            s.signals.push((id.to_owned(), signal));
            let ignored = signal != 9 && s.ignoring.contains(id) && s.ignore_signals.contains(&signal);
            matches!(s.containers.get(id), Some((_, ProcessStatus::Running { .. })))
                && !ignored
                && matches!(signal, 2 | 9 | 15 | 10)
        };
        if ends {
            self.exit(id, 128 + signal).await;
        }
        Ok(())
    }

    async fn exec(
        &self,
        id: &str,
        _process: &oci_spec::runtime::Process,
        _timeout: Duration,
    ) -> Result<ExecResult, RuntimeError> {
        self.check()?;
        let code = self.lock().health.get(id).copied().unwrap_or(0);
        Ok(ExecResult { exit_code: code, output: format!("exit {code}") })
    }

    async fn remove(&self, id: &str) -> Result<Option<(i32, f64)>, RuntimeError> {
        self.check()?;
        let mut s = self.lock();
        match s.containers.get(id).map(|(_, st)| *st) {
            Some(ProcessStatus::Running { .. }) => Err(RuntimeError::Failed {
                operation: "remove",
                message: format!("container {id} is running"),
            }),
            Some(ProcessStatus::Exited { code, at }) => {
                s.containers.remove(id);
                Ok(Some((code, at)))
            }
            Some(_) => {
                s.containers.remove(id);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn list(&self) -> Result<Vec<ContainerState>, RuntimeError> {
        self.check()?;
        Ok(self
            .lock()
            .containers
            .iter()
            .map(|(id, (labels, status))| ContainerState {
                id: id.clone(),
                labels: labels.clone(),
                status: *status,
            })
            .collect())
    }

    fn events(&self) -> mpsc::Receiver<Event> {
        let (tx, rx) = mpsc::channel(1024);
        if let Ok(mut t) = self.events_tx.lock() {
            *t = Some(tx);
        }
        rx
    }
}
