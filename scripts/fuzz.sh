#!/usr/bin/env bash
# Runs the protocol core's fuzz harnesses under libFuzzer (cargo-fuzz).
#
# The harness functions live in the library, next to the code they test, and assert
# invariants (not just "no panic"); `cargo test` runs the same functions as property
# tests. This script builds a throwaway cargo-fuzz crate under target/ that calls them,
# so the repository keeps its fixed top-level layout.
#
# Usage: scripts/fuzz.sh [handshake|frame|connection|inflate|msgproto|all] [seconds-per-target]
#   default: all, 60 seconds each. Corpora persist in target/fuzz-harness/corpus/.
# Needs: cargo-fuzz (installed on first run). Works on a stable toolchain: the
# instrumentation flags it needs are stable, RUSTC_BOOTSTRAP covers -Z flags it passes,
# and no sanitizer is used (safe Rust; the few unsafe blocks are covered by the
# debug assertions the harness build keeps on).
set -euo pipefail

which_targets=${1:-all}
seconds=${2:-60}
root=$(cd "$(dirname "$0")/.." && pwd)
dir="$root/target/fuzz-harness"

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "installing cargo-fuzz (one time)..." >&2
  cargo install cargo-fuzz --locked
fi

mkdir -p "$dir/fuzz_targets" "$dir/corpus"/{handshake,frame,connection,inflate,msgproto}
cat > "$dir/Cargo.toml" <<TOML
[package]
name = "wsgate-fuzz"
version = "0.0.0"
edition = "2024"
publish = false

[package.metadata]
cargo-fuzz = true

[dependencies]
libfuzzer-sys = "0.4"
wsgate = { path = "$root" }

[workspace]
members = ["."]

[profile.release]
debug-assertions = true
overflow-checks = true
TOML

for t in handshake frame connection inflate msgproto; do
  case $t in
    handshake) call='wsgate::proto::handshake::fuzz_parse(data)' ;;
    frame) call='wsgate::proto::frame::fuzz_decode_header(data)' ;;
    connection) call='wsgate::proto::connection::fuzz_connection(data)' ;;
    inflate) call='wsgate::proto::deflate::fuzz_inflate(data)' ;;
    msgproto) call='wsgate::msg::protocol::fuzz_parse(data)' ;;
  esac
  cat > "$dir/fuzz_targets/$t.rs" <<RS
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| { $call; });
RS
  cat >> "$dir/Cargo.toml" <<TOML

[[bin]]
name = "$t"
path = "fuzz_targets/$t.rs"
test = false
doc = false
bench = false
TOML
done

# Seeds: a real upgrade request, frame headers of each length class, and frame lists.
printf 'GET /ws?token=abc HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: https://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n' \
  > "$dir/corpus/handshake/chrome"
printf '\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58' > "$dir/corpus/frame/text"
printf '\x82\xfe\x01\x00\x01\x02\x03\x04' > "$dir/corpus/frame/len16"
printf '\x82\xff\x00\x00\x00\x00\x00\x01\x00\x00\x01\x02\x03\x04' > "$dir/corpus/frame/len64"
printf '\x01\x07\x00\x00\x00\x01\x05hello\x80\x03abc\x89\x02hi\x88\x02\x03\xe8' > "$dir/corpus/connection/frames"
printf '\x00\x07\x00\x00\x00\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58' > "$dir/corpus/connection/raw"
# permessage-deflate payloads of RFC 7692 section 7.2.3 (compressed, stored, BFINAL, two blocks).
printf '\xf2\x48\xcd\xc9\xc9\x07\x00' > "$dir/corpus/inflate/hello"
printf '\x00\x05\x00\xfa\xff\x48\x65\x6c\x6c\x6f\x00' > "$dir/corpus/inflate/stored"
printf '\xf3\x48\xcd\xc9\xc9\x07\x00\x00' > "$dir/corpus/inflate/bfinal"
printf '\xf2\x48\x05\x00\x00\x00\xff\xff\xca\xc9\xc9\x07\x00' > "$dir/corpus/inflate/two-blocks"
# Client protocol messages: a selector byte (even: text frame) then the JSON.
printf '\x00{"type":"send","to":"bob","id":"m1","body":{"text":"hi"}}' > "$dir/corpus/msgproto/send"
printf '\x00{"type":"join","room":"r","since":{"epoch":7,"seq":3},"presence":true,"id":5}' > "$dir/corpus/msgproto/join"
printf '\x00{"type":"publish","room":"r","body":[1,"x"],"exclude_self":true}' > "$dir/corpus/msgproto/publish"
printf '\x00{"type":"presence","user":"b\\u006fb","id":"q"}' > "$dir/corpus/msgproto/presence"

targets=(handshake frame connection inflate msgproto)
[ "$which_targets" = all ] || targets=("$which_targets")
cd "$dir"
for t in "${targets[@]}"; do
  echo "== fuzzing $t for ${seconds}s" >&2
  RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir "$dir" --sanitizer none --release "$t" "$dir/corpus/$t" -- \
    -max_total_time="$seconds" -max_len=4096 -print_final_stats=1
done
