//! Ending allocations: when the crate closes one, and when its user leaves voice chat.
//!
//! The crate reports every allocation it closes (expiry, Refresh 0, deletion, shutdown) on an
//! `alloc_close_notify` channel per manager; [`closed_allocations`] releases the table entry
//! (quota slot, permissions, channels) and the active gauge. When a user leaves voice (any
//! reason), [`teardown_departed`] deletes every allocation made under their name at once
//! through the crate's `Manager::delete_allocations_by_username` (which matches the full REST
//! username `<expiry>:<user>`, so the names are looked up first).
//! [`delete_allocations_of_chat_user`] does the same for every session of a chat user when the
//! operator revokes their TURN access.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use turn::allocation::AllocationInfo;

use crate::turn::allocations::Transport;
use crate::turn::auth::chat_user_of;
use crate::turn::credentials::parse_username;
use crate::turn::dispatch::Dispatcher;

/// Records allocations the crate closed, until `finished` (then drains what is queued).
pub async fn closed_allocations(
    dispatcher: Arc<Dispatcher>,
    transport: Transport,
    mut rx: mpsc::Receiver<AllocationInfo>,
    mut finished: watch::Receiver<bool>,
) {
    let release = |info: AllocationInfo| {
        if dispatcher.allocations.release((transport, info.five_tuple.src_addr)) {
            dispatcher.counters.allocations_active.fetch_sub(1, Ordering::Relaxed);
        }
    };
    loop {
        tokio::select! {
            info = rx.recv() => match info {
                Some(info) => release(info),
                None => break,
            },
            _ = finished.changed() => {
                while let Ok(info) = rx.try_recv() {
                    release(info);
                }
                break;
            }
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
    for manager in dispatcher.managers.all() {
        let infos = manager.get_allocations_info(None).await;
        let names: HashSet<String> = infos
            .into_values()
            .filter(|info| parse_username(&info.username).is_some_and(|u| names_user(u.user)))
            .map(|info| {
                deleted += 1;
                info.username
            })
            .collect();
        for name in names {
            manager.delete_allocations_by_username(&name).await;
        }
    }
    deleted
}
