//! The allow-list: who may run which action on which server.
//!
//! This is the reason to move applications off AMI, whose permissions are
//! per login and coarse (`write = originate` lets a user originate anything
//! anywhere). Here each `[[actions.allow]]` entry grants one user a set of
//! actions, optionally only on some servers and only with field values that
//! match regexes (`Originate` only with `Context` matching `^crm-`).
//!
//! The user is the AMQP `user_id` property, which RabbitMQ checks against
//! the user of the publishing connection, so it cannot be forged. A request
//! without `user_id` is the user `anonymous`, which is allowed nothing
//! unless an entry names it. The default is deny: no entry, no action.
//!
//! A field constraint holds for **every** value of that field, whatever
//! the key's case (`Variable` and `variable`, or an array, are several
//! lines that Asterisk all applies). `only_fields` lists the fields a
//! request may carry at all: without it, fields the rule does not name are
//! not checked, so an `Originate` rule constraining `Context` would still
//! let `Application`/`Data` through.
//!
//! Replies go to direct reply-to (`amq.rabbitmq.reply-to…`) only, unless
//! an entry for the user lists `reply_to` patterns (regexes on the queue
//! name).
//!
//! A few actions are never allowed, whatever the list says, because they
//! would take over the bridge's own AMI session: `Login`, `Logoff`,
//! `Challenge` and `Events`.

use regex::Regex;

use crate::logs::clip;
use serde::Deserialize;

/// The user name of requests without `user_id`.
pub const ANONYMOUS: &str = "anonymous";

/// Actions that belong to the bridge's session management.
pub const RESERVED: &[&str] = &["login", "logoff", "challenge", "events"];

/// One `[[actions.allow]]` entry as written in the config.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AllowEntry {
    /// The AMQP user (`user_id`), `anonymous`, or `*` for any user.
    pub user: String,
    /// Action names (case-insensitive), `*` for all.
    pub actions: Vec<String>,
    /// Server names; all servers when absent.
    #[serde(default)]
    pub servers: Option<Vec<String>>,
    /// Field name → regex the field's value must match (the field must be
    /// present).
    #[serde(default)]
    pub fields: std::collections::BTreeMap<String, String>,
    /// The only fields a request may carry (case-insensitive; `Action`
    /// and the names in `fields` are always allowed). All when absent.
    #[serde(default)]
    pub only_fields: Option<Vec<String>>,
    /// Regexes of queue names this user's replies may go to besides direct
    /// reply-to.
    #[serde(default)]
    pub reply_to: Vec<String>,
}

struct Rule {
    user: String,
    actions: Vec<String>,
    servers: Option<Vec<String>>,
    fields: Vec<(String, Regex)>,
    /// Lowercase names; `None` = any field.
    only_fields: Option<Vec<String>>,
    reply_to: Vec<Regex>,
}

impl Rule {
    fn user_matches(&self, user: &str) -> bool {
        self.user == user || (self.user == "*" && user != ANONYMOUS)
    }
}

/// The reply queue prefix of RabbitMQ's direct reply-to.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// The compiled allow-list.
pub struct AllowList {
    rules: Vec<Rule>,
}

/// The outcome of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(String),
}

impl AllowList {
    /// Compiles the entries; errors name the entry (1-based) and field.
    pub fn new(entries: &[AllowEntry]) -> Result<AllowList, String> {
        let mut rules = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let n = i + 1;
            if e.user.trim().is_empty() {
                return Err(format!("[[actions.allow]] #{n}: `user` is empty"));
            }
            if e.actions.is_empty() {
                return Err(format!("[[actions.allow]] #{n}: `actions` is empty"));
            }
            let mut fields = Vec::new();
            for (f, re) in &e.fields {
                // Anchor nothing implicitly: the operator writes ^…$.
                let r = Regex::new(re).map_err(|err| {
                    format!("[[actions.allow]] #{n}: fields.{f}: invalid regex: {err}")
                })?;
                fields.push((f.clone(), r));
            }
            let mut reply_to = Vec::new();
            for re in &e.reply_to {
                reply_to.push(Regex::new(re).map_err(|err| {
                    format!("[[actions.allow]] #{n}: reply_to {re:?}: invalid regex: {err}")
                })?);
            }
            let only_fields = e.only_fields.as_ref().map(|v| {
                v.iter()
                    .chain(e.fields.keys())
                    .map(|f| f.to_ascii_lowercase())
                    .collect()
            });
            rules.push(Rule {
                user: e.user.clone(),
                actions: e.actions.iter().map(|a| a.to_ascii_lowercase()).collect(),
                servers: e.servers.clone(),
                fields,
                only_fields,
                reply_to,
            });
        }
        Ok(AllowList { rules })
    }

    /// Decides whether `user` (None = anonymous) may run `action` (the AMI
    /// message, `Action` included, as `request::parse` built it) on
    /// `server`.
    pub fn check(
        &self,
        user: Option<&str>,
        server: &str,
        action: &crate::ami::Message,
    ) -> Decision {
        let user = user.filter(|u| !u.is_empty()).unwrap_or(ANONYMOUS);
        let name = action
            .get("Action")
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if RESERVED.contains(&name.as_str()) {
            return Decision::Deny(format!(
                "`{name}` is reserved: the bridge manages its own AMI sessions"
            ));
        }
        let mut why = format!(
            "no [[actions.allow]] entry grants user \"{}\" action \"{}\" on server \"{}\"",
            clip(user),
            clip(&name),
            clip(server)
        );
        for r in &self.rules {
            if !r.user_matches(user) || !r.actions.iter().any(|a| a == "*" || *a == name) {
                continue;
            }
            if let Some(s) = &r.servers
                && !s.iter().any(|s| s == server || s == "*")
            {
                continue;
            }
            match r.fields_ok(action) {
                Ok(()) => return Decision::Allow,
                Err(e) => why = format!("{e} for user \"{}\"", clip(user)),
            }
        }
        Decision::Deny(why)
    }

    /// Whether `user`'s replies may go to `queue`: direct reply-to always,
    /// other queues only when an entry for the user has a matching
    /// `reply_to` pattern.
    pub fn reply_to_ok(&self, user: Option<&str>, queue: &str) -> bool {
        if queue == DIRECT_REPLY_TO || queue.starts_with("amq.rabbitmq.reply-to.") {
            return true;
        }
        let user = user.filter(|u| !u.is_empty()).unwrap_or(ANONYMOUS);
        self.rules
            .iter()
            .filter(|r| r.user_matches(user))
            .any(|r| r.reply_to.iter().any(|re| re.is_match(queue)))
    }

    /// The action names some entry grants by name (lowercase).
    pub fn named_actions(&self) -> impl Iterator<Item = &str> {
        self.rules
            .iter()
            .flat_map(|r| r.actions.iter().map(String::as_str))
            .filter(|a| *a != "*")
    }
}

impl Rule {
    /// Every constrained field present with every value matching; with
    /// `only_fields`, no other field.
    fn fields_ok(&self, action: &crate::ami::Message) -> Result<(), String> {
        for (f, re) in &self.fields {
            let mut any = false;
            for v in action.get_all(f) {
                any = true;
                if !re.is_match(&v) {
                    return Err(format!(
                        "field {} = \"{}\" does not match {:?}",
                        clip(f),
                        clip(&v),
                        re.as_str()
                    ));
                }
            }
            if !any {
                return Err(format!(
                    "field {} is required (must match {:?})",
                    clip(f),
                    re.as_str()
                ));
            }
        }
        if let Some(only) = &self.only_fields {
            for (k, _) in action.iter() {
                let k = k.to_ascii_lowercase();
                if k != "action" && k != "actionid" && !only.contains(&k) {
                    return Err(format!(
                        "field {} is not among the fields allowed (only_fields)",
                        clip(&k)
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ami::Message;

    fn list() -> AllowList {
        let entries: Vec<AllowEntry> =
            toml::from_str::<std::collections::BTreeMap<String, Vec<AllowEntry>>>(
                r#"
allow = [
  { user = "crm", actions = ["Originate"], servers = ["pbx1"], fields = { Context = "^crm-" } },
  { user = "crm", actions = ["Ping", "CoreShowChannels"] },
  { user = "ops", actions = ["*"] },
  { user = "anonymous", actions = ["Ping"] },
]
"#,
            )
            .unwrap()
            .remove("allow")
            .unwrap();
        AllowList::new(&entries).unwrap()
    }

    fn a(pairs: &[(&str, &str)]) -> Message {
        Message::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn default_deny_and_grants() {
        let l = list();
        assert_eq!(
            l.check(Some("crm"), "pbx1", &a(&[("Action", "ping")])),
            Decision::Allow
        );
        assert_eq!(
            l.check(
                Some("crm"),
                "pbx1",
                &a(&[("Action", "Originate"), ("Context", "crm-out")])
            ),
            Decision::Allow
        );
        // wrong context, missing context, wrong server, other action
        assert!(matches!(
            l.check(
                Some("crm"),
                "pbx1",
                &a(&[("Action", "Originate"), ("Context", "default")])
            ),
            Decision::Deny(_)
        ));
        assert!(matches!(
            l.check(Some("crm"), "pbx1", &a(&[("Action", "Originate")])),
            Decision::Deny(_)
        ));
        assert!(matches!(
            l.check(
                Some("crm"),
                "pbx2",
                &a(&[("Action", "Originate"), ("Context", "crm-out")])
            ),
            Decision::Deny(_)
        ));
        assert!(matches!(
            l.check(Some("crm"), "pbx1", &a(&[("Action", "Hangup")])),
            Decision::Deny(_)
        ));
        // unknown user
        assert!(matches!(
            l.check(Some("mallory"), "pbx1", &a(&[("Action", "Ping")])),
            Decision::Deny(_)
        ));
        // anonymous
        assert_eq!(
            l.check(None, "pbx1", &a(&[("Action", "Ping")])),
            Decision::Allow
        );
        assert!(matches!(
            l.check(None, "pbx1", &a(&[("Action", "Status")])),
            Decision::Deny(_)
        ));
        // wildcard actions
        assert_eq!(
            l.check(Some("ops"), "pbx9", &a(&[("Action", "Hangup")])),
            Decision::Allow
        );
        // reserved, even for ops
        assert!(matches!(
            l.check(Some("ops"), "pbx1", &a(&[("Action", "Logoff")])),
            Decision::Deny(_)
        ));
    }

    #[test]
    fn empty_list_denies_everything() {
        let l = AllowList::new(&[]).unwrap();
        assert!(matches!(
            l.check(Some("ops"), "pbx1", &a(&[("Action", "Ping")])),
            Decision::Deny(_)
        ));
    }

    #[test]
    fn bad_regex_is_a_config_error() {
        let e = AllowList::new(&[AllowEntry {
            user: "x".into(),
            actions: vec!["Ping".into()],
            servers: None,
            fields: [("Context".to_string(), "(".to_string())]
                .into_iter()
                .collect(),
            only_fields: None,
            reply_to: Vec::new(),
        }])
        .err()
        .unwrap();
        assert!(e.contains("#1: fields.Context: invalid regex"), "{e}");
    }

    fn list_of(toml_text: &str) -> AllowList {
        let entries: Vec<AllowEntry> =
            toml::from_str::<std::collections::BTreeMap<String, Vec<AllowEntry>>>(toml_text)
                .unwrap()
                .remove("allow")
                .unwrap();
        AllowList::new(&entries).unwrap()
    }

    fn req(body: &str) -> Message {
        crate::actions::request::parse(body.as_bytes())
            .unwrap()
            .message
    }

    #[test]
    fn every_value_of_a_constrained_field_must_match_whatever_its_case() {
        let l = list_of(
            r#"allow = [{ user = "crm", actions = ["Originate"], fields = { Context = "^crm-", Variable = "^CRMID=[0-9]+$" } }]"#,
        );
        let ok =
            req(r#"{"Action":"Originate","Context":"crm-out","Variable":["CRMID=1","CRMID=2"]}"#);
        assert_eq!(l.check(Some("crm"), "p", &ok), Decision::Allow);
        for body in [
            r#"{"Action":"Originate","Context":"crm-out","Variable":["CRMID=42","__SIPADDHEADER=x"]}"#,
            r#"{"Action":"Originate","Context":"crm-out","Variable":"CRMID=42","variable":"__SIPADDHEADER=x"}"#,
            r#"{"Action":"Originate","Context":"crm-out","context":"default","Variable":"CRMID=1"}"#,
            r#"{"Action":"Originate","CONTEXT":"default","Variable":"CRMID=1"}"#,
        ] {
            assert!(
                matches!(l.check(Some("crm"), "p", &req(body)), Decision::Deny(_)),
                "{body}"
            );
        }
    }

    #[test]
    fn only_fields_refuses_unnamed_fields() {
        let l = list_of(
            r#"allow = [{ user = "crm", actions = ["Originate"], fields = { Context = "^crm-out$", Channel = "^PJSIP/[0-9]+$" }, only_fields = ["Exten", "Priority", "Async", "CallerID"] }]"#,
        );
        let ok = req(
            r#"{"Action":"Originate","Channel":"PJSIP/100","context":"crm-out","Exten":"200","priority":1,"Async":true,"ActionID":"x"}"#,
        );
        assert_eq!(l.check(Some("crm"), "p", &ok), Decision::Allow);
        let bad = req(
            r#"{"Action":"Originate","Channel":"PJSIP/100","Context":"crm-out","Application":"Dial","Data":"PJSIP/0900@trunk"}"#,
        );
        match l.check(Some("crm"), "p", &bad) {
            Decision::Deny(why) => assert!(why.contains("only_fields"), "{why}"),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn reserved_actions_stay_refused_whatever_the_spelling() {
        let l = list();
        for body in [
            r#"{"Action":" Logoff"}"#,
            r#"{"Action":"LOGOFF "}"#,
            r#"{"Action":"events"}"#,
        ] {
            assert!(
                matches!(l.check(Some("ops"), "p", &req(body)), Decision::Deny(_)),
                "{body}"
            );
        }
    }

    #[test]
    fn replies_go_to_direct_reply_to_or_allowed_patterns_only() {
        let l = list_of(
            r#"allow = [
  { user = "crm", actions = ["Ping"], reply_to = ['^crm\.replies\.[a-z0-9-]+$'] },
  { user = "ops", actions = ["*"] },
]"#,
        );
        for u in [Some("crm"), Some("ops"), None, Some("nobody")] {
            assert!(l.reply_to_ok(u, "amq.rabbitmq.reply-to"));
            assert!(l.reply_to_ok(u, "amq.rabbitmq.reply-to.g1h2AA5yZXBseUAy.abc"));
            assert!(!l.reply_to_ok(u, "billing"));
            assert!(!l.reply_to_ok(u, "amq.rabbitmq.reply-tox"));
        }
        assert!(l.reply_to_ok(Some("crm"), "crm.replies.web-1"));
        assert!(!l.reply_to_ok(Some("ops"), "crm.replies.web-1"));
        assert!(!l.reply_to_ok(None, "crm.replies.web-1"));
    }

    #[test]
    fn denial_reasons_are_clipped() {
        let l = list();
        let huge = format!("x{}\n", "y".repeat(1_000_000));
        let m = Message::from_pairs([("Action", "Originate"), ("Context", huge.as_str())]);
        match l.check(Some("crm"), "pbx1", &m) {
            Decision::Deny(why) => {
                assert!(why.len() < 1000, "{} bytes", why.len());
                assert!(!why.contains('\n'));
            }
            d => panic!("{d:?}"),
        }
    }

    /// The allow-list examples of docs/actions.md, docs/config.md and
    /// contrib/ami2amqp.toml load, and their Originate grant refuses the
    /// fields it does not name (`Application`/`Data`).
    #[test]
    fn documented_originate_examples_are_safe() {
        let docs = [
            include_str!("../../docs/actions.md"),
            include_str!("../../docs/config.md"),
            include_str!("../../contrib/ami2amqp.toml"),
        ];
        for (n, doc) in docs.iter().enumerate() {
            // The first block of `[[actions.allow]]` lines (commented out in
            // contrib), up to the next blank line.
            let lines: Vec<&str> = doc
                .lines()
                .map(|l| {
                    if n == 2 {
                        l.strip_prefix("# ").unwrap_or(l)
                    } else {
                        l
                    }
                })
                .skip_while(|l| !l.starts_with("[[actions.allow]]"))
                .take_while(|l| !l.trim().is_empty())
                .collect();
            let text = lines.join("\n");
            let parsed: toml::Table =
                toml::from_str(&text).unwrap_or_else(|e| panic!("doc {n}: {e}\n{text}"));
            let entries: Vec<AllowEntry> = parsed["actions"]["allow"]
                .clone()
                .try_into()
                .unwrap_or_else(|e| panic!("doc {n}: {e}"));
            let l = AllowList::new(&entries).unwrap();
            let ok = req(
                r#"{"Action":"Originate","Channel":"PJSIP/100","Context":"crm-out","Exten":"0123456","Priority":1,"Async":true}"#,
            );
            assert_eq!(
                l.check(Some("crm"), "pbx1", &ok),
                Decision::Allow,
                "doc {n}"
            );
            for extra in [
                r#""Application":"Dial","Data":"PJSIP/0900@trunk""#,
                r#""Channel":"Local/0900@from-internal""#,
                r#""Variable":"__SIPADDHEADER=X""#,
            ] {
                let body = format!(
                    r#"{{"Action":"Originate","Channel":"PJSIP/100","Context":"crm-out","Exten":"0123456","Priority":1,{extra}}}"#
                );
                assert!(
                    matches!(l.check(Some("crm"), "pbx1", &req(&body)), Decision::Deny(_)),
                    "doc {n}: {body}"
                );
            }
        }
    }
}
