//! AMI over TLS: `ami2amqp replay --tls-cert/--tls-key` plays Asterisk's
//! manager TLS listener, with certificates made at test time (rcgen).
//!
//! - The bridge (`run`, `[[server]] tls = true`) reads a trace over TLS and
//!   publishes every event, on its event and action connections alike.
//! - A wrong CA, a wrong name and an expired certificate each fail with a
//!   one-line message naming the cause, and the client never logs in.
//! - No plain-text fallback: against a listener that does not speak TLS,
//!   the first bytes sent are a TLS handshake record, never an action.
//! - `check` loads the TLS files and refuses tls_* keys without tls = true.

mod common;

use std::path::Path;
use std::time::Duration;

use ami2amqp::ami::{
    AmiTls, AuthType, Client, ClientConfig, ClientFiles, ConnState, Credentials, EventMask,
};
use ami2amqp::trace::replay::{Account, ReplayConfig, ReplayServer, ReplayTls};
use common::broker::shared_amqp_url;
use common::certs::{Pem, TestCa};
use common::procs::{BridgeSetup, bin, replay, sink, trace, wait_until, without_status};
use tokio::io::AsyncReadExt;

/// A TLS replay in this process, serving `calls_small.ami` with `server`'s
/// certificate; returns its address.
async fn tls_replay(server: &Pem) -> String {
    tls_replay_with(server, None).await
}

/// [`tls_replay`], requiring client certificates of `client_ca` if given.
async fn tls_replay_with(server: &Pem, client_ca: Option<&Path>) -> String {
    let srv = ReplayServer::bind(ReplayConfig {
        listen: "127.0.0.1:0".into(),
        traces: vec![trace("calls_small.ami")],
        account: Some(Account {
            username: "bridge".into(),
            secret: "bridgepass".into(),
        }),
        tls: Some(ReplayTls {
            cert_file: server.cert.clone(),
            key_file: server.key.clone(),
            client_ca: client_ca.map(Path::to_path_buf),
        }),
        ..ReplayConfig::default()
    })
    .await
    .expect("bind the replay");
    let addr = srv.local_addr().expect("addr").to_string();
    tokio::spawn(srv.run(std::future::pending()));
    addr
}

fn client_config(addr: &str, tls: Option<AmiTls>) -> ClientConfig {
    let creds = Credentials {
        username: "bridge".into(),
        secret: "bridgepass".into(),
        auth: AuthType::Md5,
    };
    let mut c = ClientConfig::new("pbx", addr, creds);
    c.events = EventMask::On;
    c.connect_timeout = Duration::from_secs(5);
    c.tls = tls;
    c
}

fn tls(ca: &Path, name: &str) -> AmiTls {
    AmiTls::new(
        &ClientFiles {
            ca_file: Some(ca.to_path_buf()),
            ..ClientFiles::default()
        },
        name,
    )
    .expect("TLS settings")
}

/// The first state a client reaches: connected (its banner) or the reason
/// it failed.
async fn first_outcome(c: ClientConfig) -> Result<String, String> {
    let client = Client::spawn(c, None);
    let mut rx = client.state();
    let r = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match rx.borrow_and_update().clone() {
                ConnState::Connected { banner } => return Ok(banner),
                ConnState::Disconnected { reason } => return Err(reason),
                _ => {}
            }
            rx.changed().await.expect("state");
        }
    })
    .await
    .expect("an outcome within 15 s");
    client.shutdown();
    r
}

#[tokio::test]
async fn a_client_logs_in_over_tls_and_fails_clearly_on_a_wrong_ca_name_or_date() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ca");
    let other_ca = TestCa::new(dir.path(), "other-ca");
    let server = ca.server("pbx", &["pbx.test", "127.0.0.1"]);
    let addr = tls_replay(&server).await;

    // The right CA and a name in the certificate: logged in.
    let ok = first_outcome(client_config(&addr, Some(tls(&ca.cert, "pbx.test")))).await;
    assert!(ok.is_ok(), "{ok:?}");
    // The host of the address (an IP in the certificate) is the default name.
    let ok = first_outcome(client_config(&addr, Some(tls(&ca.cert, "127.0.0.1")))).await;
    assert!(ok.is_ok(), "{ok:?}");

    // Another CA: unknown CA, one line.
    let e = first_outcome(client_config(&addr, Some(tls(&other_ca.cert, "pbx.test"))))
        .await
        .unwrap_err();
    assert!(e.contains("unknown CA") && !e.contains('\n'), "{e}");
    // A name the certificate does not carry: name mismatch, naming both.
    let e = first_outcome(client_config(&addr, Some(tls(&ca.cert, "wrong.test"))))
        .await
        .unwrap_err();
    assert!(
        e.contains("name mismatch") && e.contains("wrong.test") && e.contains("pbx.test"),
        "{e}"
    );
    // An expired certificate.
    let expired = ca.expired_server("old", &["pbx.test"]);
    let old = tls_replay(&expired).await;
    let e = first_outcome(client_config(&old, Some(tls(&ca.cert, "pbx.test"))))
        .await
        .unwrap_err();
    assert!(e.contains("expired"), "{e}");
    // A plain client on the TLS port does not get in either.
    let e = first_outcome(client_config(&addr, None)).await.unwrap_err();
    assert!(!e.is_empty());
}

#[tokio::test]
async fn with_tls_nothing_is_ever_sent_in_plain_text() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ca");
    // A listener that speaks plain AMI: banner first, like Asterisk's 5038.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let seen = tokio::spawn(async move {
        let mut all = Vec::new();
        // Two attempts: the client retries, always with TLS.
        for _ in 0..2 {
            let (mut s, _) = l.accept().await.unwrap();
            use tokio::io::AsyncWriteExt;
            let _ = s.write_all(b"Asterisk Call Manager/11.0.0\r\n").await;
            let mut buf = vec![0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .unwrap_or(Ok(0))
                .unwrap_or(0);
            all.push(buf[..n].to_vec());
        }
        all
    });
    let mut c = client_config(&addr, Some(tls(&ca.cert, "pbx.test")));
    c.backoff.initial = Duration::from_millis(50);
    let client = Client::spawn(c, None);
    let seen = tokio::time::timeout(Duration::from_secs(20), seen)
        .await
        .expect("two attempts")
        .unwrap();
    client.shutdown();
    for first in seen {
        // 0x16: a TLS handshake record (the ClientHello).
        assert_eq!(
            first.first(),
            Some(&0x16),
            "{:?}",
            String::from_utf8_lossy(&first)
        );
        let text = String::from_utf8_lossy(&first).to_lowercase();
        assert!(
            !text.contains("action") && !text.contains("bridgepass"),
            "{text}"
        );
    }
}

fn check(config: &Path) -> (bool, String) {
    let (ok, out, err) = common::procs::with_config("check", config);
    (ok, out + &err)
}

#[tokio::test]
async fn the_bridge_reads_a_trace_over_tls_and_check_validates_the_keys() {
    let url = shared_amqp_url();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ca");
    let server = ca.server("pbx", &["pbx.test"]);
    let (_replay, addr) = replay(&[
        "--username",
        "bridge",
        "--secret",
        "bridgepass",
        "--tls-cert",
        server.cert.to_str().unwrap(),
        "--tls-key",
        server.key.to_str().unwrap(),
        trace("calls_small.ami").to_str().unwrap(),
    ]);
    let setup = BridgeSetup::new(&addr, &url, "");
    let expected = setup.dry_run(&trace("calls_small.ami"));
    assert!(!expected.is_empty());
    setup.insert_after(
        "action_connections = 1\n",
        &format!(
            "tls = true\ntls_ca_file = {:?}\ntls_server_name = \"pbx.test\"",
            ca.cert.display().to_string()
        ),
    );
    let (ok, text) = check(&setup.config);
    assert!(ok, "{text}");

    let mut events = sink(&url, &setup.exchange, &format!("{}.#", setup.server)).await;
    let mut bridge = setup.start();
    let got = without_status(
        events
            .collect(expected.len() + 1, Duration::from_secs(20))
            .await,
    );
    assert_eq!(got.len(), expected.len(), "{}", setup.log());
    // Both connections (events, action-1) are up: healthy.
    assert!(
        wait_until(Duration::from_secs(10), || setup
            .http_get("/healthz")
            .is_some_and(|(c, _)| c == 200)),
        "healthz: {:?}\n{}",
        setup.http_get("/healthz"),
        setup.log()
    );
    bridge.signal("TERM");
    assert_eq!(bridge.wait_timeout(Duration::from_secs(15)), Some(0));
}

#[tokio::test]
async fn the_bridge_logs_the_cause_of_a_wrong_ca() {
    let url = shared_amqp_url();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ca");
    let other = TestCa::new(dir.path(), "other");
    let server = ca.server("pbx", &["pbx.test"]);
    let (_replay, addr) = replay(&[
        "--tls-cert",
        server.cert.to_str().unwrap(),
        "--tls-key",
        server.key.to_str().unwrap(),
        trace("calls_small.ami").to_str().unwrap(),
    ]);
    let setup = BridgeSetup::new(&addr, &url, "");
    setup.insert_after(
        "action_connections = 1\n",
        &format!(
            "tls = true\ntls_ca_file = {:?}\ntls_server_name = \"pbx.test\"",
            other.cert.display().to_string()
        ),
    );
    let mut bridge = setup.start();
    assert!(
        wait_until(Duration::from_secs(15), || setup
            .log()
            .contains("unknown CA")),
        "{}",
        setup.log()
    );
    assert!(!setup.log().contains("AMI connected"), "{}", setup.log());
    bridge.signal("TERM");
    let _ = bridge.wait_timeout(Duration::from_secs(15));
}

#[test]
fn check_loads_the_files_and_wants_tls_true_for_tls_keys() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ca");
    let base = "[[server]]\nname = \"pbx1\"\naddress = \"127.0.0.1:5039\"\nusername = \"u\"\nsecret = \"s\"\n";
    let cfg = dir.path().join("c.toml");
    let run = |extra: &str| {
        std::fs::write(&cfg, format!("{base}{extra}\n")).unwrap();
        check(&cfg)
    };
    let ca_line = format!("tls_ca_file = {:?}", ca.cert.display().to_string());

    let (ok, text) = run(&format!("tls = true\n{ca_line}"));
    assert!(ok, "{text}");
    // A tls_* key without tls = true: an error naming the key.
    let (ok, text) = run(&ca_line);
    assert!(!ok, "{text}");
    assert!(
        text.contains("server[0].tls_ca_file") && text.contains("tls is not true"),
        "{text}"
    );
    // A missing CA file.
    let (ok, text) = run("tls = true\ntls_ca_file = \"/nonexistent/ca.pem\"");
    assert!(!ok, "{text}");
    assert!(
        text.contains("server[0].tls_ca_file") && text.contains("/nonexistent/ca.pem"),
        "{text}"
    );
    // A file that holds no certificate.
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let (ok, text) = run(&format!(
        "tls = true\ntls_ca_file = {:?}",
        junk.display().to_string()
    ));
    assert!(!ok && text.contains("no certificate"), "{text}");
    // A client certificate without its key.
    let client = ca.client("bridge");
    let (ok, text) = run(&format!(
        "tls = true\n{ca_line}\ntls_cert_file = {:?}",
        client.cert.display().to_string()
    ));
    assert!(
        !ok && text.contains("server[0].tls_cert_file: is set without tls_key_file"),
        "{text}"
    );
    // Certificate and key: fine.
    let (ok, text) = run(&format!(
        "tls = true\n{ca_line}\ntls_cert_file = {:?}\ntls_key_file = {:?}",
        client.cert.display().to_string(),
        client.key.display().to_string()
    ));
    assert!(ok, "{text}");
}

#[tokio::test]
async fn record_captures_over_tls_and_names_a_wrong_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ca");
    let other = TestCa::new(dir.path(), "other");
    let server = ca.server("pbx", &["pbx.test"]);
    let addr = tls_replay(&server).await;
    let out = dir.path().join("rec.ami");
    let record = |ca_file: &Path| {
        tokio::process::Command::new(bin())
            .args(["--log-level", "warn", "record", "--server", &addr])
            .args(["--username", "bridge", "--secret", "bridgepass"])
            .args(["--duration", "1", "--tls", "--tls-server-name", "pbx.test"])
            .arg("--tls-ca-file")
            .arg(ca_file)
            .arg("--out")
            .arg(&out)
            .kill_on_drop(true)
            .output()
    };
    let o = tokio::time::timeout(Duration::from_secs(20), record(&ca.cert))
        .await
        .expect("record finished")
        .expect("run record");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The decrypted stream: the banner, then every event of the trace.
    let text = String::from_utf8_lossy(&std::fs::read(&out).unwrap()).into_owned();
    assert!(text.starts_with("Asterisk Call Manager/"), "{text:.200}");
    let events = |t: &str| t.lines().filter(|l| l.starts_with("Event: ")).count();
    let original = std::fs::read_to_string(trace("calls_small.ami")).unwrap();
    assert_eq!(events(&text), events(&original));

    let o = tokio::time::timeout(Duration::from_secs(20), record(&other.cert))
        .await
        .expect("record finished")
        .expect("run record");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("unknown CA"), "{err}");
}

#[tokio::test]
async fn a_client_certificate_is_presented_when_the_server_requires_one() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ca");
    let other = TestCa::new(dir.path(), "other");
    let server = ca.server("pbx", &["pbx.test"]);
    let addr = tls_replay_with(&server, Some(&ca.cert)).await;
    let with_cert = |cert: &Pem| {
        AmiTls::new(
            &ClientFiles {
                ca_file: Some(ca.cert.clone()),
                cert_file: Some(cert.cert.clone()),
                key_file: Some(cert.key.clone()),
            },
            "pbx.test",
        )
        .unwrap()
    };
    // Signed by the CA the server trusts: logged in.
    let good = ca.client("bridge");
    let ok = first_outcome(client_config(&addr, Some(with_cert(&good)))).await;
    assert!(ok.is_ok(), "{ok:?}");
    // No certificate: the server says it requires one.
    let e = first_outcome(client_config(&addr, Some(tls(&ca.cert, "pbx.test"))))
        .await
        .unwrap_err();
    assert!(e.contains("requires a client certificate"), "{e}");
    // A certificate of another CA: rejected.
    let stranger = other.client("stranger");
    let e = first_outcome(client_config(&addr, Some(with_cert(&stranger))))
        .await
        .unwrap_err();
    assert!(e.contains("rejected our client certificate"), "{e}");
}

/// The AMI facade serves TLS too (`[facade] tls_cert_file`/`tls_key_file`):
/// an AMI client with the right CA logs in and is answered; another CA
/// fails with "unknown CA"; a client that does not speak TLS never gets a
/// banner.
#[tokio::test]
async fn the_facade_serves_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ca");
    let other_ca = TestCa::new(dir.path(), "other-ca");
    let cert = ca.server("facade", &["facade.test", "127.0.0.1"]);
    let (_replay, addr) = replay(&[
        "--rate",
        "50",
        "--loop",
        "0",
        trace("calls_small.ami").to_str().unwrap(),
    ]);
    let facade = format!("127.0.0.1:{}", common::procs::free_port());
    let extra = format!(
        "[actions]\nenabled = false\n\n[facade]\nlisten = \"{facade}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n\n\
         [[facade.user]]\nname = \"crm\"\nsecret = \"crmpass\"\nread = [\"all\"]\nwrite = [\"all\"]\n",
        cert.cert.display(),
        cert.key.display()
    );
    let setup = BridgeSetup::new(&addr, &shared_amqp_url(), &extra);
    let mut bridge = setup.start();
    let creds = |auth| Credentials {
        username: "crm".into(),
        secret: "crmpass".into(),
        auth,
    };
    let facade_client = |tls: Option<AmiTls>, auth| {
        let mut c = ClientConfig::new("facade", &facade, creds(auth));
        c.events = EventMask::Off;
        c.connect_timeout = Duration::from_secs(5);
        c.tls = tls;
        c
    };
    // The facade accepts clients once the bridge's own server is connected.
    let up = wait_until(Duration::from_secs(20), || {
        setup.log().contains("AMI connected")
    });
    assert!(up, "{}", setup.log());
    let mut ok = Err(String::new());
    for _ in 0..20 {
        ok = first_outcome(facade_client(
            Some(tls(&ca.cert, "facade.test")),
            AuthType::Md5,
        ))
        .await;
        if ok.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let banner = ok.unwrap_or_else(|e| panic!("{e}\n{}", setup.log()));
    assert!(banner.starts_with("Asterisk Call Manager/"), "{banner}");

    let client = Client::spawn(
        facade_client(Some(tls(&ca.cert, "facade.test")), AuthType::Plain),
        None,
    );
    assert!(client.wait_connected(Duration::from_secs(10)).await);
    let ping = ami2amqp::ami::Message::from_pairs([("Action", "Ping")]);
    let r = client
        .send_action(ping, None)
        .await
        .expect("Ping through the facade");
    assert_eq!(r.response.get("Ping").as_deref(), Some("Pong"));
    client.shutdown();

    let e = first_outcome(facade_client(
        Some(tls(&other_ca.cert, "facade.test")),
        AuthType::Md5,
    ))
    .await
    .unwrap_err();
    assert!(e.contains("unknown CA"), "{e}");
    let e = first_outcome(facade_client(None, AuthType::Md5))
        .await
        .unwrap_err();
    assert!(!e.is_empty(), "a plain client logged in to a TLS facade");
    bridge.signal("TERM");
    let _ = bridge.wait_timeout(Duration::from_secs(5));
}

/// `doctor` on a TLS server: a verified certificate is an `ok tls` line,
/// another CA a `FAIL tls` line naming the cause.
#[tokio::test]
async fn doctor_reports_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ca");
    let other_ca = TestCa::new(dir.path(), "other-ca");
    let server = ca.server("pbx", &["pbx.test"]);
    let addr = tls_replay(&server).await;
    for (ca_file, want) in [(&ca.cert, "ok"), (&other_ca.cert, "FAIL")] {
        let setup = BridgeSetup::new(&addr, &shared_amqp_url(), "[actions]\nenabled = false\n");
        setup.insert_after(
            "action_connections = 1\n",
            &format!(
                "tls = true\ntls_ca_file = \"{}\"\ntls_server_name = \"pbx.test\"",
                ca_file.display()
            ),
        );
        let config = setup.config.clone();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(bin())
                .args(["doctor", "--config"])
                .arg(&config)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.split_whitespace().nth(2) == Some("tls"))
            .unwrap_or_else(|| panic!("no tls line:\n{text}"));
        assert!(line.starts_with(want), "{text}");
        if want == "FAIL" {
            assert!(
                line.contains("unknown CA") && !out.status.success(),
                "{text}"
            );
        }
    }
}
