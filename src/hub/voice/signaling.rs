//! Relaying WebRTC signaling between voice members: offers and answers (rebuilt line by line
//! under `force_relay`), candidates (rebuilt from their fields, or dropped), candidates held
//! with `buffer: true` until the pair's answer, and signaling that another node routed here.

use serde_json::Value;

use super::super::relay_only;
use super::MAX_BUFFERED_CANDIDATES;
use crate::cluster::event::{RoutedSignal, SignalKind};
use crate::hub::{ConnId, Effect, Hub, Now, Out};
use crate::protocol::{IceCandidate, ServerMessage, SessionDescription};

/// The unordered pair {a, b} as a key.
fn pair(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

pub(super) enum Description {
    Offer,
    Answer,
}

impl Hub {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn relay_description(
        &mut self,
        out: &mut Out,
        conn: ConnId,
        name: &str,
        target: Option<String>,
        description: Option<SessionDescription>,
        kind: Description,
        now: Now,
    ) {
        if !self.voice.contains(name) {
            self.webrtc_error(out, conn, "Not in voice chat", now);
            return;
        }
        let Some(description) = description else {
            let error = match kind {
                Description::Offer => "Invalid offer data",
                Description::Answer => "Invalid answer data",
            };
            self.webrtc_error(out, conn, error, now);
            return;
        };
        let target = target.filter(|t| t != name && self.voice.contains(t));
        let Some(target) = target else {
            self.webrtc_error(out, conn, "Target user not in voice chat", now);
            return;
        };
        let relayed = if self.settings.webrtc.force_relay {
            match relay_only::description_object(&description, &self.relays, &mut self.privacy) {
                Ok(rebuilt) => rebuilt,
                Err(relay_only::UnusableSdp) => {
                    let error = match kind {
                        Description::Offer => "Invalid offer data",
                        Description::Answer => "Invalid answer data",
                    };
                    self.webrtc_error(out, conn, error, now);
                    return;
                }
            }
        } else {
            Value::Object(description.raw)
        };
        let kind = match kind {
            Description::Offer => SignalKind::Offer,
            Description::Answer => SignalKind::Answer,
        };
        self.deliver_signal(out, name, &target, kind, relayed);
    }

    /// Hands rebuilt signaling to `to`: its connection here, or its node's inbox. An offer
    /// reopens the pair's negotiation, an answer closes it and releases buffered candidates.
    pub(in crate::hub) fn deliver_signal(
        &mut self,
        out: &mut Out,
        from: &str,
        to: &str,
        kind: SignalKind,
        payload: Value,
    ) {
        if let Some(node) = self.voice.remote_node_of(to) {
            let signal =
                RoutedSignal { node: node.to_string(), from: from.into(), to: to.into(), kind, payload };
            out.push(Effect::RouteSignal(signal));
        } else if let Some(to_conn) = self.voice.conn_of(to) {
            match kind {
                SignalKind::Offer => {
                    out.send(to_conn, &ServerMessage::WebrtcOffer { from_username: from, offer: &payload })
                }
                SignalKind::Answer => {
                    out.send(to_conn, &ServerMessage::WebrtcAnswer { from_username: from, answer: &payload })
                }
                SignalKind::Candidate => out.send(
                    to_conn,
                    &ServerMessage::WebrtcIceCandidate { from_username: from, candidate: &payload },
                ),
            }
        } else {
            return;
        }
        match kind {
            SignalKind::Offer => {
                self.voice.answered.remove(&pair(from, to));
            }
            SignalKind::Answer => {
                self.voice.answered.insert(pair(from, to));
                self.flush_buffered(out, from, to);
            }
            SignalKind::Candidate => {}
        }
    }

    /// After an answer between `a` and `b`, deliver what each buffered for the other, in order.
    pub(in crate::hub) fn flush_buffered(&mut self, out: &mut Out, a: &str, b: &str) {
        for (from, to) in [(b, a), (a, b)] {
            let Some(queue) = self.voice.buffered.remove(&(from.to_string(), to.to_string())) else {
                continue;
            };
            for candidate in queue {
                self.deliver_signal(out, from, to, SignalKind::Candidate, candidate);
            }
        }
    }

    /// Invalid candidates are dropped silently (the original's behaviour; clients expect no reply).
    pub(in crate::hub) fn relay_candidate(
        &mut self,
        out: &mut Out,
        name: &str,
        target: Option<String>,
        candidate: Option<Box<IceCandidate>>,
        buffer: bool,
    ) {
        let (Some(target), Some(candidate)) = (target, candidate) else { return };
        if !self.voice.contains(name) || target == name || !self.voice.contains(&target) {
            return;
        }
        let candidate = if self.settings.webrtc.force_relay {
            // Dropped candidates are counted (and logged at debug, without the address) there.
            match relay_only::candidate_object(&candidate, &self.relays, &mut self.privacy) {
                Ok(rebuilt) => rebuilt,
                Err(_) => return,
            }
        } else {
            Value::Object(candidate.raw)
        };
        // Hold the candidate until the pair's answer goes through, unless it already has (the
        // candidate was gathered after the answer): waiting for a *next* answer that may never
        // come would lose it.
        if buffer && !self.voice.answered.contains(&pair(name, &target)) {
            let queue = self.voice.buffered.entry((name.to_string(), target)).or_default();
            if queue.len() >= MAX_BUFFERED_CANDIDATES {
                queue.pop_front();
                tracing::warn!(
                    "buffered candidates for one peer pair exceeded {MAX_BUFFERED_CANDIDATES}; dropped the oldest"
                );
            }
            queue.push_back(candidate);
            return;
        }
        self.deliver_signal(out, name, &target, SignalKind::Candidate, candidate);
    }

    /// Signaling from another node's voice member for one of ours (already rebuilt there).
    pub fn remote_signal(&mut self, signal: RoutedSignal, _now: Now) -> Vec<Effect> {
        let mut out = Out::default();
        if self.voice.conn_of(&signal.to).is_none() {
            return out.effects; // left meanwhile: dropped, as a local target that left would be
        }
        // Only a member seated on another node signals through the inbox: an entry naming
        // anyone else is stale or forged.
        if self.voice.remote_node_of(&signal.from).is_none() {
            tracing::debug!("dropped routed signaling from a sender not seated on another node");
            return out.effects;
        }
        let payload = if self.settings.webrtc.force_relay {
            // Rebuilt again here (idempotent): the sending node may run without force_relay, and
            // anyone who can write to Redis can write an inbox entry.
            match self.rebuild_routed(signal.kind, signal.payload) {
                Some(payload) => payload,
                None => return out.effects,
            }
        } else {
            signal.payload
        };
        self.deliver_signal(&mut out, &signal.from, &signal.to, signal.kind, payload);
        out.effects
    }

    /// A routed payload parsed like a client's and rebuilt with the same relay-only functions:
    /// every field, extra keys dropped. `None`: it is not one we would relay.
    fn rebuild_routed(&mut self, kind: SignalKind, payload: Value) -> Option<Value> {
        let expected = match kind {
            SignalKind::Offer => "offer",
            SignalKind::Answer => "answer",
            SignalKind::Candidate => {
                let candidate = crate::protocol::ice_candidate(Some(payload))?;
                return relay_only::candidate_object(&candidate, &self.relays, &mut self.privacy).ok();
            }
        };
        let description = crate::protocol::session_description(Some(payload), expected)?;
        relay_only::description_object(&description, &self.relays, &mut self.privacy).ok()
    }
}
