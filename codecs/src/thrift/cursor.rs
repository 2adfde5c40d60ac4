//! A bounds-checked reader over a byte slice: every read reports how many bytes it would
//! need instead of panicking.

use super::Error;

/// Reads from `buf` starting at `pos`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pub(crate) pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8], pos: usize) -> Self {
        Self { buf, pos }
    }

    /// The next `n` bytes, consumed.
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(Error::Incomplete { needed: usize::MAX })?;
        match self.buf.get(self.pos..end) {
            Some(b) => {
                self.pos = end;
                Ok(b)
            }
            None => Err(Error::Incomplete { needed: end }),
        }
    }

    pub(crate) fn skip(&mut self, n: usize) -> Result<(), Error> {
        self.take(n).map(|_| ())
    }

    pub(crate) fn u8(&mut self) -> Result<u8, Error> {
        match self.buf.get(self.pos) {
            Some(b) => {
                self.pos += 1;
                Ok(*b)
            }
            None => Err(Error::Incomplete {
                needed: self.pos.saturating_add(1),
            }),
        }
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u16(&mut self) -> Result<u16, Error> {
        self.array().map(u16::from_be_bytes)
    }

    pub(crate) fn i32(&mut self) -> Result<i32, Error> {
        self.array().map(i32::from_be_bytes)
    }

    /// An unsigned LEB128 varint of at most `max_bytes` bytes.
    pub(crate) fn varint(&mut self, max_bytes: usize) -> Result<u64, Error> {
        let mut value = 0u64;
        for i in 0..max_bytes {
            let b = self.u8()?;
            value |= u64::from(b & 0x7f) << (7 * i as u32).min(63);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Error::BadVarint)
    }

    /// Steps over a varint of at most `max_bytes` bytes.
    pub(crate) fn skip_varint(&mut self, max_bytes: usize) -> Result<(), Error> {
        self.varint(max_bytes).map(|_| ())
    }

    /// A varint that must fit in 32 bits (at most 5 bytes).
    pub(crate) fn varint32(&mut self) -> Result<u32, Error> {
        u32::try_from(self.varint(5)?).map_err(|_| Error::BadVarint)
    }

    /// A compact-protocol length or count: a varint in `0..=i32::MAX`.
    pub(crate) fn size(&mut self, what: &'static str) -> Result<usize, Error> {
        let v = self.varint32()?;
        if v > i32::MAX as u32 {
            return Err(Error::BadLength(what));
        }
        Ok(v as usize)
    }

    /// A binary-protocol length or count: a non-negative big-endian `i32`.
    pub(crate) fn binary_size(&mut self, what: &'static str) -> Result<usize, Error> {
        usize::try_from(self.i32()?).map_err(|_| Error::BadLength(what))
    }
}
