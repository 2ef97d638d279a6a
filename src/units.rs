//! Sizes, durations and rates as people write and read them: `64KiB`, `250ms`, `5000/s`.
//!
//! Text goes in ([`parse_size`], [`parse_duration`], [`parse_rate`]) and numbers come
//! out; numbers go in and text comes out, either exact so the parsers read it back
//! ([`format_bytes`], [`format_duration`]: what `--help` and a config dump show) or
//! rounded for reading ([`human_bytes`], [`human_micros`]: start-up and bench reports).
//! No ranges here: the configuration and the bench each check their own.
//!
//! This module imports nothing from the crate, so everything else may import it.
#![forbid(unsafe_code)]

use std::time::Duration;

/// Bytes in a kibibyte.
pub const KIB: u64 = 1024;
/// Bytes in a mebibyte.
pub const MIB: u64 = 1024 * KIB;
/// Bytes in a gibibyte.
pub const GIB: u64 = 1024 * MIB;
/// Bytes in a tebibyte.
pub const TIB: u64 = 1024 * GIB;

/// The binary units, largest first: the one table both byte formatters read.
const BYTE_UNITS: [(u64, &str); 4] = [(TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")];

/// Splits `"64KiB"` into the number (`_` between digits allowed) and the unit text.
pub fn split_number(s: &str) -> Option<(u64, &str)> {
    let s = s.trim();
    let end = s.find(|c: char| !c.is_ascii_digit() && c != '_').unwrap_or(s.len());
    let (digits, unit) = s.split_at(end);
    if !digits.starts_with(|c: char| c.is_ascii_digit()) || digits.ends_with('_') || digits.contains("__") {
        return None;
    }
    let number = digits.replace('_', "").parse::<u64>().ok()?;
    Some((number, unit.trim()))
}

/// Parses `"250ms"`, `"10s"`, `"2m"`, `"1h"`, `"200us"` (whole numbers; a unit is
/// required, so a bare `30000` cannot be misread as seconds or milliseconds).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let (n, unit) = split_number(s)?;
    let us_per_unit: u64 = match unit {
        "us" => 1,
        "ms" => 1_000,
        "s" => 1_000_000,
        "m" => 60_000_000,
        "h" => 3_600_000_000,
        _ => return None,
    };
    n.checked_mul(us_per_unit).map(Duration::from_micros)
}

/// Parses `"65536"`, `"64KiB"`, `"1 MiB"`, `"1GiB"` (suffix case-insensitive, powers of
/// 1024; `KB` and friends are refused as ambiguous).
pub fn parse_size(s: &str) -> Option<u64> {
    let (n, unit) = split_number(s)?;
    let multiplier = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => KIB,
        "mib" => MIB,
        "gib" => GIB,
        "tib" => TIB,
        _ => return None,
    };
    n.checked_mul(multiplier)
}

/// Whether `s` is a number with a decimal unit (`64KB`, `1m` meant as mega): the size
/// parsers name the mistake instead of only refusing it.
pub fn is_ambiguous_size(s: &str) -> bool {
    split_number(s).is_some_and(|(_, unit)| {
        matches!(
            unit.to_ascii_lowercase().as_str(),
            "k" | "kb" | "m" | "mb" | "g" | "gb" | "t" | "tb"
        )
    })
}

/// Parses a rate, `5000/s`, `300/m` (or `/min`) or a bare `5000` (per second), into the
/// count and the period. A zero count is refused: it would never fire.
pub fn parse_rate(text: &str) -> Option<(u64, Duration)> {
    let (count, unit) = text.trim().split_once('/').unwrap_or((text.trim(), "s"));
    let count: u64 = count.trim().replace('_', "").parse().ok()?;
    let per = match unit.trim() {
        "s" => Duration::from_secs(1),
        "m" | "min" => Duration::from_secs(60),
        _ => return None,
    };
    (count > 0).then_some((count, per))
}

/// A duration in the largest unit that shows it exactly: `200us`, `100ms`, `10s`, `2m`,
/// `1h`. [`parse_duration`] reads it back (for whole microseconds).
pub fn format_duration(d: Duration) -> String {
    let us = d.as_micros();
    match us {
        0 => "0s".to_owned(),
        _ if us.is_multiple_of(3_600_000_000) => format!("{}h", us / 3_600_000_000),
        _ if us.is_multiple_of(60_000_000) => format!("{}m", us / 60_000_000),
        _ if us.is_multiple_of(1_000_000) => format!("{}s", us / 1_000_000),
        _ if us.is_multiple_of(1_000) => format!("{}ms", us / 1_000),
        _ => format!("{us}us"),
    }
}

/// A byte size in the largest binary unit that shows it exactly: `4KiB`, `1GiB`, `1000`.
/// [`parse_size`] reads it back. For a rounded figure to read, see [`human_bytes`].
pub fn format_bytes(n: u64) -> String {
    for (unit, name) in BYTE_UNITS {
        if n >= unit && n.is_multiple_of(unit) {
            return format!("{}{name}", n / unit);
        }
    }
    n.to_string()
}

/// Bytes rounded for reading, with `decimals` digits after the point: `812 B`,
/// `1.5 KiB` (1), `3.70 KiB` (2), `4.4 GiB`. Negative values (a difference of two
/// samples) keep their sign. Not parseable: for that, see [`format_bytes`].
pub fn human_bytes(bytes: f64, decimals: usize) -> String {
    let abs = bytes.abs();
    if abs < KIB as f64 {
        return format!("{bytes:.0} B");
    }
    // The largest unit not above the value (KiB at least, as the value is ≥ 1 KiB).
    let (unit, name) = BYTE_UNITS
        .iter()
        .copied()
        .find(|&(unit, _)| abs >= unit as f64)
        .unwrap_or((KIB, "KiB"));
    format!("{:.decimals$} {name}", bytes / unit as f64)
}

/// Microseconds rounded for reading: `41.0µs`, `1.25ms`, `2.10s`.
pub fn human_micros(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.1}µs")
    } else if us < 1_000_000.0 {
        format!("{:.2}ms", us / 1000.0)
    } else {
        format!("{:.2}s", us / 1_000_000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_formats_read_back() {
        for d in [
            Duration::ZERO,
            Duration::from_millis(1500),
            Duration::from_secs(90),
            Duration::from_secs(7200),
        ] {
            assert_eq!(parse_duration(&format_duration(d)), Some(d));
        }
        for n in [0, 1000, 4096, 3 << 20, 5 << 30, 1 << 40] {
            assert_eq!(parse_size(&format_bytes(n)), Some(n));
        }
    }

    #[test]
    fn human_formats_round() {
        assert_eq!(human_bytes(512.0, 1), "512 B");
        assert_eq!(human_bytes(1536.0, 1), "1.5 KiB");
        assert_eq!(human_bytes((4u64 << 30) as f64, 1), "4.0 GiB");
        assert_eq!(human_bytes(3.7 * 1024.0, 2), "3.70 KiB");
        assert_eq!(human_bytes(-2048.0, 2), "-2.00 KiB");
        assert_eq!(human_bytes((3u64 << 40) as f64, 1), "3.0 TiB");
        assert_eq!(human_micros(41.0), "41.0µs");
        assert_eq!(human_micros(1250.0), "1.25ms");
        assert_eq!(human_micros(2_100_000.0), "2.10s");
    }

    #[test]
    fn rates_and_ambiguous_sizes() {
        assert_eq!(parse_rate("300/m"), Some((300, Duration::from_secs(60))));
        assert_eq!(parse_rate(" 5_000 "), Some((5000, Duration::from_secs(1))));
        assert_eq!(parse_rate("0/s"), None);
        assert_eq!(parse_rate("5/h"), None);
        assert!(is_ambiguous_size("64KB") && is_ambiguous_size("1 m"));
        assert!(!is_ambiguous_size("64KiB"));
    }
}
