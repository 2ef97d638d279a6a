//! UTF-8 validation of text messages, one-shot and incremental.
//!
//! A text message may arrive in many frames and each frame in many reads; a code point
//! may be split anywhere. [`Utf8Validator`] carries the bytes of an unfinished code point
//! between pieces and reports an error as soon as a byte arrives that no valid
//! continuation could follow (RFC 6455 section 8.1: fail the connection with 1007).
//!
//! # How
//!
//! The bulk of the work goes to simdutf8's `basic` API, which checks 64 bytes per step
//! with AVX2 or SSE4.2, chosen at run time, and falls back to std below 64 bytes.
//! `basic` only says yes or no. The `compat` API also says where the error is, but the
//! incremental validator does not need that: before it calls `basic`, it looks at the
//! last 3 bytes of the piece to find an unfinished code point at the end, and sets it
//! aside. So every byte is checked once, at bulk speed. Only the at most 3 carried
//! bytes, and the bytes of the next piece that complete them, are checked on their own.
//! std does that check: its error tells "invalid whatever follows" (`error_len()` is
//! `Some`) apart from "cut short" (`None`).
//!
//! `benches/utf8.rs` on the 2-core development VM (Xeon at 2.5 GHz, shared with other
//! builds, so the spread is wide), GiB/s, lowest and highest of three runs. "Mixed" is
//! Latin, Cyrillic, CJK and emoji:
//!
//! | input        | `validate` | simdutf8 `compat` | std     | `feed`, 4 KiB pieces |
//! |--------------|------------|-------------------|---------|----------------------|
//! | ASCII 128 B  | 8.6-10.7   | 4.3-7.3           | 4.9-6.6 | 3.3-5.5              |
//! | ASCII 4 KiB  | 39-57      | 28-44             | 12-15   | 31-48                |
//! | ASCII 64 KiB | 28-68      | 25-45             | 7-13    | 31-53                |
//! | mixed 128 B  | 3.0-5.5    | 2.8-4.2           | 0.3-0.7 | 2.0-3.7              |
//! | mixed 4 KiB  | 4.6-9.3    | 4.5-9.0           | 0.3-0.6 | 4.6-9.9              |
//! | mixed 64 KiB | 5.4-10.3   | 4.7-9.4           | 0.3-0.5 | 4.3-6.8              |
//!
//! On mixed text std is 10 to 30 times slower, and on ASCII from 4 KiB up it is 3 to 5
//! times slower, so simdutf8 it is. `basic` was ahead of `compat` in two of the three
//! runs, and it is never behind. `feed` costs a fixed 5-10 ns per piece on top of
//! `validate` (the suffix check and the call), which shows only at 128 B.
#![forbid(unsafe_code)]

/// Text that is not valid UTF-8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidUtf8;

/// Validates a whole text payload.
pub fn validate(bytes: &[u8]) -> Result<&str, InvalidUtf8> {
    simdutf8::basic::from_utf8(bytes).map_err(|_| InvalidUtf8)
}

/// Incremental validator state: the bytes of a code point split across pieces.
///
/// It lives in the state of every connection that is in the middle of a text message,
/// so it is kept to 4 bytes (asserted below).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Utf8Validator {
    /// The first bytes of a code point that the input so far ends in the middle of.
    /// Only `pending[..pending_len]` counts. The rest is kept zero so that two
    /// validators in the same state compare equal.
    pending: [u8; 3],
    /// How many bytes of `pending` count: 0 at a code point boundary, else 1..=3.
    pending_len: u8,
}

const _: () = assert!(size_of::<Utf8Validator>() <= 4);

impl Utf8Validator {
    /// Validates the next piece. Fails as soon as the input cannot be a prefix of valid
    /// UTF-8.
    ///
    /// After an error the validator is in an unspecified state: the message is
    /// rejected, so it must not be fed again (start over with `Utf8Validator::default()`).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), InvalidUtf8> {
        let bytes = self.complete_pending(bytes)?;
        if bytes.is_empty() {
            return Ok(());
        }
        debug_assert!(self.is_boundary());
        let (whole, unfinished) = bytes.split_at(unfinished_suffix_start(bytes));
        validate(whole)?;
        if unfinished.is_empty() {
            // The common case: nothing to carry, and no call into std for it.
            return Ok(());
        }
        self.carry(unfinished)
    }

    /// Checks that the text ended on a code point boundary.
    pub fn finish(&self) -> Result<(), InvalidUtf8> {
        if self.is_boundary() { Ok(()) } else { Err(InvalidUtf8) }
    }

    /// Whether the input so far ends on a code point boundary, so that
    /// [`finish`](Self::finish) would succeed.
    pub fn is_boundary(&self) -> bool {
        self.pending_len == 0
    }

    /// Completes the code point carried over from earlier pieces with the first bytes
    /// of `bytes`, and returns the bytes after it. If `bytes` is too short to complete
    /// it, carries the longer prefix and returns nothing.
    fn complete_pending<'a>(&mut self, bytes: &'a [u8]) -> Result<&'a [u8], InvalidUtf8> {
        let have = usize::from(self.pending_len);
        if have == 0 {
            return Ok(bytes);
        }
        let width = sequence_width(self.pending[0]);
        debug_assert!(width > have, "a carried prefix is an unfinished code point");
        let take = (width - have).min(bytes.len());
        let mut seq = [0u8; 4];
        seq[..have].copy_from_slice(&self.pending[..have]);
        seq[have..have + take].copy_from_slice(&bytes[..take]);
        self.carry(&seq[..have + take])?;
        Ok(&bytes[take..])
    }

    /// Keeps `seq`, the bytes from the last code point boundary to the end of the input
    /// (at most 4, at most one code point), until more input arrives. An empty or
    /// complete `seq` leaves the validator at a boundary.
    fn carry(&mut self, seq: &[u8]) -> Result<(), InvalidUtf8> {
        *self = Self::default();
        match std::str::from_utf8(seq) {
            Ok(_) => Ok(()),
            // Cut short, but some continuation could complete it.
            Err(e) if e.error_len().is_none() => {
                debug_assert!(e.valid_up_to() == 0 && seq.len() <= 3);
                self.pending[..seq.len()].copy_from_slice(seq);
                self.pending_len = seq.len() as u8;
                Ok(())
            }
            Err(_) => Err(InvalidUtf8),
        }
    }
}

/// How many bytes the code point that starts with `lead` has, or 0 if `lead` cannot
/// start one (a continuation byte, or 0xC0, 0xC1, 0xF5..=0xFF). Which second bytes are
/// allowed after 0xE0, 0xED, 0xF0 and 0xF4 is left to the validators.
fn sequence_width(lead: u8) -> usize {
    match lead {
        0x00..=0x7f => 1,
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => 0,
    }
}

/// Where the code point that `bytes` ends in the middle of starts, or `bytes.len()` if
/// `bytes` ends on a boundary. On invalid input the answer may be wrong, but then
/// either part fails validation, so the caller still reports the error.
fn unfinished_suffix_start(bytes: &[u8]) -> usize {
    // A code point has at most 4 bytes, so an unfinished one starts in the last 3.
    for back in 1..=bytes.len().min(3) {
        let start = bytes.len() - back;
        let byte = bytes[start];
        let is_continuation = byte & 0xc0 == 0x80;
        if !is_continuation {
            return if sequence_width(byte) > back {
                start
            } else {
                bytes.len()
            };
        }
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // ---- Helpers -------------------------------------------------------------------

    /// std's verdict on `bytes` as a prefix: invalid whatever bytes follow.
    fn std_doomed(bytes: &[u8]) -> bool {
        matches!(std::str::from_utf8(bytes), Err(e) if e.error_len().is_some())
    }

    /// What std says about a whole input, worked out once per input.
    #[derive(Clone, Copy, Debug)]
    struct StdVerdict {
        valid: bool,
        /// The index of the byte on whose arrival the input becomes invalid whatever
        /// follows: the first `i` such that `bytes[..=i]` is doomed.
        first_doomed: Option<usize>,
    }

    fn std_verdict(bytes: &[u8]) -> StdVerdict {
        StdVerdict {
            valid: std::str::from_utf8(bytes).is_ok(),
            first_doomed: (0..bytes.len()).find(|&i| std_doomed(&bytes[..=i])),
        }
    }

    /// Feeds `bytes` split at the sorted `cuts`, then finishes. On error, returns the
    /// index of the piece that failed, or the number of pieces if `finish` failed.
    fn feed_pieces(bytes: &[u8], cuts: &[usize]) -> Result<(), usize> {
        let mut validator = Utf8Validator::default();
        let mut start = 0;
        let ends = cuts.iter().copied().chain([bytes.len()]);
        for (piece, end) in ends.clone().enumerate() {
            validator.feed(&bytes[start..end]).map_err(|_| piece)?;
            start = end;
        }
        validator.finish().map_err(|_| ends.count())
    }

    /// Checks the incremental validator on `bytes` cut at `cuts` against std: the result
    /// agrees, and an error is reported by the piece that holds the first byte after
    /// which no continuation could help (fail fast), not later.
    fn check_pieces(bytes: &[u8], std: StdVerdict, cuts: &[usize]) {
        let expected = match std.first_doomed {
            Some(i) => Err(cuts.iter().filter(|&&cut| cut <= i).count()),
            None if std.valid => Ok(()),
            None => Err(cuts.len() + 1), // cut short: only `finish` can tell
        };
        assert_eq!(feed_pieces(bytes, cuts), expected, "input {bytes:02x?} cut at {cuts:?}");
    }

    /// Every check of the incremental validator on one input: one-shot `validate`,
    /// one piece, two pieces at every offset, one byte per piece, and every prefix fed
    /// as one piece.
    fn check_against_std(bytes: &[u8]) {
        let std = std_verdict(bytes);
        assert_eq!(validate(bytes).is_ok(), std.valid, "validate {bytes:02x?}");
        check_pieces(bytes, std, &[]);
        for cut in 0..=bytes.len() {
            check_pieces(bytes, std, &[cut]);
        }
        let every_byte: Vec<usize> = (1..bytes.len()).collect();
        check_pieces(bytes, std, &every_byte);
        for end in 0..=bytes.len() {
            let prefix = &bytes[..end];
            let fed = Utf8Validator::default().feed(prefix);
            assert_eq!(fed.is_err(), std_doomed(prefix), "prefix {prefix:02x?}");
        }
    }

    /// What a named case must do. The expectation is written out by hand (from the
    /// RFC 3629 table and the Autobahn testsuite's case descriptions) and checked both
    /// against the validator and against std.
    #[derive(Clone, Copy, Debug)]
    enum Expect {
        Valid,
        /// Invalid as soon as the byte at this index arrives, whatever follows.
        FailsAt(usize),
        /// A valid prefix that ends in the middle of a code point: only `finish` fails.
        CutShort,
    }
    use Expect::*;

    fn check_case(bytes: &[u8], expect: Expect) {
        let (valid, first_doomed) = match expect {
            Valid => (true, None),
            FailsAt(i) => (false, Some(i)),
            CutShort => (false, None),
        };
        assert_eq!(
            std::str::from_utf8(bytes).is_ok(),
            valid,
            "std disagrees with the expectation for {bytes:02x?}"
        );
        assert_eq!(
            std_verdict(bytes).first_doomed,
            first_doomed,
            "std disagrees on where {bytes:02x?} fails"
        );
        // One byte per piece: the error must come with the byte named.
        let mut validator = Utf8Validator::default();
        let failed_at = bytes.iter().position(|&b| validator.feed(&[b]).is_err());
        assert_eq!(failed_at, first_doomed, "byte at a time, {bytes:02x?}");
        if failed_at.is_none() {
            assert_eq!(validator.finish().is_ok(), valid, "finish, {bytes:02x?}");
        }
        check_against_std(bytes);
    }

    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|d| u8::from_str_radix(std::str::from_utf8(d).unwrap(), 16).unwrap())
            .collect()
    }

    // ---- Named cases, after the Autobahn testsuite's section 6 -----------------------

    #[test]
    fn case_6_1_empty_message() {
        check_case(b"", Valid);
        assert_eq!(Utf8Validator::default().finish(), Ok(()));
    }

    #[test]
    fn case_6_2_valid_text_split_everywhere() {
        check_case("Hello-µ@ßöäüàá-UTF-8!!".as_bytes(), Valid);
    }

    #[test]
    fn case_6_3_kosme_then_surrogate() {
        check_case(&hex("cebae1bdb9cf83cebcceb5"), Valid);
        // κόσμε, then U+D800 encoded (ED A0 80), then "edited": fails at A0.
        check_case(&hex("cebae1bdb9cf83cebcceb5 eda080 656469746564"), FailsAt(12));
    }

    #[test]
    fn case_6_4_fail_fast_above_u10ffff() {
        // κόσμε, then F4 90 80 80 (U+110000), then "edited". Autobahn sends it in
        // fragments and in one-byte frames and expects the close before the rest
        // arrives; F4 followed by 90 can never be valid.
        check_case(&hex("cebae1bdb9cf83cebcceb5 f4908080 656469746564"), FailsAt(12));
        let mut validator = Utf8Validator::default();
        assert_eq!(validator.feed(&hex("cebae1bdb9cf83cebcceb5")), Ok(()));
        assert_eq!(validator.feed(&[0xf4]), Ok(()));
        assert_eq!(validator.feed(&[0x90]), Err(InvalidUtf8));
    }

    #[test]
    fn case_6_6_kosme_growing() {
        let text = hex("cebae1bdb9cf83cebcceb5");
        for end in 0..=text.len() {
            let expect = if text.is_char_boundary_at(end) { Valid } else { CutShort };
            check_case(&text[..end], expect);
        }
    }

    #[test]
    fn case_6_7_first_sequence_of_each_length() {
        for s in ["00", "c280", "e0a080", "f0908080"] {
            check_case(&hex(s), Valid);
        }
    }

    #[test]
    fn case_6_8_five_and_six_byte_forms() {
        check_case(&hex("f888808080"), FailsAt(0));
        check_case(&hex("fc8480808080"), FailsAt(0));
    }

    #[test]
    fn case_6_9_last_sequence_of_each_length() {
        // U+007F, U+07FF, U+FFFF, U+10FFFF: the last code point is valid.
        for s in ["7f", "dfbf", "efbfbf", "f48fbfbf"] {
            check_case(&hex(s), Valid);
        }
    }

    #[test]
    fn case_6_10_beyond_the_last_code_point() {
        // U+1FFFFF as 4 bytes, then the 5- and 6-byte maxima.
        check_case(&hex("f7bfbfbf"), FailsAt(0));
        check_case(&hex("fbbfbfbfbf"), FailsAt(0));
        check_case(&hex("fdbfbfbfbfbf"), FailsAt(0));
    }

    #[test]
    fn case_6_11_other_boundaries() {
        check_case(&hex("ed9fbf"), Valid); // U+D7FF, just below the surrogates
        check_case(&hex("ee8080"), Valid); // U+E000, just above them
        check_case(&hex("efbfbd"), Valid); // U+FFFD
        check_case(&hex("f48fbfbf"), Valid); // U+10FFFF
        check_case(&hex("f4908080"), FailsAt(1)); // U+110000
    }

    #[test]
    fn case_6_12_unexpected_continuation_bytes() {
        for s in ["80", "bf", "80bf", "80bf80", "80bf80bf", "80bf80bf80", "80bf80bf80bf"] {
            check_case(&hex(s), FailsAt(0));
        }
        let all: Vec<u8> = (0x80..=0xbf).collect();
        check_case(&all, FailsAt(0));
        // After a complete code point, too.
        check_case(b"a\x80", FailsAt(1));
        check_case(&hex("c3a9 80"), FailsAt(2));
    }

    #[test]
    fn case_6_13_lonely_start_bytes() {
        // Each start byte followed by a space: invalid at the start byte itself if it
        // can never start a code point, else at the space.
        for lead in 0xc0..=0xfd_u8 {
            let expect = if sequence_width(lead) == 0 {
                FailsAt(0)
            } else {
                FailsAt(1)
            };
            check_case(&[lead, b' '], expect);
        }
        let all: Vec<u8> = (0xc0..=0xdf_u8).flat_map(|lead| [lead, b' ']).collect();
        check_case(&all, FailsAt(0));
        let two_byte_leads: Vec<u8> = (0xc2..=0xdf_u8).flat_map(|lead| [lead, b' ']).collect();
        check_case(&two_byte_leads, FailsAt(1));
    }

    #[test]
    fn case_6_14_last_continuation_byte_missing() {
        // Forms that can never be valid fail before the end...
        check_case(&hex("c0"), FailsAt(0));
        check_case(&hex("e080"), FailsAt(1));
        check_case(&hex("f08080"), FailsAt(1));
        check_case(&hex("f8808080"), FailsAt(0));
        check_case(&hex("fc80808080"), FailsAt(0));
        check_case(&hex("f7bfbf"), FailsAt(0));
        check_case(&hex("fbbfbfbf"), FailsAt(0));
        check_case(&hex("fdbfbfbfbf"), FailsAt(0));
        // ...valid prefixes only at the end.
        check_case(&hex("df"), CutShort);
        check_case(&hex("efbf"), CutShort);
        check_case(&hex("f48fbf"), CutShort);
    }

    #[test]
    fn case_6_15_concatenated_incomplete_sequences() {
        check_case(
            &hex("c0e080f08080f8808080fc80808080dfefbff7bfbffbbfbfbffdbfbfbfbf"),
            FailsAt(0),
        );
        // Valid prefixes back to back: the second lead interrupts the first.
        check_case(&hex("df efbf"), FailsAt(1));
        check_case(&hex("efbf f48fbf"), FailsAt(2));
    }

    #[test]
    fn case_6_16_impossible_bytes() {
        check_case(&hex("fe"), FailsAt(0));
        check_case(&hex("ff"), FailsAt(0));
        check_case(&hex("fefeffff"), FailsAt(0));
    }

    #[test]
    fn case_6_17_overlong_ascii() {
        // "/" (0x2F) in 2..=6 bytes.
        check_case(&hex("c0af"), FailsAt(0));
        check_case(&hex("e080af"), FailsAt(1));
        check_case(&hex("f08080af"), FailsAt(1));
        check_case(&hex("f8808080af"), FailsAt(0));
        check_case(&hex("fc80808080af"), FailsAt(0));
    }

    #[test]
    fn case_6_18_maximum_overlongs() {
        check_case(&hex("c1bf"), FailsAt(0));
        check_case(&hex("e09fbf"), FailsAt(1));
        check_case(&hex("f08fbfbf"), FailsAt(1));
        check_case(&hex("f887bfbfbf"), FailsAt(0));
        check_case(&hex("fc83bfbfbfbf"), FailsAt(0));
    }

    #[test]
    fn case_6_19_overlong_nul() {
        check_case(&hex("c080"), FailsAt(0));
        check_case(&hex("e08080"), FailsAt(1));
        check_case(&hex("f0808080"), FailsAt(1));
        check_case(&hex("f880808080"), FailsAt(0));
        check_case(&hex("fc8080808080"), FailsAt(0));
    }

    #[test]
    fn case_6_20_single_surrogates() {
        for s in ["eda080", "edadbf", "edae80", "edafbf", "edb080", "edbe80", "edbfbf"] {
            check_case(&hex(s), FailsAt(1));
        }
    }

    #[test]
    fn case_6_21_paired_surrogates() {
        for s in [
            "eda080edb080",
            "eda080edbfbf",
            "edadbfedb080",
            "edadbfedbfbf",
            "edae80edb080",
            "edae80edbfbf",
            "edafbfedb080",
            "edafbfedbfbf",
        ] {
            check_case(&hex(s), FailsAt(1));
        }
    }

    #[test]
    fn case_6_22_noncharacters_are_valid() {
        // U+FDD0..=U+FDEF and U+xFFFE / U+xFFFF of every plane are valid UTF-8.
        let plane_ends = (0..=0x10_u32).flat_map(|plane| [(plane << 16) | 0xfffe, (plane << 16) | 0xffff]);
        for c in (0xfdd0..=0xfdef).chain(plane_ends) {
            let c = char::from_u32(c).unwrap();
            check_case(c.to_string().as_bytes(), Valid);
        }
    }

    #[test]
    fn case_6_23_specials() {
        for s in ["efbfbd", "efbbbf", "00", "efbfb9", "efbfbc"] {
            check_case(&hex(s), Valid);
        }
    }

    // ---- Fail fast: an error comes with the byte that makes it certain -------------

    #[test]
    fn piece_ending_in_a_doomed_prefix_fails_at_once() {
        for doomed in ["eda0", "f490", "e080", "f08f", "c0", "c1", "f5", "fe", "ff"] {
            let mut validator = Utf8Validator::default();
            let mut piece = b"chat ".to_vec();
            piece.extend(hex(doomed));
            assert_eq!(validator.feed(&piece), Err(InvalidUtf8), "{doomed}");
        }
    }

    #[test]
    fn never_valid_bytes_fail_at_any_position() {
        let text = "aé€😀z".as_bytes();
        for bad in [0xc0, 0xc1, 0xf5, 0xf6, 0xf7, 0xf8, 0xfb, 0xfc, 0xfd, 0xfe, 0xff] {
            for at in (0..=text.len()).filter(|&at| text.is_char_boundary_at(at)) {
                let mut input = text.to_vec();
                input.insert(at, bad);
                check_case(&input, FailsAt(at));
            }
            // Also right after a valid unfinished prefix carried from the last piece.
            for prefix in ["c3", "e282", "f09f98"] {
                let mut validator = Utf8Validator::default();
                assert_eq!(validator.feed(&hex(prefix)), Ok(()));
                assert_eq!(validator.feed(&[bad]), Err(InvalidUtf8), "{prefix} {bad:02x}");
            }
        }
    }

    #[test]
    fn unfinished_code_point_completed_one_byte_per_piece() {
        let mut validator = Utf8Validator::default();
        for &b in &[0xf0, 0x9f, 0x98] {
            assert_eq!(validator.feed(&[b]), Ok(()));
            assert!(!validator.is_boundary());
            assert_eq!(validator.finish(), Err(InvalidUtf8));
        }
        assert_eq!(validator.feed(&[]), Ok(()));
        assert_eq!(validator.feed(&[0x80]), Ok(()));
        assert!(validator.is_boundary());
        assert_eq!(validator.finish(), Ok(()));
        // Back at a boundary, the state is the same as a fresh one.
        assert_eq!(validator, Utf8Validator::default());
    }

    #[test]
    fn piece_ending_in_an_unfinished_prefix_is_accepted() {
        let mut validator = Utf8Validator::default();
        assert_eq!(validator.feed(&hex("68 69 f09f98")), Ok(()));
        assert_eq!(validator.finish(), Err(InvalidUtf8));
        assert_eq!(validator.feed(&hex("80 21")), Ok(()));
        assert_eq!(validator.finish(), Ok(()));
    }

    #[test]
    fn validator_fits_in_4_bytes() {
        assert!(size_of::<Utf8Validator>() <= 4);
    }

    #[test]
    fn long_texts_with_one_bad_byte_everywhere() {
        // Long enough for the SIMD path (64-byte steps), with the error in every spot.
        let text = "Привет, мир! 你好，世界！ 😀🎉 ok. ".repeat(3);
        let text = text.as_bytes();
        check_against_std(text);
        for at in 0..text.len() {
            for bad in [0x80, 0xc0, 0xed, 0xff] {
                let mut input = text.to_vec();
                input[at] = bad;
                let std = std_verdict(&input);
                for cut in [0, at, at + 1, text.len() / 2, text.len()] {
                    check_pieces(&input, std, &[cut]);
                }
                check_pieces(&input, std, &[at.saturating_sub(1), at + 1]);
                assert_eq!(validate(&input).is_ok(), std.valid);
            }
        }
    }

    // ---- Property tests -------------------------------------------------------------

    /// Characters weighted toward multi-byte ones and the edges of each width.
    fn text_char() -> impl Strategy<Value = char> {
        prop_oneof![
            4 => (0x20_u32..0x7f).prop_filter_map("ascii", char::from_u32),
            2 => (0x80_u32..0x800).prop_filter_map("2 bytes", char::from_u32),
            2 => (0x800_u32..0x1_0000).prop_filter_map("3 bytes, no surrogate", char::from_u32),
            2 => (0x1_0000_u32..=0x10_ffff).prop_filter_map("4 bytes", char::from_u32),
            1 => prop::sample::select(vec![
                '\0', '\u{7f}', '\u{80}', '\u{7ff}', '\u{800}', '\u{d7ff}', '\u{e000}',
                '\u{fffd}', '\u{ffff}', '\u{10000}', '\u{10ffff}',
            ]),
        ]
    }

    /// Bytes that sit on the edges of the UTF-8 rules.
    const EDGE_BYTES: [u8; 19] = [
        0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc2, 0xdf, 0xe0, 0xed, 0xef, 0xf0, 0xf4, 0xf5, 0xf8, 0xfe,
        0xff,
    ];

    #[derive(Clone, Debug)]
    enum Mutation {
        Replace(prop::sample::Index, u8),
        Insert(prop::sample::Index, u8),
        Remove(prop::sample::Index),
        Truncate(prop::sample::Index),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        let byte = prop_oneof![prop::sample::select(EDGE_BYTES.to_vec()), any::<u8>()];
        prop_oneof![
            (any::<prop::sample::Index>(), byte.clone()).prop_map(|(i, b)| Mutation::Replace(i, b)),
            (any::<prop::sample::Index>(), byte).prop_map(|(i, b)| Mutation::Insert(i, b)),
            any::<prop::sample::Index>().prop_map(Mutation::Remove),
            any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        ]
    }

    /// Valid text with 0..=2 random mutations: about a third of the inputs stay valid.
    fn message() -> impl Strategy<Value = Vec<u8>> {
        let text = prop::collection::vec(text_char(), 0..200);
        (text, prop::collection::vec(mutation(), 0..3)).prop_map(|(chars, mutations)| {
            let mut bytes = chars.into_iter().collect::<String>().into_bytes();
            for m in mutations {
                match m {
                    Mutation::Replace(i, b) if !bytes.is_empty() => {
                        let i = i.index(bytes.len());
                        bytes[i] = b;
                    }
                    Mutation::Insert(i, b) => bytes.insert(i.index(bytes.len() + 1), b),
                    Mutation::Remove(i) if !bytes.is_empty() => {
                        bytes.remove(i.index(bytes.len()));
                    }
                    Mutation::Truncate(i) => bytes.truncate(i.index(bytes.len() + 1)),
                    _ => {}
                }
            }
            bytes
        })
    }

    proptest! {
        #[test]
        fn validate_agrees_with_std(bytes in message()) {
            prop_assert_eq!(validate(&bytes).is_ok(), std::str::from_utf8(&bytes).is_ok());
        }

        /// Random multi-piece splits: the verdict agrees with std and errors come from
        /// the piece that holds the first doomed byte.
        #[test]
        fn random_pieces_agree_with_std_and_fail_fast(
            bytes in message(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
            cuts.sort_unstable();
            check_pieces(&bytes, std_verdict(&bytes), &cuts);
        }

        /// Every prefix, fed as one piece, fails iff std says no continuation can fix it;
        /// and with one byte per piece the error comes with exactly that byte.
        #[test]
        fn every_prefix_fails_iff_std_says_doomed(bytes in message()) {
            for end in 0..=bytes.len() {
                let prefix = &bytes[..end];
                let mut validator = Utf8Validator::default();
                let fed = validator.feed(prefix);
                prop_assert_eq!(fed.is_err(), std_doomed(prefix), "prefix {:02x?}", prefix);
                if fed.is_ok() {
                    prop_assert_eq!(
                        validator.finish().is_ok(),
                        std::str::from_utf8(prefix).is_ok(),
                        "finish after {:02x?}", prefix
                    );
                }
            }
            let mut validator = Utf8Validator::default();
            let failed_at = bytes.iter().position(|&b| validator.feed(&[b]).is_err());
            prop_assert_eq!(failed_at, std_verdict(&bytes).first_doomed);
        }

        #[test]
        fn two_pieces_at_every_offset_agree_with_std(bytes in message()) {
            let std = std_verdict(&bytes);
            for cut in 0..=bytes.len() {
                check_pieces(&bytes, std, &[cut]);
            }
        }
    }

    /// `str::is_char_boundary` for byte slices that may not be valid UTF-8.
    trait CharBoundary {
        fn is_char_boundary_at(&self, at: usize) -> bool;
    }

    impl CharBoundary for [u8] {
        fn is_char_boundary_at(&self, at: usize) -> bool {
            at == self.len() || self[at] & 0xc0 != 0x80
        }
    }
}
