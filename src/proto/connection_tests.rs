//! Tests of the connection state machine: one per RFC 6455 rule that binds a server,
//! named after the rule, then split-input and property tests.

use std::time::Duration;

use proptest::prelude::*;

use super::*;

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A masked client frame with a raw first byte (FIN, RSV and opcode bits as given).
fn raw_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let header = encode_header(true, OpCode::Binary, payload.len() as u64, Some(KEY));
    out.extend_from_slice(header.as_bytes());
    out[0] = first;
    let body = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[body..], KEY, 0);
    out
}

fn frame(fin: bool, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    raw_frame((u8::from(fin) << 7) | opcode as u8, payload)
}

fn text(payload: &str) -> Vec<u8> {
    frame(true, OpCode::Text, payload.as_bytes())
}

fn close_frame(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    frame(true, OpCode::Close, &payload)
}

fn limits() -> Limits {
    Limits::default()
}

/// Feeds the whole stream in one read, then polls transmits.
fn run(stream: &[u8]) -> Vec<OwnedEvent> {
    run_stream(&limits(), stream, u32::MAX)
}

fn run_with(limits: &Limits, stream: &[u8]) -> Vec<OwnedEvent> {
    run_stream(limits, stream, u32::MAX)
}

fn sent_close(code: u16) -> impl Fn(&OwnedEvent) -> bool {
    move |e| matches!(e, OwnedEvent::Sent(8, p) if p.len() >= 2 && u16::from_be_bytes([p[0], p[1]]) == code)
}

fn error(e: ProtocolError) -> OwnedEvent {
    OwnedEvent::Error(e)
}

fn concat(frames: &[Vec<u8>]) -> Vec<u8> {
    frames.concat()
}

// ---- RFC 6455 section 5.1: masking ----

#[test]
fn server_fails_connection_on_unmasked_client_frame() {
    let events = run(b"\x81\x05hello");
    assert_eq!(events[0], error(ProtocolError::UnmaskedFrame));
    assert!(sent_close(1002)(&events[1]));
}

#[test]
fn server_never_masks_its_frames() {
    // `run_stream` asserts the mask bit of every sent frame is clear.
    assert_eq!(
        run(&frame(true, OpCode::Ping, b"x")),
        vec![OwnedEvent::Sent(OpCode::Pong as u8, b"x".to_vec())]
    );
    let now = Instant::now();
    let mut conn = Connection::new(Role::Server, now);
    conn.handle_timeout(now + limits().ping_interval, &limits());
    assert_eq!(conn.poll_transmit().unwrap().as_bytes()[1] & 0x80, 0);
    conn.close(now, &limits(), CloseCode::NORMAL, "");
    assert_eq!(conn.poll_transmit().unwrap().as_bytes()[1] & 0x80, 0);
}

#[test]
fn client_role_masks_its_frames_and_rejects_masked_input() {
    let now = Instant::now();
    let mut conn = Connection::new_client(now, 7);
    let mut out = Vec::new();
    conn.write_message(&mut out, true, b"hi").unwrap();
    assert_eq!(out[1] & 0x80, 0x80);
    let mut masked = text("x");
    let (_, event) = conn.handle_input(now, &limits(), &mut masked);
    assert_eq!(event, Some(Event::Error(ProtocolError::MaskedFrame)));
}

// ---- RFC 6455 section 5.2: base framing ----

#[test]
fn reserved_bits_without_extension_fail_with_1002() {
    for rsv in [0x40u8, 0x20, 0x10] {
        let events = run(&raw_frame(0x81 | rsv, b"x"));
        assert_eq!(events[0], error(ProtocolError::ReservedBits));
        assert!(sent_close(1002)(&events[1]));
    }
}

#[test]
fn reserved_opcodes_fail_with_1002() {
    for op in [3u8, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf] {
        let events = run(&raw_frame(0x80 | op, b""));
        assert_eq!(events[0], error(ProtocolError::ReservedOpcode), "opcode {op:#x}");
        assert!(sent_close(1002)(&events[1]));
    }
}

#[test]
fn sixteen_and_sixty_four_bit_lengths_deliver_whole_messages() {
    for len in [125usize, 126, 127, 65535, 65536, 100_000] {
        let payload = vec![b'a'; len];
        let events = run(&frame(true, OpCode::Binary, &payload));
        assert_eq!(events, vec![OwnedEvent::Binary(payload)], "len {len}");
    }
}

#[test]
fn length_with_most_significant_bit_set_fails() {
    let mut stream = vec![0x82, 0xff];
    stream.extend_from_slice(&u64::MAX.to_be_bytes());
    stream.extend_from_slice(&KEY);
    assert_eq!(run(&stream)[0], error(ProtocolError::InvalidLength));
}

#[test]
fn frame_over_limit_fails_with_1009_from_its_header_alone() {
    let limits = Limits {
        max_frame_bytes: 100,
        ..limits()
    };
    // Only the header: the verdict must not wait for (or buffer) the payload.
    let header = encode_header(true, OpCode::Binary, 101, Some(KEY));
    let events = run_with(&limits, header.as_bytes());
    assert_eq!(events[0], error(ProtocolError::FrameTooBig));
    assert!(sent_close(1009)(&events[1]));
}

// ---- RFC 6455 section 5.4: fragmentation ----

#[test]
fn fragmented_message_is_reassembled_in_order() {
    let stream = concat(&[
        frame(false, OpCode::Text, b"Hel"),
        frame(false, OpCode::Continuation, b"lo, "),
        frame(true, OpCode::Continuation, b"world"),
    ]);
    assert_eq!(run(&stream), vec![OwnedEvent::Text("Hello, world".into())]);
}

#[test]
fn empty_fragments_are_allowed() {
    let stream = concat(&[
        frame(false, OpCode::Binary, b""),
        frame(false, OpCode::Continuation, b""),
        frame(true, OpCode::Continuation, b""),
    ]);
    assert_eq!(run(&stream), vec![OwnedEvent::Binary(vec![])]);
}

#[test]
fn control_frames_may_be_injected_between_fragments() {
    let stream = concat(&[
        frame(false, OpCode::Text, b"frag"),
        frame(true, OpCode::Ping, b"p1"),
        frame(true, OpCode::Pong, b"unsolicited"),
        frame(true, OpCode::Continuation, b"ment"),
    ]);
    let events = run(&stream);
    assert_eq!(
        events,
        vec![
            OwnedEvent::Text("fragment".into()),
            OwnedEvent::Sent(OpCode::Pong as u8, b"p1".to_vec())
        ]
    );
}

#[test]
fn continuation_without_a_message_fails_with_1002() {
    let events = run(&frame(true, OpCode::Continuation, b"x"));
    assert_eq!(events[0], error(ProtocolError::UnexpectedContinuation));
    assert!(sent_close(1002)(&events[1]));
}

#[test]
fn new_data_frame_inside_a_fragmented_message_fails_with_1002() {
    for second in [OpCode::Text, OpCode::Binary] {
        let stream = concat(&[frame(false, OpCode::Text, b"a"), frame(true, second, b"b")]);
        let events = run(&stream);
        assert_eq!(events[0], error(ProtocolError::ExpectedContinuation));
        assert!(sent_close(1002)(&events[1]));
    }
}

#[test]
fn fragmented_control_frames_fail_with_1002() {
    for op in [OpCode::Ping, OpCode::Pong, OpCode::Close] {
        let events = run(&frame(false, op, b""));
        assert_eq!(events[0], error(ProtocolError::FragmentedControl));
    }
}

#[test]
fn message_over_limit_across_fragments_fails_with_1009() {
    let limits = Limits {
        max_frame_bytes: 10,
        max_message_bytes: 15,
        ..limits()
    };
    let stream = concat(&[
        frame(false, OpCode::Binary, &[1; 10]),
        frame(true, OpCode::Continuation, &[2; 6]),
    ]);
    let events = run_with(&limits, &stream);
    assert_eq!(events[0], error(ProtocolError::MessageTooBig));
    assert!(sent_close(1009)(&events[1]));
    let at_limit = concat(&[
        frame(false, OpCode::Binary, &[1; 10]),
        frame(true, OpCode::Continuation, &[2; 5]),
    ]);
    assert!(matches!(run_with(&limits, &at_limit)[0], OwnedEvent::Binary(ref b) if b.len() == 15));
}

// ---- RFC 6455 section 5.5: control frames ----

#[test]
fn control_frame_payload_over_125_fails_with_1002() {
    let mut stream = vec![0x89, 0x80 | 126, 0, 126];
    stream.extend_from_slice(&KEY);
    stream.extend_from_slice(&[0; 126]);
    let events = run(&stream);
    assert_eq!(events[0], error(ProtocolError::ControlTooLong));
    assert!(sent_close(1002)(&events[1]));
}

#[test]
fn close_right_after_a_ping_is_answered_with_the_pong_then_the_close() {
    // Output keeps input order: the ping came first, so its pong leaves first.
    let stream = concat(&[frame(true, OpCode::Ping, b"x"), close_frame(1000, b"")]);
    assert_eq!(
        run(&stream),
        vec![
            OwnedEvent::Close(Some(1000), String::new()),
            OwnedEvent::Sent(10, b"x".to_vec()),
            OwnedEvent::Sent(8, vec![3, 0xe8])
        ]
    );
}

#[test]
fn a_ping_after_the_close_is_not_answered() {
    let stream = concat(&[close_frame(1000, b""), frame(true, OpCode::Ping, b"late")]);
    let events = run(&stream);
    assert!(
        !events.iter().any(|e| matches!(e, OwnedEvent::Sent(10, _))),
        "{events:?}"
    );
}

#[test]
fn ping_is_answered_with_pong_carrying_the_same_payload() {
    let payload: Vec<u8> = (0..125).collect();
    let events = run(&frame(true, OpCode::Ping, &payload));
    assert_eq!(events, vec![OwnedEvent::Sent(OpCode::Pong as u8, payload)]);
}

#[test]
fn every_ping_gets_its_own_pong_in_order() {
    // Ten pings arriving together get ten pongs, each with its payload, in order (the
    // strict reading of RFC 6455 5.5.3 that conformance suites check), empty ones too.
    let payloads: Vec<Vec<u8>> = (0..10u8)
        .map(|i| {
            if i % 3 == 0 {
                Vec::new()
            } else {
                vec![b'a' + i; usize::from(i)]
            }
        })
        .collect();
    let frames: Vec<Vec<u8>> = payloads.iter().map(|p| frame(true, OpCode::Ping, p)).collect();
    let pongs: Vec<OwnedEvent> = payloads
        .iter()
        .map(|p| OwnedEvent::Sent(OpCode::Pong as u8, p.clone()))
        .collect();
    assert_eq!(run(&concat(&frames)), pongs);
}

#[test]
fn pongs_owed_past_the_bound_answer_the_newest() {
    // A caller that never polls while pings pile up: the queue stays bounded and the
    // newest pings are the ones answered.
    let now = Instant::now();
    let mut conn = Connection::new(Role::Server, now);
    let mut input = Vec::new();
    for i in 0..(MAX_QUEUED_PONGS + 5) {
        input.extend(frame(true, OpCode::Ping, &[i as u8]));
    }
    let (used, event) = conn.handle_input(now, &limits(), &mut input);
    assert_eq!((used, event.is_none()), (input.len(), true));
    let mut got = Vec::new();
    while let Some(f) = conn.poll_transmit() {
        got.push(f.as_bytes()[2]);
    }
    let expected: Vec<u8> = (5..MAX_QUEUED_PONGS + 5).map(|i| i as u8).collect();
    assert_eq!(got, expected);
}

#[test]
fn unsolicited_pong_is_ignored() {
    assert_eq!(run(&frame(true, OpCode::Pong, b"hb")), vec![]);
}

// ---- RFC 6455 sections 5.5.1 and 7: closing ----

#[test]
fn close_is_echoed_with_the_same_code_and_ends_the_connection() {
    let now = Instant::now();
    let mut conn = Connection::new(Role::Server, now);
    let mut input = close_frame(1000, b"bye");
    let (_, event) = conn.handle_input(now, &limits(), &mut input);
    assert_eq!(
        event,
        Some(Event::Close {
            code: Some(CloseCode::NORMAL),
            reason: "bye"
        })
    );
    assert!(!conn.can_send());
    let reply = conn.poll_transmit().unwrap();
    assert_eq!(reply.as_bytes(), [0x88, 0x02, 0x03, 0xe8]);
    assert!(conn.is_closed());
    assert!(conn.poll_transmit().is_none());
}

#[test]
fn empty_close_gets_an_empty_close() {
    let events = run(&frame(true, OpCode::Close, b""));
    assert_eq!(
        events,
        vec![OwnedEvent::Close(None, String::new()), OwnedEvent::Sent(8, vec![])]
    );
}

#[test]
fn data_after_the_peers_close_is_discarded() {
    let stream = concat(&[close_frame(1001, b""), text("late"), frame(true, OpCode::Ping, b"")]);
    let events = run(&stream);
    assert_eq!(
        events,
        vec![
            OwnedEvent::Close(Some(1001), String::new()),
            OwnedEvent::Sent(8, vec![0x03, 0xe9])
        ]
    );
}

#[test]
fn close_with_one_byte_payload_fails_with_1002() {
    let events = run(&frame(true, OpCode::Close, &[0x03]));
    assert_eq!(events[0], error(ProtocolError::InvalidClosePayload));
    assert!(sent_close(1002)(&events[1]));
}

#[test]
fn close_with_invalid_code_fails_with_1002() {
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
        let events = run(&close_frame(code, b""));
        assert_eq!(events[0], error(ProtocolError::InvalidCloseCode), "code {code}");
        assert!(sent_close(1002)(&events[1]));
    }
}

#[test]
fn close_with_valid_codes_is_accepted() {
    for code in [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999,
    ] {
        let events = run(&close_frame(code, b""));
        assert_eq!(events[0], OwnedEvent::Close(Some(code), String::new()), "code {code}");
        assert!(sent_close(code)(&events[1]), "code {code} echoed");
    }
}

#[test]
fn close_reason_must_be_utf8_or_fails_with_1007() {
    let events = run(&close_frame(1000, &[0xce, 0xba, 0xed, 0xa0, 0x80]));
    assert_eq!(events[0], error(ProtocolError::InvalidCloseReason));
    assert!(sent_close(1007)(&events[1]));
}

#[test]
fn server_initiated_close_waits_for_the_peers_close() {
    let now = Instant::now();
    let limits = limits();
    let mut conn = Connection::new(Role::Server, now);
    conn.close(now, &limits, CloseCode::GOING_AWAY, "draining");
    assert!(!conn.can_send());
    assert!(conn.write_message(&mut Vec::new(), true, b"x").is_err());
    let frame_out = conn.poll_transmit().unwrap();
    assert_eq!(&frame_out.as_bytes()[2..4], &1001u16.to_be_bytes());
    assert_eq!(&frame_out.as_bytes()[4..], b"draining");
    assert!(!conn.is_closed());
    assert_eq!(conn.poll_timeout(&limits), Some(now + limits.close_timeout));
    // Data still in flight from the peer is parsed and dropped, then its close ends it.
    let mut input = concat(&[text("in flight"), close_frame(1001, b"")]);
    let (_, event) = conn.handle_input(now, &limits, &mut input);
    assert_eq!(
        event,
        Some(Event::Close {
            code: Some(CloseCode::GOING_AWAY),
            reason: ""
        })
    );
    assert!(conn.is_closed());
    assert!(conn.poll_transmit().is_none(), "no second close");
}

#[test]
fn close_handshake_times_out_if_the_peer_never_answers() {
    let now = Instant::now();
    let limits = limits();
    let mut conn = Connection::new(Role::Server, now);
    conn.close(now, &limits, CloseCode::NORMAL, "");
    conn.poll_transmit().unwrap();
    assert_eq!(
        conn.handle_timeout(now + limits.close_timeout - Duration::from_millis(1), &limits),
        None
    );
    assert_eq!(
        conn.handle_timeout(now + limits.close_timeout, &limits),
        Some(Timeout::Close)
    );
    assert!(conn.is_closed());
    assert_eq!(conn.poll_timeout(&limits), None);
}

#[test]
fn close_reason_is_cut_to_fit_a_control_frame() {
    let now = Instant::now();
    let mut conn = Connection::new(Role::Server, now);
    conn.close(now, &limits(), CloseCode::NORMAL, &"ü".repeat(200));
    let out = conn.poll_transmit().unwrap();
    assert!(out.as_bytes().len() <= 127);
    assert!(std::str::from_utf8(&out.as_bytes()[4..]).is_ok());
}

#[test]
fn eof_before_close_handshake_is_abnormal() {
    let now = Instant::now();
    let mut conn = Connection::new(Role::Server, now);
    assert!(!conn.handle_eof());
    assert!(conn.is_closed());
}

// ---- RFC 6455 sections 5.6 and 8.1: text must be UTF-8 ----

#[test]
fn invalid_utf8_text_fails_with_1007() {
    let events = run(&frame(
        true,
        OpCode::Text,
        &[
            0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5, 0xed, 0xa0, 0x80, 0x65, 0x64, 0x69, 0x74,
            0x65, 0x64,
        ],
    ));
    assert_eq!(events[0], error(ProtocolError::InvalidUtf8));
    assert!(sent_close(1007)(&events[1]));
}

#[test]
fn code_point_split_across_fragments_is_valid() {
    let snowman = "☃".as_bytes();
    let stream = concat(&[
        frame(false, OpCode::Text, &snowman[..1]),
        frame(false, OpCode::Continuation, &snowman[1..2]),
        frame(true, OpCode::Continuation, &snowman[2..]),
    ]);
    assert_eq!(run(&stream), vec![OwnedEvent::Text("☃".into())]);
}

#[test]
fn invalid_utf8_fails_fast_in_the_first_fragment() {
    // The message never finishes: the error must come from the first fragment.
    let events = run(&frame(false, OpCode::Text, &[b'a', 0xed, 0xa0, 0x80]));
    assert_eq!(events[0], error(ProtocolError::InvalidUtf8));
}

#[test]
fn invalid_utf8_fails_fast_within_a_partial_frame() {
    let now = Instant::now();
    let mut conn = Connection::new(Role::Server, now);
    let whole = frame(true, OpCode::Text, &[b'a', 0xf4, 0x90, 0x80, 0x80, b'b', b'c']);
    // Deliver the header and the first three payload bytes only: 0xf4 0x90 already
    // lies above U+10FFFF.
    let mut part = whole[..6 + 3].to_vec();
    let (_, event) = conn.handle_input(now, &limits(), &mut part);
    assert_eq!(event, Some(Event::Error(ProtocolError::InvalidUtf8)));
}

#[test]
fn text_ending_inside_a_code_point_fails_with_1007() {
    let stream = concat(&[
        frame(false, OpCode::Text, b"ok"),
        frame(true, OpCode::Continuation, &[0xe2, 0x98]),
    ]);
    assert_eq!(run(&stream)[0], error(ProtocolError::InvalidUtf8));
}

#[test]
fn binary_messages_may_hold_any_bytes() {
    let payload: Vec<u8> = (0..=255).collect();
    assert_eq!(
        run(&frame(true, OpCode::Binary, &payload)),
        vec![OwnedEvent::Binary(payload)]
    );
}

// ---- Heartbeat ----

#[test]
fn heartbeat_pings_after_the_interval_and_times_out_after_silence() {
    let start = Instant::now();
    let limits = limits();
    let mut conn = Connection::new(Role::Server, start);
    assert_eq!(conn.poll_timeout(&limits), Some(start + limits.ping_interval));
    assert_eq!(conn.handle_timeout(start + limits.ping_interval, &limits), None);
    let ping = conn.poll_transmit().unwrap();
    assert_eq!(ping.as_bytes(), [0x89, 0x00]);
    assert_eq!(conn.poll_timeout(&limits), Some(start + limits.idle_timeout));
    assert_eq!(
        conn.handle_timeout(start + limits.idle_timeout, &limits),
        Some(Timeout::Heartbeat)
    );
    let close = conn.poll_transmit().unwrap();
    assert_eq!(&close.as_bytes()[2..4], &1001u16.to_be_bytes());
    assert!(conn.is_closed());
}

#[test]
fn any_input_counts_as_liveness() {
    let start = Instant::now();
    let limits = limits();
    let mut conn = Connection::new(Role::Server, start);
    conn.handle_timeout(start + limits.ping_interval, &limits);
    conn.poll_transmit().unwrap();
    // A pong, or even half a frame header, proves the peer alive.
    let later = start + limits.ping_interval + Duration::from_secs(1);
    let mut half = frame(true, OpCode::Pong, b"")[..1].to_vec();
    conn.handle_input(later, &limits, &mut half);
    assert_eq!(conn.poll_timeout(&limits), Some(later + limits.ping_interval));
    assert_eq!(conn.handle_timeout(start + limits.idle_timeout, &limits), None);
    assert!(conn.can_send());
}

// ---- Memory: the idle connection ----

#[test]
fn idle_connection_is_small_and_holds_no_heap() {
    let size = std::mem::size_of::<Connection>();
    assert!(size <= 48, "Connection grew to {size} bytes");
    let now = Instant::now();
    let mut conn = Connection::new(Role::Server, now);
    // Messages split across reads and fragments, a ping and a pong; afterwards the
    // connection must have let go of every buffer.
    let mut stream = concat(&[
        frame(false, OpCode::Text, b"hello "),
        frame(true, OpCode::Ping, b"payload"),
        frame(true, OpCode::Continuation, b"world"),
        frame(true, OpCode::Binary, &[7; 300]),
    ]);
    for chunk in stream.chunks_mut(5) {
        let mut off = 0;
        while let (used, Some(_)) = conn.handle_input(now, &limits(), &mut chunk[off..]) {
            off += used;
        }
        while conn.poll_transmit().is_some() {}
    }
    assert!(conn.is_idle());
    assert_eq!(conn.take_frames_in(), 4);
    assert_eq!(conn.take_frames_in(), 0);
}

#[test]
fn whole_message_in_one_read_is_not_copied() {
    let now = Instant::now();
    let mut conn = Connection::new(Role::Server, now);
    let mut input = text("zero copy");
    let (_, event) = conn.handle_input(now, &limits(), &mut input);
    let Some(Event::Message(message)) = event else {
        panic!("no message")
    };
    assert!(message.is_borrowed());
    assert_eq!(message.as_bytes(), b"zero copy");
    assert!(conn.is_idle());
}

// ---- Split input ----

/// A stream touching every path: fragments, multi-byte text split across frames,
/// interleaved control frames, 16-bit lengths, then a close.
fn rich_stream() -> Vec<u8> {
    concat(&[
        text("héllo"),
        frame(false, OpCode::Text, "κό".as_bytes()),
        frame(true, OpCode::Ping, b"ping!"),
        frame(false, OpCode::Continuation, &"σμε".as_bytes()[..3]),
        frame(true, OpCode::Continuation, &"σμε".as_bytes()[3..]),
        frame(true, OpCode::Binary, &[0xab; 300]),
        frame(true, OpCode::Pong, b""),
        frame(true, OpCode::Text, b""),
        close_frame(4000, "done ✓".as_bytes()),
    ])
}

#[test]
fn every_two_way_split_gives_the_same_events() {
    let stream = rich_stream();
    let whole = run(&stream);
    assert_eq!(
        whole
            .iter()
            .filter(|e| matches!(e, OwnedEvent::Text(_) | OwnedEvent::Binary(_)))
            .count(),
        4
    );
    for cut in 0..=stream.len() {
        let now = Instant::now();
        let mut conn = Connection::new(Role::Server, now);
        let mut events = Vec::new();
        let mut buf = stream.clone();
        let (a, b) = buf.split_at_mut(cut);
        for piece in [a, b] {
            let mut off = 0;
            while let (used, Some(event)) = conn.handle_input(now, &limits(), &mut piece[off..]) {
                off += used;
                events.push(OwnedEvent::from_event(&event));
            }
        }
        let expected: Vec<_> = whole
            .iter()
            .filter(|e| !matches!(e, OwnedEvent::Sent(..)))
            .cloned()
            .collect();
        assert_eq!(events, expected, "split at {cut}");
    }
}

#[test]
fn every_error_case_gives_the_same_verdict_at_every_split() {
    let cases = [
        raw_frame(0xc1, b"rsv"),
        concat(&[text("ok"), frame(true, OpCode::Continuation, b"x")]),
        frame(true, OpCode::Text, &[b'a', b'b', 0xc0, 0x80]),
        close_frame(1005, b""),
        frame(true, OpCode::Close, &[1]),
    ];
    for stream in cases {
        let whole = run(&stream);
        for seed in 1..200 {
            check_stream(&limits(), &stream, seed);
        }
        assert!(whole.iter().any(|e| matches!(e, OwnedEvent::Error(_))));
    }
}

#[test]
fn rich_stream_survives_random_chunking() {
    let stream = rich_stream();
    for seed in 1..500 {
        check_stream(&limits(), &stream, seed);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn fuzz_raw_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut input = vec![0u8];
        input.extend_from_slice(&data);
        fuzz_connection(&input);
    }

    #[test]
    fn fuzz_built_frames(data in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let mut input = vec![1u8];
        input.extend_from_slice(&data);
        fuzz_connection(&input);
    }

    #[test]
    fn fuzz_valid_frames_with_mutations(
        frames in proptest::collection::vec((0u8..6, proptest::collection::vec(any::<u8>(), 0..200), any::<bool>()), 1..12),
        flip in proptest::option::of((any::<usize>(), any::<u8>())),
        seed in any::<u32>(),
    ) {
        // Mostly well-formed traffic (text, binary, fragments, pings, pongs), with at
        // most one byte flipped somewhere.
        let mut stream = Vec::new();
        for (kind, payload, fin) in &frames {
            let op = [OpCode::Text, OpCode::Binary, OpCode::Continuation, OpCode::Ping, OpCode::Pong, OpCode::Text][usize::from(*kind)];
            let payload: Vec<u8> = if op == OpCode::Text {
                String::from_utf8_lossy(payload).into_owned().into_bytes()
            } else if op.is_control() {
                payload[..payload.len().min(125)].to_vec()
            } else {
                payload.clone()
            };
            stream.extend(frame(*fin || op.is_control(), op, &payload));
        }
        if let Some((at, bits)) = flip && !stream.is_empty() {
            let at = at % stream.len();
            stream[at] ^= bits;
        }
        check_stream(&limits(), &stream, seed);
    }
}
