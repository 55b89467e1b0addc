//! AMQP URLs as lapin reads them.
//!
//! The bridge never takes a URL apart by hand: [`parse_amqp_url`] uses
//! lapin's own parser (`lapin::uri::AMQPUri`, from amq-protocol-uri), so
//! the user, host and vhost seen here are the ones lapin connects with —
//! percent-decoded, with the userinfo ending at the *last* `@` of the
//! authority (a raw `@` in a password works). [`redact_url`] prints that
//! parsed form with the password replaced by `***`, and prints nothing of
//! a URL it cannot parse beyond its scheme. Error texts never contain the
//! URL itself (it may hold a password).

use std::str::FromStr;

use lapin::uri::AMQPUri;

/// Parses `u` exactly as `lapin::Connection::connect` will.
pub fn parse_amqp_url(u: &str) -> Result<AMQPUri, String> {
    if !(u.starts_with("amqp://") || u.starts_with("amqps://")) {
        return Err("must start with amqp:// or amqps://".into());
    }
    let p = AMQPUri::from_str(u).map_err(|e| {
        if e.contains(u) {
            "not a valid URL".to_string()
        } else {
            e
        }
    })?;
    if authority_host(u).starts_with('[') {
        // amq-protocol-uri takes the host from `Url::domain()`, which is
        // None for an IP literal in brackets: lapin would silently connect
        // to `localhost` instead.
        return Err("has an IPv6 address as host, which the AMQP library replaces by localhost: use a host name".into());
    }
    if p.authority.host.is_empty() {
        return Err("has no host".into());
    }
    if p.authority.port == 0 {
        return Err("port 0 is not a port to connect to".into());
    }
    Ok(p)
}

/// The host (and port) part of the authority, as written: after the last
/// `@` before the path, query or fragment.
fn authority_host(u: &str) -> &str {
    let rest = u.split_once("://").map_or(u, |x| x.1);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    authority.rsplit_once('@').map_or(authority, |x| x.1)
}

/// The URL with its password replaced by `***`, from the parsed form:
/// `amqp://us%40er:***@host:5672/%2F`. A URL lapin cannot parse is shown
/// as its scheme only (`amqp://<unparsable URL>`): where the password would
/// end cannot be known.
pub fn redact_url(u: &str) -> String {
    match parse_amqp_url(u) {
        Ok(mut p) => {
            p.authority.userinfo.password.clear();
            // Display writes `scheme://user:password@…` with user and
            // password percent-encoded (no `:` or `@` left in them), so the
            // first `:@` is where the (now empty) password sits.
            p.to_string().replacen(":@", ":***@", 1)
        }
        Err(_) => {
            let scheme = u.split_once("://").map_or("", |(s, _)| s);
            let scheme = if (1..=8).contains(&scheme.len())
                && scheme.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                scheme
            } else {
                "?"
            };
            format!("{scheme}://<unparsable URL>")
        }
    }
}

/// The user lapin authenticates as (percent-decoded; `guest` when the URL
/// names none): the value RabbitMQ expects in the `user_id` property.
pub fn url_user(u: &str) -> Result<String, String> {
    parse_amqp_url(u).map(|p| p.authority.userinfo.username)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_from_the_parsed_form() {
        assert_eq!(
            redact_url("amqp://u:p@h:5672/%2f"),
            "amqp://u:***@h:5672/%2F"
        );
        // A raw `@` in the password: nothing of it is left.
        let r = redact_url("amqp://user:p@ss@host/v");
        assert_eq!(r, "amqp://user:***@host:5672/v");
        // A raw `@` in the user and the password.
        let r = redact_url("amqp://us@er:se@cr@et@host:1234/%2f?heartbeat=5");
        assert_eq!(r, "amqp://us%40er:***@host:1234/%2F?heartbeat=5");
        assert_eq!(redact_url("amqps://h"), "amqps://guest:***@h:5671/%2F");
        let r = redact_url("amqp://u:pw@ss@h:notaport/");
        assert!(!r.contains("pw") && !r.contains("ss"), "{r}");
        assert_eq!(
            redact_url("amqp://u:secret@h:notaport/"),
            "amqp://<unparsable URL>"
        );
        assert_eq!(redact_url("u:secret@h"), "?://<unparsable URL>");
    }

    #[test]
    fn parses_as_lapin_does() {
        assert_eq!(url_user("amqp://us%40er:x@h/").unwrap(), "us@er");
        assert_eq!(url_user("amqp://us@er:p@ss@h/").unwrap(), "us@er");
        assert_eq!(url_user("amqp://h/").unwrap(), "guest");
        let e = parse_amqp_url("amqp://u:secret@h:notaport/").unwrap_err();
        assert!(!e.contains("secret"), "{e}");
        assert!(e.contains("port"), "{e}");
        assert!(parse_amqp_url("http://u:p@h/").is_err());
        assert!(parse_amqp_url("amqp://h:0/").is_err());
        assert!(parse_amqp_url("amqp://h/?heartbeat=x").is_err());
        let e = parse_amqp_url("amqp://u:p@ss@[::1]:5672/").unwrap_err();
        assert!(e.contains("IPv6"), "{e}");
        assert_eq!(
            parse_amqp_url("amqp://u:p@10.1.2.3/")
                .unwrap()
                .authority
                .host,
            "10.1.2.3"
        );
    }
}
