//! The Workload API's HTTP/2 `:authority` repair layer (`ClientStreamRewriter`, the core
//! of `h2fix::fix_authority`). Input byte 0 sets the size of the pieces the client's
//! bytes are fed in; the rest follows the connection preface. Invariants:
//! - feeding in pieces or all at once gives the same verdict and the same bytes;
//! - accepted input gives output that an independent frame parser reads as a valid frame
//!   sequence, with every frame other than a header block copied byte for byte, every
//!   complete header block forwarded (same stream, END_STREAM and priority), and nothing
//!   of an unfinished block or frame header forwarded early;
//! - when the first header block's `:authority` is valid (or absent), the layer steps
//!   aside: everything is forwarded unchanged, later blocks included;
//! - otherwise each header block, decoded by an independent HPACK decoder (`httlib-hpack`, one
//!   table for the client's side and one for the server's), carries the same fields in
//!   the same order, except an `:authority` that is not a valid URI authority, which
//!   becomes `localhost`; a valid one is never touched.

use keycard::agent::h2fix::ClientStreamRewriter;

/// The HTTP/2 client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// A frame other than HEADERS/CONTINUATION, or a whole header block.
#[derive(Debug, PartialEq)]
enum Item {
    Frame(Vec<u8>),
    Block { stream: u32, end_stream: bool, priority: Option<[u8; 5]>, fragment: Vec<u8> },
}

/// Frames after the preface; `tail` holds the bytes of an unfinished frame or block.
struct Parsed {
    items: Vec<Item>,
    tail: Vec<u8>,
}

fn frame_header(b: &[u8]) -> (usize, u8, u8, u32) {
    let len = usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]);
    let stream = u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff;
    (len, b[3], b[4], stream)
}

/// Reads a client byte stream the way RFC 9113 lays it out; with `first_block_only`, up to
/// the end of the first header block.
fn parse(bytes: &[u8], first_block_only: bool) -> Result<Parsed, String> {
    let mut rest = bytes.strip_prefix(PREFACE).ok_or("no preface")?;
    let mut items = Vec::new();
    loop {
        let start = rest;
        if rest.len() < 9 {
            return Ok(Parsed { items, tail: start.to_vec() });
        }
        let (len, kind, flags, stream) = frame_header(rest);
        if rest.len() < 9 + len {
            return Ok(Parsed { items, tail: start.to_vec() });
        }
        let payload = &rest[9..9 + len];
        rest = &rest[9 + len..];
        match kind {
            CONTINUATION => return Err("CONTINUATION without HEADERS".into()),
            HEADERS => {}
            _ => {
                items.push(Item::Frame(start[..9 + len].to_vec()));
                continue;
            }
        }
        let mut body = payload;
        let mut pad = 0;
        if flags & PADDED != 0 {
            let (&p, b) = body.split_first().ok_or("short padded HEADERS")?;
            pad = usize::from(p);
            body = b;
        }
        let mut priority = None;
        if flags & PRIORITY != 0 {
            let (p, b) = body.split_first_chunk::<5>().ok_or("short priority HEADERS")?;
            priority = Some(*p);
            body = b;
        }
        let end = body.len().checked_sub(pad).ok_or("padding longer than payload")?;
        let mut fragment = body[..end].to_vec();
        let mut done = flags & END_HEADERS != 0;
        while !done {
            if rest.len() < 9 || rest.len() < 9 + frame_header(rest).0 {
                return Ok(Parsed { items, tail: start.to_vec() });
            }
            let (clen, ckind, cflags, cstream) = frame_header(rest);
            if ckind != CONTINUATION || cstream != stream {
                return Err("header block interrupted".into());
            }
            fragment.extend_from_slice(&rest[9..9 + clen]);
            done = cflags & END_HEADERS != 0;
            rest = &rest[9 + clen..];
        }
        items.push(Item::Block { stream, end_stream: flags & END_STREAM != 0, priority, fragment });
        if first_block_only {
            return Ok(Parsed { items, tail: rest.to_vec() });
        }
    }
}

/// Feeds `input` in pieces of `piece` bytes; returns the output, whether it may end there
/// and whether the layer stepped aside, or `None` on an error.
fn run(input: &[u8], piece: usize) -> Option<(Vec<u8>, bool, bool)> {
    let mut rewriter = ClientStreamRewriter::new();
    let mut out = Vec::new();
    for chunk in input.chunks(piece) {
        rewriter.feed(chunk, &mut out).ok()?;
    }
    Some((out, rewriter.at_boundary(), rewriter.steps_aside()))
}

fn valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

type Fields = Vec<(Vec<u8>, Vec<u8>, u8)>;

fn decode(decoder: &mut httlib_hpack::Decoder<'_>, fragment: &[u8]) -> Option<Fields> {
    let mut buf = fragment.to_vec();
    let mut fields = Vec::new();
    decoder.decode(&mut buf, &mut fields).ok()?;
    Some(fields)
}

/// Feeds the client bytes `PREFACE || data[1..]` through the layer and checks the output.
pub fn check(data: &[u8]) -> bool {
    let Some((&piece, frames)) = data.split_first() else { return false };
    let mut input = PREFACE.to_vec();
    input.extend_from_slice(frames);
    let whole = run(&input, input.len());
    let pieces = run(&input, usize::from(piece % 32) + 1);
    assert_eq!(whole, pieces, "feeding in pieces of {} changed the result", piece % 32 + 1);
    let Some((output, at_boundary, stepped_aside)) = whole else { return false };

    if stepped_aside {
        assert_eq!(output, input, "the layer stepped aside but changed something");
        let head = parse(&input, true).unwrap_or_else(|e| panic!("accepted a bad stream: {e}"));
        let Some(Item::Block { fragment, .. }) = head.items.last() else {
            panic!("stepped aside before a header block ended");
        };
        let mut client = httlib_hpack::Decoder::with_dynamic_size(4096);
        if let Some(fields) = decode(&mut client, fragment) {
            let bad = fields.iter().find(|(n, v, _)| n == b":authority" && !valid_authority(v));
            assert!(bad.is_none(), "stepped aside after an invalid :authority: {bad:?}");
        }
        return true;
    }
    let sent = parse(&input, false).unwrap_or_else(|e| panic!("accepted a bad stream: {e}"));
    let got = parse(&output, false).unwrap_or_else(|e| panic!("forwarded a bad stream: {e}"));
    assert_eq!(at_boundary, sent.tail.is_empty(), "boundary");
    let partial_frame = sent.tail.len() >= 9 && ![HEADERS, CONTINUATION].contains(&sent.tail[3]);
    let expected_tail: &[u8] = if partial_frame { &sent.tail } else { &[] };
    assert_eq!(got.tail, expected_tail, "unfinished input forwarded wrongly");
    assert_eq!(got.items.len(), sent.items.len(), "frames or blocks lost or added");

    let mut client = httlib_hpack::Decoder::with_dynamic_size(4096);
    let mut server = httlib_hpack::Decoder::with_dynamic_size(4096);
    let mut decoders_agree = true;
    for (s, g) in sent.items.iter().zip(&got.items) {
        let (
            Item::Block { stream, end_stream, priority, fragment },
            Item::Block { stream: gs, end_stream: ge, priority: gp, fragment: gf },
        ) = (s, g)
        else {
            assert_eq!(s, g, "a frame changed on its way");
            continue;
        };
        assert_eq!((stream, end_stream, priority), (gs, ge, gp), "block framing changed");
        if !decoders_agree {
            continue;
        }
        // keycard's HPACK decoder accepted this block; where the independent one does not,
        // the two disagree on the client's table from here on, and comparing stops.
        let Some(want) = decode(&mut client, fragment) else {
            decoders_agree = false;
            continue;
        };
        let have = decode(&mut server, gf).expect("forwarded a block that does not decode");
        assert_eq!(want.len(), have.len(), "fields added or lost");
        for ((wn, wv, _), (hn, hv, _)) in want.iter().zip(&have) {
            assert_eq!(wn, hn, "a field name changed");
            if wn.as_slice() == b":authority" {
                assert!(valid_authority(hv), "forwarded an invalid :authority {hv:?}");
                if valid_authority(wv) {
                    assert_eq!(wv, hv, "a valid :authority was changed");
                } else {
                    assert_eq!(hv.as_slice(), b"localhost", "replacement");
                }
            } else {
                assert_eq!(wv, hv, "a field other than :authority changed");
            }
        }
    }
    true
}
