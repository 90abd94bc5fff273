//! How a task is networked, and port ranges: one reading of each for the whole daemon.

use std::fmt;
use std::ops::RangeInclusive;

use crate::model::shapes::TaskDefinition;

/// A task definition's `networkMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NetworkMode {
    Awsvpc,
    Bridge,
    Host,
    None,
}

impl NetworkMode {
    /// The mode a `networkMode` value names. Absent means bridge, as on ECS for Linux; values
    /// outside the model's set were refused at registration and read as bridge too.
    pub fn parse(value: Option<&str>) -> Self {
        match value {
            Some("awsvpc") => Self::Awsvpc,
            Some("host") => Self::Host,
            Some("none") => Self::None,
            _ => Self::Bridge,
        }
    }

    pub fn of(definition: &TaskDefinition) -> Self {
        Self::parse(definition.network_mode.as_deref())
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Awsvpc => "awsvpc",
            Self::Bridge => "bridge",
            Self::Host => "host",
            Self::None => "none",
        }
    }

    /// Modes where a container port is reached on the same port of the task's own address.
    pub fn shares_ports(self) -> bool {
        matches!(self, Self::Host | Self::Awsvpc)
    }
}

impl fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A run of ports, both ends included: `8000-8010` as ECS writes `containerPortRange` and
/// `hostPortRange`, and as `dynamic_host_ports` is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

/// Why a port range does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortRangeError {
    #[error("'{0}' is not a range of ports written as START-END")]
    Shape(String),
    #[error("'{0}' is not a port number from 1 to 65535")]
    Port(String),
    #[error("'{0}' ends before it starts")]
    Reversed(String),
}

impl PortRange {
    pub fn single(port: u16) -> Self {
        PortRange { start: port, end: port }
    }

    /// Parses `START-END` (decimal digits only, ports 1 to 65535, START ≤ END).
    pub fn parse(text: &str) -> Result<Self, PortRangeError> {
        let (a, b) = text.split_once('-').ok_or_else(|| PortRangeError::Shape(text.to_owned()))?;
        let port = |s: &str| {
            let digits = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            digits
                .then(|| s.parse::<u16>().ok())
                .flatten()
                .filter(|p| *p > 0)
                .ok_or_else(|| PortRangeError::Port(s.to_owned()))
        };
        let (start, end) = (port(a)?, port(b)?);
        if start > end {
            return Err(PortRangeError::Reversed(text.to_owned()));
        }
        Ok(PortRange { start, end })
    }

    /// How many ports it holds.
    pub fn len(self) -> u32 {
        u32::from(self.end) - u32::from(self.start) + 1
    }

    pub fn is_empty(self) -> bool {
        false
    }

    pub fn ports(self) -> RangeInclusive<u16> {
        self.start..=self.end
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_mode_defaults_to_bridge() {
        assert_eq!(NetworkMode::parse(None), NetworkMode::Bridge);
        for m in [NetworkMode::Awsvpc, NetworkMode::Bridge, NetworkMode::Host, NetworkMode::None] {
            assert_eq!(NetworkMode::parse(Some(m.as_str())), m);
        }
        assert!(NetworkMode::Awsvpc.shares_ports() && NetworkMode::Host.shares_ports());
        assert!(!NetworkMode::Bridge.shares_ports() && !NetworkMode::None.shares_ports());
    }

    #[test]
    fn port_ranges_parse_strictly() {
        assert_eq!(PortRange::parse("8000-8010"), Ok(PortRange { start: 8000, end: 8010 }));
        assert_eq!(PortRange::parse("80-80").map(PortRange::len), Ok(1));
        assert_eq!(PortRange::parse("49153-65535").map(PortRange::len), Ok(16383));
        assert_eq!(PortRange::parse("8000"), Err(PortRangeError::Shape("8000".into())));
        assert_eq!(PortRange::parse("0-10"), Err(PortRangeError::Port("0".into())));
        assert_eq!(PortRange::parse("1-65536"), Err(PortRangeError::Port("65536".into())));
        assert_eq!(PortRange::parse("+1-5"), Err(PortRangeError::Port("+1".into())));
        assert_eq!(PortRange::parse("9-5"), Err(PortRangeError::Reversed("9-5".into())));
        assert_eq!(PortRange::parse("8000-8010").unwrap().to_string(), "8000-8010");
    }
}
