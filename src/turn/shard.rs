//! UDP listener shards: one thread per SO_REUSEPORT listener socket (IPv4 and, with `listen6`,
//! the IPv6 one of the same index), each running its own single-threaded tokio runtime.
//!
//! Why a thread and not tasks on the server's multi-threaded runtime: at paced load every
//! datagram woke a parked worker (the I/O driver's thread got the readiness, another worker was
//! unparked with a futex to run the task, work stealing moved tasks between cores), which cost
//! more than relaying the datagram. A shard's runtime polls its own epoll and runs the woken
//! task on the same thread, as coturn's relay threads do with libevent. Everything a shard's
//! listener creates stays on it: an Allocate handled by its read loop binds the relay sockets
//! with this runtime's driver and `tokio::spawn`s their read loops here, and relayed media
//! to its clients leaves through its own duplicate of the listener socket. The kernel keeps a
//! client's 5-tuple on one listener socket, so a client's allocation lives on the shard that
//! hears it. TCP and TLS stay on the server's runtime.
//!
//! A shard ends when the relay shuts down (the shutdown signal, or its sender dropped): its
//! read loops stop; it keeps running the relay loops until [`ShardSet::finish`] says every
//! allocation was deleted, then drops its runtime (and what is left on it) and says it is done.

use std::io;
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::{oneshot, watch};

use crate::turn::dispatch::Dispatcher;
use crate::turn::udp::{read_loop, ListenerConn};

/// One shard before it starts: its runtime (sockets already registered with its driver) and
/// the listener sockets it reads.
pub struct Shard {
    /// Taken by the shard's thread; still here only if the relay failed to start.
    runtime: Option<tokio::runtime::Runtime>,
    listeners: Vec<Arc<ListenerConn>>,
}

/// A shard that never started (the relay failed to start after it was made) is dropped inside
/// the server's runtime, where dropping a runtime would panic: it is let go in the background.
impl Drop for Shard {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Shard {
    /// A shard runtime; register its sockets inside [`Shard::register`].
    pub fn new() -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(Shard { runtime: Some(runtime), listeners: Vec::new() })
    }

    /// Makes tokio sockets from `std` ones on this shard's driver, so their readiness wakes this
    /// shard's thread (and no other).
    pub fn register(&self, socket: std::net::UdpSocket) -> io::Result<UdpSocket> {
        let runtime = self.runtime.as_ref().ok_or_else(|| io::Error::other("shard already started"))?;
        let _entered = runtime.enter();
        UdpSocket::from_std(socket)
    }

    /// This shard reads `listener`.
    pub fn add_listener(&mut self, listener: Arc<ListenerConn>) {
        self.listeners.push(listener);
    }
}

/// The running shards, for an orderly stop.
pub struct ShardSet {
    /// Fires (or its sender is dropped) when every read loop of the shard returned.
    read_loops_done: Vec<oneshot::Receiver<()>>,
    /// Set true once the allocations are gone: the shards may drop their runtimes.
    finish: watch::Sender<bool>,
    /// Fires when a shard's thread dropped its runtime.
    stopped: Vec<oneshot::Receiver<()>>,
}

impl ShardSet {
    /// Starts one thread per shard.
    pub fn start(
        shards: Vec<Shard>,
        dispatcher: &Arc<Dispatcher>,
        shutdown: &watch::Receiver<bool>,
    ) -> io::Result<Self> {
        let (finish, finish_rx) = watch::channel(false);
        let mut read_loops_done = Vec::new();
        let mut stopped = Vec::new();
        for (index, mut shard) in shards.into_iter().enumerate() {
            let (loops_tx, loops_rx) = oneshot::channel();
            let (stopped_tx, stopped_rx) = oneshot::channel();
            let dispatcher = dispatcher.clone();
            let shutdown = shutdown.clone();
            let mut finish_rx = finish_rx.clone();
            // Moved whole into the thread: if the thread cannot start, `Shard`'s drop lets the
            // runtime go without panicking here.
            std::thread::Builder::new().name(format!("turn-shard-{index}")).spawn(move || {
                let Some(runtime) = shard.runtime.take() else { return };
                let listeners = std::mem::take(&mut shard.listeners);
                runtime.block_on(async move {
                    let loops: Vec<_> = listeners
                        .into_iter()
                        .map(|l| tokio::spawn(read_loop(dispatcher.clone(), l, shutdown.clone())))
                        .collect();
                    for read_loop in loops {
                        let _ = read_loop.await;
                    }
                    let _ = loops_tx.send(());
                    // The relay loops run until their allocations are deleted.
                    let _ = finish_rx.wait_for(|finished| *finished).await;
                });
                drop(runtime);
                let _ = stopped_tx.send(());
            })?;
            read_loops_done.push(loops_rx);
            stopped.push(stopped_rx);
        }
        Ok(ShardSet { read_loops_done, finish, stopped })
    }

    /// Waits until every shard's read loops returned (after the shutdown signal).
    pub async fn read_loops_stopped(&mut self) {
        for done in std::mem::take(&mut self.read_loops_done) {
            let _ = done.await;
        }
    }

    /// The allocations are deleted: lets the shards stop, and waits until they did.
    pub async fn finish(self) {
        let _ = self.finish.send(true);
        for stopped in self.stopped {
            let _ = stopped.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The relay failing to start after its shards were made (a later bind fails, say) drops
    /// them inside the server's runtime: that must be an error for the operator, not a panic.
    #[tokio::test]
    async fn a_shard_that_never_started_is_dropped_inside_a_runtime_without_panicking() {
        let shard = Shard::new().unwrap();
        let std_socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        std_socket.set_nonblocking(true).unwrap();
        let socket = shard.register(std_socket).unwrap();
        assert!(socket.local_addr().unwrap().port() != 0, "registered with the shard's driver");
        drop(socket);
        drop(shard);
    }
}
