//! Action requests and replies: JSON on the AMQP side, AMI on the other.
//!
//! A request body is a JSON object of AMI fields, exactly as in AMI:
//! `{"Action": "Originate", "Channel": "Local/100@test", "Async": true}`.
//! Strings pass as they are, integers and booleans become their text
//! (`1`, `true`), and an array is a repeated key (`"Variable": ["A=1",
//! "B=2"]` → two `Variable:` lines). Anything else (null, nested objects,
//! arrays of non-scalars, numbers that are not 64-bit integers) is a
//! `bad_request`: guessing would run an action the client did not mean.
//! So are control characters other than TAB in names and values, and a
//! second `Action` key in any case: what the allow-list checks must be
//! what Asterisk reads.
//!
//! Two keys are not AMI fields: the client's `ActionID` is kept and echoed
//! in the reply (the bridge puts its own on the wire so clients can never
//! collide), and `_timeout_ms` overrides the action timeout.
//!
//! The reply body is `{"server", "response", "action_id", "fields",
//! "events", "output"}` plus `"error": {"kind", "message", "may_have_run"}`
//! on failure, where `kind` is one of [`ErrorKind`]'s names.

use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::ami::{ActionResult, Message, MessageBuilder};
use crate::logs::clip;

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
    /// Handed to Asterisk, no answer in time (it may have run).
    Timeout,
    /// Expired in the queue before the bridge took it: never sent.
    Expired,
    /// Asterisk answered `Response: Error`.
    AmiError,
    /// The server is not connected (or the connection was lost).
    Unavailable,
    /// The reply would be larger than `[actions] max_reply_bytes`.
    TooLarge,
    /// The user already has `[actions] max_in_flight_per_user` requests
    /// running.
    Busy,
}

impl ErrorKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::UnknownServer => "unknown_server",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Expired => "expired",
            ErrorKind::AmiError => "ami_error",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Busy => "busy",
        }
    }

    #[cfg(test)]
    /// Every kind, for metrics and tests.
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::BadRequest,
        ErrorKind::UnknownServer,
        ErrorKind::Forbidden,
        ErrorKind::Timeout,
        ErrorKind::Expired,
        ErrorKind::AmiError,
        ErrorKind::Unavailable,
        ErrorKind::TooLarge,
        ErrorKind::Busy,
    ];

    /// Whether an error of this kind means the action was handed to
    /// Asterisk (so it may have run). `unavailable` says it itself: a
    /// connection lost after sending is `true`.
    pub fn may_have_run(&self) -> bool {
        matches!(
            self,
            ErrorKind::Timeout | ErrorKind::AmiError | ErrorKind::TooLarge
        )
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

fn scalar(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        // Integers keep their digits. Anything serde_json holds as a float
        // (a fraction, an exponent, or an integer beyond 64 bits) would be
        // sent as a different text than the client wrote
        // (`1.2345678901234568e+29`): refused, send such values as strings.
        Value::Number(n) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
        Value::Number(_) => {
            Err("numbers must be integers within 64 bits; send other numbers as strings".into())
        }
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(format!(
            "must be a string, number, boolean or an array of them (got {})",
            type_name(other)
        )),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A control character other than TAB: Asterisk ends a message at a line
/// starting with NUL and cuts a value at its first NUL, and CR/LF would
/// start a new header, so what the allow-list checked would not be what
/// Asterisk runs.
fn has_control(s: &str) -> bool {
    s.chars().any(|c| c.is_control() && c != '\t')
}

/// A field name as AMI reads it: not empty, no `:`, no whitespace and no
/// control characters (TAB included), shorter than an AMI line.
fn check_name(k: &str) -> Result<(), String> {
    if k.len() > 1000 {
        return Err(format!(
            "field name \"{}\" is longer than an AMI line allows",
            clip(k)
        ));
    }
    if k.is_empty()
        || k.chars()
            .any(|c| c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "field name \"{}\" is not a valid AMI header name (empty, or contains ':', whitespace or a control character)",
            clip(k)
        ));
    }
    Ok(())
}

/// The values of a field: one, or several for an array (a repeated key).
fn values(k: &str, v: &Value) -> Result<Vec<String>, String> {
    let (items, in_array) = match v {
        Value::Array(items) if items.is_empty() => {
            return Err(format!("`{}` is an empty array", clip(k)));
        }
        Value::Array(items) => (items.iter().collect(), true),
        one => (vec![one], false),
    };
    let mut out = Vec::with_capacity(items.len());
    for i in items {
        if in_array && matches!(i, Value::Array(_) | Value::Object(_) | Value::Null) {
            return Err(format!(
                "`{}`: array items must be strings, numbers or booleans",
                clip(k)
            ));
        }
        let s = scalar(i).map_err(|e| format!("`{}` {e}", clip(k)))?;
        if has_control(&s) {
            return Err(format!(
                "`{}` contains a control character (only TAB is allowed): \"{}\"",
                clip(k),
                clip(&s)
            ));
        }
        out.push(s);
    }
    Ok(out)
}

/// The action name: exactly one `Action` key (in any case), a string
/// without control characters, trimmed of surrounding whitespace (which
/// Asterisk ignores too), not empty.
fn action_name(obj: &Map<String, Value>) -> Result<String, String> {
    let mut keys = obj.iter().filter(|(k, _)| k.eq_ignore_ascii_case("Action"));
    let Some((_, v)) = keys.next() else {
        return Err("no `Action` field".into());
    };
    if keys.next().is_some() {
        return Err("`Action` is given twice (keys compare case-insensitively)".into());
    }
    let Value::String(s) = v else {
        return Err("`Action` must be a non-empty string".into());
    };
    if has_control(s) || s.contains('\t') {
        return Err(format!(
            "`Action` contains a control character: \"{}\"",
            clip(s)
        ));
    }
    let name = s.trim();
    if name.is_empty() {
        return Err("`Action` must be a non-empty string".into());
    }
    Ok(name.to_string())
}

/// Parses a request body. The error is the `bad_request` message.
///
/// Everything that would make Asterisk read something else than what the
/// allow-list checks is refused here, before the check: control
/// characters, a second `Action`, numbers whose text would change.
pub fn parse(body: &[u8]) -> Result<Request, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let Value::Object(obj) = v else {
        return Err("the body must be a JSON object of AMI fields".into());
    };
    let action = action_name(&obj)?;
    let mut b = MessageBuilder::default();
    // `Action` first, as AMI expects.
    b.push(b"Action", action.as_bytes());
    let mut client_id = None;
    let mut timeout = None;
    for (k, v) in &obj {
        if k.eq_ignore_ascii_case("Action") {
            continue;
        }
        if k.eq_ignore_ascii_case("ActionID") {
            // Never sent to Asterisk (the bridge's own replaces it); only
            // echoed back.
            client_id = Some(scalar(v).map_err(|e| format!("`ActionID` {e}"))?);
            continue;
        }
        if k == "_timeout_ms" {
            let ms = v
                .as_u64()
                .ok_or("`_timeout_ms` must be a positive integer (milliseconds)")?;
            timeout = Some(Duration::from_millis(ms.max(1)));
            continue;
        }
        check_name(k)?;
        for s in values(k, v)? {
            b.push(k.as_bytes(), s.as_bytes());
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
    /// True when the action was handed to Asterisk and may have run; false
    /// when it certainly did not reach Asterisk.
    pub may_have_run: bool,
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
            error: Some(ReplyError {
                kind,
                message,
                may_have_run: kind.may_have_run(),
            }),
            bridge: bridge.to_string(),
        }
    }

    /// Sets `error.may_have_run` (for errors whose kind does not tell).
    pub fn ran(mut self, may_have_run: bool) -> Reply {
        if let Some(e) = &mut self.error {
            e.may_have_run = may_have_run;
        }
        self
    }

    /// The `too_large` reply: the list (or the reply) passed the bound.
    pub fn too_large(server: &str, req: Option<&Request>, what: String, bridge: &str) -> Reply {
        Reply::error(server, req, ErrorKind::TooLarge, what, bridge)
    }

    /// The reply for an AMI answer: `ami_error` when Asterisk said Error.
    pub fn from_result(server: &str, req: &Request, r: &ActionResult, bridge: &str) -> Reply {
        if let Some(n) = r.list_too_large {
            return Reply::too_large(
                server,
                Some(req),
                format!(
                    "the reply would be too large: Asterisk answered with an event list of {n} events, over the bridge's [actions] max_reply_bytes; the events were not kept"
                ),
                bridge,
            );
        }
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
                may_have_run: true,
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

    /// The reply and its JSON, or a `too_large` error (and its JSON) when
    /// the JSON passes `max` bytes. The event list is already capped while
    /// it is collected (`ami::client`); this catches what JSON adds.
    pub fn bounded(self, max: usize) -> (Reply, Vec<u8>) {
        let body = self.to_vec();
        if body.len() <= max {
            return (self, body);
        }
        let mut r = Reply::too_large(
            &self.server,
            None,
            format!(
                "the reply would be {} bytes ({} events), over the bridge's [actions] max_reply_bytes = {max}",
                body.len(),
                self.events.len(),
            ),
            &self.bridge,
        );
        r.action_id = self.action_id;
        let body = r.to_vec();
        (r, body)
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
            list_too_large: None,
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

    #[test]
    fn control_characters_are_refused_in_names_and_values() {
        for body in [
            r#"{"Action":"Originate","Context":"crm-out\u0000@default"}"#,
            r#"{"Action":"Originate","Channel":"Local/1@from-internal\u0000@crm-out"}"#,
            r#"{"Action":"Originate","Cont\u0000ext":"crm-out"}"#,
            r#"{"Action":"Originate","Variable":["A=1","B=\u0001"]}"#,
            r#"{"Action":"Originate","Data":"x\u001b[31m"}"#,
            r#"{"Action":"Originate","Data":"x\u007f"}"#,
            r#"{"Action":"Originate","Da\tta":"x"}"#,
        ] {
            let e = parse(body.as_bytes()).unwrap_err();
            assert!(
                e.contains("control character") || e.contains("not a valid AMI header"),
                "{body}: {e}"
            );
        }
        // TAB is allowed in values.
        let r = parse(br#"{"Action":"Command","Command":"a\tb"}"#).unwrap();
        assert_eq!(r.message.get("Command").unwrap(), "a\tb");
    }

    #[test]
    fn the_action_name_is_normalized_and_given_once() {
        let r = parse(br#"{"Action":"  Logoff "}"#).unwrap();
        assert_eq!(r.action, "Logoff");
        assert_eq!(r.message.get("Action").unwrap(), "Logoff");
        for (body, want) in [
            (r#"{"Action":"Logoff\u0000"}"#, "control character"),
            (r#"{"Action":"Log\toff"}"#, "control character"),
            (r#"{"Action":"\u0001","action":"Events"}"#, "twice"),
            (r#"{"Action":"Ping","ACTION":"Events"}"#, "twice"),
            (r#"{"Action":"   "}"#, "non-empty"),
            (r#"{"Action":5}"#, "non-empty string"),
        ] {
            let e = parse(body.as_bytes()).unwrap_err();
            assert!(e.contains(want), "{body}: {e} (wanted {want})");
        }
    }

    #[test]
    fn numbers_keep_their_digits_or_are_refused() {
        let r = parse(br#"{"Action":"Setvar","Value":18446744073709551615,"N":-5}"#).unwrap();
        assert_eq!(r.message.get("Value").unwrap(), "18446744073709551615");
        assert_eq!(r.message.get("N").unwrap(), "-5");
        for body in [
            r#"{"Action":"Setvar","Value":123456789012345678901234567890}"#,
            r#"{"Action":"Setvar","Value":[1, 1e3]}"#,
            r#"{"Action":"Setvar","Value":1.5}"#,
        ] {
            let e = parse(body.as_bytes()).unwrap_err();
            assert!(e.contains("integers within 64 bits"), "{body}: {e}");
        }
    }

    #[test]
    fn error_messages_clip_hostile_names() {
        let body = format!(r#"{{"Action":"Ping","{}:":"v"}}"#, "k\\n".repeat(10_000));
        let e = parse(body.as_bytes()).unwrap_err();
        assert!(e.len() < 600, "{} bytes", e.len());
        assert!(!e.contains('\n'));
        let body = format!(r#"{{"Action":"Ping","{}":"v"}}"#, "k".repeat(100_000));
        let e = parse(body.as_bytes()).unwrap_err();
        assert!(
            e.contains("longer than an AMI line") && e.len() < 600,
            "{e}"
        );
    }

    #[test]
    fn errors_say_whether_the_action_may_have_run() {
        let v: Value = serde_json::from_slice(
            &Reply::error("p", None, ErrorKind::Expired, "x".into(), "i").to_vec(),
        )
        .unwrap();
        assert_eq!(v["error"]["kind"], "expired");
        assert_eq!(v["error"]["may_have_run"], false);
        let v: Value = serde_json::from_slice(
            &Reply::error("p", None, ErrorKind::Timeout, "x".into(), "i").to_vec(),
        )
        .unwrap();
        assert_eq!(v["error"]["may_have_run"], true);
        for k in ErrorKind::ALL {
            let json = serde_json::to_value(k).unwrap();
            assert_eq!(json, k.as_str());
        }
    }

    #[test]
    fn a_list_over_the_cap_is_too_large_with_its_count() {
        let req = parse(br#"{"Action":"CoreShowChannels","ActionID":"c1"}"#).unwrap();
        let r = ActionResult {
            response: Message::from_pairs([("Response", "Success"), ("EventList", "start")]),
            events: Vec::new(),
            list_too_large: Some(123_456),
        };
        let v: Value =
            serde_json::from_slice(&Reply::from_result("pbx1", &req, &r, "i1").to_vec()).unwrap();
        assert_eq!(v["error"]["kind"], "too_large");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("123456 events"),
            "{v}"
        );
        assert_eq!(v["action_id"], "c1");
    }

    #[test]
    fn a_reply_over_the_bound_becomes_too_large() {
        let req = parse(br#"{"Action":"Status","ActionID":"s1"}"#).unwrap();
        let event =
            Message::from_pairs([("Event", "Status"), ("Data", "\u{1}".repeat(500).as_str())]);
        let r = ActionResult {
            response: Message::from_pairs([("Response", "Success")]),
            // control characters take 6 bytes each in JSON
            events: vec![event; 10],
            list_too_large: None,
        };
        let reply = Reply::from_result("pbx1", &req, &r, "i1");
        let (kept, body) = Reply::from_result("pbx1", &req, &r, "i1").bounded(100_000);
        assert!(kept.error.is_none() && body.len() > 10 * 500 * 6);
        let (r2, body) = reply.bounded(20_000);
        assert_eq!(r2.error.as_ref().map(|e| e.kind), Some(ErrorKind::TooLarge));
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["action_id"], "s1");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("(10 events)"),
            "{v}"
        );
        assert!(body.len() < 1000);
    }
}
