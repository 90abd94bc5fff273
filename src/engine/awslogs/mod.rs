//! The `awslogs` log driver: ships each container's output to CloudWatch Logs.
//!
//! The containerd log driver (`runtime::logs`) always writes the container's json-file log,
//! so `ecsd logs` keeps working and the container never waits for CloudWatch Logs. For a
//! container whose `logConfiguration` says `awslogs`, a shipper here tails that file (across
//! rotations), assembles events ([`batch`]), and sends them with PutLogEvents using the
//! task's execution role, retrying with back-off. After each batch is taken it writes a
//! checkpoint next to the log, so a restarted ecsd resumes where the last one stopped.
//!
//! Modes: `blocking` (the default) reads the file only as fast as batches are sent (nothing
//! is lost while the rotated files still hold it); `non-blocking` keeps reading into a
//! buffer of `max-buffer-size` bytes and drops what does not fit.
//!
//! Before a task is reported STOPPED the engine calls [`Shippers::finish`]: each shipper
//! reads the log to its end (the log driver has exited by then), sends what is left, and is
//! given a bounded time to do so.

pub mod batch;

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use super::Engine;
use super::registry_auth::{AwsKeys, KeysError};
use crate::aws::{ALREADY_EXISTS, Aws, AwsError, InputLogEvent, Keys};
use crate::model::awslogs::{AwslogsOptions, LogMode};
use crate::model::task::TaskRecord;
use crate::runtime::logs::{LOG_FILE, parse_line};
use batch::{Assembler, Event, MAX_BATCH_BYTES, MAX_BATCH_EVENTS, Position};

/// How long a stopping task waits for its containers' last lines to be sent.
pub(crate) const FLUSH_GRACE: Duration = Duration::from_secs(10);
/// The checkpoint: `INODE OFFSET` of the end of the last line taken into a sent batch.
const CHECKPOINT: &str = "awslogs.position";
/// How often the log file is looked at for new lines.
const POLL: Duration = Duration::from_millis(200);
/// A partial batch is sent after this long (Docker's awslogs default).
const FLUSH_INTERVAL: Duration = Duration::from_secs(5);
/// In blocking mode the reader stops reading ahead of the sender past this many bytes.
const BLOCKING_READ_AHEAD: usize = 4 * MAX_BATCH_BYTES;
/// Back-off between attempts of one batch: doubling from the first to the last.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Execution role keys are fetched again after this long.
const KEYS_FOR: Duration = Duration::from_secs(10 * 60);

/// The shippers of the running containers, by task.
#[derive(Default)]
pub(crate) struct Shippers {
    tasks: Mutex<HashMap<String, Vec<Shipper>>>,
}

impl std::fmt::Debug for Shippers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.tasks.lock().map(|t| t.len()).unwrap_or(0);
        f.debug_struct("Shippers").field("tasks", &n).finish()
    }
}

struct Shipper {
    container: String,
    finish: CancellationToken,
    handle: JoinHandle<()>,
}

/// What one shipper needs.
pub(crate) struct Target {
    pub task_id: String,
    pub container: String,
    pub runtime_id: String,
    pub log_dir: PathBuf,
    pub options: AwslogsOptions,
    pub keys: Arc<dyn AwsKeys>,
    pub aws: Aws,
}

impl Shippers {
    /// Starts shipping `target`'s log, unless a shipper for that container runs already.
    pub fn start(&self, target: Target) {
        let mut tasks = self.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let list = tasks.entry(target.task_id.clone()).or_default();
        if list.iter().any(|s| s.container == target.container && !s.handle.is_finished()) {
            return;
        }
        let finish = CancellationToken::new();
        let container = target.container.clone();
        let span = info_span!("awslogs", task_id = %target.task_id, container = %target.container);
        let handle = tokio::spawn(ship(target, finish.clone()).instrument(span));
        list.push(Shipper { container, finish, handle });
    }

    /// Has every shipper of task `task_id` send the rest of its log, waiting at most `grace`;
    /// shippers still busy then are stopped (their checkpoint says what was sent).
    pub async fn finish(&self, task_id: &str, grace: Duration) {
        let shippers = self.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(task_id);
        let Some(shippers) = shippers else { return };
        for s in &shippers {
            s.finish.cancel();
        }
        let deadline = tokio::time::Instant::now() + grace;
        for mut s in shippers {
            if tokio::time::timeout_at(deadline, &mut s.handle).await.is_err() {
                warn!(container = %s.container, "awslogs: the last lines were not all sent in time; giving up");
                s.handle.abort();
            }
        }
    }

    /// Stops every shipper at once (daemon shutdown); the next start resumes them.
    pub fn abort_all(&self) {
        for (_, list) in self.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).drain() {
            for s in list {
                s.handle.abort();
            }
        }
    }
}

/// The task's execution role keys (ecsd's own without one), as image pulls get them.
struct ExecutionRoleKeys {
    endpoints: Arc<crate::endpoints::Endpoints>,
    rec: TaskRecord,
}

#[async_trait::async_trait]
impl AwsKeys for ExecutionRoleKeys {
    async fn keys(&self) -> Result<Keys, KeysError> {
        self.endpoints.execution_keys(&self.rec).await.map_err(KeysError::Execution)
    }
}

/// Starts shipping container `name`'s output when its definition logs with awslogs.
pub(crate) fn start_for(engine: &Engine, rec: &TaskRecord, name: &str) {
    let Some(log) = rec.effective(name).and_then(|d| d.log_configuration.as_ref()) else { return };
    if log.log_driver.as_deref() != Some("awslogs") {
        return;
    }
    let Some(runtime_id) = rec.container(name).map(|c| c.runtime_id.clone()) else { return };
    let options = match AwslogsOptions::parse(&log.options.clone().unwrap_or_default()) {
        Ok(o) => o,
        // Only a definition stored before these checks existed can get here.
        Err(e) => {
            warn!(container = %name, error = %e, "awslogs: the container's output is not shipped");
            return;
        }
    };
    engine.awslogs.start(Target {
        task_id: rec.id.clone(),
        container: name.to_owned(),
        runtime_id,
        log_dir: engine.task_dir(&rec.id).join(name).join("logs"),
        options,
        keys: Arc::new(ExecutionRoleKeys { endpoints: Arc::clone(&engine.cfg.endpoints), rec: rec.clone() }),
        aws: engine.cfg.endpoints.aws().clone(),
    });
}

/// Events read but not yet sent, shared by a shipper's reader and sender.
#[derive(Default)]
struct Buffer {
    queue: VecDeque<Event>,
    bytes: usize,
    /// The reader is done: what is queued is all there is.
    closed: bool,
    dropped: u64,
}

struct Shared {
    buffer: Mutex<Buffer>,
    /// The sender has something to do (a full batch, or the end).
    ready: Notify,
    /// The sender made room.
    room: Notify,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Buffer> {
        self.buffer.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

async fn ship(target: Target, finish: CancellationToken) {
    info!(group = %target.options.group, mode = %target.options.mode, "shipping the container's output to CloudWatch Logs");
    let shared = Arc::new(Shared { buffer: Mutex::default(), ready: Notify::new(), room: Notify::new() });
    let reader = read(
        target.log_dir.clone(),
        target.options.multiline.clone(),
        target.options.mode,
        Arc::clone(&shared),
        finish,
    );
    let sender = send(&target, &shared);
    tokio::join!(reader, sender);
}

/// Reads the container's log into the buffer until `finish`, then reads it to its end.
async fn read(
    dir: PathBuf,
    multiline: Option<regex::Regex>,
    mode: LogMode,
    shared: Arc<Shared>,
    finish: CancellationToken,
) {
    let mut tail = LogTail::new(&dir);
    let mut assembler = Assembler::new(multiline);
    let mut quiet = Duration::ZERO;
    loop {
        let finishing = finish.is_cancelled();
        let lines = match tail.read(finishing) {
            Ok(lines) => lines,
            Err(e) => {
                warn!(dir = %dir.display(), error = %e, "awslogs: cannot read the container's log");
                vec![]
            }
        };
        quiet = if lines.is_empty() { quiet + POLL } else { Duration::ZERO };
        let mut events = vec![];
        for (timestamp, text, end) in lines {
            events.extend(assembler.push(timestamp, &text, end));
        }
        if finishing || (quiet >= FLUSH_INTERVAL && assembler.has_pending()) {
            events.extend(assembler.flush());
        }
        for e in events {
            enqueue(&shared, e, mode).await;
        }
        if finishing {
            shared.lock().closed = true;
            shared.ready.notify_one();
            return;
        }
        tokio::select! {
            () = finish.cancelled() => {}
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

async fn enqueue(shared: &Shared, e: Event, mode: LogMode) {
    loop {
        let wait = shared.room.notified();
        {
            let mut b = shared.lock();
            let fits = match mode {
                LogMode::NonBlocking { max_buffer_size } => {
                    if b.bytes + e.size() > max_buffer_size {
                        b.dropped += 1;
                        if b.dropped.is_power_of_two() {
                            warn!(
                                dropped = b.dropped,
                                max_buffer_size,
                                "awslogs: buffer full; dropping log events (mode non-blocking)"
                            );
                        }
                        return;
                    }
                    true
                }
                LogMode::Blocking => b.bytes < BLOCKING_READ_AHEAD,
            };
            if fits {
                b.bytes += e.size();
                b.queue.push_back(e);
                if b.bytes >= MAX_BATCH_BYTES || b.queue.len() >= MAX_BATCH_EVENTS {
                    shared.ready.notify_one();
                }
                return;
            }
        }
        wait.await;
    }
}

/// Sends batches: full ones at once, partial ones every [`FLUSH_INTERVAL`], everything once
/// the reader is done; returns when all is sent.
async fn send(target: &Target, shared: &Shared) {
    let mut cw = CloudWatch::new(target);
    loop {
        let (batch, end, closed) = {
            let mut b = shared.lock();
            let (batch, end) = batch::take_batch(&mut b.queue);
            b.bytes -= batch.iter().map(Event::size).sum::<usize>();
            (batch, end, b.closed && b.queue.is_empty())
        };
        shared.room.notify_one();
        if !batch.is_empty() {
            cw.put(&batch).await;
            if let Some(end) = end {
                write_checkpoint(&target.log_dir, end);
            }
            // More may be waiting: take it without sleeping.
            if !closed {
                continue;
            }
        }
        if closed {
            return;
        }
        let _ = tokio::time::timeout(FLUSH_INTERVAL, shared.ready.notified()).await;
    }
}

/// One stream's PutLogEvents calls, with the stream (and group) created on first use.
struct CloudWatch<'a> {
    target: &'a Target,
    stream: String,
    created: bool,
    keys: Option<(Keys, tokio::time::Instant)>,
}

impl<'a> CloudWatch<'a> {
    fn new(target: &'a Target) -> CloudWatch<'a> {
        let o = &target.options;
        CloudWatch {
            stream: o.stream(&target.container, &target.task_id, &target.runtime_id),
            target,
            created: false,
            keys: None,
        }
    }

    /// Sends `batch`, trying again with back-off while the failure may pass. A batch CloudWatch
    /// Logs refuses for good is dropped with a warning naming why.
    async fn put(&mut self, batch: &[Event]) {
        let events: Vec<InputLogEvent> = batch
            .iter()
            .map(|e| InputLogEvent { timestamp: e.timestamp, message: e.message.clone() })
            .collect();
        let mut wait = RETRY_FIRST;
        loop {
            match self.try_put(&events).await {
                Ok(()) => return,
                Err(Failure::Permanent(e)) => {
                    warn!(group = %self.target.options.group, stream = %self.stream, events = events.len(), error = %e, "awslogs: CloudWatch Logs refused log events; dropping them");
                    return;
                }
                Err(Failure::Transient(e)) => {
                    warn!(group = %self.target.options.group, stream = %self.stream, error = %e, retry_in = ?wait, "awslogs: cannot send log events; trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(RETRY_MAX);
                }
            }
        }
    }

    async fn try_put(&mut self, events: &[InputLogEvent]) -> Result<(), Failure> {
        let keys = self.keys().await?;
        let client = self.target.aws.client(keys).in_region(&self.target.options.region);
        let group = &self.target.options.group;
        if !self.created {
            if self.target.options.create_group {
                ignore_exists(client.create_log_group(group).await).map_err(Failure::of)?;
            }
            ignore_exists(client.create_log_stream(group, &self.stream).await).map_err(Failure::of)?;
            self.created = true;
        }
        match client.put_log_events(group, &self.stream, events).await {
            Ok(Some(rejected)) => {
                warn!(?rejected, "awslogs: CloudWatch Logs rejected some log events (too old or too new)");
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => {
                if e.code() == Some("ResourceNotFoundException") {
                    // Deleted meanwhile: made again on the next attempt.
                    self.created = false;
                    return Err(Failure::Transient(FailureCause::Aws(e)));
                }
                if is_expired(&e) {
                    self.keys = None;
                    return Err(Failure::Transient(FailureCause::Aws(e)));
                }
                Err(Failure::of(e))
            }
        }
    }

    async fn keys(&mut self) -> Result<Keys, Failure> {
        if let Some((k, at)) = &self.keys
            && at.elapsed() < KEYS_FOR
        {
            return Ok(k.clone());
        }
        let keys = self.target.keys.keys().await.map_err(|e| Failure::Transient(FailureCause::Keys(e)))?;
        self.keys = Some((keys.clone(), tokio::time::Instant::now()));
        Ok(keys)
    }
}

fn ignore_exists(r: Result<(), AwsError>) -> Result<(), AwsError> {
    match r {
        Err(e) if e.code() == Some(ALREADY_EXISTS) => Ok(()),
        other => other,
    }
}

fn is_expired(e: &AwsError) -> bool {
    matches!(e.code(), Some("ExpiredTokenException" | "ExpiredToken" | "UnrecognizedClientException"))
}

#[derive(Debug, thiserror::Error)]
enum FailureCause {
    #[error(transparent)]
    Aws(AwsError),
    #[error("no execution role keys: {0}")]
    Keys(KeysError),
}

enum Failure {
    Transient(FailureCause),
    Permanent(FailureCause),
}

impl Failure {
    /// A missing group (without `awslogs-create-group`) or a denied call may be fixed while
    /// the task runs, so they are tried again like outages; only a malformed request is not.
    fn of(e: AwsError) -> Failure {
        let permanent = matches!(
            e.code(),
            Some(
                "InvalidParameterException" | "DataAlreadyAcceptedException" | "UnrecognizedClientException"
            )
        ) || matches!(e, AwsError::TooLarge { .. } | AwsError::Malformed { .. });
        if permanent {
            Failure::Permanent(FailureCause::Aws(e))
        } else {
            Failure::Transient(FailureCause::Aws(e))
        }
    }
}

fn write_checkpoint(dir: &Path, end: Position) {
    let tmp = dir.join(format!("{CHECKPOINT}.tmp"));
    let text = format!("{} {}\n", end.inode, end.offset);
    if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, dir.join(CHECKPOINT))) {
        warn!(dir = %dir.display(), error = %e, "awslogs: cannot write the checkpoint");
    }
}

fn read_checkpoint(dir: &Path) -> Option<Position> {
    let text = std::fs::read_to_string(dir.join(CHECKPOINT)).ok()?;
    let (inode, offset) = text.trim().split_once(' ')?;
    Some(Position { inode: inode.parse().ok()?, offset: offset.parse().ok()? })
}

/// Follows a container's json-file log from the checkpoint (else its oldest file) across
/// rotations, returning complete entries with where each ends.
struct LogTail {
    dir: PathBuf,
    /// The file being read, its inode, and the offset of the first byte of `pending`.
    file: Option<(File, u64, u64)>,
    start: Option<Position>,
    pending: Vec<u8>,
}

type Line = (i64, String, Position);

impl LogTail {
    fn new(dir: &Path) -> LogTail {
        LogTail { dir: dir.to_owned(), file: None, start: read_checkpoint(dir), pending: vec![] }
    }

    /// The files of the log, oldest first.
    fn files(&self) -> Vec<PathBuf> {
        let mut rotated: Vec<(u32, PathBuf)> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name();
                let n = name.to_str()?.strip_prefix(LOG_FILE)?.strip_prefix('.')?.parse().ok()?;
                Some((n, e.path()))
            })
            .collect();
        rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
        let mut files: Vec<PathBuf> = rotated.into_iter().map(|r| r.1).collect();
        files.push(self.dir.join(LOG_FILE));
        files
    }

    /// The files of the log with their inodes, oldest first.
    fn files_by_inode(&self) -> Vec<(PathBuf, u64)> {
        self.files().into_iter().filter_map(|p| std::fs::metadata(&p).ok().map(|m| (p, m.ino()))).collect()
    }

    /// Opens the first file to read: the checkpoint's (at its offset), else the oldest.
    fn open_first(&mut self) -> io::Result<bool> {
        let files = self.files_by_inode();
        let (path, offset) =
            match self.start.and_then(|s| files.iter().find(|f| f.1 == s.inode).map(|f| (f, s))) {
                Some((f, start)) => (f.0.clone(), start.offset),
                None => match files.first() {
                    Some(f) => (f.0.clone(), 0),
                    None => return Ok(false),
                },
            };
        match File::open(&path) {
            Ok(mut f) => {
                let inode = f.metadata()?.ino();
                f.seek(SeekFrom::Start(offset))?;
                self.file = Some((f, inode, offset));
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The file written after the one with `inode`: the next in age order; when that one is
    /// gone (rotated away), the oldest left, as all older ones were read.
    fn newer_than(&self, inode: u64) -> Option<PathBuf> {
        let files = self.files_by_inode();
        match files.iter().position(|f| f.1 == inode) {
            Some(i) => files.get(i + 1).map(|f| f.0.clone()),
            None => files.first().map(|f| f.0.clone()),
        }
    }

    /// The entries completed since the last call; `to_end` also takes a last unterminated one
    /// and every file still waiting (the writer is gone).
    fn read(&mut self, to_end: bool) -> io::Result<Vec<Line>> {
        if self.file.is_none() && !self.open_first()? {
            return Ok(vec![]);
        }
        let mut out = vec![];
        loop {
            let Some(inode) = self.file.as_ref().map(|f| f.1) else { return Ok(out) };
            // Looked for before reading: once a newer file exists the writer has left this
            // one, so the read below gets all of it.
            let next = self.newer_than(inode);
            let Some((file, _, offset)) = self.file.as_mut() else { return Ok(out) };
            let base = *offset;
            file.read_to_end(&mut self.pending)?;
            let mut start = 0;
            while let Some(pos) = self.pending[start..].iter().position(|b| *b == b'\n') {
                let end = start + pos + 1;
                if let Some(line) = entry(&self.pending[start..end - 1], inode, base + end as u64) {
                    out.push(line);
                }
                start = end;
            }
            self.pending.drain(..start);
            if let Some((_, _, offset)) = self.file.as_mut() {
                *offset = base + start as u64;
            }
            let Some(next) = next else {
                if to_end && !self.pending.is_empty() {
                    let len = self.pending.len() as u64;
                    if let Some(line) = entry(&self.pending, inode, base + start as u64 + len) {
                        out.push(line);
                    }
                    self.pending.clear();
                }
                return Ok(out);
            };
            // What is left of the old file was read above; a partial line there stays partial.
            self.pending.clear();
            match File::open(&next) {
                Ok(f) => {
                    let inode = f.metadata()?.ino();
                    self.file = Some((f, inode, 0));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// One json-file line as (milliseconds, text, end).
fn entry(raw: &[u8], inode: u64, end: u64) -> Option<Line> {
    let line = parse_line(raw)?;
    let timestamp = parse_millis(&line.time).unwrap_or(0);
    Some((timestamp, line.log, Position { inode, offset: end }))
}

/// Milliseconds since the epoch of an RFC 3339 UTC time as the log driver writes it
/// (`2024-01-02T03:04:05.123456789Z`).
fn parse_millis(t: &str) -> Option<i64> {
    let t = t.strip_suffix('Z')?;
    let (date, time) = t.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut h = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (h.next()??, h.next()??, h.next()??);
    let millis: i64 = format!("{frac:0<3}")[..3].parse().ok()?;
    let days = days_from_civil(y, m, day);
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000) + millis)
}

/// Howard Hinnant's `days_from_civil`.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::logs::JsonFileWriter;
    use std::time::{SystemTime, UNIX_EPOCH};

    #[test]
    fn times_of_the_log_driver_become_milliseconds() {
        assert_eq!(parse_millis("1970-01-01T00:00:00.000000000Z"), Some(0));
        assert_eq!(parse_millis("2024-01-02T03:04:05.123456789Z"), Some(1_704_164_645_123));
        assert_eq!(parse_millis("2024-01-02T03:04:05Z"), Some(1_704_164_645_000));
        assert_eq!(parse_millis("yesterday"), None);
        let now = SystemTime::now();
        let ms = now.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
        assert_eq!(parse_millis(&crate::runtime::logs::format_rfc3339(now, true)), Some(ms));
    }

    struct StaticKeys;

    #[async_trait::async_trait]
    impl AwsKeys for StaticKeys {
        async fn keys(&self) -> Result<Keys, KeysError> {
            Ok(Keys::new("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", None))
        }
    }

    fn options(pairs: &[(&str, &str)]) -> AwslogsOptions {
        let mut m: std::collections::BTreeMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        m.insert("awslogs-region".into(), "us-east-1".into());
        AwslogsOptions::parse(&m).unwrap()
    }

    async fn stream_messages(aws: &Aws, group: &str, stream: &str) -> Vec<String> {
        let client = aws.client(StaticKeys.keys().await.unwrap());
        let input =
            serde_json::json!({"logGroupName": group, "logStreamName": stream, "startFromHead": true});
        let out: serde_json::Value =
            client.json(crate::aws::Service::Logs, "Logs_20140328.GetLogEvents", &input).await.unwrap();
        let events = out["events"].as_array().unwrap();
        let stamps: Vec<i64> = events.iter().map(|e| e["timestamp"].as_i64().unwrap()).collect();
        assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "in timestamp order: {stamps:?}");
        events.iter().map(|e| e["message"].as_str().unwrap().to_owned()).collect()
    }

    /// Against moto's CloudWatch Logs: the group is created, lines written before and while
    /// the shipper runs arrive in order across rotations, the unterminated last one too, and
    /// `finish` returns once they are all there.
    #[tokio::test]
    async fn shippers_send_every_line_in_order_and_flush_at_finish() {
        use crate::endpoints::credentials::test_support::{Moto, moto_aws};
        let moto = Moto::start().await;
        let aws = moto_aws(&moto);
        let dir = tempfile::tempdir().unwrap();
        let mut w = JsonFileWriter::open(dir.path(), 8192, 3).unwrap();
        let put = |w: &mut JsonFileWriter, s: &str| {
            w.write_entry("stdout", s.as_bytes(), SystemTime::now()).unwrap()
        };
        put(&mut w, "before the shipper\n");
        let shippers = Shippers::default();
        let target = |container: &str, opts: AwslogsOptions| Target {
            task_id: "0123abcd".into(),
            container: container.into(),
            runtime_id: "rid".into(),
            log_dir: dir.path().to_owned(),
            options: opts,
            keys: Arc::new(StaticKeys),
            aws: aws.clone(),
        };
        let opts = options(&[
            ("awslogs-group", "/ecs/app"),
            ("awslogs-stream-prefix", "app"),
            ("awslogs-create-group", "true"),
        ]);
        shippers.start(target("web", opts));
        for i in 0..200 {
            put(&mut w, &format!("line {i}\n"));
        }
        put(&mut w, "last words");
        drop(w);
        assert!(dir.path().join("container.log.1").exists(), "the log rotated while shipping");
        shippers.finish("0123abcd", FLUSH_GRACE).await;
        let got = stream_messages(&aws, "/ecs/app", "app/web/0123abcd").await;
        let mut want = vec!["before the shipper".to_owned()];
        want.extend((0..200).map(|i| format!("line {i}")));
        want.push("last words".into());
        assert_eq!(got, want);
        // Finishing again is a no-op, and a new shipper resumes after the checkpoint.
        shippers.finish("0123abcd", FLUSH_GRACE).await;
        let opts = options(&[("awslogs-group", "/ecs/app"), ("awslogs-stream-prefix", "app")]);
        shippers.start(target("web", opts));
        shippers.finish("0123abcd", FLUSH_GRACE).await;
        assert_eq!(stream_messages(&aws, "/ecs/app", "app/web/0123abcd").await.len(), want.len());
    }

    /// A group that does not exist (without awslogs-create-group) is not made: the shipper
    /// keeps trying, and `finish` gives up after its grace.
    #[tokio::test]
    async fn a_missing_group_is_not_created_and_finish_is_bounded() {
        use crate::endpoints::credentials::test_support::{Moto, moto_aws};
        let moto = Moto::start().await;
        let aws = moto_aws(&moto);
        let dir = tempfile::tempdir().unwrap();
        let mut w = JsonFileWriter::open(dir.path(), 1 << 20, 3).unwrap();
        w.write_entry("stdout", b"hello\n", SystemTime::now()).unwrap();
        let shippers = Shippers::default();
        shippers.start(Target {
            task_id: "t".into(),
            container: "web".into(),
            runtime_id: "rid".into(),
            log_dir: dir.path().to_owned(),
            options: options(&[("awslogs-group", "/ecs/none")]),
            keys: Arc::new(StaticKeys),
            aws: aws.clone(),
        });
        let started = std::time::Instant::now();
        shippers.finish("t", Duration::from_secs(2)).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        let client = aws.client(StaticKeys.keys().await.unwrap());
        let out: serde_json::Value = client
            .json(crate::aws::Service::Logs, "Logs_20140328.DescribeLogGroups", &serde_json::json!({}))
            .await
            .unwrap();
        assert_eq!(out["logGroups"], serde_json::json!([]));
        assert!(!dir.path().join(CHECKPOINT).exists(), "nothing was sent");
    }

    fn event(n: usize) -> Event {
        Event { timestamp: 1, message: "x".repeat(n), end: Position::default() }
    }

    /// Non-blocking mode drops what does not fit at once; blocking mode waits for room.
    #[tokio::test]
    async fn non_blocking_mode_drops_and_blocking_mode_waits() {
        let shared = Shared { buffer: Mutex::default(), ready: Notify::new(), room: Notify::new() };
        let mode = LogMode::NonBlocking { max_buffer_size: 1000 };
        for _ in 0..10 {
            enqueue(&shared, event(174), mode).await;
        }
        let (queued, dropped) = {
            let b = shared.lock();
            (b.queue.len(), b.dropped)
        };
        assert_eq!((queued, dropped), (5, 5));

        let shared = Shared { buffer: Mutex::default(), ready: Notify::new(), room: Notify::new() };
        shared.lock().bytes = BLOCKING_READ_AHEAD;
        let blocked =
            tokio::time::timeout(Duration::from_millis(100), enqueue(&shared, event(1), LogMode::Blocking))
                .await;
        assert!(blocked.is_err(), "blocking mode waits while the read-ahead is full");
        shared.lock().bytes = 0;
        enqueue(&shared, event(1), LogMode::Blocking).await;
        assert_eq!(shared.lock().queue.len(), 1);
    }

    fn texts(lines: &[Line]) -> Vec<&str> {
        lines.iter().map(|l| l.1.as_str()).collect()
    }

    /// The tail follows rotations, resumes from a checkpoint, and takes an unterminated last
    /// line only at the end.
    #[test]
    fn the_tail_follows_rotations_and_resumes_from_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = JsonFileWriter::open(dir.path(), 200, 3).unwrap();
        let mut tail = LogTail::new(dir.path());
        assert!(tail.read(false).unwrap().is_empty());
        let put = |w: &mut JsonFileWriter, s: &str| {
            w.write_entry("stdout", s.as_bytes(), SystemTime::now()).unwrap()
        };
        put(&mut w, "one\n");
        put(&mut w, "two\n");
        let first = tail.read(false).unwrap();
        assert_eq!(texts(&first), ["one\n", "two\n"]);
        // Enough to rotate (200 bytes per file) twice.
        for i in 0..4 {
            put(&mut w, &format!("line {i}\n"));
        }
        put(&mut w, "no newline");
        let rest = tail.read(false).unwrap();
        assert_eq!(texts(&rest), ["line 0\n", "line 1\n", "line 2\n", "line 3\n", "no newline"]);
        assert!(dir.path().join("container.log.1").exists());
        // Resuming after "two": the checkpoint's file is found by inode among the rotated.
        write_checkpoint(dir.path(), first[1].2);
        let mut again = LogTail::new(dir.path());
        assert_eq!(texts(&again.read(true).unwrap()), texts(&rest));
        // Without a checkpoint: from the oldest file still there.
        std::fs::remove_file(dir.path().join(CHECKPOINT)).unwrap();
        let all = LogTail::new(dir.path()).read(true).unwrap();
        assert_eq!(all.last().unwrap().1, "no newline");
    }
}
