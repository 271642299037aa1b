//! Names and ids: validated topic and group names, and the numeric ids of
//! queues, shards and brokers.
//!
//! Names follow RocketMQ's rules so a later RocketMQ compat port can map them
//! one to one: `[A-Za-z0-9_.-]`, at most [`MAX_TOPIC_NAME_BYTES`]. Three
//! prefixes are reserved for topics the broker makes itself: retry topics
//! (`%RETRY%<group>`), dead-letter topics (`%DLQ%<group>`) and system topics
//! (`rmq_sys_...`). Users cannot create names with those prefixes.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// RocketMQ's limit, so names survive a round trip through its tooling.
pub const MAX_TOPIC_NAME_BYTES: usize = 127;
/// Leaves room for the longest reserved prefix, so every group has a
/// retry and a dead-letter topic whose names are themselves valid.
pub const MAX_GROUP_NAME_BYTES: usize = MAX_TOPIC_NAME_BYTES - RETRY_TOPIC_PREFIX.len();

/// Prefix of the per-group retry topic.
pub const RETRY_TOPIC_PREFIX: &str = "%RETRY%";
/// Prefix of the per-group dead-letter topic.
pub const DLQ_TOPIC_PREFIX: &str = "%DLQ%";
/// Prefix of topics the broker keeps for itself (schedules, transactions).
pub const SYSTEM_TOPIC_PREFIX: &str = "rmq_sys_";

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The empty string.
    #[error("{what} name is empty")]
    Empty {
        /// "topic" or "group".
        what: &'static str,
    },
    /// Longer than the limit.
    #[error("{what} name is {len} bytes, more than the limit of {max}")]
    TooLong {
        /// "topic" or "group".
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A character outside `[A-Za-z0-9_.-]`.
    #[error("{what} name contains {found:?}; allowed are A-Z a-z 0-9 _ . -")]
    BadChar {
        /// "topic" or "group".
        what: &'static str,
        /// The first offending character.
        found: char,
    },
    /// A user-supplied name that uses a reserved prefix.
    #[error("topic name {name:?} uses the reserved prefix {prefix:?}")]
    Reserved {
        /// The name.
        name: String,
        /// The reserved prefix it starts with.
        prefix: &'static str,
    },
}

fn check_plain(what: &'static str, s: &str, max: usize) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty { what });
    }
    if s.len() > max {
        return Err(NameError::TooLong {
            what,
            len: s.len(),
            max,
        });
    }
    match s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        Some(found) => Err(NameError::BadChar { what, found }),
        None => Ok(()),
    }
}

/// What a topic is for, read from its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TopicKind {
    /// Created by users.
    User,
    /// `%RETRY%<group>`: messages a group's listener asked to see again.
    Retry,
    /// `%DLQ%<group>`: messages that used up their retries.
    DeadLetter,
    /// `rmq_sys_...`: kept by the broker.
    System,
}

/// A validated topic name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TopicName(Arc<str>);

impl TopicName {
    /// Accepts any valid topic name, reserved prefixes included (what the
    /// broker accepts on the wire; admin paths also check [`Self::kind`]).
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        let body = if let Some(group) = name.strip_prefix(RETRY_TOPIC_PREFIX) {
            group
        } else if let Some(group) = name.strip_prefix(DLQ_TOPIC_PREFIX) {
            group
        } else {
            name.as_str()
        };
        if name.len() > MAX_TOPIC_NAME_BYTES {
            return Err(NameError::TooLong {
                what: "topic",
                len: name.len(),
                max: MAX_TOPIC_NAME_BYTES,
            });
        }
        check_plain("topic", body, MAX_TOPIC_NAME_BYTES)?;
        Ok(Self(name.into()))
    }

    /// Accepts only names a user may create: valid and without a reserved prefix.
    pub fn user(name: impl Into<String>) -> Result<Self, NameError> {
        let topic = Self::new(name)?;
        let prefix = match topic.kind() {
            TopicKind::User => return Ok(topic),
            TopicKind::Retry => RETRY_TOPIC_PREFIX,
            TopicKind::DeadLetter => DLQ_TOPIC_PREFIX,
            TopicKind::System => SYSTEM_TOPIC_PREFIX,
        };
        Err(NameError::Reserved {
            name: topic.0.to_string(),
            prefix,
        })
    }

    /// The retry topic of `group`.
    pub fn retry(group: &GroupName) -> Self {
        Self(format!("{RETRY_TOPIC_PREFIX}{}", group.0).into())
    }

    /// The dead-letter topic of `group`.
    pub fn dead_letter(group: &GroupName) -> Self {
        Self(format!("{DLQ_TOPIC_PREFIX}{}", group.0).into())
    }

    /// What the topic is for.
    pub fn kind(&self) -> TopicKind {
        if self.0.starts_with(RETRY_TOPIC_PREFIX) {
            TopicKind::Retry
        } else if self.0.starts_with(DLQ_TOPIC_PREFIX) {
            TopicKind::DeadLetter
        } else if self.0.starts_with(SYSTEM_TOPIC_PREFIX) {
            TopicKind::System
        } else {
            TopicKind::User
        }
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A validated consumer or producer group name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GroupName(Arc<str>);

impl GroupName {
    /// Validates a group name.
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        check_plain("group", &name, MAX_GROUP_NAME_BYTES)?;
        Ok(Self(name.into()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! name_conversions {
    ($($ty:ident),*) => {$(
        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                Self::new(s)
            }
        }
        impl From<$ty> for String {
            fn from(n: $ty) -> String {
                n.0.to_string()
            }
        }
        impl std::str::FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    )*};
}
name_conversions!(TopicName, GroupName);

macro_rules! numeric_id {
    ($(#[$m:meta])* $ty:ident($inner:ty)) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $ty(pub $inner);

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
        impl From<$inner> for $ty {
            fn from(v: $inner) -> Self {
                Self(v)
            }
        }
    };
}

numeric_id!(
    /// A queue of a topic, numbered from 0.
    QueueId(u32)
);
numeric_id!(
    /// A shard (one core's executor) of a broker, numbered from 0.
    ShardId(u16)
);
numeric_id!(
    /// A broker within its broker set; 0 is the master, as in RocketMQ.
    BrokerId(u32)
);

impl BrokerId {
    /// The master of a broker set.
    pub const MASTER: Self = Self(0);

    /// Whether this id names the master.
    pub fn is_master(self) -> bool {
        self == Self::MASTER
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_rules() {
        assert!(TopicName::user("orders").is_ok());
        assert!(TopicName::user("a.b-c_D9").is_ok());
        assert_eq!(TopicName::user(""), Err(NameError::Empty { what: "topic" }));
        assert!(matches!(
            TopicName::user("x".repeat(128)),
            Err(NameError::TooLong { len: 128, .. })
        ));
        assert!(TopicName::user("x".repeat(127)).is_ok());
        assert!(matches!(
            TopicName::user("a b"),
            Err(NameError::BadChar { found: ' ', .. })
        ));
        assert!(matches!(
            TopicName::user("héllo"),
            Err(NameError::BadChar { found: 'é', .. })
        ));
        assert!(matches!(
            TopicName::user("50%"),
            Err(NameError::BadChar { found: '%', .. })
        ));
    }

    #[test]
    fn reserved_prefixes() {
        let group = GroupName::new("billing").unwrap();
        let retry = TopicName::retry(&group);
        assert_eq!(retry.as_str(), "%RETRY%billing");
        assert_eq!(retry.kind(), TopicKind::Retry);
        assert_eq!(TopicName::new("%RETRY%billing").unwrap(), retry);
        assert!(matches!(
            TopicName::user("%RETRY%billing"),
            Err(NameError::Reserved { .. })
        ));
        assert_eq!(TopicName::dead_letter(&group).kind(), TopicKind::DeadLetter);
        assert!(matches!(
            TopicName::user("rmq_sys_schedule"),
            Err(NameError::Reserved {
                prefix: SYSTEM_TOPIC_PREFIX,
                ..
            })
        ));
        assert!(TopicName::new("%RETRY%").is_err());
        assert!(TopicName::new("%RETRY%a%b").is_err());
    }

    #[test]
    fn longest_group_has_valid_retry_and_dlq_topics() {
        let group = GroupName::new("g".repeat(MAX_GROUP_NAME_BYTES)).unwrap();
        let retry = TopicName::retry(&group);
        assert_eq!(TopicName::new(retry.as_str()).unwrap(), retry);
        let dlq = TopicName::dead_letter(&group);
        assert_eq!(TopicName::new(dlq.as_str()).unwrap(), dlq);
        assert!(GroupName::new("g".repeat(MAX_GROUP_NAME_BYTES + 1)).is_err());
    }

    #[test]
    fn serde_validates() {
        let t: TopicName = serde_json::from_str("\"orders\"").unwrap();
        assert_eq!(t.as_str(), "orders");
        assert!(serde_json::from_str::<TopicName>("\"bad name\"").is_err());
    }
}

#[cfg(test)]
mod arbitrary {
    use super::*;
    use proptest::prelude::*;

    impl Arbitrary for TopicName {
        type Parameters = ();
        type Strategy = BoxedStrategy<Self>;
        fn arbitrary_with(_: ()) -> Self::Strategy {
            prop_oneof![
                "[A-Za-z0-9_.-]{1,40}".prop_map(|s| TopicName(s.into())),
                "[a-z]{1,20}".prop_map(|g| TopicName(format!("{RETRY_TOPIC_PREFIX}{g}").into())),
            ]
            .boxed()
        }
    }

    impl Arbitrary for GroupName {
        type Parameters = ();
        type Strategy = BoxedStrategy<Self>;
        fn arbitrary_with(_: ()) -> Self::Strategy {
            "[A-Za-z0-9_.-]{1,40}"
                .prop_map(|s| GroupName(s.into()))
                .boxed()
        }
    }

    macro_rules! arbitrary_id {
        ($($ty:ident($inner:ty)),*) => {$(
            impl Arbitrary for $ty {
                type Parameters = ();
                type Strategy = BoxedStrategy<Self>;
                fn arbitrary_with(_: ()) -> Self::Strategy {
                    any::<$inner>().prop_map($ty).boxed()
                }
            }
        )*};
    }
    arbitrary_id!(QueueId(u32), ShardId(u16), BrokerId(u32));
}
