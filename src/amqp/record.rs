//! The spool's record format: one [`Outgoing`] message, as bytes.
//!
//! A plain length-prefixed binary layout, written and read by hand: it is on
//! the hot path (every message is encoded once and decoded once), it must be
//! stable across restarts of the same version, and it needs none of what a
//! general serialisation format offers. The first byte is a version so a
//! later format can still read spools left by this one.
//!
//! Layout (little endian; `str` = u32 length + bytes):
//! `u8 version=1 | u64 received_at_unix_us | str server | u64 seq |
//!  str route | str exchange | str routing_key | u8 flags | u8 priority |
//!  u64 expiration_ms | str content_type | str type | str message_id |
//!  u16 header count | (str name, str value)* | u32 body length | body`.

use std::sync::Arc;

use crate::mapping::{MessageProps, Outgoing};

const VERSION: u8 = 1;
const F_PERSISTENT: u8 = 1;
const F_PRIORITY: u8 = 2;
const F_EXPIRATION: u8 = 4;

/// A message with what the publisher needs besides the AMQP parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Wall-clock time the event was read, microseconds since the epoch
    /// (read → confirm latency survives a restart this way).
    pub received_at_us: u64,
    pub server: Arc<str>,
    pub seq: u64,
    pub msg: Outgoing,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl Record {
    pub fn encode(&self, out: &mut Vec<u8>) {
        let m = &self.msg;
        let p = &m.props;
        out.reserve(m.body.len() + 256);
        out.push(VERSION);
        out.extend_from_slice(&self.received_at_us.to_le_bytes());
        put_str(out, &self.server);
        out.extend_from_slice(&self.seq.to_le_bytes());
        put_str(out, &m.route);
        put_str(out, &m.exchange);
        put_str(out, &m.routing_key);
        let mut flags = 0;
        if p.persistent {
            flags |= F_PERSISTENT;
        }
        if p.priority.is_some() {
            flags |= F_PRIORITY;
        }
        if p.expiration_ms.is_some() {
            flags |= F_EXPIRATION;
        }
        out.push(flags);
        out.push(p.priority.unwrap_or(0));
        out.extend_from_slice(&p.expiration_ms.unwrap_or(0).to_le_bytes());
        put_str(out, &p.content_type);
        put_str(out, &p.kind);
        put_str(out, &p.message_id);
        let n = p.headers.len().min(u16::MAX as usize);
        out.extend_from_slice(&(n as u16).to_le_bytes());
        for (k, v) in p.headers.iter().take(n) {
            put_str(out, k);
            put_str(out, v);
        }
        out.extend_from_slice(&(m.body.len() as u32).to_le_bytes());
        out.extend_from_slice(&m.body);
    }

    /// The server of an encoded record, read without decoding the rest
    /// (what a recovered spool holds, per server).
    pub fn server_of(b: &[u8]) -> Result<&str, String> {
        let mut r = Reader { b, pos: 0 };
        if r.u8()? != VERSION {
            return Err("unknown spool record version".into());
        }
        r.u64()?;
        r.str()
    }

    pub fn decode(b: &[u8]) -> Result<Record, String> {
        let mut r = Reader { b, pos: 0 };
        let v = r.u8()?;
        if v != VERSION {
            return Err(format!("unknown spool record version {v}"));
        }
        let received_at_us = r.u64()?;
        let server: Arc<str> = Arc::from(r.str()?);
        let seq = r.u64()?;
        let route: Arc<str> = Arc::from(r.str()?);
        let exchange: Arc<str> = Arc::from(r.str()?);
        let routing_key = r.str()?.to_string();
        let flags = r.u8()?;
        let priority = r.u8()?;
        let expiration = r.u64()?;
        let content_type: Arc<str> = Arc::from(r.str()?);
        let kind = r.str()?.to_string();
        let message_id = r.str()?.to_string();
        let n = r.u16()?;
        let mut headers = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let k: Arc<str> = Arc::from(r.str()?);
            headers.push((k, r.str()?.to_string()));
        }
        let blen = r.u32()? as usize;
        let body = r.take(blen)?.to_vec();
        Ok(Record {
            received_at_us,
            server,
            seq,
            msg: Outgoing {
                exchange,
                routing_key,
                props: MessageProps {
                    persistent: flags & F_PERSISTENT != 0,
                    priority: (flags & F_PRIORITY != 0).then_some(priority),
                    expiration_ms: (flags & F_EXPIRATION != 0).then_some(expiration),
                    content_type,
                    kind,
                    message_id,
                    headers,
                },
                body,
                route,
            },
        })
    }
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or("truncated spool record")?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32, String> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
    fn str(&mut self) -> Result<&'a str, String> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| "spool record has invalid UTF-8".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let r = Record {
            received_at_us: 1_795_730_181_136_000,
            server: Arc::from("pbx1"),
            seq: 42,
            msg: Outgoing {
                exchange: Arc::from("ami.events"),
                routing_key: "pbx1.call.Newchannel".into(),
                props: MessageProps {
                    persistent: true,
                    priority: Some(3),
                    expiration_ms: None,
                    content_type: Arc::from("application/json"),
                    kind: "Newchannel".into(),
                    message_id: "i:pbx1:42:0".into(),
                    headers: vec![(Arc::from("x-linkedid"), "1.0".into())],
                },
                body: br#"{"a":1}"#.to_vec(),
                route: Arc::from("calls"),
            },
        };
        let mut b = Vec::new();
        r.encode(&mut b);
        assert_eq!(Record::decode(&b).unwrap(), r);
        for cut in 0..b.len() {
            assert!(Record::decode(&b[..cut]).is_err());
        }
    }
}
