//! Call setup under load, for `relaychat-bench signaling`: offer one-way latency and the
//! offer->answer round trip between two voice participants while the chat fan-out runs (step
//! 2), and the time fresh connections take from TCP connect to `webrtc-joined` (step 3).
//!
//! The two voice participants live on a thread and runtime of their own (`CallPair`): the
//! generator's main runtime reads 1,000 sockets on two threads, and an offer that reached the
//! callee's socket in time would otherwise wait for its reading task to get a turn behind the
//! others (measured: that wait was most of the offer latency, see BENCHMARKS.md). Like a browser,
//! which reads its one socket on its own, the pair measures the server and not the generator.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use tokio::sync::{oneshot, watch};

use super::{name, SignalingCli};
use crate::histogram::Histogram;
use crate::load::now_ns;
use crate::ws_session::{self, sdp_with_seq, Behaviour, Counters, Event, Session};

/// What the offer phase measured: offer one-way, offer->answer round trip, offers unanswered.
pub(super) type OfferResult = (Histogram, Histogram, u64);

/// The caller and callee, connected on their own thread; `measure` runs the offers.
pub(super) struct CallPair {
    go: oneshot::Sender<()>,
    result: oneshot::Receiver<OfferResult>,
}

impl CallPair {
    /// Connect both (names `rtca0`/`rtcb0` after `prefix`) on a new thread with a
    /// single-threaded runtime; they stay connected until `stop` fires.
    pub(super) async fn open(
        c: &SignalingCli,
        counters: &Arc<Counters>,
        stop: &watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        let (ready_tx, ready_rx) = oneshot::channel::<anyhow::Result<()>>();
        let (go, go_rx) = oneshot::channel::<()>();
        let (result_tx, result) = oneshot::channel::<OfferResult>();
        let (c, counters, mut stop) = (c.clone(), counters.clone(), stop.clone());
        std::thread::Builder::new().name("call-pair".into()).spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.into()));
                    return;
                }
            };
            rt.block_on(async move {
                let open = |who: &str, auto_answer: bool| {
                    let b = Behaviour { forward_events: true, auto_answer };
                    let (url, user) = (c.url.clone(), name(&c.prefix, who, 0));
                    let (counters, stop) = (counters.clone(), stop.clone());
                    async move { ws_session::open(&url, &user, b, counters, stop).await }
                };
                let pair =
                    async { Ok::<_, anyhow::Error>((open("rtca", false).await?, open("rtcb", true).await?)) };
                let (caller, callee) = match pair.await {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let (caller, callee) = if go_rx.await.is_ok() {
                    let (one_way, rtt, lost, caller, callee) = offer_answer(&c, caller, callee).await;
                    let _ = result_tx.send((one_way, rtt, lost));
                    (caller, callee)
                } else {
                    (caller, callee)
                };
                // Stay connected (counted as listeners) until the run ends, then close politely.
                let _ = stop.wait_for(|s| *s).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
                drop((caller, callee));
            });
        })?;
        ready_rx.await.context("call-pair thread ended")??;
        Ok(CallPair { go, result })
    }

    /// Run the offer phase now (on the pair's thread) and wait for its numbers; with `offers`
    /// 0 (a server without voice, like the Node original's default) nothing is sent.
    pub(super) async fn measure(self, offers: usize) -> OfferResult {
        if offers == 0 {
            return (Histogram::default(), Histogram::default(), 0);
        }
        let _ = self.go.send(());
        self.result.await.unwrap_or((Histogram::default(), Histogram::default(), offers as u64))
    }
}

/// Both join voice; the caller sends `offers` offers spread over the fan-out, the callee answers.
async fn offer_answer(
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
