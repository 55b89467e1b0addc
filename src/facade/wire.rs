//! The bytes a facade client receives, built without I/O.
//!
//! Events are forwarded as Asterisk wrote them: [`event_wire`] keeps the
//! original bytes when they are already what F4 asks for (CRLF lines, one
//! blank line at the end) and re-encodes only the rare message that is not,
//! so the fan-out to many clients shares one buffer. Responses and the
//! events that answer a client's own action get the client's `ActionID`
//! back ([`restore`]): `Response:`/`Event:` first, the client's ActionID
//! second byte for byte (no line when it sent none), the rest unchanged,
//! and `Server: <name>` last for users who see several servers (F27).

use bytes::{BufMut, Bytes, BytesMut};

use crate::ami::Message;

/// An event in wire form, ready to write to any number of clients.
pub fn event_wire(m: &Message) -> Bytes {
    let raw = m.raw();
    let lf = memchr::memchr_iter(b'\n', raw).count();
    let crlf = memchr::memmem::find_iter(raw, b"\r\n").count();
    if lf == crlf && raw.ends_with(b"\r\n") && lf == m.len() {
        let mut b = BytesMut::with_capacity(raw.len() + 2);
        b.put_slice(raw);
        b.put_slice(b"\r\n");
        return b.freeze();
    }
    m.to_wire()
}

/// `m` with the client's ActionID in place of the bridge's, where
/// Asterisk put it (second in a response, after `Privilege` in an event),
/// or without that line when the client sent none; `Server:` appended
/// when `server` is given.
pub fn restore(m: &Message, client_id: Option<&[u8]>, server: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.raw().len() + 64);
    let mut replaced = false;
    for (k, v) in m.iter_bytes() {
        if k.eq_ignore_ascii_case(b"ActionID") {
            if let (Some(id), false) = (client_id, replaced) {
                line(&mut out, b"ActionID", id);
            }
            replaced = true;
            continue;
        }
        line(&mut out, k, v);
    }
    if let Some(s) = server {
        line(&mut out, b"Server", s.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// A forwarded event as is, with `Server:` appended (F27).
pub fn with_server(wire: &[u8], server: &str) -> Vec<u8> {
    let body = wire.strip_suffix(b"\r\n").unwrap_or(wire);
    let mut out = Vec::with_capacity(wire.len() + server.len() + 12);
    out.extend_from_slice(body);
    line(&mut out, b"Server", server.as_bytes());
    out.extend_from_slice(b"\r\n");
    out
}

/// `Response: Error`, the client's ActionID, `Message: <msg>`.
pub fn error(client_id: Option<&[u8]>, msg: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + msg.len());
    line(&mut out, b"Response", b"Error");
    if let Some(id) = client_id {
        line(&mut out, b"ActionID", id);
    }
    line(&mut out, b"Message", msg.as_bytes());
    out.extend_from_slice(b"\r\n");
    out
}

/// The client's ActionID: the first `ActionID` header, if not empty
/// (Asterisk writes no ActionID line for an empty one).
pub fn client_id(m: &Message) -> Option<Bytes> {
    m.iter_bytes()
        .find(|(k, _)| k.eq_ignore_ascii_case(b"ActionID"))
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
        .map(Bytes::copy_from_slice)
}

/// `m` without its `Server` and `ActionID` headers (the pool adds the
/// bridge's ActionID; `Server:` only chose the backend).
pub fn strip_for_backend(m: &Message) -> Message {
    let mut b = ami_proto::MessageBuilder::default();
    for (k, v) in m.iter_bytes() {
        if k.eq_ignore_ascii_case(b"Server") || k.eq_ignore_ascii_case(b"ActionID") {
            continue;
        }
        b.push(k, v);
    }
    b.build()
}

fn line(out: &mut Vec<u8>, k: &[u8], v: &[u8]) {
    out.extend_from_slice(k);
    out.extend_from_slice(b": ");
    out.extend_from_slice(v);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use ami_proto::{Frame, Limits, decode_all};

    fn decode(wire: &[u8]) -> Message {
        match decode_all(wire, Limits::default()).remove(0) {
            Frame::Message(m) => m,
            f => panic!("{f:?}"),
        }
    }

    #[test]
    fn events_keep_their_bytes_or_become_crlf() {
        let w = b"Event: Newchannel\r\nPrivilege: call,all\r\nChannel: SIP/1\r\n\r\n";
        assert_eq!(&event_wire(&decode(w))[..], &w[..]);
        let lf = b"Event: Newchannel\nPrivilege: call,all\n\n";
        assert_eq!(
            &event_wire(&decode(lf))[..],
            b"Event: Newchannel\r\nPrivilege: call,all\r\n\r\n"
        );
    }

    #[test]
    fn restore_puts_the_client_id_second_and_server_last() {
        let m = decode(b"Response: Success\r\nActionID: a2a-f7\r\nMessage: Pong\r\n\r\n");
        assert_eq!(
            restore(&m, Some(b"my/id#1"), None),
            b"Response: Success\r\nActionID: my/id#1\r\nMessage: Pong\r\n\r\n"
        );
        assert_eq!(
            restore(&m, None, Some("pbx2")),
            b"Response: Success\r\nMessage: Pong\r\nServer: pbx2\r\n\r\n"
        );
        let ev = decode(b"Event: OriginateResponse\r\nPrivilege: call,all\r\nActionID: a2a-f9\r\nResponse: Success\r\n\r\n");
        assert_eq!(
            restore(&ev, Some(b"o1"), None),
            b"Event: OriginateResponse\r\nPrivilege: call,all\r\nActionID: o1\r\nResponse: Success\r\n\r\n"
        );
        let ev = b"Event: X\r\nPrivilege: call,all\r\n\r\n";
        assert_eq!(
            with_server(ev, "pbx1"),
            b"Event: X\r\nPrivilege: call,all\r\nServer: pbx1\r\n\r\n"
        );
    }

    #[test]
    fn client_ids_and_backend_copies() {
        let a = decode(b"Action: Ping\r\nactionid: \r\nActionID: x\r\nServer: pbx1\r\n\r\n");
        assert_eq!(client_id(&a), None, "the first ActionID wins, even empty");
        let b = decode(b"Action: Ping\r\nServer: pbx1\r\nActionID: 1\r\nX: y\r\n\r\n");
        assert_eq!(client_id(&b).as_deref(), Some(&b"1"[..]));
        assert_eq!(
            &strip_for_backend(&b).to_wire()[..],
            b"Action: Ping\r\nX: y\r\n\r\n"
        );
        assert_eq!(
            error(None, "Timeout"),
            b"Response: Error\r\nMessage: Timeout\r\n\r\n"
        );
    }
}
