//! Container logs: a containerd `binary://` logging driver, and the reader behind `ecsd logs`.
//!
//! containerd's shim starts `ECSD log-driver DIR` for each container (see [`binary_log_uri`])
//! with the container's stdout on fd 3 and stderr on fd 4, and waits until the driver signals
//! readiness on fd 5. The driver is a child of the shim, not of ecsd, so output keeps being
//! captured while ecsd restarts. It writes Docker's json-file format to `DIR/container.log`
//! (`{"log":"hi\n","stream":"stdout","time":"2024-01-02T03:04:05.123456789Z"}` per line),
//! rotating at 10 MiB and keeping 3 files (`container.log`, `.1`, `.2`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The current log file of a container's log directory.
pub const LOG_FILE: &str = "container.log";
pub const DEFAULT_MAX_SIZE: u64 = 10 << 20;
pub const DEFAULT_MAX_FILES: u32 = 3;
/// Longer lines are split into entries of this size (as Docker does), so one runaway line
/// cannot hold the driver's memory.
const MAX_LINE: usize = 16 << 10;
/// After SIGTERM (the shim sends it once the container's pipes are closed) the driver drains
/// what is left for at most this long; the shim kills it after 12 s.
const DRAIN_AFTER_TERM: Duration = Duration::from_secs(10);
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// Arguments of the hidden `ecsd log-driver` command that containerd's shim runs.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct LogDriverArgs {
    /// Directory for the container's log files.
    pub dir: PathBuf,
    /// Rotate `container.log` when it would grow past this many bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_SIZE)]
    pub max_size: u64,
    /// Log files to keep, the current one included.
    #[arg(long, default_value_t = DEFAULT_MAX_FILES)]
    pub max_files: u32,
}

/// The stdout/stderr URI that makes containerd's shim run `program log-driver dir`.
///
/// The shim turns every query parameter into `key value` arguments in map order, so a single
/// parameter is the only way to keep the arguments in order.
pub fn binary_log_uri(program: &Path, dir: &Path) -> String {
    format!(
        "binary://{}?log-driver={}",
        percent_encode(program.as_os_str().as_bytes()),
        percent_encode(dir.as_os_str().as_bytes())
    )
}

fn percent_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Runs the logging driver until the container's stdout and stderr close.
pub fn run_log_driver(args: LogDriverArgs) -> ExitCode {
    // The shim passes the pipes as inherited descriptors; reopening them through /proc needs
    // no unsafe code and reads the same pipes.
    let open = |fd: u32| File::open(format!("/proc/self/fd/{fd}"));
    let (stdout, stderr) = match (open(3), open(4)) {
        (Ok(o), Ok(e)) => (o, e),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("ecsd log-driver: cannot open the container's stdout/stderr (fds 3 and 4): {e}");
            return ExitCode::FAILURE;
        }
    };
    let writer = match JsonFileWriter::open(&args.dir, args.max_size, args.max_files) {
        Ok(w) => Some(w),
        Err(e) => {
            // Keep draining: a container whose output nobody reads blocks, or dies of SIGPIPE.
            eprintln!("ecsd log-driver: cannot write logs to {}: {e}; discarding output", args.dir.display());
            None
        }
    };
    let writer = Arc::new(Mutex::new(writer));
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ecsd log-driver: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        // Installing the handler is what keeps SIGTERM from killing the driver before it has
        // drained the pipes.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        signal_ready();
        let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(2);
        for (input, stream) in [(stdout, "stdout"), (stderr, "stderr")] {
            let writer = Arc::clone(&writer);
            let done = done_tx.clone();
            std::thread::spawn(move || {
                pump(input, stream, &writer);
                let _ = done.blocking_send(());
            });
        }
        drop(done_tx);
        let mut open_streams = 2;
        loop {
            tokio::select! {
                d = done_rx.recv() => {
                    if d.is_none() { break; }
                    open_streams -= 1;
                    if open_streams == 0 { break; }
                }
                () = recv_signal(&mut term) => {
                    let _ = tokio::time::timeout(DRAIN_AFTER_TERM, async {
                        while done_rx.recv().await.is_some() {}
                    }).await;
                    break;
                }
            }
        }
    });
    // Reader threads still blocked (the drain timed out) end with the process.
    runtime.shutdown_background();
    ExitCode::SUCCESS
}

async fn recv_signal(signal: &mut Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// Tells the shim the driver is ready: it waits for one byte or EOF on fd 5.
fn signal_ready() {
    match OpenOptions::new().write(true).open("/proc/self/fd/5") {
        Ok(mut f) => {
            if let Err(e) = f.write_all(&[0]) {
                eprintln!("ecsd log-driver: cannot signal readiness on fd 5: {e}");
            }
        }
        Err(e) => eprintln!("ecsd log-driver: no readiness pipe on fd 5: {e}"),
    }
}

/// Copies `input` into the log, one entry per line (lines over [`MAX_LINE`] are split).
fn pump(mut input: impl Read, stream: &'static str, writer: &Mutex<Option<JsonFileWriter>>) {
    let mut buf = vec![0u8; 32 << 10];
    let mut pending: Vec<u8> = Vec::new();
    let mut failed = false;
    let mut emit = |line: &[u8]| {
        let mut guard = writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(w) = guard.as_mut()
            && let Err(e) = w.write_entry(stream, line, SystemTime::now())
            && !failed
        {
            failed = true;
            eprintln!("ecsd log-driver: writing {stream} failed: {e}");
        }
    };
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        pending.extend_from_slice(&buf[..n]);
        let mut start = 0;
        loop {
            let window = &pending[start..pending.len().min(start + MAX_LINE)];
            let end = match window.iter().position(|b| *b == b'\n') {
                Some(pos) => start + pos + 1,
                None if window.len() == MAX_LINE => start + MAX_LINE,
                None => break,
            };
            emit(&pending[start..end]);
            start = end;
        }
        pending.drain(..start);
    }
    if !pending.is_empty() {
        emit(&pending);
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Entry<'a> {
    #[serde(borrow)]
    log: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    stream: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    time: std::borrow::Cow<'a, str>,
}

/// Appends json-file entries to `DIR/container.log`, rotating by size.
#[derive(Debug)]
pub struct JsonFileWriter {
    dir: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    max_files: u32,
}

impl JsonFileWriter {
    pub fn open(dir: &Path, max_size: u64, max_files: u32) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let file = open_log(&dir.join(LOG_FILE))?;
        let size = file.metadata()?.len();
        Ok(JsonFileWriter { dir: dir.to_owned(), file, size, max_size: max_size.max(1), max_files })
    }

    pub fn write_entry(&mut self, stream: &str, line: &[u8], time: SystemTime) -> io::Result<()> {
        let entry = Entry {
            log: String::from_utf8_lossy(line),
            stream: stream.into(),
            time: format_rfc3339(time, true).into(),
        };
        let mut buf = serde_json::to_vec(&entry).map_err(io::Error::other)?;
        buf.push(b'\n');
        if self.size > 0 && self.size + buf.len() as u64 > self.max_size {
            self.rotate()?;
        }
        self.file.write_all(&buf)?;
        self.size += buf.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let current = self.dir.join(LOG_FILE);
        if self.max_files <= 1 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        for i in (1..self.max_files - 1).rev() {
            match fs::rename(rotated_path(&self.dir, i), rotated_path(&self.dir, i + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        fs::rename(&current, rotated_path(&self.dir, 1))?;
        self.file = open_log(&current)?;
        self.size = 0;
        Ok(())
    }
}

fn open_log(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).mode(0o640).open(path)
}

fn rotated_path(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("{LOG_FILE}.{n}"))
}

/// One entry of a json-file log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// The text, with its newline unless the line was split or unterminated.
    pub log: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// RFC 3339 with nanoseconds, UTC.
    pub time: String,
}

/// Parses one json-file line, or one k8s-file line (what conmon writes for the Podman
/// runtime); `None` for anything else.
pub fn parse_line(line: &[u8]) -> Option<LogLine> {
    match serde_json::from_slice::<Entry<'_>>(line) {
        Ok(e) => Some(LogLine {
            log: e.log.into_owned(),
            stream: e.stream.into_owned(),
            time: e.time.into_owned(),
        }),
        Err(_) => parse_k8s_line(line),
    }
}

/// `2024-01-02T03:04:05.123456789+00:00 stdout F text`: `F` ends a line, `P` is part of a
/// longer one (no newline is added).
fn parse_k8s_line(line: &[u8]) -> Option<LogLine> {
    let text = String::from_utf8_lossy(line);
    let mut parts = text.splitn(4, ' ');
    let (time, stream, tag) = (parts.next()?, parts.next()?, parts.next()?);
    let message = parts.next().unwrap_or("");
    if !matches!(stream, "stdout" | "stderr") || !time.contains('T') {
        return None;
    }
    let log = match tag {
        "F" => format!("{message}\n"),
        "P" => message.to_owned(),
        _ => return None,
    };
    let time = time.strip_suffix("+00:00").map_or_else(|| time.to_owned(), |t| format!("{t}Z"));
    Some(LogLine { log, stream: stream.to_owned(), time })
}

/// Writes the text of every entry in log directory `dir` to `out`, oldest first; with
/// `follow`, keeps waiting for new entries (across rotations) until writing to `out` fails.
pub fn read_logs(dir: &Path, follow: bool, out: &mut dyn Write) -> io::Result<()> {
    let mut rotated: Vec<(u32, PathBuf)> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name();
                let n = name.to_str()?.strip_prefix(LOG_FILE)?.strip_prefix('.')?.parse().ok()?;
                Some((n, e.path()))
            })
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound && follow => Vec::new(),
        Err(e) => return Err(e),
    };
    rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
    for (_, path) in rotated {
        match File::open(&path) {
            Ok(f) => Tail::new(f).copy_new(out, true)?,
            // Rotated away between listing and opening.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let current = dir.join(LOG_FILE);
    let mut tail = loop {
        match File::open(&current) {
            Ok(f) => break Tail::new(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound && follow => std::thread::sleep(FOLLOW_POLL),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
    };
    tail.copy_new(out, !follow)?;
    out.flush()?;
    if !follow {
        return Ok(());
    }
    loop {
        std::thread::sleep(FOLLOW_POLL);
        tail.copy_new(out, false)?;
        let rotated_away = match fs::metadata(&current) {
            Ok(m) => m.ino() != tail.inode,
            Err(_) => false,
        };
        if rotated_away {
            tail.copy_new(out, true)?;
            match File::open(&current) {
                Ok(f) => tail = Tail::new(f),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            tail.copy_new(out, false)?;
        }
        out.flush()?;
    }
}

/// Reads a log file incrementally, keeping a trailing partial line for the next read.
struct Tail {
    file: File,
    inode: u64,
    pending: Vec<u8>,
}

impl Tail {
    fn new(file: File) -> Self {
        let inode = file.metadata().map(|m| m.ino()).unwrap_or(0);
        Tail { file, inode, pending: Vec::new() }
    }

    /// Writes the entries appended since the last call; `finished` also flushes a last line
    /// without a newline.
    fn copy_new(&mut self, out: &mut dyn Write, finished: bool) -> io::Result<()> {
        self.file.read_to_end(&mut self.pending)?;
        let mut start = 0;
        while let Some(pos) = self.pending[start..].iter().position(|b| *b == b'\n') {
            if let Some(line) = parse_line(&self.pending[start..start + pos]) {
                out.write_all(line.log.as_bytes())?;
            }
            start += pos + 1;
        }
        self.pending.drain(..start);
        if finished && !self.pending.is_empty() {
            if let Some(line) = parse_line(&self.pending) {
                out.write_all(line.log.as_bytes())?;
            }
            self.pending.clear();
        }
        Ok(())
    }
}

/// `time` as RFC 3339 in UTC (`2024-01-02T03:04:05Z`), with nine fractional digits if `nanos`.
pub fn format_rfc3339(time: SystemTime, nanos: bool) -> String {
    let d = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days);
    let (h, mi, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    if nanos {
        format!("{y:04}-{m:02}-{day:02}T{h:02}:{mi:02}:{s:02}.{:09}Z", d.subsec_nanos())
    } else {
        format!("{y:04}-{m:02}-{day:02}T{h:02}:{mi:02}:{s:02}Z")
    }
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn k8s_file_lines_parse_like_json_file_entries() {
        let full = parse_line(b"2026-12-06T04:10:10.495058666+00:00 stdout F hi there").unwrap();
        assert_eq!(full.log, "hi there\n");
        assert_eq!(full.stream, "stdout");
        assert_eq!(full.time, "2026-12-06T04:10:10.495058666Z");
        let part = parse_line(b"2026-12-06T04:10:10.495058666+00:00 stderr P abc").unwrap();
        assert_eq!((part.log.as_str(), part.stream.as_str()), ("abc", "stderr"));
        assert_eq!(parse_line(b"2026-12-06T04:10:10Z stdout F ").unwrap().log, "\n");
        assert_eq!(parse_line(b"2026-12-06T04:10:10Z stdin F x"), None);
        assert_eq!(parse_line(b"not a log line"), None);
    }

    #[test]
    fn rfc3339_formatting() {
        assert_eq!(format_rfc3339(at(0, 0), false), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(at(0, 5), true), "1970-01-01T00:00:00.000000005Z");
        assert_eq!(format_rfc3339(at(951_782_400, 0), false), "2000-02-29T00:00:00Z");
        assert_eq!(format_rfc3339(at(1_704_164_645, 123_456_789), true), "2024-01-02T03:04:05.123456789Z");
        assert_eq!(format_rfc3339(at(4_102_444_799, 0), false), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn uri_encodes_paths_for_go_url_parsing() {
        let uri = binary_log_uri(Path::new("/usr/bin/ecsd"), Path::new("/var/lib/ecsd/logs/a b+c&d"));
        assert_eq!(uri, "binary:///usr/bin/ecsd?log-driver=/var/lib/ecsd/logs/a%20b%2Bc%26d");
    }

    #[test]
    fn entries_are_docker_json_file_lines() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = JsonFileWriter::open(dir.path(), DEFAULT_MAX_SIZE, DEFAULT_MAX_FILES).unwrap();
        w.write_entry("stdout", b"hi \"there\"\n", at(1_704_164_645, 1)).unwrap();
        w.write_entry("stderr", b"\xffbad\n", at(1_704_164_645, 2)).unwrap();
        let text = fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            r#"{"log":"hi \"there\"\n","stream":"stdout","time":"2024-01-02T03:04:05.000000001Z"}"#
        );
        let second = parse_line(lines[1].as_bytes()).unwrap();
        assert_eq!(second.stream, "stderr");
        assert_eq!(second.log, "\u{FFFD}bad\n");
    }

    #[test]
    fn rotation_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = JsonFileWriter::open(dir.path(), 200, 3).unwrap();
        for i in 0..40 {
            w.write_entry("stdout", format!("line {i:02}\n").as_bytes(), at(0, 0)).unwrap();
        }
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, vec!["container.log", "container.log.1", "container.log.2"]);
        for name in &names {
            assert!(fs::metadata(dir.path().join(name)).unwrap().len() <= 200, "{name} over the limit");
        }
        // The newest entries survive, in order, across the three files.
        let mut out = Vec::new();
        read_logs(dir.path(), false, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("line 38\nline 39\n"), "{text}");
        let nums: Vec<u32> = text.lines().map(|l| l[5..].parse().unwrap()).collect();
        assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "{nums:?}");
        assert!(!text.contains("line 00"));
    }

    #[test]
    fn reopening_appends_and_counts_the_existing_size() {
        let dir = tempfile::tempdir().unwrap();
        JsonFileWriter::open(dir.path(), 200, 2)
            .unwrap()
            .write_entry("stdout", b"first\n", at(0, 0))
            .unwrap();
        let mut w = JsonFileWriter::open(dir.path(), 200, 2).unwrap();
        w.write_entry("stdout", b"second\n", at(0, 0)).unwrap();
        assert!(!dir.path().join("container.log.1").exists());
        w.write_entry("stdout", b"third\n", at(0, 0)).unwrap();
        assert!(dir.path().join("container.log.1").exists());
        let mut out = Vec::new();
        read_logs(dir.path(), false, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "first\nsecond\nthird\n");
    }

    #[test]
    fn pump_splits_lines_and_long_lines() {
        let dir = tempfile::tempdir().unwrap();
        let writer = Mutex::new(Some(JsonFileWriter::open(dir.path(), DEFAULT_MAX_SIZE, 1).unwrap()));
        let long = "x".repeat(MAX_LINE + 10);
        let input = format!("a\nb\n{long}\ntail");
        pump(input.as_bytes(), "stderr", &writer);
        let text = fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
        let logs: Vec<String> = text.lines().map(|l| parse_line(l.as_bytes()).unwrap().log).collect();
        assert_eq!(logs.len(), 5);
        assert_eq!(logs[0], "a\n");
        assert_eq!(logs[1], "b\n");
        assert_eq!(logs[2].len(), MAX_LINE);
        assert_eq!(logs[3], format!("{}\n", "x".repeat(10)));
        assert_eq!(logs[4], "tail");
    }

    #[test]
    fn missing_directory_reads_as_empty_or_fails() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = Vec::new();
        read_logs(dir.path(), false, &mut out).unwrap();
        assert!(out.is_empty());
        assert!(read_logs(&dir.path().join("nope"), false, &mut out).is_err());
    }

    /// A writer that fails once it has seen `stop`, ending a follow.
    struct UntilStop(Arc<Mutex<Vec<u8>>>);
    impl Write for UntilStop {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut seen = self.0.lock().unwrap();
            seen.extend_from_slice(buf);
            if String::from_utf8_lossy(&seen).contains("stop") {
                return Err(io::Error::new(io::ErrorKind::BrokenPipe, "done"));
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn follow_sees_new_entries_across_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = JsonFileWriter::open(dir.path(), 120, 2).unwrap();
        w.write_entry("stdout", b"before\n", at(0, 0)).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let dir = dir.path().to_owned();
            let seen = Arc::clone(&seen);
            std::thread::spawn(move || read_logs(&dir, true, &mut UntilStop(seen)))
        };
        let wait_seen = |want: &str| {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !String::from_utf8_lossy(&seen.lock().unwrap()).contains(want) {
                assert!(std::time::Instant::now() < deadline, "follow never printed {want:?}");
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        wait_seen("before");
        for i in 0..3 {
            let line = format!("during {i}\n");
            w.write_entry("stdout", line.as_bytes(), at(0, 0)).unwrap();
            wait_seen(&line);
        }
        w.write_entry("stdout", b"stop\n", at(0, 0)).unwrap();
        let err = reader.join().unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        assert!(dir.path().join("container.log.1").exists(), "the test should have rotated");
        let text = String::from_utf8(seen.lock().unwrap().clone()).unwrap();
        assert_eq!(text, "before\nduring 0\nduring 1\nduring 2\nstop\n");
    }
}
