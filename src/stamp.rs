//! [`Stamp`]: an instant in 8 bytes, for records every connection or user keeps.
#![forbid(unsafe_code)]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// An instant as nanoseconds since a fixed point ten years before the process first
/// asks ([`Stamp::of`]), so every instant the process handles is after it. Exact in
/// both directions (an `Instant` has nanosecond resolution here) for 500 years, in 8
/// bytes where an `Instant` takes 16.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp(u64);

impl Stamp {
    /// The earliest instant a stamp can hold (ten years before the process started).
    pub const EARLIEST: Self = Self(0);

    fn origin() -> Instant {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        *ORIGIN.get_or_init(|| {
            let now = Instant::now();
            now.checked_sub(Duration::from_secs(10 * 365 * 86_400)).unwrap_or(now)
        })
    }

    /// `at`, stamped.
    pub fn of(at: Instant) -> Self {
        Self(at.saturating_duration_since(Self::origin()).as_nanos() as u64)
    }

    /// The instant stamped.
    pub fn instant(self) -> Instant {
        Self::origin() + Duration::from_nanos(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_gives_back_the_instant_exactly() {
        let now = Instant::now();
        for at in [
            now,
            now + Duration::from_nanos(1),
            now + Duration::from_secs(86_400 * 365),
        ] {
            assert_eq!(Stamp::of(at).instant(), at);
        }
        assert!(Stamp::of(now) < Stamp::of(now + Duration::from_nanos(1)));
    }
}
