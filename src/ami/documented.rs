//! The events Asterisk documents (its XML manager documentation, several
//! release trees merged): the copy in `tests/data/ami_events.json`, kept as
//! a list of names so the bridge can tell a known event name from any other
//! string a peer may send (metric labels must come from a bounded set).

/// Every documented AMI event name, sorted.
pub const DOCUMENTED_EVENTS: &[&str] = &[
    "AGIExecEnd",
    "AGIExecStart",
    "AOC-D",
    "AOC-E",
    "AOC-S",
    "AgentCalled",
    "AgentComplete",
    "AgentConnect",
    "AgentDump",
    "AgentLogin",
    "AgentLogoff",
    "AgentRingNoAnswer",
    "Agents",
    "AgentsComplete",
    "Alarm",
    "AlarmClear",
    "AorDetail",
    "AorList",
    "AorListComplete",
    "AsyncAGIEnd",
    "AsyncAGIExec",
    "AsyncAGIStart",
    "AttendedTransfer",
    "AuthDetail",
    "AuthList",
    "AuthListComplete",
    "AuthMethodNotAllowed",
    "BlindTransfer",
    "BridgeCreate",
    "BridgeDestroy",
    "BridgeEnter",
    "BridgeInfoChannel",
    "BridgeInfoComplete",
    "BridgeLeave",
    "BridgeMerge",
    "BridgeVideoSourceUpdate",
    "CEL",
    "Cdr",
    "ChallengeResponseFailed",
    "ChallengeSent",
    "ChanSpyStart",
    "ChanSpyStop",
    "ChannelTalkingStart",
    "ChannelTalkingStop",
    "ConfbridgeEnd",
    "ConfbridgeJoin",
    "ConfbridgeLeave",
    "ConfbridgeList",
    "ConfbridgeListRooms",
    "ConfbridgeMute",
    "ConfbridgeRecord",
    "ConfbridgeStart",
    "ConfbridgeStopRecord",
    "ConfbridgeTalking",
    "ConfbridgeUnmute",
    "ContactList",
    "ContactListComplete",
    "ContactStatus",
    "ContactStatusDetail",
    "CoreShowChannel",
    "CoreShowChannelMapComplete",
    "CoreShowChannelsComplete",
    "DAHDIChannel",
    "DNDState",
    "DTMFBegin",
    "DTMFEnd",
    "DeadlockStart",
    "DeviceStateChange",
    "DeviceStateListComplete",
    "DialBegin",
    "DialEnd",
    "DialState",
    "EndpointDetail",
    "EndpointDetailComplete",
    "EndpointList",
    "EndpointListComplete",
    "ExtensionStateListComplete",
    "ExtensionStatus",
    "FAXSession",
    "FAXSessionsComplete",
    "FAXSessionsEntry",
    "FAXStats",
    "FAXStatus",
    "FailedACL",
    "Flash",
    "FullyBooted",
    "Hangup",
    "HangupHandlerPop",
    "HangupHandlerPush",
    "HangupHandlerRun",
    "HangupRequest",
    "Hold",
    "IdentifyDetail",
    "InboundRegistrationDetail",
    "InboundSubscriptionDetail",
    "InvalidAccountID",
    "InvalidPassword",
    "InvalidTransport",
    "Load",
    "LoadAverageLimit",
    "LocalBridge",
    "LocalOptimizationBegin",
    "LocalOptimizationEnd",
    "LogChannel",
    "MCID",
    "MWIGet",
    "MWIGetComplete",
    "MeetmeEnd",
    "MeetmeJoin",
    "MeetmeLeave",
    "MeetmeList",
    "MeetmeListRooms",
    "MeetmeMute",
    "MeetmeTalkRequest",
    "MeetmeTalking",
    "MemoryLimit",
    "MessageWaiting",
    "MiniVoiceMail",
    "MixMonitorMute",
    "MixMonitorStart",
    "MixMonitorStop",
    "MonitorStart",
    "MonitorStop",
    "MusicOnHoldStart",
    "MusicOnHoldStop",
    "NewAccountCode",
    "NewCallerid",
    "NewConnectedLine",
    "NewExten",
    "Newchannel",
    "Newstate",
    "OriginateResponse",
    "OutboundRegistrationDetail",
    "OutboundSubscriptionDetail",
    "PJSIPMaintenanceStatus",
    "ParkedCall",
    "ParkedCallGiveUp",
    "ParkedCallSwap",
    "ParkedCallTimeOut",
    "PeerStatus",
    "Pickup",
    "PresenceStateChange",
    "PresenceStateListComplete",
    "PresenceStatus",
    "QueueCallerAbandon",
    "QueueCallerJoin",
    "QueueCallerLeave",
    "QueueEntry",
    "QueueMemberAdded",
    "QueueMemberPause",
    "QueueMemberPenalty",
    "QueueMemberRemoved",
    "QueueMemberRinginuse",
    "QueueMemberStatus",
    "QueueParams",
    "RTCPReceived",
    "RTCPSent",
    "ReceiveFAX",
    "Registry",
    "Reload",
    "Rename",
    "RequestBadFormat",
    "RequestNotAllowed",
    "RequestNotSupported",
    "ResourceListDetail",
    "SIPQualifyPeerDone",
    "SendFAX",
    "SessionLimit",
    "SessionTimeout",
    "Shutdown",
    "SoftHangupRequest",
    "SpanAlarm",
    "SpanAlarmClear",
    "Status",
    "StatusComplete",
    "SuccessfulAuth",
    "TransportDetail",
    "UnParkedCall",
    "UnexpectedAddress",
    "Unhold",
    "Unload",
    "UserEvent",
    "VarSet",
    "VoicemailPasswordChange",
    "Wink",
];

/// True when `name` is a documented event name (compared as Asterisk
/// does, ignoring ASCII case); returns its documented spelling.
pub fn documented_spelling(name: &str) -> Option<&'static str> {
    DOCUMENTED_EVENTS
        .iter()
        .find(|d| d.eq_ignore_ascii_case(name))
        .copied()
}

/// The classes each documented event is sent with, as
/// `(name, "class,class")`, sorted like [`DOCUMENTED_EVENTS`]: the flags of
/// the C calls that emit it (`emitted_flags` in `tests/data/ami_events.json`,
/// scraped from Asterisk's source), else its documented class
/// (`class_flags`); several flags (emit sites with different classes, or
/// `A|B`) are all listed. Asterisk sends an event to a session only when
/// *every* class of the event is in the session's mask, so a mask that
/// must let an event through needs all of them (push-down's mask,
/// [`crate::mapping::PushDown`]). A name missing here has no known class.
pub const EVENT_CLASSES: &[(&str, &str)] = &[
    ("AGIExecEnd", "agi"),
    ("AGIExecStart", "agi"),
    ("AOC-D", "aoc"),
    ("AOC-E", "aoc"),
    ("AOC-S", "aoc"),
    ("AgentCalled", "agent"),
    ("AgentComplete", "agent"),
    ("AgentConnect", "agent"),
    ("AgentDump", "agent"),
    ("AgentLogin", "agent"),
    ("AgentLogoff", "agent"),
    ("AgentRingNoAnswer", "agent"),
    ("Agents", "agent"),
    ("AgentsComplete", "agent"),
    ("Alarm", "system"),
    ("AlarmClear", "system"),
    ("AorDetail", "command"),
    ("AorList", "command"),
    ("AorListComplete", "command"),
    ("AsyncAGIEnd", "agi"),
    ("AsyncAGIExec", "agi"),
    ("AsyncAGIStart", "agi"),
    ("AttendedTransfer", "call"),
    ("AuthDetail", "command"),
    ("AuthList", "command"),
    ("AuthListComplete", "command"),
    ("AuthMethodNotAllowed", "security"),
    ("BlindTransfer", "call"),
    ("BridgeCreate", "call"),
    ("BridgeDestroy", "call"),
    ("BridgeEnter", "call"),
    ("BridgeInfoChannel", "command"),
    ("BridgeInfoComplete", "command"),
    ("BridgeLeave", "call"),
    ("BridgeMerge", "call"),
    ("BridgeVideoSourceUpdate", "call"),
    ("CEL", "call"),
    ("Cdr", "cdr"),
    ("ChallengeResponseFailed", "security"),
    ("ChallengeSent", "security"),
    ("ChanSpyStart", "call"),
    ("ChanSpyStop", "call"),
    ("ChannelTalkingStart", "call"),
    ("ChannelTalkingStop", "call"),
    ("ConfbridgeEnd", "call"),
    ("ConfbridgeJoin", "call"),
    ("ConfbridgeLeave", "call"),
    ("ConfbridgeList", "reporting"),
    ("ConfbridgeListRooms", "reporting"),
    ("ConfbridgeMute", "call"),
    ("ConfbridgeRecord", "call"),
    ("ConfbridgeStart", "call"),
    ("ConfbridgeStopRecord", "call"),
    ("ConfbridgeTalking", "call"),
    ("ConfbridgeUnmute", "call"),
    ("ContactList", "command"),
    ("ContactListComplete", "command"),
    ("ContactStatus", "system"),
    ("ContactStatusDetail", "command"),
    ("CoreShowChannel", "call"),
    ("CoreShowChannelMapComplete", "call"),
    ("CoreShowChannelsComplete", "call"),
    ("DAHDIChannel", "call"),
    ("DNDState", "system"),
    ("DTMFBegin", "dtmf"),
    ("DTMFEnd", "dtmf"),
    ("DeadlockStart", "system"),
    ("DeviceStateChange", "call"),
    ("DeviceStateListComplete", "command"),
    ("DialBegin", "call"),
    ("DialEnd", "call"),
    ("DialState", "call"),
    ("EndpointDetail", "command"),
    ("EndpointDetailComplete", "command"),
    ("EndpointList", "command"),
    ("EndpointListComplete", "command"),
    ("ExtensionStateListComplete", "command"),
    ("ExtensionStatus", "call"),
    ("FAXSession", "reporting"),
    ("FAXSessionsComplete", "call"),
    ("FAXSessionsEntry", "reporting"),
    ("FAXStats", "reporting"),
    ("FAXStatus", "call"),
    ("FailedACL", "security"),
    ("Flash", "call"),
    ("FullyBooted", "system"),
    ("Hangup", "call"),
    ("HangupHandlerPop", "dialplan"),
    ("HangupHandlerPush", "dialplan"),
    ("HangupHandlerRun", "dialplan"),
    ("HangupRequest", "call"),
    ("Hold", "call"),
    ("IdentifyDetail", "command"),
    ("InboundRegistrationDetail", "command"),
    ("InboundSubscriptionDetail", "command"),
    ("InvalidAccountID", "security"),
    ("InvalidPassword", "security"),
    ("InvalidTransport", "security"),
    ("Load", "system"),
    ("LoadAverageLimit", "security"),
    ("LocalBridge", "call"),
    ("LocalOptimizationBegin", "call"),
    ("LocalOptimizationEnd", "call"),
    ("LogChannel", "system"),
    ("MCID", "call"),
    ("MWIGet", "reporting"),
    ("MWIGetComplete", "reporting"),
    ("MeetmeEnd", "call"),
    ("MeetmeJoin", "call"),
    ("MeetmeLeave", "call"),
    ("MeetmeList", "call"),
    ("MeetmeListRooms", "call"),
    ("MeetmeMute", "call"),
    ("MeetmeTalkRequest", "call"),
    ("MeetmeTalking", "call"),
    ("MemoryLimit", "security"),
    ("MessageWaiting", "call"),
    ("MiniVoiceMail", "call"),
    ("MixMonitorMute", "call"),
    ("MixMonitorStart", "call"),
    ("MixMonitorStop", "call"),
    ("MonitorStart", "call"),
    ("MonitorStop", "call"),
    ("MusicOnHoldStart", "call"),
    ("MusicOnHoldStop", "call"),
    ("NewAccountCode", "call"),
    ("NewCallerid", "call"),
    ("NewConnectedLine", "call"),
    ("NewExten", "call,dialplan"),
    ("Newchannel", "call"),
    ("Newstate", "call"),
    ("OriginateResponse", "call"),
    ("OutboundRegistrationDetail", "command"),
    ("OutboundSubscriptionDetail", "command"),
    ("PJSIPMaintenanceStatus", "system"),
    ("ParkedCall", "call"),
    ("ParkedCallGiveUp", "call"),
    ("ParkedCallSwap", "call"),
    ("ParkedCallTimeOut", "call"),
    ("PeerStatus", "system"),
    ("Pickup", "call"),
    ("PresenceStateChange", "call"),
    ("PresenceStateListComplete", "command"),
    ("PresenceStatus", "call"),
    ("QueueCallerAbandon", "agent"),
    ("QueueCallerJoin", "agent"),
    ("QueueCallerLeave", "agent"),
    ("QueueEntry", "agent"),
    ("QueueMemberAdded", "agent"),
    ("QueueMemberPause", "agent"),
    ("QueueMemberPenalty", "agent"),
    ("QueueMemberRemoved", "agent"),
    ("QueueMemberRinginuse", "agent"),
    ("QueueMemberStatus", "agent"),
    ("QueueParams", "agent"),
    ("RTCPReceived", "reporting"),
    ("RTCPSent", "reporting"),
    ("ReceiveFAX", "call"),
    ("Registry", "system"),
    ("Reload", "system"),
    ("Rename", "call"),
    ("RequestBadFormat", "security"),
    ("RequestNotAllowed", "security"),
    ("RequestNotSupported", "security"),
    ("ResourceListDetail", "command"),
    ("SIPQualifyPeerDone", "call"),
    ("SendFAX", "call"),
    ("SessionLimit", "security"),
    ("SessionTimeout", "call"),
    ("Shutdown", "system"),
    ("SoftHangupRequest", "call"),
    ("SpanAlarm", "system"),
    ("SpanAlarmClear", "system"),
    ("Status", "call"),
    ("StatusComplete", "call"),
    ("SuccessfulAuth", "security"),
    ("TransportDetail", "command"),
    ("UnParkedCall", "call"),
    ("UnexpectedAddress", "security"),
    ("Unhold", "call"),
    ("Unload", "system"),
    ("UserEvent", "user"),
    ("VarSet", "dialplan"),
    ("VoicemailPasswordChange", "system,user"),
    ("Wink", "call"),
];

/// The class bits of a documented event ([`EVENT_CLASSES`]), compared
/// ignoring ASCII case; `None` when the class is not known.
pub fn event_class_bits(name: &str) -> Option<u32> {
    EVENT_CLASSES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, c)| ami_proto::privilege_bits(c.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_matches_tests_data() {
        let text = include_str!("../../tests/data/ami_events.json");
        let v: serde_json::Value = serde_json::from_str(text).expect("json");
        let mut names: Vec<&str> = v["events"]
            .as_object()
            .expect("events")
            .keys()
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        assert_eq!(names, DOCUMENTED_EVENTS);
    }

    /// The class table is the JSON's: `emitted_flags`, else `class_flags`,
    /// every flag a known class (else the event has no entry).
    #[test]
    fn the_classes_match_tests_data() {
        let text = include_str!("../../tests/data/ami_events.json");
        let v: serde_json::Value = serde_json::from_str(text).expect("json");
        let mut want = Vec::new();
        for (name, e) in v["events"].as_object().expect("events") {
            let flags = e
                .get("emitted_flags")
                .filter(|f| f.as_array().is_some_and(|a| !a.is_empty()))
                .or_else(|| e.get("class_flags"))
                .and_then(|f| f.as_array())
                .cloned()
                .unwrap_or_default();
            let classes: Vec<String> = flags
                .iter()
                .filter_map(|f| f.as_str())
                .flat_map(|f| f.split('|'))
                .map(|f| f.trim_start_matches("EVENT_FLAG_").to_ascii_lowercase())
                .collect();
            let bits: Vec<u32> = classes
                .iter()
                .map(|c| ami_proto::privilege_bits(c.as_bytes()))
                .collect();
            if !bits.is_empty() && bits.iter().all(|&b| b != 0) {
                want.push((name.clone(), bits.iter().fold(0, |a, b| a | b)));
            }
        }
        want.sort();
        let got: Vec<(String, u32)> = EVENT_CLASSES
            .iter()
            .map(|(n, c)| (n.to_string(), ami_proto::privilege_bits(c.as_bytes())))
            .collect();
        assert_eq!(got, want);
        assert_eq!(event_class_bits("newexten"), Some(2 | 2048));
        assert_eq!(event_class_bits("VarSet"), Some(2048));
        assert_eq!(event_class_bits("NoSuchEvent"), None);
    }

    /// What real servers sent agrees with the table: every class on the
    /// `Privilege:` of a tabled event of every capture in tests/traces is
    /// one of the table's (push-down's mask would otherwise lose it).
    #[test]
    fn the_captures_privileges_are_within_the_classes() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/traces");
        let mut checked = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !(name.ends_with(".ami") || name.ends_with(".ami.zst")) {
                continue;
            }
            let raw = std::fs::read(&path).unwrap();
            let data = if name.ends_with(".zst") {
                zstd::stream::decode_all(&raw[..]).unwrap()
            } else {
                raw
            };
            for f in ami_proto::decode_all(&data, ami_proto::Limits::default()) {
                let ami_proto::Frame::Message(m) = f else {
                    continue;
                };
                let (Some(event), Some(privilege)) = (m.event_name(), m.get_bytes("Privilege"))
                else {
                    continue;
                };
                let Some(bits) = event_class_bits(&event) else {
                    continue;
                };
                let sent = ami_proto::privilege_bits(privilege);
                assert_eq!(
                    sent & !bits,
                    0,
                    "{name}: {event} sent with {}",
                    String::from_utf8_lossy(privilege)
                );
                checked += 1;
            }
        }
        assert!(checked > 100_000, "{checked}");
    }

    #[test]
    fn lookup_ignores_case() {
        assert_eq!(documented_spelling("newchannel"), Some("Newchannel"));
        assert_eq!(documented_spelling("NoSuchEvent"), None);
    }
}
