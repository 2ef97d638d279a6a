use proptest::prelude::*;

use flate2::Compression;

use super::*;
use crate::limits::Limits;
use crate::proto::connection::{OwnedEvent, check_stream_with, run_stream_with};
use crate::proto::frame::{OpCode, encode_header};
use crate::proto::handshake::{HandshakeConfig, SAMPLE_CHROME_REQUEST, parse_request};
use crate::proto::mask::apply_mask;

/// The agreement for a request whose only extension header is `offer`.
fn agree(offer: &str) -> Option<Agreement> {
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Extensions: {offer}\r\n\r\n"
    );
    let parsed = parse_request(request.as_bytes(), &Limits::default(), &HandshakeConfig::default())
        .expect("valid")
        .expect("whole");
    negotiate(parsed.extensions())
}

const BOTH: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

#[test]
fn chromes_offer_is_taken_without_context_takeover() {
    let parsed = parse_request(SAMPLE_CHROME_REQUEST, &Limits::default(), &HandshakeConfig::default())
        .unwrap()
        .unwrap();
    let agreed = negotiate(parsed.extensions()).expect("Chrome's offer is acceptable");
    assert_eq!(agreed.server_window_bits, 15);
    // client_max_window_bits needs no answer: our inflater takes any window.
    assert_eq!(agreed.response(), BOTH);
}

#[test]
fn offers_are_judged_by_rfc_7692_section_7() {
    assert_eq!(agree("permessage-deflate").unwrap().response(), BOTH);
    assert_eq!(agree("PerMessage-Deflate").unwrap().response(), BOTH);
    let bits = agree("permessage-deflate; server_max_window_bits=10").unwrap();
    assert_eq!(bits.server_window_bits, 10);
    assert_eq!(bits.response(), format!("{BOTH}; server_max_window_bits=10"));
    assert_eq!(
        agree("permessage-deflate; server_max_window_bits=\"12\"")
            .unwrap()
            .server_window_bits,
        12
    );
    assert!(agree("permessage-deflate; client_max_window_bits=9; server_no_context_takeover").is_some());
    // Declined: unknown or repeated parameters, bad values, a window we cannot honour.
    for bad in [
        "permessage-deflate; foo",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; client_no_context_takeover=x",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=010",
        "permessage-deflate; server_max_window_bits=8",
        "permessage-deflate; client_max_window_bits=20",
        "x-webkit-deflate-frame",
    ] {
        assert_eq!(agree(bad), None, "{bad}");
    }
    // The first acceptable offer wins; unacceptable ones before it are skipped.
    let agreed = agree(
        "permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=11, \
         permessage-deflate",
    )
    .unwrap();
    assert_eq!(agreed.server_window_bits, 11);
    assert_eq!(agree("foo, permessage-deflate").unwrap().response(), BOTH);
}

/// A server-to-client frame's payload from RFC 7692 section 7.2.3 (the frame bytes are
/// given there with their 2-byte header).
fn inflate_frame(frame: &[u8]) -> Vec<u8> {
    assert_eq!(frame[0] & 0x40, 0x40, "RSV1");
    assert_eq!(usize::from(frame[1]), frame.len() - 2);
    let mut out = Vec::new();
    Inflater::default()
        .inflate(&frame[2..], true, 1000, &mut out)
        .expect("inflates");
    out
}

#[test]
fn the_examples_of_rfc_7692_section_7_2_3_inflate_to_hello() {
    // 7.2.3.1: one compressed block; and the same message in two fragments.
    assert_eq!(
        inflate_frame(&[0xc1, 0x07, 0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]),
        b"Hello"
    );
    let joined = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
    let mut out = Vec::new();
    Inflater::default().inflate(&joined, true, 100, &mut out).unwrap();
    assert_eq!(out, b"Hello");
    // 7.2.3.3: a stored (uncompressed) block.
    assert_eq!(
        inflate_frame(&[
            0xc1, 0x0b, 0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00
        ]),
        b"Hello"
    );
    // 7.2.3.4: a block with BFINAL set.
    assert_eq!(
        inflate_frame(&[0xc1, 0x08, 0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00]),
        b"Hello"
    );
    // 7.2.3.5: two blocks in one message.
    assert_eq!(
        inflate_frame(&[
            0xc1, 0x0d, 0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00
        ]),
        b"Hello"
    );
}

#[test]
fn our_compressor_writes_the_bytes_of_rfc_7692_section_7_2_3_1() {
    let mut out = Vec::new();
    Deflater::default().deflate_into(b"Hello", 15, &mut out);
    assert_eq!(out, [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
    // Seven bytes for five: `compress` sends it plain instead.
    assert!(!Deflater::default().compress(b"Hello", 15, &mut Vec::new()));
    // Every message on its own: the second "Hello" is the same bytes again (7.2.3.2's
    // shared window is what no context takeover gives up).
    let mut deflater = Deflater::default();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    deflater.deflate_into(b"Hello", 15, &mut a);
    deflater.deflate_into(b"Hello", 15, &mut b);
    assert_eq!(a, b);
}

#[test]
fn round_trips_at_every_window_and_size() {
    let mut deflater = Deflater::default();
    let mut inflater = Inflater::default();
    let json = br#"{"type":"msg","from":"alice","seq":42,"body":{"text":"hello there, how are you?"}}"#;
    for size in [1usize, 100, 1024, 16 * 1024, 300 * 1024] {
        let payload: Vec<u8> = json.iter().copied().cycle().take(size).collect();
        for bits in 9..=15 {
            let mut packed = Vec::new();
            if !deflater.compress(&payload, bits, &mut packed) {
                assert!(size < 20, "{size} bytes of JSON did not shrink");
                continue;
            }
            assert!(packed.len() < payload.len());
            let mut out = Vec::new();
            inflater.inflate(&packed, true, 1 << 20, &mut out).unwrap();
            assert_eq!(out, payload, "size {size} bits {bits}");
        }
    }
}

#[test]
fn random_bytes_are_sent_plain() {
    let mut x = 0x1234_5678u32;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let mut out = vec![7];
    assert!(!Deflater::default().compress(&noise, 15, &mut out));
    assert_eq!(out, [7], "output left as it was");
}

#[test]
fn a_bomb_stops_at_the_limit() {
    // 10 MB of zeros compress to about 10 KB (an attacker uses the best level); with a
    // 1 MiB limit inflation stops at the limit (plus one byte), never near 10 MB.
    let zeros = vec![0u8; 10 << 20];
    let mut packed = Vec::new();
    assert!(Deflater::new(Compression::best()).compress(&zeros, 15, &mut packed));
    assert!(packed.len() < 20_000, "{}", packed.len());
    let mut out = Vec::new();
    let limit = 1 << 20;
    assert_eq!(
        Inflater::default().inflate(&packed, false, limit, &mut out),
        Err(ProtocolError::MessageTooBig)
    );
    assert!(out.len() as u64 <= limit + 1, "{}", out.len());
    assert!(out.capacity() <= (limit as usize + 1) * 2, "{}", out.capacity());
    // Exactly at the limit is fine.
    let mut inflater = Inflater::default();
    let mut packed = Vec::new();
    Deflater::default().compress(&zeros[..1 << 20], 15, &mut packed);
    inflater.inflate(&packed, false, limit, &mut out).unwrap();
    assert_eq!(out.len(), 1 << 20);
}

#[test]
fn text_is_validated_after_inflation_and_bad_data_is_refused() {
    let mut deflater = Deflater::default();
    let mut inflater = Inflater::default();
    let mut out = Vec::new();
    let bad: Vec<u8> = b"valid text then "
        .iter()
        .copied()
        .chain([0xff, 0xfe])
        .cycle()
        .take(2000)
        .collect();
    let mut packed = Vec::new();
    assert!(deflater.compress(&bad, 15, &mut packed));
    assert_eq!(
        inflater.inflate(&packed, true, 1 << 20, &mut out),
        Err(ProtocolError::InvalidUtf8)
    );
    // The same bytes as binary are fine.
    inflater.inflate(&packed, false, 1 << 20, &mut out).unwrap();
    assert_eq!(out, bad);
    // A code point split by the end of the message.
    let mut packed = Vec::new();
    deflater.deflate_into("hé".as_bytes().split_last().unwrap().1, 15, &mut packed);
    assert!(inflater.inflate(&packed, true, 100, &mut out).is_err());
    // Not DEFLATE at all (BTYPE 11 is reserved).
    assert_eq!(
        inflater.inflate(&[0xff, 0xff, 0xff], false, 100, &mut out),
        Err(ProtocolError::BadDeflate)
    );
    // The inflater is usable again after every failure.
    let mut packed = Vec::new();
    deflater.compress(b"Hello Hello Hello", 15, &mut packed);
    inflater.inflate(&packed, true, 100, &mut out).unwrap();
    assert_eq!(out, b"Hello Hello Hello");
}

/// A masked client frame with RSV1 as given.
fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let header = encode_header(true, OpCode::Binary, payload.len() as u64, Some(key));
    let mut out = header.as_bytes().to_vec();
    out[0] = first;
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], key, 0);
    out
}

fn compressed(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    assert!(Deflater::default().compress(text.as_bytes(), 15, &mut out) || text.len() < 16);
    out
}

#[test]
fn compressed_messages_through_the_connection_split_at_every_offset() {
    let limits = Limits::default();
    let long = "a compressed message ".repeat(50);
    let packed = compressed(&long);
    let (head, tail) = packed.split_at(packed.len() / 2);
    let mut stream = Vec::new();
    // Whole, then in two fragments with a ping between them, then a plain message.
    stream.extend(client_frame(0xc1, &packed));
    stream.extend(client_frame(0x41, head));
    stream.extend(client_frame(0x89, b"p"));
    stream.extend(client_frame(0x80, tail));
    stream.extend(client_frame(0x81, b"plain"));
    // Fed whole, the pong is polled after the input (`check_stream_with` below holds
    // that pongs come out the same however the input is split).
    let expected = vec![
        OwnedEvent::Text(long.clone()),
        OwnedEvent::Text(long.clone()),
        OwnedEvent::Text("plain".into()),
        OwnedEvent::Sent(OpCode::Pong as u8, b"p".to_vec()),
    ];
    assert_eq!(run_stream_with(&limits, &stream, u32::MAX, true), expected);
    for seed in 0..64 {
        check_stream_with(&limits, &stream, seed, true);
    }
    // And cut at every offset into two reads.
    for cut in 0..stream.len() {
        let mut conn =
            crate::proto::connection::Connection::new(crate::proto::frame::Role::Server, std::time::Instant::now());
        conn.set_deflate(15);
        let mut texts = Vec::new();
        let mut inflater = Inflater::default();
        let mut out = Vec::new();
        let mut buf = stream.clone();
        let (a, b) = buf.split_at_mut(cut);
        for part in [a, b] {
            let mut off = 0;
            loop {
                let (used, event) = conn.handle_input(std::time::Instant::now(), &limits, &mut part[off..]);
                off += used;
                match event {
                    None => break,
                    Some(crate::proto::connection::Event::Compressed { text, payload }) => {
                        inflater
                            .inflate(&payload, text, limits.max_message_bytes, &mut out)
                            .unwrap();
                        texts.push(String::from_utf8(out.clone()).unwrap());
                    }
                    Some(crate::proto::connection::Event::Message(m)) => {
                        texts.push(String::from_utf8(m.as_bytes().to_vec()).unwrap())
                    }
                    Some(other) => panic!("cut {cut}: {other:?}"),
                }
            }
        }
        assert_eq!(texts, [long.as_str(), long.as_str(), "plain"], "cut {cut}");
    }
}

#[test]
fn rsv1_rules_and_bounded_inflation_in_the_connection() {
    let limits = Limits {
        max_message_bytes: 4096,
        ..Limits::default()
    };
    let ends_with = |stream: Vec<u8>, deflate: bool| run_stream_with(&limits, &stream, u32::MAX, deflate);
    let packed = compressed("hello hello hello hello");
    // RSV1 without the extension: 1002.
    assert_eq!(
        ends_with(client_frame(0xc1, &packed), false)[0],
        OwnedEvent::Error(ProtocolError::ReservedBits)
    );
    // RSV1 on a control frame or a continuation: 1002.
    assert_eq!(
        ends_with(client_frame(0xc9, b""), true)[0],
        OwnedEvent::Error(ProtocolError::ReservedBits)
    );
    let mut stream = client_frame(0x41, &packed[..3]);
    stream.extend(client_frame(0xc0, &packed[3..]));
    assert_eq!(
        ends_with(stream, true)[0],
        OwnedEvent::Error(ProtocolError::ReservedBits)
    );
    // RSV2 and RSV3 stay errors.
    assert_eq!(
        ends_with(client_frame(0xa1, &packed), true)[0],
        OwnedEvent::Error(ProtocolError::ReservedBits)
    );
    // A 1 KB-ish frame that inflates past the message limit: 1009, and the close says so.
    let mut bomb = Vec::new();
    assert!(Deflater::new(Compression::best()).compress(&vec![b'a'; 1 << 20], 15, &mut bomb));
    assert!(bomb.len() < 2048);
    let events = ends_with(client_frame(0xc1, &bomb), true);
    assert_eq!(events[0], OwnedEvent::Error(ProtocolError::MessageTooBig));
    assert!(
        matches!(&events[1], OwnedEvent::Sent(op, p) if *op == OpCode::Close as u8 && p[..2] == 1009u16.to_be_bytes())
    );
    // Inflated text that is not UTF-8: 1007; garbage: 1007.
    let mut bad = Vec::new();
    Deflater::default().deflate_into(
        &[0xc3, 0x28, b'a', b'b', b'c', b'd', b'e', b'f', b'g', b'h', b'i', b'j'],
        15,
        &mut bad,
    );
    let events = ends_with(client_frame(0xc1, &bad), true);
    assert_eq!(events[0], OwnedEvent::Error(ProtocolError::InvalidUtf8));
    let events = ends_with(client_frame(0xc2, &[0xff, 0xff]), true);
    assert_eq!(events[0], OwnedEvent::Error(ProtocolError::BadDeflate));
    assert!(matches!(&events[1], OwnedEvent::Sent(_, p) if p[..2] == 1007u16.to_be_bytes()));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn inflate_never_panics_or_overruns(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        fuzz_inflate(&data);
    }

    #[test]
    fn inflating_what_we_compressed_gives_it_back(
        data in proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'{'), any::<u8>()], 0..3000),
        bits in 9u8..=15,
    ) {
        let mut packed = Vec::new();
        if Deflater::default().compress(&data, bits, &mut packed) {
            let mut out = Vec::new();
            Inflater::default().inflate(&packed, false, 1 << 20, &mut out).unwrap();
            prop_assert_eq!(out, data);
        }
    }
}
