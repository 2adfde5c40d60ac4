//! An incremental scanner of chunked bodies (RFC 9112 §7.1). It is fed the body bytes as
//! they arrive, in pieces of any size, and reports where the body ends. It keeps only a
//! few counters, so a body is never buffered: chunk data is skipped in bulk.

use super::{is_field_byte, is_tchar, Limits};

/// A chunked body that is not well formed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChunkedError {
    /// A chunk-size line without hex digits, with an overflowing size or stray bytes.
    #[error("malformed chunk size line")]
    BadChunkSize,
    /// A chunk-size line longer than the limit.
    #[error("chunk size line is longer than the limit")]
    ChunkLineTooLong,
    /// Chunk data not followed by CRLF.
    #[error("chunk data not followed by CRLF")]
    BadChunkEnd,
    /// A malformed trailer field or final line.
    #[error("malformed trailer section")]
    BadTrailer,
    /// A trailer section larger than the limit.
    #[error("trailer section is larger than the limit")]
    TrailerTooLarge,
}

impl ChunkedError {
    /// Stable snake_case name, for metrics.
    pub fn reason(self) -> &'static str {
        match self {
            ChunkedError::BadChunkSize => "bad_chunk_size",
            ChunkedError::ChunkLineTooLong => "chunk_line_too_long",
            ChunkedError::BadChunkEnd => "bad_chunk_end",
            ChunkedError::BadTrailer => "bad_trailer",
            ChunkedError::TrailerTooLarge => "trailer_too_large",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size; `digits` read so far.
    Size { digits: u8 },
    /// Whitespace after the size, before `;` or CR.
    SizeSpace,
    /// A chunk extension, up to CR.
    Extension,
    /// The LF after a size line.
    SizeLf,
    /// `remaining` bytes of chunk data.
    Data { remaining: u64 },
    /// The CR after chunk data.
    DataCr,
    /// The LF after chunk data.
    DataLf,
    /// The start of a trailer line (or of the final CRLF).
    TrailerStart,
    /// A trailer field name.
    TrailerName,
    /// A trailer field value.
    TrailerValue,
    /// The LF of a trailer line.
    TrailerLf,
    /// The LF of the final empty line.
    FinalLf,
    /// The body is complete.
    Done,
}

/// Incremental chunked-body scanner. See the module documentation.
#[derive(Clone, Debug)]
pub struct ChunkedScanner {
    state: State,
    size: u64,
    line_len: usize,
    trailer_len: usize,
    max_line: usize,
    max_trailer: usize,
}

impl Default for ChunkedScanner {
    fn default() -> Self {
        Self::new(&Limits::default())
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

impl ChunkedScanner {
    /// A scanner at the start of a body, with the chunk-line and trailer limits of `limits`.
    pub fn new(limits: &Limits) -> Self {
        Self {
            state: State::Size { digits: 0 },
            size: 0,
            line_len: 0,
            trailer_len: 0,
            max_line: limits.max_chunk_line,
            max_trailer: limits.max_trailer_bytes,
        }
    }

    /// True once the final CRLF was seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Scans the next bytes of the body. Returns `Some(n)` when the body ends after the
    /// first `n` bytes of `input` (the rest belongs to the next message), or `None` when
    /// all of `input` belongs to the body and more is needed.
    pub fn scan(&mut self, input: &[u8]) -> Result<Option<usize>, ChunkedError> {
        let mut i = 0;
        while i < input.len() {
            if let State::Data { remaining } = self.state {
                let avail = (input.len() - i) as u64;
                let take = remaining.min(avail);
                i += take as usize;
                self.state = if take == remaining {
                    State::DataCr
                } else {
                    State::Data {
                        remaining: remaining - take,
                    }
                };
                continue;
            }
            let Some(&b) = input.get(i) else { break };
            i += 1;
            self.step(b)?;
            if self.state == State::Done {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    fn line_byte(&mut self) -> Result<(), ChunkedError> {
        self.line_len += 1;
        if self.line_len > self.max_line {
            return Err(ChunkedError::ChunkLineTooLong);
        }
        Ok(())
    }

    fn trailer_byte(&mut self) -> Result<(), ChunkedError> {
        self.trailer_len += 1;
        if self.trailer_len > self.max_trailer {
            return Err(ChunkedError::TrailerTooLarge);
        }
        Ok(())
    }

    fn step(&mut self, b: u8) -> Result<(), ChunkedError> {
        use ChunkedError::*;
        self.state = match self.state {
            State::Size { digits } => {
                self.line_byte()?;
                match (hex(b), b) {
                    (Some(d), _) => {
                        // Leading zeros are fine; 16 significant hex digits fill a u64.
                        if self.size >> 60 != 0 {
                            return Err(BadChunkSize);
                        }
                        self.size = self.size << 4 | u64::from(d);
                        State::Size {
                            digits: digits.saturating_add(1),
                        }
                    }
                    (None, _) if digits == 0 => return Err(BadChunkSize),
                    (None, b' ' | b'\t') => State::SizeSpace,
                    (None, b';') => State::Extension,
                    (None, b'\r') => State::SizeLf,
                    _ => return Err(BadChunkSize),
                }
            }
            State::SizeSpace => {
                self.line_byte()?;
                match b {
                    b' ' | b'\t' => State::SizeSpace,
                    b';' => State::Extension,
                    b'\r' => State::SizeLf,
                    _ => return Err(BadChunkSize),
                }
            }
            State::Extension => {
                self.line_byte()?;
                match b {
                    b'\r' => State::SizeLf,
                    b if is_field_byte(b) => State::Extension,
                    _ => return Err(BadChunkSize),
                }
            }
            State::SizeLf => {
                if b != b'\n' {
                    return Err(BadChunkSize);
                }
                self.line_len = 0;
                match self.size {
                    0 => State::TrailerStart,
                    n => State::Data { remaining: n },
                }
            }
            State::Data { remaining } if remaining > 1 => State::Data {
                remaining: remaining - 1,
            },
            State::Data { .. } => State::DataCr,
            State::DataCr if b == b'\r' => State::DataLf,
            State::DataLf if b == b'\n' => {
                self.size = 0;
                State::Size { digits: 0 }
            }
            State::DataCr | State::DataLf => return Err(BadChunkEnd),
            State::TrailerStart => {
                self.trailer_byte()?;
                match b {
                    b'\r' => State::FinalLf,
                    b if is_tchar(b) => State::TrailerName,
                    _ => return Err(BadTrailer),
                }
            }
            State::TrailerName => {
                self.trailer_byte()?;
                match b {
                    b':' => State::TrailerValue,
                    b if is_tchar(b) => State::TrailerName,
                    _ => return Err(BadTrailer),
                }
            }
            State::TrailerValue => {
                self.trailer_byte()?;
                match b {
                    b'\r' => State::TrailerLf,
                    b if is_field_byte(b) => State::TrailerValue,
                    _ => return Err(BadTrailer),
                }
            }
            State::TrailerLf => {
                self.trailer_byte()?;
                if b != b'\n' {
                    return Err(BadTrailer);
                }
                State::TrailerStart
            }
            State::FinalLf => {
                if b != b'\n' {
                    return Err(BadTrailer);
                }
                State::Done
            }
            State::Done => State::Done,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(body: &[u8]) -> Result<Option<usize>, ChunkedError> {
        ChunkedScanner::default().scan(body)
    }

    #[test]
    fn finds_the_end() {
        let body = b"5\r\nhello\r\n1a; ext=\"x y\"\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\nNEXT";
        assert_eq!(end(body), Ok(Some(body.len() - 4)));
        let trailers = b"3 ;a=b\r\nabc\r\n0\r\nX-Sum: 1\r\nY:\r\n\r\n";
        assert_eq!(end(trailers), Ok(Some(trailers.len())));
        assert_eq!(end(b"000\r\n\r\n"), Ok(Some(7)));
        assert_eq!(end(b"5\r\nhel"), Ok(None));
    }

    #[test]
    fn byte_by_byte() {
        let body = b"4\r\nwiki\r\n5;x\r\npedia\r\n0\r\nT: v\r\n\r\n";
        let mut s = ChunkedScanner::default();
        for (i, b) in body.iter().enumerate() {
            let r = s.scan(std::slice::from_ref(b)).unwrap();
            if i + 1 == body.len() {
                assert_eq!(r, Some(1));
                assert!(s.is_done());
            } else {
                assert_eq!(r, None, "{i}");
            }
        }
    }

    #[test]
    fn errors() {
        use ChunkedError::*;
        let cases: [(&[u8], ChunkedError); 10] = [
            (b"\r\n", BadChunkSize),
            (b"x\r\n", BadChunkSize),
            (b"-1\r\n", BadChunkSize),
            (b"5\n", BadChunkSize),
            (b"11111111111111111\r\n", BadChunkSize),
            (b"5\r\nhelloX", BadChunkEnd),
            (b"5\r\nhello\rX", BadChunkEnd),
            (b"0\r\nbad name: v\r\n\r\n", BadTrailer),
            (b"0\r\nX: v\n", BadTrailer),
            (b"0\r\n\rX", BadTrailer),
        ];
        for (body, e) in cases {
            assert_eq!(end(body), Err(e), "{:?}", String::from_utf8_lossy(body));
        }
        assert_eq!(end(b"ffffffffffffffff\r\n"), Ok(None));
        let limits = Limits {
            max_chunk_line: 8,
            max_trailer_bytes: 8,
            ..Limits::default()
        };
        assert_eq!(
            ChunkedScanner::new(&limits).scan(b"5;abcdefgh\r\n"),
            Err(ChunkLineTooLong)
        );
        assert_eq!(
            ChunkedScanner::new(&limits).scan(b"0\r\nX: 123456\r\n\r\n"),
            Err(TrailerTooLarge)
        );
    }
}
