//! RFC 6455 section 5.3 payload masking: XOR with a 4-byte key, applied in place.
//!
//! Every client frame is masked, so every payload byte the server receives passes
//! through [`apply_mask`]. `phase` lets a payload be unmasked in pieces as it arrives:
//! it is the payload offset of `buf[0]`, taken modulo 4.
//!
//! # The fast path, and why this one
//!
//! [`apply_mask`] first rotates the key so that its first byte belongs to `buf[0]`.
//! After that, the key repeats every 4 bytes, so any block whose length is a multiple
//! of 4 is masked by XOR with the key repeated to fill it: 16-byte blocks for the bulk,
//! then at most one 8-byte word, one 4-byte word and 3 single bytes for the rest.
//!
//! It is safe, portable Rust. The compiler turns the XOR of a fixed 16-byte block into
//! one unaligned load, `pxor` and store with SSE2, which every x86_64 CPU has (the loop
//! comes out unrolled four times). NEON is part of the aarch64 baseline in the same
//! way, so the same code should vectorize there too; that has not been measured.
//!
//! `benches/mask.rs` on the 2-core development VM (Xeon at 2.5 GHz, shared with other
//! builds, so the spread is wide), GiB/s, lowest and highest of three runs:
//!
//! | payload | `apply_mask` | byte-at-a-time reference |
//! |---------|--------------|--------------------------|
//! | 16 B    | 1.5-1.8      | 0.6-0.9                  |
//! | 128 B   | 13-15        | 0.6-1.0                  |
//! | 1 KiB   | 15-21        | 0.6-0.8                  |
//! | 64 KiB  | 11-24        | 0.8-1.0                  |
//!
//! Two other designs were measured in the same run and dropped. All three were called
//! through a function pointer, so the small sizes are slower than in the table:
//!
//! - An aligned middle (`align_to_mut::<u64>`, with byte loops for the unaligned head
//!   and tail): 2.9 GiB/s at 128 B against 5.6, and 12 against 16 at 1 KiB. On current
//!   x86 cores an unaligned load that stays within a cache line costs the same as an
//!   aligned one. Aligning saves little, and the byte loops cost a lot. It also needs
//!   `unsafe`.
//! - An AVX2 copy of the same loop, chosen at run time with `is_x86_feature_detected!`:
//!   18 GiB/s at 64 KiB against 17, which is within the noise. 64 KiB does not fit in
//!   L1, so the cache sets the speed, not the width of the registers. At 16-128 B it
//!   was slower (4.8 against 5.6 GiB/s at 128 B): the check and the call that cannot be
//!   inlined cost more than the wider registers save. It would also need an `unsafe`
//!   call, and this module stays `forbid(unsafe_code)`.
#![forbid(unsafe_code)]

/// Bytes masked per step of the bulk loop: one SSE2 or NEON register. It is a multiple
/// of 4, so every block starts at the same key phase.
const BLOCK_LEN: usize = 16;

/// XORs `buf` with `key`, as if `buf` started `phase` bytes into the masked payload.
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], phase: usize) {
    // The key as one native-endian word, rotated so that its first byte in memory is
    // the one for `buf[0]`. Which way to rotate depends on the byte order.
    let shift = 8 * (phase & 3) as u32;
    let key = u32::from_ne_bytes(key);
    let key = if cfg!(target_endian = "little") {
        key.rotate_right(shift)
    } else {
        key.rotate_left(shift)
    };
    let key4 = key.to_ne_bytes();
    let key_block: [u8; BLOCK_LEN] = std::array::from_fn(|i| key4[i % 4]);

    let mut blocks = buf.chunks_exact_mut(BLOCK_LEN);
    for block in &mut blocks {
        // A fixed-length loop over two arrays: the compiler emits one vector XOR.
        for (byte, k) in block.iter_mut().zip(key_block) {
            *byte ^= k;
        }
    }

    // At most 15 bytes are left. Straight-line code instead of another loop keeps the
    // cost of a 16-128 byte frame low.
    let mut rest = blocks.into_remainder();
    if rest.len() >= 8 {
        let (word, tail) = rest.split_at_mut(8);
        let key8 = u64::from(key) | (u64::from(key) << 32);
        xor_word(word, key8.to_ne_bytes());
        rest = tail;
    }
    if rest.len() >= 4 {
        let (word, tail) = rest.split_at_mut(4);
        xor_word(word, key4);
        rest = tail;
    }
    for (byte, k) in rest.iter_mut().zip(key4) {
        *byte ^= k;
    }
}

/// XORs `N` bytes (4 or 8) with `key` as one integer. The slice-to-array conversions
/// cannot fail: the callers split exactly `N` bytes off.
#[inline(always)]
fn xor_word<const N: usize>(word: &mut [u8], key: [u8; N]) {
    let mut bytes: [u8; N] = (&*word).try_into().expect("the caller splits off N bytes");
    for (byte, k) in bytes.iter_mut().zip(key) {
        *byte ^= k;
    }
    word.copy_from_slice(&bytes);
}

/// The byte-at-a-time definition from the RFC, kept as the reference the fast path is
/// tested against.
pub fn apply_mask_reference(buf: &mut [u8], key: [u8; 4], phase: usize) {
    for (i, byte) in buf.iter_mut().enumerate() {
        // Wrapping: only the sum modulo 4 matters, and a phase near `usize::MAX` (which
        // the property tests use) must not overflow in debug builds.
        *byte ^= key[phase.wrapping_add(i) & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Keys that catch different mistakes: zero (a no-op would pass), all ones, and
    /// keys whose four bytes differ, so that a wrong phase or byte order shows.
    const KEYS: [[u8; 4]; 5] = [
        [0x00, 0x00, 0x00, 0x00],
        [0xff, 0xff, 0xff, 0xff],
        [0x01, 0x02, 0x03, 0x04],
        [0x80, 0x00, 0xff, 0x7f],
        [0x37, 0xfa, 0x21, 0x3d],
    ];

    /// Bytes that do not repeat with period 4, so that XOR with the wrong key byte
    /// changes the result.
    fn filler(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + (i >> 8) * 7) as u8).collect()
    }

    #[test]
    fn rfc6455_example_hello() {
        // RFC 6455 section 5.7: "Hello" masked with 37 fa 21 3d.
        let mut buf = *b"Hello";
        apply_mask(&mut buf, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(buf, [0x7f, 0x9f, 0x4d, 0x51, 0x58]);
        apply_mask(&mut buf, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(&buf, b"Hello");
    }

    #[test]
    fn matches_reference_at_every_alignment_length_phase_and_key() {
        const OFFSETS: usize = 64;
        const MAX_LEN: usize = 300;
        // Room after the longest slice, so that a write past its end would show.
        const GUARD: usize = BLOCK_LEN;
        let original = filler(OFFSETS + MAX_LEN + GUARD);
        let mut fast = original.clone();
        for key in KEYS {
            // The reference applied to the whole buffer once for each phase of its first
            // byte, instead of to every slice: the test runs unoptimized, and this
            // halves its time.
            let masked: [Vec<u8>; 4] = std::array::from_fn(|phase| {
                let mut buf = original.clone();
                apply_mask_reference(&mut buf, key, phase);
                buf
            });
            for offset in 0..OFFSETS {
                for len in 0..=MAX_LEN {
                    for phase in 0..=7 {
                        fast.copy_from_slice(&original);
                        let end = offset + len;
                        apply_mask(&mut fast[offset..end], key, phase);
                        // `fast[offset]` is payload byte `phase`, so inside the slice it
                        // must equal the buffer masked from phase `phase - offset`.
                        let expected = &masked[phase.wrapping_sub(offset) & 3];
                        assert!(
                            fast[offset..end] == expected[offset..end]
                                && fast[..offset] == original[..offset]
                                && fast[end..] == original[end..],
                            "key {key:02x?} offset {offset} len {len} phase {phase}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn phase_is_taken_modulo_4() {
        let original = filler(100);
        for phase in [0, 1, 2, 3] {
            let mut expected = original.clone();
            apply_mask(&mut expected, KEYS[4], phase);
            for wrapped in [phase + 4, phase + 4 * 1000, usize::MAX - 3 + phase] {
                let mut got = original.clone();
                apply_mask(&mut got, KEYS[4], wrapped);
                assert_eq!(got, expected, "phase {wrapped}");
            }
        }
    }

    proptest! {
        /// Unmasking a payload piece by piece, each piece with the phase advanced by the
        /// bytes before it, is the same as unmasking it in one go. That is how payloads
        /// are unmasked as reads arrive.
        #[test]
        fn pieces_equal_one_shot(
            data in prop::collection::vec(any::<u8>(), 0..2048),
            key in any::<[u8; 4]>(),
            phase in any::<usize>(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let mut one_shot = data.clone();
            apply_mask(&mut one_shot, key, phase);
            let mut reference = data.clone();
            apply_mask_reference(&mut reference, key, phase);
            prop_assert_eq!(&one_shot, &reference);

            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(data.len() + 1)).collect();
            cuts.push(data.len());
            cuts.sort_unstable();
            let mut pieces = data.clone();
            let mut start = 0;
            for end in cuts {
                apply_mask(&mut pieces[start..end], key, phase.wrapping_add(start));
                start = end;
            }
            prop_assert_eq!(&pieces, &one_shot);
        }

        #[test]
        fn masking_twice_is_identity(
            data in prop::collection::vec(any::<u8>(), 0..2048),
            key in any::<[u8; 4]>(),
            phase in any::<usize>(),
        ) {
            let mut buf = data.clone();
            apply_mask(&mut buf, key, phase);
            apply_mask(&mut buf, key, phase);
            prop_assert_eq!(buf, data);
        }
    }
}
