//! The `awslogs` log driver's options, as a container definition's `logConfiguration` gives
//! them: parsed and checked once, at RegisterTaskDefinition, and again by the engine that
//! ships the container's output.

use std::collections::BTreeMap;
use std::fmt;

/// The options ecsd honours. Any other is refused, as ECS refuses options its drivers do not
/// know ("Log driver awslogs disallows options: ...").
pub const AWSLOGS_OPTIONS: [&str; 8] = [
    "awslogs-group",
    "awslogs-region",
    "awslogs-stream-prefix",
    "awslogs-create-group",
    "awslogs-datetime-format",
    "awslogs-multiline-pattern",
    "mode",
    "max-buffer-size",
];

/// Docker's default for `max-buffer-size` in non-blocking mode (1 MB).
pub const DEFAULT_MAX_BUFFER_SIZE: usize = 1_000_000;

/// How a container's output waits for CloudWatch Logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogMode {
    /// Nothing is dropped: the shipper reads the container's log file only as fast as it
    /// can send (the file is the buffer).
    Blocking,
    /// The shipper keeps reading into a buffer of at most `max-buffer-size` bytes and drops
    /// what does not fit while CloudWatch Logs is slow or away.
    NonBlocking { max_buffer_size: usize },
}

/// The parsed options of one container's `awslogs` configuration.
#[derive(Debug, Clone)]
pub struct AwslogsOptions {
    pub group: String,
    pub region: String,
    pub stream_prefix: Option<String>,
    pub create_group: bool,
    /// Where a new event starts: a line this matches; the lines it does not match belong to
    /// the event before.
    pub multiline: Option<regex::Regex>,
    pub mode: LogMode,
}

/// Why an `awslogs` configuration cannot be used. The text is completed by the caller with
/// where in the request the options are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AwslogsOptionError {
    #[error("Log driver awslogs requires options: {0}")]
    Missing(String),
    #[error("Log driver awslogs disallows options: {0}")]
    Disallowed(String),
    #[error("Log driver awslogs cannot use awslogs-datetime-format and awslogs-multiline-pattern together")]
    DatetimeAndMultiline,
    #[error("Log driver awslogs option {option} must be true or false, not '{value}'")]
    NotBool { option: &'static str, value: String },
    #[error(
        "Log driver awslogs option awslogs-multiline-pattern '{value}' is not a valid regular expression"
    )]
    BadPattern { value: String },
    #[error(
        "Log driver awslogs option awslogs-datetime-format '{value}' uses {directive}, which is not a strftime directive awslogs knows"
    )]
    BadDatetime { value: String, directive: String },
    #[error("Log driver awslogs option mode must be blocking or non-blocking, not '{value}'")]
    BadMode { value: String },
    #[error("Log driver awslogs option max-buffer-size '{value}' is not a size such as 4m, 512k or 1048576")]
    BadSize { value: String },
}

impl AwslogsOptions {
    /// Parses and checks `options`.
    pub fn parse(options: &BTreeMap<String, String>) -> Result<AwslogsOptions, AwslogsOptionError> {
        let get = |k: &str| options.get(k).map(String::as_str).filter(|v| !v.is_empty());
        let missing: Vec<&str> =
            ["awslogs-region", "awslogs-group"].into_iter().filter(|k| get(k).is_none()).collect();
        if !missing.is_empty() {
            return Err(AwslogsOptionError::Missing(missing.join(", ")));
        }
        let disallowed: Vec<&str> =
            options.keys().map(String::as_str).filter(|k| !AWSLOGS_OPTIONS.contains(k)).collect();
        if !disallowed.is_empty() {
            return Err(AwslogsOptionError::Disallowed(disallowed.join(", ")));
        }
        let create_group = match get("awslogs-create-group") {
            None => false,
            Some(v) => parse_bool(v).ok_or_else(|| AwslogsOptionError::NotBool {
                option: "awslogs-create-group",
                value: v.into(),
            })?,
        };
        let pattern = match (get("awslogs-datetime-format"), get("awslogs-multiline-pattern")) {
            (Some(_), Some(_)) => return Err(AwslogsOptionError::DatetimeAndMultiline),
            // A timestamp starts a line; a pattern may match anywhere in it, as in Docker.
            (Some(f), None) => Some(format!("^(?:{})", strftime_regex(f)?)),
            (None, Some(p)) => Some(p.to_owned()),
            (None, None) => None,
        };
        let multiline = match pattern {
            None => None,
            Some(p) => Some(regex::Regex::new(&p).map_err(|_| AwslogsOptionError::BadPattern {
                value: get("awslogs-multiline-pattern").unwrap_or_default().to_owned(),
            })?),
        };
        let mode = match get("mode") {
            None | Some("blocking") => LogMode::Blocking,
            Some("non-blocking") => {
                let max_buffer_size = match get("max-buffer-size") {
                    None => DEFAULT_MAX_BUFFER_SIZE,
                    Some(v) => {
                        parse_size(v).ok_or_else(|| AwslogsOptionError::BadSize { value: v.into() })?
                    }
                };
                LogMode::NonBlocking { max_buffer_size }
            }
            Some(other) => return Err(AwslogsOptionError::BadMode { value: other.into() }),
        };
        Ok(AwslogsOptions {
            group: get("awslogs-group").unwrap_or_default().to_owned(),
            region: get("awslogs-region").unwrap_or_default().to_owned(),
            stream_prefix: get("awslogs-stream-prefix").map(str::to_owned),
            create_group,
            multiline,
            mode,
        })
    }

    /// The stream a container's output goes to: `prefix/container/task-id` as ECS names it,
    /// else (no prefix) the container's runtime id, as Docker names it.
    pub fn stream(&self, container: &str, task_id: &str, runtime_id: &str) -> String {
        match &self.stream_prefix {
            Some(p) => format!("{p}/{container}/{task_id}"),
            None => runtime_id.to_owned(),
        }
    }
}

/// Go's `strconv.ParseBool`, which Docker reads its boolean options with.
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// A size as Docker reads `max-buffer-size`: a number with an optional binary unit
/// (`k`, `kb`, `kib`, `m`, `g`, ..., any case).
pub fn parse_size(v: &str) -> Option<usize> {
    let v = v.trim();
    let split = v.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let num: f64 = num.parse().ok()?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return None,
    };
    let bytes = num * f64::from(1u32 << shift);
    (bytes.is_finite() && bytes >= 1.0 && bytes <= usize::MAX as f64).then_some(bytes as usize)
}

/// The regular expression (unanchored) for a strftime format, as awslogs matches
/// `awslogs-datetime-format`: each directive becomes the text it can print, everything else
/// stands for itself.
pub fn strftime_regex(format: &str) -> Result<String, AwslogsOptionError> {
    const DAYS: &str =
        "(?:Mon|Monday|Tue|Tuesday|Wed|Wednesday|Thu|Thursday|Fri|Friday|Sat|Saturday|Sun|Sunday)";
    const MONTHS: &str = "(?:Jan|January|Feb|February|Mar|March|Apr|April|May|Jun|June|Jul|July|Aug|August|Sep|September|Oct|October|Nov|November|Dec|December)";
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push_str(&regex::escape(c.encode_utf8(&mut [0; 4])));
            continue;
        }
        let d = chars.next();
        let piece = match d {
            Some('a' | 'A') => DAYS,
            Some('b' | 'B' | 'h') => MONTHS,
            Some('d') => "(?:0[1-9]|[12][0-9]|3[01])",
            Some('e') => "(?: [1-9]|[12][0-9]|3[01])",
            Some('H') => "(?:[01][0-9]|2[0-3])",
            Some('I') => "(?:0[1-9]|1[0-2])",
            Some('j') => "(?:00[1-9]|0[1-9][0-9]|[12][0-9][0-9]|3[0-5][0-9]|36[0-6])",
            Some('m') => "(?:0[1-9]|1[0-2])",
            Some('M') | Some('S') => "[0-5][0-9]",
            Some('f') => "[0-9]{1,9}",
            Some('L') => "\\.[0-9]{3}",
            Some('p') => "[AP]M",
            Some('U' | 'W') => "(?:[0-4][0-9]|5[0-3])",
            Some('w') => "[0-6]",
            Some('y') => "[0-9]{2}",
            Some('Y') => "[0-9]{4}",
            Some('z') => "[+-][0-9]{2}:?[0-9]{2}",
            Some('Z') => "[A-Z]{1,5}",
            Some('%') => "%",
            Some(other) => {
                return Err(AwslogsOptionError::BadDatetime {
                    value: format.to_owned(),
                    directive: format!("%{other}"),
                });
            }
            None => {
                return Err(AwslogsOptionError::BadDatetime {
                    value: format.to_owned(),
                    directive: "%".into(),
                });
            }
        };
        out.push_str(piece);
    }
    Ok(out)
}

impl fmt::Display for LogMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogMode::Blocking => f.write_str("blocking"),
            LogMode::NonBlocking { max_buffer_size } => write!(f, "non-blocking ({max_buffer_size} bytes)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        let mut m: BTreeMap<String, String> =
            [("awslogs-group", "/ecs/web"), ("awslogs-region", "us-east-1")]
                .map(|(k, v)| (k.into(), v.into()))
                .into();
        m.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        m
    }

    #[test]
    fn defaults_and_stream_names() {
        let o = AwslogsOptions::parse(&opts(&[("awslogs-stream-prefix", "web")])).unwrap();
        assert_eq!((o.group.as_str(), o.region.as_str(), o.create_group), ("/ecs/web", "us-east-1", false));
        assert_eq!(o.mode, LogMode::Blocking);
        assert!(o.multiline.is_none());
        assert_eq!(o.stream("app", "0123abcd", "rid"), "web/app/0123abcd");
        let o = AwslogsOptions::parse(&opts(&[])).unwrap();
        assert_eq!(o.stream("app", "0123abcd", "rid"), "rid");
    }

    #[test]
    fn mode_create_group_and_buffer_size() {
        let o = AwslogsOptions::parse(&opts(&[
            ("mode", "non-blocking"),
            ("max-buffer-size", "4m"),
            ("awslogs-create-group", "true"),
        ]))
        .unwrap();
        assert_eq!(o.mode, LogMode::NonBlocking { max_buffer_size: 4 << 20 });
        assert!(o.create_group);
        let o = AwslogsOptions::parse(&opts(&[("mode", "non-blocking")])).unwrap();
        assert_eq!(o.mode, LogMode::NonBlocking { max_buffer_size: DEFAULT_MAX_BUFFER_SIZE });
        assert_eq!(parse_size("512k"), Some(512 << 10));
        assert_eq!(parse_size("1048576"), Some(1 << 20));
        assert_eq!(parse_size("2MiB"), Some(2 << 20));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("0"), None);
    }

    #[test]
    fn bad_options_are_named() {
        let err = |pairs: &[(&str, &str)]| AwslogsOptions::parse(&opts(pairs)).unwrap_err().to_string();
        assert_eq!(err(&[("log_key", "x")]), "Log driver awslogs disallows options: log_key");
        assert_eq!(
            err(&[("awslogs-datetime-format", "%Y"), ("awslogs-multiline-pattern", "^x")]),
            "Log driver awslogs cannot use awslogs-datetime-format and awslogs-multiline-pattern together"
        );
        assert_eq!(
            err(&[("awslogs-create-group", "yes")]),
            "Log driver awslogs option awslogs-create-group must be true or false, not 'yes'"
        );
        assert_eq!(
            err(&[("awslogs-multiline-pattern", "(")]),
            "Log driver awslogs option awslogs-multiline-pattern '(' is not a valid regular expression"
        );
        assert_eq!(
            err(&[("awslogs-datetime-format", "%Q")]),
            "Log driver awslogs option awslogs-datetime-format '%Q' uses %Q, which is not a strftime directive awslogs knows"
        );
        assert_eq!(
            err(&[("mode", "fast")]),
            "Log driver awslogs option mode must be blocking or non-blocking, not 'fast'"
        );
        assert_eq!(
            err(&[("mode", "non-blocking"), ("max-buffer-size", "big")]),
            "Log driver awslogs option max-buffer-size 'big' is not a size such as 4m, 512k or 1048576"
        );
        let mut none = BTreeMap::new();
        none.insert("awslogs-group".to_owned(), "g".to_owned());
        assert_eq!(
            AwslogsOptions::parse(&none).unwrap_err().to_string(),
            "Log driver awslogs requires options: awslogs-region"
        );
    }

    #[test]
    fn datetime_formats_match_at_the_start_of_a_line() {
        let o =
            AwslogsOptions::parse(&opts(&[("awslogs-datetime-format", "[%Y-%m-%d %H:%M:%S.%f]")])).unwrap();
        let re = o.multiline.unwrap();
        assert!(re.is_match("[2024-05-01 10:00:01.123] started"));
        assert!(!re.is_match("  at frame [2024-05-01 10:00:01.123]"));
        assert!(!re.is_match("[2024-13-01 10:00:01.123] bad month"));
        let o =
            AwslogsOptions::parse(&opts(&[("awslogs-datetime-format", "%b %d, %Y %I:%M:%S %p")])).unwrap();
        assert!(o.multiline.unwrap().is_match("Jan 02, 2024 03:04:05 PM hello"));
    }

    #[test]
    fn multiline_patterns_match_anywhere_as_in_docker() {
        let o = AwslogsOptions::parse(&opts(&[("awslogs-multiline-pattern", "^(INFO|ERROR)")])).unwrap();
        let re = o.multiline.unwrap();
        assert!(re.is_match("ERROR boom"));
        assert!(!re.is_match("  caused by ERROR"));
        let o = AwslogsOptions::parse(&opts(&[("awslogs-multiline-pattern", "ERROR")])).unwrap();
        assert!(o.multiline.unwrap().is_match("  caused by ERROR"));
    }
}
