//! One peer connection: the protocol handshake in either direction, then a session that serves the other side's
//! requests from the cache entry and relays what it sends to the download of that content, if one runs.
//!
//! Each session runs three tasks: the reader (this module's [`run`]: decodes frames with the length-bounded
//! [`Decoder`], answers layer requests, relays pieces, haves and rejects to the download, turns the download's
//! commands into messages, announces newly written pieces), the server (queued requests, at most
//! [`MAX_QUEUED_REQUESTS`], each through the upload gate, read back and verified from the cache before it is sent)
//! and the writer (frames out, keep-alives when idle, a write that makes no progress for the idle timeout ends the
//! connection). Every wait has a timeout: the handshake, reads (idle), writes.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use custody_catalog::pieces::PieceLayout;
use custody_p2p::wire::{MAX_QUEUED_REQUESTS, PROTOCOL_VERSION, encode_piece_header};
use custody_p2p::{Bitfield, ContentId, Decoder, GoodbyeReason, Message, PeerKind};
use custody_tls::{PeerIdentity, PeerTlsConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_rustls::TlsStream;

use crate::cache::{CacheEntry, PeerCache};
use crate::cache_server::{CacheServer, Refused};
use crate::node::UploadGate;

/// Time limits of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// From opening the TCP connection to having the other side's handshake and bitfield.
    pub handshake: Duration,
    /// Nothing received (or no write progress) for this long closes the connection.
    pub idle: Duration,
    /// Nothing sent for this long sends a keep-alive.
    pub keepalive: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            handshake: custody_p2p::wire::HANDSHAKE_TIMEOUT,
            idle: custody_p2p::wire::IDLE_TIMEOUT,
            keepalive: custody_p2p::wire::KEEPALIVE_INTERVAL,
        }
    }
}

/// What a session tells the download of its content.
#[derive(Debug)]
pub(crate) enum Event {
    /// A connection finished its handshake and bitfield exchange.
    Opened(Peer),
    /// The other side sent something for the download.
    Received(u64, Incoming),
    /// A piece of this many bytes was sent to the other side.
    Sent(u64),
    /// The connection ended.
    Closed(u64, Closed),
}

/// A connected peer, as the download sees it.
#[derive(Debug)]
pub(crate) struct Peer {
    pub id: u64,
    pub identity: PeerIdentity,
    pub addr: SocketAddr,
    pub inbound: bool,
    pub bitfield: Bitfield,
    pub commands: mpsc::Sender<Command>,
}

/// Messages relayed to the download.
#[derive(Debug)]
pub(crate) enum Incoming {
    Have(u32),
    Piece(u32, Bytes),
    Reject(u32),
}

/// What the download asks a session to do.
#[derive(Debug)]
pub(crate) enum Command {
    Request(u32),
    Cancel(u32),
    Close(GoodbyeReason),
}

/// Why a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Closed {
    /// The other side said goodbye.
    Goodbye(GoodbyeReason),
    /// We closed it (the download's command, or nothing left to exchange).
    Local(GoodbyeReason),
    /// The other side broke the protocol: a frame the decoder refused, a message out of order.
    Violation(String),
    /// Nothing arrived, or nothing could be written, within the idle timeout.
    Timeout,
    /// The connection failed or was closed without a goodbye.
    Io(String),
}

/// Why a connection could not be established.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("{0}")]
    Io(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("handshake timed out")]
    Timeout,
    #[error("the peer said goodbye: {0}")]
    Goodbye(GoodbyeReason),
    #[error("protocol violation: {0}")]
    Violation(String),
    #[error("it does not serve content {0}")]
    UnknownContent(ContentId),
    #[error("content {content} refused ({reason}): {why}")]
    Refused { content: ContentId, reason: GoodbyeReason, why: String },
}

impl ConnectError {
    /// An I/O error on a fresh connection: in TLS 1.3 the other side judges our certificate after our handshake has
    /// ended, so its refusal shows up as an alert on the first read or write.
    fn from_io(err: std::io::Error) -> Self {
        match err.get_ref().and_then(|inner| inner.downcast_ref::<tokio_rustls::rustls::Error>()) {
            Some(tokio_rustls::rustls::Error::AlertReceived(alert)) => {
                Self::Tls(format!("the peer refused this device's certificate ({alert:?})"))
            }
            _ => Self::Io(err.to_string()),
        }
    }
}

/// A connection past its handshake, ready for [`run`].
pub(crate) struct Established {
    stream: TlsStream<TcpStream>,
    buffer: BytesMut,
    decoder: Decoder,
    pub identity: PeerIdentity,
    pub addr: SocketAddr,
    pub bitfield: Bitfield,
    pub inbound: bool,
    haves: Option<broadcast::Receiver<u32>>,
}

/// An item for the writer task.
enum Outgoing {
    Message(Message),
    /// A piece, and who waits for it to be written out.
    Piece(u32, Bytes, oneshot::Sender<()>),
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// What this side says in its handshake: the content, its layout (from the signed metadata) and the pieces held,
/// with the subscription to pieces written later (made before `have` was read, so that none is missed).
pub(crate) struct Hello {
    pub content: ContentId,
    pub layout: PieceLayout,
    pub have: Bitfield,
    pub haves: Option<broadcast::Receiver<u32>>,
}

impl Hello {
    pub(crate) fn of(entry: &CacheEntry) -> Self {
        let haves = Some(entry.subscribe());
        Self { content: entry.content(), layout: *entry.tree().layout(), have: entry.have(), haves }
    }
}

/// Opens a connection to `addr` for the content of `hello`: TCP (from `bind` when given: the device's own address,
/// so that what it uploads on the connection leaves from its address), mutual TLS, then the protocol handshake and
/// bitfields, all within `timeouts.handshake`.
pub(crate) async fn connect(
    addr: SocketAddr,
    bind: Option<std::net::IpAddr>,
    tls: &PeerTlsConfig,
    hello: Hello,
    timeouts: Timeouts,
) -> Result<Established, ConnectError> {
    let connecting = async {
        let io = |err: std::io::Error| ConnectError::Io(err.to_string());
        let tcp = match bind {
            None => TcpStream::connect(addr).await.map_err(io)?,
            Some(ip) => {
                let socket = match addr {
                    SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
                    SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
                }
                .map_err(io)?;
                socket.bind(SocketAddr::new(ip, 0)).map_err(io)?;
                socket.connect(addr).await.map_err(io)?
            }
        };
        // Requests and haves are small and latency-bound.
        let _ = tcp.set_nodelay(true);
        let stream = tls
            .connector()
            .connect(PeerTlsConfig::server_name(addr.ip()), tcp)
            .await
            .map_err(|err| ConnectError::Tls(tls_error(&err)))?;
        let identity = PeerIdentity::from_chain(stream.get_ref().1.peer_certificates().unwrap_or_default())
            .map_err(|err| ConnectError::Tls(err.to_string()))?;
        let mut stream = TlsStream::Client(stream);
        let decoder = Decoder::for_content(&hello.layout).map_err(|err| ConnectError::Violation(err.to_string()))?;
        let piece_count = hello.have.len();
        let mut out = BytesMut::new();
        Message::Handshake { version: PROTOCOL_VERSION, content: hello.content, piece_count }.encode(&mut out);
        Message::Bitfield(hello.have).encode(&mut out);
        stream.write_all(&out).await.map_err(ConnectError::from_io)?;
        stream.flush().await.map_err(ConnectError::from_io)?;
        let mut buffer = BytesMut::with_capacity(8192);
        let first = read_message(&mut stream, &mut buffer, &decoder).await?;
        if let Message::Goodbye { reason } = first {
            return Err(ConnectError::Goodbye(reason));
        }
        if let Err(reason) = first.check_handshake(&hello.content, piece_count) {
            let _ = send_goodbye(&mut stream, reason).await;
            return Err(ConnectError::Violation(format!("handshake refused: {reason}")));
        }
        let bitfield = read_bitfield(&mut stream, &mut buffer, &decoder).await?;
        let haves = hello.haves;
        Ok(Established { stream, buffer, decoder, identity, addr, bitfield, inbound: false, haves })
    };
    tokio::time::timeout(timeouts.handshake, connecting).await.map_err(|_| ConnectError::Timeout)?
}

/// Asks the peer at `addr` for the piece layer of `content` (before this device has one): a connection holding no
/// piece, one `LayerRequest`, the `Layer` answer (unchecked: the caller checks it against the signed root), a
/// goodbye. Within `timeouts.handshake` for the connection and again for the answer.
pub(crate) async fn fetch_layer(
    addr: SocketAddr,
    tls: &PeerTlsConfig,
    content: ContentId,
    layout: PieceLayout,
    timeouts: Timeouts,
) -> Result<(PeerIdentity, Bytes), ConnectError> {
    let piece_count =
        custody_p2p::wire::piece_count(&layout).map_err(|err| ConnectError::Violation(err.to_string()))?;
    let hello = Hello { content, layout, have: Bitfield::new(piece_count), haves: None };
    let mut established = connect(addr, None, tls, hello, timeouts).await?;
    let asking = async {
        let mut out = BytesMut::new();
        Message::LayerRequest.encode(&mut out);
        established.stream.write_all(&out).await.map_err(|err| ConnectError::Io(err.to_string()))?;
        established.stream.flush().await.map_err(|err| ConnectError::Io(err.to_string()))?;
        loop {
            match read_message(&mut established.stream, &mut established.buffer, &established.decoder).await? {
                Message::Layer(layer) => return Ok(layer),
                Message::Goodbye { reason } => return Err(ConnectError::Goodbye(reason)),
                Message::KeepAlive | Message::Have { .. } => {}
                other => return Err(ConnectError::Violation(format!("{} instead of the layer", other.name()))),
            }
        }
    };
    let layer = tokio::time::timeout(timeouts.handshake, asking).await.map_err(|_| ConnectError::Timeout)??;
    let _ = send_goodbye(&mut established.stream, GoodbyeReason::Done).await;
    Ok((established.identity, layer))
}

/// Accepts a connection on the listener: mutual TLS, then the other side's handshake, which must name content the
/// cache holds, or, on a cache server, content it fetches for the group (a signed target its resolver names); our
/// handshake and bitfield go back. Within `timeouts.handshake`.
pub(crate) async fn accept(
    tcp: TcpStream,
    addr: SocketAddr,
    tls: &PeerTlsConfig,
    cache: &PeerCache,
    cache_server: Option<&Arc<CacheServer>>,
    timeouts: Timeouts,
) -> Result<(Established, Arc<CacheEntry>), ConnectError> {
    let accepting = async {
        let _ = tcp.set_nodelay(true);
        let stream = tls.acceptor().accept(tcp).await.map_err(|err| ConnectError::Tls(tls_error(&err)))?;
        let identity = PeerIdentity::from_chain(stream.get_ref().1.peer_certificates().unwrap_or_default())
            .map_err(|err| ConnectError::Tls(err.to_string()))?;
        let mut stream = TlsStream::Server(stream);
        let mut decoder = Decoder::before_handshake();
        let mut buffer = BytesMut::with_capacity(8192);
        let first = read_message(&mut stream, &mut buffer, &decoder).await?;
        let Message::Handshake { content, .. } = &first else {
            let _ = send_goodbye(&mut stream, GoodbyeReason::ProtocolError).await;
            return Err(ConnectError::Violation(format!("{} before the handshake", first.name())));
        };
        let entry = match (cache.get(content), cache_server) {
            (_, Some(server)) => match server.open(*content, &identity).await {
                Ok(entry) => entry,
                Err(Refused { reason, why }) => {
                    let _ = send_goodbye(&mut stream, reason).await;
                    return Err(ConnectError::Refused { content: *content, reason, why });
                }
            },
            (Some(entry), None) => entry,
            (None, None) => {
                let _ = send_goodbye(&mut stream, GoodbyeReason::UnknownContent).await;
                return Err(ConnectError::UnknownContent(*content));
            }
        };
        if let Err(reason) = first.check_handshake(&entry.content(), entry.piece_count()) {
            let _ = send_goodbye(&mut stream, reason).await;
            return Err(ConnectError::Violation(format!("handshake refused: {reason}")));
        }
        decoder.set_content(entry.tree().layout()).map_err(|err| ConnectError::Violation(err.to_string()))?;
        let haves = Some(entry.subscribe());
        let mut out = BytesMut::new();
        Message::Handshake { version: PROTOCOL_VERSION, content: entry.content(), piece_count: entry.piece_count() }
            .encode(&mut out);
        Message::Bitfield(entry.have()).encode(&mut out);
        stream.write_all(&out).await.map_err(ConnectError::from_io)?;
        stream.flush().await.map_err(ConnectError::from_io)?;
        let bitfield = read_bitfield(&mut stream, &mut buffer, &decoder).await?;
        let established = Established { stream, buffer, decoder, identity, addr, bitfield, inbound: true, haves };
        Ok((established, entry))
    };
    tokio::time::timeout(timeouts.handshake, accepting).await.map_err(|_| ConnectError::Timeout)?
}

/// Closes an established connection at once with `reason`.
pub(crate) async fn refuse(established: Established, reason: GoodbyeReason, timeouts: Timeouts) {
    let mut stream = established.stream;
    let closing = async {
        let _ = send_goodbye(&mut stream, reason).await;
        let _ = stream.shutdown().await;
    };
    let _ = tokio::time::timeout(timeouts.handshake, closing).await;
}

/// Runs an established session until it ends. With `events`, it first announces itself to the download
/// ([`Event::Opened`]) and relays to it; without, it only serves. Returns why it ended (also sent as
/// [`Event::Closed`]).
pub(crate) async fn run(
    established: Established,
    entry: Arc<CacheEntry>,
    mut events: Option<mpsc::Sender<Event>>,
    gate: Arc<UploadGate>,
    timeouts: Timeouts,
) -> Closed {
    let Established { stream, mut buffer, decoder, identity, addr, bitfield, inbound, haves } = established;
    let mut haves = haves.unwrap_or_else(|| entry.subscribe());
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let (commands_tx, mut commands) = mpsc::channel::<Command>(256);
    let remote_have = bitfield.clone();
    if let Some(sender) = &events {
        let peer = Peer { id, identity: identity.clone(), addr, inbound, bitfield, commands: commands_tx };
        if sender.send(Event::Opened(peer)).await.is_err() {
            events = None;
        }
    } else {
        drop(commands_tx);
    }

    let (reader, writer) = tokio::io::split(stream);
    let (outgoing, outgoing_rx) = mpsc::channel::<Outgoing>(64);
    let writer_task = tokio::spawn(write_loop(writer, outgoing_rx, timeouts));
    let cancelled = Arc::new(Mutex::new(HashSet::new()));
    let (requests, requests_rx) = mpsc::channel::<u32>(MAX_QUEUED_REQUESTS);
    let kind = gate.kind_of(&identity, addr);
    let server_task = tokio::spawn(serve_loop(
        requests_rx,
        entry.clone(),
        (gate, kind),
        outgoing.clone(),
        cancelled.clone(),
        events.clone(),
    ));

    let attached = events.is_some();
    let mut session =
        Reader { id, entry, outgoing, events, attached, remote_have, requests, cancelled, commands_open: true };
    let closed = session.read_loop(reader, &mut buffer, &decoder, &mut commands, &mut haves, timeouts).await;
    server_task.abort();
    if let Closed::Local(reason) | Closed::Goodbye(reason) = &closed {
        tracing::debug!(peer = %identity, %addr, %reason, "peer connection closed");
    } else {
        tracing::debug!(peer = %identity, %addr, reason = ?closed, "peer connection ended");
    }
    let Reader { events, outgoing, .. } = session;
    drop(outgoing);
    // The writer drains what was queued (a goodbye) and closes, or gives up after the idle timeout.
    let _ = writer_task.await;
    if let Some(events) = events {
        let _ = events.send(Event::Closed(id, closed.clone())).await;
    }
    closed
}

/// The reading side of a session, and what it shares with the other two tasks.
struct Reader {
    id: u64,
    entry: Arc<CacheEntry>,
    outgoing: mpsc::Sender<Outgoing>,
    events: Option<mpsc::Sender<Event>>,
    /// Whether a download ever took part in this connection (then late pieces after it ended are not unsolicited).
    attached: bool,
    remote_have: Bitfield,
    requests: mpsc::Sender<u32>,
    cancelled: Arc<Mutex<HashSet<u32>>>,
    commands_open: bool,
}

impl Reader {
    async fn read_loop<R: AsyncRead + Unpin>(
        &mut self,
        mut reader: R,
        buffer: &mut BytesMut,
        decoder: &Decoder,
        commands: &mut mpsc::Receiver<Command>,
        haves: &mut broadcast::Receiver<u32>,
        timeouts: Timeouts,
    ) -> Closed {
        let mut deadline = tokio::time::Instant::now() + timeouts.idle;
        let mut haves_open = true;
        loop {
            loop {
                match decoder.decode(buffer) {
                    Ok(Some(message)) => {
                        if let Some(closed) = self.handle(message).await {
                            return closed;
                        }
                    }
                    Ok(None) => break,
                    Err(err) => {
                        self.goodbye(GoodbyeReason::ProtocolError).await;
                        return Closed::Violation(err.to_string());
                    }
                }
            }
            if self.entry.is_complete() && self.remote_have.is_complete() {
                // Neither side needs anything from the other.
                self.goodbye(GoodbyeReason::Done).await;
                return Closed::Local(GoodbyeReason::Done);
            }
            buffer.reserve(64 * 1024);
            tokio::select! {
                read = tokio::time::timeout_at(deadline, reader.read_buf(buffer)) => match read {
                    Err(_) => {
                        self.goodbye(GoodbyeReason::Timeout).await;
                        return Closed::Timeout;
                    }
                    Ok(Err(err)) => return Closed::Io(err.to_string()),
                    Ok(Ok(0)) => return Closed::Io("the connection was closed without a goodbye".into()),
                    Ok(Ok(_)) => deadline = tokio::time::Instant::now() + timeouts.idle,
                },
                command = commands.recv(), if self.commands_open => match command {
                    Some(Command::Request(piece)) => self.send(Message::Request { piece }).await,
                    Some(Command::Cancel(piece)) => self.send(Message::Cancel { piece }).await,
                    Some(Command::Close(reason)) => {
                        self.goodbye(reason).await;
                        return Closed::Local(reason);
                    }
                    None => self.commands_open = false,
                },
                have = haves.recv(), if haves_open => match have {
                    Ok(piece) => self.send(Message::Have { piece }).await,
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => haves_open = false,
                },
                () = self.outgoing.closed() => return Closed::Timeout,
            }
        }
    }

    /// Handles one message; `Some` ends the session.
    async fn handle(&mut self, message: Message) -> Option<Closed> {
        match message {
            Message::KeepAlive => {}
            Message::Request { piece } => {
                if self.requests.try_send(piece).is_err() {
                    // More than MAX_QUEUED_REQUESTS queued: refuse this one.
                    self.send(Message::Reject { piece }).await;
                }
            }
            Message::Cancel { piece } => {
                self.cancelled.lock().unwrap_or_else(PoisonError::into_inner).insert(piece);
            }
            Message::LayerRequest => self.send(Message::Layer(self.entry.layer())).await,
            Message::Have { piece } => {
                // The decoder checked the index against the piece count.
                let _ = self.remote_have.set(piece);
                self.relay(Incoming::Have(piece)).await;
            }
            Message::Piece { piece, data } => {
                if !self.attached {
                    self.goodbye(GoodbyeReason::ProtocolError).await;
                    return Some(Closed::Violation(format!("piece {piece} that was never requested")));
                }
                self.relay(Incoming::Piece(piece, data)).await;
            }
            Message::Reject { piece } => self.relay(Incoming::Reject(piece)).await,
            // Only asked for before a download has its layer (`fetch_layer`); unsolicited ones are dropped.
            Message::Layer(_) => {}
            Message::Goodbye { reason } => return Some(Closed::Goodbye(reason)),
            Message::Handshake { .. } | Message::Bitfield(_) => {
                self.goodbye(GoodbyeReason::ProtocolError).await;
                return Some(Closed::Violation(format!("a second {}", message.name())));
            }
        }
        None
    }

    async fn relay(&mut self, incoming: Incoming) {
        if let Some(events) = &self.events
            && events.send(Event::Received(self.id, incoming)).await.is_err()
        {
            // The download ended; the session goes on serving.
            self.events = None;
        }
    }

    async fn send(&self, message: Message) {
        // A closed writer ends the session at the next turn of the loop (`outgoing.closed()`).
        let _ = self.outgoing.send(Outgoing::Message(message)).await;
    }

    async fn goodbye(&self, reason: GoodbyeReason) {
        self.send(Message::Goodbye { reason }).await;
    }
}

/// Serves queued requests one after the other: each passes the upload gate (policy, rate limit), waits for an upload
/// slot (`crate::node::UPLOAD_SLOTS`), is read back from the cache (verified unless this process verified it), and
/// is written out before the slot is given back and the next request served.
async fn serve_loop(
    mut requests: mpsc::Receiver<u32>,
    entry: Arc<CacheEntry>,
    (gate, kind): (Arc<UploadGate>, PeerKind),
    outgoing: mpsc::Sender<Outgoing>,
    cancelled: Arc<Mutex<HashSet<u32>>>,
    events: Option<mpsc::Sender<Event>>,
) {
    let is_cancelled = |piece: u32| cancelled.lock().unwrap_or_else(PoisonError::into_inner).remove(&piece);
    while let Some(piece) = requests.recv().await {
        if is_cancelled(piece) {
            continue;
        }
        let length = entry.tree().layout().piece_range(u64::from(piece)).map_or(0, |range| range.end - range.start);
        if !entry.have().get(piece) || gate.permit(kind, length).await.is_err() {
            if outgoing.send(Outgoing::Message(Message::Reject { piece })).await.is_err() {
                return;
            }
            continue;
        }
        let Some(_slot) = gate.slot().await else { return };
        let reading = entry.clone();
        let data = match tokio::task::spawn_blocking(move || reading.read_piece(piece)).await {
            Ok(Ok(Some(data))) => data,
            Ok(Ok(None)) => {
                let _ = outgoing.send(Outgoing::Message(Message::Reject { piece })).await;
                continue;
            }
            Ok(Err(err)) => {
                tracing::warn!(content = %entry.content(), piece, error = %err, "cannot read a cached piece");
                let _ = outgoing.send(Outgoing::Message(Message::Reject { piece })).await;
                continue;
            }
            Err(_) => return,
        };
        if is_cancelled(piece) {
            continue;
        }
        let (written, done) = oneshot::channel();
        if outgoing.send(Outgoing::Piece(piece, data, written)).await.is_err() || done.await.is_err() {
            return;
        }
        gate.record(kind, length);
        if let Some(events) = &events {
            let _ = events.send(Event::Sent(length)).await;
        }
    }
}

/// Writes frames; a keep-alive after `timeouts.keepalive` without anything to send; gives up when a write makes no
/// progress for `timeouts.idle`.
async fn write_loop<W: AsyncWrite>(writer: WriteHalf<W>, mut outgoing: mpsc::Receiver<Outgoing>, timeouts: Timeouts) {
    let mut writer = writer;
    let mut frame = BytesMut::new();
    loop {
        let item = match tokio::time::timeout(timeouts.keepalive, outgoing.recv()).await {
            Err(_) => Some(Outgoing::Message(Message::KeepAlive)),
            Ok(None) => None,
            Ok(Some(item)) => Some(item),
        };
        let Some(item) = item else { break };
        let goodbye = matches!(item, Outgoing::Message(Message::Goodbye { .. }));
        let written = match item {
            Outgoing::Message(message) => {
                frame.clear();
                message.encode(&mut frame);
                tokio::time::timeout(timeouts.idle, writer.write_all(&frame)).await
            }
            Outgoing::Piece(piece, data, done) => {
                // Pieces are at most 16 MiB (the largest piece size), so the length fits.
                let header = encode_piece_header(piece, data.len() as u32);
                let written = tokio::time::timeout(timeouts.idle, async {
                    writer.write_all(&header).await?;
                    writer.write_all(&data).await
                })
                .await;
                let _ = done.send(());
                written
            }
        };
        match written {
            Ok(Ok(())) => {}
            _ => return,
        }
        if outgoing.is_empty() || goodbye {
            let _ = tokio::time::timeout(timeouts.idle, writer.flush()).await;
        }
        if goodbye {
            break;
        }
    }
    let _ = tokio::time::timeout(timeouts.idle, writer.shutdown()).await;
}

/// Reads one whole message during the handshake.
async fn read_message<S: AsyncRead + Unpin>(
    stream: &mut S,
    buffer: &mut BytesMut,
    decoder: &Decoder,
) -> Result<Message, ConnectError> {
    loop {
        match decoder.decode(buffer) {
            Ok(Some(message)) => return Ok(message),
            Ok(None) => {}
            Err(err) => return Err(ConnectError::Violation(err.to_string())),
        }
        buffer.reserve(8192);
        match stream.read_buf(buffer).await {
            Ok(0) => return Err(ConnectError::Io("the connection was closed during the handshake".into())),
            Ok(_) => {}
            Err(err) => return Err(ConnectError::from_io(err)),
        }
    }
}

/// Reads the other side's bitfield, the message that must follow its handshake.
async fn read_bitfield<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buffer: &mut BytesMut,
    decoder: &Decoder,
) -> Result<Bitfield, ConnectError> {
    match read_message(stream, buffer, decoder).await? {
        Message::Bitfield(bitfield) => Ok(bitfield),
        Message::Goodbye { reason } => Err(ConnectError::Goodbye(reason)),
        other => {
            let _ = send_goodbye(stream, GoodbyeReason::ProtocolError).await;
            Err(ConnectError::Violation(format!("{} instead of the bitfield", other.name())))
        }
    }
}

async fn send_goodbye<S: AsyncWrite + Unpin>(stream: &mut S, reason: GoodbyeReason) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    Message::Goodbye { reason }.encode(&mut out);
    stream.write_all(&out).await?;
    stream.flush().await
}

/// A TLS failure, naming the certificate refusal when that is what it was.
fn tls_error(err: &std::io::Error) -> String {
    match custody_tls::Error::from_connection_error(err) {
        Some(refusal) => refusal.to_string(),
        None => err.to_string(),
    }
}
