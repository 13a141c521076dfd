//! Which pieces a side has: one bit per piece, the piece count fixed when the bitfield is made.
//!
//! The wire form is BitTorrent's (BEP 3): `ceil(count / 8)` bytes, piece 0 in the high bit of the first byte; the
//! spare bits past the last piece are zero, and [`Bitfield::from_bytes`] refuses any other length or a spare bit set.

use crate::Error;

/// One bit per piece. `len` pieces, fixed; the set bits are counted as they change.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Bitfield {
    bytes: Vec<u8>,
    len: u32,
    count: u32,
}

impl Bitfield {
    /// A bitfield of `len` pieces, none set.
    pub fn new(len: u32) -> Self {
        Self { bytes: vec![0; Self::byte_len(len)], len, count: 0 }
    }

    /// A bitfield of `len` pieces, all set (a complete copy).
    pub fn full(len: u32) -> Self {
        let mut bytes = vec![0xff; Self::byte_len(len)];
        if let Some(last) = bytes.last_mut() {
            *last = Self::last_byte_mask(len);
        }
        Self { bytes, len, count: len }
    }

    /// Parses the wire form for content of `len` pieces: exactly `ceil(len / 8)` bytes, spare bits zero.
    pub fn from_bytes(len: u32, bytes: &[u8]) -> Result<Self, Error> {
        let expected = Self::byte_len(len);
        if bytes.len() != expected {
            return Err(Error::PayloadLength {
                message: "Bitfield",
                expected: expected.to_string(),
                actual: bytes.len() as u64,
            });
        }
        if let Some(last) = bytes.last()
            && last & !Self::last_byte_mask(len) != 0
        {
            return Err(Error::BitfieldSpareBits { count: len });
        }
        let count = bytes.iter().map(|b| b.count_ones()).sum();
        Ok(Self { bytes: bytes.to_vec(), len, count })
    }

    /// The wire form: `ceil(len / 8)` bytes, piece 0 in the high bit of the first byte.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The number of pieces (bits), set or not.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// True for a bitfield of zero pieces (content always has at least one piece, so only a default value is).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The number of pieces set.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// True when every piece is set.
    pub fn is_complete(&self) -> bool {
        self.count == self.len
    }

    /// Whether piece `piece` is set; false past the end.
    pub fn get(&self, piece: u32) -> bool {
        piece < self.len && self.bytes[(piece / 8) as usize] & Self::bit(piece) != 0
    }

    /// Sets piece `piece`; returns whether it was newly set. A piece past the end is an error, not ignored.
    pub fn set(&mut self, piece: u32) -> Result<bool, Error> {
        self.check(piece)?;
        let byte = &mut self.bytes[(piece / 8) as usize];
        let newly = *byte & Self::bit(piece) == 0;
        *byte |= Self::bit(piece);
        self.count += u32::from(newly);
        Ok(newly)
    }

    /// Clears piece `piece`; returns whether it was set.
    pub fn clear(&mut self, piece: u32) -> Result<bool, Error> {
        self.check(piece)?;
        let byte = &mut self.bytes[(piece / 8) as usize];
        let was = *byte & Self::bit(piece) != 0;
        *byte &= !Self::bit(piece);
        self.count -= u32::from(was);
        Ok(was)
    }

    /// The pieces set, in order.
    pub fn iter_set(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(|&piece| self.get(piece))
    }

    /// The pieces not set, in order.
    pub fn iter_missing(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(|&piece| !self.get(piece))
    }

    fn check(&self, piece: u32) -> Result<(), Error> {
        match piece < self.len {
            true => Ok(()),
            false => Err(Error::PieceIndex { message: "bitfield", piece: piece.into(), count: self.len.into() }),
        }
    }

    /// The wire length for `len` pieces.
    pub fn byte_len(len: u32) -> usize {
        len.div_ceil(8) as usize
    }

    fn bit(piece: u32) -> u8 {
        0x80 >> (piece % 8)
    }

    /// The bits of the last byte that name pieces (the rest are spare and must be zero).
    fn last_byte_mask(len: u32) -> u8 {
        match len % 8 {
            0 => 0xff,
            used => !(0xffu8 >> used),
        }
    }
}

impl Default for Bitfield {
    fn default() -> Self {
        Self::new(0)
    }
}

impl std::fmt::Debug for Bitfield {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bitfield({}/{})", self.count, self.len)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn wire_form_is_bittorrents() {
        let mut bits = Bitfield::new(10);
        assert_eq!(bits.as_bytes(), &[0, 0]);
        assert_eq!(bits.set(0), Ok(true));
        assert_eq!(bits.set(0), Ok(false));
        assert_eq!(bits.set(9), Ok(true));
        assert_eq!(bits.as_bytes(), &[0x80, 0x40]);
        assert_eq!(bits.count(), 2);
        assert_eq!(bits.iter_set().collect::<Vec<_>>(), vec![0, 9]);
        assert_eq!(bits.iter_missing().count(), 8);
        assert!(!bits.get(10) && !bits.get(u32::MAX));
        assert!(matches!(bits.set(10), Err(Error::PieceIndex { piece: 10, count: 10, .. })));
        assert_eq!(bits.clear(0), Ok(true));
        assert_eq!(bits.clear(0), Ok(false));
        assert_eq!(bits.count(), 1);

        let full = Bitfield::full(10);
        assert_eq!(full.as_bytes(), &[0xff, 0xc0]);
        assert!(full.is_complete());
        assert_eq!(Bitfield::full(16).as_bytes(), &[0xff, 0xff]);
        assert_eq!(Bitfield::full(1).as_bytes(), &[0x80]);
    }

    #[test]
    fn spare_bits_and_lengths_are_checked() {
        assert_eq!(Bitfield::from_bytes(10, &[0xff, 0xc0]), Ok(Bitfield::full(10)));
        assert_eq!(Bitfield::from_bytes(10, &[0xff, 0xe0]), Err(Error::BitfieldSpareBits { count: 10 }));
        assert_eq!(Bitfield::from_bytes(10, &[0x00, 0x01]), Err(Error::BitfieldSpareBits { count: 10 }));
        assert!(matches!(Bitfield::from_bytes(10, &[0xff]), Err(Error::PayloadLength { actual: 1, .. })));
        assert!(matches!(Bitfield::from_bytes(10, &[0, 0, 0]), Err(Error::PayloadLength { actual: 3, .. })));
        assert_eq!(Bitfield::from_bytes(8, &[0xff]), Ok(Bitfield::full(8)));
    }

    proptest! {
        #[test]
        fn any_bytes_parse_only_to_a_consistent_bitfield(len in 1u32..100, bytes in prop::collection::vec(any::<u8>(), 0..16)) {
            if let Ok(bits) = Bitfield::from_bytes(len, &bytes) {
                prop_assert_eq!(bits.as_bytes(), &bytes[..]);
                prop_assert_eq!(bits.count() as usize, bits.iter_set().count());
                prop_assert_eq!(bits.iter_set().count() + bits.iter_missing().count(), len as usize);
                prop_assert!(bits.iter_set().all(|piece| piece < len));
            }
        }

        #[test]
        fn set_pieces_round_trip(len in 1u32..200, picks in prop::collection::vec(any::<prop::sample::Index>(), 0..50)) {
            let mut bits = Bitfield::new(len);
            let mut expected = std::collections::BTreeSet::new();
            for pick in picks {
                let piece = pick.index(len as usize) as u32;
                prop_assert_eq!(bits.set(piece).unwrap(), expected.insert(piece));
            }
            let back = Bitfield::from_bytes(len, bits.as_bytes()).unwrap();
            prop_assert_eq!(&back, &bits);
            prop_assert_eq!(back.iter_set().collect::<Vec<_>>(), expected.into_iter().collect::<Vec<_>>());
        }
    }
}
