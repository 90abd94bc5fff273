//! The binary message of the Session Manager data channel (the SSM agent's `AgentMessage`, the
//! plugin's `ClientMessage`): a 120-byte preamble and a payload, every integer big-endian.
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 4 | header length, always 116 (the payload starts at header length + 4) |
//! | 4 | 32 | message type, ASCII, padded with spaces |
//! | 36 | 4 | schema version |
//! | 40 | 8 | created date, epoch milliseconds |
//! | 48 | 8 | sequence number (signed) |
//! | 56 | 8 | flags (bit 0 SYN, bit 1 FIN) |
//! | 64 | 16 | message id: the UUID's last 8 bytes, then its first 8 |
//! | 80 | 32 | SHA-256 of the payload |
//! | 112 | 4 | payload type |
//! | 116 | 4 | payload length |
//! | 120 | n | payload |
//!
//! Pure: no I/O, no clock (the caller passes the time). Decoding never panics; what is wrong
//! with a frame is a [`FrameError`].

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// The header length every message declares.
pub const HEADER_LENGTH: u32 = 116;
/// Bytes before the payload: the header length field and the header.
pub const PREAMBLE: usize = HEADER_LENGTH as usize + 4;
/// The largest payload accepted. The plugin sends at most 1024 bytes of input per message and
/// small JSON documents; anything near this is not a client speaking the protocol.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// The largest output payload ecsd sends to the plugin (the SSM agent's
/// `StreamDataPayloadSize`); ecsd's own client gets larger ones (`session::ECSD_CHUNK`).
pub const OUTPUT_CHUNK: usize = 1024;

const TYPE_AT: usize = 4;
const TYPE_LEN: usize = 32;
const SCHEMA_AT: usize = 36;
const CREATED_AT: usize = 40;
const SEQUENCE_AT: usize = 48;
const FLAGS_AT: usize = 56;
const ID_AT: usize = 64;
const DIGEST_AT: usize = 80;
const PAYLOAD_TYPE_AT: usize = 112;
const PAYLOAD_LENGTH_AT: usize = 116;

/// Flag bit 0: the first message of a stream.
pub const FLAG_SYN: u64 = 1;
/// Flag bit 1: the last message of a stream.
pub const FLAG_FIN: u64 = 2;
/// Acknowledgements carry both flags, as the agent and the plugin send them.
pub const FLAGS_ACK: u64 = FLAG_SYN | FLAG_FIN;

/// The message types of the data channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// Client → server: keystrokes, terminal size, handshake answers.
    InputStreamData,
    /// Server → client: output and the handshake.
    OutputStreamData,
    /// Either way: a stream message arrived.
    Acknowledge,
    /// Server → client: the session is over.
    ChannelClosed,
    /// Server → client: flow control the plugin ignores.
    StartPublication,
    PausePublication,
    /// Agent → service; never seen on a client's channel.
    AgentSessionState,
}

impl MessageType {
    pub const ALL: [MessageType; 7] = [
        MessageType::InputStreamData,
        MessageType::OutputStreamData,
        MessageType::Acknowledge,
        MessageType::ChannelClosed,
        MessageType::StartPublication,
        MessageType::PausePublication,
        MessageType::AgentSessionState,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::InputStreamData => "input_stream_data",
            MessageType::OutputStreamData => "output_stream_data",
            MessageType::Acknowledge => "acknowledge",
            MessageType::ChannelClosed => "channel_closed",
            MessageType::StartPublication => "start_publication",
            MessageType::PausePublication => "pause_publication",
            MessageType::AgentSessionState => "agent_session_state",
        }
    }

    fn parse(s: &str) -> Option<MessageType> {
        MessageType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Publication notices carry no digest worth checking (the plugin skips them too).
    fn is_publication(self) -> bool {
        matches!(self, MessageType::StartPublication | MessageType::PausePublication)
    }
}

/// What a stream message's payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadType {
    /// Acknowledgements and `channel_closed` have no payload type.
    Undefined,
    /// Terminal bytes: output to the client, keystrokes to the server.
    Output,
    Error,
    /// `{"cols":N,"rows":N}`: the client's terminal size.
    Size,
    Parameter,
    HandshakeRequest,
    HandshakeResponse,
    HandshakeComplete,
    EncChallengeRequest,
    EncChallengeResponse,
    /// A big-endian u32 flag (TerminateSession and the like).
    Flag,
    /// A non-terminal process's stderr.
    StdErr,
    /// `EXIT_CODE: N`.
    ExitCode,
    /// A number this codec does not know; kept, so the receiver decides.
    Other(u32),
}

impl PayloadType {
    pub fn code(self) -> u32 {
        match self {
            PayloadType::Undefined => 0,
            PayloadType::Output => 1,
            PayloadType::Error => 2,
            PayloadType::Size => 3,
            PayloadType::Parameter => 4,
            PayloadType::HandshakeRequest => 5,
            PayloadType::HandshakeResponse => 6,
            PayloadType::HandshakeComplete => 7,
            PayloadType::EncChallengeRequest => 8,
            PayloadType::EncChallengeResponse => 9,
            PayloadType::Flag => 10,
            PayloadType::StdErr => 11,
            PayloadType::ExitCode => 12,
            PayloadType::Other(n) => n,
        }
    }

    pub fn from_code(code: u32) -> PayloadType {
        match code {
            0 => PayloadType::Undefined,
            1 => PayloadType::Output,
            2 => PayloadType::Error,
            3 => PayloadType::Size,
            4 => PayloadType::Parameter,
            5 => PayloadType::HandshakeRequest,
            6 => PayloadType::HandshakeResponse,
            7 => PayloadType::HandshakeComplete,
            8 => PayloadType::EncChallengeRequest,
            9 => PayloadType::EncChallengeResponse,
            10 => PayloadType::Flag,
            11 => PayloadType::StdErr,
            12 => PayloadType::ExitCode,
            n => PayloadType::Other(n),
        }
    }
}

/// One message of the data channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentMessage {
    pub message_type: MessageType,
    pub schema_version: u32,
    /// Epoch milliseconds; never 0 on the wire.
    pub created_date: u64,
    pub sequence_number: i64,
    pub flags: u64,
    pub message_id: uuid::Uuid,
    pub payload_type: PayloadType,
    pub payload: Bytes,
}

/// Why bytes are not a data-channel message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("the message is {len} bytes, shorter than the {PREAMBLE}-byte header")]
    Short { len: usize },
    #[error("the header length is {found}, not {HEADER_LENGTH}")]
    HeaderLength { found: u32 },
    #[error("the message type is empty")]
    NoType,
    #[error("the message type {0:?} is not one of the data channel's")]
    UnknownType(String),
    #[error("the created date is 0")]
    NoDate,
    #[error("the payload length says {declared} bytes but {actual} follow the header")]
    LengthMismatch { declared: u32, actual: usize },
    #[error("the payload is {len} bytes, more than the {MAX_PAYLOAD} accepted")]
    Oversized { len: usize },
    #[error("the payload does not match its SHA-256 digest")]
    Digest,
}

impl AgentMessage {
    /// A message of `message_type` created at `created_ms` (epoch milliseconds).
    pub fn new(
        message_type: MessageType,
        sequence_number: i64,
        flags: u64,
        message_id: uuid::Uuid,
        payload_type: PayloadType,
        payload: impl Into<Bytes>,
        created_ms: u64,
    ) -> AgentMessage {
        AgentMessage {
            message_type,
            schema_version: 1,
            // 0 means "missing" to every reader.
            created_date: created_ms.max(1),
            sequence_number,
            flags,
            message_id,
            payload_type,
            payload: payload.into(),
        }
    }

    /// The message on the wire, its digest computed.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(PREAMBLE + self.payload.len());
        out.extend_from_slice(&HEADER_LENGTH.to_be_bytes());
        let name = self.message_type.as_str().as_bytes();
        out.extend_from_slice(name);
        out.resize(TYPE_AT + TYPE_LEN, b' ');
        out.extend_from_slice(&self.schema_version.to_be_bytes());
        out.extend_from_slice(&self.created_date.to_be_bytes());
        out.extend_from_slice(&self.sequence_number.to_be_bytes());
        out.extend_from_slice(&self.flags.to_be_bytes());
        let id = self.message_id.as_bytes();
        out.extend_from_slice(&id[8..16]);
        out.extend_from_slice(&id[0..8]);
        out.extend_from_slice(&Sha256::digest(&self.payload));
        out.extend_from_slice(&self.payload_type.code().to_be_bytes());
        // The payload is bounded by whoever builds the message; the field is 32 bits.
        let len = u32::try_from(self.payload.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    /// Reads a message, checking what the agent and the plugin check (header length, type,
    /// date, digest) and what keeps a reader bounded (the payload length).
    pub fn decode(frame: Bytes) -> Result<AgentMessage, FrameError> {
        if frame.len() < PREAMBLE {
            return Err(FrameError::Short { len: frame.len() });
        }
        let header_length = u32_at(&frame, 0);
        if header_length != HEADER_LENGTH {
            return Err(FrameError::HeaderLength { found: header_length });
        }
        let raw_type = &frame[TYPE_AT..TYPE_AT + TYPE_LEN];
        let trimmed = trim(raw_type);
        if trimmed.is_empty() {
            return Err(FrameError::NoType);
        }
        let message_type = std::str::from_utf8(trimmed)
            .ok()
            .and_then(MessageType::parse)
            .ok_or_else(|| FrameError::UnknownType(String::from_utf8_lossy(trimmed).into_owned()))?;
        let created_date = u64_at(&frame, CREATED_AT);
        if created_date == 0 && !message_type.is_publication() {
            return Err(FrameError::NoDate);
        }
        let declared = u32_at(&frame, PAYLOAD_LENGTH_AT);
        let actual = frame.len() - PREAMBLE;
        if actual > MAX_PAYLOAD {
            return Err(FrameError::Oversized { len: actual });
        }
        if declared as usize != actual {
            return Err(FrameError::LengthMismatch { declared, actual });
        }
        let payload = frame.slice(PREAMBLE..);
        if !payload.is_empty()
            && !message_type.is_publication()
            && Sha256::digest(&payload).as_slice() != &frame[DIGEST_AT..DIGEST_AT + 32]
        {
            return Err(FrameError::Digest);
        }
        let mut id = [0u8; 16];
        id[8..16].copy_from_slice(&frame[ID_AT..ID_AT + 8]);
        id[0..8].copy_from_slice(&frame[ID_AT + 8..ID_AT + 16]);
        Ok(AgentMessage {
            message_type,
            schema_version: u32_at(&frame, SCHEMA_AT),
            created_date,
            sequence_number: u64_at(&frame, SEQUENCE_AT) as i64,
            flags: u64_at(&frame, FLAGS_AT),
            message_id: uuid::Uuid::from_bytes(id),
            payload_type: PayloadType::from_code(u32_at(&frame, PAYLOAD_TYPE_AT)),
            payload,
        })
    }
}

/// The type field without the NULs and spaces that pad it.
fn trim(raw: &[u8]) -> &[u8] {
    let pad = |b: &u8| *b == 0 || b.is_ascii_whitespace();
    let start = raw.iter().position(|b| !pad(b)).unwrap_or(raw.len());
    let end = raw.iter().rposition(|b| !pad(b)).map_or(start, |i| i + 1);
    &raw[start..end]
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// Message ids for one side of one session: unique within it, unpredictable across
/// sessions, and cheap (no system call per message).
#[derive(Debug)]
pub struct MessageIds {
    base: u128,
    next: u64,
}

impl MessageIds {
    pub fn new(seed: [u8; 16]) -> MessageIds {
        MessageIds { base: u128::from_be_bytes(seed), next: 0 }
    }

    /// The next id: a version-4 UUID.
    pub fn next_id(&mut self) -> uuid::Uuid {
        self.next = self.next.wrapping_add(1);
        let mixed = self.base ^ u128::from(self.next);
        uuid::Builder::from_random_bytes(mixed.to_be_bytes()).into_uuid()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message written byte by byte from the layout in the reference (ecs-reference §6.4),
    /// independently of [`AgentMessage::encode`].
    fn by_hand(kind: &str, seq: i64, flags: u64, id: [u8; 16], payload_type: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = vec![];
        b.extend_from_slice(&[0, 0, 0, 116]);
        let mut name = kind.as_bytes().to_vec();
        name.resize(32, b' ');
        b.extend_from_slice(&name);
        b.extend_from_slice(&[0, 0, 0, 1]);
        b.extend_from_slice(&1_714_557_900_123u64.to_be_bytes());
        b.extend_from_slice(&seq.to_be_bytes());
        b.extend_from_slice(&flags.to_be_bytes());
        b.extend_from_slice(&id[8..]);
        b.extend_from_slice(&id[..8]);
        b.extend_from_slice(&Sha256::digest(payload));
        b.extend_from_slice(&payload_type.to_be_bytes());
        b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        b.extend_from_slice(payload);
        b
    }

    const ID: [u8; 16] =
        [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0x4d, 0xef, 0x81, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef];

    #[test]
    fn the_layout_matches_the_reference_byte_for_byte() {
        let msg = AgentMessage::new(
            MessageType::OutputStreamData,
            7,
            FLAG_SYN,
            uuid::Uuid::from_bytes(ID),
            PayloadType::Output,
            Bytes::from_static(b"hello\r\n"),
            1_714_557_900_123,
        );
        let wire = msg.encode();
        assert_eq!(wire, by_hand("output_stream_data", 7, 1, ID, 1, b"hello\r\n"));
        assert_eq!(wire.len(), 120 + 7);
        // Spot checks of the fields the plugin reads at fixed offsets.
        assert_eq!(&wire[0..4], &[0, 0, 0, 116]);
        assert_eq!(&wire[4..22], b"output_stream_data");
        assert!(wire[22..36].iter().all(|b| *b == b' '));
        assert_eq!(&wire[48..56], &[0, 0, 0, 0, 0, 0, 0, 7]);
        // The UUID's halves are swapped: least significant first.
        assert_eq!(&wire[64..72], &ID[8..16]);
        assert_eq!(&wire[72..80], &ID[0..8]);
        assert_eq!(&wire[112..116], &[0, 0, 0, 1]);
        assert_eq!(&wire[116..120], &[0, 0, 0, 7]);
        assert_eq!(AgentMessage::decode(Bytes::from(wire)).unwrap(), msg);
    }

    #[test]
    fn an_acknowledgement_from_the_plugin_decodes() {
        let payload = br#"{"AcknowledgedMessageType":"output_stream_data","AcknowledgedMessageId":"01234567-89ab-4def-8123-456789abcdef","AcknowledgedMessageSequenceNumber":3,"IsSequentialMessage":true}"#;
        let wire = by_hand("acknowledge", 0, 3, ID, 0, payload);
        let msg = AgentMessage::decode(Bytes::from(wire)).unwrap();
        assert_eq!(msg.message_type, MessageType::Acknowledge);
        assert_eq!(
            (msg.sequence_number, msg.flags, msg.payload_type),
            (0, FLAGS_ACK, PayloadType::Undefined)
        );
        assert_eq!(msg.message_id.to_string(), "01234567-89ab-4def-8123-456789abcdef");
        assert_eq!(&msg.payload[..], &payload[..]);
    }

    #[test]
    fn a_negative_sequence_number_and_unknown_payload_type_survive() {
        let wire = by_hand("input_stream_data", -1, 0, ID, 99, b"x");
        let msg = AgentMessage::decode(Bytes::from(wire)).unwrap();
        assert_eq!(msg.sequence_number, -1);
        assert_eq!(msg.payload_type, PayloadType::Other(99));
        assert_eq!(msg.payload_type.code(), 99);
    }

    #[test]
    fn malformed_frames_are_typed_errors() {
        let good = by_hand("input_stream_data", 0, 0, ID, 1, b"ls\r");
        let decode = |b: Vec<u8>| AgentMessage::decode(Bytes::from(b));
        assert!(decode(good.clone()).is_ok(), "positive control");

        assert_eq!(decode(vec![]), Err(FrameError::Short { len: 0 }));
        assert_eq!(decode(good[..119].to_vec()), Err(FrameError::Short { len: 119 }));

        let mut b = good.clone();
        b[3] = 112;
        assert_eq!(decode(b), Err(FrameError::HeaderLength { found: 112 }));

        let mut b = good.clone();
        b[4..36].fill(b' ');
        assert_eq!(decode(b), Err(FrameError::NoType));
        let mut b = good.clone();
        b[4..36].fill(0);
        assert_eq!(decode(b), Err(FrameError::NoType));

        let b = by_hand("shell_data", 0, 0, ID, 1, b"x");
        assert_eq!(decode(b), Err(FrameError::UnknownType("shell_data".into())));
        let mut b = good.clone();
        b[4] = 0xff;
        assert!(matches!(decode(b), Err(FrameError::UnknownType(_))));

        let mut b = good.clone();
        b[40..48].fill(0);
        assert_eq!(decode(b), Err(FrameError::NoDate));

        let mut b = good.clone();
        b[119] = 9;
        assert_eq!(decode(b), Err(FrameError::LengthMismatch { declared: 9, actual: 3 }));
        let mut b = good.clone();
        b.push(b'!');
        assert_eq!(decode(b), Err(FrameError::LengthMismatch { declared: 3, actual: 4 }));

        let mut b = good.clone();
        let last = b.len() - 1;
        b[last] = b'\n';
        assert_eq!(decode(b), Err(FrameError::Digest));
        let mut b = good.clone();
        b[80] ^= 1;
        assert_eq!(decode(b), Err(FrameError::Digest));

        let big = vec![b'a'; MAX_PAYLOAD + 1];
        assert_eq!(
            decode(by_hand("input_stream_data", 0, 0, ID, 1, &big)),
            Err(FrameError::Oversized { len: MAX_PAYLOAD + 1 })
        );
        let fits = vec![b'a'; MAX_PAYLOAD];
        assert!(decode(by_hand("input_stream_data", 0, 0, ID, 1, &fits)).is_ok());
    }

    #[test]
    fn an_empty_payload_needs_no_digest_and_publications_skip_it() {
        let mut b = by_hand("input_stream_data", 0, 0, ID, 1, b"");
        b[80..112].fill(0);
        assert!(AgentMessage::decode(Bytes::from(b)).unwrap().payload.is_empty());
        let mut b = by_hand("pause_publication", 0, 0, ID, 0, b"{}");
        b[80..112].fill(0);
        b[40..48].fill(0);
        assert_eq!(AgentMessage::decode(Bytes::from(b)).unwrap().message_type, MessageType::PausePublication);
    }

    #[test]
    fn every_message_type_and_payload_type_round_trips() {
        for (i, t) in MessageType::ALL.into_iter().enumerate() {
            for code in 0..=13 {
                let msg = AgentMessage::new(
                    t,
                    i as i64,
                    0,
                    uuid::Uuid::new_v4(),
                    PayloadType::from_code(code),
                    Bytes::from(vec![code as u8; code as usize]),
                    1,
                );
                assert_eq!(AgentMessage::decode(Bytes::from(msg.encode())).unwrap(), msg);
            }
        }
        // A creation time of 0 is written as 1: readers refuse 0.
        let msg = AgentMessage::new(
            MessageType::Acknowledge,
            0,
            FLAGS_ACK,
            uuid::Uuid::nil(),
            PayloadType::Undefined,
            Bytes::new(),
            0,
        );
        assert_eq!(msg.created_date, 1);
    }

    #[test]
    fn message_ids_are_distinct_version_4_uuids() {
        let mut ids = MessageIds::new([7; 16]);
        let a: Vec<uuid::Uuid> = (0..1000).map(|_| ids.next_id()).collect();
        let unique: std::collections::HashSet<_> = a.iter().collect();
        assert_eq!(unique.len(), 1000);
        assert!(a.iter().all(|u| u.get_version_num() == 4));
        let mut other = MessageIds::new([8; 16]);
        assert_ne!(other.next_id(), MessageIds::new([7; 16]).next_id());
    }
}
