//! Name claims and releases, voice seats and signaling routed to another node's inbox.

use super::publish::entry_json;
use super::Writer;
use crate::cluster::event::{ClusterEvent, Owner, RoutedSignal, SeatRecord};
use crate::cluster::INBOX_MAX_ENTRIES;
use crate::hub::{ClaimOutcome, ConnId, VoiceOutcome};

impl Writer {
    pub(super) async fn claim(
        &mut self,
        conn: ConnId,
        name: &str,
        previous: Option<&str>,
        event: &ClusterEvent,
    ) -> ClaimOutcome {
        let owner = Owner { node: self.ctx.node_id.clone(), conn };
        let ttl = self.ctx.settings.presence_ttl_ms;
        let result: redis::RedisResult<i64> = match previous {
            None => {
                let keys = [self.ctx.keys.name(name), self.ctx.keys.bans()];
                let mut invocation = self.invocation(&self.scripts.claim, &keys);
                invocation
                    .arg(owner.to_string())
                    .arg(ttl)
                    .arg(event.to_json())
                    .arg(entry_json(event))
                    .arg(name);
                invocation.invoke_async(&mut self.conn.clone()).await
            }
            Some(old) => {
                let keys = [self.ctx.keys.name(name), self.ctx.keys.name(old), self.ctx.keys.bans()];
                let mut invocation = self.invocation(&self.scripts.rename, &keys);
                invocation
                    .arg(owner.to_string())
                    .arg(ttl)
                    .arg(event.to_json())
                    .arg(entry_json(event))
                    .arg(name)
                    .arg(old);
                invocation.invoke_async(&mut self.conn.clone()).await
            }
        };
        match self.settle(result, "cluster name claim") {
            Ok(1) => ClaimOutcome::Won,
            Ok(-1) => ClaimOutcome::Banned,
            Ok(_) => ClaimOutcome::Taken,
            Err(_) => ClaimOutcome::StoreDown,
        }
    }

    /// True once Redis has answered (whether or not the name was still ours).
    pub(super) async fn release(&mut self, name: &str, owner: &Owner, event: &ClusterEvent) -> bool {
        let mut invocation = self.invocation(&self.scripts.release, &[self.ctx.keys.name(name)]);
        invocation.arg(owner.to_string()).arg(event.to_json()).arg(entry_json(event)).arg(name);
        let result: redis::RedisResult<i64> = invocation.invoke_async(&mut self.conn.clone()).await;
        self.settle(result, "cluster name release (retried later)").is_ok()
    }

    pub(super) async fn join_voice(&mut self, name: &str, max: usize, event: &ClusterEvent) -> VoiceOutcome {
        let ClusterEvent::VoiceJoined { owner, turn_user, media, .. } = event else {
            return VoiceOutcome::StoreDown;
        };
        let seat = SeatRecord {
            node: owner.node.clone(),
            conn: owner.conn,
            turn_user: turn_user.clone(),
            media: media.clone(),
        };
        let seat = serde_json::to_string(&seat).unwrap_or_default();
        let mut invocation = self.invocation(&self.scripts.voice_join, &[self.ctx.keys.voice()]);
        invocation.arg(name).arg(seat).arg(max).arg(event.to_json()).arg(entry_json(event));
        let result: redis::RedisResult<i64> = invocation.invoke_async(&mut self.conn.clone()).await;
        match self.settle(result, "cluster voice join") {
            Ok(1) => VoiceOutcome::Seated,
            Ok(0) => VoiceOutcome::Full,
            Ok(_) => VoiceOutcome::AlreadySeated,
            Err(_) => VoiceOutcome::StoreDown,
        }
    }

    pub(super) async fn route(&mut self, signal: RoutedSignal) {
        let inbox = self.ctx.keys.inbox(&signal.node);
        let json = serde_json::to_string(&signal).unwrap_or_default();
        let result: redis::RedisResult<String> = redis::cmd("XADD")
            .arg(inbox)
            .arg("MAXLEN")
            .arg("~")
            .arg(INBOX_MAX_ENTRIES)
            .arg("*")
            .arg("s")
            .arg(json)
            .query_async(&mut self.conn.clone())
            .await;
        // A failure is like a lost UDP packet to WebRTC: the peers' own retries and ICE
        // restarts cover it.
        let _ = self.settle(result, "routing signaling to another node");
    }
}
