//! The JSON documents the data channel carries: the client's opening text frame, the
//! acknowledgement, the handshake, the terminal size, `channel_closed`, and the flags and exit
//! code payloads. Field names are the Go structs' of the plugin and the SSM agent.
//!
//! ecsd's own client (`ecsd exec`) adds one optional member to the opening frame, `EcsdExec`:
//! whether it wants a terminal, whether it sends stdin, and its terminal's size. A server that
//! sees it may also send stderr apart (payload type StdErr) and the exit code (payload type
//! ExitCode, `EXIT_CODE: N`) before `channel_closed`, and honours the ecsd flags below. The
//! stock plugin never sends it and never gets those.

use serde::{Deserialize, Serialize};

use super::codec::{AgentMessage, MessageType};

/// The session type ecsd asks for in the handshake: ECS Exec's.
pub const SESSION_TYPE: &str = "InteractiveCommands";
/// The protocol level ecsd speaks: the SSM agent version whose data channel it follows.
pub const AGENT_VERSION: &str = "3.3.0.0";
/// `ActionStatus` of a processed client action that succeeded.
pub const ACTION_SUCCESS: i64 = 1;

/// Flag payload (big-endian u32): the client ends the session (the plugin's
/// `TerminateSession`).
pub const FLAG_TERMINATE_SESSION: u32 = 2;
/// ecsd's flags live above this; the SSM ones are small numbers.
const ECSD_FLAGS: u32 = 0x6563_0000;
/// ecsd flag: the client's stdin is at its end; close the process's stdin.
pub const FLAG_STDIN_EOF: u32 = ECSD_FLAGS | 0x8000;
/// ecsd flag: send signal `n` (1..=64) to the process: `FLAG_SIGNAL | n`.
pub const FLAG_SIGNAL: u32 = ECSD_FLAGS;

/// A flag payload, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    TerminateSession,
    StdinEof,
    Signal(i32),
    /// Another flag of the SSM protocol (port forwarding's), not for ECS Exec.
    Other(u32),
}

impl Flag {
    pub fn parse(payload: &[u8]) -> Option<Flag> {
        let raw = u32::from_be_bytes(payload.try_into().ok()?);
        Some(match raw {
            FLAG_TERMINATE_SESSION => Flag::TerminateSession,
            FLAG_STDIN_EOF => Flag::StdinEof,
            n if n & 0xffff_0000 == FLAG_SIGNAL && (1..=64).contains(&(n & 0xffff)) => {
                Flag::Signal((n & 0xffff) as i32)
            }
            n => Flag::Other(n),
        })
    }

    pub fn encode(self) -> [u8; 4] {
        let raw = match self {
            Flag::TerminateSession => FLAG_TERMINATE_SESSION,
            Flag::StdinEof => FLAG_STDIN_EOF,
            Flag::Signal(n) => FLAG_SIGNAL | (n as u32 & 0xffff),
            Flag::Other(n) => n,
        };
        raw.to_be_bytes()
    }
}

/// The first (text) frame a client sends on a new websocket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct OpenDataChannelInput {
    #[serde(default)]
    pub message_schema_version: String,
    #[serde(default)]
    pub request_id: String,
    pub token_value: String,
    #[serde(default)]
    pub client_id: String,
    #[serde(default)]
    pub client_version: String,
    #[serde(rename = "EcsdExec", default, skip_serializing_if = "Option::is_none")]
    pub ecsd_exec: Option<ClientOptions>,
}

/// What `ecsd exec` asks for when it opens the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ClientOptions {
    /// Run the command with a terminal.
    pub tty: bool,
    /// The client sends stdin (and the StdinEof flag at its end); without it the process's
    /// stdin is empty.
    pub stdin: bool,
    #[serde(default)]
    pub cols: u16,
    #[serde(default)]
    pub rows: u16,
}

/// The payload of an `acknowledge` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acknowledge {
    #[serde(rename = "AcknowledgedMessageType")]
    pub message_type: String,
    #[serde(rename = "AcknowledgedMessageId")]
    pub message_id: String,
    #[serde(rename = "AcknowledgedMessageSequenceNumber")]
    pub sequence_number: i64,
    #[serde(rename = "IsSequentialMessage", default)]
    pub is_sequential: bool,
}

impl Acknowledge {
    /// The acknowledgement of `msg`.
    pub fn of(msg: &AgentMessage) -> Acknowledge {
        Acknowledge {
            message_type: msg.message_type.as_str().to_owned(),
            message_id: msg.message_id.hyphenated().to_string(),
            sequence_number: msg.sequence_number,
            is_sequential: true,
        }
    }

    /// The sequence number an acknowledgement payload names (what receivers match on).
    pub fn sequence_of(payload: &[u8]) -> Result<i64, serde_json::Error> {
        #[derive(Deserialize)]
        struct Seq {
            #[serde(rename = "AcknowledgedMessageSequenceNumber")]
            n: i64,
        }
        serde_json::from_slice::<Seq>(payload).map(|s| s.n)
    }
}

/// `HandshakeRequest` (server → client).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HandshakeRequest {
    pub agent_version: String,
    pub requested_client_actions: Vec<RequestedClientAction>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RequestedClientAction {
    pub action_type: String,
    pub action_parameters: serde_json::Value,
}

impl HandshakeRequest {
    /// The one action ecsd requests: the session type, without properties (no KMS).
    pub fn interactive_commands() -> HandshakeRequest {
        HandshakeRequest {
            agent_version: AGENT_VERSION.to_owned(),
            requested_client_actions: vec![RequestedClientAction {
                action_type: "SessionType".to_owned(),
                action_parameters: serde_json::json!({ "SessionType": SESSION_TYPE, "Properties": null }),
            }],
        }
    }
}

/// `HandshakeResponse` (client → server).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HandshakeResponse {
    #[serde(default)]
    pub client_version: String,
    #[serde(default)]
    pub processed_client_actions: Vec<ProcessedClientAction>,
    #[serde(default)]
    pub errors: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProcessedClientAction {
    pub action_type: String,
    pub action_status: i64,
    #[serde(default)]
    pub action_result: serde_json::Value,
    #[serde(default)]
    pub error: String,
}

impl HandshakeResponse {
    /// Why the client did not accept the session type, if it did not.
    pub fn refusal(&self) -> Option<String> {
        let action = self.processed_client_actions.iter().find(|a| a.action_type == "SessionType");
        match action {
            Some(a) if a.action_status == ACTION_SUCCESS => None,
            Some(a) if !a.error.is_empty() => Some(a.error.clone()),
            Some(a) => Some(format!("the client answered the session type with status {}", a.action_status)),
            None => Some("the client's handshake response does not answer the session type".to_owned()),
        }
    }
}

/// `HandshakeComplete` (server → client). The duration is Go's: integer nanoseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HandshakeComplete {
    pub handshake_time_to_complete: u64,
    pub customer_message: String,
}

/// The client's terminal size (`Size` payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalSize {
    pub cols: u32,
    pub rows: u32,
}

/// The payload of `channel_closed`. `CreatedDate` is a string here, unlike the header's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ChannelClosed {
    pub message_id: String,
    pub created_date: String,
    pub destination_id: String,
    pub session_id: String,
    pub message_type: String,
    pub schema_version: u32,
    pub output: String,
}

impl ChannelClosed {
    pub fn new(
        message_id: uuid::Uuid,
        created_ms: u64,
        target: &str,
        session_id: &str,
        output: &str,
    ) -> Self {
        ChannelClosed {
            message_id: message_id.hyphenated().to_string(),
            created_date: rfc3339_millis(created_ms),
            destination_id: target.to_owned(),
            session_id: session_id.to_owned(),
            message_type: MessageType::ChannelClosed.as_str().to_owned(),
            schema_version: 1,
            output: output.to_owned(),
        }
    }
}

/// The ExitCode payload, as the SSM agent writes it.
pub fn exit_code_payload(code: i32) -> String {
    format!("EXIT_CODE: {code}")
}

/// The code of an ExitCode payload.
pub fn parse_exit_code(payload: &[u8]) -> Option<i32> {
    std::str::from_utf8(payload).ok()?.trim().strip_prefix("EXIT_CODE:")?.trim().parse().ok()
}

/// `2024-05-01T10:05:00.123Z` from epoch milliseconds.
pub fn rfc3339_millis(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        ms % 1000
    )
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plugins_documents_parse() {
        let open: OpenDataChannelInput = serde_json::from_str(
            r#"{"MessageSchemaVersion":"1.0","RequestId":"9b1c","TokenValue":"tok","ClientId":"c1","ClientVersion":"1.2.0.0"}"#,
        )
        .unwrap();
        assert_eq!((open.token_value.as_str(), open.ecsd_exec), ("tok", None));

        let response: HandshakeResponse = serde_json::from_str(
            r#"{"ClientVersion":"1.2.0.0","ProcessedClientActions":[{"ActionType":"SessionType","ActionStatus":1,"ActionResult":null,"Error":""}],"Errors":null}"#,
        )
        .unwrap();
        assert_eq!(response.refusal(), None);
        let refused: HandshakeResponse = serde_json::from_str(
            r#"{"ClientVersion":"1.2.0.0","ProcessedClientActions":[{"ActionType":"SessionType","ActionStatus":2,"ActionResult":null,"Error":"Failed to process action SessionType: Unknown session type X"}],"Errors":["x"]}"#,
        )
        .unwrap();
        assert_eq!(
            refused.refusal().unwrap(),
            "Failed to process action SessionType: Unknown session type X"
        );
        assert!(
            HandshakeResponse {
                client_version: String::new(),
                processed_client_actions: vec![],
                errors: None
            }
            .refusal()
            .is_some()
        );

        let size: TerminalSize = serde_json::from_str(r#"{"cols":120,"rows":40}"#).unwrap();
        assert_eq!(size, TerminalSize { cols: 120, rows: 40 });
        let ack = br#"{"AcknowledgedMessageType":"output_stream_data","AcknowledgedMessageId":"x","AcknowledgedMessageSequenceNumber":12,"IsSequentialMessage":true}"#;
        assert_eq!(Acknowledge::sequence_of(ack).unwrap(), 12);
        assert!(Acknowledge::sequence_of(b"{}").is_err());
        assert!(Acknowledge::sequence_of(b"\xff").is_err());
    }

    #[test]
    fn what_ecsd_sends_has_the_go_field_names() {
        let hs = serde_json::to_value(HandshakeRequest::interactive_commands()).unwrap();
        assert_eq!(
            hs,
            serde_json::json!({"AgentVersion": AGENT_VERSION, "RequestedClientActions": [
                {"ActionType": "SessionType", "ActionParameters": {"SessionType": "InteractiveCommands", "Properties": null}}
            ]})
        );
        let done =
            HandshakeComplete { handshake_time_to_complete: 1_500_000, customer_message: String::new() };
        assert_eq!(
            serde_json::to_string(&done).unwrap(),
            r#"{"HandshakeTimeToComplete":1500000,"CustomerMessage":""}"#
        );
        let closed = ChannelClosed::new(uuid::Uuid::nil(), 1_714_557_900_123, "ecs:c_t_r", "s-1", "");
        assert_eq!(
            serde_json::to_value(&closed).unwrap(),
            serde_json::json!({"MessageId": "00000000-0000-0000-0000-000000000000",
                "CreatedDate": "2024-05-01T10:05:00.123Z", "DestinationId": "ecs:c_t_r",
                "SessionId": "s-1", "MessageType": "channel_closed", "SchemaVersion": 1, "Output": ""})
        );
    }

    #[test]
    fn dates_are_rfc3339_in_utc() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(951_782_400_001), "2000-02-29T00:00:00.001Z");
        assert_eq!(rfc3339_millis(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn flags_and_exit_codes_round_trip() {
        for f in [Flag::TerminateSession, Flag::StdinEof, Flag::Signal(2), Flag::Signal(15), Flag::Other(1)] {
            assert_eq!(Flag::parse(&f.encode()), Some(f));
        }
        assert_eq!(Flag::parse(&[0, 0, 0, 2]), Some(Flag::TerminateSession));
        assert_eq!(Flag::parse(&(FLAG_SIGNAL).to_be_bytes()), Some(Flag::Other(FLAG_SIGNAL)));
        assert_eq!(Flag::parse(&[0, 0, 2]), None);
        assert_eq!(parse_exit_code(exit_code_payload(137).as_bytes()), Some(137));
        assert_eq!(parse_exit_code(b"EXIT_CODE: -1"), Some(-1));
        assert_eq!(parse_exit_code(b"exit 3"), None);
    }
}
