//! The mapping file format, as serde sees it.
//!
//! These structs mirror the TOML one to one and keep the position of every
//! value that can be wrong in a way serde cannot see (a regex that does not
//! compile, a template with an unknown filter, a duplicate route name), so
//! that [`super::load`] can say `mappings/20-call.toml:14:12: …`. Unknown
//! keys are rejected by serde itself (`deny_unknown_fields`): a misspelt
//! `routing-key` must not silently fall back to a default.
//!
//! docs/mapping.md is the user-facing description of this format.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// One mapping file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default)]
    pub route: Vec<Route>,
}

/// The type of an exchange.
#[derive(
    Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeType {
    #[default]
    Topic,
    Direct,
    Fanout,
    Headers,
}

impl ExchangeType {
    pub fn as_str(&self) -> &'static str {
        match self {
            ExchangeType::Topic => "topic",
            ExchangeType::Direct => "direct",
            ExchangeType::Fanout => "fanout",
            ExchangeType::Headers => "headers",
        }
    }
}

/// One `[[route]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: Spanned<String>,
    /// Exact event names (case-insensitive); `"*"` matches every event.
    #[serde(default)]
    pub events: Option<Spanned<Vec<String>>>,
    /// A regex over the event name.
    #[serde(default)]
    pub events_regex: Option<Spanned<String>>,
    /// Field name → regex the field's value must match.
    #[serde(default)]
    pub when: BTreeMap<String, Spanned<String>>,
    /// Fields that must not be present.
    #[serde(default)]
    pub absent: Vec<String>,
    /// Only used when no other route matched the event.
    #[serde(default)]
    pub fallback: bool,
    /// Takes only snapshot items and markers (docs/snapshots.md); other
    /// routes never see them.
    #[serde(default)]
    pub snapshot: bool,
    /// Publish nothing for the matched event (a filter): with `stop`, later
    /// routes do not see it either.
    #[serde(default)]
    pub drop: bool,
    #[serde(default)]
    pub exchange: Option<Spanned<String>>,
    #[serde(default)]
    pub exchange_type: ExchangeType,
    #[serde(default)]
    pub routing_key: Option<Spanned<String>>,
    #[serde(default)]
    pub body: Body,
    #[serde(default)]
    pub properties: Properties,
    /// Later routes are not tried once this one matched.
    #[serde(default)]
    pub stop: bool,
}

/// What the message body holds.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Body {
    /// `envelope` (default): `{"server","event","seq","received_at","fields"}`;
    /// `fields`: the fields object alone.
    #[serde(default)]
    pub format: BodyFormat,
    /// Only these fields (case-insensitive).
    #[serde(default)]
    pub include: Option<Vec<String>>,
    /// Not these fields (case-insensitive).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Field name → name in the body.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BodyFormat {
    #[default]
    Envelope,
    Fields,
}

/// AMQP message properties.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Properties {
    /// Delivery mode 2 (default true).
    #[serde(default)]
    pub persistent: Option<bool>,
    #[serde(default)]
    pub priority: Option<u8>,
    #[serde(default)]
    pub expiration_ms: Option<u64>,
    #[serde(default)]
    pub content_type: Option<String>,
    /// Template; default `{Event}`.
    #[serde(default, rename = "type")]
    pub kind: Option<Spanned<String>>,
    /// Template; default unique per message, stable across re-publishing.
    #[serde(default)]
    pub message_id: Option<Spanned<String>>,
    /// Header name → template.
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<String>>,
}
