//! Who may open which session: the tokens ExecuteCommand and ResumeSession hand out, and the
//! sessions they lead to.
//!
//! A token is 256 random bits, good for one websocket within [`TOKEN_TTL`] of being issued,
//! and names exactly one session (so one task and one container). It is kept only as its
//! SHA-256, so the registry never holds a usable token. Redeeming a token removes it, whether
//! or not the rest checks out. Pure bookkeeping under one lock, no I/O; the caller passes the
//! clock's time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::session::Control;

/// How long a token may wait for its websocket.
pub const TOKEN_TTL: Duration = Duration::from_secs(60);

/// What a session runs, fixed by ExecuteCommand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSpec {
    pub cluster: String,
    pub task_id: String,
    pub task_arn: String,
    pub container: String,
    /// The container's runtime id, for the target id the plugin knows the session by.
    pub runtime_id: String,
    /// The command as given, for the audit line.
    pub command_text: String,
    /// The command split into its arguments.
    pub command: Vec<String>,
}

impl SessionSpec {
    /// The target as the aws CLI names it to the plugin: `ecs:<cluster>_<task>_<runtimeId>`.
    pub fn target(&self) -> String {
        format!("ecs:{}_{}_{}", self.cluster, self.task_id, self.runtime_id)
    }
}

/// A session and its first token, as ExecuteCommand answers them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub session_id: String,
    pub token: String,
}

/// Why a token does not open a session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedeemError {
    #[error("the token is not valid: it was never issued, or it was used already")]
    Unknown,
    #[error("the token expired: it must be used within {}s of being issued", TOKEN_TTL.as_secs())]
    Expired,
    #[error("the token belongs to another session")]
    WrongSession,
    #[error("the session has ended")]
    Ended,
}

/// What a redeemed token opens.
#[derive(Debug)]
pub enum Redeemed {
    /// A new session: the caller starts its runner and [`Registry::started`] it.
    Open(Arc<SessionSpec>),
    /// A live session a client reconnects to: hand the socket to its runner here.
    Resume(mpsc::UnboundedSender<Control>),
}

#[derive(Debug)]
struct Token {
    session_id: String,
    expires: f64,
}

#[derive(Debug)]
enum State {
    /// Granted, its websocket not opened yet.
    Granted,
    /// Its runner is going; it takes control messages here.
    Live(mpsc::UnboundedSender<Control>),
}

#[derive(Debug)]
struct Entry {
    spec: Arc<SessionSpec>,
    state: State,
    /// When a granted session's token expires (a live one has no expiry here).
    expires: f64,
}

/// Sessions and tokens; see the module docs.
#[derive(Debug, Default)]
pub struct Registry {
    tokens: HashMap<[u8; 32], Token>,
    sessions: HashMap<String, Entry>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Registry {
    /// Sessions of `task_id` that are granted or live at `now`.
    pub fn count_for_task(&mut self, task_id: &str, now: f64) -> usize {
        self.purge(now);
        self.sessions.values().filter(|e| e.spec.task_id == task_id).count()
    }

    /// Records a new session with its first token (see [`Registry::count_for_task`] for the
    /// limit check, done by the caller under the same lock).
    pub fn grant(&mut self, spec: SessionSpec, session_id: String, token: String, now: f64) -> Grant {
        let expires = now + TOKEN_TTL.as_secs_f64();
        self.tokens.insert(digest(&token), Token { session_id: session_id.clone(), expires });
        self.sessions
            .insert(session_id.clone(), Entry { spec: Arc::new(spec), state: State::Granted, expires });
        Grant { session_id, token }
    }

    /// A token for a client of live session `session_id` to connect again (ResumeSession);
    /// `None` when the session is not live.
    pub fn resume(&mut self, session_id: &str, token: String, now: f64) -> Option<String> {
        self.purge(now);
        match self.sessions.get(session_id) {
            Some(Entry { state: State::Live(_), .. }) => {
                let expires = now + TOKEN_TTL.as_secs_f64();
                self.tokens.insert(digest(&token), Token { session_id: session_id.to_owned(), expires });
                Some(token)
            }
            _ => None,
        }
    }

    /// Uses `token` for the websocket of session `session_id` (from the URL's path).
    pub fn redeem(&mut self, session_id: &str, token: &str, now: f64) -> Result<Redeemed, RedeemError> {
        let found = self.tokens.remove(&digest(token)).ok_or(RedeemError::Unknown)?;
        if found.expires <= now {
            self.purge(now);
            return Err(RedeemError::Expired);
        }
        if found.session_id != session_id {
            return Err(RedeemError::WrongSession);
        }
        match self.sessions.get(session_id) {
            Some(Entry { state: State::Granted, spec, .. }) => Ok(Redeemed::Open(Arc::clone(spec))),
            Some(Entry { state: State::Live(control), .. }) => Ok(Redeemed::Resume(control.clone())),
            None => Err(RedeemError::Ended),
        }
    }

    /// The runner of an opened session takes control messages through `control`.
    pub fn started(&mut self, session_id: &str, control: mpsc::UnboundedSender<Control>) {
        if let Some(e) = self.sessions.get_mut(session_id) {
            e.state = State::Live(control);
        }
    }

    /// The control channel of a live session.
    pub fn control(&self, session_id: &str) -> Option<mpsc::UnboundedSender<Control>> {
        match self.sessions.get(session_id) {
            Some(Entry { state: State::Live(c), .. }) => Some(c.clone()),
            _ => None,
        }
    }

    /// Forgets a session: ended, or granted and given up. Its tokens go with it.
    pub fn remove(&mut self, session_id: &str) -> bool {
        self.tokens.retain(|_, t| t.session_id != session_id);
        self.sessions.remove(session_id).is_some()
    }

    /// How many sessions there are at `now` (live, or granted and not expired).
    pub fn len(&mut self, now: f64) -> usize {
        self.purge(now);
        self.sessions.len()
    }

    /// Drops expired tokens and the granted sessions nobody opened in time.
    fn purge(&mut self, now: f64) {
        self.tokens.retain(|_, t| t.expires > now);
        self.sessions.retain(|_, e| !matches!(e.state, State::Granted) || e.expires > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(task: &str) -> SessionSpec {
        SessionSpec {
            cluster: "default".into(),
            task_id: task.into(),
            task_arn: format!("arn:aws:ecs:us-east-1:000000000000:task/default/{task}"),
            container: "app".into(),
            runtime_id: "r1".into(),
            command_text: "/bin/sh".into(),
            command: vec!["/bin/sh".into()],
        }
    }

    #[test]
    fn a_token_opens_its_session_once() {
        let mut r = Registry::default();
        let g = r.grant(spec("t1"), "s1".into(), "tok1".into(), 100.0);
        assert_eq!(g, Grant { session_id: "s1".into(), token: "tok1".into() });
        assert_eq!(r.count_for_task("t1", 100.0), 1);
        assert_eq!(r.count_for_task("t2", 100.0), 0);
        match r.redeem("s1", "tok1", 159.0) {
            Ok(Redeemed::Open(s)) => assert_eq!(s.target(), "ecs:default_t1_r1"),
            other => panic!("{other:?}"),
        }
        let (tx, _rx) = mpsc::unbounded_channel();
        r.started("s1", tx);
        assert!(matches!(r.redeem("s1", "tok1", 159.0), Err(RedeemError::Unknown)));
        assert!(r.control("s1").is_some());
        assert!(r.remove("s1"));
        assert_eq!(r.len(159.0), 0);
    }

    #[test]
    fn an_unused_token_expires_with_its_session() {
        let mut r = Registry::default();
        r.grant(spec("t1"), "s1".into(), "tok1".into(), 100.0);
        assert!(matches!(r.redeem("s1", "tok1", 160.0), Err(RedeemError::Expired)));
        // Used (even expired) means gone.
        assert!(matches!(r.redeem("s1", "tok1", 100.0), Err(RedeemError::Unknown)));
        r.grant(spec("t1"), "s2".into(), "tok2".into(), 200.0);
        assert_eq!(r.count_for_task("t1", 259.0), 1);
        assert_eq!(r.count_for_task("t1", 260.0), 0);
        assert_eq!(r.len(260.0), 0);
    }

    #[test]
    fn a_token_is_bound_to_its_session() {
        let mut r = Registry::default();
        r.grant(spec("t1"), "s1".into(), "tok1".into(), 100.0);
        r.grant(spec("t2"), "s2".into(), "tok2".into(), 100.0);
        assert!(matches!(r.redeem("s2", "tok1", 101.0), Err(RedeemError::WrongSession)));
        // The attempt used the token up; s2's own still works.
        assert!(matches!(r.redeem("s1", "tok1", 101.0), Err(RedeemError::Unknown)));
        assert!(matches!(r.redeem("s2", "tok2", 101.0), Ok(Redeemed::Open(s)) if s.task_id == "t2"));
        assert!(matches!(r.redeem("s2", "nonsense", 101.0), Err(RedeemError::Unknown)));
    }

    #[test]
    fn only_live_sessions_can_be_resumed() {
        let mut r = Registry::default();
        r.grant(spec("t1"), "s1".into(), "tok1".into(), 100.0);
        assert_eq!(r.resume("s1", "again".into(), 101.0), None, "not opened yet");
        assert!(matches!(r.redeem("s1", "tok1", 101.0), Ok(Redeemed::Open(_))));
        let (tx, _rx) = mpsc::unbounded_channel();
        r.started("s1", tx);
        assert_eq!(r.resume("s1", "again".into(), 102.0), Some("again".into()));
        assert!(matches!(r.redeem("s1", "again", 103.0), Ok(Redeemed::Resume(_))));
        assert!(matches!(r.redeem("s1", "again", 103.0), Err(RedeemError::Unknown)));
        assert_eq!(r.resume("nope", "x".into(), 103.0), None);
        r.resume("s1", "late".into(), 104.0);
        r.remove("s1");
        assert!(matches!(r.redeem("s1", "late", 105.0), Err(RedeemError::Unknown)));
    }
}
