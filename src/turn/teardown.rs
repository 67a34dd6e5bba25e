//! Ending allocations: when they expire, when their user leaves voice, and at shutdown.
//!
//! [`sweep_expired`] looks at every allocation once a second: past its lifetime it is ended
//! (relay socket closed, table entry and quota slot released, a TCP/TLS client's connection
//! closed), otherwise its expired permissions and channels are forgotten. When a user leaves
//! voice (any reason), [`teardown_departed`] ends every allocation made under their name at
//! once ([`delete_allocations_of`]); [`delete_allocations_of_chat_user`] does the same for every
//! session of a chat user when the operator revokes their TURN access.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::time::unix_now;
use crate::turn::auth::chat_user_of;
use crate::turn::dispatch::Dispatcher;

/// How often lifetimes are checked (lifetimes are whole seconds).
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Ends allocations whose lifetime passed and forgets expired grants, until shutdown.
pub async fn sweep_expired(dispatcher: Arc<Dispatcher>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => break,
        }
        let now = unix_now();
        for allocation in dispatcher.allocations.expired(now) {
            if dispatcher.end_allocation(&allocation).await {
                tracing::debug!(user = %allocation.user, "turn allocation expired");
            }
        }
        for allocation in dispatcher.allocations.all() {
            allocation.forget_expired_grants(now);
        }
    }
}

/// Deletes the allocations of every user who leaves voice, until shutdown.
pub async fn teardown_departed(
    dispatcher: Arc<Dispatcher>,
    mut departures: mpsc::UnboundedReceiver<String>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let user = tokio::select! {
            user = departures.recv() => match user { Some(u) => u, None => break },
            _ = shutdown.changed() => break,
        };
        let deleted = delete_allocations_of(&dispatcher, &user).await;
        if deleted > 0 {
            tracing::info!(user = %user, allocations = deleted, "turn allocations deleted: user left voice chat");
        }
    }
}

/// Deletes every allocation whose REST username names `user`; returns how many.
pub async fn delete_allocations_of(dispatcher: &Dispatcher, user: &str) -> usize {
    delete_allocations_where(dispatcher, |turn_user| turn_user == user).await
}

/// Deletes every allocation of a chat user, whatever the session (the operator revoked their
/// TURN access); returns how many.
pub async fn delete_allocations_of_chat_user(dispatcher: &Dispatcher, chat_user: &str) -> usize {
    delete_allocations_where(dispatcher, |turn_user| chat_user_of(turn_user) == chat_user).await
}

async fn delete_allocations_where(dispatcher: &Dispatcher, names_user: impl Fn(&str) -> bool) -> usize {
    let mut deleted = 0;
    for allocation in dispatcher.allocations.all().into_iter().filter(|a| names_user(&a.user)) {
        if dispatcher.end_allocation(&allocation).await {
            deleted += 1;
        }
    }
    deleted
}

/// Ends every allocation (shutdown).
pub async fn delete_all(dispatcher: &Dispatcher) {
    for allocation in dispatcher.allocations.all() {
        dispatcher.end_allocation(&allocation).await;
    }
}
