//! Call setup under load, for `relaychat-bench signaling`: offer one-way latency and the
//! offer->answer round trip between two voice participants while the chat fan-out runs (step
//! 2), and the time fresh connections take from TCP connect to `webrtc-joined` (step 3).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;

use super::{name, SignalingCli};
use crate::histogram::Histogram;
use crate::load::now_ns;
use crate::ws_session::{self, sdp_with_seq, Behaviour, Counters, Event, Session};

/// Both join voice; the caller sends `offers` offers spread over the fan-out, the callee answers.
pub(super) async fn offer_answer(
    c: &SignalingCli,
    mut caller: Session,
    mut callee: Session,
) -> (Histogram, Histogram, u64, Session, Session) {
    let (mut one_way, mut rtt) = (Histogram::default(), Histogram::default());
    let mut ce = caller.events.take();
    let mut ee = callee.events.take();
    let join = |s: &Session| json!({"type": "webrtc-join", "token": s.token, "mediaTypes": ["audio"]});
    caller.send(&join(&caller));
    callee.send(&join(&callee));
    // Wait for both webrtc-joined.
    for ev in [ce.as_mut(), ee.as_mut()].into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(e) = ev.recv().await {
                if matches!(e, Event::Joined { .. }) {
                    break;
                }
            }
        })
        .await;
    }
    let gap = Duration::from_secs_f64(c.fanout_secs / c.offers.max(1) as f64);
    let mut sent_at: HashMap<u64, u64> = HashMap::new();
    let (mut got_offer, mut got_answer) = (0u64, 0u64);
    let end = tokio::time::Instant::now() + Duration::from_secs_f64(c.fanout_secs) + Duration::from_secs(3);
    let mut tick = tokio::time::interval(gap.max(Duration::from_millis(1)));
    let mut seq = 0u64;
    let (Some(ce_rx), Some(ee_rx)) = (ce.as_mut(), ee.as_mut()) else {
        return (one_way, rtt, c.offers as u64, caller, callee);
    };
    while tokio::time::Instant::now() < end && got_answer < c.offers as u64 {
        tokio::select! {
            _ = tick.tick(), if (seq as usize) < c.offers => {
                sent_at.insert(seq, now_ns());
                caller.send(&json!({
                    "type": "webrtc-offer", "token": caller.token,
                    "targetUsername": callee.name, "offer": sdp_with_seq("offer", seq),
                }));
                seq += 1;
            }
            Some(e) = ee_rx.recv() => {
                if let Event::Offer { seq, at } = e {
                    if let Some(t) = sent_at.get(&seq) { one_way.record(at.saturating_sub(*t)); got_offer += 1; }
                }
            }
            Some(e) = ce_rx.recv() => {
                if let Event::Answer { seq, at } = e {
                    if let Some(t) = sent_at.get(&seq) { rtt.record(at.saturating_sub(*t)); got_answer += 1; }
                }
            }
            _ = tokio::time::sleep_until(end) => break,
        }
    }
    let _ = got_offer;
    caller.events = ce;
    callee.events = ee;
    caller.send(&json!({"type": "webrtc-leave", "token": caller.token}));
    callee.send(&json!({"type": "webrtc-leave", "token": callee.token}));
    (one_way, rtt, seq.saturating_sub(got_answer), caller, callee)
}

/// Fresh connections, one at a time: connect -> session-token -> webrtc-join -> webrtc-joined.
pub(super) async fn join_times(
    c: &SignalingCli,
    counters: &Arc<Counters>,
    stop: &watch::Receiver<bool>,
) -> (Histogram, Histogram, usize, Option<String>) {
    let (mut tok, mut joined, mut failed) = (Histogram::default(), Histogram::default(), 0);
    let mut first_error = None;
    for i in 0..c.joins {
        let t0 = now_ns();
        let b = Behaviour { forward_events: true, auto_answer: false };
        let Ok(mut s) =
            ws_session::open(&c.url, &name(&c.prefix, "j", i), b, counters.clone(), stop.clone()).await
        else {
            failed += 1;
            continue;
        };
        tok.record(now_ns() - t0);
        s.send(&json!({"type": "webrtc-join", "token": s.token, "mediaTypes": ["audio"]}));
        let mut ok = false;
        if let Some(ev) = s.events.as_mut() {
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while let Some(e) = ev.recv().await {
                    match e {
                        Event::Joined { at, .. } => {
                            joined.record(at.saturating_sub(t0));
                            ok = true;
                            break;
                        }
                        Event::Error { text } => {
                            first_error.get_or_insert(text);
                            break;
                        }
                        _ => {}
                    }
                }
            })
            .await;
        }
        if !ok {
            failed += 1;
        }
        s.send(&json!({"type": "webrtc-leave", "token": s.token}));
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(s);
    }
    (tok, joined, failed, first_error)
}
