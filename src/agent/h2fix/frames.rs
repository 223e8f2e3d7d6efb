//! The client-to-server byte stream as HTTP/2 frames: the connection preface, then
//! 9-byte frame headers and payloads. Header blocks (HEADERS + CONTINUATION) are
//! collected and handed to [`BlockRewriter`]; every other frame is copied through as it
//! arrives, without being buffered whole.

use super::H2FixError;
use super::block::{
    BlockRewriter, FLAG_END_HEADERS, FLAG_END_STREAM, FLAG_PADDED, FLAG_PRIORITY, Mode,
    PendingBlock, TYPE_CONTINUATION, TYPE_HEADERS,
};

/// The client connection preface (RFC 9113, section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// HTTP/2 frame type of PUSH_PROMISE, which only a server may send.
const TYPE_PUSH_PROMISE: u8 = 0x5;

/// Upper bound on one header block's compressed size, so a client cannot make us buffer
/// without end. The Workload API's requests carry a few hundred bytes of headers, and
/// the server behind us accepts at most 16 KiB of them decoded (hyper's
/// `SETTINGS_MAX_HEADER_LIST_SIZE`); HPACK blocks are smaller than what they decode to
/// (save for Huffman codes of unusual bytes), so four times that is ample. Every held
/// connection may buffer up to twice this (the block and its frames): at 1 MiB, 200
/// connections of one unregistered uid that never ended a block held 400 MiB of the agent.
pub(super) const MAX_HEADER_BLOCK: usize = 64 * 1024;

/// Where the parser stands in the client's byte stream.
#[derive(Debug, Clone, Copy)]
enum State {
    /// Still reading the preface; holds how many of its bytes were seen.
    Preface(usize),
    /// Collecting the 9 bytes of a frame header.
    FrameHeader,
    /// Copying this many payload bytes of a frame we do not look into.
    PassThrough(usize),
    /// Collecting the payload of a HEADERS or CONTINUATION frame.
    HeaderPayload {
        /// Payload length from the frame header.
        len: usize,
        /// HEADERS or CONTINUATION.
        kind: u8,
        /// Frame flags.
        flags: u8,
        /// Stream identifier.
        stream_id: u32,
    },
}

/// Turns the client's bytes into the bytes the server should read.
pub(super) struct FrameRewriter {
    /// Parser position.
    state: State,
    /// Bytes of the current frame header or header payload collected so far.
    buf: Vec<u8>,
    /// A header block whose END_HEADERS has not arrived yet.
    pending: Option<PendingBlock>,
    /// HPACK context and rewrite policy.
    blocks: BlockRewriter,
}

impl FrameRewriter {
    /// A parser at the start of a connection.
    pub fn new() -> Self {
        Self {
            state: State::Preface(0),
            buf: Vec::new(),
            pending: None,
            blocks: BlockRewriter::new(),
        }
    }

    /// Whether the stream may end here: between frames, with no header block open. Once
    /// the layer has stepped aside ([`FrameRewriter::steps_aside`]) it no longer knows,
    /// and says yes: what the client sends then reaches the server unchanged, cut or not.
    pub fn at_boundary(&self) -> bool {
        self.steps_aside()
            || (matches!(self.state, State::FrameHeader | State::Preface(0))
                && self.buf.is_empty()
                && self.pending.is_none())
    }

    /// Whether everything from here on is forwarded unchanged: the first header block
    /// had a valid `:authority` and ended at a frame boundary.
    pub fn steps_aside(&self) -> bool {
        self.blocks.mode() == Mode::PassThrough
            && matches!(self.state, State::FrameHeader)
            && self.buf.is_empty()
    }

    /// Consumes `input` and appends what the server should receive to `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), H2FixError> {
        while !input.is_empty() {
            if self.steps_aside() {
                out.extend_from_slice(input);
                return Ok(());
            }
            match self.state {
                State::Preface(seen) => {
                    let take = input.len().min(PREFACE.len() - seen);
                    if input[..take] != PREFACE[seen..seen + take] {
                        return Err(H2FixError::BadPreface);
                    }
                    out.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    self.state = if seen + take == PREFACE.len() {
                        State::FrameHeader
                    } else {
                        State::Preface(seen + take)
                    };
                }
                State::FrameHeader => {
                    let take = input.len().min(9 - self.buf.len());
                    self.buf.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    if self.buf.len() == 9 {
                        let header: [u8; 9] = std::mem::take(&mut self.buf)
                            .try_into()
                            .map_err(|_| H2FixError::Truncated)?;
                        self.start_frame(header, out)?;
                    }
                }
                State::PassThrough(remaining) => {
                    let take = input.len().min(remaining);
                    out.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    self.state = if take == remaining {
                        State::FrameHeader
                    } else {
                        State::PassThrough(remaining - take)
                    };
                }
                State::HeaderPayload { len, .. } => {
                    let take = input.len().min(len - self.buf.len());
                    self.buf.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    if self.buf.len() == len {
                        self.end_header_payload(out)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Acts on a complete frame header.
    fn start_frame(&mut self, header: [u8; 9], out: &mut Vec<u8>) -> Result<(), H2FixError> {
        let len =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let kind = header[3];
        let flags = header[4];
        let stream_id =
            u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        if let Some(pending) = &self.pending
            && (kind != TYPE_CONTINUATION || stream_id != pending.stream_id)
        {
            return Err(H2FixError::ContinuationExpected(pending.stream_id));
        }
        match kind {
            TYPE_HEADERS | TYPE_CONTINUATION => {
                if kind == TYPE_CONTINUATION && self.pending.is_none() {
                    return Err(H2FixError::UnexpectedContinuation(stream_id));
                }
                let collected = self.pending.as_ref().map_or(0, |p| p.fragment.len());
                if collected + len > MAX_HEADER_BLOCK {
                    return Err(H2FixError::HeaderBlockTooLarge(MAX_HEADER_BLOCK));
                }
                match self.pending.as_mut() {
                    Some(pending) => pending.raw.extend_from_slice(&header),
                    None => self.buf_header_for_new_block(header, flags, stream_id),
                }
                self.state = State::HeaderPayload { len, kind, flags, stream_id };
                if len == 0 {
                    self.end_header_payload(out)?;
                }
            }
            TYPE_PUSH_PROMISE => return Err(H2FixError::PushPromiseFromClient),
            _ => {
                out.extend_from_slice(&header);
                self.state = if len == 0 { State::FrameHeader } else { State::PassThrough(len) };
            }
        }
        Ok(())
    }

    /// Opens a block for a HEADERS frame; its payload fields are filled in later.
    fn buf_header_for_new_block(&mut self, header: [u8; 9], flags: u8, stream_id: u32) {
        self.pending = Some(PendingBlock {
            stream_id,
            end_stream: flags & FLAG_END_STREAM != 0,
            priority: None,
            fragment: Vec::new(),
            raw: header.to_vec(),
        });
    }

    /// Handles a complete HEADERS or CONTINUATION payload held in `buf`.
    fn end_header_payload(&mut self, out: &mut Vec<u8>) -> Result<(), H2FixError> {
        let State::HeaderPayload { kind, flags, stream_id, .. } = self.state else {
            return Err(H2FixError::Truncated);
        };
        let payload = std::mem::take(&mut self.buf);
        self.state = State::FrameHeader;
        let pending = self.pending.as_mut().ok_or(H2FixError::UnexpectedContinuation(stream_id))?;
        pending.raw.extend_from_slice(&payload);
        let mut body: &[u8] = &payload;
        if kind == TYPE_HEADERS {
            let mut pad = 0;
            if flags & FLAG_PADDED != 0 {
                let (&pad_len, rest) = body.split_first().ok_or(H2FixError::BadHeadersPayload)?;
                pad = usize::from(pad_len);
                body = rest;
            }
            if flags & FLAG_PRIORITY != 0 {
                let (priority, rest) =
                    body.split_first_chunk::<5>().ok_or(H2FixError::BadHeadersPayload)?;
                pending.priority = Some(*priority);
                body = rest;
            }
            body = body
                .len()
                .checked_sub(pad)
                .map(|end| &body[..end])
                .ok_or(H2FixError::BadHeadersPayload)?;
        }
        pending.fragment.extend_from_slice(body);
        if flags & FLAG_END_HEADERS != 0
            && let Some(block) = self.pending.take()
        {
            self.blocks.finish(block, out)?;
        }
        Ok(())
    }
}
