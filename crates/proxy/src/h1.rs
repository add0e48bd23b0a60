//! A lean HTTP/1.1 client for requests without a body: the request head is written and the response read by
//! the task that serves the client's connection.
//!
//! Why: hyper's client connection runs in a task of its own. Each request crossed two tasks by channels (the
//! request there, the response head and every body frame back), with a wake-up each way; under
//! `bench/callgrind.sh` that connection task with its response parse was about 13,600 of the 34,300
//! instructions Portico spent per proxied HTTP/1.1 request. Requests with a body, or asking for a protocol
//! upgrade, still go through hyper's client ([`crate::pool`]) on the same pooled connections: a body may
//! have to be sent while the response already streams back, which needs a connection driven on its own.
//!
//! Framing follows RFC 9112 section 6: no body for HEAD, 1xx, 204 and 304; then chunked transfer coding;
//! then Content-Length; else the body runs to the end of the connection (which is then not kept).

use crate::handler::BoxError;
use crate::pool::Http1Pool;
use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper::body::{Body, Frame, SizeHint};
use std::future::Future as _;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Response headers accepted at most (hyper's default too).
const MAX_HEADERS: usize = 100;
/// A response head larger than this is refused.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// A chunk-size line (with extensions) or trailer section larger than this is refused.
const MAX_CHUNK_LINE_BYTES: usize = 4 * 1024;
/// Free space made in the read buffer before a read, at first. A response head and a small body fit, and it is
/// what an idle connection keeps: with 8 KiB, 9,000 connections took 27 MiB more (`bench/run.sh rss`). A read
/// that fills the space doubles it for the next one, up to [`MAX_READ_CHUNK`], so that large bodies take few
/// system calls; small reads halve it again.
const READ_CHUNK: usize = 4 * 1024;
/// The most free space made in the read buffer before a read.
const MAX_READ_CHUNK: usize = 64 * 1024;

/// A connection to a backend, plain or TLS.
pub enum BackendIo {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS to the backend (re-encryption); boxed, as the TLS state is large.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for BackendIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendIo::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            BackendIo::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BackendIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendIo::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            BackendIo::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendIo::Plain(stream) => Pin::new(stream).poll_flush(cx),
            BackendIo::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendIo::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            BackendIo::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A backend connection between two exchanges, with its buffers (kept for the next request).
pub struct BackendConnection {
    io: BackendIo,
    /// Bytes read and not yet consumed; empty between exchanges.
    buffer: BytesMut,
    /// The request head being written.
    head: Vec<u8>,
    /// Where each header of the response head being parsed lies in it.
    spans: Vec<HeaderSpan>,
    /// Free space made before the next read (see [`READ_CHUNK`]).
    read_size: usize,
}

/// The byte ranges of a header's name and value in a response head.
struct HeaderSpan {
    name: (usize, usize),
    value: (usize, usize),
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// Not a byte of a response came back: writing failed, or the backend closed the connection. On a kept
    /// connection this is the race with the backend's idle timeout, and a request that means the same when
    /// sent twice can go again on another connection.
    #[error("no response: {0}")]
    NoResponse(String),
    /// The response broke off, or was not valid HTTP/1.1.
    #[error("{0}")]
    Broken(String),
}

/// A response head and how its body is framed.
pub struct ResponseHead {
    /// Status, version and headers (hop-by-hop framing headers removed).
    pub response: Response<()>,
    framing: Framing,
    keep_alive: bool,
}

impl BackendConnection {
    /// A connection just opened (and, for TLS, handshaken).
    pub fn new(io: BackendIo) -> Self {
        BackendConnection { io, buffer: BytesMut::new(), head: Vec::new(), spans: Vec::new(), read_size: READ_CHUNK }
    }

    /// Whether an idle connection may take a request: nothing was received since its last response (neither
    /// bytes nor the end of the stream). No system call unless the socket became readable meanwhile.
    pub fn is_open(&mut self) -> bool {
        if !self.buffer.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        let mut context = Context::from_waker(Waker::noop());
        Pin::new(&mut self.io).poll_read(&mut context, &mut probe).is_pending()
    }

    /// The connection itself, for hyper's client; only between exchanges (no unread bytes).
    pub fn into_io(self) -> BackendIo {
        self.io
    }

    /// Writes a body-less request (origin-form target, Host header set) and reads its response head,
    /// skipping interim (1xx) responses.
    pub async fn exchange<B>(&mut self, request: &Request<B>) -> Result<ResponseHead, ExchangeError> {
        self.head.clear();
        encode_request_head(&mut self.head, request);
        let written = async {
            self.io.write_all(&self.head).await?;
            self.io.flush().await
        };
        written.await.map_err(|e| ExchangeError::NoResponse(e.to_string()))?;
        let mut first = true;
        loop {
            let (status, version, headers, noted) = self.read_head(first).await?;
            first = false;
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(ExchangeError::Broken("101 Switching Protocols to a request that asked for none".into()));
            }
            if status.is_informational() {
                continue;
            }
            let framing = framing(request.method(), status, &noted)?;
            // Both Transfer-Encoding and Content-Length may be an attempt at response splitting (RFC 9112
            // section 6.3): the body is read by Transfer-Encoding, and the connection is not used again.
            let ambiguous = noted.chunked.is_some() && noted.content_length.is_some();
            let keep_alive = !matches!(framing, Framing::UntilClose) && !ambiguous && noted.keeps_alive(version);
            let mut response = Response::new(());
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            return Ok(ResponseHead { response, framing, keep_alive });
        }
    }

    async fn read_head(&mut self, first: bool) -> Result<ParsedHead, ExchangeError> {
        loop {
            if !self.buffer.is_empty() {
                if let Some(head) = parse_response_head(&mut self.buffer, &mut self.spans)? {
                    return Ok(head);
                }
                if self.buffer.len() > MAX_HEAD_BYTES {
                    return Err(ExchangeError::Broken(format!("response head over {} KiB", MAX_HEAD_BYTES / 1024)));
                }
            }
            let nothing_yet = first && self.buffer.is_empty();
            match std::future::poll_fn(|cx| self.poll_fill(cx)).await {
                Ok(0) if nothing_yet => return Err(ExchangeError::NoResponse("connection closed".into())),
                Ok(0) => return Err(ExchangeError::Broken("connection closed in the response head".into())),
                Ok(_) => {}
                Err(error) if nothing_yet => return Err(ExchangeError::NoResponse(error.to_string())),
                Err(error) => return Err(ExchangeError::Broken(error.to_string())),
            }
        }
    }

    /// Reads more into the buffer; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buffer.capacity() - self.buffer.len() < self.read_size / 2 {
            self.buffer.reserve(self.read_size);
        }
        let spare = self.buffer.capacity() - self.buffer.len();
        let read = ready!(std::pin::pin!(self.io.read_buf(&mut self.buffer)).as_mut().poll(cx));
        if let Ok(n) = read {
            if n == spare {
                self.read_size = (self.read_size * 2).min(MAX_READ_CHUNK);
            } else if n < self.read_size / 4 {
                self.read_size = (self.read_size / 2).max(READ_CHUNK);
            }
        }
        Poll::Ready(read)
    }
}

/// `METHOD target HTTP/1.1`, the headers as they are, and for a body-less POST, PUT or PATCH that says
/// nothing of its length, `content-length: 0` (else the backend could not tell where the request ends).
fn encode_request_head<B>(out: &mut Vec<u8>, request: &Request<B>) {
    out.extend_from_slice(request.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(request.uri().path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in request.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let payload_method = matches!(*request.method(), Method::POST | Method::PUT | Method::PATCH);
    if payload_method && !request.headers().contains_key(CONTENT_LENGTH) {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A response head: status, version, the headers other than hop-by-hop framing ones, and what those said.
type ParsedHead = (StatusCode, Version, HeaderMap, FramingHeaders);

/// Parses a complete response head at the start of `buffer` and removes it from there; `None` when the head
/// is not complete yet. Header values share the buffer's memory rather than being copied. `spans` is scratch
/// space, kept by the connection (a zeroed array of 100 spans cost 3,200 instructions a response).
fn parse_response_head(
    buffer: &mut BytesMut,
    spans: &mut Vec<HeaderSpan>,
) -> Result<Option<ParsedHead>, ExchangeError> {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    spans.clear();
    let (length, code, version) = {
        let mut parsed = httparse::Response::new(&mut []);
        match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut parsed, buffer, &mut headers) {
            Ok(httparse::Status::Complete(length)) => {
                let base = buffer.as_ptr() as usize;
                // Offsets rather than slices, so that the head can be split off the buffer before use.
                for header in parsed.headers.iter() {
                    let name = header.name.as_ptr() as usize - base;
                    let value = header.value.as_ptr() as usize - base;
                    spans.push(HeaderSpan {
                        name: (name, name + header.name.len()),
                        value: (value, value + header.value.len()),
                    });
                }
                (length, parsed.code.unwrap_or(0), parsed.version.unwrap_or(1))
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(error) => return Err(ExchangeError::Broken(format!("invalid response head: {error}"))),
        }
    };
    let status =
        StatusCode::from_u16(code).map_err(|_| ExchangeError::Broken(format!("invalid status code {code}")))?;
    let head = buffer.split_to(length).freeze();
    let mut map = HeaderMap::with_capacity(spans.len());
    let mut noted = FramingHeaders::default();
    for span in spans.iter() {
        if !noted.note(&head[span.name.0..span.name.1], &head[span.value.0..span.value.1]) {
            continue;
        }
        let name = HeaderName::from_bytes(&head[span.name.0..span.name.1])
            .map_err(|_| ExchangeError::Broken("invalid header name in the response".into()))?;
        // SAFETY: httparse accepted the head, and the bytes it accepts in a header value (tab, 0x20-0x7E,
        // 0x80-0xFF) are the ones `HeaderValue` allows; checking them again cost 350 instructions a response
        // (bench/callgrind.sh). hyper builds its own header values the same way. Debug builds still check.
        let value = unsafe { HeaderValue::from_maybe_shared_unchecked(head.slice(span.value.0..span.value.1)) };
        map.append(name, value);
    }
    let version = if version == 0 { Version::HTTP_10 } else { Version::HTTP_11 };
    if noted.chunked.is_some() {
        // Transfer-Encoding overrides Content-Length, and a proxy must remove the latter before passing the
        // response on (RFC 9112 section 6.3); the client would otherwise be told a length the body is not.
        map.remove(CONTENT_LENGTH);
    }
    Ok(Some((status, version, map, noted)))
}

/// What a response's framing headers say (Content-Length, Transfer-Encoding, Connection), noted while its
/// head is parsed: no look-up in the header map afterwards, and the hop-by-hop ones never enter it.
#[derive(Default)]
pub(crate) struct FramingHeaders {
    /// Content-Length when given: every listed value the same number (`5, 5` is allowed, RFC 9110 section
    /// 8.6), else `Err`.
    content_length: Option<Result<u64, ()>>,
    /// Transfer-Encoding when given: whether chunked is the final coding.
    chunked: Option<bool>,
    /// Connection names `close`.
    close: bool,
    /// Connection names `keep-alive`.
    keep_alive: bool,
}

impl FramingHeaders {
    /// Notes one header. Returns whether it belongs in the response passed on: Transfer-Encoding, Keep-Alive
    /// and Connection concern this hop only, but a Connection that names other headers is kept, for the
    /// proxy's hop-by-hop filter to remove those.
    fn note(&mut self, name: &[u8], value: &[u8]) -> bool {
        let tokens = || value.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|t| !t.is_empty());
        if name.eq_ignore_ascii_case(b"content-length") {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                // Digits only (no sign, no blank), at most 19 of them: no overflow.
                let number = (!token.is_empty() && token.len() <= 19 && token.iter().all(u8::is_ascii_digit))
                    .then(|| token.iter().fold(0u64, |n, &digit| n * 10 + u64::from(digit - b'0')));
                self.content_length = match (number, self.content_length) {
                    (Some(n), None) => Some(Ok(n)),
                    (Some(n), Some(Ok(previous))) if n == previous => Some(Ok(n)),
                    _ => Some(Err(())),
                };
            }
            true
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if let Some(last) = tokens().next_back() {
                self.chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
            }
            false
        } else if name.eq_ignore_ascii_case(b"connection") {
            let mut names_others = false;
            for token in tokens() {
                if token.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    self.keep_alive = true;
                } else {
                    names_others = true;
                }
            }
            names_others
        } else {
            !name.eq_ignore_ascii_case(b"keep-alive")
        }
    }

    /// The framing headers of a response that hyper's client parsed.
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        let mut noted = FramingHeaders::default();
        for name in [CONTENT_LENGTH, TRANSFER_ENCODING, CONNECTION] {
            for value in headers.get_all(&name) {
                noted.note(name.as_str().as_bytes(), value.as_bytes());
            }
        }
        noted
    }

    /// Whether the connection may carry another request after this response: HTTP/1.1 unless it says
    /// `close`, HTTP/1.0 only if it says `keep-alive`.
    pub(crate) fn keeps_alive(&self, version: Version) -> bool {
        if version == Version::HTTP_10 { self.keep_alive && !self.close } else { !self.close }
    }
}

/// How a response body is delimited (RFC 9112 section 6.3).
enum Framing {
    /// No body, or what is left of it has been read.
    Done,
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunk),
    /// Until the backend closes the connection.
    UntilClose,
}

/// Where a chunked body's reader stands.
enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// After the last (zero-size) chunk: trailer fields up to an empty line.
    Trailers,
}

fn framing(method: &Method, status: StatusCode, noted: &FramingHeaders) -> Result<Framing, ExchangeError> {
    if method == Method::HEAD || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Done);
    }
    match (noted.chunked, noted.content_length) {
        // Chunked must be the final coding; any other final coding runs to the end of the connection.
        (Some(true), _) => Ok(Framing::Chunked(Chunk::Size)),
        (Some(false), _) => Ok(Framing::UntilClose),
        (None, Some(Ok(0))) => Ok(Framing::Done),
        (None, Some(Ok(length))) => Ok(Framing::Length(length)),
        (None, Some(Err(()))) => Err(ExchangeError::Broken("invalid Content-Length in the response".into())),
        (None, None) => Ok(Framing::UntilClose),
    }
}

/// A response body read from a [`BackendConnection`]; read to its end, the connection goes back to the pool.
/// Dropped before that, the connection closes with it (HTTP/1.1 cannot abandon a response and go on).
pub struct LeanBody {
    connection: Option<BackendConnection>,
    framing: Framing,
    keep_alive: bool,
    home: Option<(Arc<Http1Pool>, SocketAddr)>,
}

impl LeanBody {
    /// The response of a finished [`BackendConnection::exchange`], whose connection returns to `pool`.
    pub fn response(
        connection: BackendConnection,
        head: ResponseHead,
        pool: Arc<Http1Pool>,
        endpoint: SocketAddr,
    ) -> Response<LeanBody> {
        let ResponseHead { response, framing, keep_alive } = head;
        let mut body = LeanBody { connection: Some(connection), framing, keep_alive, home: Some((pool, endpoint)) };
        if matches!(body.framing, Framing::Done) {
            body.finish();
        }
        response.map(|()| body)
    }

    /// The body has been read: its connection goes back to the pool if it can carry another request.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        let connection = self.connection.take();
        if let (Some(connection), Some((pool, endpoint))) = (connection, self.home.take())
            && self.keep_alive
            && connection.buffer.is_empty()
        {
            pool.put(endpoint, connection);
        }
    }

    fn fail(&mut self, message: &str) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.framing = Framing::Done;
        self.connection = None;
        Poll::Ready(Some(Err(io::Error::other(message.to_string()).into())))
    }
}

/// What one step of reading a body produced.
enum Step {
    Frame(Frame<Bytes>),
    /// The body ended (after a last frame, if any).
    End(Option<Frame<Bytes>>),
    /// More bytes are needed.
    Fill,
    Again,
    Fail(&'static str),
}

impl LeanBody {
    fn step(&mut self) -> Step {
        let Some(connection) = self.connection.as_mut() else { return Step::End(None) };
        let buffer = &mut connection.buffer;
        match &mut self.framing {
            Framing::Done => Step::End(None),
            Framing::Length(_) | Framing::Chunked(Chunk::Data(_)) if buffer.is_empty() => Step::Fill,
            Framing::Length(left) => {
                let take = (*left).min(buffer.len() as u64);
                *left -= take;
                let data = Frame::data(buffer.split_to(take as usize).freeze());
                if *left == 0 { Step::End(Some(data)) } else { Step::Frame(data) }
            }
            Framing::UntilClose if buffer.is_empty() => Step::Fill,
            Framing::UntilClose => Step::Frame(Frame::data(buffer.split().freeze())),
            Framing::Chunked(chunk) => match chunk {
                Chunk::Size => match httparse::parse_chunk_size(buffer) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        let _ = buffer.split_to(used);
                        *chunk = if size == 0 { Chunk::Trailers } else { Chunk::Data(size) };
                        Step::Again
                    }
                    Ok(httparse::Status::Partial) if buffer.len() < MAX_CHUNK_LINE_BYTES => Step::Fill,
                    _ => Step::Fail("invalid chunk size in the response body"),
                },
                Chunk::Data(left) => {
                    let take = (*left).min(buffer.len() as u64);
                    *left -= take;
                    if *left == 0 {
                        *chunk = Chunk::DataEnd;
                    }
                    Step::Frame(Frame::data(buffer.split_to(take as usize).freeze()))
                }
                Chunk::DataEnd if buffer.len() < 2 => Step::Fill,
                Chunk::DataEnd if buffer.starts_with(b"\r\n") => {
                    let _ = buffer.split_to(2);
                    *chunk = Chunk::Size;
                    Step::Again
                }
                Chunk::DataEnd => Step::Fail("chunk data longer than its size"),
                Chunk::Trailers => {
                    let mut fields = [httparse::EMPTY_HEADER; 32];
                    match httparse::parse_headers(buffer, &mut fields) {
                        Ok(httparse::Status::Complete((used, fields))) => {
                            let mut trailers = HeaderMap::new();
                            for field in fields {
                                if let (Ok(name), Ok(value)) = (
                                    HeaderName::from_bytes(field.name.as_bytes()),
                                    HeaderValue::from_bytes(field.value),
                                ) {
                                    trailers.append(name, value);
                                }
                            }
                            let _ = buffer.split_to(used);
                            Step::End((!trailers.is_empty()).then(|| Frame::trailers(trailers)))
                        }
                        Ok(httparse::Status::Partial) if buffer.len() < MAX_CHUNK_LINE_BYTES => Step::Fill,
                        _ => Step::Fail("invalid trailer section in the response body"),
                    }
                }
            },
        }
    }
}

impl Body for LeanBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match this.step() {
                Step::Frame(frame) => return Poll::Ready(Some(Ok(frame))),
                Step::End(last) => {
                    this.finish();
                    return Poll::Ready(last.map(Ok));
                }
                Step::Again => {}
                Step::Fail(message) => return this.fail(message),
                Step::Fill => {
                    let Some(connection) = this.connection.as_mut() else { return Poll::Ready(None) };
                    match ready!(connection.poll_fill(cx)) {
                        Ok(0) if matches!(this.framing, Framing::UntilClose) => {
                            // The end of the connection is the end of this body; the connection is not kept.
                            this.keep_alive = false;
                            this.finish();
                            return Poll::Ready(None);
                        }
                        Ok(0) => return this.fail("the backend closed the connection before the end of the body"),
                        Ok(_) => {}
                        Err(error) => return this.fail(&error.to_string()),
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(left) => SizeHint::with_exact(left),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Option<ParsedHead>, ExchangeError> {
        parse_response_head(&mut BytesMut::from(text), &mut Vec::new())
    }

    #[test]
    fn a_response_head_is_parsed_and_split_from_its_body() {
        let mut buffer = BytesMut::from(
            "HTTP/1.1 201 Created\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok",
        );
        let (status, version, headers, noted) =
            parse_response_head(&mut buffer, &mut Vec::new()).expect("valid").expect("complete");
        assert_eq!((status, version), (StatusCode::CREATED, Version::HTTP_11));
        assert_eq!(headers.get_all("x-a").iter().collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(headers.get("content-length").map(|v| v.as_bytes()), Some(&b"2"[..]));
        assert!(!headers.contains_key("connection"), "this hop's Connection was passed on");
        assert!(matches!(noted.content_length, Some(Ok(2))));
        assert_eq!(&buffer[..], b"ok");
        assert!(head("HTTP/1.1 200 OK\r\nX-A: 1\r\n").expect("valid").is_none(), "incomplete head");
        assert!(head("HTTP/1.1 200 OK\r\nX-A 1\r\n\r\n").is_err(), "no colon");
        let listed =
            head("HTTP/1.1 200 OK\r\nConnection: x-hop\r\nX-Hop: 1\r\n\r\n").expect("valid").expect("complete");
        assert_eq!(listed.2.get("connection").map(|v| v.as_bytes()), Some(&b"x-hop"[..]), "kept for the hop filter");
        let both = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n");
        let (_, _, headers, noted) = both.expect("valid").expect("complete");
        assert!(!headers.contains_key("content-length"), "a Content-Length that Transfer-Encoding overrides was kept");
        assert_eq!(noted.chunked, Some(true));
    }

    /// Header values are taken from the head without a second check: a byte the backend sends in a value is
    /// passed on exactly when `HeaderValue` would allow it, and a response with any other is refused. Short and
    /// long values, for httparse's byte-at-a-time and vectored paths.
    #[test]
    fn response_header_values_hold_only_bytes_a_header_value_may() {
        for byte in 0..=255u8 {
            for padding in [1, 40] {
                let value = [vec![b'a'; padding], vec![byte], vec![b'z'; padding]].concat();
                let text = [&b"HTTP/1.1 200 OK\r\nX-A: "[..], &value, b"\r\nContent-Length: 0\r\n\r\n"].concat();
                let parsed = parse_response_head(&mut BytesMut::from(&text[..]), &mut Vec::new());
                let allowed = HeaderValue::from_bytes(&value).is_ok();
                match parsed {
                    Ok(Some((_, _, headers, _))) => {
                        assert!(allowed, "byte {byte:#04x} accepted in a header value");
                        assert_eq!(headers.get("x-a").map(HeaderValue::as_bytes), Some(&value[..]));
                    }
                    Ok(None) => panic!("byte {byte:#04x}: a complete head read as incomplete"),
                    Err(_) => assert!(!allowed, "byte {byte:#04x} refused, though a header value may hold it"),
                }
            }
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let noted = |pairs: &[(&str, &str)]| {
            let mut noted = FramingHeaders::default();
            for (name, value) in pairs {
                noted.note(name.as_bytes(), value.as_bytes());
            }
            noted
        };
        let ok = StatusCode::OK;
        let length = noted(&[("Content-Length", "5")]);
        assert!(matches!(framing(&Method::GET, ok, &length), Ok(Framing::Length(5))));
        assert!(matches!(framing(&Method::HEAD, ok, &length), Ok(Framing::Done)));
        assert!(matches!(framing(&Method::GET, StatusCode::NOT_MODIFIED, &length), Ok(Framing::Done)));
        let both = noted(&[("content-length", "5"), ("transfer-encoding", "gzip, chunked")]);
        assert!(matches!(framing(&Method::GET, ok, &both), Ok(Framing::Chunked(_))));
        let gzip_last = noted(&[("transfer-encoding", "chunked, gzip")]);
        assert!(matches!(framing(&Method::GET, ok, &gzip_last), Ok(Framing::UntilClose)));
        assert!(matches!(framing(&Method::GET, ok, &noted(&[("content-length", "5, 5")])), Ok(Framing::Length(5))));
        assert!(framing(&Method::GET, ok, &noted(&[("content-length", "5"), ("content-length", "6")])).is_err());
        assert!(framing(&Method::GET, ok, &noted(&[("content-length", "+5")])).is_err());
        assert!(framing(&Method::GET, ok, &noted(&[("content-length", "99999999999999999999")])).is_err());
        assert!(matches!(framing(&Method::GET, ok, &noted(&[])), Ok(Framing::UntilClose)));
        assert!(!noted(&[("connection", "x-a, Close")]).keeps_alive(Version::HTTP_11));
        assert!(noted(&[("connection", "keep-alive")]).keeps_alive(Version::HTTP_10));
        assert!(!noted(&[]).keeps_alive(Version::HTTP_10));
        let mut map = HeaderMap::new();
        map.insert(CONNECTION, HeaderValue::from_static("close"));
        assert!(!FramingHeaders::of(&map).keeps_alive(Version::HTTP_11));
    }

    #[test]
    fn a_body_less_post_says_its_length() {
        let mut out = Vec::new();
        let request = Request::post("/a?b=1").header("host", "h").body(()).expect("request");
        encode_request_head(&mut out, &request);
        assert_eq!(out, b"POST /a?b=1 HTTP/1.1\r\nhost: h\r\ncontent-length: 0\r\n\r\n");
    }
}
