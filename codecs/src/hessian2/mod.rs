//! Hessian 2.0 serialization, as spoken by Dubbo2 and the Java/JavaScript Hessian libraries.
//! [`Decoder`] reads values (or skips them without allocating) from a borrowed buffer;
//! [`Encoder`] writes them in the most compact form, the same bytes Java Hessian writes.
//!
//! Strings are measured in UTF-16 code units on the wire. Characters outside the BMP are
//! written as two 3-byte surrogates (CESU-8), as Java does; the decoder accepts those and
//! real 4-byte UTF-8. A surrogate without its partner decodes to U+FFFD.
//!
//! Tag `0x5f` carries a double as a 32-bit count of thousandths (`0.001 * n`), which is
//! what the Java and JavaScript implementations write, not a 32-bit float.

mod decode;
mod encode;
mod error;
mod utf8;
mod value;

pub use decode::{Decoder, ListStart, MapStart};
pub use encode::{i32_len, write_str, Encoder, Sink};
pub use error::Error;
pub use value::Value;

/// Default limit on nested lists, maps and objects for a [`Decoder`].
pub const DEFAULT_MAX_DEPTH: usize = 128;

/// Wire tags that have a single meaning. Ranges (compact ints, short strings, ...) are
/// matched where they are used.
pub(crate) mod tag {
    pub const BINARY_CHUNK: u8 = b'A';
    pub const BINARY_FINAL: u8 = b'B';
    pub const CLASS_DEF: u8 = b'C';
    pub const DOUBLE: u8 = b'D';
    pub const FALSE: u8 = b'F';
    pub const UNTYPED_MAP: u8 = b'H';
    pub const INT: u8 = b'I';
    pub const DATE_MILLIS: u8 = 0x4a;
    pub const DATE_MINUTES: u8 = 0x4b;
    pub const LONG: u8 = b'L';
    pub const TYPED_MAP: u8 = b'M';
    pub const NULL: u8 = b'N';
    pub const OBJECT: u8 = b'O';
    pub const REF: u8 = b'Q';
    pub const STRING_CHUNK: u8 = b'R';
    pub const STRING_FINAL: u8 = b'S';
    pub const TRUE: u8 = b'T';
    pub const VAR_TYPED_LIST: u8 = b'U';
    pub const FIXED_TYPED_LIST: u8 = b'V';
    pub const VAR_UNTYPED_LIST: u8 = b'W';
    pub const FIXED_UNTYPED_LIST: u8 = b'X';
    pub const LONG_INT32: u8 = b'Y';
    pub const END: u8 = b'Z';
    pub const DOUBLE_ZERO: u8 = 0x5b;
    pub const DOUBLE_ONE: u8 = 0x5c;
    pub const DOUBLE_BYTE: u8 = 0x5d;
    pub const DOUBLE_SHORT: u8 = 0x5e;
    pub const DOUBLE_MILLIS: u8 = 0x5f;
    pub const OBJECT_COMPACT: u8 = 0x60;
    pub const TYPED_LIST_COMPACT: u8 = 0x70;
    pub const UNTYPED_LIST_COMPACT: u8 = 0x78;
    pub const STRING_MEDIUM: u8 = 0x30;
    pub const BINARY_SHORT: u8 = 0x20;
    pub const BINARY_MEDIUM: u8 = 0x34;
    pub const INT_ZERO: u8 = 0x90;
    pub const INT_BYTE_ZERO: u8 = 0xc8;
    pub const INT_SHORT_ZERO: u8 = 0xd4;
    pub const LONG_ZERO: u8 = 0xe0;
    pub const LONG_BYTE_ZERO: u8 = 0xf8;
    pub const LONG_SHORT_ZERO: u8 = 0x3c;
}

#[cfg(test)]
mod tests;
