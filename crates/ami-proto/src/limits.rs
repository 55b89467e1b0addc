//! Size limits: what the decoder accepts, and what Asterisk accepts.
//!
//! Asterisk's manager reads a request into a fixed buffer: a line is at
//! most [`REQUEST_MAX_LINE`] bytes (1022, without its line ending) and a
//! request at most [`REQUEST_MAX_LINES`] lines (128); anything longer is cut
//! or refused. These two numbers live here once: [`Limits::asterisk_request`]
//! decodes what clients send with them, and [`check_request`] refuses an
//! action before it is sent to an Asterisk that would misread it.

use crate::message::Message;

/// Longest request line Asterisk accepts, in bytes, without the line ending.
pub const REQUEST_MAX_LINE: usize = 1022;

/// Most lines Asterisk accepts in one request.
pub const REQUEST_MAX_LINES: usize = 128;

/// Size limits of the decoder. What Asterisk *sends* can be much larger than
/// what it accepts (a `Command` output, an event with many channel
/// variables), so the defaults are generous but finite.
///
/// Keep `max_line <= max_message` (the bridge's config check refuses
/// anything else): with a longer line limit, a message over both limits
/// may be reported as either error depending on where the reads split it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest line, in bytes, without its line ending.
    pub max_line: usize,
    /// Largest message, in bytes, all lines together.
    pub max_message: usize,
    /// Most lines in one message.
    pub max_lines: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line: 64 * 1024,
            max_message: 1024 * 1024,
            max_lines: 16 * 1024,
        }
    }
}

impl Limits {
    /// What Asterisk's manager accepts from a client ([`REQUEST_MAX_LINE`],
    /// [`REQUEST_MAX_LINES`]): the limits to apply to actions read from
    /// clients, as Asterisk would.
    pub fn asterisk_request() -> Self {
        Limits {
            max_line: REQUEST_MAX_LINE,
            max_message: REQUEST_MAX_LINES * (REQUEST_MAX_LINE + 2),
            max_lines: REQUEST_MAX_LINES,
        }
    }
}

/// Why [`check_request`] refused an action.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("no `Action` field")]
    NoAction,
    #[error("{lines} lines; Asterisk accepts at most {REQUEST_MAX_LINES}")]
    TooManyLines { lines: usize },
    #[error("field name {key:?} is empty or contains ':' or a line break")]
    BadKey { key: String },
    #[error("value of {key} contains a line break")]
    LineBreakInValue { key: String },
    #[error("line {key}: … is {len} bytes; Asterisk accepts at most {REQUEST_MAX_LINE}")]
    LineTooLong { key: String, len: usize },
}

/// Checks an action against what Asterisk's manager accepts: an `Action`
/// header, lines of at most [`REQUEST_MAX_LINE`] bytes, at most
/// [`REQUEST_MAX_LINES`] lines with room for one more (the `ActionID` a
/// client adds), and no line breaks inside keys or values (which would
/// inject headers).
///
/// An action that passes, with one `ActionID` line added, decodes under
/// [`Limits::asterisk_request`] as one message.
pub fn check_request(action: &Message) -> Result<(), RequestError> {
    if !action.contains("Action") {
        return Err(RequestError::NoAction);
    }
    if action.len() + 1 > REQUEST_MAX_LINES {
        return Err(RequestError::TooManyLines {
            lines: action.len(),
        });
    }
    for (k, v) in action.iter_bytes() {
        let key = || String::from_utf8_lossy(k).into_owned();
        if k.is_empty() || k.iter().any(|&c| c == b':' || c == b'\r' || c == b'\n') {
            return Err(RequestError::BadKey { key: key() });
        }
        if v.iter().any(|&c| c == b'\r' || c == b'\n') {
            return Err(RequestError::LineBreakInValue { key: key() });
        }
        let len = k.len() + 2 + v.len();
        if len > REQUEST_MAX_LINE {
            return Err(RequestError::LineTooLong { key: key(), len });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_what_asterisk_rejects() {
        assert!(check_request(&Message::from_pairs([("Action", "Ping")])).is_ok());
        assert_eq!(
            check_request(&Message::from_pairs([("Channel", "x")])),
            Err(RequestError::NoAction)
        );
        let long = "x".repeat(REQUEST_MAX_LINE - 5);
        let at_limit = Message::from_pairs([("Action", "Ping"), ("Dat", long.as_str())]);
        assert!(check_request(&at_limit).is_ok());
        let over = Message::from_pairs([("Action", "Ping"), ("Data", long.as_str())]);
        assert!(matches!(
            check_request(&over),
            Err(RequestError::LineTooLong { len: 1023, .. })
        ));
        let injected = Message::from_pairs([("Action", "Ping"), ("Data", "a\r\nAction: Hangup")]);
        assert!(matches!(
            check_request(&injected),
            Err(RequestError::LineBreakInValue { .. })
        ));
    }
}
