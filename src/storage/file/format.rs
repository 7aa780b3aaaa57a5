//! The on-disk layout of the log: a header, then frames of records, each frame checked by a
//! CRC32C.
//!
//! A frame holds one *commit group*: every record that one fsync made durable. The committer
//! writes a frame and syncs it before it writes the next, so after a crash only the last frame
//! can be incomplete, and a frame that fails its check with a valid frame after it can only be
//! corruption of data that was already durable. Checking whole groups (not single records) is
//! what makes that rule sound: before its fsync returns, the disk may persist the pages of a group
//! in any order, leaving a later record of the group intact behind a torn earlier one.
//!
//! Each frame carries a tag derived from the file's random salt and the frame's own offset, and
//! its checksum covers the tag, so a frame is valid only where it was written, in the file it was
//! written for. Bytes that merely look like a frame (a stored value that holds a copy of a log,
//! say, inside a torn last frame) never pass, and cannot turn an ordinary torn tail into a
//! refusal to open; and since the tag is checked before any checksumming, searching a torn tail
//! for later frames costs one small hash per offset, whatever the tail contains. The header has
//! its own checksum: a damaged salt would otherwise make every frame look torn.
//!
//! File layout:
//!
//! | offset | size | field                                          |
//! |--------|------|------------------------------------------------|
//! | 0      | 8    | magic `KVCLOG` followed by format `0x0002`      |
//! | 8      | 8    | salt: random, chosen when the file is written   |
//! | 16     | 4    | CRC32C of bytes `0 .. 16`                        |
//! | 20     | …    | frames until the end of the file                |
//!
//! Frame layout (integers little-endian):
//!
//! | offset | size | field                                                             |
//! |--------|------|-------------------------------------------------------------------|
//! | 0      | 4    | CRC32C of bytes `4 .. 12 + L`                                      |
//! | 4      | 4    | `L`: payload length in bytes                                       |
//! | 8      | 4    | tag: CRC32C of the salt then the frame's file offset (both `u64`)   |
//! | 12     | `L`  | payload: one or more records, back to back                          |
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

/// The first bytes of every log file: what it is, then the format version.
const MAGIC: &[u8; 8] = b"KVCLOG\x00\x02";

/// What every format version starts with.
const MAGIC_STEM: &[u8; 6] = b"KVCLOG";

/// Bytes before the first frame: the magic, the salt and their checksum.
pub(crate) const FILE_HEADER: usize = 20;

/// Bytes before a frame's payload.
pub(crate) const FRAME_HEADER: usize = 12;

/// The largest record the log takes (its length fields are `u32`).
pub(crate) const MAX_RECORD_BYTES: usize = 1 << 30;

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

/// Appends the file header for a log with this `salt` to `out` (which should be empty).
pub(crate) fn encode_header(out: &mut Vec<u8>, salt: u64) {
    let start = out.len();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&salt.to_le_bytes());
    let crc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Wraps a payload of whole records into a frame, appended to `out`; the frame will start at
/// byte `offset` of a file with this `salt`.
pub(crate) fn encode_frame(out: &mut Vec<u8>, payload: &[u8], salt: u64, offset: u64) {
    let mut header = [0; FRAME_HEADER];
    header[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    header[8..].copy_from_slice(&position_tag(salt, offset).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&header[4..]), payload);
    header[..4].copy_from_slice(&crc.to_le_bytes());
    out.reserve(FRAME_HEADER + payload.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
}

/// The tag of a frame written at `offset` of the file with this `salt`.
fn position_tag(salt: u64, offset: u64) -> u32 {
    let mut position = [0; 16];
    position[..8].copy_from_slice(&salt.to_le_bytes());
    position[8..].copy_from_slice(&offset.to_le_bytes());
    crc32c::crc32c(&position)
}

/// What reading a log found.
#[derive(Debug)]
pub(crate) struct Scan {
    /// Every record of every valid frame, in log order.
    pub(crate) records: Vec<Snapshot>,
    /// Where the valid log ends; bytes after it are a torn tail to cut off.
    pub(crate) valid_len: usize,
    /// The file's salt; `None` when the file is too short to hold its header (a creation that
    /// never finished, so nothing in it was ever acknowledged).
    pub(crate) salt: Option<u64>,
}

/// Why a log cannot be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScanError {
    /// The file does not start with the log's magic.
    NotALog,
    /// A kvcore log in a format this build does not read.
    Format(u16),
    /// The header fails its checksum, so the salt cannot be trusted to check any frame.
    BadHeader,
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
    // A file no longer than the header holds no frame, so nothing in it was ever acknowledged:
    // it is a creation that never finished. Zeros there are one the power cut before its sync
    // (the file size landed, the data did not).
    let unfinished = bytes.len() <= FILE_HEADER && bytes.iter().all(|&b| b == 0);
    let salt = if unfinished {
        None
    } else {
        let stem = &bytes[..bytes.len().min(MAGIC_STEM.len())];
        if stem != &MAGIC_STEM[..stem.len()] {
            return Err(ScanError::NotALog);
        }
        if let Some(format) = bytes.get(6..8)
            && format != &MAGIC[6..]
        {
            return Err(ScanError::Format(u16::from_be_bytes([
                format[0], format[1],
            ])));
        }
        match bytes.get(..FILE_HEADER) {
            // Shorter than its header: a creation that never finished.
            None => None,
            Some(header) if le_u32(header, 16) != Some(crc32c::crc32c(&header[..16])) => {
                return Err(ScanError::BadHeader);
            }
            Some(header) => le_u64(header, 8),
        }
    };
    let Some(salt) = salt else {
        return Ok(Scan {
            records: Vec::new(),
            valid_len: 0,
            salt: None,
        });
    };
    let mut records = Vec::new();
    let mut offset = FILE_HEADER;
    while offset < bytes.len() {
        match frame_at(bytes, salt, offset).and_then(|payload| {
            decode_payload(payload, &mut records)?;
            Ok(payload.len())
        }) {
            Ok(len) => offset += FRAME_HEADER + len,
            Err(reason) => {
                if (offset + 1..bytes.len()).any(|later| frame_at(bytes, salt, later).is_ok()) {
                    return Err(ScanError::Corrupt { offset, reason });
                }
                break;
            }
        }
    }
    Ok(Scan {
        records,
        valid_len: offset,
        salt: Some(salt),
    })
}

/// The payload of the frame starting at `offset`, if its length fits and its checksum matches.
fn frame_at(bytes: &[u8], salt: u64, offset: usize) -> Result<&[u8], String> {
    let header = bytes
        .get(offset..offset + FRAME_HEADER)
        .ok_or("frame header cut short")?;
    let crc = le_u32(header, 0).unwrap_or_default();
    let len = le_u32(header, 4).unwrap_or_default() as usize;
    if le_u32(header, 8) != Some(position_tag(salt, offset as u64)) {
        return Err("frame tag does not match its position (not a frame written here)".into());
    }
    if len < RECORD_FIXED {
        return Err(format!("frame length {len} is too short for a record"));
    }
    let payload = bytes
        .get(offset + FRAME_HEADER..offset + FRAME_HEADER + len)
        .ok_or_else(|| format!("frame of {len} bytes runs past the end of the file"))?;
    // More cheap checks before the checksum: scanning a torn tail for later frames tries every
    // offset.
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

    const SALT: u64 = 0x1122_3344_5566_7700;

    fn log_of(groups: &[&[(&str, &str, u64)]]) -> Vec<u8> {
        salted_log(SALT, groups)
    }

    fn salted_log(salt: u64, groups: &[&[(&str, &str, u64)]]) -> Vec<u8> {
        let mut log = Vec::new();
        encode_header(&mut log, salt);
        for group in groups {
            let mut payload = Vec::new();
            for (key, value, version) in *group {
                encode_record(&mut payload, key, value, *version, 0, Some(&[7; 16]));
            }
            let offset = log.len() as u64;
            encode_frame(&mut log, &payload, salt, offset);
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

    /// Anything but a (prefix of the) magic is not our file; another format is named; a header
    /// cut short is a creation that never finished.
    #[test]
    fn foreign_files_and_other_formats_are_refused() {
        assert_eq!(scan(b"hello world").unwrap_err(), ScanError::NotALog);
        assert_eq!(scan(b"x").unwrap_err(), ScanError::NotALog);
        assert_eq!(
            scan(b"KVCLOG\x00\x01 old frames").unwrap_err(),
            ScanError::Format(1)
        );
        assert!(scan(&MAGIC[..3]).unwrap().salt.is_none());
        assert!(scan(&[0; FILE_HEADER]).unwrap().salt.is_none());
        let mut damaged = log_of(&[&[("a", "1", 1)]]);
        damaged[9] ^= 1;
        assert_eq!(scan(&damaged).unwrap_err(), ScanError::BadHeader);
        assert_eq!(scan(&[0; FILE_HEADER + 1]).unwrap_err(), ScanError::NotALog);
        assert!(
            scan(&log_of(&[])[..FILE_HEADER - 1])
                .unwrap()
                .salt
                .is_none()
        );
        assert_eq!(scan(&log_of(&[])).unwrap().salt, Some(SALT));
    }

    /// A frame is valid only at the offset and in the file it was written for: a value holding a
    /// copy of a log inside a torn last frame is still a torn tail, not corruption.
    #[test]
    fn frames_copied_elsewhere_do_not_count() {
        // Two frames, valid as the start of a log with this salt, whose tags and checksums all
        // happen to be UTF-8, so they can be stored as a value in a log with the same salt.
        let (salt, frames) = (0..1_000u64)
            .flat_map(|salt| (0..100).map(move |i| (salt, i.to_string())))
            .find_map(|(salt, value)| {
                let inner = salted_log(salt, &[&[("a", &value, 1)], &[("a", &value, 2)]]);
                Some((salt, String::from_utf8(inner[FILE_HEADER..].to_vec()).ok()?))
            })
            .expect("some salt and value give UTF-8 frame headers");
        let mut log = salted_log(salt, &[&[("k", "0", 1)], &[("k", &frames, 2)]]);
        let first_end = salted_log(salt, &[&[("k", "0", 1)]]).len();
        // A torn last frame: its length field says more bytes follow than the file holds.
        log.truncate(log.len() - 1);
        let scan = scan(&log).expect("a torn tail, not corruption");
        assert_eq!(scan.valid_len, first_end);
        assert_eq!(scan.records.len(), 1);

        // The same frame bytes moved to another offset, or into a file with another salt, fail.
        let frame = &log_of(&[&[("a", "1", 1)]])[FILE_HEADER..];
        let mut moved = log_of(&[]);
        moved.push(0);
        moved.extend_from_slice(frame);
        assert!(frame_at(&moved, SALT, FILE_HEADER + 1).is_err());
        let mut salted = Vec::new();
        encode_header(&mut salted, SALT + 1);
        salted.extend_from_slice(frame);
        assert!(frame_at(&salted, SALT + 1, FILE_HEADER).is_err());
        assert!(frame_at(&log_of(&[&[("a", "1", 1)]]), SALT, FILE_HEADER).is_ok());
    }
}
