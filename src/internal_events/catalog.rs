//! Every metric the bridge exports: its name, its type and its help text,
//! declared once. Call sites use the constants (so a name cannot drift);
//! [`describe`] registers the help texts with the recorder when it is
//! installed, which puts a `# HELP` line above each metric on `/metrics`.
//! README.md's metrics table documents the same set (a test checks both
//! ways).

/// The type of a metric, as Prometheus names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One exported metric.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

pub const AMI_EVENTS_TOTAL: &str = "ami_events_total";
pub const AMI_IGNORED_MESSAGES_TOTAL: &str = "ami_ignored_messages_total";
pub const AMI_PARSE_ERRORS_TOTAL: &str = "ami_parse_errors_total";
pub const AMI_RECONNECTS_TOTAL: &str = "ami_reconnects_total";
pub const SNAPSHOTS_TOTAL: &str = "snapshots_total";
pub const SNAPSHOT_ITEMS_TOTAL: &str = "snapshot_items_total";
pub const SNAPSHOT_REFUSED_TOTAL: &str = "snapshot_refused_total";
pub const AMI_PUSH_DOWN_REFUSED_TOTAL: &str = "ami_push_down_refused_total";
pub const EVENTS_UNMATCHED_TOTAL: &str = "events_unmatched_total";
pub const MAPPING_ERRORS_TOTAL: &str = "mapping_errors_total";
pub const MAPPING_RELOADS_TOTAL: &str = "mapping_reloads_total";
pub const SPOOL_MESSAGES: &str = "spool_messages";
pub const SPOOL_BYTES: &str = "spool_bytes";
pub const SPOOL_DROPPED_TOTAL: &str = "spool_dropped_total";
pub const SPOOL_WRITE_ERRORS_TOTAL: &str = "spool_write_errors_total";
pub const SPOOL_CORRUPT_RECORDS_TOTAL: &str = "spool_corrupt_records_total";
pub const SPOOL_CORRUPT_BYTES_TOTAL: &str = "spool_corrupt_bytes_total";
pub const SPOOL_MISSING_SEGMENTS_TOTAL: &str = "spool_missing_segments_total";
pub const SPOOL_RECOVERED_TOTAL: &str = "spool_recovered_total";
pub const SPOOL_FSYNCS_TOTAL: &str = "spool_fsyncs_total";
pub const SPOOL_SYNC_SECONDS: &str = "spool_sync_seconds";
pub const SPOOL_SYNC_ERRORS_TOTAL: &str = "spool_sync_errors_total";
pub const AMQP_PUBLISHED_TOTAL: &str = "amqp_published_total";
pub const AMQP_CONFIRMED_TOTAL: &str = "amqp_confirmed_total";
pub const AMQP_NACKED_TOTAL: &str = "amqp_nacked_total";
pub const AMQP_RETURNED_TOTAL: &str = "amqp_returned_total";
pub const AMQP_RECONNECTS_TOTAL: &str = "amqp_reconnects_total";
pub const PUBLISH_LATENCY_SECONDS: &str = "publish_latency_seconds";
pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "process_resident_memory_bytes";
pub const ACTIONS_TOTAL: &str = "actions_total";
pub const ACTIONS_AUTHZ_TOTAL: &str = "actions_authz_total";
pub const ACTIONS_DROPPED_TOTAL: &str = "actions_dropped_total";
pub const ACTIONS_BUSY_TOTAL: &str = "actions_busy_total";
pub const ACTIONS_TOO_LARGE_TOTAL: &str = "actions_too_large_total";
pub const ACTIONS_REPLY_FAILURES_TOTAL: &str = "actions_reply_failures_total";
pub const ACTIONS_REPLY_CHANNEL_REOPENED_TOTAL: &str = "actions_reply_channel_reopened_total";
pub const FLEET_LEASES: &str = "fleet_leases";
pub const FLEET_LEASE_CHANGES_TOTAL: &str = "fleet_lease_changes_total";
pub const FLEET_INSTANCES: &str = "fleet_instances";
pub const FLEET_BAD_ANNOUNCEMENTS_TOTAL: &str = "fleet_bad_announcements_total";
pub const INSTANCE_INFO: &str = "bridge_instance_info";
pub const FACADE_SESSIONS: &str = "facade_sessions";
pub const FACADE_ACTIONS_TOTAL: &str = "facade_actions_total";
pub const FACADE_DROPPED_SESSIONS_TOTAL: &str = "facade_dropped_sessions_total";

const fn counter(name: &'static str, help: &'static str) -> Metric {
    Metric {
        name,
        kind: Kind::Counter,
        help,
    }
}

const fn gauge(name: &'static str, help: &'static str) -> Metric {
    Metric {
        name,
        kind: Kind::Gauge,
        help,
    }
}

const fn histogram(name: &'static str, help: &'static str) -> Metric {
    Metric {
        name,
        kind: Kind::Histogram,
        help,
    }
}

/// Every metric, in README.md's order.
pub const METRICS: &[Metric] = &[
    counter(
        AMI_EVENTS_TOTAL,
        "Events read from AMI, by server and event name (documented or mapped names, else `other`).",
    ),
    counter(
        AMI_IGNORED_MESSAGES_TOTAL,
        "AMI messages read that were neither an event nor the answer to a waiting action.",
    ),
    counter(
        AMI_PARSE_ERRORS_TOTAL,
        "Malformed AMI input skipped (over a limit, or not `Key: Value`).",
    ),
    counter(AMI_RECONNECTS_TOTAL, "AMI connections lost or failed."),
    counter(
        SNAPSHOTS_TOTAL,
        "Snapshots after a (re)connect that ended, by server and result (complete or incomplete).",
    ),
    counter(
        SNAPSHOT_ITEMS_TOTAL,
        "Snapshot items read and routed, by server and kind.",
    ),
    counter(
        SNAPSHOT_REFUSED_TOTAL,
        "Snapshot actions Asterisk refused (permission, unknown command), by server and kind.",
    ),
    counter(
        AMI_PUSH_DOWN_REFUSED_TOTAL,
        "Event connections whose push-down Filter actions Asterisk refused (no `system` write class).",
    ),
    counter(
        EVENTS_UNMATCHED_TOTAL,
        "Events no route matched (nothing published).",
    ),
    counter(
        MAPPING_ERRORS_TOTAL,
        "Messages not produced because a template could not render.",
    ),
    counter(
        MAPPING_RELOADS_TOTAL,
        "Mapping reloads, applied or rejected.",
    ),
    gauge(
        SPOOL_MESSAGES,
        "Messages waiting in the spool for a broker confirm.",
    ),
    gauge(
        SPOOL_BYTES,
        "Bytes waiting in the spool for a broker confirm.",
    ),
    counter(
        SPOOL_DROPPED_TOTAL,
        "Messages lost to a full spool, a full or failing disk, or still unwritten at shutdown.",
    ),
    counter(
        SPOOL_WRITE_ERRORS_TOTAL,
        "Failed writes to the spool (the batch is retried every second).",
    ),
    counter(
        SPOOL_CORRUPT_RECORDS_TOTAL,
        "Damaged or undecodable spool records skipped.",
    ),
    counter(
        SPOOL_CORRUPT_BYTES_TOTAL,
        "Bytes of the damaged spool regions skipped.",
    ),
    counter(
        SPOOL_RECOVERED_TOTAL,
        "Messages the spool held at start (a previous run's, not yet confirmed), by server (configured names, else `other`); they are published first.",
    ),
    counter(
        SPOOL_MISSING_SEGMENTS_TOTAL,
        "Gaps in the spool's segment files (a segment deleted under the bridge).",
    ),
    counter(
        SPOOL_FSYNCS_TOTAL,
        "Spool segment fsyncs (only unconfirmed messages are fsynced).",
    ),
    histogram(
        SPOOL_SYNC_SECONDS,
        "One round of the spool's disk work (fsyncs, cursor, deletions), in seconds.",
    ),
    counter(
        SPOOL_SYNC_ERRORS_TOTAL,
        "Failed spool fsyncs, cursor writes or deletions.",
    ),
    counter(AMQP_PUBLISHED_TOTAL, "Messages published, by exchange."),
    counter(
        AMQP_CONFIRMED_TOTAL,
        "Messages confirmed by the broker, by exchange.",
    ),
    counter(
        AMQP_NACKED_TOTAL,
        "Messages the broker refused (re-published), by exchange.",
    ),
    counter(
        AMQP_RETURNED_TOTAL,
        "Confirmed messages no queue was bound for, by exchange.",
    ),
    counter(
        AMQP_RECONNECTS_TOTAL,
        "Failed broker connections and sessions.",
    ),
    histogram(
        PUBLISH_LATENCY_SECONDS,
        "From reading the event off AMI to the broker's confirm, in seconds.",
    ),
    gauge(
        PROCESS_RESIDENT_MEMORY_BYTES,
        "Resident memory of the bridge, in bytes.",
    ),
    counter(
        ACTIONS_TOTAL,
        "Action requests answered, by server, action and result.",
    ),
    counter(
        ACTIONS_AUTHZ_TOTAL,
        "Allow-list decisions on action requests.",
    ),
    counter(
        ACTIONS_DROPPED_TOTAL,
        "Action requests dropped unexecuted (their reply_to is not allowed).",
    ),
    counter(
        ACTIONS_BUSY_TOTAL,
        "Action requests answered `busy` (too many in flight for the user).",
    ),
    counter(
        ACTIONS_TOO_LARGE_TOTAL,
        "Action replies answered `too_large`.",
    ),
    counter(
        ACTIONS_REPLY_FAILURES_TOTAL,
        "Action replies that could not be published (the request is redelivered).",
    ),
    counter(
        ACTIONS_REPLY_CHANNEL_REOPENED_TOTAL,
        "Reply channels the broker closed and the bridge reopened.",
    ),
    gauge(
        INSTANCE_INFO,
        "Always 1; its `instance` label is this instance's name (the top-level `instance` key, default the host name).",
    ),
    gauge(
        FLEET_LEASES,
        "Server leases this instance holds, so event connections it runs ([fleet]; without a fleet every server).",
    ),
    counter(
        FLEET_LEASE_CHANGES_TOTAL,
        "Leases this instance took or ended, by server and change (`acquired`, `rebalanced`, `stopping`, `lost`).",
    ),
    gauge(
        FLEET_INSTANCES,
        "Live instances sharing servers with this one, itself included ([fleet]).",
    ),
    counter(
        FLEET_BAD_ANNOUNCEMENTS_TOTAL,
        "Messages on the fleet exchange that were not a valid announcement (or came from a second instance with this name).",
    ),
    gauge(
        FACADE_SESSIONS,
        "AMI facade sessions logged in, by user (configured users only).",
    ),
    counter(
        FACADE_ACTIONS_TOTAL,
        "Actions AMI facade clients sent to Asterisk or were refused, by user and result.",
    ),
    counter(
        FACADE_DROPPED_SESSIONS_TOTAL,
        "AMI facade sessions the bridge closed, by reason.",
    ),
];

/// Registers the help text of every metric with the installed recorder
/// (run once, when it is installed).
pub fn describe() {
    for m in METRICS {
        match m.kind {
            Kind::Counter => metrics::describe_counter!(m.name, m.help),
            Kind::Gauge => metrics::describe_gauge!(m.name, m.help),
            Kind::Histogram => metrics::describe_histogram!(m.name, m.help),
        }
    }
}
