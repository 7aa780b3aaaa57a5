//! The length-prefixed message framing of gRPC over HTTP/2.
//!
//! Validation needs the one message of a unary request and retry needs nothing but its bytes;
//! both must leave the frame exactly as the client wrote it, so decoding slices the buffer
//! instead of copying it.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

/// Length of the frame header: a compressed flag and a message length.
pub const FRAME_HEADER_LEN: usize = 5;

/// One decoded gRPC frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Whether the sender compressed the message (with the call's `grpc-encoding`).
    pub compressed: bool,
    /// The message bytes, a slice of the decoded buffer.
    pub message: Bytes,
}

/// Why a buffer is not exactly one gRPC frame.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The buffer ends before the header or the message it announces.
    Incomplete,
    /// The compressed flag is neither 0 nor 1.
    BadFlag(u8),
    /// Bytes follow the first frame.
    TrailingData,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Incomplete => f.write_str("truncated gRPC frame"),
            Self::BadFlag(flag) => write!(f, "invalid gRPC compressed flag {flag}"),
            Self::TrailingData => f.write_str("data after the single gRPC frame"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Total length (header included) of the frame at the start of `buf`, once its header is there.
pub fn frame_len(buf: &[u8]) -> Option<usize> {
    let header: [u8; FRAME_HEADER_LEN] = buf.get(..FRAME_HEADER_LEN)?.try_into().ok()?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    Some(FRAME_HEADER_LEN + len as usize)
}

/// Decodes a buffer holding exactly one frame:
///
/// | offset | size | field                                  |
/// |--------|------|----------------------------------------|
/// | 0      | 1    | compressed flag, 0 or 1                |
/// | 1      | 4    | message length `n`, **big-endian** u32 |
/// | 5      | n    | message                                |
pub fn decode_frame(buf: &Bytes) -> Result<Frame, FrameError> {
    let (compressed, message) = split_frame(buf)?;
    Ok(Frame {
        compressed,
        message: buf.slice_ref(message),
    })
}

/// [`decode_frame`] in place: the compressed flag and the message, borrowed from `buf` (no
/// reference count taken, which a `Bytes` slice would write in memory the connection's
/// reading task writes too).
pub(crate) fn split_frame(buf: &[u8]) -> Result<(bool, &[u8]), FrameError> {
    let len = frame_len(buf).ok_or(FrameError::Incomplete)?;
    let compressed = match buf[0] {
        0 => false,
        1 => true,
        flag => return Err(FrameError::BadFlag(flag)),
    };
    match buf.len().cmp(&len) {
        std::cmp::Ordering::Less => Err(FrameError::Incomplete),
        std::cmp::Ordering::Greater => Err(FrameError::TrailingData),
        std::cmp::Ordering::Equal => Ok((compressed, &buf[FRAME_HEADER_LEN..])),
    }
}

/// Encodes one uncompressed frame around `message` (layout in [`decode_frame`]).
///
/// # Panics
/// If the message is longer than `u32::MAX` bytes, which gRPC cannot frame.
pub fn encode_frame(message: &[u8]) -> Bytes {
    let len = u32::try_from(message.len()).expect("a gRPC message is at most u32::MAX bytes");
    let mut buf = BytesMut::with_capacity(FRAME_HEADER_LEN + message.len());
    buf.put_u8(0);
    buf.put_u32(len);
    buf.put_slice(message);
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encoding then decoding returns the message; short, long and bad-flag buffers are refused.
    #[test]
    fn round_trips_and_rejects_bad_frames() {
        let frame = encode_frame(b"hello");
        assert_eq!(&frame[..5], &[0, 0, 0, 0, 5]);
        let decoded = decode_frame(&frame).expect("one whole frame");
        assert!(!decoded.compressed);
        assert_eq!(&decoded.message[..], b"hello");
        assert_eq!(decode_frame(&frame.slice(..7)), Err(FrameError::Incomplete));
        assert_eq!(decode_frame(&frame.slice(..3)), Err(FrameError::Incomplete));
        let mut long = frame.to_vec();
        long.push(0);
        assert_eq!(decode_frame(&long.into()), Err(FrameError::TrailingData));
        let bad = Bytes::from_static(&[7, 0, 0, 0, 0]);
        assert_eq!(decode_frame(&bad), Err(FrameError::BadFlag(7)));
    }
}
