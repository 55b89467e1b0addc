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
//! A few actions are never allowed, whatever the list says, because they
//! would take over the bridge's own AMI session: `Login`, `Logoff`,
//! `Challenge` and `Events`.

use regex::Regex;
use serde::Deserialize;

/// The user name of requests without `user_id`.
pub const ANONYMOUS: &str = "anonymous";

/// Actions that belong to the bridge's session management.
pub const RESERVED: &[&str] = &["login", "logoff", "challenge", "events"];

/// One `[[actions.allow]]` entry as written in the config.
#[derive(Debug, Clone, Deserialize)]
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
}

struct Rule {
    user: String,
    actions: Vec<String>,
    servers: Option<Vec<String>>,
    fields: Vec<(String, Regex)>,
}

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
            rules.push(Rule {
                user: e.user.clone(),
                actions: e.actions.iter().map(|a| a.to_ascii_lowercase()).collect(),
                servers: e.servers.clone(),
                fields,
            });
        }
        Ok(AllowList { rules })
    }

    /// Decides whether `user` (None = anonymous) may run `action` (the AMI
    /// message, `Action` included) on `server`.
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
            .to_ascii_lowercase();
        if RESERVED.contains(&name.as_str()) {
            return Decision::Deny(format!(
                "`{name}` is reserved: the bridge manages its own AMI sessions"
            ));
        }
        let mut why = format!(
            "no [[actions.allow]] entry grants user {user:?} action {name:?} on server {server:?}"
        );
        for r in &self.rules {
            let user_ok = r.user == user || (r.user == "*" && user != ANONYMOUS);
            if !user_ok {
                continue;
            }
            if !r.actions.iter().any(|a| a == "*" || *a == name) {
                continue;
            }
            if let Some(s) = &r.servers
                && !s.iter().any(|s| s == server || s == "*")
            {
                continue;
            }
            let mut fields_ok = true;
            for (f, re) in &r.fields {
                match action.get(f) {
                    Some(v) if re.is_match(&v) => {}
                    Some(v) => {
                        fields_ok = false;
                        why = format!(
                            "field {f}={v:?} does not match {:?} allowed for user {user:?}",
                            re.as_str()
                        );
                        break;
                    }
                    None => {
                        fields_ok = false;
                        why = format!(
                            "field {f} is required (must match {:?}) for user {user:?}",
                            re.as_str()
                        );
                        break;
                    }
                }
            }
            if fields_ok {
                return Decision::Allow;
            }
        }
        Decision::Deny(why)
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
        }])
        .err()
        .unwrap();
        assert!(e.contains("#1: fields.Context: invalid regex"), "{e}");
    }
}
