//! Request and response heads: a resumable line-by-line parser whose start-line grammars
//! are nom parsers over one complete line (a field line, one scan for the end of its name,
//! is written out). A head that arrives in pieces is
//! scanned once: complete lines are parsed and remembered, and only the unfinished line
//! is looked at again when more bytes come.
//!
//! Most lines have a common form (an origin-form request line, a status line of HTTP/1.1
//! or 1.0, a field line of valid bytes) that is recognised in one pass over its bytes,
//! CRLF included, before any search for its end; a line of any other form, an invalid one
//! and one cut off by the end of the input take the line-by-line path, which decides the
//! error. Both read an accepted line the same way (a property test holds them to it).

use nom::bytes::complete::{tag, take_until, take_while, take_while1, take_while_m_n};
use nom::character::complete::char;
use nom::combinator::{all_consuming, opt, recognize, verify};
use nom::{FindSubstring, IResult, Parser};
use smallvec::SmallVec;

use super::{all_field_bytes, is_field_byte, is_tchar, trim_ows, Limits, Span, Version};

type Res<'a, O> = IResult<&'a [u8], O, ()>;

/// Why a head was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// The head did not end within the size limit.
    #[error("head is larger than the limit")]
    TooLarge,
    /// The head has more header fields than the limit.
    #[error("head has more header fields than the limit")]
    TooManyHeaders,
    /// The request line does not follow `method SP request-target SP HTTP-version`.
    #[error("malformed request line")]
    BadRequestLine,
    /// The status line does not follow `HTTP-version SP status-code [SP reason]`.
    #[error("malformed status line")]
    BadStatusLine,
    /// An HTTP version other than 1.x.
    #[error("unsupported HTTP version")]
    UnsupportedVersion,
    /// A header field that is not `token ":" OWS value OWS`.
    #[error("malformed header field")]
    BadHeader,
    /// A line folded onto the previous one (obs-fold), which RFC 9112 lets us reject.
    #[error("obsolete line folding")]
    ObsFold,
    /// A line ended by LF without CR.
    #[error("line not ended by CRLF")]
    BareLf,
}

impl HeadError {
    /// Stable snake_case name, for metrics.
    pub fn reason(self) -> &'static str {
        match self {
            HeadError::TooLarge => "head_too_large",
            HeadError::TooManyHeaders => "too_many_headers",
            HeadError::BadRequestLine => "bad_request_line",
            HeadError::BadStatusLine => "bad_status_line",
            HeadError::UnsupportedVersion => "unsupported_version",
            HeadError::BadHeader => "bad_header",
            HeadError::ObsFold => "obs_fold",
            HeadError::BareLf => "bare_lf",
        }
    }

    /// True for the errors about size limits (answered with `431`).
    pub fn is_limit(self) -> bool {
        matches!(self, HeadError::TooLarge | HeadError::TooManyHeaders)
    }
}

/// One header field: spans of its name and (trimmed) value, and where its line ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// The field name.
    pub name: Span,
    /// The field value without surrounding whitespace.
    pub value: Span,
    /// Offset just past the line's CRLF; the whole line is `name.start..end`.
    pub end: u32,
}

impl Header {
    /// The whole field line, CRLF included.
    pub fn line(&self) -> Span {
        Span {
            start: self.name.start,
            end: self.end,
        }
    }
}

/// The header fields of a head, in wire order.
pub type Headers = SmallVec<[Header; 16]>;

/// The form of a request target (RFC 9112 §3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetForm {
    /// `/path?query`.
    Origin,
    /// `scheme://authority/path?query`, with the spans of its parts.
    Absolute {
        /// The scheme, without `://`.
        scheme: Span,
        /// The authority (may include userinfo).
        authority: Span,
        /// Path and query (may be empty).
        path: Span,
    },
    /// `host:port`, for `CONNECT`.
    Authority,
    /// `*`, for a server-wide `OPTIONS`.
    Asterisk,
}

/// A parsed request line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestLine {
    /// The method.
    pub method: Span,
    /// The request target as sent.
    pub target: Span,
    /// Which form the target has.
    pub form: TargetForm,
    /// The HTTP version.
    pub version: Version,
    /// Offset just past the line's CRLF.
    pub end: u32,
}

/// A parsed status line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusLine {
    /// The HTTP version.
    pub version: Version,
    /// The status code (100 to 999).
    pub code: u16,
    /// The three digits of the status code.
    pub code_span: Span,
    /// The reason phrase (may be empty).
    pub reason: Span,
    /// Offset just past the line's CRLF.
    pub end: u32,
}

/// The first line of a head: a request line or a status line.
pub trait StartLine: Sized {
    /// Parses `line` (without its CRLF), which starts at offset `at` of the input and
    /// whose CRLF ends at offset `end`.
    fn parse(line: &[u8], at: usize, end: usize) -> Result<Self, HeadError>;

    /// Recognises the common form of the start line at offset `at` of `input` in one pass,
    /// CRLF included: the line and the offset past its CRLF. `None` for anything else (a
    /// rarer form, an error, a line not complete in `input`), which [`StartLine::parse`]
    /// then decides; whatever this accepts, `parse` reads the same way.
    fn recognize(input: &[u8], at: usize) -> Option<(Self, usize)> {
        let _ = (input, at);
        None
    }
}

/// A complete head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head<S> {
    /// The start line.
    pub start: S,
    /// The header fields in wire order.
    pub headers: Headers,
    /// Length of the head in bytes, final empty line included.
    pub len: usize,
}

/// A request head.
pub type RequestHead = Head<RequestLine>;
/// A response head.
pub type ResponseHead = Head<StatusLine>;

fn is_digit(b: u8) -> bool {
    b.is_ascii_digit()
}

fn is_target_byte(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0x80..=0xff)
}

fn is_reason_byte(b: u8) -> bool {
    is_field_byte(b)
}

fn is_scheme_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')
}

fn digit(d: &[u8]) -> u8 {
    d.first().map_or(0, |b| b - b'0')
}

/// `HTTP/` DIGIT `.` DIGIT, as (major, minor).
fn http_version(i: &[u8]) -> Res<'_, (u8, u8)> {
    let (i, (_, major, _, minor)) = (
        tag(&b"HTTP/"[..]),
        take_while_m_n(1, 1, is_digit),
        char('.'),
        take_while_m_n(1, 1, is_digit),
    )
        .parse(i)?;
    Ok((i, (digit(major), digit(minor))))
}

fn version_of((major, minor): (u8, u8)) -> Option<Version> {
    match (major, minor) {
        (1, 0) => Some(Version::Http10),
        (1, _) => Some(Version::Http11),
        _ => None,
    }
}

type RequestParts<'a> = (&'a [u8], &'a [u8], (u8, u8));

fn is_target(t: &[u8]) -> bool {
    !t.is_empty() && t.iter().fold(true, |ok, &b| ok & is_target_byte(b))
}

fn request_line(i: &[u8]) -> Res<'_, RequestParts<'_>> {
    let (i, (method, _, target, _, version)) = (
        take_while1(is_tchar),
        char(' '),
        verify(take_until(&b" "[..]), is_target),
        char(' '),
        http_version,
    )
        .parse(i)?;
    Ok((i, (method, target, version)))
}

type StatusParts<'a> = ((u8, u8), &'a [u8], Option<&'a [u8]>);

fn status_line(i: &[u8]) -> Res<'_, StatusParts<'_>> {
    let (i, (version, _, code, reason)) = (
        http_version,
        char(' '),
        take_while_m_n(3, 3, is_digit),
        opt((char(' '), take_while(is_reason_byte)).map(|(_, r)| r)),
    )
        .parse(i)?;
    Ok((i, (version, code, reason)))
}

/// `field-name ":" OWS field-value OWS`; the value comes back trimmed. Written out by
/// hand rather than with the combinators of the start lines: it runs for every field of
/// every head, and the grammar is one scan for the end of the name.
fn header_line(i: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = name_end(i)?;
    let value = trim_ows(i.get(colon + 1..)?);
    all_field_bytes(value).then_some((i.get(..colon)?, value))
}

/// The value of a status code's digits (checked to be digits).
fn status_code(digits: &[u8]) -> u16 {
    digits
        .iter()
        .fold(0u16, |n, b| n * 10 + u16::from(b - b'0'))
}

/// Where the field name at the start of `line` ends: at its colon, after one or more
/// token bytes.
fn name_end(line: &[u8]) -> Option<usize> {
    let colon = token_len(line);
    (colon > 0 && line.get(colon) == Some(&b':')).then_some(colon)
}

/// `scheme "://" authority rest`.
fn absolute_uri(i: &[u8]) -> Res<'_, (&[u8], &[u8], &[u8])> {
    let (rest, (scheme, _, authority)) = (
        recognize((
            take_while_m_n(1, 1, |b: u8| b.is_ascii_alphabetic()),
            take_while(is_scheme_byte),
        )),
        tag(&b"://"[..]),
        take_while(|b| !matches!(b, b'/' | b'?' | b'#')),
    )
        .parse(i)?;
    Ok((&[], (scheme, authority, rest)))
}

/// True for `host:port` with a non-empty host and a numeric port.
fn is_authority_form(t: &[u8]) -> bool {
    let Some(colon) = t.iter().rposition(|&b| b == b':') else {
        return false;
    };
    let (host, port) = (&t[..colon], &t[colon + 1..]);
    !host.is_empty()
        && !port.is_empty()
        && port.iter().all(u8::is_ascii_digit)
        && !t.iter().any(|&b| matches!(b, b'/' | b'?' | b'#' | b'@'))
}

/// The span of `part`, a sub-slice of `line`, where `line` starts at offset `at`.
fn span_in(line: &[u8], part: &[u8], at: usize) -> Span {
    let offset = (part.as_ptr() as usize)
        .checked_sub(line.as_ptr() as usize)
        .filter(|o| o + part.len() <= line.len());
    match offset {
        Some(o) => Span::new(at + o, at + o + part.len()),
        None => Span::new(at + line.len(), at + line.len()),
    }
}

impl StartLine for RequestLine {
    fn parse(line: &[u8], at: usize, end: usize) -> Result<Self, HeadError> {
        let (_, (method, target, version)) = all_consuming(request_line)
            .parse(line)
            .map_err(|_| HeadError::BadRequestLine)?;
        let version = version_of(version).ok_or(HeadError::UnsupportedVersion)?;
        let form = if method == b"CONNECT" {
            if !is_authority_form(target) {
                return Err(HeadError::BadRequestLine);
            }
            TargetForm::Authority
        } else if target == b"*" {
            if method != b"OPTIONS" {
                return Err(HeadError::BadRequestLine);
            }
            TargetForm::Asterisk
        } else if target.first() == Some(&b'/') {
            TargetForm::Origin
        } else {
            let (_, (scheme, authority, path)) =
                absolute_uri(target).map_err(|_| HeadError::BadRequestLine)?;
            TargetForm::Absolute {
                scheme: span_in(line, scheme, at),
                authority: span_in(line, authority, at),
                path: span_in(line, path, at),
            }
        };
        Ok(RequestLine {
            method: span_in(line, method, at),
            target: span_in(line, target, at),
            form,
            version,
            end: end as u32,
        })
    }

    /// `token SP origin-form SP HTTP/1.1` (or `1.0`) CRLF, any method but `CONNECT`.
    fn recognize(input: &[u8], at: usize) -> Option<(Self, usize)> {
        let line = input.get(at..)?;
        let m = token_len(line);
        if m == 0 || line.get(m) != Some(&b' ') || line.get(..m)? == b"CONNECT" {
            return None;
        }
        let t = m + 1;
        let target_len = line.get(t..)?.iter().position(|&b| !is_target_byte(b))?;
        let v = t + target_len;
        if line.get(t) != Some(&b'/') || line.get(v) != Some(&b' ') {
            return None;
        }
        let version = match line.get(v + 1..v + 11)? {
            b"HTTP/1.1\r\n" => Version::Http11,
            b"HTTP/1.0\r\n" => Version::Http10,
            _ => return None,
        };
        let end = at + v + 11;
        let start = RequestLine {
            method: Span::new(at, at + m),
            target: Span::new(at + t, at + v),
            form: TargetForm::Origin,
            version,
            end: end as u32,
        };
        Some((start, end))
    }
}

impl StartLine for StatusLine {
    fn parse(line: &[u8], at: usize, end: usize) -> Result<Self, HeadError> {
        let (_, (version, code, reason)) = all_consuming(status_line)
            .parse(line)
            .map_err(|_| HeadError::BadStatusLine)?;
        let version = version_of(version).ok_or(HeadError::BadStatusLine)?;
        let value = status_code(code);
        if value < 100 {
            return Err(HeadError::BadStatusLine);
        }
        let reason = match reason {
            Some(r) => span_in(line, r, at),
            None => Span::new(at + line.len(), at + line.len()),
        };
        Ok(StatusLine {
            version,
            code: value,
            code_span: span_in(line, code, at),
            reason,
            end: end as u32,
        })
    }

    /// `HTTP/1.1` (or `1.0`) SP 3DIGIT [SP reason] CRLF, with a code of 100 or more.
    fn recognize(input: &[u8], at: usize) -> Option<(Self, usize)> {
        let line = input.get(at..)?;
        let version = match line.get(..9)? {
            b"HTTP/1.1 " => Version::Http11,
            b"HTTP/1.0 " => Version::Http10,
            _ => return None,
        };
        let digits = line.get(9..12)?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let code = status_code(digits);
        if code < 100 {
            return None;
        }
        let (reason, crlf) = match line.get(12)? {
            b'\r' => (Span::new(at + 12, at + 12), 12),
            b' ' => {
                let len = field_run(line.get(13..)?);
                (Span::new(at + 13, at + 13 + len), 13 + len)
            }
            _ => return None,
        };
        if line.get(crlf..crlf + 2)? != b"\r\n" {
            return None;
        }
        let end = at + crlf + 2;
        let start = StatusLine {
            version,
            code,
            code_span: Span::new(at + 9, at + 12),
            reason,
            end: end as u32,
        };
        Some((start, end))
    }
}

fn parse_header(line: &[u8], at: usize, end: usize) -> Result<Header, HeadError> {
    let (name, value) = header_line(line).ok_or(HeadError::BadHeader)?;
    Ok(Header {
        name: span_in(line, name, at),
        value: span_in(line, value, at),
        end: end as u32,
    })
}

/// How many bytes at the start of `s` may stand in a field value. Eight at a time while
/// none is a control byte or DEL (the common case), then one at a time.
fn field_run(s: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut i = 0;
    while let Some(chunk) = s.get(i..i + 8) {
        let Ok(chunk) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        let x = u64::from_le_bytes(chunk);
        // A byte below 0x20 (tab included: it is checked one byte at a time below).
        let control = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
        // A byte equal to 0x7f.
        let y = x ^ (ONES * 0x7f);
        let del = y.wrapping_sub(ONES) & !y & HIGH;
        if control | del != 0 {
            break;
        }
        i += 8;
    }
    while i < s.len() && is_field_byte(s[i]) {
        i += 1;
    }
    i
}

/// How many bytes at the start of `s` are token bytes. A loop of its own: inside the
/// line's recogniser the compiler keeps several counters for it.
#[inline(never)]
fn token_len(s: &[u8]) -> usize {
    let mut i = 0;
    while i < s.len() && is_tchar(s[i]) {
        i += 1;
    }
    i
}

/// The common form of a field line at offset `at` of `input`, `name ":" OWS value OWS
/// CRLF` with every byte valid, recognised in one pass; `None` for anything else (an
/// error, a line not complete in `input`), which [`parse_header`] then decides.
fn recognize_header(input: &[u8], at: usize) -> Option<Header> {
    let line = input.get(at..)?;
    let colon = name_end(line)?;
    let rest = line.get(colon + 1..)?;
    let len = field_run(rest);
    if rest.get(len..len + 2)? != b"\r\n" {
        return None;
    }
    // Where the value starts and ends without the OWS around it, counted here rather
    // than found again from the slice `trim_ows` returns: this runs for every field.
    let value = rest.get(..len)?;
    let ows = |b: &&u8| matches!(b, b' ' | b'\t');
    let lead = value.iter().take_while(ows).count();
    let trail = value.get(lead..)?.iter().rev().take_while(ows).count();
    let value_at = at + colon + 1;
    Some(Header {
        name: Span::new(at, at + colon),
        value: Span::new(value_at + lead, value_at + len - trail),
        end: (value_at + len + 2) as u32,
    })
}

/// A resumable head parser.
///
/// Call [`HeadParser::parse`] with the whole buffer each time more bytes arrived (the
/// bytes already seen must not change); it returns `Ok(None)` until the head is complete.
/// Size and field-count limits are enforced on the partial head too, so a peer cannot
/// make the caller buffer an endless head.
#[derive(Clone, Debug)]
pub struct HeadParser<S> {
    limits: Limits,
    line_start: usize,
    scanned: usize,
    start: Option<S>,
    headers: Headers,
    /// `headers` are those of a head [`HeadParser::parse_in_place`] completed.
    complete: bool,
}

/// A parser of request heads.
pub type RequestParser = HeadParser<RequestLine>;
/// A parser of response heads.
pub type ResponseParser = HeadParser<StatusLine>;

impl<S: StartLine> HeadParser<S> {
    /// A parser enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            line_start: 0,
            scanned: 0,
            start: None,
            headers: Headers::new(),
            complete: false,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Forgets a partial head, to parse a new one from the start of a buffer.
    pub fn reset(&mut self) {
        self.line_start = 0;
        self.scanned = 0;
        self.start = None;
        self.headers.clear();
        self.complete = false;
    }

    /// True while no line of a head has been completed: the parser is at most part-way
    /// through the first line, so the caller may still drop bytes from the buffer's front
    /// (after a [`HeadParser::reset`]).
    pub fn in_first_line(&self) -> bool {
        self.line_start == 0
    }

    /// Parses the head at the start of `buf`: `Ok(None)` when more bytes are needed.
    /// After a complete head or an error the parser is ready for the next head.
    pub fn parse(&mut self, buf: &[u8]) -> Result<Option<Head<S>>, HeadError> {
        Ok(self.parse_in_place(buf)?.map(|(start, len)| Head {
            start,
            headers: std::mem::take(&mut self.headers),
            len,
        }))
    }

    /// As [`HeadParser::parse`], but the header fields stay in the parser: a complete
    /// head gives its start line and length, and [`HeadParser::headers`] its fields until
    /// the next call. Nothing as large as the fields is moved.
    pub fn parse_in_place(&mut self, buf: &[u8]) -> Result<Option<(S, usize)>, HeadError> {
        self.parse_in_place_with(buf, true)
    }

    fn parse_in_place_with(
        &mut self,
        buf: &[u8],
        fast: bool,
    ) -> Result<Option<(S, usize)>, HeadError> {
        if self.complete {
            self.reset();
        }
        let result = self.advance(buf, fast);
        match result {
            Ok(Some(_)) => {
                self.line_start = 0;
                self.scanned = 0;
                self.complete = true;
            }
            Ok(None) => {}
            Err(_) => self.reset(),
        }
        result
    }

    /// The header fields of the head [`HeadParser::parse_in_place`] last completed
    /// (none while a head is in progress).
    pub fn headers(&self) -> &[Header] {
        if self.complete {
            &self.headers
        } else {
            &[]
        }
    }

    /// Parses on from where the last call stopped. Each line not looked at before is first
    /// tried in its common form, in one pass (`fast`); any other line, and any line that
    /// arrived in pieces, is found by its LF and then parsed.
    fn advance(&mut self, buf: &[u8], fast: bool) -> Result<Option<(S, usize)>, HeadError> {
        let limit = self.limits.max_head_bytes.min(u32::MAX as usize);
        let window = buf.get(..limit).unwrap_or(buf);
        loop {
            if fast && self.scanned <= self.line_start {
                let at = self.line_start;
                if self.start.is_none() {
                    if let Some((start, end)) = S::recognize(window, at) {
                        self.start = Some(start);
                        (self.line_start, self.scanned) = (end, end);
                        continue;
                    }
                } else if window.get(at..at + 2) == Some(b"\r\n") {
                    let end = at + 2;
                    (self.line_start, self.scanned) = (end, end);
                    return Ok(self.start.take().map(|start| (start, end)));
                } else if let Some(header) = recognize_header(window, at) {
                    if self.headers.len() >= self.limits.max_headers {
                        return Err(HeadError::TooManyHeaders);
                    }
                    let end = header.end as usize;
                    (self.line_start, self.scanned) = (end, end);
                    self.headers.push(header);
                    continue;
                }
            }
            let from = self.scanned.max(self.line_start);
            let rest = window.get(from..).unwrap_or_default();
            let Some(rel) = rest.find_substring(&b"\n"[..]) else {
                self.scanned = window.len();
                if buf.len() >= limit {
                    return Err(HeadError::TooLarge);
                }
                return Ok(None);
            };
            let at = self.line_start;
            let lf = from + rel;
            let line = window.get(at..lf).unwrap_or_default();
            let line = line.strip_suffix(b"\r").ok_or(HeadError::BareLf)?;
            self.line_start = lf + 1;
            self.scanned = lf + 1;
            if self.start.is_none() {
                self.start = Some(S::parse(line, at, lf + 1)?);
                continue;
            }
            if line.is_empty() {
                return Ok(self.start.take().map(|start| (start, lf + 1)));
            }
            if matches!(line.first(), Some(b' ' | b'\t')) {
                return Err(HeadError::ObsFold);
            }
            if self.headers.len() >= self.limits.max_headers {
                return Err(HeadError::TooManyHeaders);
            }
            self.headers.push(parse_header(line, at, lf + 1)?);
        }
    }
}

/// Parses a request head from the start of `buf` in one go.
pub fn parse_request(buf: &[u8], limits: Limits) -> Result<Option<RequestHead>, HeadError> {
    RequestParser::new(limits).parse(buf)
}

/// Parses a response head from the start of `buf` in one go.
pub fn parse_response(buf: &[u8], limits: Limits) -> Result<Option<ResponseHead>, HeadError> {
    ResponseParser::new(limits).parse(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(s: &str) -> Result<Option<RequestHead>, HeadError> {
        parse_request(s.as_bytes(), Limits::default())
    }

    fn text(buf: &str, span: Span) -> &str {
        std::str::from_utf8(span.of(buf.as_bytes())).unwrap()
    }

    #[test]
    fn origin_form_request() {
        let s =
            "GET /a/b?c=d HTTP/1.1\r\nHost: example.com\r\nX-Empty:\r\nAccept:  */* \t\r\n\r\nBODY";
        let h = req(s).unwrap().unwrap();
        assert_eq!(h.len, s.len() - 4);
        assert_eq!(text(s, h.start.method), "GET");
        assert_eq!(text(s, h.start.target), "/a/b?c=d");
        assert_eq!(h.start.form, TargetForm::Origin);
        assert_eq!(h.start.version, Version::Http11);
        let fields: Vec<_> = h
            .headers
            .iter()
            .map(|f| (text(s, f.name), text(s, f.value)))
            .collect();
        assert_eq!(
            fields,
            [("Host", "example.com"), ("X-Empty", ""), ("Accept", "*/*")]
        );
        assert_eq!(text(s, h.headers[2].line()), "Accept:  */* \t\r\n");
    }

    #[test]
    fn target_forms() {
        let s = "GET http://user@example.com:8080/x?y HTTP/1.0\r\n\r\n";
        let h = req(s).unwrap().unwrap();
        assert_eq!(h.start.version, Version::Http10);
        let TargetForm::Absolute {
            scheme,
            authority,
            path,
        } = h.start.form
        else {
            panic!("{:?}", h.start.form)
        };
        assert_eq!(text(s, scheme), "http");
        assert_eq!(text(s, authority), "user@example.com:8080");
        assert_eq!(text(s, path), "/x?y");

        let s = "GET http://example.com HTTP/1.1\r\n\r\n";
        let h = req(s).unwrap().unwrap();
        assert!(matches!(h.start.form, TargetForm::Absolute { path, .. } if path.is_empty()));

        let h = req("CONNECT example.com:443 HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.start.form, TargetForm::Authority);
        let h = req("OPTIONS * HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.start.form, TargetForm::Asterisk);

        for bad in [
            "GET * HTTP/1.1\r\n\r\n",
            "CONNECT /x HTTP/1.1\r\n\r\n",
            "CONNECT example.com HTTP/1.1\r\n\r\n",
            "GET example.com HTTP/1.1\r\n\r\n",
            "GET  / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1 \r\n\r\n",
            "GET / HTTP/11\r\n\r\n",
            "G(T / HTTP/1.1\r\n\r\n",
            "GET /\x01 HTTP/1.1\r\n\r\n",
            "\r\n",
        ] {
            assert_eq!(req(bad), Err(HeadError::BadRequestLine), "{bad:?}");
        }
        assert_eq!(
            req("GET / HTTP/2.0\r\n\r\n"),
            Err(HeadError::UnsupportedVersion)
        );
        assert_eq!(
            req("GET / HTTP/1.2\r\n\r\n")
                .unwrap()
                .unwrap()
                .start
                .version,
            Version::Http11
        );
    }

    #[test]
    fn status_lines() {
        let s = "HTTP/1.1 404 Not Found\r\nServer: x\r\n\r\n";
        let h = parse_response(s.as_bytes(), Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!(h.start.code, 404);
        assert_eq!(text(s, h.start.reason), "Not Found");
        assert_eq!(text(s, h.start.code_span), "404");
        for ok in ["HTTP/1.1 200\r\n\r\n", "HTTP/1.0 200 \r\n\r\n"] {
            let h = parse_response(ok.as_bytes(), Limits::default())
                .unwrap()
                .unwrap();
            assert_eq!(h.start.code, 200);
            assert!(h.start.reason.is_empty());
        }
        for bad in [
            "HTTP/1.1 20\r\n\r\n",
            "HTTP/1.1 099 X\r\n\r\n",
            "HTTP/2.0 200 OK\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 200 O\x00K\r\n\r\n",
        ] {
            assert_eq!(
                parse_response(bad.as_bytes(), Limits::default()),
                Err(HeadError::BadStatusLine),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn bad_fields() {
        let cases = [
            ("GET / HTTP/1.1\r\nHost : x\r\n\r\n", HeadError::BadHeader),
            ("GET / HTTP/1.1\r\n: x\r\n\r\n", HeadError::BadHeader),
            ("GET / HTTP/1.1\r\nA: b\rc\r\n\r\n", HeadError::BadHeader),
            ("GET / HTTP/1.1\r\nA: b\x00\r\n\r\n", HeadError::BadHeader),
            ("GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n", HeadError::ObsFold),
            ("GET / HTTP/1.1\r\n\tA: b\r\n\r\n", HeadError::ObsFold),
            ("GET / HTTP/1.1\nA: b\r\n\r\n", HeadError::BareLf),
            ("GET / HTTP/1.1\r\nA: b\n\r\n", HeadError::BareLf),
        ];
        for (s, e) in cases {
            assert_eq!(req(s), Err(e), "{s:?}");
        }
        // obs-text is tolerated in values.
        let h = parse_request(b"GET / HTTP/1.1\r\nA: caf\xe9\r\n\r\n", Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!(h.headers.len(), 1);
    }

    #[test]
    fn incomplete_then_complete() {
        let s = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut p = RequestParser::new(Limits::default());
        for n in 0..s.len() {
            assert_eq!(p.parse(&s[..n]), Ok(None), "{n}");
        }
        let h = p.parse(s).unwrap().unwrap();
        assert_eq!(h.len, s.len());
        assert!(p.in_first_line());
    }

    #[test]
    fn in_place_heads_keep_their_fields_until_the_next_parse() {
        let first = b"GET /a HTTP/1.1\r\nHost: a\r\nX-One: 1\r\n\r\n";
        let second = b"POST /b HTTP/1.1\r\nHost: b\r\n\r\n";
        let mut p = RequestParser::new(Limits::default());
        for n in 0..first.len() {
            assert_eq!(p.parse_in_place(&first[..n]), Ok(None), "{n}");
            assert!(
                p.headers().is_empty(),
                "no fields while the head is partial"
            );
        }
        let (start, len) = p.parse_in_place(first).unwrap().unwrap();
        assert_eq!((len, start.method.of(first)), (first.len(), &b"GET"[..]));
        let names: Vec<_> = p.headers().iter().map(|h| h.name.of(first)).collect();
        assert_eq!(names, [&b"Host"[..], b"X-One"]);
        assert!(p.in_first_line(), "ready for the next head");
        // The next head starts afresh: part of it first, then all of it.
        assert_eq!(p.parse_in_place(&second[..10]), Ok(None));
        assert!(p.headers().is_empty());
        let (start, _) = p.parse_in_place(second).unwrap().unwrap();
        assert_eq!(start.method.of(second), b"POST");
        assert_eq!(p.headers().len(), 1);
        assert_eq!(p.headers()[0].value.of(second), b"b");
        // An error leaves nothing behind either.
        assert_eq!(
            p.parse_in_place(b"GET / HTTP/1.1\r\nbad line\r\n\r\n"),
            Err(HeadError::BadHeader)
        );
        assert!(p.headers().is_empty());
        let (_, len) = p.parse_in_place(first).unwrap().unwrap();
        assert_eq!((len, p.headers().len()), (first.len(), 2));
        // `parse` hands the same head over whole.
        let h = p.parse(first).unwrap().unwrap();
        assert_eq!((h.len, h.headers.len()), (first.len(), 2));
    }

    /// Lines near the common forms, for mutating.
    const REQUEST_LINES: &[&[u8]] = &[
        b"GET /a?b=c HTTP/1.1\r\n",
        b"POST / HTTP/1.0\r\n",
        b"CONNECT h:443 HTTP/1.1\r\n",
        b"CONNECT /x HTTP/1.1\r\n",
        b"OPTIONS * HTTP/1.1\r\n",
        b"GET http://u@h:1/p HTTP/1.1\r\n",
        b"GET / HTTP/1.9\r\n",
    ];
    const STATUS_LINES: &[&[u8]] = &[
        b"HTTP/1.1 200 OK\r\n",
        b"HTTP/1.0 404 Not Found\r\n",
        b"HTTP/1.1 204\r\n",
        b"HTTP/1.1 500 \r\n",
        b"HTTP/1.1 099 Low\r\n",
        b"HTTP/1.2 200 OK\r\n",
    ];
    const FIELD_LINES: &[&[u8]] = &[
        b"Host: example.com\r\n",
        b"User-Agent: metamesh-bench/1.0 (x86_64)\r\n",
        b"x-empty:\r\n",
        b"X-Pad: \t a b \t\r\n",
        b"Cookie: a=b; c=d; e=f; g=h; i=j; k=l\r\n",
        b"X-Obs: caf\xc3\xa9\r\n",
        b" folded\r\n",
        b"\r\n",
    ];
    /// Bytes a mutation puts in: each class a line scanner tells apart.
    const ODD_BYTES: &[u8] = b"\r\n\t :/aZ9*@\x00\x7f\x80\xff";

    fn head_of(start: &[u8], fields: &[&[u8]], edits: &[(usize, usize, bool)]) -> Vec<u8> {
        let mut head = start.to_vec();
        for f in fields {
            head.extend_from_slice(f);
        }
        head.extend_from_slice(b"\r\n");
        for &(at, byte, replace) in edits {
            let at = at % (head.len() + 1);
            let byte = ODD_BYTES[byte % ODD_BYTES.len()];
            match head.get_mut(at) {
                Some(b) if replace => *b = byte,
                _ => head.insert(at, byte),
            }
        }
        head
    }

    /// Feeds `head` byte by byte to a parser taking the one-pass path and to one that
    /// only parses line by line, and asks for the same answers at every step.
    fn same_either_way<S: StartLine + PartialEq + std::fmt::Debug>(head: &[u8], limits: Limits) {
        let mut fast = HeadParser::<S>::new(limits);
        let mut slow = HeadParser::<S>::new(limits);
        for n in 0..=head.len() {
            let a = fast.parse_in_place_with(&head[..n], true);
            let b = slow.parse_in_place_with(&head[..n], false);
            assert_eq!(a, b, "{:?} after {n} bytes", String::from_utf8_lossy(head));
            assert_eq!(fast.headers(), slow.headers());
            if a != Ok(None) {
                break;
            }
        }
        let (mut fast, mut slow) = (HeadParser::<S>::new(limits), HeadParser::<S>::new(limits));
        let a = fast.parse_in_place_with(head, true);
        assert_eq!(a, slow.parse_in_place_with(head, false));
        assert_eq!(fast.headers(), slow.headers());
    }

    proptest::proptest! {
        #[test]
        fn one_pass_lines_read_as_line_by_line_parsing_reads_them(
            start in 0..REQUEST_LINES.len() + STATUS_LINES.len(),
            fields in proptest::collection::vec(0..FIELD_LINES.len(), 0..5),
            edits in proptest::collection::vec((0..200usize, 0..64usize, proptest::bool::ANY), 0..3),
            small in proptest::bool::ANY,
        ) {
            let fields: Vec<&[u8]> = fields.iter().map(|&i| FIELD_LINES[i]).collect();
            let limits = if small {
                Limits { max_head_bytes: 60, max_headers: 2, ..Limits::default() }
            } else {
                Limits::default()
            };
            match REQUEST_LINES.get(start) {
                Some(line) => same_either_way::<RequestLine>(&head_of(line, &fields, &edits), limits),
                None => {
                    let line = STATUS_LINES[start - REQUEST_LINES.len()];
                    same_either_way::<StatusLine>(&head_of(line, &fields, &edits), limits);
                }
            }
        }
    }

    #[test]
    fn field_runs_stop_at_the_first_byte_a_value_cannot_hold() {
        for len in 0..20 {
            for bad in [b'\r', b'\n', 0x00, 0x1f, 0x7f] {
                let mut s = vec![b'a'; len];
                assert_eq!(field_run(&s), len);
                for at in 0..len {
                    s[at] = bad;
                    assert_eq!(field_run(&s), at, "{len} {bad:#x} at {at}");
                    s[at] = if at % 2 == 0 { b'\t' } else { 0xe9 };
                    assert_eq!(field_run(&s), len, "tab and obs-text are value bytes");
                }
            }
        }
    }

    #[test]
    fn limits_apply_while_incomplete() {
        let limits = Limits {
            max_head_bytes: 64,
            max_headers: 2,
            ..Limits::default()
        };
        let long = format!("GET /{} HTTP/1.1", "a".repeat(100));
        assert_eq!(
            parse_request(long.as_bytes(), limits),
            Err(HeadError::TooLarge)
        );
        let three = "GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\n";
        assert_eq!(
            parse_request(three.as_bytes(), limits),
            Err(HeadError::TooManyHeaders)
        );
        // A head of exactly the limit is accepted.
        let exact = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(64 - 18));
        assert_eq!(exact.len(), 64);
        assert!(parse_request(exact.as_bytes(), limits).unwrap().is_some());
        let over = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(64 - 17));
        assert_eq!(
            parse_request(over.as_bytes(), limits),
            Err(HeadError::TooLarge)
        );
    }
}
