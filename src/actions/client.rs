//! The client side of the action contract, for `ami2amqp action` and tests.
//!
//! It publishes one request to the actions exchange with the server's name
//! as routing key and waits for the reply on RabbitMQ's direct reply-to
//! pseudo-queue (`amq.rabbitmq.reply-to`), which needs no queue declaration
//! and so no permission beyond publishing. The request carries an
//! `expiration` equal to the timeout, so a request nobody picks up in time
//! is answered `timeout` by the bridge instead of running late.

use std::time::Duration;

use futures::StreamExt;
use lapin::BasicProperties;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions};
use lapin::types::FieldTable;
use serde_json::Value;

use crate::amqp::connect::{
    Broker, CLI_CLOSE_TIMEOUT, CliConnectError, close_bounded, connect_cli,
};
use crate::amqp::publisher::short;
use crate::config::redact_url;

/// Builds a request body from `Action` and `Key=Value` arguments; a key
/// given several times becomes an array (a repeated AMI header).
pub fn body_from_args(action: &str, pairs: &[String]) -> Result<Value, String> {
    let mut obj = serde_json::Map::new();
    obj.insert("Action".into(), Value::String(action.to_string()));
    for p in pairs {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| format!("{p:?} is not Key=Value"))?;
        let v = Value::String(v.to_string());
        match obj.get_mut(k) {
            Some(Value::Array(a)) => a.push(v),
            Some(prev) => {
                let p = prev.take();
                *prev = Value::Array(vec![p, v]);
            }
            None => {
                obj.insert(k.to_string(), v);
            }
        }
    }
    Ok(Value::Object(obj))
}

/// The `user_id` to send by default: the user the URL authenticates as,
/// percent-decoded exactly as lapin decodes it for the login (`us%40er`
/// in the URL logs in as `us@er`, and RabbitMQ refuses a `user_id` that
/// differs from the login user).
pub fn default_user_id(url: &str) -> Result<String, String> {
    crate::config::url_user(url).map_err(|e| format!("the broker URL {} {e}", redact_url(url)))
}

/// Why `call` got no reply; the command line prints the text.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Connect(#[from] CliConnectError),
    /// Opening the channel or reading the reply consumer (lapin's text).
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
    #[error("direct reply-to: {0}")]
    ReplyTo(lapin::Error),
    #[error("publish: {0}")]
    Publish(lapin::Error),
    #[error("reply is not JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("the reply consumer was cancelled")]
    Cancelled,
    #[error("no reply within {wait:?}: is a bridge running and consuming exchange {exchange:?}?")]
    NoReply { wait: Duration, exchange: String },
}

/// Sends `body` to `server` and returns the reply body.
pub async fn call(
    broker: &Broker,
    exchange: &str,
    server: &str,
    body: &[u8],
    timeout: Duration,
    user_id: Option<&str>,
) -> Result<Value, CallError> {
    let conn = connect_cli(&broker.url, &broker.tls).await?;
    let ch = conn.create_channel().await?;
    let mut replies = ch
        .basic_consume(
            short("amq.rabbitmq.reply-to"),
            short(""),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(CallError::ReplyTo)?;
    let corr = format!("{:016x}", rand::random::<u64>());
    let mut props = BasicProperties::default()
        .with_reply_to(short("amq.rabbitmq.reply-to"))
        .with_correlation_id(short(&corr))
        .with_content_type(short("application/json"))
        .with_expiration(short(&timeout.as_millis().to_string()));
    if let Some(u) = user_id {
        props = props.with_user_id(short(u));
    }
    ch.basic_publish(
        short(exchange),
        short(server),
        BasicPublishOptions::default(),
        body,
        props,
    )
    .await
    .map_err(CallError::Publish)?;
    // The bridge answers within the timeout (or with `timeout`); allow it
    // a little more for the round trip.
    let wait = timeout + Duration::from_secs(5);
    let r = tokio::time::timeout(wait, async {
        while let Some(d) = replies.next().await {
            let d = d?;
            if d.properties.correlation_id().as_ref().map(|c| c.as_str()) == Some(corr.as_str()) {
                return serde_json::from_slice::<Value>(&d.data).map_err(CallError::NotJson);
            }
        }
        Err(CallError::Cancelled)
    })
    .await
    .map_err(|_| CallError::NoReply {
        wait,
        exchange: exchange.to_string(),
    })?;
    close_bounded(&conn, "bye", CLI_CLOSE_TIMEOUT).await;
    r
}

/// A reply for people: response, error, fields, events, output.
pub fn render(reply: &Value) -> String {
    let mut s = String::new();
    let get = |k: &str| reply.get(k).and_then(Value::as_str).unwrap_or("");
    s.push_str(&format!(
        "server: {}  response: {}\n",
        get("server"),
        get("response")
    ));
    if let Some(e) = reply.get("error") {
        s.push_str(&format!(
            "error: {}: {}\n",
            e.get("kind").and_then(Value::as_str).unwrap_or("?"),
            e.get("message").and_then(Value::as_str).unwrap_or("")
        ));
    }
    if let Some(f) = reply.get("fields").and_then(Value::as_object) {
        for (k, v) in f {
            s.push_str(&format!(
                "{k}: {}\n",
                v.as_str().map_or_else(|| v.to_string(), str::to_string)
            ));
        }
    }
    if let Some(ev) = reply.get("events").and_then(Value::as_array) {
        for e in ev {
            s.push_str(&format!("  event {e}\n"));
        }
    }
    if let Some(out) = reply.get("output").and_then(Value::as_array) {
        for l in out {
            s.push_str(l.as_str().unwrap_or(""));
            s.push('\n');
        }
    }
    s
}

/// True when the reply carries an error.
pub fn is_error(reply: &Value) -> bool {
    reply.get("error").is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_to_body() {
        let b = body_from_args(
            "Originate",
            &[
                "Channel=Local/100@test".into(),
                "Variable=A=1".into(),
                "Variable=B=2".into(),
            ],
        )
        .unwrap();
        assert_eq!(
            b,
            serde_json::json!({"Action":"Originate","Channel":"Local/100@test","Variable":["A=1","B=2"]})
        );
        assert!(body_from_args("Ping", &["novalue".into()]).is_err());
    }

    #[tokio::test]
    async fn call_says_it_could_not_connect() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let url = format!("amqp://guest:s3cret@127.0.0.1:{port}/%2f");
        let e = call(
            &Broker::plain_settings(url),
            "x",
            "pbx",
            b"{}",
            Duration::from_secs(1),
            None,
        )
        .await
        .expect_err("nothing listens");
        assert!(matches!(e, CallError::Connect(_)), "{e:?}");
        let text = e.to_string();
        assert!(
            text.starts_with("cannot connect to amqp://guest:***@"),
            "{text}"
        );
        assert!(!text.contains("s3cret"), "{text}");
    }
}
