//! UTF-8 validation of text messages, one-shot and incremental.
//!
//! A text message may arrive in many frames and each frame in many reads; a code point
//! may be split anywhere. [`Utf8Validator`] carries the bytes of an unfinished code point
//! between pieces and reports an error as soon as a byte arrives that no valid
//! continuation could follow (RFC 6455 section 8.1: fail the connection with 1007).
#![forbid(unsafe_code)]

/// Text that is not valid UTF-8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidUtf8;

/// Validates a whole text payload.
pub fn validate(bytes: &[u8]) -> Result<&str, InvalidUtf8> {
    std::str::from_utf8(bytes).map_err(|_| InvalidUtf8)
}

/// Incremental validator state: the bytes of a code point split across pieces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Utf8Validator {
    pending: [u8; 3],
    pending_len: u8,
}

impl Utf8Validator {
    /// Validates the next piece. Fails as soon as the input cannot be a prefix of valid
    /// UTF-8.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), InvalidUtf8> {
        // Complete a code point left over from the previous piece, one byte at a time.
        while self.pending_len > 0 && !bytes.is_empty() {
            let mut buf = [0u8; 4];
            let n = usize::from(self.pending_len);
            buf[..n].copy_from_slice(&self.pending[..n]);
            buf[n] = bytes[0];
            bytes = &bytes[1..];
            match std::str::from_utf8(&buf[..=n]) {
                Ok(_) => self.pending_len = 0,
                Err(e) if e.error_len().is_none() => {
                    self.pending[n] = buf[n];
                    self.pending_len += 1;
                }
                Err(_) => return Err(InvalidUtf8),
            }
        }
        match std::str::from_utf8(bytes) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                let tail = &bytes[e.valid_up_to()..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.pending_len = tail.len() as u8;
                Ok(())
            }
            Err(_) => Err(InvalidUtf8),
        }
    }

    /// Checks that the text ended on a code point boundary.
    pub fn finish(&self) -> Result<(), InvalidUtf8> {
        if self.pending_len == 0 {
            Ok(())
        } else {
            Err(InvalidUtf8)
        }
    }
}
