//! The reliable streams of one data channel, as the SSM agent and the plugin keep them: each
//! side numbers its stream messages from 0, the receiver acknowledges each one, and the sender
//! keeps what was not acknowledged and sends it again after a retransmission timeout (RTO)
//! derived from measured round trips.
//!
//! [`Outgoing`] is the sender's side: a window of at most `window` unacknowledged messages
//! (so a slow reader holds back the producer instead of growing a buffer), RTT smoothing by
//! 1/8 and variance by 1/4 with a 10 ms clock granularity and a 1 s ceiling (the agent's
//! constants), Karn's rule (no samples from messages sent twice) and exponential back-off of
//! each message's resend time. [`Incoming`] is the receiver's: the next expected number and a
//! bounded set of messages that arrived ahead of it.
//!
//! Pure bookkeeping: the caller passes the time and does the I/O.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::codec::AgentMessage;

/// The RTO before any round trip was measured.
pub const INITIAL_RTO: Duration = Duration::from_millis(200);
const INITIAL_RTT: f64 = 0.1;
const RTT_GAIN: f64 = 1.0 / 8.0;
const RTTVAR_GAIN: f64 = 1.0 / 4.0;
const CLOCK_GRANULARITY: f64 = 0.010;
/// The computed RTO never exceeds this.
pub const MAX_RTO: Duration = Duration::from_secs(1);
/// A message sent again and again waits at most this long between two sends.
pub const MAX_BACKOFF: Duration = Duration::from_secs(4);

/// One message sent and not yet acknowledged.
#[derive(Debug)]
struct Slot {
    /// `None` once acknowledged (a message acknowledged ahead of older ones waits for them
    /// to leave the window).
    frame: Option<Bytes>,
    sent_at: Instant,
    resend_at: Instant,
    sends: u32,
}

/// What an acknowledgement did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acked {
    /// It acknowledged a message in the window.
    New,
    /// The message was acknowledged already, or never sent.
    Stale,
}

/// The sending side of a stream; see the module docs.
#[derive(Debug)]
pub struct Outgoing {
    next_seq: i64,
    /// The sequence number of `slots[0]`.
    base: i64,
    slots: VecDeque<Slot>,
    window: usize,
    rtt: f64,
    rttvar: f64,
    rto: Duration,
}

impl Outgoing {
    pub fn new(window: usize) -> Outgoing {
        Outgoing {
            next_seq: 0,
            base: 0,
            slots: VecDeque::with_capacity(window),
            window: window.max(1),
            rtt: INITIAL_RTT,
            rttvar: 0.0,
            rto: INITIAL_RTO,
        }
    }

    /// The sequence number the next message gets.
    pub fn next_seq(&self) -> i64 {
        self.next_seq
    }

    /// How many more messages may be sent before acknowledgements come back.
    pub fn room(&self) -> usize {
        self.window.saturating_sub(self.slots.len())
    }

    /// Whether every message sent was acknowledged.
    pub fn all_acked(&self) -> bool {
        self.slots.is_empty()
    }

    /// Messages sent and not acknowledged.
    pub fn in_flight(&self) -> usize {
        self.slots.iter().filter(|s| s.frame.is_some()).count()
    }

    pub fn rto(&self) -> Duration {
        self.rto
    }

    /// Records a new message sent at `now`: `build` makes its frame for the sequence number
    /// it is given. Returns the frame to send. The caller checks [`Outgoing::room`] first;
    /// past the window the message is still recorded (a stream never drops data).
    pub fn send(&mut self, now: Instant, build: impl FnOnce(i64) -> Bytes) -> Bytes {
        let seq = self.next_seq;
        self.next_seq += 1;
        let frame = build(seq);
        self.slots.push_back(Slot {
            frame: Some(frame.clone()),
            sent_at: now,
            resend_at: now + self.rto,
            sends: 1,
        });
        frame
    }

    /// Applies the acknowledgement of message `seq`, received at `now`.
    pub fn ack(&mut self, seq: i64, now: Instant) -> Acked {
        let Some(index) = seq.checked_sub(self.base).and_then(|i| usize::try_from(i).ok()) else {
            return Acked::Stale;
        };
        let Some(slot) = self.slots.get_mut(index) else { return Acked::Stale };
        if slot.frame.take().is_none() {
            return Acked::Stale;
        }
        if slot.sends == 1 {
            let sample = now.saturating_duration_since(slot.sent_at).as_secs_f64();
            self.sample(sample);
        }
        while self.slots.front().is_some_and(|s| s.frame.is_none()) {
            self.slots.pop_front();
            self.base += 1;
        }
        Acked::New
    }

    fn sample(&mut self, rtt: f64) {
        self.rttvar = (1.0 - RTTVAR_GAIN) * self.rttvar + RTTVAR_GAIN * (self.rtt - rtt).abs();
        self.rtt = (1.0 - RTT_GAIN) * self.rtt + RTT_GAIN * rtt;
        let rto = self.rtt + CLOCK_GRANULARITY.max(4.0 * self.rttvar);
        self.rto = Duration::from_secs_f64(rto).min(MAX_RTO);
    }

    /// The frames whose resend time has come at `now`, oldest first; each waits twice as
    /// long before its next resend (up to [`MAX_BACKOFF`]).
    pub fn due(&mut self, now: Instant) -> Vec<Bytes> {
        let rto = self.rto;
        let mut out = Vec::new();
        for slot in &mut self.slots {
            let Some(frame) = &slot.frame else { continue };
            if slot.resend_at <= now {
                out.push(frame.clone());
                slot.sends += 1;
                slot.resend_at = now + backoff(rto, slot.sends);
            }
        }
        out
    }

    /// Every unacknowledged frame, oldest first, as if due now (a new connection of the
    /// same session starts with them).
    pub fn resend_all(&mut self, now: Instant) -> Vec<Bytes> {
        for slot in &mut self.slots {
            slot.resend_at = now;
        }
        self.due(now)
    }

    /// When the next resend is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.slots.iter().filter(|s| s.frame.is_some()).map(|s| s.resend_at).min()
    }

    /// How long the oldest unacknowledged message has waited since it was first sent.
    pub fn oldest_wait(&self, now: Instant) -> Option<Duration> {
        self.slots.iter().find(|s| s.frame.is_some()).map(|s| now.saturating_duration_since(s.sent_at))
    }
}

/// The wait before send number `sends + 1` of a message.
fn backoff(rto: Duration, sends: u32) -> Duration {
    let factor = 1u32 << sends.saturating_sub(1).min(16);
    rto.saturating_mul(factor).min(MAX_BACKOFF)
}

/// Where an arriving stream message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The next one expected: process it.
    InOrder,
    /// Ahead of the next one: hold it (acknowledged) until the gap fills.
    Ahead,
    /// Processed already: acknowledge it again, nothing else.
    Behind,
    /// Ahead, and no room to hold it: drop it unacknowledged (it comes again).
    Full,
}

/// The receiving side of a stream; see the module docs.
#[derive(Debug)]
pub struct Incoming {
    expected: i64,
    held: BTreeMap<i64, AgentMessage>,
    capacity: usize,
}

impl Incoming {
    pub fn new(capacity: usize) -> Incoming {
        Incoming { expected: 0, held: BTreeMap::new(), capacity }
    }

    pub fn expected(&self) -> i64 {
        self.expected
    }

    pub fn classify(&self, seq: i64) -> Arrival {
        if seq == self.expected {
            Arrival::InOrder
        } else if seq < self.expected {
            Arrival::Behind
        } else if self.held.contains_key(&seq) || self.held.len() < self.capacity {
            Arrival::Ahead
        } else {
            Arrival::Full
        }
    }

    /// Keeps a message that arrived [`Arrival::Ahead`].
    pub fn hold(&mut self, msg: AgentMessage) {
        if self.held.len() < self.capacity || self.held.contains_key(&msg.sequence_number) {
            self.held.insert(msg.sequence_number, msg);
        }
    }

    /// The expected message was processed.
    pub fn advance(&mut self) {
        self.expected += 1;
        // Anything held at or below the new mark is a duplicate now.
        while let Some((&seq, _)) = self.held.first_key_value() {
            if seq >= self.expected {
                break;
            }
            self.held.pop_first();
        }
    }

    /// The held message that is next in order, if it arrived; [`Incoming::advance`] once it
    /// is processed, or [`Incoming::hold`] it again when it cannot be yet.
    pub fn take_next(&mut self) -> Option<AgentMessage> {
        self.held.remove(&self.expected)
    }

    /// Whether the message next in line is held (waiting for room to be processed).
    pub fn has_next(&self) -> bool {
        self.held.contains_key(&self.expected)
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::codec::{MessageType, PayloadType};

    fn frame(seq: i64) -> Bytes {
        Bytes::from(seq.to_string())
    }

    #[test]
    fn the_window_bounds_what_is_in_flight() {
        let t0 = Instant::now();
        let mut out = Outgoing::new(3);
        for _ in 0..3 {
            out.send(t0, frame);
        }
        assert_eq!((out.room(), out.in_flight(), out.next_seq()), (0, 3, 3));
        assert_eq!(out.ack(1, t0), Acked::New);
        // Acknowledged out of order: the window opens only when the oldest goes.
        assert_eq!(out.room(), 0);
        assert_eq!(out.ack(0, t0), Acked::New);
        assert_eq!(out.room(), 2);
        assert_eq!(out.ack(0, t0), Acked::Stale);
        assert_eq!(out.ack(1, t0), Acked::Stale);
        assert_eq!(out.ack(9, t0), Acked::Stale);
        assert_eq!(out.ack(-5, t0), Acked::Stale);
        assert!(!out.all_acked());
        assert_eq!(out.ack(2, t0), Acked::New);
        assert!(out.all_acked());
    }

    #[test]
    fn unacknowledged_messages_come_again_with_back_off() {
        let t0 = Instant::now();
        let mut out = Outgoing::new(10);
        out.send(t0, frame);
        out.send(t0 + Duration::from_millis(50), frame);
        assert!(out.due(t0 + Duration::from_millis(199)).is_empty());
        assert_eq!(out.due(t0 + INITIAL_RTO), vec![frame(0)]);
        assert_eq!(out.due(t0 + Duration::from_millis(250)), vec![frame(1)]);
        // The second send of 0 waits 2 RTOs, the third 4.
        let second = t0 + INITIAL_RTO;
        assert!(out.due(second + Duration::from_millis(399)).is_empty());
        assert_eq!(out.due(second + Duration::from_millis(400)), vec![frame(0)]);
        let third = second + Duration::from_millis(400);
        assert!(out.due(third + Duration::from_millis(799)).iter().all(|f| *f != frame(0)));
        assert!(out.due(third + Duration::from_millis(800)).contains(&frame(0)));
        // The back-off has a ceiling.
        assert_eq!(backoff(INITIAL_RTO, 30), MAX_BACKOFF);
        // A message sent twice gives no RTT sample (Karn), so the RTO stays.
        out.ack(0, third + Duration::from_secs(3));
        assert_eq!(out.rto(), INITIAL_RTO);
        assert_eq!(out.oldest_wait(t0 + Duration::from_secs(5)), Some(Duration::from_millis(4950)));
        assert_eq!(out.resend_all(t0 + Duration::from_secs(5)), vec![frame(1)]);
        assert_eq!(out.next_due().unwrap() - (t0 + Duration::from_secs(5)), Duration::from_millis(1600));
    }

    #[test]
    fn the_rto_follows_measured_round_trips_within_bounds() {
        let t0 = Instant::now();
        let mut out = Outgoing::new(1000);
        for i in 0..200 {
            let at = t0 + Duration::from_millis(i);
            out.send(at, frame);
            out.ack(i as i64, at + Duration::from_micros(100));
        }
        // Fast round trips bring it down to the RTT plus the clock granularity.
        assert!(out.rto() < Duration::from_millis(15), "{:?}", out.rto());
        assert!(out.rto() >= Duration::from_millis(10), "{:?}", out.rto());
        let mut slow = Outgoing::new(1000);
        for i in 0..50 {
            let at = t0 + Duration::from_secs(10 * i);
            slow.send(at, frame);
            slow.ack(i as i64, at + Duration::from_secs(5));
        }
        assert_eq!(slow.rto(), MAX_RTO);
    }

    fn input(seq: i64) -> AgentMessage {
        AgentMessage::new(
            MessageType::InputStreamData,
            seq,
            0,
            uuid::Uuid::nil(),
            PayloadType::Output,
            Bytes::from(seq.to_string()),
            1,
        )
    }

    #[test]
    fn incoming_messages_are_put_in_order_within_a_bound() {
        let mut inc = Incoming::new(2);
        assert_eq!(inc.classify(0), Arrival::InOrder);
        assert_eq!(inc.classify(2), Arrival::Ahead);
        inc.hold(input(2));
        inc.hold(input(3));
        assert_eq!(inc.classify(4), Arrival::Full);
        // Again a held one: still "ahead", not a reason to drop.
        assert_eq!(inc.classify(3), Arrival::Ahead);
        inc.hold(input(4));
        assert_eq!(inc.held(), 2);
        assert!(inc.take_next().is_none());
        inc.advance();
        assert_eq!(inc.classify(0), Arrival::Behind);
        assert_eq!(inc.classify(1), Arrival::InOrder);
        inc.advance();
        let two = inc.take_next().unwrap();
        assert_eq!(two.sequence_number, 2);
        // Cannot be processed now: back it goes.
        inc.hold(two);
        let two = inc.take_next().unwrap();
        inc.advance();
        assert_eq!(two.payload, Bytes::from("2"));
        assert_eq!(inc.take_next().unwrap().sequence_number, 3);
        inc.advance();
        assert!(inc.take_next().is_none());
        assert_eq!(inc.expected(), 4);
        assert_eq!(inc.held(), 0);
    }
}
