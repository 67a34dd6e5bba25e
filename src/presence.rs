//! Who is in voice chat right now: the one fact the relay needs from the chat side.
//!
//! The hub driver writes it (join, leave, disconnect, kick, ban); the relay's synchronous auth
//! handler reads it on every Allocate and Refresh, so reads take a short read-lock and never
//! await. When someone leaves, registered listeners are told at once so the relay can delete
//! that user's allocations (teardown must not wait for allocation lifetimes to run out).

use std::collections::HashSet;
use std::sync::{Mutex, RwLock};

type DepartureListener = Box<dyn Fn(&str) + Send + Sync>;

#[derive(Default)]
pub struct VoicePresence {
    members: RwLock<HashSet<String>>,
    listeners: Mutex<Vec<DepartureListener>>,
}

impl VoicePresence {
    pub fn new() -> Self {
        Self::default()
    }

    /// True while `user` is connected and in voice chat.
    pub fn is_in_voice(&self, user: &str) -> bool {
        self.members.read().unwrap_or_else(|e| e.into_inner()).contains(user)
    }

    pub fn count(&self) -> usize {
        self.members.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn joined(&self, user: &str) {
        self.members.write().unwrap_or_else(|e| e.into_inner()).insert(user.to_string());
    }

    /// Removes `user` and tells every listener (the relay tears their allocations down).
    pub fn left(&self, user: &str) {
        let was_member = self.members.write().unwrap_or_else(|e| e.into_inner()).remove(user);
        if was_member {
            for listener in self.listeners.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                listener(user);
            }
        }
    }

    /// Registers a callback run (synchronously, so keep it short: send on a channel) whenever
    /// a user leaves voice chat for any reason.
    pub fn on_departure(&self, listener: impl Fn(&str) + Send + Sync + 'static) {
        self.listeners.lock().unwrap_or_else(|e| e.into_inner()).push(Box::new(listener));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn departures_are_announced_once() {
        let presence = VoicePresence::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        presence.on_departure(move |user| sink.lock().unwrap().push(user.to_string()));
        presence.joined("alice");
        assert!(presence.is_in_voice("alice"));
        presence.left("alice");
        presence.left("alice");
        presence.left("bob");
        assert!(!presence.is_in_voice("alice"));
        assert_eq!(*seen.lock().unwrap(), vec!["alice".to_string()]);
    }
}
