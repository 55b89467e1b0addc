//! AMQP over TLS against a private RabbitMQ node with a TLS listener
//! (tests/common/broker.rs), certificates made at test time (rcgen):
//!
//! - the bridge publishes a replayed trace over `amqps://` (CA file from
//!   `[amqp] tls_ca_file`) and every event arrives;
//! - a wrong CA, a wrong name (`tls_server_name`) and a plain-text port each
//!   fail with a one-line cause;
//! - a client certificate with `?auth_mechanism=external` replaces the
//!   password (RabbitMQ's rabbitmq_auth_mechanism_ssl, user from the CN);
//! - `check` loads the `[amqp]` TLS files and refuses them without an
//!   amqps:// URL.

mod common;

use std::path::Path;
use std::time::Duration;

use ami2amqp::ami::ClientFiles;
use ami2amqp::amqp::{AmqpTls, connect};
use common::broker::PrivateBroker;
use common::certs::{Pem, TestCa};
use common::procs::{BridgeSetup, bin, free_port, replay, sink, trace, without_status};
use lapin::BasicProperties;
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

/// A private node with a TLS listener on the returned port, `server`'s
/// certificate and `ca` to verify client certificates (optional ones).
fn tls_broker(ca: &Path, server: &Pem, plugins: &[&str], extra: &str) -> (PrivateBroker, u16) {
    let port = free_port();
    let conf = format!(
        "listeners.ssl.default = {port}
ssl_options.cacertfile = {}
ssl_options.certfile = {}
ssl_options.keyfile = {}
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
{extra}",
        ca.display(),
        server.cert.display(),
        server.key.display()
    );
    (PrivateBroker::start_with_plugins(&conf, plugins), port)
}

fn files(ca: &Path) -> ClientFiles {
    ClientFiles {
        ca_file: Some(ca.to_path_buf()),
        ..ClientFiles::default()
    }
}

/// Publishes one message to a fresh queue over `url` and reads it back.
async fn round_trip(url: &str, tls: &AmqpTls) -> Result<(), String> {
    let conn = connect(url, tls, Duration::from_secs(15))
        .await
        .map_err(|e| e.to_string())?;
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    ch.basic_publish(
        "".into(),
        q.name().as_str().into(),
        BasicPublishOptions::default(),
        b"over tls",
        BasicProperties::default(),
    )
    .await
    .map_err(|e| e.to_string())?;
    for _ in 0..50 {
        let got = ch
            .basic_get(q.name().as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .map_err(|e| e.to_string())?;
        if let Some(m) = got {
            assert_eq!(m.delivery.data, b"over tls");
            let _ = conn.close(200, "done".into()).await;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("the message did not come back".into())
}

#[tokio::test]
async fn amqps_connects_with_the_ca_file_and_names_the_cause_of_each_failure() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ca");
    let other = TestCa::new(dir.path(), "other");
    let server = ca.server("rabbit", &["localhost", "127.0.0.1"]);
    let client = ca.client("guest");
    let (broker, port) = tls_broker(
        &ca.cert,
        &server,
        &["rabbitmq_auth_mechanism_ssl"],
        "auth_mechanisms.1 = PLAIN\nauth_mechanisms.2 = AMQPLAIN\nauth_mechanisms.3 = EXTERNAL\nssl_cert_login_from = common_name\n",
    );
    let url = format!("amqps://guest:guest@127.0.0.1:{port}/%2f");

    // The right CA: a publish arrives.
    let tls = AmqpTls::new(&files(&ca.cert), None).unwrap();
    round_trip(&url, &tls).await.unwrap();
    // A server_name override that the certificate carries.
    let named = AmqpTls::new(&files(&ca.cert), Some("localhost")).unwrap();
    round_trip(&url, &named).await.unwrap();

    // Another CA.
    let wrong_ca = AmqpTls::new(&files(&other.cert), None).unwrap();
    let e = round_trip(&url, &wrong_ca).await.unwrap_err();
    assert!(e.contains("unknown CA") && !e.contains('\n'), "{e}");
    // A name the certificate does not carry.
    let wrong_name = AmqpTls::new(&files(&ca.cert), Some("rabbit.wrong")).unwrap();
    let e = round_trip(&url, &wrong_name).await.unwrap_err();
    assert!(
        e.contains("name mismatch") && e.contains("rabbit.wrong"),
        "{e}"
    );
    // amqps:// to the plain-text port: no fallback, a clear cause.
    let plain = format!("amqps://guest:guest@127.0.0.1:{}/%2f", broker.port());
    let e = round_trip(&plain, &tls).await.unwrap_err();
    assert!(e.contains("TLS"), "{e}");

    // EXTERNAL: the client certificate (CN guest) instead of a password.
    let with_cert = AmqpTls::new(
        &ClientFiles {
            ca_file: Some(ca.cert.clone()),
            cert_file: Some(client.cert.clone()),
            key_file: Some(client.key.clone()),
        },
        None,
    )
    .unwrap();
    let external = format!("amqps://127.0.0.1:{port}/%2f?auth_mechanism=external");
    round_trip(&external, &with_cert).await.unwrap();
    // Without the certificate, EXTERNAL has nothing to log in with.
    assert!(round_trip(&external, &tls).await.is_err());
}

fn check(config: &Path) -> (bool, String) {
    let (ok, out, err) = common::procs::with_config("check", config);
    (ok, out + &err)
}

#[tokio::test]
async fn the_bridge_publishes_over_amqps_and_logs_a_wrong_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ca");
    let other = TestCa::new(dir.path(), "other");
    let server = ca.server("rabbit", &["localhost", "127.0.0.1"]);
    let (broker, port) = tls_broker(&ca.cert, &server, &[], "");
    let tls_url = format!("amqps://guest:guest@127.0.0.1:{port}/%2f");
    let (_replay, addr) = replay(&[
        "--username",
        "bridge",
        "--secret",
        "bridgepass",
        trace("calls_small.ami").to_str().unwrap(),
    ]);
    let setup = BridgeSetup::new(&addr, &tls_url, "");
    let expected = setup.dry_run(&trace("calls_small.ami"));
    assert!(!expected.is_empty());
    setup.insert_after(
        "[amqp]\n",
        &format!("tls_ca_file = {:?}", ca.cert.display().to_string()),
    );
    let (ok, text) = check(&setup.config);
    assert!(ok, "{text}");
    // The sink listens on the node's plain port.
    let mut events = sink(
        &broker.amqp_url(),
        &setup.exchange,
        &format!("{}.#", setup.server),
    )
    .await;
    let mut bridge = setup.start();
    let got = without_status(
        events
            .collect(expected.len() + 1, Duration::from_secs(30))
            .await,
    );
    assert_eq!(got.len(), expected.len(), "{}", setup.log());
    bridge.signal("TERM");
    assert_eq!(bridge.wait_timeout(Duration::from_secs(15)), Some(0));

    // The same bridge trusting another CA: the log names the cause.
    let text = std::fs::read_to_string(&setup.config).unwrap();
    let text = text.replace(
        &format!("{:?}", ca.cert.display().to_string()),
        &format!("{:?}", other.cert.display().to_string()),
    );
    std::fs::write(&setup.config, text).unwrap();
    let mut bridge = setup.start();
    assert!(
        common::procs::wait_until(Duration::from_secs(20), || setup
            .log()
            .contains("unknown CA")),
        "{}",
        setup.log()
    );
    bridge.signal("TERM");
    let _ = bridge.wait_timeout(Duration::from_secs(15));
}

#[test]
fn check_wants_an_amqps_url_for_the_tls_keys_and_loads_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ca");
    let server = "[[server]]\nname = \"pbx1\"\naddress = \"127.0.0.1:5038\"\nusername = \"u\"\nsecret = \"s\"\n";
    let cfg = dir.path().join("c.toml");
    let run = |amqp: &str| {
        std::fs::write(&cfg, format!("[amqp]\n{amqp}\n\n{server}")).unwrap();
        check(&cfg)
    };
    let ca_line = format!("tls_ca_file = {:?}", ca.cert.display().to_string());
    let (ok, text) = run(&format!(
        "url = \"amqps://u:p@rabbit.example:5671/%2f\"\n{ca_line}\ntls_server_name = \"rabbit.example\""
    ));
    assert!(ok, "{text}");
    // `server_name` is accepted for tls_server_name.
    let (ok, text) = run(&format!(
        "url = \"amqps://u:p@rabbit.example:5671/%2f\"\n{ca_line}\nserver_name = \"rabbit.example\""
    ));
    assert!(ok, "{text}");
    let (ok, text) = run(&format!(
        "url = \"amqp://u:p@rabbit.example:5672/%2f\"\n{ca_line}"
    ));
    assert!(!ok, "{text}");
    assert!(
        text.contains("amqp.tls_ca_file") && text.contains("no broker URL is amqps://"),
        "{text}"
    );
    let (ok, text) =
        run("url = \"amqps://u:p@rabbit.example:5671/%2f\"\ntls_ca_file = \"/nonexistent/ca.pem\"");
    assert!(!ok, "{text}");
    assert!(
        text.contains("amqp.tls_ca_file") && text.contains("/nonexistent/ca.pem"),
        "{text}"
    );
    let (ok, text) = run(&format!(
        "url = \"amqps://u:p@rabbit.example:5671/%2f\"\n{ca_line}\ntls_key_file = {:?}",
        ca.cert.display().to_string()
    ));
    assert!(!ok && text.contains("is set without"), "{text}");
    let (ok, text) =
        run("url = \"amqps://u:p@rabbit.example:5671/%2f\"\ntls_server_name = \"bad name!\"");
    assert!(!ok && text.contains("amqp.tls_server_name"), "{text}");
}

#[tokio::test]
async fn tail_reads_over_amqps_with_a_ca_file_and_names_a_wrong_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ca");
    let other = TestCa::new(dir.path(), "other");
    let server = ca.server("rabbit", &["127.0.0.1"]);
    let (broker, port) = tls_broker(&ca.cert, &server, &[], "");
    let url = format!("amqps://guest:guest@127.0.0.1:{port}/%2f");
    let tail = |ca_file: &Path| {
        tokio::process::Command::new(bin())
            .args(["tail", "--amqp", &url, "--exchange", "amq.topic"])
            .args(["--count", "1", "--duration", "20", "--tls-ca-file"])
            .arg(ca_file)
            .arg("tls.test")
            .kill_on_drop(true)
            .output()
    };
    // Publish on the plain port until the tail has what it waits for.
    let plain = lapin::Connection::connect(&broker.amqp_url(), Default::default())
        .await
        .unwrap();
    let ch = plain.create_channel().await.unwrap();
    let publisher = tokio::spawn(async move {
        loop {
            let _ = ch
                .basic_publish(
                    "amq.topic".into(),
                    "tls.test".into(),
                    BasicPublishOptions::default(),
                    b"{\"via\":\"amqps\"}",
                    BasicProperties::default(),
                )
                .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let o = tokio::time::timeout(Duration::from_secs(30), tail(&ca.cert))
        .await
        .expect("tail finished")
        .expect("run tail");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.contains("tls.test") && out.contains("amqps"),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = tokio::time::timeout(Duration::from_secs(30), tail(&other.cert))
        .await
        .expect("tail finished")
        .expect("run tail");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("unknown CA"), "{err}");
    publisher.abort();
}
