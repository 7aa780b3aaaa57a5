//! The on-disk layout of the log: a magic header, then frames of records, each frame checked by
//! a CRC32C.
//!
//! A frame holds one *commit group*: every record that one fsync made durable. The committer
//! writes a frame and syncs it before it writes the next, so after a crash only the last frame
//! can be incomplete, and a frame that fails its check with a valid frame after it can only be
//! corruption of data that was already durable. Checking whole groups (not single records) is
//! what makes that rule sound: before its fsync returns, the disk may persist the pages of a group
//! in any order, leaving a later record of the group intact behind a torn earlier one.
//!
//! File layout:
//!
//! | offset | size | field                                   |
//! |--------|------|-----------------------------------------|
//! | 0      | 8    | magic `KVCLOG` followed by format `0x0001` |
//! | 8      | …    | frames until the end of the file         |
//!
//! Frame layout (integers little-endian):
//!
//! | offset | size | field                                              |
//! |--------|------|----------------------------------------------------|
//! | 0      | 4    | CRC32C of bytes `4 .. 8 + L` (the length and the payload) |
//! | 4      | 4    | `L`: payload length in bytes                        |
//! | 8      | `L`  | payload: one or more records, back to back           |
//!
//! Record layout (integers little-endian):
//!
//! | offset     | size | field                                                   |
//! |------------|------|---------------------------------------------------------|
//! | 0          | 4    | `R`: record length after this field                      |
//! | 4          | 8    | version the write produced                              |
//! | 12         | 8    | replay floor: 0, or the key's `replayable_from` (compaction) |
//! | 20         | 1    | flags: bit 0 = a request id follows                      |
//! | 21         | 16   | request id (zeros when absent)                           |
//! | 37         | 4    | `K`: key length in bytes                                 |
//! | 41         | `K`  | key, UTF-8                                               |
//! | 41 + `K`   | rest | value, UTF-8 (`R - 37 - K` bytes)                        |

use crate::storage::{RequestId, index::Snapshot};

/// The first bytes of every log file.
pub(crate) const MAGIC: &[u8; 8] = b"KVCLOG\x00\x01";

/// Bytes before a frame's payload.
pub(crate) const FRAME_HEADER: usize = 8;

/// Bytes of a record before its key.
const RECORD_FIXED: usize = 41;

const HAS_REQUEST_ID: u8 = 1;

/// How many bytes `encode_record` produces for this key and value.
pub(crate) fn record_len(key: &str, value: &str) -> usize {
    RECORD_FIXED + key.len() + value.len()
}

/// Appends one record to `out`. `floor` is 0 for ordinary writes.
pub(crate) fn encode_record(
    out: &mut Vec<u8>,
    key: &str,
    value: &str,
    version: u64,
    floor: u64,
    writer: Option<&RequestId>,
) {
    let len = record_len(key, value) - 4;
    out.reserve(len + 4);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&floor.to_le_bytes());
    out.push(if writer.is_some() { HAS_REQUEST_ID } else { 0 });
    out.extend_from_slice(writer.unwrap_or(&[0; 16]));
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(value.as_bytes());
}

/// Wraps a payload of whole records into a frame, appended to `out`.
pub(crate) fn encode_frame(out: &mut Vec<u8>, payload: &[u8]) {
    let len = (payload.len() as u32).to_le_bytes();
    let mut crc = crc32c::crc32c(&len);
    crc = crc32c::crc32c_append(crc, payload);
    out.reserve(FRAME_HEADER + payload.len());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&len);
    out.extend_from_slice(payload);
}

/// What reading a log found.
#[derive(Debug)]
pub(crate) struct Scan {
    /// Every record of every valid frame, in log order.
    pub(crate) records: Vec<Snapshot>,
    /// Where the valid log ends; bytes after it are a torn tail to cut off.
    pub(crate) valid_len: usize,
    /// False when the file is too short to hold even the magic (a creation that never finished).
    pub(crate) has_header: bool,
}

/// Why a log cannot be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScanError {
    /// The file does not start with [`MAGIC`].
    NotALog,
    /// A damaged frame at `offset` with valid frames after it.
    Corrupt {
        /// Byte offset of the damaged frame.
        offset: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// Reads a whole log: every record of the valid prefix, and where that prefix ends.
///
/// A damaged frame is a torn tail when no valid frame follows it anywhere in the file; otherwise
/// it is corruption of durable data and the log is refused.
pub(crate) fn scan(bytes: &[u8]) -> Result<Scan, ScanError> {
    if bytes.len() < MAGIC.len() {
        return if MAGIC.starts_with(bytes) {
            Ok(Scan {
                records: Vec::new(),
                valid_len: 0,
                has_header: false,
            })
        } else {
            Err(ScanError::NotALog)
        };
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err(ScanError::NotALog);
    }
    let mut records = Vec::new();
    let mut offset = MAGIC.len();
    while offset < bytes.len() {
        match frame_at(bytes, offset).and_then(|payload| {
            decode_payload(payload, &mut records)?;
            Ok(payload.len())
        }) {
            Ok(len) => offset += FRAME_HEADER + len,
            Err(reason) => {
                if (offset + 1..bytes.len()).any(|later| frame_at(bytes, later).is_ok()) {
                    return Err(ScanError::Corrupt { offset, reason });
                }
                break;
            }
        }
    }
    Ok(Scan {
        records,
        valid_len: offset,
        has_header: true,
    })
}

/// The payload of the frame starting at `offset`, if its length fits and its checksum matches.
fn frame_at(bytes: &[u8], offset: usize) -> Result<&[u8], String> {
    let header = bytes
        .get(offset..offset + FRAME_HEADER)
        .ok_or("frame header cut short")?;
    let crc = le_u32(header, 0).unwrap_or_default();
    let len = le_u32(header, 4).unwrap_or_default() as usize;
    if len < RECORD_FIXED {
        return Err(format!("frame length {len} is too short for a record"));
    }
    let payload = bytes
        .get(offset + FRAME_HEADER..offset + FRAME_HEADER + len)
        .ok_or_else(|| format!("frame of {len} bytes runs past the end of the file"))?;
    // Cheap structural checks first: scanning a torn tail for later frames tries every offset,
    // and this keeps it from checksumming megabytes at offsets that cannot start a frame.
    let first = le_u32(payload, 0).unwrap_or_default() as usize + 4;
    if first > len || first < RECORD_FIXED || payload[20] > HAS_REQUEST_ID {
        return Err("frame does not start with a record".into());
    }
    let actual = crc32c::crc32c_append(crc32c::crc32c(&header[4..]), payload);
    if actual != crc {
        return Err(format!(
            "checksum mismatch (stored {crc:#010x}, computed {actual:#010x})"
        ));
    }
    Ok(payload)
}

/// Decodes the records of a checksummed payload. A payload that passes its checksum but does not
/// parse was written wrong, which is reported like any other damage.
fn decode_payload(mut payload: &[u8], out: &mut Vec<Snapshot>) -> Result<(), String> {
    while !payload.is_empty() {
        let len = le_u32(payload, 0).ok_or("record cut short inside its frame")? as usize + 4;
        let record = payload
            .get(..len)
            .filter(|r| r.len() >= RECORD_FIXED)
            .ok_or("record length does not fit its frame")?;
        // The fixed fields are in bounds: the record is at least RECORD_FIXED bytes long.
        let version = le_u64(record, 4).unwrap_or_default();
        let floor = le_u64(record, 12).unwrap_or_default();
        let writer = match record[20] {
            0 => None,
            HAS_REQUEST_ID => record[21..37].try_into().ok(),
            flags => return Err(format!("unknown record flags {flags:#04x}")),
        };
        let key_len = le_u32(record, 37).unwrap_or_default() as usize;
        let key = record
            .get(RECORD_FIXED..RECORD_FIXED + key_len)
            .ok_or("key length does not fit its record")?;
        let value = &record[RECORD_FIXED + key_len..];
        let text = |bytes: &[u8], what: &str| {
            String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
        };
        if version == 0 {
            return Err("record of version 0".into());
        }
        out.push(Snapshot {
            key: text(key, "key")?,
            value: text(value, "value")?,
            version,
            writer,
            replayable_from: floor,
        });
        payload = &payload[len..];
    }
    Ok(())
}

fn le_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn le_u64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_of(groups: &[&[(&str, &str, u64)]]) -> Vec<u8> {
        let mut log = MAGIC.to_vec();
        for group in groups {
            let mut payload = Vec::new();
            for (key, value, version) in *group {
                encode_record(&mut payload, key, value, *version, 0, Some(&[7; 16]));
            }
            encode_frame(&mut log, &payload);
        }
        log
    }

    /// Records come back exactly, including the request id, across frames of several records.
    #[test]
    fn round_trips_groups() {
        let log = log_of(&[&[("a", "1", 1), ("b", "x,y\n\0", 1)], &[("a", "2", 2)]]);
        let scan = scan(&log).unwrap();
        assert_eq!(scan.valid_len, log.len());
        let got: Vec<_> = scan
            .records
            .iter()
            .map(|r| (r.key.as_str(), r.value.as_str(), r.version, r.writer))
            .collect();
        assert_eq!(
            got,
            [
                ("a", "1", 1, Some([7; 16])),
                ("b", "x,y\n\0", 1, Some([7; 16])),
                ("a", "2", 2, Some([7; 16]))
            ]
        );
    }

    /// A cut anywhere inside the last frame drops that whole frame and nothing before it.
    #[test]
    fn torn_last_frame_is_dropped_whole() {
        let log = log_of(&[&[("a", "1", 1)], &[("a", "2", 2), ("b", "1", 1)]]);
        let first_end = log_of(&[&[("a", "1", 1)]]).len();
        for cut in first_end..log.len() {
            let scan = scan(&log[..cut]).unwrap();
            assert_eq!(scan.valid_len, first_end, "cut at {cut}");
            assert_eq!(scan.records.len(), 1, "cut at {cut}");
        }
    }

    /// A damaged frame followed by a valid one is corruption, reported at the damaged offset.
    #[test]
    fn damage_before_valid_frames_is_refused() {
        let mut log = log_of(&[&[("a", "1", 1)], &[("a", "2", 2)], &[("a", "3", 3)]]);
        let second = log_of(&[&[("a", "1", 1)]]).len();
        log[second + 10] ^= 0x40;
        match scan(&log) {
            Err(ScanError::Corrupt { offset, .. }) => assert_eq!(offset, second),
            other => panic!("expected corruption, got {other:?}"),
        }
    }

    /// Anything but a (prefix of the) magic is not our file.
    #[test]
    fn foreign_files_are_refused() {
        assert_eq!(scan(b"hello world").unwrap_err(), ScanError::NotALog);
        assert_eq!(scan(b"x").unwrap_err(), ScanError::NotALog);
        assert!(!scan(&MAGIC[..3]).unwrap().has_header);
    }
}
