//! One WebSocket session: the upgrade handshake, then a task that parses frames into `Inbound`
//! messages for the hub and writes what the hub queues for it. Bad input never ends up anywhere
//! but this connection.
//!
//! The handshake is ours (not warp's `ws` filter) so that the socket's buffers can be sized:
//! tungstenite's default 128 KiB read buffer is zero-filled on the first read, which made every
//! idle session cost ~144 KiB of RSS. Chat frames are small; 4 KiB reads keep 10,000 idle
//! sessions in tens of megabytes.
//!
//! Every step a peer could stall has a deadline (`[timeouts]`): the upgrade, the first message,
//! and every write, so a client that stops reading is disconnected instead of pinning a task,
//! a socket and its buffers. When the hub drops a session (its queue overflowed) the task ends
//! at once, even in the middle of a write to a full socket.
//!
//! What the hub sends arrives in two queues, written by `writer` (urgent call signaling first,
//! in batches); this module is the handshake and the session loop that reads, parses and
//! budgets the client's frames and hands them to the hub.

mod writer;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hyper::header::{HeaderValue, CONNECTION, HOST, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use hyper_util::rt::TokioIo;
use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use warp::http::{Request, StatusCode};
use warp::reply::Response;

pub use self::writer::ChatWriters;
use self::writer::{drain, run_chat_writer, write_batch, ChatWriterEnd, SharedSink, WRITE_BATCH_BYTES};
use super::admission::Ticket;
use super::HttpState;
use crate::hub::budget::{Admission, IngressBudget, MessageBudgetSettings};
use crate::hub::lanes::ConnOrder;
use crate::hub::runner::{
    ConnLink, HubEvent, HubHandle, UnwrittenCalls, OUTBOUND_QUEUE_FRAMES, URGENT_QUEUE_FRAMES,
};
use crate::hub::{ConnId, ConnectInfo};
use crate::protocol::{parse_inbound, Inbound};

/// Largest WebSocket message accepted; bigger ones close the connection with 1009. Above the
/// 64 KiB SDP limit so that an oversized offer gets its protocol error instead.
pub const MAX_MESSAGE_BYTES: usize = 128 * 1024;
/// Bytes read from the socket at a time (larger messages still arrive whole).
const READ_BUFFER_BYTES: usize = 4 * 1024;
fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BATCH_BYTES)
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES))
}

/// Does this request ask for a WebSocket (RFC 6455 section 4.2.1)? Any path may upgrade.
pub fn is_upgrade_request<B>(request: &Request<B>) -> bool {
    let header_has = |name, token: &str| {
        request
            .headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|part| part.trim().eq_ignore_ascii_case(token)))
    };
    request.method() == hyper::Method::GET
        && header_has(CONNECTION, "upgrade")
        && header_has(UPGRADE, "websocket")
        && request.headers().contains_key(SEC_WEBSOCKET_KEY)
}

/// Deadlines of a running session.
#[derive(Debug, Clone)]
pub struct SessionTimeouts {
    /// Until the first frame (any frame, pings included) arrives.
    pub first_message: Duration,
    /// For each write, and for the close handshake.
    pub write: Duration,
    /// The ingress rate of every frame together (`[message_budgets] ingress`).
    pub budgets: Arc<MessageBudgetSettings>,
}

impl SessionTimeouts {
    pub fn from_settings(settings: &crate::config::Settings) -> Self {
        Self {
            first_message: Duration::from_millis(settings.timeouts.first_message_ms),
            write: Duration::from_millis(settings.timeouts.write_ms),
            budgets: Arc::new(settings.message_budgets.clone()),
        }
    }
}

/// Is a browser page from `origin` allowed to open a WebSocket? An empty list allows every
/// origin; a request without an Origin header is not from a browser page and always allowed.
pub fn origin_allowed(origin: Option<&str>, allowed: &[String]) -> bool {
    match origin {
        _ if allowed.is_empty() => true,
        None => true,
        Some(origin) => allowed.iter().any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin)),
    }
}

/// Answers the upgrade with 101 and starts the session once hyper hands over the connection.
/// `ticket` is the connection's admission slot: it stops counting as pending once upgraded
/// and is released when the session ends.
pub fn accept<B>(
    mut request: Request<B>,
    peer: SocketAddr,
    state: &Arc<HttpState>,
    ticket: Ticket,
) -> Response {
    let origin = request.headers().get("origin").map(|v| v.to_str().unwrap_or("\u{fffd}"));
    if !origin_allowed(origin, &state.settings.network.allowed_origins) {
        tracing::debug!(?origin, "websocket refused: origin not allowed");
        let mut response = Response::new("Origin not allowed".into());
        *response.status_mut() = StatusCode::FORBIDDEN;
        return response;
    }
    let version_ok = request.headers().get("sec-websocket-version").is_some_and(|v| v == "13");
    let Some(key) = request.headers().get(SEC_WEBSOCKET_KEY).filter(|_| version_ok).cloned() else {
        let mut response = Response::new("WebSocket version 13 required".into());
        *response.status_mut() = StatusCode::UPGRADE_REQUIRED;
        response.headers_mut().insert("sec-websocket-version", HeaderValue::from_static("13"));
        return response;
    };
    let header = |name| request.headers().get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    let requested_name = request.uri().query().and_then(|query| {
        form_urlencoded::parse(query.as_bytes())
            .find(|(name, _)| name == "username")
            .map(|(_, value)| value.into_owned())
            // An empty `?username=` counts as none (an anonymous name), like a missing one.
            .filter(|name| !name.is_empty())
    });
    let info = ConnectInfo {
        ip: client_ip(Some(peer), header("x-forwarded-for"), &state.trusted_proxies),
        requested_name,
        host: header(HOST.as_str()).unwrap_or("localhost").to_string(),
        token: new_session_token(),
        member_pass: None,
    };
    let presented = crate::invite::Presented::from_query(request.uri().query());
    let invites = state.invites.clone();
    let invite_only = state.settings.chat.invite_only;
    let hub = state.hub.clone();
    let upgrade = hyper::upgrade::on(&mut request);
    let upgrade_timeout = Duration::from_millis(state.settings.timeouts.websocket_upgrade_ms);
    let timeouts = SessionTimeouts::from_settings(&state.settings);
    let chat_writers = state.chat_writers.clone();
    tokio::spawn(async move {
        match tokio::time::timeout(upgrade_timeout, upgrade).await {
            Ok(Ok(upgraded)) => {
                ticket.upgraded();
                let io = TokioIo::new(upgraded);
                let mut socket =
                    WebSocketStream::from_raw_socket(io, Role::Server, Some(socket_config())).await;
                let mut info = info;
                if let Some(invites) = invites.filter(|_| invite_only || !presented.is_empty()) {
                    match invites.admit(&presented, crate::time::unix_now()).await {
                        Ok(pass) => info.member_pass = Some(pass),
                        Err(refusal) if invite_only => {
                            tracing::debug!(?refusal, "websocket refused: invite-only");
                            refuse_before_joining(&mut socket, refusal, timeouts.write).await;
                            drop(ticket);
                            return;
                        }
                        // Registration by invite only: without a valid one the client may still
                        // log in to an account it has; /register will tell it what is missing.
                        Err(refusal) => tracing::debug!(?refusal, "invite not accepted"),
                    }
                }
                let conn = hub.next_conn_id();
                run_session(socket, conn, info, hub, timeouts, &chat_writers).await;
            }
            Ok(Err(e)) => tracing::debug!("websocket upgrade failed: {e}"),
            Err(_) => tracing::debug!("websocket upgrade timed out"),
        }
        drop(ticket);
    });
    let mut response = Response::new(Default::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

/// Tells a client why it may not in (a `system` frame, the web client shows it at the name
/// field) and closes with 1008 and the same text, before it reaches the hub.
async fn refuse_before_joining<S>(
    socket: &mut WebSocketStream<S>,
    refusal: crate::invite::Refusal,
    write_timeout: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let text = refusal.text();
    let frame = crate::protocol::ServerMessage::System { text }.frame();
    let _ = tokio::time::timeout(write_timeout.min(CLOSE_GRACE), async {
        socket.send(Message::Text(frame)).await?;
        let close = CloseFrame { code: CloseCode::from(refusal.close_code()), reason: text.into() };
        socket.send(Message::Close(Some(close))).await?;
        // Wait for the client's close so that our close frame is not lost to a reset.
        while let Some(Ok(_)) = socket.next().await {}
        Ok::<(), WsError>(())
    })
    .await;
}

/// The client's address: the socket peer, or, when the peer is a trusted proxy, the rightmost
/// `X-Forwarded-For` hop that is not itself a trusted proxy. Each proxy appends the address it
/// received the request from, so only the entries our own proxies wrote can be believed; the
/// leftmost entry is whatever the client chose to send. An unparseable hop stops the walk at
/// the last address a trusted proxy vouched for.
pub fn client_ip(peer: Option<SocketAddr>, forwarded_for: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let peer_ip = peer.map(|p| canonical(p.ip())).unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer_ip) {
        return peer_ip;
    }
    let mut client = peer_ip;
    for hop in forwarded_for.unwrap_or("").rsplit(',') {
        let Ok(ip) = hop.trim().parse::<IpAddr>().map(canonical) else { break };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

/// `::ffff:1.2.3.4` is the IPv4 client 1.2.3.4 (dual-stack sockets report it that way).
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// 32 random bytes from a CSPRNG, hex-encoded.
pub fn new_session_token() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

/// Runs until either side closes. Always reports `Disconnected` to the hub at the end. The
/// session's chat frames are written by a task on `chat_writers` (see `writer`); call frames,
/// reading and the session's life are here.
pub async fn run_session<S>(
    ws: WebSocketStream<S>,
    conn: ConnId,
    info: ConnectInfo,
    hub: HubHandle,
    timeouts: SessionTimeouts,
    chat_writers: &tokio::runtime::Handle,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (frames, chat_queue) = mpsc::channel(OUTBOUND_QUEUE_FRAMES);
    let (urgent, mut urgent_queue) = mpsc::channel(URGENT_QUEUE_FRAMES);
    let (close, mut close_requested) = oneshot::channel();
    let order = ConnOrder::default();
    let unwritten_calls = Arc::new(UnwrittenCalls::default());
    let link = ConnLink { frames, urgent, unwritten_calls: unwritten_calls.clone(), close };
    if !hub.send_from(&order, HubEvent::Connected { conn, info, link }).await {
        return;
    }
    let (sink, mut stream) = ws.split();
    let sink: SharedSink<_> = Arc::new(tokio::sync::Mutex::new(sink));
    let mut chat_writer = ChatWriterTask::new(chat_writers.spawn(run_chat_writer(
        sink.clone(),
        chat_queue,
        unwritten_calls.clone(),
        timeouts.write,
    )));
    let first_message = tokio::time::sleep(timeouts.first_message);
    let mut first_message = std::pin::pin!(first_message);
    let mut heard_from_client = false;
    let mut ingress = IngressBudget::default();
    // Once a write is abandoned half-way (timeout, or the hub dropped us) the stream may hold
    // part of a frame: nothing more may be written, not even a close frame.
    let mut writable = true;
    let close_with: Option<(u16, String)> = loop {
        tokio::select! {
            biased;
            frame = urgent_queue.recv() => match frame {
                Some(frame) => {
                    // Race the write against the hub dropping us: a reader that stopped
                    // draining its socket must not keep this task (and its socket) alive. A
                    // close request that arrives mid-write gives the write a short grace, so
                    // a healthy client still gets its last frames ("You are banned.").
                    let mut closing = None;
                    let written = {
                        let write = tokio::time::timeout(timeouts.write, async {
                            let mut sink = sink.lock().await;
                            let written = write_batch(&mut *sink, frame, &mut urgent_queue).await;
                            if let Ok(frames) = written {
                                unwritten_calls.done(frames);
                            }
                            written.map(drop)
                        });
                        let mut write = std::pin::pin!(write);
                        tokio::select! {
                            biased;
                            written = &mut write => Some(written),
                            request = &mut close_requested => {
                                closing = Some(request.ok());
                                tokio::time::timeout(CLOSE_GRACE.min(timeouts.write), &mut write).await.ok()
                            }
                        }
                    };
                    match written {
                        Some(Ok(Ok(()))) => {}
                        Some(Ok(Err(_))) => break None,
                        Some(Err(_)) | None => {
                            tracing::debug!(conn, "write timed out: disconnecting a client that does not read");
                            writable = false;
                            break None;
                        }
                    }
                    if let Some(request) = closing {
                        finish_writing(&sink, &mut urgent_queue, &unwritten_calls, &mut chat_writer, &mut writable).await;
                        break request;
                    }
                }
                // The hub let go of us; a close request may be waiting, and the chat writer
                // may still be writing what was queued before it.
                None => {
                    let request = (&mut close_requested).await.ok();
                    finish_writing(&sink, &mut urgent_queue, &unwritten_calls, &mut chat_writer, &mut writable).await;
                    break request;
                }
            },
            end = chat_writer.end(), if !chat_writer.has_ended() => match end {
                // The hub let go of us: the urgent queue ends too, handled above.
                ChatWriterEnd::Drained => {}
                ChatWriterEnd::Failed => break None,
                ChatWriterEnd::Stalled => {
                    tracing::debug!(conn, "write timed out: disconnecting a client that does not read");
                    writable = false;
                    break None;
                }
            },
            request = &mut close_requested => {
                // Frames queued before the close request go out first ("You are banned.").
                finish_writing(&sink, &mut urgent_queue, &unwritten_calls, &mut chat_writer, &mut writable).await;
                break request.ok();
            },
            () = &mut first_message, if !heard_from_client => {
                tracing::debug!(conn, "no message within the first-message timeout");
                break Some((1008, "No message received in time".into()));
            }
            incoming = stream.next() => {
                heard_from_client = true;
                match incoming {
                    Some(Ok(message)) => {
                        // A flood stops here, before it is parsed or queued for the hub.
                        match ingress.admit(&timeouts.budgets, Instant::now()) {
                            Admission::Allowed => {}
                            Admission::Dropped => {
                                hub.stats.ingress_drops.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            Admission::Disconnect => {
                                hub.stats.ingress_drops.fetch_add(1, Ordering::Relaxed);
                                tracing::debug!(conn, "ingress flood: disconnecting");
                                break Some((1008, "Too many messages".into()));
                            }
                        }
                        let inbound = match message {
                            Message::Text(text) => parse_inbound(&text),
                            Message::Binary(_) => Inbound::Malformed,
                            Message::Close(_) => break None,
                            // Ping/pong are answered by the WebSocket layer.
                            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                        };
                        if !hub.send_from(&order, HubEvent::Message { conn, inbound }).await {
                            break Some((1001, "Server shutdown".into()));
                        }
                    }
                    Some(Err(error)) => break close_for_error(&error),
                    None => break None,
                }
            },
        }
    };
    // Whatever the chat writer is doing now is moot (and it may hold the sink until its
    // cancellation reaches it, which the close's deadline covers).
    chat_writer.abort();
    if writable {
        // The close handshake gets a deadline too; a peer that does not read misses it.
        let _ = tokio::time::timeout(CLOSE_GRACE.min(timeouts.write), async {
            let mut sink = sink.lock().await;
            if let Some((code, reason)) = close_with {
                let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
                let _ = sink.send(Message::Close(Some(frame))).await;
            }
            let _ = sink.close().await;
        })
        .await;
    }
    drop((sink, stream)); // the socket closes here, before the hub hears of it
    hub.send_from(&order, HubEvent::Disconnected { conn }).await;
}

/// Writes what was queued before a close request, both queues, within `CLOSE_GRACE` for all of
/// it: the call frames here, the chat frames by the chat writer, which ends once the queue the
/// hub let go of is drained. A client that does not read by then gets nothing more (`writable`
/// false: maybe half a frame sent).
async fn finish_writing<K>(
    sink: &SharedSink<K>,
    urgent_queue: &mut mpsc::Receiver<crate::protocol::Frame>,
    unwritten_calls: &UnwrittenCalls,
    chat_writer: &mut ChatWriterTask,
    writable: &mut bool,
) where
    K: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    let finished = tokio::time::timeout(CLOSE_GRACE, async {
        let drained = drain(&mut *sink.lock().await, urgent_queue).await;
        if let Ok(frames) = drained {
            unwritten_calls.done(frames);
        }
        drained.is_ok() && chat_writer.end().await == ChatWriterEnd::Drained
    })
    .await;
    if !matches!(finished, Ok(true)) {
        *writable = false;
    }
}

/// A session's chat writer, as the session sees it: how it ended (asked as often as needed),
/// and aborted when the session drops it, so it never outlives the session.
struct ChatWriterTask {
    handle: tokio::task::JoinHandle<ChatWriterEnd>,
    ended: Option<ChatWriterEnd>,
}

impl ChatWriterTask {
    fn new(handle: tokio::task::JoinHandle<ChatWriterEnd>) -> Self {
        Self { handle, ended: None }
    }

    /// How the writer ended, waiting for it. Cancel-safe. A writer that panicked or was
    /// aborted may have left half a frame in the stream: counted as stalled.
    async fn end(&mut self) -> ChatWriterEnd {
        if let Some(end) = self.ended {
            return end;
        }
        let end = (&mut self.handle).await.unwrap_or(ChatWriterEnd::Stalled);
        self.ended = Some(end);
        end
    }

    fn has_ended(&self) -> bool {
        self.ended.is_some()
    }

    fn abort(&self) {
        self.handle.abort();
    }
}

impl Drop for ChatWriterTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// How long frames queued before a close request may take to go out.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// A clear close reason for input errors the WebSocket layer detects; `None` when the peer is
/// simply gone.
fn close_for_error(error: &WsError) -> Option<(u16, String)> {
    tracing::debug!("websocket read error: {error}");
    match error {
        WsError::Capacity(_) => Some((1009, format!("Message too big (limit {MAX_MESSAGE_BYTES} bytes)"))),
        WsError::Utf8(_) => Some((1007, "Invalid UTF-8 in text frame".into())),
        WsError::ConnectionClosed | WsError::AlreadyClosed | WsError::Io(_) => None,
        _ => Some((1002, "WebSocket protocol error".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let trusted = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let stranger: SocketAddr = "203.0.113.9:5000".parse().unwrap();
        let header = Some("198.51.100.7, 10.1.2.3");
        assert_eq!(client_ip(Some(proxy), header, &trusted), "198.51.100.7".parse::<IpAddr>().unwrap());
        // A spoofed leftmost entry is ignored: the hop our proxy appended wins.
        let spoofed = Some("1.1.1.1, 198.51.100.7, 10.9.9.9");
        assert_eq!(client_ip(Some(proxy), spoofed, &trusted), "198.51.100.7".parse::<IpAddr>().unwrap());
        let garbage_left = Some("not-an-ip, 198.51.100.7");
        assert_eq!(client_ip(Some(proxy), garbage_left, &trusted), "198.51.100.7".parse::<IpAddr>().unwrap());
        // Only proxies in the chain: the leftmost of them is the client.
        assert_eq!(
            client_ip(Some(proxy), Some("10.0.0.5, 10.0.0.6"), &trusted),
            "10.0.0.5".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(Some(stranger), header, &trusted), "203.0.113.9".parse::<IpAddr>().unwrap());
        assert_eq!(client_ip(Some(proxy), Some("garbage"), &trusted), "10.1.2.3".parse::<IpAddr>().unwrap());
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:1".parse().unwrap();
        assert_eq!(client_ip(Some(mapped), header, &trusted), "198.51.100.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn origin_allow_list() {
        let allowed = vec!["https://chat.example.org".to_string()];
        assert!(origin_allowed(Some("https://evil.example"), &[]));
        assert!(origin_allowed(None, &allowed));
        assert!(origin_allowed(Some("https://chat.example.org"), &allowed));
        assert!(!origin_allowed(Some("https://evil.example"), &allowed));
        assert!(!origin_allowed(Some("null"), &allowed));
    }

    #[test]
    fn tokens_are_64_hex_chars_and_differ() {
        let (a, b) = (new_session_token(), new_session_token());
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
