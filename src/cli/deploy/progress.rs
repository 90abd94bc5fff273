//! What `ecsd deploy` tells while it works, on stderr (stdout keeps each verb's product: the
//! rendered definition, the diff, the report). `--output text`: plain lines, `warning: …` and
//! `error: …` prefixed. `--output json`: one JSON object per line and per step, event,
//! deployment change or stopped task (`{"time","level","event","msg","cluster","service",…}`),
//! ending with a `result` object that carries the exit code; no plain line is mixed in.

use std::sync::Mutex;
use std::time::SystemTime;

use serde_json::{Map, Value, json};

use super::error::DeployError;

#[derive(Debug)]
pub struct Progress {
    json: bool,
    cluster: String,
    service: String,
    /// What the result object says besides the exit code (outcome, revision, deployment).
    outcome: Mutex<Map<String, Value>>,
}

impl Progress {
    pub fn new(json: bool, cluster: &str, service: &str) -> Progress {
        Progress { json, cluster: cluster.to_owned(), service: service.to_owned(), outcome: Mutex::default() }
    }

    /// A step or event: `msg` as a line, or an object of kind `event` with `fields`.
    pub fn say(&self, event: &str, msg: &str, fields: Value) {
        self.line("info", event, msg, fields, "");
    }

    pub fn warn(&self, msg: &str) {
        self.line("warning", "warning", msg, Value::Null, "warning: ");
    }

    /// A failure of the deployment (not of the command: see [`Progress::finish`]).
    pub fn fail(&self, event: &str, msg: &str, fields: Value) {
        self.line("error", event, msg, fields, "error: ");
    }

    /// Several deployment lines at once (text) or one object each (JSON).
    pub fn deployments(&self, lines: &[(String, Value)]) {
        if self.json {
            for (msg, fields) in lines {
                self.say("deployment", msg, fields.clone());
            }
        } else {
            let text: Vec<&str> = lines.iter().map(|(l, _)| l.as_str()).collect();
            eprintln!("{}", text.join("\n"));
        }
    }

    /// Records what the result object will say: `outcome` (deployed, unchanged, failed,
    /// timeout, interrupted, rolled-back, rollback-failed, …) and more fields.
    pub fn outcome(&self, outcome: &str, fields: Value) {
        let mut o = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
        o.insert("outcome".to_owned(), json!(outcome));
        if let Value::Object(fields) = fields {
            o.extend(fields);
        }
    }

    /// The end of the run: the exit code, the error said (a line, or the result object).
    pub fn finish(&self, result: Result<u8, DeployError>) -> u8 {
        let (code, error) = match &result {
            Ok(code) => (*code, None),
            Err(e) => (e.exit_code(), Some(e.to_string())),
        };
        if !self.json {
            if let Some(e) = error {
                eprintln!("error: {e}");
            }
            return code;
        }
        let mut fields = self.outcome.lock().unwrap_or_else(|e| e.into_inner()).clone();
        fields.insert("exit".to_owned(), json!(code));
        if let Some(e) = &error {
            fields.insert("error".to_owned(), json!(e));
            fields.entry("outcome").or_insert(json!("error"));
        }
        let msg = error.unwrap_or_else(|| format!("exit {code}"));
        self.line(if code == 0 { "info" } else { "error" }, "result", &msg, Value::Object(fields), "");
        code
    }

    fn line(&self, level: &str, event: &str, msg: &str, fields: Value, prefix: &str) {
        if !self.json {
            eprintln!("{prefix}{msg}");
            return;
        }
        let time = crate::runtime::logs::format_rfc3339(SystemTime::now(), false);
        let mut object = json!({
            "time": time, "level": level, "event": event, "msg": msg,
            "cluster": self.cluster, "service": self.service,
        });
        if let (Value::Object(o), Value::Object(fields)) = (&mut object, fields) {
            o.extend(fields);
        }
        eprintln!("{object}");
    }
}
