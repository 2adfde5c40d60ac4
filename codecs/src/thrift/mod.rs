//! Apache Thrift on the wire: the binary protocol (strict and the old non-strict message
//! header), the compact protocol, and the framed, unframed and THeader transports.
//!
//! Nothing here decodes argument values. [`detect_transport`] and [`detect_protocol`]
//! tell the variants apart from the first bytes; [`parse_message_header`] reads a message's
//! name, type and sequence id and records where they are; [`parse_header_frame`] reads a
//! THeader frame's header section; a [`Walker`] finds where an unframed message ends
//! without allocating. [`Writer`] writes messages, [`HeaderPrefix`] a THeader header
//! section, and [`write_exception`] a `TApplicationException` reply in any variant.

mod cursor;
mod message;
mod skip;
mod transport;
mod write;

pub use message::{
    detect_protocol, parse_message_header, read_exception, ApplicationException, MessageHeader,
};
pub use skip::{skip_message_body, Walker, MAX_DEPTH};
pub use transport::{
    detect_transport, frame_len, parse_header_frame, HeaderFrame, InfoHeader, InfoHeaders,
    InfoKind, HEADER_FIXED_LEN, HEADER_MAGIC, MAX_HEADER_SECTION,
};
pub use write::{
    varint, write_exception, write_frame, write_varint, Exception, Framing, HeaderPrefix, Writer,
};

use thiserror::Error;

/// The high 16 bits of a strict binary message's first word.
pub const BINARY_VERSION_1: u32 = 0x8001_0000;
/// First byte of a compact message.
pub const COMPACT_PROTOCOL_ID: u8 = 0x82;
/// Compact protocol version (low five bits of the second byte).
pub const COMPACT_VERSION: u8 = 1;

/// A Thrift serialization.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// `TBinaryProtocol`: big-endian fixed-width integers.
    Binary,
    /// `TCompactProtocol`: varints, zigzag integers, packed field headers.
    Compact,
}

impl Protocol {
    /// The protocol id used in a THeader header section.
    pub fn header_id(self) -> u32 {
        match self {
            Protocol::Binary => 0,
            Protocol::Compact => 2,
        }
    }

    /// The protocol with THeader protocol id `id`, if it is one of these.
    pub fn from_header_id(id: u32) -> Option<Self> {
        match id {
            0 => Some(Protocol::Binary),
            2 => Some(Protocol::Compact),
            _ => None,
        }
    }
}

/// How messages are delimited on a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// A 4-byte big-endian length, then the message (`TFramedTransport`).
    Framed,
    /// The message alone (`TBufferedTransport`); its end is found by walking it.
    Unframed,
    /// A THeader frame: length, magic, flags, sequence id, header section, message.
    Header,
}

/// The type of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// A request that expects a reply.
    Call,
    /// A reply (a result struct, which may hold a declared exception).
    Reply,
    /// An undeclared failure: the body is a `TApplicationException`.
    Exception,
    /// A request that expects no reply.
    Oneway,
}

impl MessageType {
    /// The wire value (1 to 4).
    pub fn code(self) -> u8 {
        match self {
            MessageType::Call => 1,
            MessageType::Reply => 2,
            MessageType::Exception => 3,
            MessageType::Oneway => 4,
        }
    }

    /// The type with wire value `code`.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(MessageType::Call),
            2 => Some(MessageType::Reply),
            3 => Some(MessageType::Exception),
            4 => Some(MessageType::Oneway),
            _ => None,
        }
    }

    /// Lower-case name: `call`, `reply`, `exception` or `oneway`.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Call => "call",
            MessageType::Reply => "reply",
            MessageType::Exception => "exception",
            MessageType::Oneway => "oneway",
        }
    }
}

/// The type of a value; the discriminants are the binary protocol's type codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TType {
    /// `bool`.
    Bool = 2,
    /// `byte` (`i8`).
    Byte = 3,
    /// `double`.
    Double = 4,
    /// `i16`.
    I16 = 6,
    /// `i32`.
    I32 = 8,
    /// `i64`.
    I64 = 10,
    /// `string` and `binary`.
    Binary = 11,
    /// A struct, union or exception.
    Struct = 12,
    /// `map`.
    Map = 13,
    /// `set`.
    Set = 14,
    /// `list`.
    List = 15,
    /// `uuid` (16 bytes).
    Uuid = 16,
}

impl TType {
    /// The type with binary protocol code `code`.
    pub fn from_binary(code: u8) -> Option<Self> {
        Some(match code {
            2 => TType::Bool,
            3 => TType::Byte,
            4 => TType::Double,
            6 => TType::I16,
            8 => TType::I32,
            10 => TType::I64,
            11 => TType::Binary,
            12 => TType::Struct,
            13 => TType::Map,
            14 => TType::Set,
            15 => TType::List,
            16 => TType::Uuid,
            _ => return None,
        })
    }

    /// The type with compact protocol code `code` (1 and 2 are both `bool`).
    pub fn from_compact(code: u8) -> Option<Self> {
        Some(match code {
            1 | 2 => TType::Bool,
            3 => TType::Byte,
            4 => TType::I16,
            5 => TType::I32,
            6 => TType::I64,
            7 => TType::Double,
            8 => TType::Binary,
            9 => TType::List,
            10 => TType::Set,
            11 => TType::Map,
            12 => TType::Struct,
            13 => TType::Uuid,
            _ => return None,
        })
    }

    /// The compact protocol code (`bool` as 1, the code used for element types).
    pub fn compact(self) -> u8 {
        match self {
            TType::Bool => 1,
            TType::Byte => 3,
            TType::I16 => 4,
            TType::I32 => 5,
            TType::I64 => 6,
            TType::Double => 7,
            TType::Binary => 8,
            TType::List => 9,
            TType::Set => 10,
            TType::Map => 11,
            TType::Struct => 12,
            TType::Uuid => 13,
        }
    }
}

/// `TApplicationException` types.
pub mod exception_type {
    /// Unknown.
    pub const UNKNOWN: i32 = 0;
    /// The server has no such method.
    pub const UNKNOWN_METHOD: i32 = 1;
    /// The message type was not expected.
    pub const INVALID_MESSAGE_TYPE: i32 = 2;
    /// The reply names another method.
    pub const WRONG_METHOD_NAME: i32 = 3;
    /// The reply's sequence id does not match.
    pub const BAD_SEQUENCE_ID: i32 = 4;
    /// The result struct had no result.
    pub const MISSING_RESULT: i32 = 5;
    /// The server failed.
    pub const INTERNAL_ERROR: i32 = 6;
    /// The message could not be read.
    pub const PROTOCOL_ERROR: i32 = 7;
    /// A THeader transform is not supported.
    pub const INVALID_TRANSFORM: i32 = 8;
    /// The protocol is not supported.
    pub const INVALID_PROTOCOL: i32 = 9;
    /// The client type is not supported.
    pub const UNSUPPORTED_CLIENT_TYPE: i32 = 10;
}

/// Why Thrift bytes could not be read or written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Error {
    /// The input ends before the item does; at least `needed` bytes (counted from the
    /// start of the input) are required. More bytes may make it readable.
    #[error("thrift input ended early: at least {needed} bytes are needed")]
    Incomplete {
        /// The least total input length that could hold the item.
        needed: usize,
    },
    /// The bytes are not a Thrift message of a known protocol version.
    #[error("not a thrift message (bad version bytes)")]
    BadVersion,
    /// The message type is not 1 to 4.
    #[error("thrift message type {0} is not call, reply, exception or oneway")]
    BadMessageType(u8),
    /// A field or element type code that names no value type.
    #[error("thrift type code {0} names no value type")]
    BadType(u8),
    /// A negative (or, in the compact protocol, over 2^31 - 1) length or count.
    #[error("thrift {0} has a negative or oversized length")]
    BadLength(&'static str),
    /// A varint is longer than its type allows, or its value does not fit.
    #[error("thrift varint is longer or larger than its type allows")]
    BadVarint,
    /// Structs and containers are nested deeper than the walker allows.
    #[error("thrift value is nested deeper than {limit} structs and containers")]
    TooDeep {
        /// The limit.
        limit: usize,
    },
    /// A frame length that is negative or too small for what the frame must hold.
    #[error("thrift frame length {0} is invalid")]
    BadFrameLength(i64),
    /// A THeader header section that is inconsistent.
    #[error("THeader: {0}")]
    BadHeader(&'static str),
    /// A THeader payload protocol other than binary and compact.
    #[error("THeader protocol id {0} is not supported")]
    UnsupportedProtocol(u32),
    /// A frame ends in the middle of the message it holds.
    #[error("thrift frame ends in the middle of its message")]
    Truncated,
    /// Something to write is larger than its length field can say.
    #[error("{0} is too large to encode")]
    TooLarge(&'static str),
}

impl Error {
    /// True when more input may make the bytes readable.
    pub fn is_incomplete(&self) -> bool {
        matches!(self, Error::Incomplete { .. })
    }

    /// The error for the same problem inside a complete frame, where running out of
    /// bytes means the frame is truncated.
    pub fn in_frame(self) -> Self {
        match self {
            Error::Incomplete { .. } => Error::Truncated,
            e => e,
        }
    }
}

#[cfg(test)]
mod tests;
