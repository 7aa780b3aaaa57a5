//! Reading a protobuf message's fields where they lie, without decoding it.
//!
//! A validator that only needs lengths, a few scalars or a UTF-8 check should not build the
//! whole message (allocating every string) just before tonic decodes it again for the service.
//! [`fields`] walks the wire format and yields each field with borrowed contents; it refuses
//! exactly what prost's decoding refuses (bad varints and keys, truncated fields, stray or
//! mismatched end-group tags, groups nested past prost's recursion limit). Field-level checks
//! (the wire type a field must have, UTF-8 of strings) are the caller's, through [`Field`]'s
//! accessors, which fail as prost would. Together they let through exactly what prost decodes,
//! for messages of scalar, string and bytes fields. An embedded message field is only a
//! length-delimited blob here: walk it with [`fields`] too if it must be checked (prost's
//! recursion limit then counts its depth as well). [`Field::varint`] refuses a packed repeated
//! field, which prost accepts; read those with [`Field::bytes`].
//!
//! ```
//! use grpc_layers::validate::wire::{self, Malformed};
//!
//! // Field 1 (a string) "key", field 3 (a varint) 7.
//! let message = [0x0a, 3, b'k', b'e', b'y', 0x18, 7];
//! let mut key = "";
//! for field in wire::fields(&message) {
//!     let field = field?;
//!     if field.number == 1 {
//!         key = field.string()?;
//!     }
//! }
//! assert_eq!(key, "key");
//! assert!(wire::fields(&[0x0a, 9, b'k']).any(|f| f.is_err()), "truncated");
//! # Ok::<(), Malformed>(())
//! ```

use std::fmt;

/// Groups nested deeper than this are refused, as prost refuses them (its recursion limit).
const RECURSION_LIMIT: u32 = 100;

/// Why a message is not valid protobuf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed(&'static str);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Malformed {}

/// A field's contents, by wire type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// Wire type 0.
    Varint(u64),
    /// Wire type 1.
    Fixed64(u64),
    /// Wire type 2: strings, bytes, embedded messages, packed repeated scalars.
    Bytes(&'a [u8]),
    /// Wire types 3 and 4: a (deprecated) group, whose contents were checked and skipped.
    Group,
    /// Wire type 5.
    Fixed32(u32),
}

/// One field of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    /// The field number.
    pub number: u32,
    /// Its contents.
    pub value: Value<'a>,
}

impl<'a> Field<'a> {
    /// A `string` field's text: wire type 2 holding UTF-8.
    pub fn string(&self) -> Result<&'a str, Malformed> {
        std::str::from_utf8(self.bytes()?)
            .map_err(|_| Malformed("invalid string value: data is not UTF-8 encoded"))
    }

    /// A `bytes` field's contents (or an embedded message's, or a packed repeated field's):
    /// wire type 2.
    pub fn bytes(&self) -> Result<&'a [u8], Malformed> {
        match self.value {
            Value::Bytes(bytes) => Ok(bytes),
            _ => Err(Malformed("invalid wire type for a length-delimited field")),
        }
    }

    /// A varint field's value (`uint64`, `int32`, `bool`, enums…): wire type 0.
    pub fn varint(&self) -> Result<u64, Malformed> {
        match self.value {
            Value::Varint(value) => Ok(value),
            _ => Err(Malformed("invalid wire type for a varint field")),
        }
    }
}

/// The fields of `message`, in order; after the first error the iterator ends.
pub fn fields(message: &[u8]) -> Fields<'_> {
    Fields { rest: message }
}

/// See [`fields`].
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<Field<'a>, Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let field = read_field(&mut self.rest, 0);
        if field.is_err() {
            self.rest = &[];
        }
        Some(field.and_then(|(number, value)| match value {
            Some(value) => Ok(Field { number, value }),
            None => Err(Malformed("unexpected end group tag")),
        }))
    }
}

/// Reads one field at `depth` groups deep; `None` for an end-group tag, which only a group may
/// hold.
fn read_field<'a>(buf: &mut &'a [u8], depth: u32) -> Result<(u32, Option<Value<'a>>), Malformed> {
    let key = varint(buf)?;
    if key > u64::from(u32::MAX) {
        return Err(Malformed("invalid key value"));
    }
    let number = (key as u32) >> 3;
    if number == 0 {
        return Err(Malformed("invalid tag value: 0"));
    }
    let wire_type = key & 7;
    if wire_type == 4 {
        return Ok((number, None));
    }
    // prost checks its recursion budget before skipping any field inside groups.
    if depth >= RECURSION_LIMIT {
        return Err(Malformed("recursion limit reached"));
    }
    let value = match wire_type {
        0 => Value::Varint(varint(buf)?),
        1 => Value::Fixed64(u64::from_le_bytes(
            take(buf, 8)?.try_into().expect("8 bytes"),
        )),
        2 => {
            let len = varint(buf)?;
            let len = usize::try_from(len).map_err(|_| Malformed("buffer underflow"))?;
            Value::Bytes(take(buf, len)?)
        }
        3 => {
            loop {
                match read_field(buf, depth + 1)? {
                    (end, None) if end == number => break,
                    (_, None) => return Err(Malformed("unexpected end group tag")),
                    (_, Some(_)) => {}
                }
            }
            Value::Group
        }
        5 => Value::Fixed32(u32::from_le_bytes(
            take(buf, 4)?.try_into().expect("4 bytes"),
        )),
        _ => return Err(Malformed("invalid wire type value")),
    };
    Ok((number, Some(value)))
}

/// The next `len` bytes.
fn take<'a>(buf: &mut &'a [u8], len: usize) -> Result<&'a [u8], Malformed> {
    if buf.len() < len {
        return Err(Malformed("buffer underflow"));
    }
    let (taken, rest) = buf.split_at(len);
    *buf = rest;
    Ok(taken)
}

/// A base-128 varint of at most 10 bytes whose value fits in 64 bits.
#[inline]
fn varint(buf: &mut &[u8]) -> Result<u64, Malformed> {
    // Keys, lengths under 128 and small numbers are one byte: most varints of a message.
    if let Some((&byte, rest)) = buf.split_first()
        && byte < 0x80
    {
        *buf = rest;
        return Ok(u64::from(byte));
    }
    varint_long(buf)
}

/// [`varint`] when it is longer than a byte (a version past 127, say).
fn varint_long(buf: &mut &[u8]) -> Result<u64, Malformed> {
    let mut value = 0u64;
    for i in 0..10 {
        let Some((&byte, rest)) = buf.split_first() else {
            return Err(Malformed("buffer underflow"));
        };
        *buf = rest;
        if i == 9 && byte > 1 {
            return Err(Malformed("invalid varint"));
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err(Malformed("invalid varint"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(message: &[u8]) -> Result<Vec<Field<'_>>, Malformed> {
        fields(message).collect()
    }

    /// Every wire type is read with its contents borrowed, in order.
    #[test]
    fn reads_each_wire_type() {
        let message = [
            0x08, 0x96, 0x01, // 1: varint 150
            0x11, 1, 0, 0, 0, 0, 0, 0, 0, // 2: fixed64 1
            0x1a, 2, b'h', b'i', // 3: bytes "hi"
            0x23, 0x08, 1, 0x24, // 4: a group holding 1: varint 1
            0x2d, 2, 0, 0, 0, // 5: fixed32 2
        ];
        let expected = [
            (1, Value::Varint(150)),
            (2, Value::Fixed64(1)),
            (3, Value::Bytes(b"hi")),
            (4, Value::Group),
            (5, Value::Fixed32(2)),
        ];
        let read = all(&message).expect("valid");
        let read: Vec<(u32, Value<'_>)> = read.iter().map(|f| (f.number, f.value)).collect();
        assert_eq!(read, expected);
    }

    /// What prost refuses is refused.
    #[test]
    fn refuses_malformed_messages() {
        let cases: [(&[u8], &str); 9] = [
            (&[0x08], "buffer underflow"),
            (&[0x0a, 5, b'a'], "buffer underflow"),
            (&[0x00, 1], "invalid tag value: 0"),
            (&[0x0e, 1], "invalid wire type value"),
            (&[0x0c], "unexpected end group tag"),
            (&[0x0b, 0x14], "unexpected end group tag"),
            (&[0x0b, 0x08, 1], "buffer underflow"),
            (
                &[
                    0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
                ],
                "invalid varint",
            ),
            (&[0x80, 0x80, 0x80, 0x80, 0x10], "invalid key value"),
        ];
        for (message, reason) in cases {
            assert_eq!(all(message), Err(Malformed(reason)), "{message:x?}");
        }
    }

    /// Fields nest in groups up to prost's recursion limit and no further.
    #[test]
    fn groups_nest_up_to_the_limit() {
        let nested = |depth: usize| {
            let mut message = vec![0x0b; depth]; // start group 1, `depth` times
            message.extend([0x10, 1]); // 2: varint 1, inside them all
            message.extend(vec![0x0c; depth]);
            message
        };
        assert!(all(&nested(RECURSION_LIMIT as usize - 1)).is_ok());
        assert_eq!(
            all(&nested(RECURSION_LIMIT as usize)),
            Err(Malformed("recursion limit reached"))
        );
    }

    /// The accessors check the wire type a field must have, and UTF-8.
    #[test]
    fn accessors_check_types() {
        let text = Field {
            number: 1,
            value: Value::Bytes(b"ok"),
        };
        assert_eq!(text.string(), Ok("ok"));
        assert!(text.varint().is_err());
        let bad = Field {
            number: 1,
            value: Value::Bytes(&[0xff]),
        };
        assert!(bad.string().is_err() && bad.bytes().is_ok());
        let number = Field {
            number: 1,
            value: Value::Varint(3),
        };
        assert_eq!(number.varint(), Ok(3));
        assert!(number.bytes().is_err());
    }
}
