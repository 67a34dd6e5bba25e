//! A small raw-STUN TURN client for the relay tests, over UDP or TCP (RFC 8656 framing), so that
//! tests can assert exact error codes and reasons, plus helpers to start an in-process relay.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use relaychat::config::Settings;
use relaychat::turn::credentials::{credential_for, issue};
use relaychat::turn::presence::VoicePresence;
use relaychat::turn::tcp::{frame_for_tcp, read_frame};
use relaychat::turn::{start_relay, RelayHandle};
use stun::agent::TransactionId;
use stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
use stun::error_code::ErrorCodeAttribute;
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{
    Getter, Message, MessageType, Setter, CLASS_ERROR_RESPONSE, CLASS_INDICATION, CLASS_REQUEST,
    CLASS_SUCCESS_RESPONSE, METHOD_ALLOCATE, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION, METHOD_DATA,
    METHOD_REFRESH, METHOD_SEND,
};
use stun::textattrs::TextAttribute;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Mutex;
use turn::proto::channum::ChannelNumber;
use turn::proto::data::Data;
use turn::proto::lifetime::Lifetime;
use turn::proto::peeraddr::PeerAddress;
use turn::proto::relayaddr::RelayedAddress;
use turn::proto::reqtrans::RequestedTransport;
use turn::proto::PROTO_UDP;

pub const SECRET: &str = "test-secret";
pub const REALM: &str = "relaychat";

pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Defaults adjusted for loopback tests.
pub fn test_settings(data_dir: &std::path::Path) -> Settings {
    let mut s = Settings::defaults();
    s.turn.listen = "127.0.0.1:0".into();
    s.turn.relay_ip = "127.0.0.1".into();
    s.turn.secret = SECRET.into();
    s.server.data_dir = data_dir.to_path_buf();
    s
}

pub struct TestRelay {
    pub handle: RelayHandle,
    pub presence: Arc<VoicePresence>,
    _dir: tempfile::TempDir,
}

pub async fn start(adjust: impl FnOnce(&mut Settings)) -> TestRelay {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    adjust(&mut settings);
    let presence = Arc::new(VoicePresence::new());
    let secret = relaychat::turn::load_or_create_secret(&settings).unwrap();
    let handle = start_relay(&settings, secret, presence.clone()).await.unwrap();
    TestRelay { handle, presence, _dir: dir }
}

/// `user` in voice, with a TURN client on `relay`'s UDP listener holding a fresh credential
/// (valid 600 s): the prelude of nearly every relay test.
pub async fn voice_user(relay: &TestRelay, user: &str) -> TurnClient {
    relay.presence.joined(user);
    TurnClient::for_user(relay.handle.udp_addr, false, user, 600).await
}

/// [`voice_user`], allocated: the client and its relayed address.
pub async fn allocated(relay: &TestRelay, user: &str) -> (TurnClient, SocketAddr) {
    let mut client = voice_user(relay, user).await;
    let relayed = client.allocate().await.expect("a voice user allocates");
    (client, relayed)
}

/// A UDP peer on 127.0.0.2 that `client` holds a permission for (loopback peers need the
/// relay's peer policy "any").
pub async fn permitted_peer(client: &mut TurnClient) -> UdpSocket {
    let peer = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    client.create_permission(&[peer.local_addr().unwrap()]).await.expect("permission for the peer");
    peer
}

type BoxedReader = Box<dyn AsyncRead + Send + Unpin>;
type BoxedWriter = Box<dyn AsyncWrite + Send + Unpin>;

pub enum Wire {
    Udp {
        socket: UdpSocket,
        server: SocketAddr,
    },
    /// TCP or TLS.
    Stream {
        reader: Mutex<BufReader<BoxedReader>>,
        writer: Mutex<BoxedWriter>,
        local: SocketAddr,
    },
}

/// An error answer: code and reason phrase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub code: u16,
    pub reason: String,
}

pub struct TurnClient {
    pub wire: Wire,
    pub username: String,
    pub password: String,
    realm: String,
    nonce: Option<String>,
    /// Error codes of the challenges answered so far (401 first, 438 for stale nonces).
    pub challenges: Vec<u16>,
}

impl TurnClient {
    pub async fn udp(server: SocketAddr, username: &str, password: &str) -> TurnClient {
        let loopback = if server.is_ipv6() { "[::1]:0" } else { "127.0.0.1:0" };
        let socket = UdpSocket::bind(loopback).await.unwrap();
        Self::with_wire(Wire::Udp { socket, server }, username, password)
    }

    pub async fn tcp(server: SocketAddr, username: &str, password: &str) -> TurnClient {
        let stream = TcpStream::connect(server).await.unwrap();
        Self::over_tcp(stream, username, password)
    }

    /// TURN over an already connected stream (e.g. one that sent a PROXY protocol header).
    pub fn over_tcp(stream: TcpStream, username: &str, password: &str) -> TurnClient {
        stream.set_nodelay(true).unwrap();
        let local = stream.local_addr().unwrap();
        let (r, w) = tokio::io::split(stream);
        let wire = Wire::Stream {
            reader: Mutex::new(BufReader::new(Box::new(r))),
            writer: Mutex::new(Box::new(w)),
            local,
        };
        Self::with_wire(wire, username, password)
    }

    /// TURN over TLS (`turns:`), trusting `connector`'s roots, server name "localhost".
    pub async fn tls(
        server: SocketAddr,
        connector: &tokio_rustls::TlsConnector,
        username: &str,
        password: &str,
    ) -> TurnClient {
        let stream = TcpStream::connect(server).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let local = stream.local_addr().unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let stream = connector.connect(name, stream).await.expect("TLS handshake with the relay");
        let (r, w) = tokio::io::split(stream);
        let wire = Wire::Stream {
            reader: Mutex::new(BufReader::new(Box::new(r))),
            writer: Mutex::new(Box::new(w)),
            local,
        };
        Self::with_wire(wire, username, password)
    }

    /// A client with a fresh REST credential for `user`, valid `ttl` seconds (negative: expired).
    pub async fn for_user(server: SocketAddr, tcp: bool, user: &str, ttl: i64) -> TurnClient {
        let expiry = (now_unix() as i64 + ttl) as u64;
        let c = issue(SECRET.as_bytes(), user, expiry);
        if tcp {
            Self::tcp(server, &c.username, &c.credential).await
        } else {
            Self::udp(server, &c.username, &c.credential).await
        }
    }

    fn with_wire(wire: Wire, username: &str, password: &str) -> TurnClient {
        TurnClient {
            wire,
            username: username.into(),
            password: password.into(),
            realm: REALM.into(),
            nonce: None,
            challenges: Vec::new(),
        }
    }

    /// The client's own transport address (what the relay sees as the 5-tuple's source).
    pub async fn local_addr(&self) -> SocketAddr {
        match &self.wire {
            Wire::Udp { socket, .. } => socket.local_addr().unwrap(),
            Wire::Stream { local, .. } => *local,
        }
    }

    pub async fn send_raw(&self, raw: &[u8]) {
        match &self.wire {
            Wire::Udp { socket, server } => {
                socket.send_to(raw, server).await.unwrap();
            }
            Wire::Stream { writer, .. } => {
                let mut writer = writer.lock().await;
                let _ = writer.write_all(&frame_for_tcp(raw)).await;
                let _ = writer.flush().await;
            }
        }
    }

    /// The next datagram or frame, if one arrives within `wait`.
    pub async fn recv_raw(&self, wait: Duration) -> Option<Vec<u8>> {
        match &self.wire {
            Wire::Udp { socket, .. } => {
                let mut buf = vec![0u8; 65536];
                let (n, _) = tokio::time::timeout(wait, socket.recv_from(&mut buf)).await.ok()?.ok()?;
                buf.truncate(n);
                Some(buf)
            }
            Wire::Stream { reader, .. } => {
                let mut reader = reader.lock().await;
                tokio::time::timeout(wait, read_frame(&mut *reader)).await.ok()?.ok()?
            }
        }
    }

    /// A request as [`Self::request`] sends it (signed once a challenge gave a nonce).
    pub fn build(&self, method: stun::message::Method, attrs: Vec<Box<dyn Setter>>, auth: bool) -> Message {
        let mut setters: Vec<Box<dyn Setter>> =
            vec![Box::new(TransactionId::new()), Box::new(MessageType::new(method, CLASS_REQUEST))];
        setters.extend(attrs);
        if auth {
            setters.push(Box::new(TextAttribute::new(ATTR_USERNAME, self.username.clone())));
            setters.push(Box::new(TextAttribute::new(ATTR_REALM, self.realm.clone())));
            setters.push(Box::new(TextAttribute::new(ATTR_NONCE, self.nonce.clone().unwrap_or_default())));
            setters.push(Box::new(MessageIntegrity::new_long_term_integrity(
                self.username.clone(),
                self.realm.clone(),
                self.password.clone(),
            )));
        }
        setters.push(Box::new(FINGERPRINT));
        let mut m = Message::new();
        m.build(&setters).unwrap();
        m
    }

    /// Sends a request and waits for its answer (other traffic is skipped).
    pub async fn transact(&self, request: &Message) -> Option<Message> {
        self.send_raw(&request.raw).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let raw = self.recv_raw(left).await?;
            let mut m = Message { raw, ..Default::default() };
            if m.decode().is_ok() && m.transaction_id == request.transaction_id {
                return Some(m);
            }
        }
    }

    /// An authenticated request, answering a 401/438 challenge once.
    pub async fn request(
        &mut self,
        method: stun::message::Method,
        attrs: impl Fn() -> Vec<Box<dyn Setter>>,
    ) -> Result<Message, Refused> {
        for _ in 0..3 {
            let authed = self.nonce.is_some();
            let request = self.build(method, attrs(), authed);
            let answer =
                self.transact(&request).await.ok_or(Refused { code: 0, reason: "timeout".into() })?;
            if answer.typ.class == CLASS_SUCCESS_RESPONSE {
                return Ok(answer);
            }
            assert_eq!(answer.typ.class, CLASS_ERROR_RESPONSE);
            let refused = error_of(&answer);
            let challenge = refused.code == 438 || (refused.code == 401 && !authed);
            if challenge {
                self.challenges.push(refused.code);
                self.nonce = Some(TextAttribute::get_from_as(&answer, ATTR_NONCE).unwrap().text);
                self.realm = TextAttribute::get_from_as(&answer, ATTR_REALM).unwrap().text;
                continue;
            }
            return Err(refused);
        }
        Err(Refused { code: 0, reason: "challenge loop".into() })
    }

    /// Pretends to hold a nonce (to test stale and forged ones).
    pub fn force_nonce(&mut self, nonce: &str) {
        self.nonce = Some(nonce.to_string());
    }

    /// Allocate; returns the relayed address.
    pub async fn allocate(&mut self) -> Result<SocketAddr, Refused> {
        let answer = self
            .request(METHOD_ALLOCATE, || vec![Box::new(RequestedTransport { protocol: PROTO_UDP })])
            .await?;
        let mut relayed = RelayedAddress::default();
        relayed.get_from(&answer).unwrap();
        Ok(SocketAddr::new(relayed.ip, relayed.port))
    }

    pub async fn refresh(&mut self, lifetime: Duration) -> Result<(), Refused> {
        self.request(METHOD_REFRESH, || vec![Box::new(Lifetime(lifetime))]).await.map(|_| ())
    }

    pub async fn create_permission(&mut self, peers: &[SocketAddr]) -> Result<(), Refused> {
        let peers = peers.to_vec();
        self.request(METHOD_CREATE_PERMISSION, || {
            peers
                .iter()
                .map(|p| Box::new(PeerAddress { ip: p.ip(), port: p.port() }) as Box<dyn Setter>)
                .collect()
        })
        .await
        .map(|_| ())
    }

    pub async fn channel_bind(&mut self, number: u16, peer: SocketAddr) -> Result<(), Refused> {
        self.request(METHOD_CHANNEL_BIND, || {
            vec![Box::new(ChannelNumber(number)), Box::new(PeerAddress { ip: peer.ip(), port: peer.port() })]
        })
        .await
        .map(|_| ())
    }

    pub async fn send_channel_data(&self, number: u16, data: &[u8]) {
        let mut raw = number.to_be_bytes().to_vec();
        raw.extend_from_slice(&(data.len() as u16).to_be_bytes());
        raw.extend_from_slice(data);
        self.send_raw(&raw).await;
    }

    pub async fn send_indication(&self, peer: SocketAddr, data: &[u8]) {
        let mut m = Message::new();
        m.build(&[
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_SEND, CLASS_INDICATION)),
            Box::new(PeerAddress { ip: peer.ip(), port: peer.port() }),
            Box::new(Data(data.to_vec())),
        ])
        .unwrap();
        self.send_raw(&m.raw).await;
    }

    /// The payload of the next ChannelData or Data indication within `wait`.
    pub async fn recv_data(&self, wait: Duration) -> Option<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let raw = self.recv_raw(left).await?;
            if raw.first().is_some_and(|b| b >> 6 == 1) && raw.len() >= 4 {
                let len = u16::from_be_bytes([raw[2], raw[3]]) as usize;
                return Some(raw[4..4 + len].to_vec());
            }
            let mut m = Message { raw, ..Default::default() };
            if m.decode().is_ok() && m.typ == MessageType::new(METHOD_DATA, CLASS_INDICATION) {
                let mut data = Data::default();
                data.get_from(&m).unwrap();
                return Some(data.0);
            }
        }
    }
}

pub fn error_of(m: &Message) -> Refused {
    let mut code = ErrorCodeAttribute::default();
    code.get_from(m).unwrap();
    Refused { code: code.code.0, reason: String::from_utf8_lossy(&code.reason).into_owned() }
}

/// A REST password for `username` under the test secret.
pub fn password_for(username: &str) -> String {
    credential_for(SECRET.as_bytes(), username)
}

/// Waits until `cond` holds, up to `limit`.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

/// A self-signed certificate for "localhost": the relay's rustls config and a client connector
/// that trusts it.
pub fn self_signed_tls() -> (Arc<rustls::ServerConfig>, tokio_rustls::TlsConnector) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = certified.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    // As the HTTP side configures it: the relay must clear this for TURN clients.
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Offer the TURN ALPN (RFC 7443) like a standards-following client.
    client.alpn_protocols = vec![b"stun.turn".to_vec()];
    (Arc::new(server), tokio_rustls::TlsConnector::from(Arc::new(client)))
}
