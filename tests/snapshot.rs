//! Snapshots after (re)connect, end to end (docs/snapshots.md): the bridge
//! binary against a replayed real trace with recorded answers, and against
//! a scripted AMI server whose channels change while the snapshot is taken,
//! with a Python (pika) consumer that rebuilds the channel list across
//! forced reconnects and must end with the server's truth.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::broker::shared_amqp_url;
use common::procs::{
    BridgeSetup, Proc, body, replay_on, repo, sink, trace, with_config, without_status,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader as TokioBufReader};
use tokio::net::{TcpListener, TcpStream};

/// The replay of calls_small.ami (at 300 events/s, so that the snapshot's
/// answers arrive among the events) answering actions from the recorded
/// session `sent` (`actions.sent`, `snapshot_lists.sent`).
fn replay_with_answers(listen: &str, sent: &str) -> (Proc, String) {
    let sent = trace(sent);
    let small = trace("calls_small.ami");
    replay_on(
        listen,
        &[
            "--username",
            "bridge",
            "--secret",
            "bridgepass",
            "--rate",
            "300",
            "--responses",
            sent.to_str().unwrap(),
            small.to_str().unwrap(),
        ],
    )
}

/// The `Channel:` of every `CoreShowChannel` that answered the recorded
/// `CoreShowChannels` in actions.ami, in order: what the replay answers.
fn recorded_channels() -> Vec<String> {
    let text = std::fs::read_to_string(trace("actions.ami")).unwrap();
    text.split("\r\n\r\n")
        .filter(|m| {
            m.contains("Event: CoreShowChannel\r\n") && m.contains("ActionID: act-coreshowchannels")
        })
        .filter_map(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("Channel: ").map(str::to_string))
        })
        .collect()
}

/// The value of a sample line `name{labels} value` of a /metrics page.
fn sample(page: &str, name: &str, labels: &str) -> Option<f64> {
    let head = format!("{name}{{{labels}}} ");
    page.lines()
        .find_map(|l| l.strip_prefix(&head))
        .and_then(|v| v.trim().parse().ok())
}

/// One snapshot's messages as they arrived, checked for framing and seq.
struct Seen {
    id: String,
    end: serde_json::Value,
    items: Vec<serde_json::Value>,
    keys: Vec<String>,
}

/// Checks the stream of one server (status messages left out): every
/// event and item takes the next seq; each marker carries the seq of the
/// last message before it; each snapshot's items lie between its markers
/// and carry its id. Returns the snapshots and the live events' keys.
fn check_stream(server: &str, got: &[lapin::message::Delivery]) -> (Vec<Seen>, Vec<String>) {
    let mut last = 0u64;
    let mut open: Option<Seen> = None;
    let mut done = Vec::new();
    let mut live = Vec::new();
    for (i, d) in got.iter().enumerate() {
        let key = d.routing_key.as_str().to_string();
        let b = body(d);
        let seq = b["seq"].as_u64().unwrap();
        let fields = &b["fields"];
        if key == format!("{server}.snapshot.start") {
            assert!(open.is_none(), "message {i}: a start inside a snapshot");
            assert_eq!(seq, last, "message {i}: the start carries the last seq");
            open = Some(Seen {
                id: fields["SnapshotId"].as_str().unwrap().to_string(),
                end: serde_json::Value::Null,
                items: Vec::new(),
                keys: Vec::new(),
            });
        } else if key == format!("{server}.snapshot.end") {
            let mut s = open.take().expect("an end without a start");
            assert_eq!(seq, last, "message {i}: the end carries the last seq");
            assert_eq!(fields["SnapshotId"], s.id.as_str(), "message {i}");
            assert_eq!(
                d.properties.message_id().as_ref().unwrap().as_str(),
                format!("{}:SnapshotEnd", s.id)
            );
            s.end = fields.clone();
            done.push(s);
        } else {
            assert_eq!(seq, last + 1, "message {i} ({key}): the next seq");
            last = seq;
            if key.starts_with(&format!("{server}.snapshot.")) {
                let s = open.as_mut().expect("an item outside a snapshot");
                assert_eq!(fields["SnapshotId"], s.id.as_str(), "message {i}");
                assert!(fields.get("ActionID").is_none(), "our ActionID is removed");
                assert_eq!(
                    key,
                    format!(
                        "{server}.snapshot.{}",
                        fields["SnapshotKind"].as_str().unwrap()
                    )
                );
                s.keys.push(key);
                s.items.push(fields.clone());
            } else {
                live.push(key);
            }
        }
    }
    assert!(open.is_none(), "a snapshot without its end");
    (done, live)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_snapshot_is_framed_in_order_with_live_events_and_again_after_a_reconnect() {
    let url = shared_amqp_url();
    let (replay, addr) = replay_with_answers("127.0.0.1:0", "actions.sent");
    let setup = BridgeSetup::new(&addr, &url, "");
    setup.with_snapshots();
    let expected = setup.dry_run(&trace("calls_small.ami"));
    let live_keys: Vec<String> = expected
        .iter()
        .map(|e| e["routing_key"].as_str().unwrap().to_string())
        .collect();
    let channels = recorded_channels();
    assert_eq!(channels.len(), 8, "the recorded CoreShowChannels answer");
    // 5 QueueStatus items (2 QueueParams, 2 QueueMember, 1 QueueEntry).
    let items = channels.len() + 5;
    let mut events = sink(&url, &setup.exchange, &format!("{}.#", setup.server)).await;
    let bridge = setup.start();
    let n = live_keys.len() + items + 2 + 1;
    let got = events.collect(n, Duration::from_secs(20)).await;
    let got = without_status(got);
    let (snaps, live) = check_stream(&setup.server, &got);
    assert_eq!(snaps.len(), 1, "{}", setup.log());
    let s = &snaps[0];
    assert_eq!(live, live_keys, "the live events, as the dry run says");
    assert!(
        s.id.starts_with(&format!("{}-", setup.server)),
        "snapshot id {}",
        s.id
    );
    assert_eq!(s.end["Complete"], "true");
    assert_eq!(s.end["Items"], items.to_string().as_str());
    // The replay has no recorded answer for these: Asterisk's "unknown
    // command" refuses them, and the snapshot goes on without them.
    assert_eq!(s.end["Refused"], "bridges,devices,extensions,presence");
    let got_channels: Vec<&str> = s
        .items
        .iter()
        .filter(|f| f["SnapshotKind"] == "channels")
        .map(|f| f["Channel"].as_str().unwrap())
        .collect();
    assert_eq!(got_channels, channels);
    let queue_events: Vec<&str> = s
        .items
        .iter()
        .filter(|f| f["SnapshotKind"] == "queues")
        .map(|f| f["Event"].as_str().unwrap())
        .collect();
    assert_eq!(
        queue_events,
        [
            "QueueParams",
            "QueueMember",
            "QueueParams",
            "QueueMember",
            "QueueEntry"
        ]
    );
    let (_, metrics) = setup.http_get("/metrics").unwrap();
    let srv = &setup.server;
    assert_eq!(
        sample(
            &metrics,
            "snapshots_total",
            &format!("server=\"{srv}\",result=\"complete\"")
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "snapshot_items_total",
            &format!("server=\"{srv}\",kind=\"channels\"")
        ),
        Some(8.0),
        "{metrics}"
    );

    // A forced reconnect: Asterisk goes away and comes back on the same
    // address. A new snapshot follows the new connect, with a new id, and
    // the seq goes on from where it was.
    let last_before = got
        .iter()
        .map(|d| body(d)["seq"].as_u64().unwrap())
        .max()
        .unwrap();
    drop(replay);
    let (_replay2, addr2) = replay_with_answers(&addr, "actions.sent");
    assert_eq!(addr2, addr);
    let again = events.collect(n + 1, Duration::from_secs(20)).await;
    let again = without_status(again);
    let start = again
        .iter()
        .position(|d| d.routing_key.as_str().ends_with(".snapshot.start"))
        .expect("a second snapshot");
    let b = body(&again[start]);
    assert!(b["seq"].as_u64().unwrap() >= last_before);
    assert_ne!(
        b["fields"]["SnapshotId"],
        s.id.as_str(),
        "a new snapshot id"
    );
    let end = again
        .iter()
        .find(|d| d.routing_key.as_str().ends_with(".snapshot.end"))
        .expect("its end");
    assert_eq!(body(end)["fields"]["Complete"], "true");
    // Refusals are logged once per server and kind, not per snapshot.
    let log = setup.log();
    assert_eq!(
        log.matches("Asterisk refused a snapshot action").count(),
        4,
        "{log}"
    );
    let (_, metrics) = setup.http_get("/metrics").unwrap();
    assert_eq!(
        sample(
            &metrics,
            "snapshot_refused_total",
            &format!("server=\"{srv}\",kind=\"bridges\"")
        ),
        Some(2.0),
        "{metrics}"
    );
    drop(bridge);
}

/// Every kind answered as a real Asterisk (22.9) answers it: the replay
/// uses the recorded `snapshot_lists` session, where all six list actions
/// succeeded (with a bridge up, a queued caller, and empty extension and
/// presence lists, the lab dialplan having no hints).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_is_published_from_real_answers() {
    let url = shared_amqp_url();
    let (_replay, addr) = replay_with_answers("127.0.0.1:0", "snapshot_lists.sent");
    let setup = BridgeSetup::new(&addr, &url, "");
    setup.with_snapshots();
    let live = setup.dry_run(&trace("calls_small.ami")).len();
    // What the recording holds, per kind (its list items, read here
    // without the bridge's code).
    let recorded = std::fs::read_to_string(trace("snapshot_lists.ami")).unwrap();
    let count = |action: &str| {
        recorded
            .split("\r\n\r\n")
            .filter(|m| m.starts_with("Event: ") && !m.contains("EventList: Complete"))
            .filter(|m| m.lines().any(|l| l == format!("ActionID: snap-{action}")))
            .count()
    };
    let want: BTreeMap<&str, usize> = [
        ("channels", count("coreshowchannels")),
        ("bridges", count("bridgelist")),
        ("queues", count("queuestatus")),
        ("devices", count("devicestatelist")),
        ("extensions", count("extensionstatelist")),
        ("presence", count("presencestatelist")),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .collect();
    assert_eq!(
        want.values().copied().collect::<Vec<_>>(),
        [1, 10, 5, 5],
        "bridges, channels, devices, queues in the recording"
    );
    let items: usize = want.values().sum();
    let mut events = sink(&url, &setup.exchange, &format!("{}.#", setup.server)).await;
    let bridge = setup.start();
    let got = events
        .collect(live + items + 2 + 1, Duration::from_secs(20))
        .await;
    let got = without_status(got);
    let (snaps, _) = check_stream(&setup.server, &got);
    assert_eq!(snaps.len(), 1, "{}", setup.log());
    let s = &snaps[0];
    assert_eq!(s.end["Complete"], "true");
    assert_eq!(s.end["Refused"], "", "a real Asterisk refused none");
    assert_eq!(s.end["Items"], items.to_string().as_str());
    let mut per_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for f in &s.items {
        *per_kind
            .entry(f["SnapshotKind"].as_str().unwrap())
            .or_default() += 1;
    }
    assert_eq!(per_kind, want);
    let names = |kind: &str| -> BTreeSet<&str> {
        s.items
            .iter()
            .filter(|f| f["SnapshotKind"] == kind)
            .map(|f| f["Event"].as_str().unwrap())
            .collect()
    };
    assert_eq!(names("bridges"), BTreeSet::from(["BridgeListItem"]));
    assert_eq!(names("devices"), BTreeSet::from(["DeviceStateChange"]));
    assert!(!setup.log().contains("Asterisk refused a snapshot action"));
    drop(bridge);
}

#[test]
fn check_names_an_unknown_snapshot_kind_and_accepts_none() {
    let setup = BridgeSetup::new("127.0.0.1:5038", &shared_amqp_url(), "");
    let (ok, _, err) = with_config("check", &setup.config);
    assert!(ok, "snapshot = [] is valid: {err}");
    let text = std::fs::read_to_string(&setup.config).unwrap();
    let bad = text.replace("snapshot = []", "snapshot = [\"channels\", \"calls\"]");
    assert_ne!(bad, text);
    std::fs::write(&setup.config, bad).unwrap();
    let (ok, out, err) = with_config("check", &setup.config);
    assert!(!ok);
    let err = format!("{out}{err}");
    let line = err.lines().next().unwrap_or_default();
    assert!(
        line.contains("ami2amqp.toml:")
            && line.contains(
                "unknown snapshot kind \"calls\": the kinds are \"channels\", \"bridges\", \"queues\", \"devices\", \"extensions\", \"presence\""
            ),
        "{err}"
    );
}

/// The scripted server's state: channel name → state, as Asterisk would
/// know it.
type Truth = Arc<Mutex<BTreeMap<String, String>>>;

fn channel_event(event: &str, name: &str, state: &str) -> String {
    let uid = name.trim_start_matches("PJSIP/");
    format!(
        "Event: {event}\r\nPrivilege: call,all\r\nChannel: {name}\r\nChannelState: 6\r\n\
         ChannelStateDesc: {state}\r\nCallerIDNum: 100\r\nUniqueid: {uid}\r\nLinkedid: {uid}\r\n\r\n"
    )
}

/// A `CoreShowChannel` list item, with the fields of a real one
/// (tests/traces/actions.ami).
fn list_item(id: &str, name: &str, state: &str) -> String {
    let uid = name.trim_start_matches("PJSIP/");
    format!(
        "Event: CoreShowChannel\r\nActionID: {id}\r\nChannel: {name}\r\nChannelState: 6\r\n\
         ChannelStateDesc: {state}\r\nCallerIDNum: 100\r\nCallerIDName: <unknown>\r\n\
         ConnectedLineNum: <unknown>\r\nConnectedLineName: <unknown>\r\nLanguage: en\r\n\
         AccountCode: \r\nContext: test\r\nExten: 100\r\nPriority: 1\r\nUniqueid: {uid}\r\n\
         Linkedid: {uid}\r\nApplication: Wait\r\nApplicationData: 600\r\nDuration: 00:00:05\r\n\
         BridgeId: \r\n\r\n"
    )
}

/// Reads one action's `Key: Value` lines up to the blank line.
async fn read_action(
    r: &mut TokioBufReader<tokio::net::tcp::OwnedReadHalf>,
) -> Option<BTreeMap<String, String>> {
    let mut fields = BTreeMap::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            if fields.is_empty() {
                continue;
            }
            return Some(fields);
        }
        if let Some((k, v)) = line.split_once(':') {
            fields.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
}

/// What the scripted server does to its channels while it answers
/// `CoreShowChannels` in event session `n`, between the list items.
async fn scripted_session(n: usize, sock: TcpStream, truth: Truth) {
    let (r, mut w) = sock.into_split();
    let mut r = TokioBufReader::new(r);
    let _ = w.write_all(b"Asterisk Call Manager/9.0.0\r\n").await;
    let mut events_session = false;
    let set = |name: &str, state: Option<&str>| {
        let mut t = truth.lock().unwrap();
        match state {
            Some(s) => t.insert(name.to_string(), s.to_string()),
            None => t.remove(name),
        };
    };
    while let Some(a) = read_action(&mut r).await {
        let action = a.get("action").cloned().unwrap_or_default().to_lowercase();
        let id = a.get("actionid").cloned().unwrap_or_default();
        let mut out = String::new();
        match action.as_str() {
            "challenge" => {
                out =
                    format!("Response: Success\r\nActionID: {id}\r\nChallenge: 123456789\r\n\r\n");
            }
            "login" => {
                events_session = a.get("events").is_none_or(|e| e != "off");
                out = format!(
                    "Response: Success\r\nActionID: {id}\r\nMessage: Authentication accepted\r\n\r\n"
                );
            }
            "ping" => {
                out = format!("Response: Success\r\nActionID: {id}\r\nPing: Pong\r\n\r\n");
            }
            "coreshowchannels" if events_session => {
                // The list is built when the action runs; the channels
                // change while its items are written, and those events
                // are written between the items (as Asterisk's other
                // threads do).
                let listed: Vec<(String, String)> = truth
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                out += &format!(
                    "Response: Success\r\nActionID: {id}\r\nEventList: start\r\nMessage: Channels will follow\r\n\r\n"
                );
                for (i, (name, state)) in listed.iter().enumerate() {
                    out += &list_item(&id, name, state);
                    if n == 1 && i == 0 {
                        // Connection lost in the middle of the snapshot.
                        let _ = w.write_all(out.as_bytes()).await;
                        return;
                    }
                    if i == 0 {
                        let (gone, new) = match n {
                            0 => ("PJSIP/b", "PJSIP/d"),
                            _ => ("PJSIP/c", "PJSIP/g"),
                        };
                        set(new, Some("Up"));
                        out += &channel_event("Newchannel", new, "Up");
                        set(gone, None);
                        out += &channel_event("Hangup", gone, "Up");
                    }
                }
                out += &format!(
                    "Event: CoreShowChannelsComplete\r\nActionID: {id}\r\nEventList: Complete\r\nListItems: {}\r\n\r\n",
                    listed.len()
                );
            }
            "presencestatelist" if events_session => {
                // The last action of the snapshot (refused like the
                // others but channels), then what happens after it.
                out = format!(
                    "Response: Error\r\nActionID: {id}\r\nMessage: Permission denied\r\n\r\n"
                );
                let _ = w.write_all(out.as_bytes()).await;
                out.clear();
                match n {
                    0 => {
                        set("PJSIP/e", Some("Up"));
                        out += &channel_event("Newchannel", "PJSIP/e", "Up");
                        let _ = w.write_all(out.as_bytes()).await;
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        // Asterisk goes away; what happens meanwhile is
                        // never sent to the bridge.
                        drop(w);
                        set("PJSIP/a", None);
                        set("PJSIP/f", Some("Up"));
                        return;
                    }
                    _ => {
                        out += &channel_event("Newstate", "PJSIP/d", "Up");
                        out += "Event: UserEvent\r\nPrivilege: user,all\r\nUserEvent: Done\r\n\r\n";
                    }
                }
            }
            "logoff" => {
                let _ = w
                    .write_all(format!("Response: Goodbye\r\nActionID: {id}\r\n\r\n").as_bytes())
                    .await;
                return;
            }
            _ => {
                out = format!(
                    "Response: Error\r\nActionID: {id}\r\nMessage: Permission denied\r\n\r\n"
                );
            }
        }
        if w.write_all(out.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The scripted server: event sessions are numbered 0, 1, 2 …
async fn scripted_server(listener: TcpListener, truth: Truth) {
    let mut n = 0usize;
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            return;
        };
        // The bridge's event connection logs in first; action connections
        // are off in this test.
        tokio::spawn(scripted_session(n, sock, truth.clone()));
        n += 1;
    }
}

/// A server whose `CoreShowChannels` list never ends: after the deadline
/// (`action_timeout_s` x the kinds asked) the end marker says incomplete,
/// and an item that still comes later is dropped, not published as a
/// live event.
async fn never_ending_list(listener: TcpListener) {
    let Ok((sock, _)) = listener.accept().await else {
        return;
    };
    let (r, mut w) = sock.into_split();
    let mut r = TokioBufReader::new(r);
    let _ = w.write_all(b"Asterisk Call Manager/9.0.0\r\n").await;
    while let Some(a) = read_action(&mut r).await {
        let action = a.get("action").cloned().unwrap_or_default().to_lowercase();
        let id = a.get("actionid").cloned().unwrap_or_default();
        let out = match action.as_str() {
            "challenge" => {
                format!("Response: Success\r\nActionID: {id}\r\nChallenge: 123456789\r\n\r\n")
            }
            "login" => format!(
                "Response: Success\r\nActionID: {id}\r\nMessage: Authentication accepted\r\n\r\n"
            ),
            "coreshowchannels" => {
                let head = format!(
                    "Response: Success\r\nActionID: {id}\r\nEventList: start\r\nMessage: Channels will follow\r\n\r\n{}",
                    list_item(&id, "PJSIP/a", "Up")
                );
                let _ = w.write_all(head.as_bytes()).await;
                tokio::time::sleep(Duration::from_millis(2500)).await;
                format!(
                    "{}Event: UserEvent\r\nPrivilege: user,all\r\nUserEvent: Done\r\n\r\n",
                    list_item(&id, "PJSIP/late", "Up")
                )
            }
            _ => format!("Response: Success\r\nActionID: {id}\r\n\r\n"),
        };
        if w.write_all(out.as_bytes()).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_that_never_ends_ends_the_snapshot_incomplete_at_its_deadline() {
    let url = shared_amqp_url();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let setup = BridgeSetup::new(&addr, &url, "");
    let text = std::fs::read_to_string(&setup.config).unwrap();
    std::fs::write(
        &setup.config,
        text.replace(
            "snapshot = []\n",
            "snapshot = [\"channels\"]\naction_timeout_s = 1\n",
        )
        .replace("action_connections = 1\n", "action_connections = 0\n"),
    )
    .unwrap();
    let mut events = sink(&url, &setup.exchange, &format!("{}.#", setup.server)).await;
    tokio::spawn(never_ending_list(listener));
    let bridge = setup.start();
    let mut got = Vec::new();
    while let Some(d) = events.collect(1, Duration::from_secs(10)).await.pop() {
        let done = d.routing_key.as_str().ends_with(".user.Done");
        got.push(d);
        if done {
            break;
        }
    }
    let keys: Vec<&str> = got
        .iter()
        .map(|d| d.routing_key.as_str())
        .filter(|k| !k.ends_with(".bridge.status"))
        .collect();
    let srv = &setup.server;
    assert_eq!(
        keys,
        [
            format!("{srv}.snapshot.start"),
            format!("{srv}.snapshot.channels"),
            format!("{srv}.snapshot.end"),
            format!("{srv}.user.Done"),
        ],
        "the late item is not published: {}",
        setup.log()
    );
    let end = body(
        got.iter()
            .find(|d| d.routing_key.as_str().ends_with(".snapshot.end"))
            .unwrap(),
    );
    assert_eq!(end["fields"]["Complete"], "false");
    assert_eq!(end["fields"]["Items"], "1");
    assert_eq!(
        end["fields"]["Reason"],
        "the snapshot's lists did not end in time"
    );
    let (_, metrics) = setup.http_get("/metrics").unwrap();
    assert_eq!(
        sample(
            &metrics,
            "snapshots_total",
            &format!("server=\"{srv}\",result=\"incomplete\"")
        ),
        Some(1.0),
        "{metrics}"
    );
    drop(bridge);
}

fn python() -> PathBuf {
    let dir = std::env::var_os("SNAPSHOT_CLIENTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/snapshot-clients"));
    let py = dir.join("venv/bin/python");
    let ok = Command::new(&py)
        .args(["-c", "import pika"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} with pika not found: run `make snapshot-clients` (scripts/ensure-snapshot-clients.sh)",
        py.display()
    );
    py
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pika_consumer_keeps_the_channel_list_right_across_reconnects() {
    let url = shared_amqp_url();
    let truth: Truth = Arc::new(Mutex::new(
        ["PJSIP/a", "PJSIP/b", "PJSIP/c"]
            .iter()
            .map(|n| (n.to_string(), "Up".to_string()))
            .collect(),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let setup = BridgeSetup::new(&addr, &url, "");
    setup.with_snapshots();
    let text = std::fs::read_to_string(&setup.config).unwrap();
    std::fs::write(
        &setup.config,
        text.replace("action_connections = 1\n", "action_connections = 0\n"),
    )
    .unwrap();
    // The exchange exists before the consumer binds to it.
    let _status = sink(&url, &setup.exchange, "none").await;

    let mut consumer = Command::new(python())
        .arg(repo().join("tests/snapshot_consumer.py"))
        .args([&url, &setup.exchange, &setup.server])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the consumer");
    let mut out = BufReader::new(consumer.child_stdout());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "the consumer: {line:?}");

    tokio::spawn(scripted_server(listener, truth.clone()));
    let bridge = setup.start();
    let result = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        out.read_line(&mut line).map(|_| line)
    });
    let line = tokio::time::timeout(Duration::from_secs(60), result)
        .await
        .unwrap_or_else(|_| panic!("the consumer did not finish\n{}", setup.log()))
        .unwrap()
        .unwrap();
    let status = consumer.wait().unwrap();
    assert!(status.success(), "consumer: {status:?} {line}");
    let got: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("consumer output {line:?}: {e}\n{}", setup.log()));

    let want: BTreeSet<String> = truth.lock().unwrap().keys().cloned().collect();
    assert_eq!(
        want,
        ["PJSIP/d", "PJSIP/e", "PJSIP/f", "PJSIP/g"]
            .iter()
            .map(|s| s.to_string())
            .collect::<BTreeSet<_>>(),
        "the script's own end state"
    );
    let have: BTreeSet<String> = got["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        have, want,
        "the consumer's channel list is the server's: {got}"
    );
    // Three snapshots: complete, cut short by the lost connection, complete.
    let snaps = got["snapshots"].as_array().unwrap();
    let complete: Vec<bool> = snaps
        .iter()
        .map(|s| s["complete"].as_bool().unwrap())
        .collect();
    assert_eq!(complete, [true, false, true], "{got}\n{}", setup.log());
    assert_eq!(snaps[0]["items"], 3);
    assert_eq!(snaps[1]["items"], 1);
    assert_eq!(snaps[2]["items"], 4);
    // Live events came during the complete snapshots (the race).
    assert_eq!(snaps[0]["live_during"], 2, "{got}");
    assert_eq!(snaps[2]["live_during"], 2, "{got}");
    assert_eq!(got["out_of_order"], 0);
    let log = setup.log();
    assert!(log.contains("snapshot incomplete"), "{log}");
    assert_eq!(
        log.matches("Asterisk refused a snapshot action").count(),
        5,
        "once per kind, not per snapshot: {log}"
    );
    drop(bridge);
}

trait ChildStdout {
    fn child_stdout(&mut self) -> std::process::ChildStdout;
}

impl ChildStdout for std::process::Child {
    fn child_stdout(&mut self) -> std::process::ChildStdout {
        self.stdout.take().expect("stdout")
    }
}
