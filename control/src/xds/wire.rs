//! Conversions of protobuf scalars and well-known types shared by encode and decode.

use std::time::Duration;

use envoy_types::pb::google::protobuf::{self as wkt, value::Kind};

/// Largest duration a `google.protobuf.Duration` may hold, in seconds (10,000 years).
pub(crate) const MAX_DURATION_SECONDS: u64 = 315_576_000_000;

/// A `google.protobuf.Duration`, or why it cannot hold `d`.
pub(crate) fn duration(d: Duration) -> Result<wkt::Duration, String> {
    if d.as_secs() > MAX_DURATION_SECONDS {
        return Err(format!(
            "{d:?} is longer than a protobuf Duration can hold ({MAX_DURATION_SECONDS}s)"
        ));
    }
    Ok(wkt::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    })
}

/// The std duration of a `google.protobuf.Duration`, or why it is not one.
pub(crate) fn std_duration(d: &wkt::Duration) -> Result<Duration, String> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err("must not be negative".into());
    }
    if d.nanos >= 1_000_000_000 {
        return Err(format!("nanos {} out of range", d.nanos));
    }
    if d.seconds as u64 > MAX_DURATION_SECONDS {
        return Err(format!("longer than {MAX_DURATION_SECONDS}s"));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// A `google.protobuf.UInt32Value`.
pub(crate) fn u32_value(v: u32) -> wkt::UInt32Value {
    wkt::UInt32Value { value: v }
}

/// A `google.protobuf.UInt64Value`.
pub(crate) fn u64_value(v: u64) -> wkt::UInt64Value {
    wkt::UInt64Value { value: v }
}

/// A string `google.protobuf.Value`.
pub(crate) fn string_value(s: &str) -> wkt::Value {
    wkt::Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    }
}

/// A number `google.protobuf.Value`.
pub(crate) fn number_value(n: f64) -> wkt::Value {
    wkt::Value {
        kind: Some(Kind::NumberValue(n)),
    }
}

/// A boolean `google.protobuf.Value`.
pub(crate) fn bool_value(b: bool) -> wkt::Value {
    wkt::Value {
        kind: Some(Kind::BoolValue(b)),
    }
}

/// A list `google.protobuf.Value`.
pub(crate) fn list_value(values: Vec<wkt::Value>) -> wkt::Value {
    wkt::Value {
        kind: Some(Kind::ListValue(wkt::ListValue { values })),
    }
}

/// A struct `google.protobuf.Value`.
pub(crate) fn struct_value(s: wkt::Struct) -> wkt::Value {
    wkt::Value {
        kind: Some(Kind::StructValue(s)),
    }
}

/// Largest integer a protobuf `Value` number (an f64) holds exactly.
pub(crate) const MAX_EXACT_NUMBER: u64 = 1 << 53;

/// The string inside a `Value`.
pub(crate) fn as_str(v: &wkt::Value) -> Result<&str, String> {
    match &v.kind {
        Some(Kind::StringValue(s)) => Ok(s),
        _ => Err(format!("expected a string, found {}", describe(v))),
    }
}

/// The boolean inside a `Value`.
pub(crate) fn as_bool(v: &wkt::Value) -> Result<bool, String> {
    match &v.kind {
        Some(Kind::BoolValue(b)) => Ok(*b),
        _ => Err(format!("expected a boolean, found {}", describe(v))),
    }
}

/// The whole number inside a `Value`, at most `max`.
pub(crate) fn as_integer(v: &wkt::Value, max: u64) -> Result<u64, String> {
    match &v.kind {
        Some(Kind::NumberValue(n)) if n.is_finite() && n.fract() == 0.0 && *n >= 0.0 => {
            if *n > max.min(MAX_EXACT_NUMBER) as f64 {
                Err(format!("{n} is out of range (at most {max})"))
            } else {
                Ok(*n as u64)
            }
        }
        Some(Kind::NumberValue(n)) => Err(format!("{n} is not a whole non-negative number")),
        _ => Err(format!("expected a number, found {}", describe(v))),
    }
}

/// The list inside a `Value`.
pub(crate) fn as_list(v: &wkt::Value) -> Result<&[wkt::Value], String> {
    match &v.kind {
        Some(Kind::ListValue(l)) => Ok(&l.values),
        _ => Err(format!("expected a list, found {}", describe(v))),
    }
}

/// The struct inside a `Value`.
pub(crate) fn as_struct(v: &wkt::Value) -> Result<&wkt::Struct, String> {
    match &v.kind {
        Some(Kind::StructValue(s)) => Ok(s),
        _ => Err(format!("expected a struct, found {}", describe(v))),
    }
}

fn describe(v: &wkt::Value) -> &'static str {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => "null",
        Some(Kind::NumberValue(_)) => "a number",
        Some(Kind::StringValue(_)) => "a string",
        Some(Kind::BoolValue(_)) => "a boolean",
        Some(Kind::StructValue(_)) => "a struct",
        Some(Kind::ListValue(_)) => "a list",
    }
}
