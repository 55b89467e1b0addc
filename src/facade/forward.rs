//! Running a client's action on a server: the choice of server (F26), the
//! user's write classes against the server's `ListCommands` table (F19),
//! the allow-list's `ami:<user>` rules, the timeout (F25), and the bytes
//! the client gets back, its ActionID restored (F20).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ami_proto::{Account, Accounts, ActionClasses, Permit};
use bytes::Bytes;

use super::config::User;
use super::tap::Tap;
use super::wire;
use crate::actions::allow::{AllowList, Decision};
use crate::ami::{ActionError, ActionResult, Message, Pool, PoolError};
use crate::internal_events::facade::ActionResultKind;

/// How long a synchronous Originate may take beyond its own `Timeout`.
const ORIGINATE_MARGIN: Duration = Duration::from_secs(5);

/// The configured users, by lowercase name.
pub struct Users(HashMap<String, Arc<User>>);

impl Users {
    pub fn new(users: Vec<User>) -> Users {
        Users(
            users
                .into_iter()
                .map(|u| (u.name.to_ascii_lowercase(), Arc::new(u)))
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&Arc<User>> {
        self.0.get(&name.to_ascii_lowercase())
    }
}

impl Accounts for Users {
    fn find(&self, username: &str) -> Option<&Account> {
        self.get(username).map(|u| &u.account)
    }
}

/// What the sessions share.
pub struct Facade {
    pub cfg: super::FacadeConfig,
    pub users: Users,
    pub pool: Arc<Pool>,
    pub tap: Tap,
    /// Every server, in configuration order.
    pub servers: Vec<Arc<str>>,
    classes: Mutex<HashMap<Arc<str>, Arc<ActionClasses>>>,
    /// The allow-list, when some entry names an `ami:<user>`.
    allow: Option<AllowList>,
    /// Lowercase names of the users that entries name as `ami:<name>`.
    narrowed: Vec<String>,
    next_id: AtomicU64,
}

/// A client action, ready to run.
pub struct Request {
    pub user: Arc<User>,
    pub action: Message,
    pub client_id: Option<Bytes>,
    pub bridge_id: String,
}

/// What the client gets back.
pub struct Outcome {
    pub bytes: Vec<u8>,
    pub result: ActionResultKind,
}

impl Facade {
    pub fn new(
        cfg: super::FacadeConfig,
        users: Users,
        pool: Arc<Pool>,
        tap: Tap,
        allow: &[crate::actions::allow::AllowEntry],
    ) -> Result<Facade, String> {
        let narrowed: Vec<String> = allow
            .iter()
            .filter_map(|e| e.user.strip_prefix("ami:"))
            .map(str::to_ascii_lowercase)
            .collect();
        let allow = if narrowed.is_empty() {
            None
        } else {
            Some(AllowList::new(allow)?)
        };
        let servers = pool.server_names().to_vec();
        Ok(Facade {
            cfg,
            users,
            pool,
            tap,
            servers,
            classes: Mutex::new(HashMap::new()),
            allow,
            narrowed,
            next_id: AtomicU64::new(0),
        })
    }

    pub fn users_len(&self) -> usize {
        self.users.0.len()
    }

    /// A bridge-unique, never reused, short ActionID (pitfall 7: Asterisk
    /// truncates long ones).
    pub fn next_id(&self) -> String {
        format!("a2a-f{}", self.next_id.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// Runs `req` and builds the client's answer.
    pub async fn run(&self, req: Request) -> Outcome {
        let multi = req.user.servers.len() > 1;
        let id = req.client_id.as_deref();
        let fail = |msg: String, result| Outcome {
            bytes: wire::error(id, &msg),
            result,
        };
        let server = match self.server_for(&req.user, &req.action) {
            Ok(s) => s,
            Err(msg) => return fail(msg, ActionResultKind::Failed),
        };
        if let Err(msg) = self.permitted(&req, &server).await {
            return fail(msg, ActionResultKind::Denied);
        }
        let timeout = self.timeout_for(&req.action);
        let backend = wire::strip_for_backend(&req.action);
        let res = self
            .pool
            .send_action_as(&server, backend, Some(req.bridge_id.clone()), Some(timeout))
            .await;
        let tag = multi.then_some(&*server);
        match res {
            Ok(r) => Outcome {
                bytes: answer_bytes(&r, id, tag),
                result: ActionResultKind::Answered,
            },
            Err(e) => fail(error_text(&e, &server), ActionResultKind::Failed),
        }
    }

    /// F26: the `Server:` header, else the user's default; never a fallback.
    fn server_for(&self, user: &User, action: &Message) -> Result<Arc<str>, String> {
        let server = match action.get("Server") {
            Some(name) => user
                .servers
                .iter()
                .find(|s| s.eq_ignore_ascii_case(name.trim()))
                .cloned()
                .ok_or_else(|| format!("Unknown server {}", crate::logs::clip(name.trim())))?,
            None => user.servers[0].clone(),
        };
        if !self.tap.backends().connected(&server) {
            return Err(format!("Server {server} not connected"));
        }
        Ok(server)
    }

    /// F19 and the allow-list: `Err` is the client's error message.
    async fn permitted(&self, req: &Request, server: &Arc<str>) -> Result<(), String> {
        let name = req
            .action
            .get("Action")
            .unwrap_or_default()
            .trim()
            .to_string();
        let classes = self.classes(server).await?;
        if classes.permits(&name, req.user.account.write) == Permit::Denied {
            return Err("Permission denied".into());
        }
        let lower = req.user.name.to_ascii_lowercase();
        if let Some(allow) = &self.allow
            && self.narrowed.contains(&lower)
        {
            let who = format!("ami:{}", req.user.name);
            let backend = wire::strip_for_backend(&req.action);
            if let Decision::Deny(why) = allow.check(Some(&who), server, &backend) {
                tracing::debug!(target: "ami2amqp::facade", user = %req.user.name, %why, "action refused by the allow-list");
                return Err("Permission denied".into());
            }
        }
        Ok(())
    }

    /// The server's action → class table, asked once (`ListCommands`).
    async fn classes(&self, server: &Arc<str>) -> Result<Arc<ActionClasses>, String> {
        if let Some(c) = self.lock_classes().get(server) {
            return Ok(c.clone());
        }
        let list = Message::from_pairs([("Action", "ListCommands")]);
        let r = self
            .pool
            .send_action(server, list, Some(Duration::from_secs(10)))
            .await
            .map_err(|e| error_text(&e, server))?;
        let table = Arc::new(ActionClasses::from_list_commands(&r.response));
        if table.is_empty() {
            return Err(format!(
                "Server {server} did not list its actions (ListCommands)"
            ));
        }
        self.lock_classes().insert(server.clone(), table.clone());
        Ok(table)
    }

    fn lock_classes(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Arc<ActionClasses>>> {
        self.classes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// F25: a synchronous Originate may take its own Timeout plus a margin.
    fn timeout_for(&self, action: &Message) -> Duration {
        let base = self.cfg.action_timeout();
        if !is_action(action, "Originate") || is_async(action) {
            return base;
        }
        let ms = action
            .get("Timeout")
            .and_then(|t| t.trim().parse::<u64>().ok())
            .unwrap_or(30_000);
        base.max(Duration::from_millis(ms) + ORIGINATE_MARGIN)
    }
}

/// Whether the action is `name` (any case).
pub fn is_action(m: &Message, name: &str) -> bool {
    m.get("Action")
        .is_some_and(|a| a.trim().eq_ignore_ascii_case(name))
}

/// `Async: yes` (Asterisk's `ast_true`).
pub fn is_async(m: &Message) -> bool {
    m.get("Async").is_some_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "yes" | "true" | "y" | "t" | "1" | "on"
        )
    })
}

/// The response and its list, each with the client's ActionID.
fn answer_bytes(r: &ActionResult, id: Option<&[u8]>, tag: Option<&str>) -> Vec<u8> {
    let mut out = wire::restore(&r.response, id, tag);
    for ev in &r.events {
        out.extend(wire::restore(ev, id, tag));
    }
    if let Some(n) = r.list_too_large {
        let msg = format!("Event list too large ({n} events): raise [actions] max_reply_bytes");
        out.extend(wire::error(id, &msg));
    }
    out
}

/// The client's error message for a failed action (F25, F26, F28).
fn error_text(e: &PoolError, server: &str) -> String {
    match e {
        PoolError::UnknownServer(s) => format!("Unknown server {s}"),
        PoolError::Action(ActionError::Unavailable(_)) => format!("Server {server} not connected"),
        PoolError::Action(ActionError::Timeout(_)) => "Timeout".into(),
        PoolError::Action(ActionError::ConnectionLost(_) | ActionError::Stopped) => {
            format!("Server {server} disconnected")
        }
        PoolError::Action(ActionError::Invalid(why)) => format!("Failed to parse message: {why}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn async_and_action_names() {
        let m = Message::from_pairs([("action", "ORIGINATE"), ("Async", "Yes")]);
        assert!(is_action(&m, "Originate") && is_async(&m));
        let m = Message::from_pairs([("Action", "Originate"), ("Async", "no")]);
        assert!(!is_async(&m));
    }

    #[test]
    fn errors_read_as_the_spec_says() {
        let lost = PoolError::Action(ActionError::ConnectionLost("pbx1".into()));
        assert_eq!(error_text(&lost, "pbx1"), "Server pbx1 disconnected");
        let down = PoolError::Action(ActionError::Unavailable("pbx1".into()));
        assert_eq!(error_text(&down, "pbx1"), "Server pbx1 not connected");
        let t = PoolError::Action(ActionError::Timeout(Duration::from_secs(1)));
        assert_eq!(error_text(&t, "pbx1"), "Timeout");
    }

    #[test]
    fn a_list_answer_keeps_the_client_id_on_every_message() {
        let r = ActionResult {
            response: Message::from_pairs([
                ("Response", "Success"),
                ("ActionID", "a2a-f1"),
                ("EventList", "start"),
            ]),
            events: vec![Message::from_pairs([
                ("Event", "CoreShowChannelsComplete"),
                ("ActionID", "a2a-f1"),
                ("EventList", "Complete"),
            ])],
            list_too_large: None,
        };
        let b = answer_bytes(&r, Some(b"7"), None);
        assert_eq!(
            String::from_utf8(b).unwrap(),
            "Response: Success\r\nActionID: 7\r\nEventList: start\r\n\r\n\
             Event: CoreShowChannelsComplete\r\nActionID: 7\r\nEventList: Complete\r\n\r\n"
        );
    }
}
