//! One header block: decode it with the client's HPACK context, repair `:authority`,
//! and write it back out as HTTP/2 frames that use no dynamic-table entry.
//!
//! The client's encoder and our [`Decoder`] share one dynamic table, fed by every block
//! the client sends. The server's decoder sees only what we forward. As long as no block
//! has been rewritten, we forward the client's bytes unchanged and both tables agree.
//! From the first rewrite on, the server's table no longer matches the client's, so every
//! later block is re-encoded too, with literals that neither read nor add table entries:
//! whatever the server's table holds is then never consulted again.
//!
//! The clients this layer is for send the socket path on every request of a connection,
//! and the others never send it. So the first header block decides: if its `:authority`
//! is valid (or absent), nothing is rewritten on that connection and the layer steps
//! aside for good ([`Mode::PassThrough`]: no more decoding, no copies), and a later
//! invalid `:authority` meets h2's refusal of that one stream, as without the layer; if
//! it is not, every block of the connection is decoded and re-encoded.

use loona_hpack::Decoder;
use loona_hpack::encoder::encode_integer_into;

use super::H2FixError;

/// HTTP/2 frame type of HEADERS (RFC 9113, section 6.2).
pub(super) const TYPE_HEADERS: u8 = 0x1;
/// HTTP/2 frame type of CONTINUATION (RFC 9113, section 6.10).
pub(super) const TYPE_CONTINUATION: u8 = 0x9;
/// Flag: the last frame of the stream.
pub(super) const FLAG_END_STREAM: u8 = 0x1;
/// Flag: the last frame of the header block.
pub(super) const FLAG_END_HEADERS: u8 = 0x4;
/// Flag: the payload starts with a pad length and ends with padding.
pub(super) const FLAG_PADDED: u8 = 0x8;
/// Flag: the HEADERS payload carries 5 bytes of stream dependency and weight.
pub(super) const FLAG_PRIORITY: u8 = 0x20;

/// Largest frame payload we emit: the initial SETTINGS_MAX_FRAME_SIZE, which h2 keeps
/// unless the server is configured otherwise (the Workload API server is not).
pub(super) const MAX_FRAME_PAYLOAD: usize = 16_384;

/// Dynamic table size the client may ask for: the SETTINGS_HEADER_TABLE_SIZE default that
/// h2 applies when, as under tonic, it advertises none. h2 rejects larger updates too.
const MAX_DYNAMIC_TABLE: usize = 4_096;

/// The value that replaces an `:authority` the server would refuse.
pub(super) const REPLACEMENT_AUTHORITY: &[u8] = b"localhost";

/// A header block being collected from a HEADERS frame and its CONTINUATION frames.
#[derive(Debug)]
pub(super) struct PendingBlock {
    /// The stream the block belongs to; CONTINUATION frames must name the same one.
    pub stream_id: u32,
    /// END_STREAM of the HEADERS frame, to be repeated on the re-encoded HEADERS frame.
    pub end_stream: bool,
    /// Stream dependency and weight of a HEADERS frame with PRIORITY, kept verbatim.
    pub priority: Option<[u8; 5]>,
    /// The header block fragments, concatenated, without padding.
    pub fragment: Vec<u8>,
    /// The frames exactly as received, forwarded as they are while nothing was rewritten.
    pub raw: Vec<u8>,
}

/// What the layer does with a connection's header blocks (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// No header block finished yet: the first one decides.
    Undecided,
    /// The first block's `:authority` was fine: everything is forwarded as it comes.
    PassThrough,
    /// The first block's `:authority` was rewritten: every block is re-encoded.
    Reencode,
}

/// The HPACK side of the layer: the decoder that tracks the client's dynamic table, and
/// what the first block decided.
pub(super) struct BlockRewriter {
    /// Decoder fed with every block the client sends, in order, until the layer steps
    /// aside.
    decoder: Decoder<'static>,
    mode: Mode,
}

impl BlockRewriter {
    /// A rewriter for a fresh connection (empty dynamic table).
    pub fn new() -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(MAX_DYNAMIC_TABLE);
        Self { decoder, mode: Mode::Undecided }
    }

    /// What the blocks so far decided.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Decodes a complete block and appends the frames to forward for it to `out`.
    pub fn finish(&mut self, block: PendingBlock, out: &mut Vec<u8>) -> Result<(), H2FixError> {
        if self.mode == Mode::PassThrough {
            out.extend_from_slice(&block.raw);
            return Ok(());
        }
        let mut headers =
            self.decoder.decode(&block.fragment).map_err(|e| H2FixError::Hpack(e.to_string()))?;
        for (name, value) in &mut headers {
            if name.as_slice() == b":authority" && !authority_is_valid(value) {
                *value = REPLACEMENT_AUTHORITY.to_vec();
                self.mode = Mode::Reencode;
            }
        }
        if self.mode != Mode::Reencode {
            self.mode = Mode::PassThrough;
            out.extend_from_slice(&block.raw);
            return Ok(());
        }
        let mut encoded = Vec::new();
        for (name, value) in &headers {
            encode_literal_not_indexed(name, value, &mut encoded);
        }
        write_frames(&block, &encoded, out);
        Ok(())
    }
}

/// Whether h2 would accept `value` as `:authority`: it parses it as a URI authority.
pub(super) fn authority_is_valid(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// Appends a "literal header field without indexing, new name" (RFC 7541, 6.2.2) with
/// plain (not Huffman) strings: it neither reads nor changes the dynamic table.
fn encode_literal_not_indexed(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0x00);
    for s in [name, value] {
        // Writing into a Vec cannot fail.
        let _ = encode_integer_into(s.len(), 7, 0x00, out);
        out.extend_from_slice(s);
    }
}

/// Appends a 9-byte frame header (RFC 9113, section 4.1).
pub(super) fn write_frame_header(
    len: usize,
    kind: u8,
    flags: u8,
    stream_id: u32,
    out: &mut Vec<u8>,
) {
    let len = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    out.extend_from_slice(&len[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
}

/// Appends a HEADERS frame and as many CONTINUATION frames as `encoded` needs, none with
/// a payload above [`MAX_FRAME_PAYLOAD`], and no padding.
fn write_frames(block: &PendingBlock, encoded: &[u8], out: &mut Vec<u8>) {
    let prio_len = if block.priority.is_some() { 5 } else { 0 };
    let first_len = encoded.len().min(MAX_FRAME_PAYLOAD - prio_len);
    let (first, mut rest) = encoded.split_at(first_len);
    let mut flags = 0;
    if block.end_stream {
        flags |= FLAG_END_STREAM;
    }
    if block.priority.is_some() {
        flags |= FLAG_PRIORITY;
    }
    if rest.is_empty() {
        flags |= FLAG_END_HEADERS;
    }
    write_frame_header(prio_len + first.len(), TYPE_HEADERS, flags, block.stream_id, out);
    if let Some(priority) = &block.priority {
        out.extend_from_slice(priority);
    }
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME_PAYLOAD));
        let flags = if tail.is_empty() { FLAG_END_HEADERS } else { 0 };
        write_frame_header(chunk.len(), TYPE_CONTINUATION, flags, block.stream_id, out);
        out.extend_from_slice(chunk);
        rest = tail;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_h2_refuses_are_recognised() {
        assert!(authority_is_valid(b"localhost"));
        assert!(authority_is_valid(b"example.org:8443"));
        assert!(!authority_is_valid(b"tmp%2Fagent.sock"));
        assert!(!authority_is_valid(b"/tmp/agent.sock"));
        assert!(!authority_is_valid(b""));
    }

    #[test]
    fn literals_round_trip_through_a_fresh_decoder_without_table_entries() {
        let mut encoded = Vec::new();
        let long = vec![b'x'; 300];
        encode_literal_not_indexed(b":path", b"/a", &mut encoded);
        encode_literal_not_indexed(b"big", &long, &mut encoded);
        let mut decoder = Decoder::new();
        let headers = decoder.decode(&encoded).unwrap();
        assert_eq!(headers[0], (b":path".to_vec(), b"/a".to_vec()));
        assert_eq!(headers[1], (b"big".to_vec(), long));
        // Index 62 would be the first dynamic entry: there must be none.
        assert!(decoder.decode(&[0x80 | 62]).is_err());
    }

    #[test]
    fn large_blocks_are_split_into_continuations() {
        let block = PendingBlock {
            stream_id: 3,
            end_stream: true,
            priority: Some([0, 0, 0, 1, 15]),
            fragment: Vec::new(),
            raw: Vec::new(),
        };
        let encoded = vec![7u8; MAX_FRAME_PAYLOAD * 2 + 10];
        let mut out = Vec::new();
        write_frames(&block, &encoded, &mut out);
        // HEADERS: 16384 bytes payload with priority, no END_HEADERS.
        assert_eq!(&out[..9], &[0x00, 0x40, 0x00, 1, 0x21, 0, 0, 0, 3]);
        let second = 9 + MAX_FRAME_PAYLOAD;
        assert_eq!(&out[second..second + 9], &[0x00, 0x40, 0x00, 9, 0, 0, 0, 0, 3]);
        let third = second + 9 + MAX_FRAME_PAYLOAD;
        assert_eq!(&out[third..third + 9], &[0, 0, 15, 9, 4, 0, 0, 0, 3]);
        assert_eq!(out.len(), third + 9 + 15);
    }
}
