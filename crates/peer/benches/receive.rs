//! CPU a device spends per received GiB on the peer protocol and piece verification together, with real TLS, against
//! hashing the same bytes with `openssl dgst -sha256` (issue 5's goal: at most 1.3x) and with aws-lc-rs SHA-256.
//!
//! Measured, on the receiving thread only (`CLOCK_THREAD_CPUTIME_ID`, user and system apart from
//! `getrusage(RUSAGE_THREAD)`), from the first request sent to the last piece verified: the kernel's loopback TCP
//! receive (the `read` system calls), TLS 1.3 decryption (rustls with aws-lc-rs, mutual authentication with device
//! certificates of a test PKI made with custody-pki, `PeerTlsConfig` from custody-tls, as the product connects),
//! `read_buf` into a `BytesMut` with 64 KiB reserved per read (as the session's reader), `Decoder::decode`,
//! `Swarm::piece_received` (BEP 52 verification against the piece layer, checked with `layer::verify_layer`, and
//! the bookkeeping) and `Swarm::next_peer_requests`, whose `Request` frames are encrypted and written back on the
//! same connection. The receiver runs a current-thread tokio runtime on the main thread.
//!
//! The sender is a device on its own OS thread with its own runtime: it accepts the connection (TLS and the protocol
//! handshake with a full bitfield), reads the requests and answers each with a `Piece` frame (`encode_piece_header`
//! and the data, as the session's writer). Its CPU is not counted; with two cores it runs beside the receiver.
//!
//! Not measured: the TLS and protocol handshakes (once per connection), the channels between a session and its
//! download in the product, writing verified pieces to the cache and their sidecar, uploads, and the install-time
//! whole-file SHA-256 and SHA-512 check (bench/p2p.sh measures whole daemons, all of that included).
//!
//! Baselines in the same run, alternating with it round by round, best round of each kept: `openssl dgst -sha256`
//! over the same bytes in a temporary file (its CPU from `getrusage(RUSAGE_CHILDREN)`, process start and reading
//! from the page cache included; skipped with a message when there is no `openssl`), aws-lc-rs SHA-256 in one pass
//! on the measuring thread, and, for reference, verification alone (`PieceHashes::verify_piece` over every piece).
//!
//! The total CPU is exact; the user/system split is the kernel's tick-sampled apportioning of it, reliable over
//! hundreds of milliseconds, not over a few MiB (where openssl's process start also dominates its figure).
//!
//! Run: `cargo bench -p custody-peer --bench receive -- --mib 256 --rounds 5` (also `--piece-kib K`; defaults 256
//! MiB, 1024 KiB pieces, 5 rounds).

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::num::NonZeroU64;
use std::process::Command;
use std::time::{Duration, Instant};

use aws_lc_rs::digest::{SHA256, digest};
use bytes::{Bytes, BytesMut};
use custody_catalog::pieces::{PieceHashes, PieceLayout, PieceSize};
use custody_p2p::wire::{PROTOCOL_VERSION, encode_piece_header};
use custody_p2p::{
    Bitfield, ContentId, Decoder, GoodbyeReason, Message, PeerId, PeerKind, Received, Source, Swarm, SwarmConfig, layer,
};
use custody_tls::PeerTlsConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// The peer's id in the receiver's swarm.
const PEER: PeerId = PeerId(1);

fn main() {
    let arg = |name: &str, default: u64| -> u64 {
        std::env::args().skip_while(|a| a != name).nth(1).and_then(|s| s.parse().ok()).unwrap_or(default)
    };
    let (mib, piece_kib, rounds) = (arg("--mib", 256), arg("--piece-kib", 1024), arg("--rounds", 5).max(1));
    let piece_size = PieceSize::new(piece_kib * 1024).expect("--piece-kib: a power of two from 16 to 16384");
    let data: Vec<u8> = (0..mib * (1 << 20)).map(|i| (i.wrapping_mul(0x9e37_79b9) >> 13) as u8).collect();
    let hashes = PieceHashes::compute(piece_size, &data).expect("content");
    let hashes = layer::verify_layer(hashes.tree(), &hashes.to_layer_bytes()).expect("layer");
    let layout = *hashes.tree().layout();
    assert_eq!(layout.length(), NonZeroU64::new(data.len() as u64).expect("non-empty"));
    let count = layout.piece_count() as u32;
    let content = Content {
        id: ContentId(digest(&SHA256, &data).as_ref().try_into().expect("32 bytes")),
        layout,
        data: Bytes::from(data),
    };

    let pki = support::Pki::new();
    let receiver_tls = pki.device_tls(&support::device_id(1));
    let sender_tls = pki.device_tls(&support::device_id(2));

    let file = tempfile::NamedTempFile::new().expect("temporary file");
    file.as_file().write_all(&content.data).expect("write the content");
    let openssl = Command::new("openssl").arg("version").output().is_ok_and(|out| out.status.success());
    if !openssl {
        println!("openssl not found: the `openssl dgst -sha256` baseline is skipped");
    }

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let mut best = Best::default();
    let mut receive_wall = Duration::MAX;
    let mut best_reads = 0;
    let mut suite = String::new();
    for _ in 0..rounds {
        if openssl {
            let before = Cpu::children();
            let out = Command::new("openssl").arg("dgst").arg("-sha256").arg(file.path()).output().expect("openssl");
            let used = Cpu::children().since(before);
            assert!(out.status.success(), "openssl dgst failed: {}", String::from_utf8_lossy(&out.stderr));
            let expected = hex::encode(content.id.0);
            assert!(String::from_utf8_lossy(&out.stdout).contains(&expected), "openssl computed another digest");
            best.openssl = Some(best.openssl.map_or(used, |b| b.min(used)));
        }

        let before = Cpu::thread();
        std::hint::black_box(digest(&SHA256, std::hint::black_box(&content.data)));
        best.sha256 = best.sha256.min(Cpu::thread().since(before));

        let before = Cpu::thread();
        for piece in 0..count {
            let piece_data = std::hint::black_box(content.piece(piece));
            hashes.verify_piece(piece.into(), &piece_data).expect("verifies");
        }
        best.verify = best.verify.min(Cpu::thread().since(before));

        let (used, wall, reads, negotiated) =
            runtime.block_on(receive_round(&content, &hashes, &receiver_tls, &sender_tls));
        if used.total < best.receive.total {
            (best_reads, receive_wall) = (reads, wall);
        }
        best.receive = best.receive.min(used);
        suite = negotiated;
    }

    let gib = content.data.len() as f64 / (1u64 << 30) as f64;
    let per_gib = |d: Duration| d.as_secs_f64() / gib;
    println!("content {mib} MiB in {count} pieces of {piece_kib} KiB, best of {rounds} rounds, CPU of one thread");
    println!("TLS 1.3 over loopback TCP, {suite}");
    println!(
        "{:<44} {:>10} {:>8} {:>8} {:>8} {:>9} {:>9}",
        "path", "CPU s/GiB", "user", "system", "GiB/s", "/openssl", "/aws-lc"
    );
    let mut rows = vec![];
    if let Some(openssl) = best.openssl {
        rows.push(("openssl dgst -sha256 (process, file)", openssl));
    }
    rows.push(("sha256 (aws-lc-rs, one pass)", best.sha256));
    rows.push(("verify pieces (piece layer) alone", best.verify));
    rows.push(("receive: TLS + decode + Swarm::piece_received", best.receive));
    for (name, cpu) in rows {
        let ratio_openssl =
            best.openssl.map_or("-".into(), |o| format!("{:.2}x", per_gib(cpu.total) / per_gib(o.total)));
        println!(
            "{name:<44} {:>10.3} {:>8.3} {:>8.3} {:>8.2} {:>9} {:>8.2}x",
            per_gib(cpu.total),
            per_gib(cpu.user),
            per_gib(cpu.system),
            1.0 / per_gib(cpu.total),
            ratio_openssl,
            per_gib(cpu.total) / per_gib(best.sha256.total),
        );
    }
    println!(
        "receive, its best round: {:.3} s wall ({:.2} GiB/s), {best_reads} reads of {:.1} KiB on average",
        receive_wall.as_secs_f64(),
        gib / receive_wall.as_secs_f64(),
        content.data.len() as f64 / best_reads.max(1) as f64 / 1024.0,
    );
}

/// The content both sides hold: the receiver only its layer (from `hashes`), the sender its bytes.
struct Content {
    id: ContentId,
    layout: PieceLayout,
    data: Bytes,
}

impl Content {
    fn piece(&self, piece: u32) -> Bytes {
        let range = self.layout.piece_range(piece.into()).expect("piece in range");
        self.data.slice(range.start as usize..range.end as usize)
    }
}

/// One download of the whole content from a sender on its own thread over TLS on loopback. Returns the receiving
/// thread's CPU from the first request to the last piece verified, the wall time of the same span, the
/// number of reads and the negotiated cipher suite.
async fn receive_round(
    content: &Content,
    hashes: &PieceHashes,
    receiver_tls: &PeerTlsConfig,
    sender_tls: &PeerTlsConfig,
) -> (Cpu, Duration, u64, String) {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1");
    let addr = listener.local_addr().expect("local address");
    listener.set_nonblocking(true).expect("non-blocking listener");
    let sender = {
        let (tls, content) =
            (sender_tls.clone(), Content { id: content.id, layout: content.layout, data: content.data.clone() });
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(send(listener, tls, content))
        })
    };

    // The connecting side, as `session::connect`: TCP without Nagle, mutual TLS, handshake and bitfield both ways.
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let mut stream =
        receiver_tls.connector().connect(PeerTlsConfig::server_name(addr.ip()), tcp).await.expect("TLS handshake");
    let suite =
        stream.get_ref().1.negotiated_cipher_suite().map_or("no cipher suite".into(), |s| format!("{:?}", s.suite()));
    let decoder = Decoder::for_content(&content.layout).expect("decoder");
    let count = content.layout.piece_count() as u32;
    let mut out = BytesMut::new();
    Message::Handshake { version: PROTOCOL_VERSION, content: content.id, piece_count: count }.encode(&mut out);
    Message::Bitfield(Bitfield::new(count)).encode(&mut out);
    stream.write_all(&out).await.expect("send the handshake");
    stream.flush().await.expect("flush");
    let mut buffer = BytesMut::with_capacity(8192);
    let handshake = read_message(&mut stream, &mut buffer, &decoder).await;
    assert!(handshake.check_handshake(&content.id, count).is_ok(), "the sender's handshake: {handshake:?}");
    let Message::Bitfield(bitfield) = read_message(&mut stream, &mut buffer, &decoder).await else {
        panic!("no bitfield after the handshake")
    };

    let start_time = Instant::now();
    let mut swarm =
        Swarm::new(hashes.clone(), Bitfield::new(count), SwarmConfig::default(), start_time).expect("swarm");
    swarm.add_peer(PEER, PeerKind::Lan, start_time).expect("peer");
    swarm.peer_bitfield(PEER, bitfield).expect("bitfield");
    let start = Cpu::thread();
    let mut verified = 0u32;
    let mut received = 0u64;
    let mut reads = 0u64;
    loop {
        out.clear();
        for piece in swarm.next_peer_requests(PEER, Instant::now()) {
            Message::Request { piece }.encode(&mut out);
        }
        if !out.is_empty() {
            stream.write_all(&out).await.expect("send requests");
            stream.flush().await.expect("flush");
        }
        if swarm.is_complete() {
            break;
        }
        // A message the buffer holds, or one more read (the session reader's loop); each verified piece makes room
        // for the next requests.
        match decoder.decode(&mut buffer).expect("a valid stream") {
            Some(Message::Piece { piece, data }) => {
                received += data.len() as u64;
                let outcome = swarm.piece_received(Source::Peer(PEER), piece, &data, Instant::now());
                assert_eq!(outcome, Received::Verified, "piece {piece}");
                verified += 1;
            }
            Some(other) => panic!("{} instead of a piece", other.name()),
            None => {
                buffer.reserve(64 * 1024);
                let read = stream.read_buf(&mut buffer).await.expect("read");
                assert!(read > 0, "the sender closed the connection before the last piece");
                reads += 1;
            }
        }
    }
    let used = Cpu::thread().since(start);
    let wall = start_time.elapsed();
    assert!(swarm.is_complete() && verified == count && received == content.data.len() as u64);

    out.clear();
    Message::Goodbye { reason: GoodbyeReason::Done }.encode(&mut out);
    stream.write_all(&out).await.expect("goodbye");
    stream.shutdown().await.expect("close");
    let served = sender.join().expect("the sender thread");
    assert_eq!(served, count, "pieces the sender served");
    (used, wall, reads, suite)
}

/// The serving side, as the listener and a session's reader, server and writer: accepts one connection, answers the
/// handshake with a full bitfield, then answers every request with the piece until the receiver says goodbye.
/// Returns how many pieces it sent.
async fn send(listener: std::net::TcpListener, tls: PeerTlsConfig, content: Content) -> u32 {
    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
    let (tcp, _) = listener.accept().await.expect("accept");
    tcp.set_nodelay(true).expect("nodelay");
    let mut stream = tls.acceptor().accept(tcp).await.expect("TLS handshake");
    let decoder = Decoder::for_content(&content.layout).expect("decoder");
    let count = content.layout.piece_count() as u32;
    let mut buffer = BytesMut::with_capacity(8192);
    let handshake = read_message(&mut stream, &mut buffer, &decoder).await;
    assert!(handshake.check_handshake(&content.id, count).is_ok(), "the receiver's handshake: {handshake:?}");
    let mut out = BytesMut::new();
    Message::Handshake { version: PROTOCOL_VERSION, content: content.id, piece_count: count }.encode(&mut out);
    Message::Bitfield(Bitfield::full(count)).encode(&mut out);
    stream.write_all(&out).await.expect("send the handshake");
    stream.flush().await.expect("flush");
    let Message::Bitfield(_) = read_message(&mut stream, &mut buffer, &decoder).await else {
        panic!("no bitfield after the handshake")
    };

    let (mut reader, mut writer) = tokio::io::split(stream);
    let (requests, mut queue) = mpsc::unbounded_channel();
    let reading = tokio::spawn(async move {
        loop {
            match read_message(&mut reader, &mut buffer, &decoder).await {
                Message::Request { piece } => requests.send(piece).expect("the writer runs"),
                Message::Goodbye { .. } => return,
                other => panic!("{} from the receiver", other.name()),
            }
        }
    });
    let mut served = 0;
    while let Some(piece) = queue.recv().await {
        let data = content.piece(piece);
        // Pieces are at most 16 MiB, so the length fits.
        writer.write_all(&encode_piece_header(piece, data.len() as u32)).await.expect("write");
        writer.write_all(&data).await.expect("write");
        if queue.is_empty() {
            writer.flush().await.expect("flush");
        }
        served += 1;
    }
    reading.await.expect("the reader task");
    writer.shutdown().await.expect("close");
    served
}

/// Reads one whole message; the stream must not end before it.
async fn read_message<S: AsyncRead + Unpin>(stream: &mut S, buffer: &mut BytesMut, decoder: &Decoder) -> Message {
    loop {
        if let Some(message) = decoder.decode(buffer).expect("a valid stream") {
            return message;
        }
        buffer.reserve(64 * 1024);
        assert!(stream.read_buf(buffer).await.expect("read") > 0, "the connection ended");
    }
}

/// The best round of each path.
struct Best {
    openssl: Option<Cpu>,
    sha256: Cpu,
    verify: Cpu,
    receive: Cpu,
}

impl Default for Best {
    fn default() -> Self {
        Self { openssl: None, sha256: Cpu::MAX, verify: Cpu::MAX, receive: Cpu::MAX }
    }
}

/// CPU time: the total, and user and system apart.
#[derive(Clone, Copy, Debug)]
struct Cpu {
    total: Duration,
    user: Duration,
    system: Duration,
}

impl Cpu {
    const MAX: Self = Self { total: Duration::MAX, user: Duration::MAX, system: Duration::MAX };

    /// The calling thread's CPU: the total from `CLOCK_THREAD_CPUTIME_ID` (exact), user and system from
    /// `getrusage(RUSAGE_THREAD)`.
    fn thread() -> Self {
        let mut clock = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `clock` is a valid, writable timespec.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut clock) };
        assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
        let (user, system) = rusage(libc::RUSAGE_THREAD);
        Self { total: Duration::new(clock.tv_sec as u64, clock.tv_nsec as u32), user, system }
    }

    /// The CPU of the terminated children this process waited for.
    fn children() -> Self {
        let (user, system) = rusage(libc::RUSAGE_CHILDREN);
        Self { total: user + system, user, system }
    }

    fn since(self, before: Self) -> Self {
        Self {
            total: self.total.saturating_sub(before.total),
            user: self.user.saturating_sub(before.user),
            system: self.system.saturating_sub(before.system),
        }
    }

    /// The round with less CPU in total.
    fn min(self, other: Self) -> Self {
        if other.total < self.total { other } else { self }
    }
}

/// User and system time of `getrusage(who)`.
fn rusage(who: libc::c_int) -> (Duration, Duration) {
    // SAFETY: rusage is plain data; all zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage.
    let rc = unsafe { libc::getrusage(who, &mut usage) };
    assert_eq!(rc, 0, "getrusage");
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (time(usage.ru_utime), time(usage.ru_stime))
}
