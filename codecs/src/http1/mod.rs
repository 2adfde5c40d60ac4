//! HTTP/1.x message syntax (RFC 9112): request and response heads parsed into spans of
//! the input, body framing (§6.3), an incremental chunked-body scanner and a head writer.
//!
//! Nothing here copies the message: a parsed head is a list of [`Span`]s into the bytes
//! the caller keeps, and a body is only ever scanned for where it ends.

mod chunked;
mod framing;
mod head;
mod write;

use std::ops::Range;

pub use chunked::{ChunkedError, ChunkedScanner};
pub use framing::{
    summarize, BodyFraming, ConnectionTokens, FieldSummary, FramingError, MethodClass,
    TransferEncoding,
};
pub use head::{
    parse_request, parse_response, Head, HeadError, HeadParser, Header, Headers, RequestHead,
    RequestLine, RequestParser, ResponseHead, ResponseParser, StartLine, StatusLine, TargetForm,
};
pub use write::{
    write_head, write_header, write_request_line, write_status_line, HeadStart, WriteError,
};

/// Default largest head (start line, fields and the empty line): 64 KiB.
pub const DEFAULT_MAX_HEAD_BYTES: usize = 64 * 1024;
/// Default largest number of header fields in a head.
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Default largest chunk-size line (size and extensions), in bytes.
pub const DEFAULT_MAX_CHUNK_LINE: usize = 4 * 1024;
/// Default largest trailer section, in bytes.
pub const DEFAULT_MAX_TRAILER_BYTES: usize = 64 * 1024;

/// Limits on what a parser or scanner accepts before it gives up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest head, including its final empty line.
    pub max_head_bytes: usize,
    /// Largest number of header fields in one head.
    pub max_headers: usize,
    /// Largest chunk-size line (hex size, extensions, CRLF).
    pub max_chunk_line: usize,
    /// Largest trailer section of a chunked body.
    pub max_trailer_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_head_bytes: DEFAULT_MAX_HEAD_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            max_chunk_line: DEFAULT_MAX_CHUNK_LINE,
            max_trailer_bytes: DEFAULT_MAX_TRAILER_BYTES,
        }
    }
}

/// A byte range of the input a head was parsed from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Span {
    /// Offset of the first byte.
    pub start: u32,
    /// Offset just past the last byte.
    pub end: u32,
}

impl Span {
    /// The span from `start` to `end` (offsets into the parsed input).
    pub fn new(start: usize, end: usize) -> Self {
        Self {
            start: start as u32,
            end: end as u32,
        }
    }

    /// The span as a `usize` range.
    pub fn range(self) -> Range<usize> {
        self.start as usize..self.end as usize
    }

    /// Length in bytes.
    pub fn len(self) -> usize {
        self.end.saturating_sub(self.start) as usize
    }

    /// True for an empty span.
    pub fn is_empty(self) -> bool {
        self.end <= self.start
    }

    /// The bytes of `buf` this span covers (empty when it lies outside `buf`).
    pub fn of(self, buf: &[u8]) -> &[u8] {
        buf.get(self.range()).unwrap_or_default()
    }
}

/// The HTTP version of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    /// HTTP/1.0.
    Http10,
    /// HTTP/1.1 (and any later 1.x minor version, which a recipient treats as 1.1).
    Http11,
}

impl Version {
    /// The version as written on the wire.
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            Version::Http10 => b"HTTP/1.0",
            Version::Http11 => b"HTTP/1.1",
        }
    }
}

const fn tchar(b: u8) -> bool {
    matches!(b,
        b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_'
        | b'`' | b'|' | b'~' | b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z')
}

static TCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = tchar(i as u8);
        i += 1;
    }
    t
};

/// True for `tchar`: the bytes of a token (method, header name, transfer coding).
#[inline]
pub fn is_tchar(b: u8) -> bool {
    TCHAR[b as usize]
}

/// True for bytes allowed in a field value: visible ASCII, space, tab and obs-text.
#[inline]
pub fn is_field_byte(b: u8) -> bool {
    matches!(b, b'\t' | b' '..=b'~' | 0x80..=0xff)
}

/// True when every byte of `s` may stand in a field value. Checks all bytes without
/// stopping early, which lets the compiler vectorize it: values are short or valid.
#[inline]
pub fn all_field_bytes(s: &[u8]) -> bool {
    s.iter().fold(true, |ok, &b| ok & is_field_byte(b))
}

/// True for a non-empty token.
pub fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

/// Trims optional whitespace (spaces and tabs) from both ends.
/// The result is always a part of `s` (empty at its end when `s` is all whitespace).
pub fn trim_ows(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |e| e + 1);
    s.get(start..end).unwrap_or_default()
}

/// The elements of a comma-separated field value, trimmed, empty elements skipped.
pub fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}
