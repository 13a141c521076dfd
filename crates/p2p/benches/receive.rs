//! CPU cost of receiving content from a peer, per GiB: the wire decoder reading `Piece` frames from a byte stream in
//! socket-sized chunks, and `Swarm::piece_received` verifying each piece against the piece layer (BEP 52: SHA-256 of
//! every 16 KiB block, then the tree up to the piece) and doing its bookkeeping, then asking for the next piece (four
//! requests in flight, the default); against plain SHA-256 (aws-lc-rs,
//! one pass) over the same bytes, the least any verifying receiver must spend. Both run on one core in alternating
//! rounds and the best round of each is kept, so that load from other processes affects both alike. Also shows
//! verification alone (`PieceHashes::verify_piece`, no decoding or scheduling).
//!
//! Run: `cargo bench -p custody-p2p --bench receive` (add `-- --mib N --piece-kib K --rounds R`; defaults 256 MiB,
//! 1024 KiB pieces, 5 rounds).

use std::num::NonZeroU64;
use std::time::{Duration, Instant};

use aws_lc_rs::digest::{SHA256, digest};
use bytes::BytesMut;
use custody_catalog::pieces::{PieceHashes, PieceSize};
use custody_p2p::swarm::{PeerId, PeerKind, Received, Source, Swarm, SwarmConfig};
use custody_p2p::wire::{Decoder, Message};
use custody_p2p::{Bitfield, layer};

/// Bytes handed to the decoder per read, as from a TLS record stream.
const READ: usize = 64 * 1024;

fn main() {
    let arg = |name: &str, default: u64| -> u64 {
        std::env::args().skip_while(|a| a != name).nth(1).and_then(|s| s.parse().ok()).unwrap_or(default)
    };
    let (mib, piece_kib, rounds) = (arg("--mib", 256), arg("--piece-kib", 1024), arg("--rounds", 5));
    let piece_size = PieceSize::new(piece_kib * 1024).expect("--piece-kib: a power of two from 16 to 16384");
    let data: Vec<u8> = (0..mib * (1 << 20)).map(|i| (i.wrapping_mul(0x9e37_79b9) >> 13) as u8).collect();
    let hashes = PieceHashes::compute(piece_size, &data).expect("content");
    let hashes = layer::verify_layer(hashes.tree(), &hashes.to_layer_bytes()).expect("layer");
    let layout = *hashes.tree().layout();
    assert_eq!(layout.length(), NonZeroU64::new(data.len() as u64).expect("non-empty"));
    let count = layout.piece_count() as u32;

    // The frames a peer sends: the pieces in the order the scheduler asks for them, four requests in flight, each
    // received piece making room for the next request (a dry run of the loop measured below).
    let config = SwarmConfig::default();
    let mut swarm = new_swarm(&hashes, &config, count);
    let now = Instant::now();
    let mut asked: std::collections::VecDeque<u32> = swarm.next_peer_requests(PeerId(1), now).into();
    let mut stream = BytesMut::new();
    while let Some(piece) = asked.pop_front() {
        let range = layout.piece_range(piece.into()).expect("piece in range");
        let piece_data = &data[range.start as usize..range.end as usize];
        assert_eq!(swarm.piece_received(Source::Peer(PeerId(1)), piece, piece_data, now), Received::Verified);
        let data = bytes::Bytes::copy_from_slice(piece_data);
        Message::Piece { piece, data }.encode(&mut stream);
        asked.extend(swarm.next_peer_requests(PeerId(1), now));
    }
    assert!(swarm.is_complete());
    let stream = stream.freeze();
    let decoder = Decoder::for_content(&layout).expect("decoder");

    let mut best = [Duration::MAX; 3];
    for _ in 0..rounds {
        let start = Instant::now();
        let hash = digest(&SHA256, std::hint::black_box(&data));
        best[0] = best[0].min(start.elapsed());
        std::hint::black_box(hash);

        let start = Instant::now();
        for piece in 0..count {
            let range = layout.piece_range(piece.into()).expect("piece in range");
            let piece_data = &data[range.start as usize..range.end as usize];
            hashes.verify_piece(piece.into(), std::hint::black_box(piece_data)).expect("verifies");
        }
        best[1] = best[1].min(start.elapsed());

        let mut swarm = new_swarm(&hashes, &config, count);
        swarm.next_peer_requests(PeerId(1), now);
        let start = Instant::now();
        let mut buf = BytesMut::with_capacity(decoder.max_frame() + 4);
        for chunk in stream.chunks(READ) {
            buf.extend_from_slice(chunk);
            while let Some(message) = decoder.decode(&mut buf).expect("valid stream") {
                let Message::Piece { piece, data } = message else { unreachable!("only pieces were sent") };
                let received = swarm.piece_received(Source::Peer(PeerId(1)), piece, &data, start);
                assert_eq!(received, Received::Verified);
                swarm.next_peer_requests(PeerId(1), start);
            }
        }
        best[2] = best[2].min(start.elapsed());
        assert!(swarm.is_complete());
    }

    let gib = data.len() as f64 / (1u64 << 30) as f64;
    let per_gib = |d: Duration| d.as_secs_f64() / gib;
    println!("content {mib} MiB in {count} pieces of {piece_kib} KiB, best of {rounds} rounds, one core");
    println!("{:<34} {:>12} {:>10} {:>8}", "path", "CPU s/GiB", "GiB/s", "ratio");
    for (name, time) in [
        ("sha256 (aws-lc-rs, one pass)", best[0]),
        ("verify pieces (piece layer)", best[1]),
        ("decode + Swarm::piece_received", best[2]),
    ] {
        println!(
            "{name:<34} {:>12.3} {:>10.2} {:>7.2}x",
            per_gib(time),
            1.0 / per_gib(time),
            per_gib(time) / per_gib(best[0])
        );
    }
}

/// A swarm missing everything, with one peer that has everything.
fn new_swarm(hashes: &PieceHashes, config: &SwarmConfig, count: u32) -> Swarm {
    let now = Instant::now();
    let mut swarm = Swarm::new(hashes.clone(), Bitfield::new(count), config.clone(), now).expect("swarm");
    swarm.add_peer(PeerId(1), PeerKind::Lan, now).expect("peer");
    swarm.peer_bitfield(PeerId(1), Bitfield::full(count)).expect("bitfield");
    swarm
}
