//! A message's id.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A message's id: a ULID, shown as its 26-character string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(pub ulid::Ulid);

impl MessageId {
    /// A new id, ordered by creation time.
    pub fn new() -> Self {
        Self(ulid::Ulid::new())
    }

    /// A new id whose time part is `ms` (milliseconds since the Unix epoch): the embedded
    /// store files a message accepted without a schedule entry at that millisecond.
    pub fn made_at(ms: u64) -> Self {
        Self(ulid::Ulid::from_datetime(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
        ))
    }

    /// The id as the store's key.
    pub fn as_u128(self) -> u128 {
        self.0.0
    }

    /// From the store's key.
    pub fn from_u128(v: u128) -> Self {
        Self(ulid::Ulid(v))
    }

    /// The `client_msg_id` used when the producer gave none: derived from the id, so it is
    /// stable across attempts and restarts.
    pub fn default_client_msg_id(self) -> String {
        format!("wxp-{}", self.0)
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for MessageId {
    type Err = ulid::DecodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ulid::Ulid::from_string(s).map(Self)
    }
}

impl Serialize for MessageId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
