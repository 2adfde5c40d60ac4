use thiserror::Error;

/// Why a Hessian 2.0 value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    /// The input ended in the middle of a value.
    #[error("hessian2 input ended in the middle of a value")]
    Eof,
    /// A byte that cannot start what was expected here.
    #[error("hessian2: unexpected tag 0x{tag:02x} at byte {pos}, expected {expected}")]
    UnexpectedTag {
        tag: u8,
        pos: usize,
        expected: &'static str,
    },
    /// Lists, maps and objects are nested deeper than the decoder allows.
    #[error("hessian2 value is nested deeper than {limit} lists, maps or objects")]
    TooDeep { limit: usize },
    /// A string's bytes are not UTF-8 (or CESU-8).
    #[error("hessian2 string at byte {pos} is not valid UTF-8")]
    InvalidUtf8 { pos: usize },
    /// A `Q` back-reference to a list, map or object that has not been read.
    #[error("hessian2 back-reference {index} points to no earlier list, map or object")]
    InvalidRef { index: u32 },
    /// A type reference to a type name that has not been defined.
    #[error("hessian2 type reference {index} points to no earlier type name")]
    InvalidTypeRef { index: u32 },
    /// An object refers to a class definition that has not been read.
    #[error("hessian2 object refers to undefined class definition {index}")]
    InvalidClassRef { index: u32 },
    /// A negative length or count.
    #[error("hessian2 {what} at byte {pos} has negative length {len}")]
    NegativeLength {
        what: &'static str,
        len: i32,
        pos: usize,
    },
    /// A length or count larger than the input that is left could hold.
    #[error("hessian2 {what} claims {len} entries but only {limit} bytes are left")]
    TooLarge {
        what: &'static str,
        len: u64,
        limit: u64,
    },
}
