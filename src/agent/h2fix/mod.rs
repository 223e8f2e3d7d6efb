//! A thin HTTP/2 layer for Workload API connections that repairs `:authority`.
//!
//! Python's grpcio (so py-spiffe), grpc-java and grpc-swift send the Unix socket path as
//! the `:authority` of every request (`tmp%2Fagent.sock`, `/run/agent.sock`). h2, under
//! tonic, refuses such a request with `RST_STREAM(PROTOCOL_ERROR)` and cannot be told
//! otherwise, while SPIRE accepts these clients. [`fix_authority`] wraps an accepted
//! stream: what the server writes goes to the client unchanged; what the client sends is
//! read as HTTP/2 frames, and a header block whose `:authority` is not a valid URI
//! authority is re-encoded with `localhost` in its place ([`block`] explains how the
//! HPACK state of both ends stays consistent). A malformed frame sequence ends the
//! connection with an I/O error. The first header block decides for the connection: when
//! its `:authority` is valid, as from every client that does not send a socket path, the
//! layer steps aside after it and reads go straight to the socket (no decoding, no copy).
//!
//! - [`frames`]: the frame parser (preface, frame headers, HEADERS/CONTINUATION, padding).
//! - [`block`]: HPACK decode, the authority check, stateless re-encoding and framing.

mod block;
mod frames;
#[cfg(test)]
mod tests;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

use frames::FrameRewriter;

/// What a client can get wrong in the byte stream it sends; each closes the connection.
#[derive(Debug, thiserror::Error)]
pub enum H2FixError {
    /// The stream did not start with the HTTP/2 client connection preface.
    #[error("the client did not send the HTTP/2 connection preface")]
    BadPreface,
    /// A frame other than CONTINUATION arrived inside an unfinished header block.
    #[error("expected a CONTINUATION frame for stream {0}")]
    ContinuationExpected(u32),
    /// A CONTINUATION frame arrived with no header block open.
    #[error("CONTINUATION frame on stream {0} without a preceding HEADERS frame")]
    UnexpectedContinuation(u32),
    /// A HEADERS payload is shorter than its pad length and priority fields.
    #[error("HEADERS frame shorter than its padding and priority fields")]
    BadHeadersPayload,
    /// A header block exceeded the size we are willing to buffer.
    #[error("header block larger than {0} bytes")]
    HeaderBlockTooLarge(usize),
    /// A client sent PUSH_PROMISE, which only servers may send.
    #[error("PUSH_PROMISE frame from a client")]
    PushPromiseFromClient,
    /// The header block is not valid HPACK.
    #[error("invalid HPACK header block: {0}")]
    Hpack(String),
    /// The client closed the connection in the middle of a frame or header block.
    #[error("connection closed in the middle of a frame")]
    Truncated,
}

impl From<H2FixError> for io::Error {
    fn from(e: H2FixError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// Size of the chunks read from the client at a time.
const READ_CHUNK: usize = 16 * 1024;

/// An accepted connection whose client-to-server HTTP/2 frames get a valid `:authority`.
/// Reads go through the frame rewriter; writes go straight to the inner stream.
pub struct AuthorityFix<S> {
    /// The accepted connection.
    inner: S,
    /// Parser and HPACK state of the client's side.
    rewriter: FrameRewriter,
    /// Rewritten bytes not yet handed to the reader.
    out: Vec<u8>,
    /// How many bytes of `out` were already handed out.
    out_pos: usize,
    /// Scratch space for reads from `inner`.
    chunk: Box<[u8]>,
}

/// Wraps an accepted Workload API connection so that h2 accepts requests whose
/// `:authority` is a socket path (see the module documentation).
pub fn fix_authority<S: AsyncRead + AsyncWrite + Unpin>(stream: S) -> AuthorityFix<S> {
    AuthorityFix {
        inner: stream,
        rewriter: FrameRewriter::new(),
        out: Vec::new(),
        out_pos: 0,
        chunk: vec![0; READ_CHUNK].into_boxed_slice(),
    }
}

/// The rewriting [`AuthorityFix`] does, without the I/O: feed it the client's bytes in
/// pieces of any size, and it appends what the server would read. Public so that the fuzz
/// targets and their replay test (tests/fuzz) can check the layer's invariants directly.
pub struct ClientStreamRewriter(FrameRewriter);

impl ClientStreamRewriter {
    /// A rewriter at the start of a connection (the preface comes first).
    pub fn new() -> Self {
        Self(FrameRewriter::new())
    }

    /// Consumes `input` and appends the bytes to forward to the server to `out`; an error
    /// means the connection must be closed.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), H2FixError> {
        self.0.feed(input, out)
    }

    /// Whether the client's stream may end here: between frames, no header block open
    /// (always, once the layer stepped aside).
    pub fn at_boundary(&self) -> bool {
        self.0.at_boundary()
    }

    /// Whether the layer stepped aside: the first header block's `:authority` was valid,
    /// and everything from there on is forwarded unchanged.
    pub fn steps_aside(&self) -> bool {
        self.0.steps_aside()
    }
}

impl Default for ClientStreamRewriter {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> AuthorityFix<S> {
    /// The wrapped stream, for peer credentials and the like.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_pos);
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.rewriter.steps_aside() {
                // Nothing left to look at: read straight into the server's buffer.
                if !this.chunk.is_empty() {
                    this.chunk = Box::default();
                    this.out = Vec::new();
                }
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let mut read = ReadBuf::new(&mut this.chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            let data = read.filled();
            if data.is_empty() {
                if this.rewriter.at_boundary() {
                    return Poll::Ready(Ok(()));
                }
                return Poll::Ready(Err(H2FixError::Truncated.into()));
            }
            this.rewriter.feed(data, &mut this.out)?;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// tonic hands each request the inner stream's connect info (for a `UnixStream`, its
/// peer credentials), so the wrapper changes nothing a service can observe.
impl<S: Connected> Connected for AuthorityFix<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}
