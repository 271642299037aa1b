//! Settings shared by every layer: what durability a broker promises.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// When the broker acknowledges an append: the durability a write gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlushMode {
    /// Ack once the write to the log completed; an fdatasync follows within
    /// the flush interval. Survives a broker crash (`kill -9`); a power loss
    /// may lose the last interval.
    #[default]
    Async,
    /// Ack only once the record is durable: its log write was write-through
    /// (`O_DSYNC`), or an fdatasync covered it; either way one disk
    /// operation serves every append waiting on it. Survives a broker crash
    /// and a power loss.
    Sync,
}

impl fmt::Display for FlushMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FlushMode::Async => "async",
            FlushMode::Sync => "sync",
        })
    }
}

/// An unknown flush mode name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown flush mode {0:?}: expected \"async\" or \"sync\"")]
pub struct ParseFlushModeError(String);

impl FromStr for FlushMode {
    type Err = ParseFlushModeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "async" => Ok(FlushMode::Async),
            "sync" => Ok(FlushMode::Sync),
            other => Err(ParseFlushModeError(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for mode in [FlushMode::Async, FlushMode::Sync] {
            assert_eq!(mode.to_string().parse::<FlushMode>(), Ok(mode));
        }
        assert!("fsync".parse::<FlushMode>().is_err());
        assert_eq!(serde_json::to_string(&FlushMode::Sync).unwrap(), "\"sync\"");
    }
}
