//! Frame-level tests of the authority fix: client blocks made by a real HPACK encoder
//! that uses the dynamic table, checked by a separate decoder playing the server.

use loona_hpack::{Decoder, Encoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::H2FixError;
use super::block::{FLAG_END_HEADERS, FLAG_END_STREAM, FLAG_PADDED, FLAG_PRIORITY};
use super::frames::{FrameRewriter, MAX_HEADER_BLOCK};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const DATA: u8 = 0x0;
const SETTINGS: u8 = 0x4;

type Headers = Vec<(Vec<u8>, Vec<u8>)>;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn request(authority: &str) -> Headers {
    [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/SpiffeWorkloadAPI/FetchX509SVID"),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("workload.spiffe.io", "true"),
    ]
    .iter()
    .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
    .collect()
}

fn encode(encoder: &mut Encoder<'_>, headers: &Headers) -> Vec<u8> {
    encoder.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])))
}

/// Feeds `input` (after the preface) in one piece and returns the output after the preface.
fn rewrite(input: &[u8]) -> Result<Vec<u8>, H2FixError> {
    let mut r = FrameRewriter::new();
    let mut out = Vec::new();
    r.feed(PREFACE, &mut out)?;
    r.feed(input, &mut out)?;
    assert!(r.at_boundary());
    assert_eq!(&out[..PREFACE.len()], PREFACE);
    Ok(out[PREFACE.len()..].to_vec())
}

/// Splits frames as (type, flags, stream, payload).
fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let mut v = Vec::new();
    while !bytes.is_empty() {
        let len = (bytes[0] as usize) << 16 | (bytes[1] as usize) << 8 | bytes[2] as usize;
        let stream = u32::from_be_bytes(bytes[5..9].try_into().unwrap());
        v.push((bytes[3], bytes[4], stream, bytes[9..9 + len].to_vec()));
        bytes = &bytes[9 + len..];
    }
    v
}

/// Plays the server: decodes every header block of `bytes` with one persistent decoder.
fn server_decode(server: &mut Decoder<'_>, bytes: &[u8]) -> Vec<Headers> {
    let mut blocks = Vec::new();
    let mut block = Vec::new();
    for (kind, flags, _, payload) in frames(bytes) {
        if kind != HEADERS && kind != CONTINUATION {
            continue;
        }
        assert!(payload.len() <= 16_384, "frame above the default max frame size");
        let mut body = &payload[..];
        if kind == HEADERS && flags & FLAG_PADDED != 0 {
            let pad = body[0] as usize;
            body = &body[1..body.len() - pad];
        }
        if kind == HEADERS && flags & FLAG_PRIORITY != 0 {
            body = &body[5..];
        }
        block.extend_from_slice(body);
        if flags & FLAG_END_HEADERS != 0 {
            blocks.push(server.decode(&block).unwrap());
            block.clear();
        }
    }
    blocks
}

fn authority(headers: &Headers) -> &[u8] {
    &headers.iter().find(|(n, _)| n == b":authority").unwrap().1
}

#[test]
fn socket_path_authority_indexed_by_the_client_becomes_localhost() {
    let mut client = Encoder::new();
    let block = encode(&mut client, &request("tmp%2Fagent.sock"));
    // The client's encoder inserted a header into its dynamic table (0x40 literal).
    assert!(block.contains(&0x40));
    let out = rewrite(&frame(HEADERS, FLAG_END_HEADERS, 1, &block)).unwrap();
    assert_eq!(out.len(), frames(&out).iter().map(|f| 9 + f.3.len()).sum::<usize>());
    let indexed =
        rewrite(&frame(HEADERS, FLAG_END_HEADERS, 1, &indexing_block(b"tmp%2Fagent.sock")));
    let decoded = server_decode(&mut Decoder::new(), &indexed.unwrap());
    assert_eq!(authority(&decoded[0]), b"localhost");
    let decoded = server_decode(&mut Decoder::new(), &out);
    assert_eq!(decoded.len(), 1);
    let mut expected = request("localhost");
    assert_eq!(authority(&decoded[0]), b"localhost");
    expected.sort();
    let mut got = decoded[0].clone();
    got.sort();
    assert_eq!(got, expected);
}

#[test]
fn a_valid_authority_passes_through_byte_for_byte() {
    let mut client = Encoder::new();
    let mut input = frame(SETTINGS, 0, 0, &[0, 4, 0, 1, 0, 0]);
    for stream in [1, 3] {
        let block = encode(&mut client, &request("localhost"));
        input.extend(frame(HEADERS, FLAG_END_HEADERS, stream, &block));
        input.extend(frame(DATA, FLAG_END_STREAM, stream, &[0, 0, 0, 0, 0]));
    }
    assert_eq!(rewrite(&input).unwrap(), input);
}

/// Appends an HPACK string literal without Huffman coding.
fn string(s: &[u8], out: &mut Vec<u8>) {
    loona_hpack::encoder::encode_integer_into(s.len(), 7, 0, out).unwrap();
    out.extend_from_slice(s);
}

/// A request block as grpc-core writes one: `:path`, `:authority` and the security
/// header are literals with incremental indexing (RFC 7541, 6.2.1).
fn indexing_block(authority: &[u8]) -> Vec<u8> {
    let mut b = vec![0x83, 0x86, 0x44]; // :method POST, :scheme http, :path (name 4)
    string(b"/SpiffeWorkloadAPI/FetchX509SVID", &mut b);
    b.push(0x41); // :authority (name 1), indexed
    string(authority, &mut b);
    b.push(0x40); // new name, indexed
    string(b"workload.spiffe.io", &mut b);
    string(b"true", &mut b);
    b
}

/// The same request again, all from the tables: the dynamic table holds, newest first,
/// the security header (62), `:authority` (63) and `:path` (64).
const INDEXED_REPEAT: [u8; 5] = [0x83, 0x86, 0x80 | 64, 0x80 | 63, 0x80 | 62];

#[test]
fn a_second_request_referencing_dynamic_entries_of_the_first_decodes_on_the_server() {
    let first = indexing_block(b"/tmp/agent.sock");
    let mut input = frame(HEADERS, FLAG_END_HEADERS, 1, &first);
    input.extend(frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 3, &INDEXED_REPEAT));
    let out = rewrite(&input).unwrap();
    let decoded = server_decode(&mut Decoder::new(), &out);
    assert_eq!(decoded.len(), 2);
    assert_eq!(decoded[0], decoded[1]);
    assert_eq!(authority(&decoded[1]), b"localhost");
    assert_eq!(decoded[1][2], (b":path".to_vec(), b"/SpiffeWorkloadAPI/FetchX509SVID".to_vec()));
    assert_eq!(decoded[1][4], (b"workload.spiffe.io".to_vec(), b"true".to_vec()));
    assert_eq!(frames(&out)[1].1 & FLAG_END_STREAM, FLAG_END_STREAM);
    // Without the rewrite the server's own table is what the client expects.
    let mut plain = frame(HEADERS, FLAG_END_HEADERS, 1, &indexing_block(b"localhost"));
    plain.extend(frame(HEADERS, FLAG_END_HEADERS, 3, &INDEXED_REPEAT));
    assert_eq!(rewrite(&plain).unwrap(), plain);
}

#[test]
fn after_a_rewrite_later_valid_blocks_are_reencoded_consistently() {
    // Valid authority, but its other fields refer to entries inserted by the rewritten
    // block, which the server never saw inserted.
    let mut valid_again = vec![0x83, 0x86, 0x80 | 64, 0x01]; // :authority not indexed
    string(b"localhost", &mut valid_again);
    valid_again.push(0x80 | 62);
    let blocks = [indexing_block(b"tmp%2Fagent.sock"), INDEXED_REPEAT.to_vec(), valid_again];
    let mut input = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        input.extend(frame(HEADERS, FLAG_END_HEADERS, 2 * i as u32 + 1, block));
    }
    let out = rewrite(&input).unwrap();
    let decoded = server_decode(&mut Decoder::new(), &out);
    assert_eq!(decoded.len(), 3);
    assert_eq!(authority(&decoded[0]), b"localhost");
    assert_eq!(decoded[1], decoded[0]);
    assert_eq!(decoded[2], decoded[0]);
}

#[test]
fn a_connection_whose_first_block_is_valid_is_forwarded_unchanged_from_then_on() {
    let mut extra = request("localhost");
    extra.push((b"x-one".to_vec(), b"1".to_vec()));
    let first = frame(HEADERS, FLAG_END_HEADERS, 1, &encode(&mut Encoder::new(), &extra));
    // Later blocks are not looked into, not even a bad one (h2 then refuses that stream,
    // as without the layer), nor frames the layer would refuse before it stepped aside.
    let mut input = first.clone();
    input.extend(frame(HEADERS, FLAG_END_HEADERS, 3, &indexing_block(b"tmp%2Fagent.sock")));
    input.extend(frame(CONTINUATION, FLAG_END_HEADERS, 3, &[0x82]));
    let mut rewriter = FrameRewriter::new();
    let mut out = Vec::new();
    rewriter.feed(PREFACE, &mut out).unwrap();
    assert!(!rewriter.steps_aside(), "nothing decided before the first block");
    rewriter.feed(&input[..first.len() - 1], &mut out).unwrap();
    assert!(!rewriter.steps_aside(), "nor inside it");
    rewriter.feed(&input[first.len() - 1..], &mut out).unwrap();
    assert!(rewriter.steps_aside());
    assert_eq!(&out[PREFACE.len()..], &input[..]);
    assert!(rewriter.at_boundary());
}

#[test]
fn continuation_padding_and_priority_are_handled() {
    let mut client = Encoder::new();
    let block = encode(&mut client, &request("tmp%2Fagent.sock"));
    let (a, rest) = block.split_at(5);
    let (b, c) = rest.split_at(7);
    let mut payload = vec![3]; // pad length
    payload.extend_from_slice(&[0x80, 0, 0, 1, 200]); // exclusive dependency on 1, weight
    payload.extend_from_slice(a);
    payload.extend_from_slice(&[0, 0, 0]);
    let mut input = frame(HEADERS, FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM, 5, &payload);
    input.extend(frame(CONTINUATION, 0, 5, b));
    input.extend(frame(CONTINUATION, FLAG_END_HEADERS, 5, c));
    input.extend(frame(DATA, FLAG_END_STREAM, 7, b"passed through"));
    let out = rewrite(&input).unwrap();
    let f = frames(&out);
    assert_eq!(f.len(), 2);
    let (kind, flags, stream, payload) = &f[0];
    assert_eq!((*kind, *stream), (HEADERS, 5));
    assert_eq!(*flags, FLAG_PRIORITY | FLAG_END_STREAM | FLAG_END_HEADERS);
    assert_eq!(&payload[..5], &[0x80, 0, 0, 1, 200]);
    assert_eq!(f[1], (DATA, FLAG_END_STREAM, 7, b"passed through".to_vec()));
    let decoded = server_decode(&mut Decoder::new(), &out);
    assert_eq!(authority(&decoded[0]), b"localhost");
}

#[test]
fn a_block_that_grows_past_the_frame_size_is_split() {
    let mut client = Encoder::new();
    let mut headers = request("tmp%2Fagent.sock");
    headers.push((b"x-big".to_vec(), vec![b'a'; 40_000]));
    let block = encode(&mut client, &headers);
    let mut input = Vec::new();
    for (i, chunk) in block.chunks(16_000).enumerate() {
        let kind = if i == 0 { HEADERS } else { CONTINUATION };
        let last = (i + 1) * 16_000 >= block.len();
        input.extend(frame(kind, if last { FLAG_END_HEADERS } else { 0 }, 1, chunk));
    }
    let out = rewrite(&input).unwrap();
    assert!(frames(&out).len() >= 3);
    let decoded = server_decode(&mut Decoder::new(), &out);
    assert_eq!(authority(&decoded[0]), b"localhost");
    assert_eq!(decoded[0].last().unwrap().1.len(), 40_000);
}

#[test]
fn a_header_block_over_the_cap_is_refused_before_it_is_held_whole() {
    // A block that never ends, in frames of 16 KiB: the frames up to the cap are held, the
    // next one is refused.
    let chunk = vec![0x41; 16_384];
    let mut r = FrameRewriter::new();
    let mut out = Vec::new();
    r.feed(PREFACE, &mut out).unwrap();
    r.feed(&frame(HEADERS, 0, 1, &chunk), &mut out).unwrap();
    for _ in 1..MAX_HEADER_BLOCK / chunk.len() {
        r.feed(&frame(CONTINUATION, 0, 1, &chunk), &mut out).unwrap();
    }
    let err = r.feed(&frame(CONTINUATION, 0, 1, &chunk), &mut out);
    assert!(matches!(err, Err(H2FixError::HeaderBlockTooLarge(MAX_HEADER_BLOCK))), "{err:?}");
    assert_eq!(out, PREFACE, "nothing of the block was passed on");
    assert_eq!(MAX_HEADER_BLOCK, 64 * 1024, "four times the 16 KiB the server accepts");
}

#[test]
fn byte_by_byte_input_gives_the_same_output() {
    let mut client = Encoder::new();
    let mut input = PREFACE.to_vec();
    input.extend(frame(SETTINGS, 0, 0, &[]));
    input.extend(frame(HEADERS, FLAG_END_HEADERS, 1, &encode(&mut client, &request("a/b"))));
    input.extend(frame(DATA, FLAG_END_STREAM, 1, &[0, 0, 0, 0, 0]));
    let mut whole = Vec::new();
    FrameRewriter::new().feed(&input, &mut whole).unwrap();
    let mut r = FrameRewriter::new();
    let mut split = Vec::new();
    for byte in &input {
        r.feed(std::slice::from_ref(byte), &mut split).unwrap();
    }
    assert_eq!(whole, split);
    assert_ne!(whole, input);
}

#[test]
fn malformed_sequences_are_refused() {
    let block = encode(&mut Encoder::new(), &request("localhost"));
    let mut open = frame(HEADERS, 0, 1, &block);
    open.extend(frame(DATA, 0, 1, b"x"));
    assert!(matches!(rewrite(&open), Err(H2FixError::ContinuationExpected(1))));
    let mut other_stream = frame(HEADERS, 0, 1, &block);
    other_stream.extend(frame(CONTINUATION, FLAG_END_HEADERS, 3, &[]));
    assert!(matches!(rewrite(&other_stream), Err(H2FixError::ContinuationExpected(1))));
    let stray = frame(CONTINUATION, FLAG_END_HEADERS, 1, &block);
    assert!(matches!(rewrite(&stray), Err(H2FixError::UnexpectedContinuation(1))));
    let overpadded = frame(HEADERS, FLAG_PADDED | FLAG_END_HEADERS, 1, &[200, 0x82]);
    assert!(matches!(rewrite(&overpadded), Err(H2FixError::BadHeadersPayload)));
    let push = frame(0x5, FLAG_END_HEADERS, 1, &[0, 0, 0, 2]);
    assert!(matches!(rewrite(&push), Err(H2FixError::PushPromiseFromClient)));
    let bad_index = frame(HEADERS, FLAG_END_HEADERS, 1, &[0x80 | 70]);
    assert!(matches!(rewrite(&bad_index), Err(H2FixError::Hpack(_))));
    let mut out = Vec::new();
    let err = FrameRewriter::new().feed(b"GET / HTTP/1.1\r\n", &mut out);
    assert!(matches!(err, Err(H2FixError::BadPreface)));
}

#[tokio::test]
async fn the_stream_wrapper_rewrites_reads_and_passes_writes() {
    let (mut client, server) = tokio::io::duplex(64);
    let mut wrapped = super::fix_authority(server);
    let block = encode(&mut Encoder::new(), &request("tmp%2Fagent.sock"));
    let mut sent = PREFACE.to_vec();
    sent.extend(frame(HEADERS, FLAG_END_HEADERS, 1, &block));
    let writer = tokio::spawn(async move {
        client.write_all(&sent).await.unwrap();
        client.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        back
    });
    let mut got = Vec::new();
    wrapped.read_to_end(&mut got).await.unwrap();
    wrapped.write_all(b"server bytes").await.unwrap();
    wrapped.shutdown().await.unwrap();
    drop(wrapped);
    assert_eq!(writer.await.unwrap(), b"server bytes");
    let decoded = server_decode(&mut Decoder::new(), &got[PREFACE.len()..]);
    assert_eq!(authority(&decoded[0]), b"localhost");
}

#[tokio::test]
async fn a_connection_cut_inside_a_frame_is_an_error() {
    let (mut client, server) = tokio::io::duplex(64);
    let mut wrapped = super::fix_authority(server);
    let mut sent = PREFACE.to_vec();
    sent.extend(&frame(HEADERS, 0, 1, &[0x82])[..7]);
    client.write_all(&sent).await.unwrap();
    drop(client);
    let mut got = Vec::new();
    let err = wrapped.read_to_end(&mut got).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
}
