//! Message body framing (RFC 9112 §6.3): what the fields of a head say about the body
//! that follows it, with the checks that keep two parsers of the same bytes from
//! disagreeing on where a message ends (request smuggling).

use super::{list_elements, trim_ows, Header, Span, Version};

/// How the body after a head is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    None,
    /// Exactly this many bytes (never zero: that is [`BodyFraming::None`]).
    Length(u64),
    /// The chunked transfer coding.
    Chunked,
    /// Everything until the connection closes (responses only).
    UntilClose,
    /// The connection becomes a tunnel (`101 Switching Protocols`, `CONNECT` answered 2xx).
    Tunnel,
}

impl BodyFraming {
    /// True when body bytes follow the head.
    pub fn has_body(self) -> bool {
        matches!(
            self,
            BodyFraming::Length(_) | BodyFraming::Chunked | BodyFraming::UntilClose
        )
    }
}

/// A framing problem of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// A `Content-Length` that is not a decimal number.
    #[error("invalid content-length")]
    BadContentLength,
    /// Several `Content-Length` values that differ.
    #[error("conflicting content-length values")]
    ConflictingContentLength,
    /// Both `Transfer-Encoding` and `Content-Length`.
    #[error("transfer-encoding together with content-length")]
    TransferEncodingWithContentLength,
    /// `Transfer-Encoding` in an HTTP/1.0 message.
    #[error("transfer-encoding in an HTTP/1.0 message")]
    TransferEncodingInHttp10,
    /// A request whose transfer codings do not end with `chunked`.
    #[error("chunked is not the final transfer coding")]
    ChunkedNotLast,
    /// `chunked` applied more than once.
    #[error("chunked applied more than once")]
    RepeatedChunked,
    /// A `Transfer-Encoding` field without a coding.
    #[error("empty transfer-encoding")]
    BadTransferEncoding,
    /// A request with a transfer coding this implementation does not know.
    #[error("unsupported transfer coding")]
    UnsupportedTransferCoding,
}

impl FramingError {
    /// Stable snake_case name, for metrics.
    pub fn reason(self) -> &'static str {
        match self {
            FramingError::BadContentLength => "bad_content_length",
            FramingError::ConflictingContentLength => "conflicting_content_length",
            FramingError::TransferEncodingWithContentLength => {
                "transfer_encoding_with_content_length"
            }
            FramingError::TransferEncodingInHttp10 => "transfer_encoding_in_http10",
            FramingError::ChunkedNotLast => "chunked_not_last",
            FramingError::RepeatedChunked => "repeated_chunked",
            FramingError::BadTransferEncoding => "bad_transfer_encoding",
            FramingError::UnsupportedTransferCoding => "unsupported_transfer_coding",
        }
    }
}

/// What the method of a request means for the framing of its response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MethodClass {
    /// `HEAD`: the response has no body.
    Head,
    /// `CONNECT`: a 2xx response starts a tunnel.
    Connect,
    /// Any other method.
    #[default]
    Other,
}

impl MethodClass {
    /// The class of `method` (methods are case-sensitive).
    pub fn of(method: &[u8]) -> Self {
        match method {
            b"HEAD" => MethodClass::Head,
            b"CONNECT" => MethodClass::Connect,
            _ => MethodClass::Other,
        }
    }
}

/// The `Transfer-Encoding` fields of a head, combined.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransferEncoding {
    /// At least one `Transfer-Encoding` field.
    pub present: bool,
    /// Number of codings listed.
    pub codings: u32,
    /// `chunked` is the last coding.
    pub chunked_last: bool,
    /// A coding other than chunked, gzip, deflate and compress (and their x- aliases).
    pub unknown: bool,
}

/// The tokens of the `Connection` fields that matter to a proxy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionTokens {
    /// `close`.
    pub close: bool,
    /// `keep-alive`.
    pub keep_alive: bool,
    /// `upgrade`.
    pub upgrade: bool,
}

/// What the fields of a head say about framing, persistence and a few request semantics,
/// gathered in one pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FieldSummary {
    /// The agreed value of all `Content-Length` fields.
    pub content_length: Option<u64>,
    /// The `Transfer-Encoding` fields.
    pub transfer_encoding: TransferEncoding,
    /// The `Connection` tokens.
    pub connection: ConnectionTokens,
    /// An `Upgrade` field is present.
    pub upgrade: bool,
    /// The value of the first `Host` field.
    pub host: Option<Span>,
    /// Number of `Host` fields.
    pub host_count: u32,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
}

fn is_known_coding(c: &[u8]) -> bool {
    ["gzip", "x-gzip", "deflate", "compress", "x-compress"]
        .iter()
        .any(|k| c.eq_ignore_ascii_case(k.as_bytes()))
}

fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Gathers the framing-relevant fields of `headers` (spans into `buf`).
pub fn summarize(headers: &[Header], buf: &[u8]) -> Result<FieldSummary, FramingError> {
    let mut s = FieldSummary::default();
    let mut chunked_seen = false;
    for h in headers {
        let name = h.name.of(buf);
        let value = h.value.of(buf);
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => {
                s.host_count += 1;
                s.host.get_or_insert(h.value);
            }
            6 if name.eq_ignore_ascii_case(b"expect") => {
                s.expect_continue |= trim_ows(value).eq_ignore_ascii_case(b"100-continue");
            }
            7 if name.eq_ignore_ascii_case(b"upgrade") => s.upgrade = true,
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for t in list_elements(value) {
                    let c = &mut s.connection;
                    c.close |= t.eq_ignore_ascii_case(b"close");
                    c.keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
                    c.upgrade |= t.eq_ignore_ascii_case(b"upgrade");
                }
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                let mut any = false;
                for v in list_elements(value) {
                    any = true;
                    let n = parse_length(v).ok_or(FramingError::BadContentLength)?;
                    match s.content_length {
                        Some(m) if m != n => return Err(FramingError::ConflictingContentLength),
                        _ => s.content_length = Some(n),
                    }
                }
                if !any {
                    return Err(FramingError::BadContentLength);
                }
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                let te = &mut s.transfer_encoding;
                te.present = true;
                for coding in list_elements(value) {
                    let name = trim_ows(coding.split(|&b| b == b';').next().unwrap_or_default());
                    te.codings += 1;
                    te.chunked_last = false;
                    if name.eq_ignore_ascii_case(b"chunked") {
                        if chunked_seen {
                            return Err(FramingError::RepeatedChunked);
                        }
                        chunked_seen = true;
                        te.chunked_last = true;
                    } else if !is_known_coding(name) {
                        te.unknown = true;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(s)
}

impl FieldSummary {
    /// True when a `Transfer-Encoding` frames the body; refuses it in HTTP/1.0 and next to
    /// a `Content-Length`, where two parsers could disagree on the body's end.
    fn has_transfer_encoding(&self, version: Version) -> Result<bool, FramingError> {
        if !self.transfer_encoding.present {
            return Ok(false);
        }
        if version == Version::Http10 {
            return Err(FramingError::TransferEncodingInHttp10);
        }
        if self.content_length.is_some() {
            return Err(FramingError::TransferEncodingWithContentLength);
        }
        Ok(true)
    }

    /// The framing of a request body.
    pub fn request_framing(&self, version: Version) -> Result<BodyFraming, FramingError> {
        let te = &self.transfer_encoding;
        if self.has_transfer_encoding(version)? {
            if te.codings == 0 {
                return Err(FramingError::BadTransferEncoding);
            }
            if te.unknown {
                return Err(FramingError::UnsupportedTransferCoding);
            }
            if !te.chunked_last {
                return Err(FramingError::ChunkedNotLast);
            }
            return Ok(BodyFraming::Chunked);
        }
        Ok(match self.content_length {
            Some(0) | None => BodyFraming::None,
            Some(n) => BodyFraming::Length(n),
        })
    }

    /// The framing of a response body with `status`, answering a request of `method`.
    pub fn response_framing(
        &self,
        version: Version,
        status: u16,
        method: MethodClass,
    ) -> Result<BodyFraming, FramingError> {
        if status == 101 {
            return Ok(BodyFraming::Tunnel);
        }
        if method == MethodClass::Connect && (200..300).contains(&status) {
            return Ok(BodyFraming::Tunnel);
        }
        if method == MethodClass::Head || status < 200 || status == 204 || status == 304 {
            return Ok(BodyFraming::None);
        }
        if self.has_transfer_encoding(version)? {
            return Ok(if self.transfer_encoding.chunked_last {
                BodyFraming::Chunked
            } else {
                BodyFraming::UntilClose
            });
        }
        Ok(match self.content_length {
            Some(0) => BodyFraming::None,
            Some(n) => BodyFraming::Length(n),
            None => BodyFraming::UntilClose,
        })
    }

    /// True when the connection may carry another message after this one.
    pub fn keep_alive(&self, version: Version) -> bool {
        !self.connection.close && (version == Version::Http11 || self.connection.keep_alive)
    }

    /// True for a request that asks to switch protocols (`Upgrade` and
    /// `Connection: upgrade`, HTTP/1.1 only).
    pub fn wants_upgrade(&self, version: Version) -> bool {
        version == Version::Http11 && self.upgrade && self.connection.upgrade
    }
}

#[cfg(test)]
mod tests {
    use super::super::{parse_request, Limits};
    use super::*;

    fn summary(fields: &str) -> Result<FieldSummary, FramingError> {
        let s = format!("POST / HTTP/1.1\r\n{fields}\r\n");
        let h = parse_request(s.as_bytes(), Limits::default())
            .unwrap()
            .unwrap();
        summarize(&h.headers, s.as_bytes())
    }

    fn request(fields: &str) -> Result<BodyFraming, FramingError> {
        summary(fields)?.request_framing(Version::Http11)
    }

    #[test]
    fn request_bodies() {
        assert_eq!(request(""), Ok(BodyFraming::None));
        assert_eq!(request("Content-Length: 0\r\n"), Ok(BodyFraming::None));
        assert_eq!(
            request("content-length: 12\r\n"),
            Ok(BodyFraming::Length(12))
        );
        assert_eq!(
            request("Content-Length: 5, 5\r\nContent-Length: 5\r\n"),
            Ok(BodyFraming::Length(5))
        );
        assert_eq!(
            request("Transfer-Encoding: gzip, chunked\r\n"),
            Ok(BodyFraming::Chunked)
        );
        assert_eq!(
            request("Transfer-Encoding: gzip\r\nTransfer-Encoding: Chunked\r\n"),
            Ok(BodyFraming::Chunked)
        );
    }

    #[test]
    fn request_framing_errors() {
        use FramingError::*;
        let cases = [
            (
                "Content-Length: 5\r\nContent-Length: 6\r\n",
                ConflictingContentLength,
            ),
            ("Content-Length: 5, 6\r\n", ConflictingContentLength),
            ("Content-Length: -5\r\n", BadContentLength),
            ("Content-Length: +5\r\n", BadContentLength),
            ("Content-Length: 0x5\r\n", BadContentLength),
            ("Content-Length:\r\n", BadContentLength),
            (
                "Content-Length: 99999999999999999999999\r\n",
                BadContentLength,
            ),
            (
                "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
                TransferEncodingWithContentLength,
            ),
            ("Transfer-Encoding: chunked, gzip\r\n", ChunkedNotLast),
            ("Transfer-Encoding: gzip\r\n", ChunkedNotLast),
            ("Transfer-Encoding: chunked, chunked\r\n", RepeatedChunked),
            (
                "Transfer-Encoding: foo, chunked\r\n",
                UnsupportedTransferCoding,
            ),
            ("Transfer-Encoding: identity\r\n", UnsupportedTransferCoding),
            ("Transfer-Encoding: ,\r\n", BadTransferEncoding),
        ];
        for (fields, e) in cases {
            assert_eq!(request(fields), Err(e), "{fields:?}");
        }
        assert_eq!(
            summary("Transfer-Encoding: chunked\r\n")
                .unwrap()
                .request_framing(Version::Http10),
            Err(TransferEncodingInHttp10)
        );
    }

    #[test]
    fn response_bodies() {
        let s = |f: &str| summary(f).unwrap();
        let v = Version::Http11;
        let none = s("");
        let cl = s("Content-Length: 3\r\n");
        let chunked = s("Transfer-Encoding: chunked\r\n");
        let other = MethodClass::Other;
        assert_eq!(
            none.response_framing(v, 200, other),
            Ok(BodyFraming::UntilClose)
        );
        assert_eq!(
            cl.response_framing(v, 200, other),
            Ok(BodyFraming::Length(3))
        );
        assert_eq!(
            chunked.response_framing(v, 500, other),
            Ok(BodyFraming::Chunked)
        );
        for status in [100, 103, 204, 304] {
            assert_eq!(cl.response_framing(v, status, other), Ok(BodyFraming::None));
        }
        assert_eq!(
            cl.response_framing(v, 200, MethodClass::Head),
            Ok(BodyFraming::None)
        );
        assert_eq!(
            none.response_framing(v, 200, MethodClass::Connect),
            Ok(BodyFraming::Tunnel)
        );
        assert_eq!(
            cl.response_framing(v, 407, MethodClass::Connect),
            Ok(BodyFraming::Length(3))
        );
        assert_eq!(
            none.response_framing(v, 101, other),
            Ok(BodyFraming::Tunnel)
        );
        assert_eq!(
            s("Transfer-Encoding: chunked, gzip\r\n").response_framing(v, 200, other),
            Ok(BodyFraming::UntilClose)
        );
        assert_eq!(
            s("Transfer-Encoding: chunked\r\nContent-Length: 3\r\n")
                .response_framing(v, 200, other),
            Err(FramingError::TransferEncodingWithContentLength)
        );
    }

    #[test]
    fn persistence_and_semantics() {
        let s = summary("Connection: Keep-Alive, Upgrade\r\nUpgrade: websocket\r\nHost: a\r\nExpect: 100-Continue\r\n").unwrap();
        assert!(s.keep_alive(Version::Http10));
        assert!(s.wants_upgrade(Version::Http11));
        assert!(!s.wants_upgrade(Version::Http10));
        assert!(s.expect_continue);
        assert_eq!(s.host_count, 1);
        assert!(!summary("").unwrap().keep_alive(Version::Http10));
        assert!(!summary("Connection: close\r\n")
            .unwrap()
            .keep_alive(Version::Http11));
        assert!(summary("").unwrap().keep_alive(Version::Http11));
    }
}
