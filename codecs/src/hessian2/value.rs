use std::borrow::Cow;

/// One Hessian 2.0 value.
///
/// Back-references (`Q`) stay as the index of the list, map or object they point to,
/// counted in the order those containers start on the wire (from 0). Doubles compare by
/// bit pattern, so `NaN == NaN` and `0.0 != -0.0`: equality means "encodes the same".
#[derive(Debug, Clone)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i32),
    Long(i64),
    Double(f64),
    /// Milliseconds since the Unix epoch, UTC.
    Date(i64),
    String(String),
    Binary(Vec<u8>),
    List {
        ty: Option<String>,
        items: Vec<Value>,
    },
    Map {
        ty: Option<String>,
        entries: Vec<(Value, Value)>,
    },
    Object {
        class: String,
        fields: Vec<(String, Value)>,
    },
    /// A back-reference to an earlier list, map or object.
    Ref(u32),
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        use Value::*;
        match (self, other) {
            (Null, Null) => true,
            (Bool(a), Bool(b)) => a == b,
            (Int(a), Int(b)) => a == b,
            (Long(a), Long(b)) => a == b,
            (Double(a), Double(b)) => a.to_bits() == b.to_bits(),
            (Date(a), Date(b)) => a == b,
            (String(a), String(b)) => a == b,
            (Binary(a), Binary(b)) => a == b,
            (List { ty: t1, items: a }, List { ty: t2, items: b }) => t1 == t2 && a == b,
            (Map { ty: t1, entries: a }, Map { ty: t2, entries: b }) => t1 == t2 && a == b,
            (
                Object {
                    class: c1,
                    fields: a,
                },
                Object {
                    class: c2,
                    fields: b,
                },
            ) => c1 == c2 && a == b,
            (Ref(a), Ref(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Value {}

impl Value {
    /// The string, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The number, if this is an int or a long.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::Int(v) => Some(i64::from(v)),
            Value::Long(v) => Some(v),
            _ => None,
        }
    }

    /// The flag, if this is a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// The number, if this is a double, int or long.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Double(v) => Some(v),
            Value::Int(v) => Some(f64::from(v)),
            // Precision loss above 2^53 is what a caller asking for a double expects.
            #[allow(clippy::cast_precision_loss)]
            Value::Long(v) => Some(v as f64),
            _ => None,
        }
    }

    /// True for `Null`.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// A short name of the value's kind, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Long(_) => "long",
            Value::Double(_) => "double",
            Value::Date(_) => "date",
            Value::String(_) => "string",
            Value::Binary(_) => "binary",
            Value::List { .. } => "list",
            Value::Map { .. } => "map",
            Value::Object { .. } => "object",
            Value::Ref(_) => "ref",
        }
    }

    /// Scalars as text for metadata: strings as they are, bools as `true`/`false`, numbers
    /// in decimal (doubles as Java prints simple values: `1.0`, `0.5`), dates as epoch
    /// milliseconds. `None` for null, binary, containers and references.
    pub fn to_display_string(&self) -> Option<Cow<'_, str>> {
        Some(match self {
            Value::String(s) => Cow::Borrowed(s.as_str()),
            Value::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
            Value::Int(v) => Cow::Owned(v.to_string()),
            Value::Long(v) | Value::Date(v) => Cow::Owned(v.to_string()),
            Value::Double(v) => Cow::Owned(format!("{v:?}")),
            _ => return None,
        })
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}

impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Value::Int(v)
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Long(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Double(v)
    }
}
