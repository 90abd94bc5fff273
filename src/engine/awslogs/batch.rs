//! The pure half of the awslogs shipper: json-file lines become CloudWatch Logs events
//! (partial lines joined, multiline events assembled, oversized messages split), and events
//! become PutLogEvents batches within the service's limits.

use std::collections::VecDeque;

/// PutLogEvents takes at most this many events per call.
pub const MAX_BATCH_EVENTS: usize = 10_000;
/// ... and at most this many bytes, counting [`EVENT_OVERHEAD`] per event.
pub const MAX_BATCH_BYTES: usize = 1_048_576;
/// What CloudWatch Logs adds to each message's UTF-8 length when it sizes a batch.
pub const EVENT_OVERHEAD: usize = 26;
/// The largest message of one event.
pub const MAX_MESSAGE_BYTES: usize = 262_144 - EVENT_OVERHEAD;
/// The events of one batch span at most 24 hours.
pub const MAX_SPAN_MS: i64 = 24 * 3600 * 1000;

/// Where in the log files an event ends: the file (by inode) and the byte after its last line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    pub inode: u64,
    pub offset: u64,
}

/// One event for CloudWatch Logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Milliseconds since the epoch.
    pub timestamp: i64,
    pub message: String,
    pub end: Position,
}

impl Event {
    /// Its size as CloudWatch Logs counts it in a batch.
    pub fn size(&self) -> usize {
        self.message.len() + EVENT_OVERHEAD
    }
}

/// Turns a container's log lines, in file order, into events.
#[derive(Debug, Default)]
pub struct Assembler {
    multiline: Option<regex::Regex>,
    /// A line the log driver split (no newline yet), joined until its end arrives.
    partial: Option<(i64, String, Position)>,
    /// The multiline event being assembled.
    pending: Option<Event>,
}

impl Assembler {
    pub fn new(multiline: Option<regex::Regex>) -> Assembler {
        Assembler { multiline, partial: None, pending: None }
    }

    /// Takes one json-file entry (`text` with its newline, or without one when the log driver
    /// split a long line) and returns the events it completes.
    pub fn push(&mut self, timestamp: i64, text: &str, end: Position) -> Vec<Event> {
        let (line, complete) = match text.strip_suffix('\n') {
            Some(l) => (l, true),
            None => (text, false),
        };
        let (timestamp, line) = match self.partial.take() {
            Some((t, mut joined, _)) => {
                joined.push_str(line);
                (t, joined)
            }
            None => (timestamp, line.to_owned()),
        };
        if !complete && line.len() < MAX_MESSAGE_BYTES {
            self.partial = Some((timestamp, line, end));
            return vec![];
        }
        self.line(timestamp, line, end)
    }

    /// Whether a multiline event (or a split line) waits for more lines.
    pub fn has_pending(&self) -> bool {
        self.pending.is_some() || self.partial.is_some()
    }

    /// Ends whatever waits for more lines (the output ended, or went quiet).
    pub fn flush(&mut self) -> Vec<Event> {
        let mut out = match self.partial.take() {
            Some((t, line, end)) => self.line(t, line, end),
            None => vec![],
        };
        out.extend(self.pending.take().map(split).into_iter().flatten());
        out
    }

    fn line(&mut self, timestamp: i64, line: String, end: Position) -> Vec<Event> {
        let Some(pattern) = &self.multiline else {
            return split(Event { timestamp, message: line, end });
        };
        let starts = pattern.is_match(&line);
        match &mut self.pending {
            Some(p) if !starts && p.message.len() + 1 + line.len() <= MAX_MESSAGE_BYTES => {
                p.message.push('\n');
                p.message.push_str(&line);
                p.end = end;
                vec![]
            }
            _ => {
                let done = self.pending.replace(Event { timestamp, message: line, end });
                done.map(split).unwrap_or_default()
            }
        }
    }
}

/// `event`, as events of at most [`MAX_MESSAGE_BYTES`] (cut on character boundaries); every
/// piece but the last ends where the event begins, so a checkpoint never skips a piece.
fn split(event: Event) -> Vec<Event> {
    if event.message.len() <= MAX_MESSAGE_BYTES {
        return vec![event];
    }
    let mut out = vec![];
    let mut rest = event.message.as_str();
    while !rest.is_empty() {
        let mut cut = rest.len().min(MAX_MESSAGE_BYTES);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        out.push(Event { timestamp: event.timestamp, message: rest[..cut].to_owned(), end: event.end });
        rest = &rest[cut..];
    }
    out
}

/// Takes the next PutLogEvents batch from the front of `queue`: the longest run of events
/// within [`MAX_BATCH_EVENTS`], [`MAX_BATCH_BYTES`] and [`MAX_SPAN_MS`], in timestamp order
/// (stable, so equal timestamps keep the container's order). Also returns where the last
/// event taken ends in the files: the checkpoint once the batch is sent.
pub fn take_batch(queue: &mut VecDeque<Event>) -> (Vec<Event>, Option<Position>) {
    let (mut bytes, mut min, mut max) = (0usize, i64::MAX, i64::MIN);
    let mut n = 0;
    for e in queue.iter() {
        let (lo, hi) = (min.min(e.timestamp), max.max(e.timestamp));
        if n == MAX_BATCH_EVENTS || bytes + e.size() > MAX_BATCH_BYTES || hi - lo > MAX_SPAN_MS {
            break;
        }
        (bytes, min, max) = (bytes + e.size(), lo, hi);
        n += 1;
    }
    let mut batch: Vec<Event> = queue.drain(..n).collect();
    let end = batch.last().map(|e| e.end);
    batch.sort_by_key(|e| e.timestamp);
    (batch, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset: u64) -> Position {
        Position { inode: 7, offset }
    }

    fn messages(events: &[Event]) -> Vec<&str> {
        events.iter().map(|e| e.message.as_str()).collect()
    }

    #[test]
    fn lines_lose_their_newline_and_split_lines_are_joined() {
        let mut a = Assembler::new(None);
        assert_eq!(messages(&a.push(1, "one\n", at(10))), ["one"]);
        assert!(a.push(2, "tw", at(20)).is_empty());
        assert!(a.has_pending());
        let e = a.push(3, "o\n", at(30));
        assert_eq!(e, [Event { timestamp: 2, message: "two".into(), end: at(30) }]);
        assert!(a.push(4, "last words", at(40)).is_empty());
        assert_eq!(messages(&a.flush()), ["last words"]);
        assert!(!a.has_pending());
    }

    #[test]
    fn multiline_events_start_at_lines_that_match() {
        let mut a = Assembler::new(Some(regex::Regex::new("^(INFO|ERROR)").unwrap()));
        assert!(a.push(1, "  orphan before any start\n", at(1)).is_empty());
        assert_eq!(messages(&a.push(2, "ERROR boom\n", at(2))), ["  orphan before any start"]);
        assert!(a.push(3, "  at frame 1\n", at(3)).is_empty());
        assert!(a.push(4, "  at frame 2\n", at(4)).is_empty());
        let e = a.push(5, "INFO next\n", at(5));
        assert_eq!(
            e,
            [Event { timestamp: 2, message: "ERROR boom\n  at frame 1\n  at frame 2".into(), end: at(4) }]
        );
        assert_eq!(messages(&a.flush()), ["INFO next"]);
    }

    #[test]
    fn oversized_messages_are_split_on_character_boundaries() {
        let big = "é".repeat(MAX_MESSAGE_BYTES / 2 + 10) + "\n";
        let events = Assembler::new(None).push(1, &big, at(1));
        assert_eq!(events.len(), 2);
        assert!(events.iter().all(|e| e.message.len() <= MAX_MESSAGE_BYTES));
        assert_eq!(events.iter().map(|e| e.message.as_str()).collect::<String>(), big.trim_end());
        // A multiline event stops growing at the limit and a new one begins.
        let mut a = Assembler::new(Some(regex::Regex::new("^START").unwrap()));
        let chunk = "x".repeat(MAX_MESSAGE_BYTES / 2);
        assert!(a.push(1, "START\n", at(1)).is_empty());
        assert!(a.push(1, &format!("{chunk}\n"), at(2)).is_empty());
        assert_eq!(a.push(1, &format!("{chunk}\n"), at(3)).len(), 1);
        assert_eq!(messages(&a.flush()), [chunk.as_str()]);
    }

    fn ev(timestamp: i64, len: usize, offset: u64) -> Event {
        Event { timestamp, message: "m".repeat(len), end: at(offset) }
    }

    #[test]
    fn batches_keep_within_count_bytes_and_span_in_timestamp_order() {
        let mut q: VecDeque<Event> = (0..10_050).map(|i| ev(i, 1, i as u64)).collect();
        let (b, end) = take_batch(&mut q);
        assert_eq!((b.len(), end), (MAX_BATCH_EVENTS, Some(at(9_999))));
        assert_eq!(q.len(), 50);

        // 1 MiB counts 26 bytes per event: four events of 262,118 bytes fit exactly, five do not.
        let mut q: VecDeque<Event> = (0..5).map(|i| ev(i, MAX_MESSAGE_BYTES, i as u64)).collect();
        assert_eq!(take_batch(&mut q).0.len(), 4);
        assert_eq!(take_batch(&mut q).0.len(), 1);
        assert!(take_batch(&mut q).0.is_empty());

        let mut q: VecDeque<Event> = [ev(0, 1, 1), ev(MAX_SPAN_MS, 1, 2), ev(MAX_SPAN_MS + 1, 1, 3)].into();
        assert_eq!(take_batch(&mut q).0.len(), 2);
        assert_eq!(take_batch(&mut q).0.len(), 1);

        // A clock step back: sent sorted (stable), checkpointed at the last line read.
        let mut q: VecDeque<Event> = [ev(5, 1, 1), ev(3, 2, 2), ev(5, 3, 3), ev(4, 4, 4)].into();
        let (b, end) = take_batch(&mut q);
        let order: Vec<(i64, usize)> = b.iter().map(|e| (e.timestamp, e.message.len())).collect();
        assert_eq!(order, [(3, 2), (4, 4), (5, 1), (5, 3)]);
        assert_eq!(end, Some(at(4)));
    }
}
