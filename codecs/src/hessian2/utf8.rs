//! The string body encoding: UTF-8 whose length is counted in UTF-16 code units, where
//! Java writes supplementary characters as two 3-byte surrogates (CESU-8).

use super::Error;

/// True when every byte of `b` is ASCII, OR-ing the bytes eight at a time with the last
/// eight overlapping the ones before: `<[u8]>::is_ascii` checks the bytes after its last
/// whole word one by one, a large part of the check for the 4 to 40 byte names and
/// values of an RPC envelope.
#[inline]
pub(crate) fn is_ascii(b: &[u8]) -> bool {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    if let Some(last) = b.last_chunk::<8>() {
        let (words, _) = b.as_chunks::<8>();
        let all = words.iter().fold(u64::from_ne_bytes(*last), |acc, w| {
            acc | u64::from_ne_bytes(*w)
        });
        return all & HIGH == 0;
    }
    match (b.first_chunk::<4>(), b.last_chunk::<4>()) {
        (Some(first), Some(last)) => {
            (u32::from_ne_bytes(*first) | u32::from_ne_bytes(*last)) & 0x8080_8080 == 0
        }
        _ => b.iter().fold(0, |acc, &c| acc | c) < 0x80,
    }
}

/// Byte length of `units` UTF-16 code units starting at `buf[start]`, judged by lead
/// bytes only (continuation bytes are checked when the string is decoded).
pub(crate) fn span(buf: &[u8], start: usize, units: usize) -> Result<usize, Error> {
    let rest = buf.get(start..).ok_or(Error::Eof)?;
    if let Some(prefix) = rest.get(..units) {
        if is_ascii(prefix) {
            return Ok(units);
        }
    }
    let mut i = 0usize;
    let mut counted = 0usize;
    while counted < units {
        let b = *rest.get(i).ok_or(Error::Eof)?;
        let (len, width) = match b {
            0x00..=0x7f => (1, 1),
            0xc0..=0xdf => (2, 1),
            0xe0..=0xef => (3, 1),
            // A supplementary character in real UTF-8 counts as two code units.
            0xf0..=0xf7 => (4, 2),
            _ => return Err(Error::InvalidUtf8 { pos: start + i }),
        };
        counted += width;
        i += len;
    }
    if counted > units {
        // The last character would split a surrogate pair across the length.
        return Err(Error::InvalidUtf8 { pos: start + i });
    }
    if i > rest.len() {
        return Err(Error::Eof);
    }
    Ok(i)
}

/// Appends the decoded `bytes` (found at `base` in the input) to `out`. `pending` holds a
/// high surrogate waiting for its low half, possibly from an earlier chunk.
pub(crate) fn decode_into(
    bytes: &[u8],
    base: usize,
    out: &mut String,
    pending: &mut Option<u32>,
) -> Result<(), Error> {
    if let Ok(s) = std::str::from_utf8(bytes) {
        if pending.take().is_some() {
            out.push(char::REPLACEMENT_CHARACTER);
        }
        out.push_str(s);
        return Ok(());
    }
    let bad = |i: usize| Error::InvalidUtf8 { pos: base + i };
    let cont = |i: usize| -> Result<u32, Error> {
        match bytes.get(i) {
            Some(&b) if b & 0xc0 == 0x80 => Ok(u32::from(b & 0x3f)),
            _ => Err(bad(i)),
        }
    };
    let mut i = 0;
    while let Some(&b0) = bytes.get(i) {
        let (cp, len) = match b0 {
            0x00..=0x7f => (u32::from(b0), 1),
            0xc0..=0xdf => ((u32::from(b0 & 0x1f) << 6) | cont(i + 1)?, 2),
            0xe0..=0xef => (
                (u32::from(b0 & 0x0f) << 12) | (cont(i + 1)? << 6) | cont(i + 2)?,
                3,
            ),
            0xf0..=0xf7 => (
                (u32::from(b0 & 0x07) << 18)
                    | (cont(i + 1)? << 12)
                    | (cont(i + 2)? << 6)
                    | cont(i + 3)?,
                4,
            ),
            _ => return Err(bad(i)),
        };
        match cp {
            0xd800..=0xdbff => {
                if pending.replace(cp).is_some() {
                    out.push(char::REPLACEMENT_CHARACTER);
                }
            }
            0xdc00..=0xdfff => match pending.take() {
                Some(high) => {
                    let c = 0x10000 + ((high - 0xd800) << 10) + (cp - 0xdc00);
                    out.push(char::from_u32(c).ok_or_else(|| bad(i))?);
                }
                None => out.push(char::REPLACEMENT_CHARACTER),
            },
            _ => {
                if pending.take().is_some() {
                    out.push(char::REPLACEMENT_CHARACTER);
                }
                out.push(char::from_u32(cp).ok_or_else(|| bad(i))?);
            }
        }
        i += len;
    }
    Ok(())
}

/// Writes `s` as Java does: supplementary characters as two 3-byte surrogates.
pub(crate) fn encode_cesu8(s: &str, mut put: impl FnMut(&[u8])) {
    let bytes = s.as_bytes();
    let mut from = 0;
    for (i, c) in s.char_indices() {
        if c.len_utf8() == 4 {
            if let Some(run) = bytes.get(from..i) {
                put(run);
            }
            let mut units = [0u16; 2];
            for &u in c.encode_utf16(&mut units).iter() {
                // Surrogates are 0xd800..=0xdfff: always the 3-byte form.
                put(&[
                    0xe0 | (u >> 12) as u8,
                    0x80 | ((u >> 6) & 0x3f) as u8,
                    0x80 | (u & 0x3f) as u8,
                ]);
            }
            from = i + 4;
        }
    }
    if let Some(run) = bytes.get(from..) {
        put(run);
    }
}
