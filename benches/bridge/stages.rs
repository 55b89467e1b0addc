//! Scenario s (the bridge's own per-event work, in-process, no broker) and
//! the smoke test `cargo test --all-targets` runs instead of the bench.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use ami2amqp::ami::{AmiCodec, Limits, Message};
use ami2amqp::amqp::Record;
use ami2amqp::amqp::properties;
use ami2amqp::mapping::Router;
use ami2amqp::trace::replay::EventStream;
use bytes::BytesMut;

use crate::Res;
use crate::common::procs::repo;
use crate::stats::{bucket_quantile, pcts};
use crate::trace::{SERVER, TRACE, decode_event, load_stream, now_us, route_event};

/// A quick check of the glue (no broker, small trace): mapping, records,
/// properties, the percentile and histogram helpers.
pub(crate) fn smoke() -> Res<usize> {
    let trace = [repo().join("tests/traces/calls_small.ami")];
    let timing = [repo().join("tests/traces/calls_small.timing")];
    let stream = EventStream::load(&trace, Some(&timing[..]), false).map_err(|e| e.to_string())?;
    let router =
        ami2amqp::mapping::load_dir(&repo().join("mappings")).map_err(|e| e.to_string())?;
    let server: Arc<str> = Arc::from(SERVER);
    let mut out = Vec::new();
    for (i, ev) in stream.events.iter().enumerate() {
        let m = decode_event(&ev.bytes)?;
        let seq = i as u64 + 1;
        route_event(&router, &server, seq, SystemTime::now(), &m, &mut out);
        for o in out.drain(..) {
            let rec = Record {
                received_at_us: now_us(),
                server: server.clone(),
                seq,
                msg: o,
            };
            smoke_record(&rec, seq)?;
        }
    }
    let p = pcts((1..=1000).collect());
    let b = [(0.001, 50.0), (0.002, 100.0), (f64::INFINITY, 100.0)];
    if p.p50 != 0.5 || bucket_quantile(&b, 0.5).map(|x| (x - 1.0).abs() < 1e-9) != Some(true) {
        return Err("percentile helpers".into());
    }
    Ok(stream.events.len())
}

/// A record round-trips through the spool encoding, and its message id
/// carries its seq.
fn smoke_record(rec: &Record, seq: u64) -> Res<()> {
    let mut b = Vec::new();
    rec.encode(&mut b);
    let back = Record::decode(&b)?;
    if back != *rec {
        return Err(format!("record {seq} does not round-trip"));
    }
    let p = properties(rec);
    let id = p.message_id().as_ref().map(|x| x.as_str().to_string());
    let got = id
        .as_deref()
        .and_then(|id| id.rsplit(':').nth(1)?.parse::<u64>().ok());
    if got != Some(seq) {
        return Err(format!("message id {id:?} does not carry seq {seq}"));
    }
    Ok(())
}

/// Best of 3 passes of `f`, in ns per event (`n` events a pass).
fn best(n: f64, f: &mut dyn FnMut()) -> f64 {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
        * 1e9
        / n
}

/// CPU cost of the bridge's own per-event stages, in-process, one thread,
/// no broker (best of 3 passes over the trace): what the bridge adds on top
/// of a lapin publish.
pub(crate) fn stage_costs(mappings: &Path) -> Res<Vec<(&'static str, f64)>> {
    let stream = load_stream(false)?;
    let data = ami2amqp::trace::read_trace(repo().join(TRACE)).map_err(|e| e.to_string())?;
    let router = ami2amqp::mapping::load_dir(mappings).map_err(|e| e.to_string())?;
    let n = stream.events.len() as f64;
    // AMI decode of the stream in 64 KiB reads (as benches/parse.rs).
    let decode_ns = best(n, &mut || {
        use tokio_util::codec::Decoder;
        let mut codec = AmiCodec::new(Limits::default());
        let mut buf = BytesMut::with_capacity(128 * 1024);
        for chunk in data.chunks(64 * 1024) {
            buf.extend_from_slice(chunk);
            while let Ok(Some(f)) = codec.decode(&mut buf) {
                black_box(f);
            }
        }
    });
    let msgs: Vec<Message> = stream
        .events
        .iter()
        .map(|e| decode_event(&e.bytes))
        .collect::<Res<_>>()?;
    let (route_ns, recs) = route_cost(&router, &msgs, n);
    let mut v = vec![
        ("AMI decode (codec, 64 KiB reads)", decode_ns),
        ("route + JSON body (default mappings)", route_ns),
    ];
    v.extend(record_costs(&recs, n));
    Ok(v)
}

/// Routing cost per event, and the spool records of every routed message.
fn route_cost(router: &Router, msgs: &[Message], n: f64) -> (f64, Vec<Record>) {
    let server: Arc<str> = Arc::from(SERVER);
    let now = SystemTime::now();
    let mut out = Vec::new();
    let route_ns = best(n, &mut || {
        for (i, m) in msgs.iter().enumerate() {
            route_event(router, &server, i as u64 + 1, now, m, &mut out);
            black_box(&out);
        }
    });
    let mut recs = Vec::with_capacity(msgs.len());
    for (i, m) in msgs.iter().enumerate() {
        route_event(router, &server, i as u64 + 1, now, m, &mut out);
        for o in out.drain(..) {
            recs.push(Record {
                received_at_us: now_us(),
                server: server.clone(),
                seq: i as u64 + 1,
                msg: o,
            });
        }
    }
    (route_ns, recs)
}

/// Spool record encode/decode and AMQP properties, per event.
fn record_costs(recs: &[Record], n: f64) -> Vec<(&'static str, f64)> {
    let mut buf = Vec::with_capacity(4 << 20);
    let encode_ns = best(n, &mut || {
        for r in recs {
            buf.clear();
            r.encode(&mut buf);
            black_box(crc32fast::hash(&buf));
        }
    });
    let payloads: Vec<Vec<u8>> = recs
        .iter()
        .map(|r| {
            let mut b = Vec::new();
            r.encode(&mut b);
            b
        })
        .collect();
    let decode_rec_ns = best(n, &mut || {
        for p in &payloads {
            black_box(crc32fast::hash(p));
            black_box(Record::decode(p).ok());
        }
    });
    let props_ns = best(n, &mut || {
        for r in recs {
            black_box(properties(r));
        }
    });
    vec![
        ("spool record encode + CRC32", encode_ns),
        ("spool record CRC32 + decode", decode_rec_ns),
        ("AMQP properties (publisher::properties)", props_ns),
    ]
}
