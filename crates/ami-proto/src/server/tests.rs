use super::*;
use crate::events::privilege_bits;
use std::collections::HashMap;

struct Users(HashMap<String, Account>);

impl Accounts for Users {
    fn find(&self, username: &str) -> Option<&Account> {
        self.0.get(&username.to_ascii_lowercase())
    }
}

fn users() -> Users {
    let mut m = HashMap::new();
    let all = EventMask::parse("on").bits();
    let call = privilege_bits(b"call");
    let system = privilege_bits(b"system");
    let acct = |read, write| Account {
        secret: "s3cret".into(),
        read,
        write,
        filters: FilterSet::default(),
    };
    m.insert("admin".into(), acct(all, all));
    m.insert("crm".into(), acct(call, call));
    let mut quiet = acct(call | system, call);
    quiet
        .filters
        .add(EventFilter::legacy("!Event: VarSet").expect("valid"));
    m.insert("quiet".into(), quiet);
    Users(m)
}

const BOOTED: Boot = Boot {
    fully_booted: true,
    uptime_s: 120,
    last_reload_s: 60,
};

fn msg(pairs: &[(&str, &str)]) -> Message {
    Message::from_pairs(pairs.iter().copied())
}

fn run(s: &mut ServerSession, pairs: &[(&str, &str)]) -> Step {
    s.handle(
        &msg(pairs),
        &users(),
        BOOTED,
        || "123456789".into(),
        (1700000000, 42),
    )
}

fn text(step: Step) -> String {
    match step {
        Step::Answer(b) => String::from_utf8(b).expect("utf-8"),
        other => panic!("not an answer: {other:?}"),
    }
}

fn logged_in(user: &str, events: Option<&str>) -> ServerSession {
    let mut s = ServerSession::new();
    let mut pairs = vec![
        ("Action", "Login"),
        ("Username", user),
        ("Secret", "s3cret"),
    ];
    if let Some(e) = events {
        pairs.push(("Events", e));
    }
    let out = text(run(&mut s, &pairs));
    assert!(out.starts_with("Response: Success\r\nMessage: Authentication accepted\r\n\r\n"));
    s
}

#[test]
fn only_login_challenge_and_logoff_before_login() {
    let mut s = ServerSession::new();
    let out = text(run(&mut s, &[("Action", "Ping"), ("ActionID", "7")]));
    assert_eq!(
        out,
        "Response: Error\r\nActionID: 7\r\nMessage: Permission denied\r\n\r\n"
    );
    let out = text(run(&mut s, &[("Action", "Status")]));
    assert_eq!(out, "Response: Error\r\nMessage: Permission denied\r\n\r\n");
    assert!(!s.wants_event(privilege_bits(b"call"), b"Newchannel", b""));
    let bye = run(&mut s, &[("Action", "logoff"), ("ActionID", "x/1")]);
    let answer = b"Response: Goodbye\r\nActionID: x/1\r\nMessage: Thanks for all the fish.\r\n\r\n";
    assert_eq!(
        bye,
        Step::Close {
            answer: answer.to_vec(),
            delay: false
        }
    );
}

#[test]
fn missing_action() {
    let mut s = ServerSession::new();
    let out = text(run(&mut s, &[("Action", ""), ("ActionID", "9")]));
    assert_eq!(
        out,
        "Response: Error\r\nActionID: 9\r\nMessage: Missing action in request\r\n\r\n"
    );
    // The first non-empty Action wins.
    let out = text(run(
        &mut s,
        &[("Action", ""), ("Action", "Challenge"), ("AuthType", "md5")],
    ));
    assert_eq!(out, "Response: Success\r\nChallenge: 123456789\r\n\r\n");
}

#[test]
fn plain_login_is_case_insensitive_on_the_name_only() {
    let mut s = ServerSession::new();
    let out = text(run(
        &mut s,
        &[
            ("Action", "Login"),
            ("Username", "ADMIN"),
            ("Secret", "s3cret"),
        ],
    ));
    assert!(out.starts_with("Response: Success\r\nMessage: Authentication accepted\r\n\r\n"));
    assert_eq!(s.username(), Some("ADMIN"));
    let again = text(run(&mut s, &[("Action", "Login"), ("ActionID", "2")]));
    assert_eq!(
        again,
        "Response: Success\r\nActionID: 2\r\nMessage: Already authenticated\r\n\r\n"
    );

    for (user, secret) in [("admin", "S3CRET"), ("nobody", "s3cret"), ("", "s3cret")] {
        let mut s = ServerSession::new();
        let step = run(
            &mut s,
            &[("Action", "Login"), ("Username", user), ("Secret", secret)],
        );
        let answer = b"Response: Error\r\nMessage: Authentication failed\r\n\r\n".to_vec();
        assert_eq!(
            step,
            Step::Close {
                answer,
                delay: true
            },
            "{user}/{secret}"
        );
        assert_eq!(s.username(), None);
    }
}

#[test]
fn md5_login_needs_the_sessions_challenge() {
    let mut s = ServerSession::new();
    let out = text(run(
        &mut s,
        &[("Action", "Challenge"), ("AuthType", "plain")],
    ));
    assert_eq!(
        out,
        "Response: Error\r\nMessage: Must specify AuthType\r\n\r\n"
    );
    // Without a challenge first, an MD5 login fails.
    let key = crate::login::md5_key("123456789", "s3cret");
    let md5 = [
        ("Action", "Login"),
        ("AuthType", "MD5"),
        ("Username", "crm"),
        ("Key", key.as_str()),
    ];
    assert!(matches!(run(&mut s, &md5), Step::Close { delay: true, .. }));

    let mut s = ServerSession::new();
    let out = text(run(
        &mut s,
        &[
            ("Action", "Challenge"),
            ("AuthType", "MD5"),
            ("ActionID", "c"),
        ],
    ));
    assert_eq!(
        out,
        "Response: Success\r\nActionID: c\r\nChallenge: 123456789\r\n\r\n"
    );
    // The challenge is stable for the session.
    let again = s.handle(
        &msg(&[("Action", "Challenge"), ("AuthType", "MD5")]),
        &users(),
        BOOTED,
        || "999".into(),
        (0, 0),
    );
    assert_eq!(
        text(again),
        "Response: Success\r\nChallenge: 123456789\r\n\r\n"
    );
    let out = text(run(&mut s, &md5));
    assert!(out.starts_with("Response: Success\r\nMessage: Authentication accepted\r\n\r\n"));
}

#[test]
fn fully_booted_follows_login_when_the_mask_has_system() {
    let mut s = ServerSession::new();
    let out = text(run(
        &mut s,
        &[
            ("Action", "Login"),
            ("Username", "admin"),
            ("Secret", "s3cret"),
        ],
    ));
    assert_eq!(
        out,
        "Response: Success\r\nMessage: Authentication accepted\r\n\r\n\
         Event: FullyBooted\r\nPrivilege: system,all\r\nUptime: 120\r\nLastReload: 60\r\n\
         Status: Fully Booted\r\n\r\n"
    );
    for (user, events) in [("admin", "off"), ("admin", "call"), ("crm", "on")] {
        let mut s = ServerSession::new();
        let login = [
            ("Action", "Login"),
            ("Username", user),
            ("Secret", "s3cret"),
            ("Events", events),
        ];
        let out = text(run(&mut s, &login));
        assert!(!out.contains("FullyBooted"), "{user} with Events: {events}");
    }
    let mut s = ServerSession::new();
    let booting = s.handle(
        &msg(&[
            ("Action", "Login"),
            ("Username", "admin"),
            ("Secret", "s3cret"),
        ]),
        &users(),
        Boot {
            fully_booted: false,
            ..BOOTED
        },
        || "1".into(),
        (0, 0),
    );
    assert!(!text(booting).contains("FullyBooted"));
}

#[test]
fn login_mask_is_limited_by_read_classes() {
    let call = privilege_bits(b"call");
    let system = privilege_bits(b"system");
    assert_eq!(
        logged_in("crm", None).event_mask(),
        call,
        "absent: read classes"
    );
    assert_eq!(logged_in("crm", Some("on")).event_mask(), call);
    assert_eq!(logged_in("crm", Some("system,call")).event_mask(), call);
    assert_eq!(logged_in("crm", Some("off")).event_mask(), 0);
    assert_eq!(
        logged_in("admin", Some("3")).event_mask(),
        call | system,
        "digits: a bitmask"
    );
    let s = logged_in("crm", None);
    assert!(s.wants_event(
        privilege_bits(b"call,all"),
        b"Newchannel",
        b"Event: Newchannel\r\n\r\n"
    ));
    assert!(!s.wants_event(privilege_bits(b"system,all"), b"Reload", b""));
    assert!(
        !s.wants_event(privilege_bits(b"call,system"), b"X", b""),
        "every class must be in the mask"
    );
}

#[test]
fn events_action() {
    let mut s = logged_in("admin", None);
    let out = text(run(
        &mut s,
        &[
            ("Action", "Events"),
            ("EventMask", "off"),
            ("ActionID", "e"),
        ],
    ));
    assert_eq!(
        out,
        "Response: Success\r\nActionID: e\r\nEvents: Off\r\n\r\n"
    );
    assert_eq!(s.event_mask(), 0);
    let out = text(run(
        &mut s,
        &[("Action", "Events"), ("EventMask", "call,user")],
    ));
    assert_eq!(out, "Response: Success\r\nEvents: On\r\n\r\n");
    assert_eq!(s.event_mask(), privilege_bits(b"call,user"));
    let out = text(run(&mut s, &[("Action", "Events")]));
    assert_eq!(
        out,
        "Response: Error\r\nMessage: Invalid event mask\r\n\r\n"
    );
    assert_eq!(s.event_mask(), privilege_bits(b"call,user"), "unchanged");
    // A mask is limited by the read classes, but the answer says what was asked.
    let mut s = logged_in("crm", None);
    let out = text(run(
        &mut s,
        &[("Action", "Events"), ("EventMask", "system")],
    ));
    assert_eq!(out, "Response: Success\r\nEvents: On\r\n\r\n");
    assert_eq!(s.event_mask(), 0);
}

#[test]
fn filter_action() {
    let mut s = logged_in("crm", None);
    let add = [
        ("Action", "Filter"),
        ("Operation", "Add"),
        ("Filter", "Event: Hangup"),
    ];
    let out = text(run(&mut s, &add));
    assert_eq!(
        out, "Response: Error\r\nMessage: Permission denied\r\n\r\n",
        "needs write system"
    );

    let mut s = logged_in("admin", None);
    let out = text(run(
        &mut s,
        &[
            ("Action", "Filter"),
            ("Operation", "Remove"),
            ("Filter", "x"),
        ],
    ));
    assert_eq!(out, "Response: Error\r\nMessage: Unknown operation\r\n\r\n");
    let out = text(run(
        &mut s,
        &[("Action", "Filter"), ("Operation", "Add"), ("Filter", "a[")],
    ));
    assert_eq!(
        out,
        "Response: Error\r\nMessage: Filter did not compile.  Check the syntax of the filter given.\r\n\r\n"
    );
    let call = privilege_bits(b"call");
    let hangup = b"Event: Hangup\r\nPrivilege: call,all\r\n\r\n";
    let newch = b"Event: Newchannel\r\nPrivilege: call,all\r\n\r\n";
    assert!(
        s.wants_event(call, b"Newchannel", newch),
        "no filter: everything"
    );
    let out = text(run(&mut s, &add));
    assert_eq!(out, "Response: Success\r\nMessage: Success\r\n\r\n");
    assert!(s.wants_event(call, b"Hangup", hangup));
    assert!(
        !s.wants_event(call, b"Newchannel", newch),
        "an include filter excludes the rest"
    );
}

#[test]
fn preset_filters_apply_from_login() {
    let s = logged_in("quiet", None);
    let call = privilege_bits(b"call");
    assert!(!s.wants_event(
        call,
        b"VarSet",
        b"Event: VarSet\r\nPrivilege: dialplan,all\r\n\r\n"
    ));
    assert!(s.wants_event(
        call,
        b"Hangup",
        b"Event: Hangup\r\nPrivilege: call,all\r\n\r\n"
    ));
}

#[test]
fn ping_and_forward() {
    let mut s = logged_in("crm", None);
    let out = text(run(&mut s, &[("Action", "PING"), ("ActionID", "p")]));
    assert_eq!(
        out,
        "Response: Success\r\nActionID: p\r\nPing: Pong\r\nTimestamp: 1700000000.000042\r\n\r\n"
    );
    let step = run(&mut s, &[("Action", "CoreShowChannels"), ("ActionID", "1")]);
    assert_eq!(
        step,
        Step::Forward {
            action: "CoreShowChannels".into()
        }
    );
    assert_eq!(s.write_classes(), privilege_bits(b"call"));
}

mod props {
    use super::*;
    use crate::{Frame, Limits, decode_all};
    use proptest::prelude::*;

    fn action() -> impl Strategy<Value = Vec<(String, String)>> {
        let name = prop::sample::select(vec![
            "Login",
            "Logoff",
            "Challenge",
            "Ping",
            "Events",
            "Filter",
            "Status",
            "",
            "login",
        ]);
        let extra = prop::collection::vec(
            (
                prop::sample::select(vec![
                    "ActionID",
                    "Username",
                    "Secret",
                    "AuthType",
                    "Key",
                    "Events",
                    "EventMask",
                    "Operation",
                    "Filter",
                    "MatchCriteria",
                ]),
                "[ -~]{0,12}",
            ),
            0..5,
        );
        (name, extra).prop_map(|(n, extra)| {
            let mut v = vec![("Action".to_string(), n.to_string())];
            v.extend(
                extra
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.trim().to_string())),
            );
            v
        })
    }

    proptest! {
        /// Whatever a client sends: every answer decodes as AMI messages,
        /// a response starts with `Response:` and carries the client's first
        /// ActionID second (none if it sent none); a session that is not
        /// logged in is never sent an event; nothing is forwarded before login.
        #[test]
        fn answers_are_well_formed(actions in prop::collection::vec(action(), 1..12)) {
            let mut s = ServerSession::new();
            for pairs in actions {
                let m = Message::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                let before = s.username().is_some();
                let step = run(&mut s, &pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect::<Vec<_>>());
                let bytes = match step {
                    Step::Answer(b) | Step::Close { answer: b, .. } => b,
                    Step::Forward { .. } => {
                        prop_assert!(before, "forwarded before login");
                        continue;
                    }
                };
                prop_assert!(bytes.ends_with(b"\r\n\r\n"));
                let frames = decode_all(&bytes, Limits::default());
                let Some(Frame::Message(first)) = frames.first() else {
                    return Err(TestCaseError::fail(format!("{frames:?}")));
                };
                let keys: Vec<_> = first.iter().map(|(k, _)| k.into_owned()).collect();
                prop_assert_eq!(keys[0].as_str(), "Response");
                let id = m.get_bytes("ActionID").filter(|v| !v.is_empty());
                prop_assert_eq!(first.get_bytes("ActionID"), id);
                if id.is_some() {
                    prop_assert_eq!(keys[1].as_str(), "ActionID");
                }
                if s.username().is_none() {
                    prop_assert!(!s.wants_event(1, b"X", b"Event: X\r\n\r\n"));
                }
            }
        }
    }
}
