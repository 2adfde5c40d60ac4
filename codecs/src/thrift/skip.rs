//! Walking a message body to find where it ends, without decoding or allocating.
//!
//! The walker keeps an explicit stack of fixed depth instead of recursing, and advances
//! one token (a field header with its scalar value, a container header, ...) at a time, so
//! a walk that ran out of input resumes where it stopped once more bytes arrive.

use super::cursor::Cursor;
use super::{Error, Protocol, TType};

/// How deep structs and containers may nest inside one message body (the body counts).
pub const MAX_DEPTH: usize = 64;

#[derive(Clone, Copy, Debug, Default)]
enum Level {
    /// Unused slot.
    #[default]
    Empty,
    /// Inside a struct; the compact protocol's field ids are deltas from the last one.
    Struct { last_fid: i16 },
    /// Inside a list or set (`key == value`) or a map (`left` counts keys and values,
    /// keys when it is even).
    Items { left: u64, key: TType, value: TType },
}

/// Finds the end of one value (normally a message body struct) in a buffer that may still
/// be growing. Create it with [`Walker::new`], call [`Walker::walk`] with the buffer each
/// time more bytes have arrived, until it returns the end.
#[derive(Clone, Debug)]
pub struct Walker {
    protocol: Protocol,
    root: TType,
    started: bool,
    pos: usize,
    depth: usize,
    stack: [Level; MAX_DEPTH],
}

enum Step {
    Done,
    Continue,
}

impl Walker {
    /// A walker for one value of type `root` starting at `start`.
    pub fn new(protocol: Protocol, root: TType, start: usize) -> Self {
        Self {
            protocol,
            root,
            started: false,
            pos: start,
            depth: 0,
            stack: [Level::Empty; MAX_DEPTH],
        }
    }

    /// Starts over with a new value, reusing the stack.
    pub fn reset(&mut self, protocol: Protocol, root: TType, start: usize) {
        self.protocol = protocol;
        self.root = root;
        self.started = false;
        self.pos = start;
        self.depth = 0;
    }

    /// How far the walk has got: every byte before this position belongs to the value.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Walks on through `buf` (the same buffer as before, possibly longer) and returns the
    /// position just past the value.
    ///
    /// [`Error::Incomplete`] means the value goes on past the end of `buf`: call again
    /// with more bytes. Any other error is final.
    pub fn walk(&mut self, buf: &[u8]) -> Result<usize, Error> {
        loop {
            match self.step(buf)? {
                Step::Done => return Ok(self.pos),
                Step::Continue => {}
            }
        }
    }

    /// Reads one token; changes nothing unless the whole token is in `buf`.
    fn step(&mut self, buf: &[u8]) -> Result<Step, Error> {
        let mut c = Cursor::new(buf, self.pos);
        let compact = self.protocol == Protocol::Compact;
        // What happens to the innermost level once the token has been read.
        let mut update = None;
        let ty = match self.depth.checked_sub(1).and_then(|i| self.stack.get(i)) {
            None if self.started => return Ok(Step::Done),
            None => self.root,
            Some(Level::Empty) => return Err(Error::BadType(0)),
            Some(&Level::Struct { last_fid }) => {
                let b = c.u8()?;
                let code = if compact { b & 0x0f } else { b };
                if code == 0 {
                    self.pos = c.pos;
                    self.depth -= 1;
                    return Ok(Step::Continue);
                }
                if !compact {
                    c.skip(2)?;
                    TType::from_binary(code).ok_or(Error::BadType(code))?
                } else {
                    let fid = match b >> 4 {
                        0 => zigzag(c.varint(3)?) as i16,
                        delta => last_fid.wrapping_add(i16::from(delta)),
                    };
                    update = Some(Level::Struct { last_fid: fid });
                    if code == 1 || code == 2 {
                        // A bool field carries its value in the type nibble.
                        self.commit(c.pos, update);
                        return Ok(Step::Continue);
                    }
                    TType::from_compact(code).ok_or(Error::BadType(code))?
                }
            }
            Some(&Level::Items { left, key, value }) => {
                if left == 0 {
                    self.pos = c.pos;
                    self.depth -= 1;
                    return Ok(Step::Continue);
                }
                update = Some(Level::Items {
                    left: left - 1,
                    key,
                    value,
                });
                if left % 2 == 0 {
                    key
                } else {
                    value
                }
            }
        };
        let push = self.value(&mut c, ty)?;
        self.commit(c.pos, update);
        if let Some(level) = push {
            let slot = self
                .stack
                .get_mut(self.depth)
                .ok_or(Error::TooDeep { limit: MAX_DEPTH })?;
            *slot = level;
            self.depth += 1;
        }
        Ok(Step::Continue)
    }

    fn commit(&mut self, pos: usize, update: Option<Level>) {
        self.pos = pos;
        self.started = true;
        if let (Some(level), Some(i)) = (update, self.depth.checked_sub(1)) {
            if let Some(slot) = self.stack.get_mut(i) {
                *slot = level;
            }
        }
    }

    /// Reads a scalar value, or the header of a struct or container (returned as the
    /// level to enter).
    fn value(&self, c: &mut Cursor<'_>, ty: TType) -> Result<Option<Level>, Error> {
        if self.depth >= MAX_DEPTH
            && matches!(ty, TType::Struct | TType::List | TType::Set | TType::Map)
        {
            return Err(Error::TooDeep { limit: MAX_DEPTH });
        }
        let compact = self.protocol == Protocol::Compact;
        match ty {
            TType::Bool | TType::Byte => c.skip(1)?,
            TType::Double => c.skip(8)?,
            TType::Uuid => c.skip(16)?,
            TType::I16 if compact => c.skip_varint(3)?,
            TType::I32 if compact => c.skip_varint(5)?,
            TType::I64 if compact => c.skip_varint(10)?,
            TType::I16 => c.skip(2)?,
            TType::I32 => c.skip(4)?,
            TType::I64 => c.skip(8)?,
            TType::Binary => {
                let len = if compact {
                    c.size("string")?
                } else {
                    c.binary_size("string")?
                };
                c.skip(len)?;
            }
            TType::Struct => return Ok(Some(Level::Struct { last_fid: 0 })),
            TType::List | TType::Set => {
                let (elem, n) = if compact {
                    let b = c.u8()?;
                    let n = match b >> 4 {
                        15 => c.size("list")?,
                        n => usize::from(n),
                    };
                    (element(b & 0x0f, n, TType::from_compact)?, n)
                } else {
                    let code = c.u8()?;
                    let n = c.binary_size("list")?;
                    (element(code, n, TType::from_binary)?, n)
                };
                return Ok(Some(Level::Items {
                    left: n as u64,
                    key: elem,
                    value: elem,
                }));
            }
            TType::Map => {
                let (key, value, n) = if compact {
                    let n = c.size("map")?;
                    // An empty map is a single zero byte: no type byte follows.
                    let types = if n == 0 { 0 } else { c.u8()? };
                    (
                        element(types >> 4, n, TType::from_compact)?,
                        element(types & 0x0f, n, TType::from_compact)?,
                        n,
                    )
                } else {
                    let k = c.u8()?;
                    let v = c.u8()?;
                    let n = c.binary_size("map")?;
                    (
                        element(k, n, TType::from_binary)?,
                        element(v, n, TType::from_binary)?,
                        n,
                    )
                };
                return Ok(Some(Level::Items {
                    left: n as u64 * 2,
                    key,
                    value,
                }));
            }
        }
        Ok(None)
    }
}

/// The element type of a container; any code is accepted for an empty one.
fn element(code: u8, len: usize, from: fn(u8) -> Option<TType>) -> Result<TType, Error> {
    match from(code) {
        Some(t) => Ok(t),
        None if len == 0 => Ok(TType::Bool),
        None => Err(Error::BadType(code)),
    }
}

fn zigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// The end of the message body struct starting at `start` in the complete buffer `buf`.
pub fn skip_message_body(protocol: Protocol, buf: &[u8], start: usize) -> Result<usize, Error> {
    Walker::new(protocol, TType::Struct, start).walk(buf)
}
