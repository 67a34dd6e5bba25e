//! What the hub asks of the world: `Effect`s, the only output of every hub method, and `Out`,
//! how hub code collects them (a message serialized once, its frame shared by every recipient).

use super::ConnId;
use crate::cluster::event::{ClusterEvent, Owner, RoutedSignal};
use crate::protocol::{Frame, HistoryEntry, Lane, ServerMessage};

/// What the runner must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Queue a frame for one connection, in its outbound `lane`.
    Send {
        to: ConnId,
        frame: Frame,
        lane: Lane,
    },
    /// Queue one frame for many connections (a fan-out): serialized once, shared by all of
    /// them, one effect however many recipients.
    Broadcast {
        to: Vec<ConnId>,
        frame: Frame,
        lane: Lane,
    },
    /// Close after the frames already queued for this connection have been written.
    Close {
        conn: ConnId,
        code: u16,
        reason: String,
    },
    /// Append to the persisted history; must be durable before the following sends go out.
    Persist(HistoryEntry),
    /// Hash the password, then create the account unless `reserved` (a name kept for the
    /// operator): the hash runs either way, so the answer time does not tell which it was.
    CreateAccount {
        conn: ConnId,
        name: String,
        password: String,
        reserved: bool,
    },
    CheckLogin {
        conn: ConnId,
        name: String,
        password: String,
    },
    SaveBan {
        name: String,
        banned: bool,
    },
    /// Someone joined voice: the relay may admit `turn_user` (`<name>:<session tag>`).
    VoiceJoined {
        turn_user: String,
    },
    /// Someone left voice (for any reason): the relay deletes what `turn_user` holds.
    VoiceLeft {
        turn_user: String,
    },
    /// Cluster mode: append this change to the shared log (it takes effect when read back);
    /// `origin` is told if it cannot be written.
    Publish {
        origin: Option<ConnId>,
        event: ClusterEvent,
    },
    /// Cluster mode: claim `name` for `conn` (renaming from `previous`), logging `event` if won;
    /// answered with `Hub::name_claimed`.
    ClaimName {
        conn: ConnId,
        name: String,
        previous: Option<String>,
        event: ClusterEvent,
    },
    /// Cluster mode: let go of `name` if `owner` still holds it, logging `event`.
    ReleaseName {
        name: String,
        owner: Owner,
        event: ClusterEvent,
    },
    /// Cluster mode: take a voice seat if fewer than `max` are taken cluster-wide, logging
    /// `event` (`VoiceJoined`); answered with `Hub::voice_seated`.
    JoinVoice {
        conn: ConnId,
        name: String,
        max: usize,
        event: ClusterEvent,
    },
    /// Cluster mode: signaling for a voice member on another node.
    RouteSignal(RoutedSignal),
    /// Cluster mode: the relay verifies with `secret` from now on (and the previous one for
    /// `grace_s` seconds).
    RotateRelaySecret {
        secret: Vec<u8>,
        grace_s: u64,
    },
}

/// Collects effects; serializes each message once and shares the frame between recipients.
#[derive(Default)]
pub(crate) struct Out {
    pub(super) effects: Vec<Effect>,
}

impl Out {
    pub(super) fn send(&mut self, to: ConnId, message: &ServerMessage) {
        self.effects.push(Effect::Send { to, frame: message.frame(), lane: message.lane() });
    }

    /// One message for every connection in `to`: serialized once, one effect.
    pub(super) fn broadcast(&mut self, to: Vec<ConnId>, message: &ServerMessage) {
        if !to.is_empty() {
            self.effects.push(Effect::Broadcast { to, frame: message.frame(), lane: message.lane() });
        }
    }

    pub(super) fn system(&mut self, to: ConnId, text: &str) {
        self.send(to, &ServerMessage::System { text });
    }

    pub(super) fn close(&mut self, conn: ConnId, code: u16, reason: &str) {
        self.effects.push(Effect::Close { conn, code, reason: reason.to_string() });
    }

    pub(super) fn push(&mut self, effect: Effect) {
        self.effects.push(effect);
    }
}
