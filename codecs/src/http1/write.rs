//! Writing heads: a start line, then field lines, then the empty line. Everything written
//! is checked, so a value taken from configuration or a script cannot split a line and
//! inject fields or a second message.

use bytes::BufMut;

use super::{all_field_bytes, is_token, Version};

/// A part of a head that cannot be written as given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// A method that is not a token.
    #[error("method is not a token")]
    BadMethod,
    /// A request target that is empty or holds whitespace or control bytes.
    #[error("request target is empty or holds whitespace or control characters")]
    BadTarget,
    /// A status code outside 100 to 999.
    #[error("status code out of range")]
    BadStatus,
    /// A reason phrase with control bytes.
    #[error("reason phrase holds control characters")]
    BadReason,
    /// A field name that is not a token.
    #[error("field name is not a token")]
    BadHeaderName,
    /// A field value with CR, LF, NUL or another control byte.
    #[error("field value holds control characters")]
    BadHeaderValue,
}

fn is_target_byte(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0x80..=0xff)
}

/// Writes `method SP target SP version CRLF`.
pub fn write_request_line<B: BufMut>(
    out: &mut B,
    method: &[u8],
    target: &[u8],
    version: Version,
) -> Result<(), WriteError> {
    if !is_token(method) {
        return Err(WriteError::BadMethod);
    }
    if target.is_empty() || !target.iter().all(|&b| is_target_byte(b)) {
        return Err(WriteError::BadTarget);
    }
    out.put_slice(method);
    out.put_u8(b' ');
    out.put_slice(target);
    out.put_u8(b' ');
    out.put_slice(version.as_bytes());
    out.put_slice(b"\r\n");
    Ok(())
}

/// Writes `version SP code SP reason CRLF`.
pub fn write_status_line<B: BufMut>(
    out: &mut B,
    version: Version,
    code: u16,
    reason: &[u8],
) -> Result<(), WriteError> {
    if !(100..=999).contains(&code) {
        return Err(WriteError::BadStatus);
    }
    if !all_field_bytes(reason) {
        return Err(WriteError::BadReason);
    }
    out.put_slice(version.as_bytes());
    out.put_u8(b' ');
    // Three digits: code is 100..=999.
    out.put_slice(&[
        b'0' + (code / 100) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
    ]);
    out.put_u8(b' ');
    out.put_slice(reason);
    out.put_slice(b"\r\n");
    Ok(())
}

/// Writes `name: value CRLF`.
pub fn write_header<B: BufMut>(out: &mut B, name: &[u8], value: &[u8]) -> Result<(), WriteError> {
    if !is_token(name) {
        return Err(WriteError::BadHeaderName);
    }
    if !all_field_bytes(value) {
        return Err(WriteError::BadHeaderValue);
    }
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
    Ok(())
}

/// The start line of a head to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadStart<'a> {
    /// A request line.
    Request {
        /// The method.
        method: &'a [u8],
        /// The request target.
        target: &'a [u8],
        /// The version.
        version: Version,
    },
    /// A status line.
    Status {
        /// The version.
        version: Version,
        /// The status code.
        code: u16,
        /// The reason phrase.
        reason: &'a [u8],
    },
}

/// Writes a whole head: `start`, the fields of `headers` in order, and the empty line.
/// On error `out` may hold the part written before the bad item.
pub fn write_head<'a, B, I>(out: &mut B, start: HeadStart<'_>, headers: I) -> Result<(), WriteError>
where
    B: BufMut,
    I: IntoIterator<Item = (&'a [u8], &'a [u8])>,
{
    match start {
        HeadStart::Request {
            method,
            target,
            version,
        } => write_request_line(out, method, target, version)?,
        HeadStart::Status {
            version,
            code,
            reason,
        } => write_status_line(out, version, code, reason)?,
    }
    for (name, value) in headers {
        write_header(out, name, value)?;
    }
    out.put_slice(b"\r\n");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{parse_request, parse_response, Limits};
    use super::*;

    #[test]
    fn written_heads_parse_back() {
        let mut out = Vec::new();
        let start = HeadStart::Request {
            method: b"GET",
            target: b"/x?y",
            version: Version::Http11,
        };
        let fields: [(&[u8], &[u8]); 2] = [(b"Host", b"a"), (b"x-tier", b"batch job")];
        write_head(&mut out, start, fields).unwrap();
        assert_eq!(
            out,
            b"GET /x?y HTTP/1.1\r\nHost: a\r\nx-tier: batch job\r\n\r\n"
        );
        let h = parse_request(&out, Limits::default()).unwrap().unwrap();
        assert_eq!(h.headers.len(), 2);

        let mut out = Vec::new();
        write_status_line(&mut out, Version::Http10, 204, b"No Content").unwrap();
        out.extend_from_slice(b"\r\n");
        let h = parse_response(&out, Limits::default()).unwrap().unwrap();
        assert_eq!(h.start.code, 204);
    }

    #[test]
    fn injection_is_refused() {
        let mut out = Vec::new();
        assert_eq!(
            write_header(&mut out, b"a", b"b\r\nc: d"),
            Err(WriteError::BadHeaderValue)
        );
        assert_eq!(
            write_header(&mut out, b"a b", b"c"),
            Err(WriteError::BadHeaderName)
        );
        assert_eq!(
            write_request_line(&mut out, b"GET", b"/ HTTP/1.1\r\n", Version::Http11),
            Err(WriteError::BadTarget)
        );
        assert_eq!(
            write_request_line(&mut out, b"G T", b"/", Version::Http11),
            Err(WriteError::BadMethod)
        );
        assert_eq!(
            write_status_line(&mut out, Version::Http11, 42, b""),
            Err(WriteError::BadStatus)
        );
        assert!(out.is_empty());
    }
}
