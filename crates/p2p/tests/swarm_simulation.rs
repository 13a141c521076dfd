//! A download driven through `Swarm` in virtual time against peers of every behaviour (honest, slow, silent,
//! corrupting, sending wrong lengths or unasked pieces, rejecting) and an HTTP source: whatever the mix, the download
//! completes with the right bytes, only verified pieces are taken, only misbehaving peers are banned, every peer that
//! sent `ban_after` bad pieces is, and no peer is asked for a piece it does not have.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashSet};
use std::time::{Duration, Instant};

use custody_catalog::pieces::{PieceHashes, PieceSize};
use custody_p2p::swarm::{Action, DropReason, PeerId, PeerKind, Received, Source, Swarm, SwarmConfig};
use custody_p2p::{Bitfield, layer};
use proptest::prelude::*;

const PIECE: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behaviour {
    Honest {
        latency_ms: u64,
    },
    /// Answers after longer than the request timeout.
    Slow,
    Silent,
    Corrupt,
    WrongLength,
    /// Sends a piece it was not asked for with every answer.
    Unasked,
    Rejects,
}

impl Behaviour {
    fn misbehaves(self) -> bool {
        matches!(self, Self::Corrupt | Self::WrongLength | Self::Unasked)
    }
}

#[derive(Debug)]
enum Event {
    Answer { peer: PeerId, piece: u32, data: Vec<u8> },
    Reject { peer: PeerId, piece: u32 },
    Http { piece: u32 },
}

/// Events in time order (insertion order among equal times).
#[derive(Default)]
struct Events {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    pending: BTreeMap<u64, Event>,
    next: u64,
}

impl Events {
    fn push(&mut self, at: Instant, event: Event) {
        self.heap.push(Reverse((at, self.next)));
        self.pending.insert(self.next, event);
        self.next += 1;
    }

    fn next_time(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    fn pop_due(&mut self, now: Instant) -> Option<Event> {
        let Reverse((at, id)) = *self.heap.peek()?;
        if at > now {
            return None;
        }
        self.heap.pop();
        self.pending.remove(&id)
    }
}

fn behaviour() -> impl Strategy<Value = Behaviour> {
    prop_oneof![
        3 => (1u64..400).prop_map(|latency_ms| Behaviour::Honest { latency_ms }),
        1 => Just(Behaviour::Slow),
        1 => Just(Behaviour::Silent),
        1 => Just(Behaviour::Corrupt),
        1 => Just(Behaviour::WrongLength),
        1 => Just(Behaviour::Unasked),
        1 => Just(Behaviour::Rejects),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn downloads_complete_correctly_whatever_the_peers_do(
        count in 1usize..40,
        peers in prop::collection::vec((behaviour(), prop::collection::vec(any::<bool>(), 40), any::<bool>()), 0..8),
        http_delay_s in prop::sample::select(vec![0u64, 5, 120]),
        http_latency_ms in 50u64..2000,
        resumed in prop::collection::vec(any::<bool>(), 40),
        seed in any::<u64>(),
    ) {
        let data: Vec<u8> = (0..count * PIECE - 77).map(|i| (i as u64).wrapping_mul(seed | 1).to_le_bytes()[3]).collect();
        let hashes = PieceHashes::compute(PieceSize::MIN, &data).unwrap();
        let layer_bytes = hashes.to_layer_bytes();
        let hashes = layer::verify_layer(hashes.tree(), &layer_bytes).unwrap();
        let piece = |index: u32| &data[index as usize * PIECE..((index as usize + 1) * PIECE).min(data.len())];
        let mut have = Bitfield::new(count as u32);
        for index in (0..count as u32).filter(|&i| resumed[i as usize]) {
            have.set(index).unwrap();
        }
        let config = SwarmConfig { http_delay: Duration::from_secs(http_delay_s), seed, ..SwarmConfig::default() };
        let ban_after = config.ban_after;
        let start = Instant::now();
        let mut swarm = Swarm::new(hashes, have.clone(), config, start).unwrap();
        let mut file: Vec<Option<Vec<u8>>> =
            (0..count as u32).map(|i| have.get(i).then(|| piece(i).to_vec())).collect();

        let mut behaviours = BTreeMap::new();
        let mut bitfields = BTreeMap::new();
        for (i, (behaviour, bits, complete)) in peers.iter().enumerate() {
            let id = PeerId(i as u64);
            let mut bitfield = Bitfield::new(count as u32);
            for index in (0..count as u32).filter(|&p| *complete || bits[p as usize]) {
                bitfield.set(index).unwrap();
            }
            swarm.add_peer(id, PeerKind::Lan, start).unwrap();
            swarm.peer_bitfield(id, bitfield.clone()).unwrap();
            behaviours.insert(id, *behaviour);
            bitfields.insert(id, bitfield);
        }

        let mut events = Events::default();
        let mut http_in_flight: HashSet<u32> = HashSet::new();
        let mut dropped: HashSet<PeerId> = HashSet::new();
        let mut bad_sent: BTreeMap<PeerId, u32> = BTreeMap::new();
        let mut now = start;
        let deadline = start + Duration::from_secs(3600);

        let mut rounds = 0u32;
        while !swarm.is_complete() {
            rounds += 1;
            prop_assert!(rounds < 100_000, "no progress: the swarm keeps waking up without anything to do");
            prop_assert!(now < deadline, "stalled: {:?} missing, counters {:?}", count - swarm.have().count() as usize, swarm.counters());
            // Timeouts first: what they release is asked for below, at the same instant.
            for action in swarm.poll(now) {
                match action {
                    Action::Drop { peer, reason } => {
                        prop_assert!(
                            reason != DropReason::Banned || behaviours[&peer].misbehaves(),
                            "{peer} banned but behaves {:?}", behaviours[&peer]
                        );
                        swarm.remove_peer(peer);
                        dropped.insert(peer);
                    }
                    Action::CancelHttp { piece, .. } => {
                        http_in_flight.remove(&piece);
                    }
                    Action::Cancel { .. } => {}
                }
            }

            // Ask every live peer and HTTP (two requests at a time) for what they should fetch now.
            for (&id, &behaviour) in &behaviours {
                if dropped.contains(&id) {
                    continue;
                }
                for index in swarm.next_peer_requests(id, now) {
                    prop_assert!(bitfields[&id].get(index), "peer {id} asked for piece {index} it does not have");
                    let good = piece(index).to_vec();
                    match behaviour {
                        Behaviour::Honest { latency_ms } => {
                            events.push(now + Duration::from_millis(latency_ms), Event::Answer { peer: id, piece: index, data: good })
                        }
                        Behaviour::Slow => {
                            events.push(now + Duration::from_secs(25), Event::Answer { peer: id, piece: index, data: good })
                        }
                        Behaviour::Silent => {}
                        Behaviour::Corrupt => {
                            let mut bad = good;
                            let at = index as usize % bad.len();
                            bad[at] ^= 0x55;
                            events.push(now + Duration::from_millis(10), Event::Answer { peer: id, piece: index, data: bad })
                        }
                        Behaviour::WrongLength => {
                            let mut long = good;
                            long.push(0);
                            events.push(now + Duration::from_millis(10), Event::Answer { peer: id, piece: index, data: long })
                        }
                        Behaviour::Unasked => {
                            let other = (index + 1) % count as u32;
                            let other_data = piece(other).to_vec();
                            events.push(now + Duration::from_millis(5), Event::Answer { peer: id, piece: other, data: other_data });
                            events.push(now + Duration::from_millis(10), Event::Answer { peer: id, piece: index, data: good })
                        }
                        Behaviour::Rejects => {
                            events.push(now + Duration::from_millis(10), Event::Reject { peer: id, piece: index })
                        }
                    }
                }
            }
            while http_in_flight.len() < 2 {
                let Some(index) = swarm.next_http_request(0, now) else { break };
                prop_assert!(http_in_flight.insert(index));
                events.push(now + Duration::from_millis(http_latency_ms), Event::Http { piece: index });
            }
            // Advance to the next answer or timeout; a wakeup is always later than now.
            let wakeup = swarm.next_wakeup(now);
            prop_assert!(wakeup.is_none_or(|at| at > now), "next_wakeup is not in the future");
            let next = [events.next_time(), wakeup].into_iter().flatten().min();
            let Some(next) = next else {
                prop_assert!(false, "nothing pending and not complete: {:?}", swarm.counters());
                unreachable!();
            };
            now = now.max(next);
            while let Some(event) = events.pop_due(now) {
                match event {
                    Event::Answer { peer, piece: index, data: bytes } => {
                        if dropped.contains(&peer) {
                            continue;
                        }
                        let good = bytes == piece(index);
                        let result = swarm.piece_received(Source::Peer(peer), index, &bytes, now);
                        if matches!(result, Received::Corrupt { .. } | Received::Unexpected { .. }) {
                            *bad_sent.entry(peer).or_default() += 1;
                        }
                        if result == Received::Verified {
                            prop_assert!(good, "a wrong piece verified");
                            prop_assert!(file[index as usize].is_none(), "piece {index} verified twice");
                            file[index as usize] = Some(bytes);
                        }
                        let refused = matches!(result, Received::Corrupt { .. } | Received::Unexpected { .. });
                        prop_assert!(good || refused, "a bad piece was not refused: {:?}", result);
                    }
                    Event::Reject { peer, piece: index } => {
                        if !dropped.contains(&peer) {
                            swarm.request_failed(Source::Peer(peer), index, now);
                        }
                    }
                    Event::Http { piece: index } => {
                        if http_in_flight.remove(&index) {
                            let result = swarm.piece_received(Source::Http(0), index, piece(index), now);
                            let taken = matches!(result, Received::Verified | Received::Duplicate);
                            prop_assert!(taken, "HTTP piece: {:?}", result);
                            if result == Received::Verified {
                                prop_assert!(file[index as usize].is_none());
                                file[index as usize] = Some(piece(index).to_vec());
                            }
                        }
                    }
                }
            }
        }

        let assembled: Vec<u8> = file.into_iter().flat_map(|piece| piece.unwrap()).collect();
        prop_assert!(assembled == data, "the assembled file differs");
        prop_assert_eq!(swarm.stats().total() + have.iter_set().map(|i| piece(i).len() as u64).sum::<u64>(), data.len() as u64);
        for (peer, bad) in bad_sent {
            prop_assert!(behaviours[&peer].misbehaves());
            if bad >= ban_after {
                prop_assert!(swarm.is_banned(peer), "{peer} sent {bad} bad pieces and is not banned");
            }
        }
    }
}
