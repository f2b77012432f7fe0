//! Application `data`: kept as validated JSON text in shared [`Bytes`].
//!
//! Invariant: a [`JsonData`] always holds exactly one valid JSON value. It is
//! written verbatim into JSON frames and transcoded to native MessagePack for
//! `herald.msgpack`, once per message and encoding (PROTOCOL.md section 5a).

use bytes::Bytes;
use serde_json::value::RawValue;

/// A JSON value as text.
#[derive(Clone, PartialEq, Eq)]
pub struct JsonData(Bytes);

/// Why a value cannot be `data`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    /// Not valid JSON.
    #[error("data is not valid JSON")]
    Invalid,
    /// A MessagePack value with no JSON form.
    #[error("data has no JSON form: {0}")]
    NotJson(&'static str),
}

impl JsonData {
    /// Validates `text` as one JSON value that a `serde_json::Value` can
    /// hold: numbers within f64's range, nesting within serde_json's 128
    /// levels. Valid JSON text beyond those (`1e400`, 200 nested arrays)
    /// could not be transcoded for MessagePack subscribers later (found by
    /// fuzzing, docs/fuzzing.md), so it is refused here, at the edge.
    pub fn from_json_text(text: Bytes) -> Result<Self, DataError> {
        serde_json::from_slice::<Checked>(&text).map_err(|_| DataError::Invalid)?;
        Ok(Self(text))
    }

    /// Serializes a JSON value built by herald itself (not from input:
    /// see [`JsonData::try_from_value`]).
    pub fn from_value(v: &serde_json::Value) -> Self {
        Self(Bytes::from(
            serde_json::to_vec(v).expect("a serde_json::Value always serializes"),
        ))
    }

    /// Serializes a JSON value from input, checked like
    /// [`JsonData::from_json_text`]: a value nested deeper than 128 levels
    /// serializes but cannot be read back.
    pub fn try_from_value(v: &serde_json::Value) -> Result<Self, DataError> {
        Self::from_json_text(Self::from_value(v).0)
    }

    /// The JSON text.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The shared JSON text.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// Length of the JSON text in bytes (what size limits apply to).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true for valid JSON.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Parses the text into a value.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_slice(&self.0).expect("JsonData holds valid JSON by construction")
    }
}

impl std::fmt::Debug for JsonData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JsonData({} bytes)", self.0.len())
    }
}

impl serde::Serialize for JsonData {
    /// Human-readable serializers (JSON) get the text verbatim; binary ones
    /// (MessagePack) get the native value, transcoded here.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            let raw: &RawValue = serde_json::from_slice(&self.0)
                .map_err(|_| serde::ser::Error::custom("invalid JSON data"))?;
            raw.serialize(s)
        } else {
            self.to_value().serialize(s)
        }
    }
}

impl<'de> serde::Deserialize<'de> for JsonData {
    /// From JSON (history pages over HTTP) the text is kept verbatim, so a
    /// replayed or gap-filled message carries exactly the bytes published
    /// (key order, `1.50`, big integers); other formats go through a value.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let raw = Box::<RawValue>::deserialize(d)?;
            Self::from_json_text(Bytes::from(String::from(Box::<str>::from(raw))))
                .map_err(serde::de::Error::custom)
        } else {
            let v = serde_json::Value::deserialize(d)?;
            Self::try_from_value(&v).map_err(serde::de::Error::custom)
        }
    }
}

/// Deepest nesting of arrays and objects accepted in `data` (herald's
/// limit, docs/protocol-notes.md). serde_json refuses more than 128 levels
/// in a whole document; `data` sits inside a frame, so it keeps a margin
/// that any client's parser of the frame can take.
pub const MAX_DATA_DEPTH: usize = 64;

/// Walks a JSON value through `deserialize_any`, holding nothing: serde_json
/// then applies the rules a `serde_json::Value` parse does (numbers within
/// f64) without building the value, and the depth is counted against
/// [`MAX_DATA_DEPTH`]. (`IgnoredAny` takes serde_json's skipping path,
/// which checks neither.)
struct Checked;

impl<'de> serde::Deserialize<'de> for Checked {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CheckedVisitor { depth: 0 })
    }
}

#[derive(Clone, Copy)]
struct CheckedVisitor {
    depth: usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for CheckedVisitor {
    type Value = Checked;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Checked, D::Error> {
        d.deserialize_any(self)
    }
}

impl CheckedVisitor {
    fn inner<E: serde::de::Error>(self) -> Result<Self, E> {
        if self.depth >= MAX_DATA_DEPTH {
            return Err(E::custom("nested too deep"));
        }
        Ok(Self {
            depth: self.depth + 1,
        })
    }
}

impl<'de> serde::de::Visitor<'de> for CheckedVisitor {
    type Value = Checked;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Checked, E> {
        if v.is_finite() {
            Ok(Checked)
        } else {
            Err(E::custom("number out of range"))
        }
    }
    fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Checked, A::Error> {
        let inner = self.inner()?;
        while a.next_element_seed(inner)?.is_some() {}
        Ok(Checked)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Checked, A::Error> {
        let inner = self.inner()?;
        while a.next_key::<serde::de::IgnoredAny>()?.is_some() {
            a.next_value_seed(inner)?;
        }
        Ok(Checked)
    }
}

/// Converts a MessagePack value into JSON, refusing what JSON cannot hold:
/// binary, extension types, non-string map keys, NaN and infinities.
pub fn msgpack_to_json(v: rmpv::Value) -> Result<serde_json::Value, DataError> {
    use rmpv::Value as M;
    use serde_json::Value as J;
    Ok(match v {
        M::Nil => J::Null,
        M::Boolean(b) => J::Bool(b),
        M::Integer(i) => {
            if let Some(u) = i.as_u64() {
                J::from(u)
            } else if let Some(s) = i.as_i64() {
                J::from(s)
            } else {
                return Err(DataError::NotJson("integer out of range"));
            }
        }
        M::F32(f) => float(f64::from(f))?,
        M::F64(f) => float(f)?,
        M::String(s) => match s.into_str() {
            Some(s) => J::String(s),
            None => return Err(DataError::NotJson("string is not UTF-8")),
        },
        M::Binary(_) => return Err(DataError::NotJson("binary")),
        M::Ext(..) => return Err(DataError::NotJson("extension type")),
        M::Array(a) => J::Array(
            a.into_iter()
                .map(msgpack_to_json)
                .collect::<Result<_, _>>()?,
        ),
        M::Map(m) => {
            let mut out = serde_json::Map::with_capacity(m.len());
            for (k, v) in m {
                let k = match k {
                    M::String(s) => match s.into_str() {
                        Some(s) => s,
                        None => return Err(DataError::NotJson("map key is not UTF-8")),
                    },
                    _ => return Err(DataError::NotJson("non-string map key")),
                };
                out.insert(k, msgpack_to_json(v)?);
            }
            J::Object(out)
        }
    })
}

fn float(f: f64) -> Result<serde_json::Value, DataError> {
    serde_json::Number::from_f64(f)
        .map(serde_json::Value::Number)
        .ok_or(DataError::NotJson("NaN or infinity"))
}
