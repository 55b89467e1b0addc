//! Action requests and replies: JSON on the AMQP side, AMI on the other.
//!
//! A request body is a JSON object of AMI fields, exactly as in AMI:
//! `{"Action": "Originate", "Channel": "Local/100@test", "Async": true}`.
//! Strings pass as they are, numbers and booleans become their text
//! (`1`, `true`), and an array is a repeated key (`"Variable": ["A=1",
//! "B=2"]` → two `Variable:` lines). Anything else (null, nested objects,
//! arrays of non-scalars) is a `bad_request`: guessing would run an action
//! the client did not mean.
//!
//! Two keys are not AMI fields: the client's `ActionID` is kept and echoed
//! in the reply (the bridge puts its own on the wire so clients can never
//! collide), and `_timeout_ms` overrides the action timeout.
//!
//! The reply body is `{"server", "response", "action_id", "fields",
//! "events", "output"}` plus `"error": {"kind", "message"}` on failure,
//! where `kind` is one of [`ErrorKind`]'s names.

use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::ami::{ActionResult, Message, MessageBuilder};

/// The error kinds of the reply contract (docs/actions.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Not JSON, no `Action`, wrong types, or rejected as Asterisk would.
    BadRequest,
    /// Routed to a server the bridge does not know.
    UnknownServer,
    /// The allow-list does not grant it.
    Forbidden,
    /// No answer in time (or expired before it could run).
    Timeout,
    /// Asterisk answered `Response: Error`.
    AmiError,
    /// The server is not connected.
    Unavailable,
}

impl ErrorKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::UnknownServer => "unknown_server",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::Timeout => "timeout",
            ErrorKind::AmiError => "ami_error",
            ErrorKind::Unavailable => "unavailable",
        }
    }
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The action name as the client wrote it.
    pub action: String,
    /// The AMI message (without `ActionID`).
    pub message: Message,
    /// The client's `ActionID`, echoed in the reply.
    pub client_action_id: Option<String>,
    /// `_timeout_ms`, if given.
    pub timeout: Option<Duration>,
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Parses a request body. The error is the `bad_request` message.
pub fn parse(body: &[u8]) -> Result<Request, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let Value::Object(obj) = v else {
        return Err("the body must be a JSON object of AMI fields".into());
    };
    let mut b = MessageBuilder::default();
    let mut action = None;
    let mut client_id = None;
    let mut timeout = None;
    // `Action` first, as AMI expects.
    for (k, v) in &obj {
        if k.eq_ignore_ascii_case("Action") {
            let a = scalar(v)
                .filter(|s| !s.trim().is_empty())
                .ok_or("`Action` must be a non-empty string")?;
            b.push(b"Action", a.as_bytes());
            action = Some(a);
        }
    }
    let Some(action) = action else {
        return Err("no `Action` field".into());
    };
    for (k, v) in &obj {
        if k.eq_ignore_ascii_case("Action") {
            continue;
        }
        if k.eq_ignore_ascii_case("ActionID") {
            client_id = Some(scalar(v).ok_or("`ActionID` must be a string or number")?);
            continue;
        }
        if k == "_timeout_ms" {
            let ms = v
                .as_u64()
                .ok_or("`_timeout_ms` must be a positive integer (milliseconds)")?;
            timeout = Some(Duration::from_millis(ms.max(1)));
            continue;
        }
        if k.is_empty() || k.contains([':', '\r', '\n']) {
            return Err(format!("field name {k:?} is not a valid AMI header name"));
        }
        match v {
            Value::Array(items) => {
                if items.is_empty() {
                    return Err(format!("`{k}` is an empty array"));
                }
                for i in items {
                    let s = scalar(i).ok_or_else(|| {
                        format!("`{k}`: array items must be strings, numbers or booleans")
                    })?;
                    b.push(k.as_bytes(), s.as_bytes());
                }
            }
            other => {
                let s = scalar(other).ok_or_else(|| {
                    format!(
                        "`{k}` must be a string, number, boolean or an array of them (got {other})"
                    )
                })?;
                b.push(k.as_bytes(), s.as_bytes());
            }
        }
    }
    Ok(Request {
        action,
        message: b.build(),
        client_action_id: client_id,
        timeout,
    })
}

/// The reply body.
#[derive(Debug, Serialize)]
pub struct Reply {
    pub server: String,
    /// `Success`, `Error`, `Follows`, … as Asterisk said; `Error` for the
    /// bridge's own errors.
    pub response: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action_id: Option<String>,
    pub fields: Map<String, Value>,
    pub events: Vec<Map<String, Value>>,
    pub output: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ReplyError>,
    /// The bridge instance that answered (useful with several bridges).
    pub bridge: String,
}

#[derive(Debug, Serialize)]
pub struct ReplyError {
    pub kind: ErrorKind,
    pub message: String,
}

/// An AMI message as a JSON object: repeated keys become arrays; the
/// bridge's `ActionID` is left out (it means nothing to the client).
pub fn message_json(m: &Message) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in m.iter() {
        if k.eq_ignore_ascii_case("ActionID") || k.eq_ignore_ascii_case("Output") {
            continue;
        }
        let v = Value::String(v.into_owned());
        match out.get_mut(k.as_ref()) {
            Some(Value::Array(a)) => a.push(v),
            Some(prev) => {
                let p = prev.take();
                *prev = Value::Array(vec![p, v]);
            }
            None => {
                out.insert(k.into_owned(), v);
            }
        }
    }
    out
}

impl Reply {
    pub fn error(
        server: &str,
        req: Option<&Request>,
        kind: ErrorKind,
        message: String,
        bridge: &str,
    ) -> Reply {
        Reply {
            server: server.to_string(),
            response: "Error".into(),
            action_id: req.and_then(|r| r.client_action_id.clone()),
            fields: Map::new(),
            events: Vec::new(),
            output: Vec::new(),
            error: Some(ReplyError { kind, message }),
            bridge: bridge.to_string(),
        }
    }

    /// The reply for an AMI answer: `ami_error` when Asterisk said Error.
    pub fn from_result(server: &str, req: &Request, r: &ActionResult, bridge: &str) -> Reply {
        let response = r
            .response
            .get("Response")
            .map(|s| s.into_owned())
            .unwrap_or_default();
        let error = if r.is_success() {
            None
        } else {
            Some(ReplyError {
                kind: ErrorKind::AmiError,
                message: r
                    .response
                    .get("Message")
                    .map(|s| s.into_owned())
                    .unwrap_or_else(|| "Asterisk answered Error".into()),
            })
        };
        Reply {
            server: server.to_string(),
            response,
            action_id: req.client_action_id.clone(),
            fields: message_json(&r.response),
            events: r.events.iter().map(message_json).collect(),
            output: r.output(),
            error,
            bridge: bridge.to_string(),
        }
    }

    pub fn to_vec(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ami_fields() {
        let r = parse(br#"{"Channel":"Local/100@test","Action":"Originate","Priority":1,"Async":true,"Variable":["A=1","B=2"],"ActionID":"mine","_timeout_ms":2500}"#).unwrap();
        assert_eq!(r.action, "Originate");
        assert_eq!(r.client_action_id.as_deref(), Some("mine"));
        assert_eq!(r.timeout, Some(Duration::from_millis(2500)));
        let pairs: Vec<(String, String)> = r
            .message
            .iter()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("Action".into(), "Originate".into()),
                ("Channel".into(), "Local/100@test".into()),
                ("Priority".into(), "1".into()),
                ("Async".into(), "true".into()),
                ("Variable".into(), "A=1".into()),
                ("Variable".into(), "B=2".into()),
            ]
        );
    }

    #[test]
    fn rejects_bad_requests() {
        for (body, want) in [
            (&b"not json"[..], "not JSON"),
            (b"[1,2]", "JSON object"),
            (br#"{"Channel":"x"}"#, "no `Action`"),
            (br#"{"Action":""}"#, "non-empty"),
            (br#"{"Action":"Ping","X":null}"#, "`X` must be"),
            (br#"{"Action":"Ping","X":{"a":1}}"#, "`X` must be"),
            (br#"{"Action":"Ping","X":[{"a":1}]}"#, "array items"),
            (
                br#"{"Action":"Ping","Bad:Key":"v"}"#,
                "not a valid AMI header",
            ),
            (br#"{"Action":"Ping","_timeout_ms":"soon"}"#, "_timeout_ms"),
        ] {
            let e = parse(body).unwrap_err();
            assert!(e.contains(want), "{e} (wanted {want})");
        }
    }

    #[test]
    fn reply_json_shape() {
        let req = parse(br#"{"Action":"CoreShowChannels","ActionID":"c1"}"#).unwrap();
        let r = ActionResult {
            response: Message::from_pairs([
                ("Response", "Success"),
                ("ActionID", "a2a-x-1"),
                ("EventList", "start"),
            ]),
            events: vec![
                Message::from_pairs([
                    ("Event", "CoreShowChannel"),
                    ("ActionID", "a2a-x-1"),
                    ("ChanVariable", "A=1"),
                    ("ChanVariable", "B=2"),
                ]),
                Message::from_pairs([
                    ("Event", "CoreShowChannelsComplete"),
                    ("EventList", "Complete"),
                    ("ListItems", "1"),
                ]),
            ],
        };
        let v: Value =
            serde_json::from_slice(&Reply::from_result("pbx1", &req, &r, "i1").to_vec()).unwrap();
        assert_eq!(v["server"], "pbx1");
        assert_eq!(v["response"], "Success");
        assert_eq!(v["action_id"], "c1");
        assert!(v["fields"].get("ActionID").is_none());
        assert_eq!(
            v["events"][0]["ChanVariable"],
            serde_json::json!(["A=1", "B=2"])
        );
        assert_eq!(v["events"].as_array().unwrap().len(), 2);
        assert!(v.get("error").is_none());
    }
}
