use super::*;
use proptest::prelude::*;

const NEWCHANNEL: (&str, &str) = (
    "Newchannel",
    "Event: Newchannel\r\nChannel: XXX\r\nSomeheader: YYY\r\n",
);
const VARSET: (&str, &str) = (
    "VarSet",
    "Event: VarSet\r\nChannel: ABC\r\nSomeheader: XXX\r\n",
);

/// Whether a set holding only this filter sends the event.
fn sends(criteria: Option<&str>, pattern: &str, (name, text): (&str, &str)) -> bool {
    let mut set = FilterSet::default();
    set.add(EventFilter::new(criteria, pattern).expect("a valid filter"));
    set.should_send(name.as_bytes(), text.as_bytes())
}

/// The cases Asterisk 22 checks in its own unit test of filter creation
/// (`eventfilter_test_creation` in main/manager.c), as (MatchCriteria,
/// Filter, event, sent?). Asterisk's criteria are `eventfilter(<these>)`.
#[test]
fn asterisks_own_cases() {
    type Case = (
        Option<&'static str>,
        &'static str,
        (&'static str, &'static str),
        bool,
    );
    let cases: &[Case] = &[
        (None, "XXX", NEWCHANNEL, true),
        (None, "!XXX", VARSET, false),
        (Some("name(VarSet),method(none)"), "", VARSET, true),
        (
            Some("name(Newchannel),method(regex)"),
            "X[XYZ]X",
            NEWCHANNEL,
            true,
        ),
        (
            Some("name(Newchannel),method(regex)"),
            "X[abc]X",
            NEWCHANNEL,
            false,
        ),
        (
            Some("action(exclude),name(Newchannel),method(regex)"),
            "X[XYZ]X",
            NEWCHANNEL,
            false,
        ),
        (
            Some("action(exclude),name(Newchannel),method(regex)"),
            "X[abc]X",
            NEWCHANNEL,
            true,
        ),
        (
            Some("action(include),name(VarSet),header(Channel),method(starts_with)"),
            "AB",
            VARSET,
            true,
        ),
        (
            Some("action(include),name(VarSet),header(Channel),method(ends_with)"),
            "BC",
            VARSET,
            true,
        ),
        (
            Some("action(include),name(VarSet),header(Channel),method(exact)"),
            "ABC",
            VARSET,
            true,
        ),
        (
            Some("action(include),name(VarSet),header(Channel),method(exact)"),
            "XXX",
            VARSET,
            false,
        ),
        (
            Some("name(VarSet),header(Channel),method(exact)"),
            "!ZZZ",
            VARSET,
            true,
        ),
        (
            Some("action(exclude),name(VarSet),header(Channel),method(exact)"),
            "ZZZ",
            VARSET,
            true,
        ),
        (
            Some("action(include),name(VarSet),header(Someheader),method(exact)"),
            "!XXX",
            VARSET,
            true,
        ),
    ];
    for (i, &(criteria, pattern, event, want)) in cases.iter().enumerate() {
        assert_eq!(
            sends(criteria, pattern, event),
            want,
            "case {i}: {criteria:?} {pattern:?}"
        );
    }
}

/// Asterisk's invalid cases: format errors and regexes that do not compile.
#[test]
fn asterisks_own_invalid_cases() {
    let format: &[(Option<&str>, &str)] = &[
        (Some("action(include"), ""),
        (Some("action(inlude"), ""),
        (Some("nnnn(yyy"), "XXX"),
        (Some("eader(VarSet"), "XXX"),
        (Some("ethod(contains"), "XXX"),
        (Some("nnnn(yyy),header(VarSet),method(contains"), "XXX"),
        (Some("name(yyy),heder(VarSet),method(contains"), "XXX"),
        (Some("name(yyy),header(VarSet),mehod(contains"), "XXX"),
        (Some("name(yyy),header(VarSet),method(coains"), "XXX"),
        (Some("method(yyy)"), "XXX"),
        (None, ""),
        (None, "!"),
    ];
    for (criteria, pattern) in format {
        let e = EventFilter::new(*criteria, pattern).expect_err("invalid");
        assert!(
            matches!(e, FilterError::Format(_)),
            "{criteria:?} {pattern:?}: {e}"
        );
        assert_eq!(
            e.asterisk_message(),
            "Filter was formatted incorrectly.  Check the syntax of the filter given."
        );
    }
    for criteria in [None, Some("method(regex)")] {
        let e = EventFilter::new(criteria, "XX[X").expect_err("invalid");
        assert!(matches!(e, FilterError::Compile(_)), "{e}");
        assert_eq!(
            e.asterisk_message(),
            "Filter did not compile.  Check the syntax of the filter given."
        );
    }
}

/// `eventfilter()` with nothing inside is no filter; an empty
/// MatchCriteria is a legacy filter, as in Asterisk's `Filter` action.
#[test]
fn empty_criteria() {
    let e = EventFilter::new(Some(" "), "XXX").expect_err("blank criteria");
    assert!(matches!(e, FilterError::Format(_)), "{e}");
    assert!(sends(Some(""), "XXX", NEWCHANNEL));
}

/// POSIX without REG_NEWLINE: `.` crosses line ends and `^`/`$` anchor
/// the whole text, which ends with the blank line.
#[test]
fn regex_spans_the_whole_event() {
    let (n, t) = NEWCHANNEL;
    let f = |p: &str| {
        EventFilter::legacy(p)
            .expect("valid")
            .matches(n.as_bytes(), t.as_bytes())
    };
    assert!(f("Newchannel..Channel"), "`.` matches CR and LF");
    assert!(f("Event: Newchannel\r\nChannel"));
    assert!(f("^Event: Newchannel"));
    assert!(!f("^Channel: XXX"), "^ is the start of the text only");
    assert!(f("YYY\r\n$"));
    assert!(!f("newchannel"), "case-sensitive");
    assert!(f("[[:upper:]]{3}"), "POSIX classes");
    assert!(f("Channel: (XXX|ABC)"));
}

#[test]
fn header_values_skip_blanks_and_empty_values() {
    let text = b"Event: X\r\nChannel:\r\nChannel: \t  SIP/1\r\n\r\n";
    let f = EventFilter::new(Some("header(Channel),method(exact)"), "SIP/1").expect("valid");
    assert!(f.matches(b"X", text));
    let none = EventFilter::new(Some("header(Channel),method(none)"), "").expect("valid");
    assert!(none.matches(b"X", text));
    assert!(
        !none.matches(b"X", b"Event: X\r\nChannel:   \r\n\r\n"),
        "only empty values"
    );
    // `Channel:` is a prefix of the line, compared with its case.
    assert!(!f.matches(b"X", b"Event: X\r\nchannel: SIP/1\r\n\r\n"));
}

#[test]
fn action_overrides_the_bang() {
    let f =
        EventFilter::new(Some("action(include),name(X),method(contains)"), "!Y").expect("valid");
    assert!(!f.is_exclude());
    let f = EventFilter::new(Some("name(X),method(contains)"), "!Y").expect("valid");
    assert!(f.is_exclude());
}

#[test]
fn hostile_patterns_fail_to_compile_instead_of_growing() {
    let p = "(((a{1,100}){1,100}){1,100})";
    assert!(matches!(
        EventFilter::legacy(p),
        Err(FilterError::Compile(_))
    ));
    assert!(
        EventFilter::legacy("é").is_ok(),
        "non-ASCII literals match their bytes"
    );
}

/// One event name per filter, so that which filters match is known.
fn named(name: u8, exclude: bool) -> EventFilter {
    let bang = if exclude { "!" } else { "" };
    let c = format!("name(E{name}),method(none)");
    EventFilter::new(Some(&c), bang).expect("valid")
}

proptest! {
    /// The set's decision is Asterisk's four-case logic, which comes down
    /// to: (no include filter, or one matches) and no exclude matches.
    #[test]
    fn set_is_include_then_exclude(
        filters in proptest::collection::vec((0u8..6, any::<bool>()), 0..8),
        event in 0u8..6,
    ) {
        let mut set = FilterSet::default();
        for &(n, ex) in &filters {
            set.add(named(n, ex));
        }
        let name = format!("E{event}");
        let text = format!("Event: {name}\r\n\r\n");
        let has_inc = filters.iter().any(|&(_, ex)| !ex);
        let inc_hit = filters.iter().any(|&(n, ex)| !ex && n == event);
        let exc_hit = filters.iter().any(|&(n, ex)| ex && n == event);
        let want = (!has_inc || inc_hit) && !exc_hit;
        prop_assert_eq!(set.should_send(name.as_bytes(), text.as_bytes()), want);
        prop_assert_eq!(set.len(), filters.len());
    }

    /// Whatever a client sends as a filter, parsing answers (a filter or
    /// an error) and matching never panics.
    #[test]
    fn any_input_is_answered(
        criteria in proptest::option::of("[a-z_() ,!:.*\\[\\]{}0-9]{0,40}"),
        pattern in "[ -~]{0,40}",
        text in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        if let Ok(f) = EventFilter::new(criteria.as_deref(), &pattern) {
            let _ = f.matches(b"E", &text);
        }
    }
}
