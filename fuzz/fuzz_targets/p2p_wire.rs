//! The peer protocol's wire decoder on untrusted bytes (custody-p2p `wire::Decoder`).
//!
//! Input: `[config, chunk, stream...]`. `config & 0x80` gives the decoder a piece count of `(config & 0x3f) + 1`
//! (else it is before the handshake); `config & 0x40` picks a content-sized frame limit (`frame_limit` of a layout
//! of that many 16 KiB pieces) instead of a small one (`(config & 0x3f) * 8 + 40`). The stream is fed in pieces of
//! `chunk % 64 + 1` bytes. Must hold: no panic; the decoder never waits with more than `max_frame + 4` bytes
//! buffered; every message decoded re-encodes to a frame that decodes to the same message; feeding in pieces gives
//! the same messages (and the same first error) as feeding everything at once; a decoded layer goes through
//! `layer::verify_layer` without panicking and is refused unless it is the true layer.
#![no_main]

use std::num::NonZeroU64;

use bytes::BytesMut;
use custody_catalog::pieces::{PieceHashes, PieceLayout, PieceSize};
use custody_p2p::layer;
use custody_p2p::wire::{self, Decoder, LENGTH_LEN, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let [config, chunk, stream @ ..] = input else { return };
    let count = u32::from(config & 0x3f) + 1;
    let decoder = decoder(*config, count);

    let all_at_once = decode(&decoder, stream, stream.len().max(1));
    let in_pieces = decode(&decoder, stream, usize::from(chunk % 64) + 1);
    assert_eq!(all_at_once, in_pieces, "split feeding changed the messages");

    let (messages, _) = all_at_once;
    for message in messages {
        let mut frame = BytesMut::new();
        message.encode(&mut frame);
        assert_eq!(decoder.decode(&mut frame), Ok(Some(message.clone())), "re-encoded message");
        assert!(frame.is_empty());
        if let Message::Layer(bytes) = &message {
            // A tree of `count` pieces whose layer is almost never what the fuzzer sends.
            let data = vec![0x5a; count as usize * PieceSize::MIN.get() as usize];
            let hashes = PieceHashes::compute(PieceSize::MIN, &data).expect("non-empty content");
            match layer::verify_layer(hashes.tree(), bytes) {
                Ok(verified) => assert_eq!(verified.to_layer_bytes(), bytes.to_vec()),
                Err(_) => assert_ne!(hashes.to_layer_bytes(), bytes.to_vec()),
            }
        }
    }
});

fn decoder(config: u8, count: u32) -> Decoder {
    let mut decoder = match config & 0x40 {
        0 => Decoder::new(usize::from(config & 0x3f) * 8 + 40),
        _ => {
            let length = NonZeroU64::new(u64::from(count) * u64::from(PieceSize::MIN.get())).expect("count >= 1");
            let layout = PieceLayout::new(length, PieceSize::MIN);
            Decoder::new(wire::frame_limit(&layout).expect("few pieces"))
        }
    };
    if config & 0x80 != 0 {
        decoder.set_piece_count(count).expect("count in range");
    }
    decoder
}

/// The messages decoded from `stream` fed `chunk` bytes at a time, and the first error (as text), if any.
fn decode(decoder: &Decoder, stream: &[u8], chunk: usize) -> (Vec<Message>, Option<String>) {
    let mut buf = BytesMut::new();
    let mut messages = Vec::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(message)) => messages.push(message),
                Ok(None) => {
                    assert!(buf.len() < LENGTH_LEN + decoder.max_frame().max(1), "buffered past the frame limit");
                    break;
                }
                Err(e) => return (messages, Some(e.to_string())),
            }
        }
    }
    (messages, None)
}
