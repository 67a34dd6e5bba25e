//! The chat rate limit's sliding window and the per-kind message budgets (typing floods,
//! voice join/leave flapping and what of it reaches the history).

use std::time::Duration;

use serde_json::json;

use super::*;
use crate::hub::budget::MessageBudgetSettings;

#[test]
fn the_rate_limit_window_slides() {
    let mut h = Harness::new(|_| {});
    let alice = h.connect(Some("Alice"));
    for _ in 0..3 {
        h.chat(alice, "x");
        assert_eq!(h.frames_to(alice)[0]["type"], "chat");
    }
    h.chat(alice, "x");
    assert_eq!(h.texts_to(alice), ["You are sending messages too fast. Limit is 3 per second."]);
    h.advance(Duration::from_millis(1000));
    h.chat(alice, "x");
    assert_eq!(h.frames_to(alice)[0]["type"], "chat");
}

#[test]
fn a_typing_flood_is_not_relayed_past_its_budget_and_a_sustained_flood_disconnects() {
    let mut h = Harness::new(|_| {});
    let alice = h.connect(Some("Alice"));
    let bob = h.connect(Some("Bob"));
    let mut relayed = 0;
    let mut closed = None;
    for _ in 0..1000 {
        h.send(alice, json!({"type": "typing"}));
        relayed += h.frames_to(bob).len();
        closed = closed.or(h.closed(alice));
    }
    let budget = MessageBudgetSettings::default();
    assert_eq!(relayed, budget.typing.burst as usize, "only the burst is relayed at once");
    assert_eq!(closed, Some(CLOSE_POLICY), "a thousand frames at once is a flood");
    // Bob was never affected.
    h.chat(bob, "still here");
    assert_eq!(h.frames_to(bob)[0]["text"], "still here");
}

#[test]
fn join_leave_flapping_is_refused_past_its_budget_and_persisted_once() {
    let mut h = Harness::new(|_| {});
    let alice = h.connect(Some("Alice"));
    let bob = h.connect(Some("Bob"));
    let mut persisted: Vec<String> = Vec::new();
    let mut refusals = 0;
    for i in 0..40 {
        let kind = if i % 2 == 0 { "webrtc-join" } else { "webrtc-leave" };
        h.send(alice, json!({"type": kind, "mediaTypes": ["audio"]}));
        refusals += h
            .frames_to(alice)
            .iter()
            .filter(|f| f["error"] == "Too many voice join/leave requests. Please wait a moment.")
            .count();
        persisted.extend(h.effects.iter().filter_map(|e| match e {
            Effect::Persist(entry) => Some(entry.text.clone()),
            _ => None,
        }));
    }
    let budget = MessageBudgetSettings::default();
    let admitted = budget.voice_membership.burst as usize;
    assert_eq!(refusals, 40 - admitted, "a burst at once, then refused");
    assert_eq!(
        persisted,
        [
            "Alice joined voice chat",
            "Alice left voice chat",
            "Alice joined voice chat",
            "Alice left voice chat"
        ],
        "flapping persists only the allowance"
    );
    // The 10 admitted requests end with Alice out of voice, as the history says: nothing to
    // settle. Make her end up in voice, still within the interval: shown live, not persisted.
    h.advance(Duration::from_secs(2));
    h.send(alice, json!({"type": "webrtc-join", "mediaTypes": ["audio"]}));
    assert!(!h.effects.iter().any(|e| matches!(e, Effect::Persist(_))));
    assert_eq!(h.texts_to(bob), ["Alice joined voice chat"]);
    // Once the interval passes, the history gets her real state, without a second broadcast.
    h.advance(Duration::from_secs(61));
    h.tick();
    let settled: Vec<&HistoryEntry> = h
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::Persist(entry) => Some(entry),
            _ => None,
        })
        .collect();
    assert_eq!(settled.len(), 1);
    assert_eq!(settled[0].text, "Alice joined voice chat");
    assert!(h.frames_to(bob).is_empty());
}
