//! The writing half of a WebSocket session: the two outbound queues the hub fills (call
//! signaling in a small urgent one, everything else in the chat one) and how they reach the
//! socket.
//!
//! The writer takes from the urgent queue first, and writes whatever is waiting when it wakes
//! up as one batch: every frame fed into tungstenite's write buffer, one flush at the end, so a
//! busy session costs a write syscall per batch instead of per frame. Urgent frames are flushed
//! on their own before the batch's chat frames are fed: otherwise a call frame would wait in the
//! write buffer until up to `BATCH_FRAMES` chat frames behind it were written too, and if the
//! client reads slowly that flush waits for room in the socket. Long messages go out as
//! fragments so that no session keeps a history-sized write buffer.

use std::task::Poll;

use bytes::Bytes;
use futures_util::SinkExt;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::CLOSE_GRACE;
use crate::protocol::Frame;

/// Outgoing messages longer than this are sent as several frames (see `feed_text`).
const FRAGMENT_BYTES: usize = 4 * 1024;
/// Bytes of a batch gathered in tungstenite's write buffer before it goes to the socket (the
/// flush at the end of a batch writes the rest). Half a fragment: small chat frames go out
/// together, and the buffer's capacity stays within what one fragment made it anyway.
pub(super) const WRITE_BATCH_BYTES: usize = FRAGMENT_BYTES / 2;
/// Frames written per batch at most, so the task yields to reading its socket in between.
const BATCH_FRAMES: usize = 64;

/// A session's two outbound queues, as the writer sees them.
pub(super) struct Outbound {
    /// Call signaling (`webrtc-*`): always taken first.
    pub(super) urgent: mpsc::Receiver<Frame>,
    pub(super) chat: mpsc::Receiver<Frame>,
}

impl Outbound {
    /// The next frame to write, urgent first, and whether it is urgent; `None` once the hub
    /// let go of the session and both queues are drained. Cancel-safe.
    pub(super) async fn next(&mut self) -> Option<(Frame, bool)> {
        std::future::poll_fn(|cx| {
            let urgent = self.urgent.poll_recv(cx);
            if let Poll::Ready(Some(frame)) = urgent {
                return Poll::Ready(Some((frame, true)));
            }
            match self.chat.poll_recv(cx) {
                Poll::Ready(Some(frame)) => Poll::Ready(Some((frame, false))),
                // Both senders live in one `ConnLink`, dropped together.
                Poll::Ready(None) if urgent.is_ready() => Poll::Ready(None),
                _ => Poll::Pending,
            }
        })
        .await
    }

    /// A frame already waiting, urgent first.
    fn try_next(&mut self) -> Option<Frame> {
        self.try_next_urgent().or_else(|| self.chat.try_recv().ok())
    }

    /// An urgent frame already waiting.
    fn try_next_urgent(&mut self) -> Option<Frame> {
        self.urgent.try_recv().ok()
    }
}

/// Writes `first` and whatever else is waiting (up to `BATCH_FRAMES`, urgent frames first at
/// every step) with one flush at the end; urgent frames (`first` among them if `first_is_urgent`)
/// are flushed as soon as no more urgent frames wait, before the next chat frame is fed.
pub(super) async fn write_batch<K>(
    sink: &mut K,
    first: Frame,
    first_is_urgent: bool,
    queued: &mut Outbound,
) -> Result<(), WsError>
where
    K: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    feed_text(sink, first).await?;
    let mut urgent_unflushed = first_is_urgent;
    for _ in 1..BATCH_FRAMES {
        if let Some(frame) = queued.try_next_urgent() {
            feed_text(sink, frame).await?;
            urgent_unflushed = true;
            continue;
        }
        if std::mem::take(&mut urgent_unflushed) {
            sink.flush().await?;
        }
        let Ok(frame) = queued.chat.try_recv() else { break };
        feed_text(sink, frame).await?;
    }
    sink.flush().await
}

/// Sends what was queued before a close request, within `CLOSE_GRACE` for all of it; a client
/// that does not read by then gets nothing more (`writable` false: maybe half a frame sent).
pub(super) async fn flush_before_close<K>(sink: &mut K, queued: &mut Outbound, writable: &mut bool)
where
    K: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    let flushed = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(frame) = queued.try_next() {
            feed_text(sink, frame).await?;
        }
        sink.flush().await
    })
    .await;
    if !matches!(flushed, Ok(Ok(()))) {
        *writable = false;
    }
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

    /// A sink that records what is fed to it and when it is flushed.
    #[derive(Default)]
    struct Recorder(Vec<String>);

    impl futures_util::Sink<Message> for Recorder {
        type Error = WsError;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), WsError> {
            let text = item.into_text().map(|t| t.to_string()).unwrap_or_default();
            self.0.push(text);
            Ok(())
        }
        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            self.0.push("flush".into());
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }
    }

    fn queues(urgent: &[&str], chat: &[&str]) -> Outbound {
        let (urgent_tx, urgent_rx) = mpsc::channel(8);
        let (chat_tx, chat_rx) = mpsc::channel(8);
        for frame in urgent {
            urgent_tx.try_send(Frame::from(*frame)).unwrap();
        }
        for frame in chat {
            chat_tx.try_send(Frame::from(*frame)).unwrap();
        }
        Outbound { urgent: urgent_rx, chat: chat_rx }
    }

    #[tokio::test]
    async fn urgent_frames_reach_the_socket_before_the_chat_frames_of_the_batch_are_fed() {
        let mut queued = queues(&["answer"], &["chat 1", "chat 2"]);
        let mut sink = Recorder::default();
        write_batch(&mut sink, Frame::from("offer"), true, &mut queued).await.unwrap();
        assert_eq!(sink.0, ["offer", "answer", "flush", "chat 1", "chat 2", "flush"]);
    }

    #[tokio::test]
    async fn an_urgent_frame_queued_behind_chat_is_fed_next_and_flushed_at_once() {
        // A batch that starts with chat: the urgent frame still goes next, flushed before the
        // rest of the chat is fed; a batch of chat alone is one flush.
        let mut queued = queues(&["offer"], &["chat 2"]);
        let mut sink = Recorder::default();
        write_batch(&mut sink, Frame::from("chat 1"), false, &mut queued).await.unwrap();
        assert_eq!(sink.0, ["chat 1", "offer", "flush", "chat 2", "flush"]);
        let mut queued = queues(&[], &["chat 2", "chat 3"]);
        let mut sink = Recorder::default();
        write_batch(&mut sink, Frame::from("chat 1"), false, &mut queued).await.unwrap();
        assert_eq!(sink.0, ["chat 1", "chat 2", "chat 3", "flush"]);
    }
}
