//! The state machine's table, checked against an independent list of every allowed transition.

use super::*;
use EventKind as E;
use PluginState as S;

fn states() -> Vec<PluginState> {
    vec![
        S::Disabled,
        S::Starting,
        S::Running,
        S::Unhealthy,
        S::Upgrading {
            to_version: "2".into(),
        },
        S::BackingOff { next_attempt_ms: 5 },
        S::OutOfResources {
            next_attempt_ms: 5,
            reason: "r".into(),
        },
        S::Failed { reason: "f".into() },
        S::Stopping,
        S::Missing,
    ]
}

fn ended() -> Ended {
    Ended {
        reason: "boom".into(),
        exit: Some(ExitStatus::Code(1)),
        tail: vec!["last words".into()],
        limit: None,
    }
}

fn restart() -> AfterCrash {
    AfterCrash::Restart {
        delay: Duration::from_millis(7),
        next_attempt_ms: 9,
        count: 2,
    }
}

fn changes() -> Vec<Change> {
    let v = |from: &str, to: &str| (from.to_owned(), to.to_owned());
    vec![
        Change::Enable,
        Change::Disable {
            reason: "operator".into(),
        },
        Change::Stop,
        Change::Stopped {
            exit: ExitStatus::Code(0),
        },
        Change::Relaunch,
        Change::Retry,
        Change::Ready { restarted: false },
        Change::Ready { restarted: true },
        Change::MissedPing,
        Change::Pong,
        Change::Crashed {
            ended: ended(),
            then: restart(),
        },
        Change::Crashed {
            ended: ended(),
            then: AfterCrash::Disable { count: 10 },
        },
        Change::Failed { ended: ended() },
        Change::OutOfResources {
            reason: "EMFILE".into(),
            delay: Duration::from_millis(3),
            next_attempt_ms: 4,
        },
        Change::UpgradeStarted {
            from: v("1", "2").0,
            to: v("1", "2").1,
        },
        Change::Upgraded {
            from: "1".into(),
            to: "2".into(),
        },
        Change::UpgradeFailed { ended: ended() },
        Change::Replaced {
            from: "1".into(),
            to: "2".into(),
        },
        Change::Rejected {
            reason: "bad".into(),
        },
        Change::Removed,
        Change::Returned,
    ]
}

/// Every allowed transition: (from, change, enabled) -> (to, events). Anything not listed is
/// refused.
fn allowed(from: &PluginState, change: &Change, enabled: bool) -> Option<(S, Vec<E>)> {
    let same = from.clone();
    let running = matches!(
        from,
        S::Starting | S::Running | S::Unhealthy | S::Upgrading { .. }
    );
    Some(match change {
        Change::Enable => match from {
            S::Disabled | S::Failed { .. } => (S::Starting, vec![E::Enabled]),
            _ => (same, vec![E::Enabled]),
        },
        Change::Disable { .. } => match from {
            S::Disabled | S::Failed { .. } | S::Stopping => (S::Disabled, vec![E::Disabled]),
            S::Missing => (S::Missing, vec![E::Disabled]),
            _ => return None,
        },
        Change::Stop if *from != S::Missing => (S::Stopping, vec![]),
        Change::Stopped { .. } if *from == S::Stopping => (S::Stopping, vec![E::Stopped]),
        Change::Relaunch if matches!(from, S::Stopping | S::Failed { .. }) => (S::Starting, vec![]),
        Change::Retry => match from {
            S::BackingOff { .. } | S::OutOfResources { .. } => (S::Starting, vec![]),
            S::Stopping => (S::Stopping, vec![]),
            _ => return None,
        },
        Change::Ready { restarted } => match from {
            S::Starting if *restarted => (S::Running, vec![E::Started, E::Restarted]),
            S::Starting => (S::Running, vec![E::Started]),
            S::Stopping => (S::Stopping, vec![]),
            _ => return None,
        },
        Change::MissedPing => match from {
            S::Running => (S::Unhealthy, vec![E::Unhealthy]),
            S::Unhealthy | S::Upgrading { .. } | S::Stopping => (same, vec![]),
            _ => return None,
        },
        Change::Pong => match from {
            S::Unhealthy => (S::Running, vec![E::Recovered]),
            S::Running | S::Upgrading { .. } | S::Stopping => (same, vec![]),
            _ => return None,
        },
        Change::Crashed { then, .. } if running => match then {
            AfterCrash::Restart { .. } => (
                S::BackingOff { next_attempt_ms: 9 },
                vec![E::Crashed, E::Restarting],
            ),
            AfterCrash::Disable { .. } => (S::Disabled, vec![E::Crashed, E::Disabled]),
        },
        Change::Crashed { .. } if *from == S::Stopping => (S::Stopping, vec![E::Crashed]),
        Change::Failed { .. } if running => (
            S::Failed {
                reason: "boom".into(),
            },
            vec![E::Failed],
        ),
        Change::Failed { .. } if *from == S::Stopping => (S::Stopping, vec![E::Failed]),
        Change::OutOfResources { .. } => match from {
            S::Starting => (
                S::OutOfResources {
                    next_attempt_ms: 4,
                    reason: "EMFILE".into(),
                },
                vec![E::OutOfResources],
            ),
            S::Stopping => (S::Stopping, vec![]),
            _ => return None,
        },
        Change::UpgradeStarted { .. } => match from {
            S::Running | S::Unhealthy => (
                S::Upgrading {
                    to_version: "2".into(),
                },
                vec![E::Upgrading],
            ),
            S::Stopping => (S::Stopping, vec![]),
            _ => return None,
        },
        Change::Upgraded { .. } => match from {
            S::Upgrading { .. } => (S::Running, vec![E::Upgraded]),
            S::Stopping => (S::Stopping, vec![]),
            _ => return None,
        },
        Change::UpgradeFailed { .. } => match from {
            S::Upgrading { .. } => (S::Running, vec![E::UpgradeFailed]),
            S::Stopping => (S::Stopping, vec![]),
            _ => return None,
        },
        Change::Replaced { .. }
            if matches!(
                from,
                S::Disabled
                    | S::Failed { .. }
                    | S::BackingOff { .. }
                    | S::OutOfResources { .. }
                    | S::Stopping
            ) =>
        {
            (same, vec![E::Upgraded])
        }
        Change::Rejected { .. } if *from != S::Missing => (same, vec![E::UpgradeFailed]),
        Change::Removed if matches!(from, S::Disabled | S::Failed { .. } | S::Stopping) => {
            (S::Missing, vec![E::Removed])
        }
        Change::Returned if *from == S::Missing && enabled => (S::Starting, vec![E::Discovered]),
        Change::Returned if *from == S::Missing => (S::Disabled, vec![E::Discovered]),
        _ => return None,
    })
}

#[test]
fn every_allowed_transition_leads_where_the_table_says_and_every_other_is_refused() {
    let mut allowed_count = 0;
    let mut refused_count = 0;
    for from in states() {
        for change in changes() {
            for enabled in [true, false] {
                let got = next(&from, &change, enabled);
                match allowed(&from, &change, enabled) {
                    Some((to, kinds)) => {
                        allowed_count += 1;
                        let (got_to, got_kinds) = got.unwrap_or_else(|e| {
                            panic!("{change:?} from {from:?} should be allowed: {e}")
                        });
                        assert_eq!(got_to, to, "{change:?} from {from:?}");
                        assert_eq!(got_kinds, kinds.as_slice(), "{change:?} from {from:?}");
                    }
                    None => {
                        refused_count += 1;
                        let err =
                            got.expect_err(&format!("{change:?} from {from:?} should be refused"));
                        assert_eq!(err.from, from.name());
                        assert_eq!(err.change, change.name());
                    }
                }
            }
        }
    }
    // The table is not trivially all-allowed or all-refused.
    assert!(allowed_count > 100, "{allowed_count}");
    assert!(refused_count > 100, "{refused_count}");
}

#[test]
fn only_a_missing_plugin_returns_and_only_a_stopped_one_goes_missing() {
    for from in [
        S::Running,
        S::Starting,
        S::Unhealthy,
        S::BackingOff { next_attempt_ms: 1 },
    ] {
        assert!(next(&from, &Change::Removed, true).is_err(), "{from:?}");
        assert!(next(&from, &Change::Returned, true).is_err(), "{from:?}");
    }
    assert!(next(&S::Missing, &Change::Stop, true).is_err());
    assert!(next(&S::Missing, &Change::Relaunch, true).is_err());
}

#[test]
fn serving_states_are_running_unhealthy_and_upgrading() {
    let serving: Vec<&str> = states()
        .iter()
        .filter(|s| s.serves())
        .map(|s| s.name())
        .collect();
    assert_eq!(serving, ["running", "unhealthy", "upgrading"]);
    let names: Vec<&str> = states().iter().map(|s| s.name()).collect();
    assert_eq!(names, PluginState::NAMES, "states() lists every state once");
}

#[test]
fn events_carry_what_happened() {
    let crash = Change::Crashed {
        ended: ended(),
        then: restart(),
    };
    let (_, kinds) = next(&S::Running, &crash, true).unwrap();
    let evs = events("p", &crash, kinds);
    assert_eq!(evs[0].kind, E::Crashed);
    assert_eq!(evs[0].reason.as_deref(), Some("boom"));
    assert_eq!(evs[0].exit, Some(ExitStatus::Code(1)));
    assert_eq!(evs[0].stderr_tail, ["last words"]);
    assert_eq!(evs[1].kind, E::Restarting);
    assert_eq!(evs[1].delay_ms, Some(7));
    assert_eq!(evs[1].reason.as_deref(), Some("crash 2 in a row"));

    let unstable = Change::Crashed {
        ended: ended(),
        then: AfterCrash::Disable { count: 10 },
    };
    let (_, kinds) = next(&S::Running, &unstable, true).unwrap();
    let evs = events("p", &unstable, kinds);
    assert!(
        evs[1]
            .reason
            .as_deref()
            .unwrap()
            .contains("10 times in a row")
    );

    let up = Change::Upgraded {
        from: "1.0".into(),
        to: "1.1".into(),
    };
    let evs = events("p", &up, &[E::Upgraded]);
    assert_eq!(evs[0].reason.as_deref(), Some("version 1.0 to 1.1"));
}
