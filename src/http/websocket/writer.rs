//! The writing half of a WebSocket session: two writers share the socket's sink, one per
//! outbound queue the hub fills.
//!
//! - Call signaling (`webrtc-*`, the urgent queue) is written by the session task itself, on the
//!   server's main runtime, where the session also reads and the hub runs.
//! - Chat and everything else is written by the session's chat writer (`run_chat_writer`), a task
//!   on a runtime of its own (`ChatWriters`). A chat fan-out wakes every listener's writer at
//!   once; on one runtime those thousand tasks stood in the run queue in front of the caller's
//!   read of its `webrtc-offer`, the hub, and the callee's write of it (measured: offers waited
//!   68 ms at p50 behind a chat flood, 6-14 ms after the urgent queue and the hub's lanes).
//!   With the writers on their own threads, the main runtime has little to run and the
//!   operating system's scheduler, which favours a thread that slept, lets call setup through.
//!
//! The two take turns on the sink through a fair mutex, a batch each: a writer feeds whatever
//! waits in its queue (up to `BATCH_FRAMES`) into tungstenite's write buffer and flushes once,
//! so a busy session costs a write system call per batch instead of per frame. A call frame
//! waits at most for the chat batch being written. Long messages go out as fragments so that no
//! session keeps a history-sized write buffer.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use tokio::sync::{mpsc, Mutex};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::hub::runner::UnwrittenCalls;
use crate::protocol::Frame;

/// Outgoing messages longer than this are sent as several frames (see `feed_text`).
const FRAGMENT_BYTES: usize = 4 * 1024;
/// Bytes of a batch gathered in tungstenite's write buffer before it goes to the socket (the
/// flush at the end of a batch writes the rest). Half a fragment: small chat frames go out
/// together, and the buffer's capacity stays within what one fragment made it anyway.
pub(super) const WRITE_BATCH_BYTES: usize = FRAGMENT_BYTES / 2;
/// Frames written per batch at most, so the other writer gets its turn in between.
const BATCH_FRAMES: usize = 64;

/// The socket's sending half, shared by the session's two writers.
pub(super) type SharedSink<K> = Arc<Mutex<K>>;

/// Why a chat writer stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ChatWriterEnd {
    /// The hub let go of the session and everything it had queued was written.
    Drained,
    /// The socket failed (the peer is gone).
    Failed,
    /// A write did not finish within the write timeout: the client does not read. The stream
    /// may hold part of a frame, so nothing more may be written, not even a close frame.
    Stalled,
}

/// The chat writers' runtime: its own threads, so that a fan-out's thousand runnable writers
/// never stand in front of the sessions' reads, the hub and call signaling (module doc).
pub struct ChatWriters {
    /// `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
}

impl ChatWriters {
    /// One worker thread per core.
    pub fn start() -> std::io::Result<Self> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("chat-writer")
            .enable_all()
            .build()?;
        Ok(Self { runtime: Some(runtime) })
    }

    pub fn handle(&self) -> tokio::runtime::Handle {
        match &self.runtime {
            Some(runtime) => runtime.handle().clone(),
            None => tokio::runtime::Handle::current(),
        }
    }
}

impl Drop for ChatWriters {
    fn drop(&mut self) {
        // Dropped from async code at shutdown, where a blocking shutdown would panic; a writer
        // still running then only had a dead peer left to wait for.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Writes the session's chat queue until the hub lets go of it and it is drained, or the
/// socket fails or stalls (each batch within `write_timeout`). A chat frame is written only
/// once no call frame queued before it waits (`UnwrittenCalls`): the session task writes those.
pub(super) async fn run_chat_writer<K>(
    sink: SharedSink<K>,
    mut chat: mpsc::Receiver<Frame>,
    calls: Arc<UnwrittenCalls>,
    write_timeout: Duration,
) -> ChatWriterEnd
where
    K: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    let mut held = None;
    loop {
        let first = match held.take() {
            Some(frame) => frame,
            None => match chat.recv().await {
                Some(frame) => frame,
                None => return ChatWriterEnd::Drained,
            },
        };
        let written = tokio::time::timeout(write_timeout, async {
            // Taken off the queue first, then checked: a call frame queued before `first` is
            // counted by now (the hub counts before it queues).
            calls.all_written().await;
            let mut sink = sink.lock().await;
            feed_text(&mut *sink, first).await?;
            for _ in 1..BATCH_FRAMES {
                let Ok(frame) = chat.try_recv() else { break };
                if calls.any() {
                    held = Some(frame); // after the call frames, in the next batch
                    break;
                }
                feed_text(&mut *sink, frame).await?;
            }
            sink.flush().await
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return ChatWriterEnd::Failed,
            Err(_) => return ChatWriterEnd::Stalled,
        }
    }
}

/// Writes `first` and whatever else already waits in `queue` (up to `BATCH_FRAMES`) with one
/// flush at the end; returns how many frames it wrote.
pub(super) async fn write_batch<K>(
    sink: &mut K,
    first: Frame,
    queue: &mut mpsc::Receiver<Frame>,
) -> Result<usize, WsError>
where
    K: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    feed_text(sink, first).await?;
    let mut written = 1;
    while written < BATCH_FRAMES {
        let Ok(frame) = queue.try_recv() else { break };
        feed_text(sink, frame).await?;
        written += 1;
    }
    sink.flush().await?;
    Ok(written)
}

/// Writes every frame already waiting in `queue`, then flushes (before a close frame); returns
/// how many frames it wrote.
pub(super) async fn drain<K>(sink: &mut K, queue: &mut mpsc::Receiver<Frame>) -> Result<usize, WsError>
where
    K: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    let mut written = 0;
    while let Ok(frame) = queue.try_recv() {
        feed_text(sink, frame).await?;
        written += 1;
    }
    sink.flush().await?;
    Ok(written)
}

/// Feeds one text message to the sink (written by the next flush, or earlier once
/// `WRITE_BATCH_BYTES` have gathered); long ones (the history) as fragments of at most `FRAGMENT_BYTES`
/// (RFC 6455 section 5.4; every client library reassembles them). tungstenite's write buffer keeps
/// the capacity of the largest frame it ever wrote, so without this every session would carry a
/// history-sized buffer for its whole life. Fragments are zero-copy slices of the shared frame
/// and never split a UTF-8 sequence.
async fn feed_text<K>(sink: &mut K, text: Frame) -> Result<(), WsError>
where
    K: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    if text.len() <= FRAGMENT_BYTES {
        return sink.feed(Message::Text(text)).await;
    }
    let bytes = Bytes::from(text);
    let mut start = 0;
    while start < bytes.len() {
        let mut end = (start + FRAGMENT_BYTES).min(bytes.len());
        while end < bytes.len() && bytes[end] & 0xC0 == 0x80 {
            end -= 1; // back off to a character boundary
        }
        let opcode = if start == 0 { OpCode::Data(Data::Text) } else { OpCode::Data(Data::Continue) };
        let fragment = WsFrame::message(bytes.slice(start..end), opcode, end == bytes.len());
        sink.feed(Message::Frame(fragment)).await?;
        start = end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;

    /// A sink that records what is fed to it and when it is flushed; `stall` makes every flush
    /// wait forever (a client that stopped reading), `fail` makes it fail.
    #[derive(Default)]
    struct Recorder {
        seen: Vec<String>,
        stall: bool,
        fail: bool,
    }

    impl futures_util::Sink<Message> for Recorder {
        type Error = WsError;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), WsError> {
            let text = item.into_text().map(|t| t.to_string()).unwrap_or_default();
            self.seen.push(text);
            Ok(())
        }
        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            if self.stall {
                return Poll::Pending;
            }
            if self.fail {
                return Poll::Ready(Err(WsError::ConnectionClosed));
            }
            self.seen.push("flush".into());
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }
    }

    fn no_calls() -> Arc<UnwrittenCalls> {
        Arc::default()
    }

    fn queue(frames: &[&str]) -> (mpsc::Sender<Frame>, mpsc::Receiver<Frame>) {
        let (tx, rx) = mpsc::channel(256);
        for frame in frames {
            tx.try_send(Frame::from(*frame)).unwrap();
        }
        (tx, rx)
    }

    #[tokio::test]
    async fn a_batch_is_what_waits_with_one_flush() {
        let (_tx, mut rx) = queue(&["chat 2", "chat 3"]);
        let mut sink = Recorder::default();
        write_batch(&mut sink, Frame::from("chat 1"), &mut rx).await.unwrap();
        assert_eq!(sink.seen, ["chat 1", "chat 2", "chat 3", "flush"]);
    }

    #[tokio::test]
    async fn a_batch_stops_at_batch_frames_so_the_other_writer_gets_a_turn() {
        let many: Vec<String> = (0..100).map(|i| format!("chat {i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let (_tx, mut rx) = queue(&refs);
        let mut sink = Recorder::default();
        write_batch(&mut sink, Frame::from("first"), &mut rx).await.unwrap();
        assert_eq!(sink.seen.len(), BATCH_FRAMES + 1, "64 frames and one flush");
        assert_eq!(sink.seen.last().map(String::as_str), Some("flush"));
        assert_eq!(rx.len(), 100 - (BATCH_FRAMES - 1), "the rest waits for the next batch");
    }

    #[tokio::test]
    async fn the_chat_writer_drains_its_queue_after_the_hub_lets_go() {
        let (tx, rx) = queue(&["one", "two", "three"]);
        drop(tx); // the hub dropped the session's link
        let sink = Arc::new(Mutex::new(Recorder::default()));
        let end = run_chat_writer(sink.clone(), rx, no_calls(), Duration::from_secs(5)).await;
        assert_eq!(end, ChatWriterEnd::Drained);
        assert_eq!(sink.lock().await.seen, ["one", "two", "three", "flush"]);
    }

    #[tokio::test]
    async fn a_chat_writer_that_cannot_write_in_time_says_it_stalled() {
        let (_tx, rx) = queue(&["one"]);
        let sink = Arc::new(Mutex::new(Recorder { stall: true, ..Recorder::default() }));
        let end = run_chat_writer(sink.clone(), rx, no_calls(), Duration::from_millis(50)).await;
        assert_eq!(end, ChatWriterEnd::Stalled);
        // The lock was given back: the session can still decide what to do with the socket.
        assert!(sink.try_lock().is_ok());
    }

    #[tokio::test]
    async fn a_chat_writer_whose_socket_fails_says_so() {
        let (_tx, rx) = queue(&["one"]);
        let sink = Arc::new(Mutex::new(Recorder { fail: true, ..Recorder::default() }));
        assert_eq!(
            run_chat_writer(sink, rx, no_calls(), Duration::from_secs(5)).await,
            ChatWriterEnd::Failed
        );
    }

    #[tokio::test]
    async fn a_call_frame_waits_at_most_for_the_chat_batch_being_written() {
        // The chat writer holds the sink for one batch; the urgent writer's lock is granted
        // right after it (the mutex is fair), before the chat writer's next batch.
        let many: Vec<String> = (0..200).map(|i| format!("chat {i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let (tx, rx) = queue(&refs);
        drop(tx);
        let sink = Arc::new(Mutex::new(Recorder::default()));
        let guard = sink.lock().await; // hold it so both writers queue up on the lock
        let chat = tokio::spawn(run_chat_writer(sink.clone(), rx, no_calls(), Duration::from_secs(5)));
        tokio::task::yield_now().await; // the chat writer is now waiting for the lock
        let (_urgent_tx, mut urgent_rx) = queue(&[]);
        let urgent_sink = sink.clone();
        let urgent = tokio::spawn(async move {
            let mut sink = urgent_sink.lock().await;
            write_batch(&mut *sink, Frame::from("webrtc-offer"), &mut urgent_rx).await
        });
        tokio::task::yield_now().await;
        drop(guard);
        urgent.await.unwrap().unwrap();
        assert_eq!(chat.await.unwrap(), ChatWriterEnd::Drained);
        let seen = sink.lock().await.seen.clone();
        let offer_at = seen.iter().position(|s| s == "webrtc-offer").unwrap();
        assert!(offer_at <= BATCH_FRAMES + 1, "the offer came after at most one chat batch: {offer_at}");
        assert_eq!(seen.iter().filter(|s| s.starts_with("chat")).count(), 200, "no chat frame lost");
    }

    #[tokio::test]
    async fn a_chat_frame_waits_for_the_call_frame_queued_before_it() {
        // One hub step: `webrtc-joined` (call) then "Alice joined voice chat" (chat), as the
        // hub queues them: counted, queued, then the chat frame. The chat writer must not
        // write the notice until the session task has written the call frame.
        let calls = no_calls();
        let (urgent_tx, mut urgent_rx) = queue(&[]);
        calls.queuing();
        urgent_tx.try_send(Frame::from("webrtc-joined")).unwrap();
        let (chat_tx, chat_rx) = queue(&["Alice joined voice chat"]);
        drop(chat_tx);
        let sink = Arc::new(Mutex::new(Recorder::default()));
        let chat =
            tokio::spawn(run_chat_writer(sink.clone(), chat_rx, calls.clone(), Duration::from_secs(5)));
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(sink.lock().await.seen.is_empty(), "the chat writer waited for the call frame");
        // The session task writes the call frame, then says so.
        let first = urgent_rx.recv().await.unwrap();
        let written = write_batch(&mut *sink.lock().await, first, &mut urgent_rx).await.unwrap();
        calls.done(written);
        assert_eq!(chat.await.unwrap(), ChatWriterEnd::Drained);
        assert_eq!(sink.lock().await.seen, ["webrtc-joined", "flush", "Alice joined voice chat", "flush"]);
    }

    #[tokio::test]
    async fn a_batch_stops_before_a_chat_frame_queued_after_an_unwritten_call_frame() {
        // chat 1 is taken; then a call frame and chat 2 are queued (in that order): chat 2
        // goes in a later batch, after the call frame is written, and is not lost.
        let calls = no_calls();
        let (chat_tx, chat_rx) = queue(&["chat 1"]);
        let sink = Arc::new(Mutex::new(Recorder::default()));
        let guard = sink.lock().await; // the writer takes chat 1, then waits for the lock
        let chat =
            tokio::spawn(run_chat_writer(sink.clone(), chat_rx, calls.clone(), Duration::from_secs(5)));
        tokio::task::yield_now().await;
        calls.queuing();
        chat_tx.try_send(Frame::from("chat 2")).unwrap();
        drop(chat_tx);
        drop(guard);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(sink.lock().await.seen, ["chat 1", "flush"], "chat 2 held back");
        sink.lock().await.seen.push("webrtc-offer".into()); // the session task's write
        calls.done(1);
        assert_eq!(chat.await.unwrap(), ChatWriterEnd::Drained);
        assert_eq!(sink.lock().await.seen, ["chat 1", "flush", "webrtc-offer", "chat 2", "flush"]);
    }
}
