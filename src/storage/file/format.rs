//! The on-disk layout of the log: a header, then frames of records, each frame checked by a
//! CRC32C.
//!
//! A frame holds one *commit group*: every record that one fsync made durable. The committer
//! writes a frame and syncs it before it writes the next, so after a crash only the last frame
//! can be incomplete, and a frame that fails its check with a valid frame after it can only be
//! corruption of data that was already durable; so is a damaged tail longer than the one frame it
//! could be. Checking whole groups (not single records) is
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

use std::io::{self, Read};

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

/// The largest frame the committer writes, unless one record alone is larger. Each frame gets its
/// own fsync, which keeps "only the last frame can be torn" true for very large batches too.
pub(crate) const MAX_FRAME_BYTES: usize = 16 << 20;

/// No frame's payload is larger: frames are cut at [`MAX_FRAME_BYTES`] (compaction's after the
/// record that crosses it), and a record is at most [`MAX_RECORD_BYTES`].
const MAX_PAYLOAD_BYTES: usize = MAX_FRAME_BYTES + MAX_RECORD_BYTES;

/// How much the search behind a damaged frame reads at a time.
const SEARCH_CHUNK: usize = 1 << 20;

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

/// Where reading a log ended.
#[derive(Debug)]
pub(crate) struct Scan {
    /// Where the valid log ends; bytes after it are a torn tail to cut off.
    pub(crate) valid_len: u64,
    /// The file's salt.
    pub(crate) salt: u64,
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
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The bytes after a damaged frame, with no valid frame among them, are more than one
    /// interrupted write can leave: lost data, not a torn write.
    LongTail {
        /// Byte offset of the damaged frame.
        offset: u64,
        /// Bytes from there to the end of the file.
        tail: u64,
        /// The most an interrupted write could have left.
        most: u64,
    },
    /// The caller refused a record (see [`scan`]).
    Refused(String),
    /// Reading the file failed.
    Io(String),
}

/// Reads a log of `len` bytes from `file`, one frame at a time, handing every record of the
/// valid prefix to `on_record` in log order; returns where that prefix ends, or `None` for a
/// file too short to hold its header (a creation that never finished, so nothing in it was ever
/// acknowledged). Memory use is one frame, not the file. An error from `on_record` stops the scan as [`ScanError::Refused`].
///
/// A damaged frame is a torn tail when no valid frame follows it anywhere in the file; otherwise
/// it is corruption of durable data and the log is refused. That search streams too.
pub(crate) fn scan(
    mut file: impl Read,
    len: u64,
    mut on_record: impl FnMut(Snapshot) -> Result<(), String>,
) -> Result<Option<Scan>, ScanError> {
    let io = |e: io::Error| ScanError::Io(e.to_string());
    let mut header = [0; FILE_HEADER];
    let got = read_up_to(&mut file, &mut header).map_err(io)?;
    if (got as u64) < len.min(FILE_HEADER as u64) {
        return Err(ScanError::Io(format!(
            "the file ended after {got} of its {len} bytes"
        )));
    }
    let Some(salt) = check_file_header(&header[..got], len)? else {
        return Ok(None);
    };
    let mut offset = FILE_HEADER as u64;
    let mut frame = Vec::new();
    loop {
        frame.clear();
        match read_frame(&mut file, &mut frame, salt, offset, len).map_err(io)? {
            None => break,
            Some(Ok(records)) => {
                for record in records {
                    on_record(record).map_err(ScanError::Refused)?;
                }
                offset += frame.len() as u64;
            }
            Some(Err(reason)) => {
                // `frame` holds what was read of the damaged frame; the rest follows in `file`.
                let after = valid_frame_after(&frame, &mut file, salt, offset, len, SEARCH_CHUNK);
                if after.map_err(io)? {
                    return Err(ScanError::Corrupt { offset, reason });
                }
                let most = longest_torn_frame(&frame, salt, offset);
                if len - offset > most {
                    return Err(ScanError::LongTail {
                        offset,
                        tail: len - offset,
                        most,
                    });
                }
                break;
            }
        }
    }
    Ok(Some(Scan {
        valid_len: offset,
        salt,
    }))
}

/// The salt of a log whose first bytes are `header` (all of them, if the file of `len` bytes is
/// shorter than a header), or `None` for a creation that never finished.
fn check_file_header(header: &[u8], len: u64) -> Result<Option<u64>, ScanError> {
    // A file no longer than the header holds no frame, so nothing in it was ever acknowledged:
    // it is a creation that never finished. Zeros there are one the power cut before its sync
    // (the file size landed, the data did not).
    if len <= FILE_HEADER as u64 && header.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let stem = &header[..header.len().min(MAGIC_STEM.len())];
    if stem != &MAGIC_STEM[..stem.len()] {
        return Err(ScanError::NotALog);
    }
    if let Some(format) = header.get(6..8)
        && format != &MAGIC[6..]
    {
        return Err(ScanError::Format(u16::from_be_bytes([
            format[0], format[1],
        ])));
    }
    if header.len() < FILE_HEADER {
        return Ok(None);
    }
    if le_u32(header, 16) != Some(crc32c::crc32c(&header[..16])) {
        return Err(ScanError::BadHeader);
    }
    Ok(le_u64(header, 8))
}

/// Reads the next frame, starting at `offset` of a file of `len` bytes, into `frame` (header
/// included). `None` at the end of the file; otherwise the frame's records, or why it is
/// damaged (with `frame` holding whatever was read of it).
fn read_frame(
    file: &mut impl Read,
    frame: &mut Vec<u8>,
    salt: u64,
    offset: u64,
    len: u64,
) -> io::Result<Option<Result<Vec<Snapshot>, String>>> {
    frame.resize(FRAME_HEADER, 0);
    let got = read_up_to(file, frame)?;
    frame.truncate(got);
    if got == 0 {
        return Ok(None);
    }
    if got < FRAME_HEADER {
        return Ok(Some(Err("frame header cut short".into())));
    }
    let payload_len = u64::from(le_u32(frame, 4).unwrap_or_default());
    // Checked before reading (and allocating) the payload: a damaged length may be huge.
    if let Err(reason) = check_frame_header(frame, salt, offset) {
        return Ok(Some(Err(reason)));
    }
    if offset + (FRAME_HEADER as u64) + payload_len > len {
        return Ok(Some(Err(format!(
            "frame of {payload_len} bytes runs past the end of the file"
        ))));
    }
    frame.resize(FRAME_HEADER + payload_len as usize, 0);
    let got = read_up_to(file, &mut frame[FRAME_HEADER..])?;
    if got < payload_len as usize {
        frame.truncate(FRAME_HEADER + got);
        return Ok(Some(Err("the file ended inside a frame".into())));
    }
    let mut records = Vec::new();
    Ok(Some(
        check_frame(frame)
            .and_then(|()| decode_payload(&frame[FRAME_HEADER..], &mut records))
            .map(|()| records),
    ))
}

/// Whether `bytes[at..]` starts a valid frame written at `offset` of the file with this `salt`:
/// the plain (whole-buffer) form of the search [`valid_frame_after`] does as a stream.
#[cfg(test)]
fn frame_at(bytes: &[u8], at: usize, salt: u64, offset: u64) -> Result<(), String> {
    let header = bytes
        .get(at..at + FRAME_HEADER)
        .ok_or("frame header cut short")?;
    check_frame_header(header, salt, offset)?;
    let len = le_u32(header, 4).unwrap_or_default() as usize;
    let frame = bytes
        .get(at..at + FRAME_HEADER + len)
        .ok_or_else(|| format!("frame of {len} bytes runs past the end of the file"))?;
    check_frame(frame)
}

/// The checks a frame's header allows on its own; the tag first, which is cheap and, for bytes
/// that were not written as a frame at this position, fails in all but one case in 2³².
fn check_frame_header(header: &[u8], salt: u64, offset: u64) -> Result<(), String> {
    if le_u32(header, 8) != Some(position_tag(salt, offset)) {
        return Err("frame tag does not match its position (not a frame written here)".into());
    }
    let len = le_u32(header, 4).unwrap_or_default() as usize;
    if len < RECORD_FIXED {
        return Err(format!("frame length {len} is too short for a record"));
    }
    if len > MAX_PAYLOAD_BYTES {
        return Err(format!(
            "frame length {len} is larger than any frame the log writes"
        ));
    }
    Ok(())
}

/// Whether `head`, the first bytes of a payload of `len` bytes (at least [`RECORD_FIXED`] of
/// them), can start a record: its length fits, and its flags are known.
fn plausible_payload(head: &[u8], len: usize) -> bool {
    let first = le_u32(head, 0).unwrap_or_default() as usize;
    first
        .checked_add(4)
        .is_some_and(|first| (RECORD_FIXED..=len).contains(&first))
        && head.get(20).is_some_and(|&flags| flags <= HAS_REQUEST_ID)
}

/// Whether a valid frame starts anywhere after the damaged frame at `offset` of a file of `len`
/// bytes. `seen` holds the bytes already read from `offset` on; the rest follows in `file`, read
/// `chunk` bytes at a time.
///
/// It streams: every position is tested by its tag, and the rare positions whose header passes
/// are checksummed as their payload goes by, so memory is one read chunk plus a few bytes per
/// frame being checked, whatever the size of the file.
fn valid_frame_after(
    seen: &[u8],
    file: &mut impl Read,
    salt: u64,
    offset: u64,
    len: u64,
    chunk: usize,
) -> io::Result<bool> {
    /// A header that passed its checks, waiting for the rest of its frame.
    struct Candidate {
        end: u64,
        fed_to: u64,
        stored_crc: u32,
        crc: u32,
        payload_len: usize,
        head: Vec<u8>,
    }
    let mut candidates: Vec<Candidate> = Vec::new();
    // `window` holds the file's bytes from `base` on; positions before `next` are tested.
    let mut window = seen.to_vec();
    let mut base = offset;
    let mut next = offset + 1;
    let mut chunk = vec![0; chunk];
    loop {
        let window_end = base + window.len() as u64;
        while next + FRAME_HEADER as u64 <= window_end {
            let at = (next - base) as usize;
            let header = &window[at..at + FRAME_HEADER];
            let payload_len = le_u32(header, 4).unwrap_or_default() as usize;
            let end = next + (FRAME_HEADER + payload_len) as u64;
            if check_frame_header(header, salt, next).is_ok() && end <= len {
                candidates.push(Candidate {
                    end,
                    fed_to: next + FRAME_HEADER as u64,
                    stored_crc: le_u32(header, 0).unwrap_or_default(),
                    crc: crc32c::crc32c(&header[4..]),
                    payload_len,
                    head: Vec::with_capacity(RECORD_FIXED),
                });
            }
            next += 1;
        }
        for candidate in &mut candidates {
            let to = candidate.end.min(window_end);
            if candidate.fed_to < to {
                let bytes = &window[(candidate.fed_to - base) as usize..(to - base) as usize];
                candidate.crc = crc32c::crc32c_append(candidate.crc, bytes);
                let wanted = RECORD_FIXED - candidate.head.len();
                candidate
                    .head
                    .extend_from_slice(&bytes[..wanted.min(bytes.len())]);
                candidate.fed_to = to;
            }
        }
        let valid = candidates.iter().any(|c| {
            c.fed_to == c.end && c.crc == c.stored_crc && plausible_payload(&c.head, c.payload_len)
        });
        if valid {
            return Ok(true);
        }
        candidates.retain(|c| c.fed_to < c.end);
        // Keep only the bytes of positions not tested yet (fewer than a frame header).
        let tested = ((next - base) as usize).min(window.len());
        window.drain(..tested);
        base += tested as u64;
        let got = read_up_to(file, &mut chunk)?;
        if got == 0 {
            // Candidates still open end past the bytes the file really has.
            return Ok(false);
        }
        window.extend_from_slice(&chunk[..got]);
    }
}

/// The checks of a whole frame (header and payload) whose header passed
/// [`check_frame_header`].
fn check_frame(frame: &[u8]) -> Result<(), String> {
    let (header, payload) = frame.split_at(FRAME_HEADER);
    if !plausible_payload(payload, payload.len()) {
        return Err("frame does not start with a record".into());
    }
    let crc = le_u32(header, 0).unwrap_or_default();
    let actual = crc32c::crc32c_append(crc32c::crc32c(&header[4..]), payload);
    if actual != crc {
        return Err(format!(
            "checksum mismatch (stored {crc:#010x}, computed {actual:#010x})"
        ));
    }
    Ok(())
}

/// The most bytes an interrupted write of the frame starting with `frame` (what was read of it)
/// can leave: the frame's own size if its header is intact, else the usual largest frame.
///
/// Frames are synced one by one, so a torn tail is at most one frame. A longer run of bytes with
/// no valid frame in it is data lost some other way (a zeroed region, a damaged file system),
/// and cutting it off would drop acknowledged writes without a word.
fn longest_torn_frame(frame: &[u8], salt: u64, offset: u64) -> u64 {
    let declared = frame
        .get(..FRAME_HEADER)
        .filter(|header| check_frame_header(header, salt, offset).is_ok())
        .and_then(|header| le_u32(header, 4));
    (FRAME_HEADER + declared.map_or(MAX_FRAME_BYTES, |len| len as usize)) as u64
}

/// Reads until `buf` is full or the file ends; returns how many bytes it read.
fn read_up_to(file: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Decodes the records of a checksummed payload. A payload that passes its checksum but does not
/// parse was written wrong, which is reported like any other damage.
fn decode_payload(mut payload: &[u8], out: &mut Vec<Snapshot>) -> Result<(), String> {
    while !payload.is_empty() {
        let len = le_u32(payload, 0).ok_or("record cut short inside its frame")? as usize;
        let record = len
            .checked_add(4)
            .and_then(|len| payload.get(..len))
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
        payload = &payload[record.len()..];
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

    /// Scans a whole in-memory log with a header, keeping its records.
    fn scan_all(bytes: &[u8]) -> Result<(Scan, Vec<Snapshot>), ScanError> {
        let mut records = Vec::new();
        let scan = scan(bytes, bytes.len() as u64, |record| {
            records.push(record);
            Ok(())
        })?;
        Ok((scan.expect("a log with a header"), records))
    }

    /// Where the valid prefix of `bytes` ends, or why it is refused.
    fn valid_len(bytes: &[u8]) -> Result<usize, ScanError> {
        scan_all(bytes).map(|(scan, _)| scan.valid_len as usize)
    }

    /// Records come back exactly, including the request id, across frames of several records.
    #[test]
    fn round_trips_groups() {
        let log = log_of(&[&[("a", "1", 1), ("b", "x,y\n\0", 1)], &[("a", "2", 2)]]);
        let (scan, records) = scan_all(&log).unwrap();
        assert_eq!(scan.valid_len, log.len() as u64);
        let got: Vec<_> = records
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
            let (scan, records) = scan_all(&log[..cut]).unwrap();
            assert_eq!(scan.valid_len, first_end as u64, "cut at {cut}");
            assert_eq!(records.len(), 1, "cut at {cut}");
        }
    }

    /// A last frame whose length field claims gigabytes is a torn tail; a record the caller
    /// refuses stops the scan.
    #[test]
    fn huge_lengths_and_refused_records() {
        let mut log = log_of(&[&[("a", "1", 1)], &[("a", "2", 2)]]);
        let second = log_of(&[&[("a", "1", 1)]]).len();
        log[second + 7] = 0xff;
        assert_eq!(valid_len(&log), Ok(second));

        let log = log_of(&[&[("a", "1", 1)], &[("a", "2", 2)]]);
        let mut seen = 0;
        let refused = scan(log.as_slice(), log.len() as u64, |record| {
            seen += 1;
            if record.version == 2 {
                Err("no".into())
            } else {
                Ok(())
            }
        });
        assert_eq!(refused.unwrap_err(), ScanError::Refused("no".into()));
        assert_eq!(seen, 2);
    }

    /// The streaming search behind a damaged frame finds a later valid frame exactly when the
    /// whole-buffer search does: random logs, random damage, random start offsets, however the
    /// bytes are split between what was already read and the read chunks.
    #[test]
    fn streaming_search_agrees_with_the_whole_buffer() {
        use rand::{Rng, SeedableRng, rngs::SmallRng};
        let mut rng = SmallRng::seed_from_u64(6);
        let mut outcomes = [0; 2];
        for round in 0..400 {
            let values: Vec<String> = (0..rng.random_range(1..6))
                .map(|_| "v".repeat(rng.random_range(0..120)))
                .collect();
            let groups: Vec<Vec<(&str, &str, u64)>> = values
                .iter()
                .enumerate()
                .map(|(i, v)| vec![("k", v.as_str(), i as u64 + 1)])
                .collect();
            let groups: Vec<&[(&str, &str, u64)]> = groups.iter().map(Vec::as_slice).collect();
            let mut log = log_of(&groups);
            for _ in 0..rng.random_range(0..3) {
                let at = rng.random_range(FILE_HEADER..log.len());
                log[at] ^= 1 << rng.random_range(0..8);
            }
            log.truncate(rng.random_range(FILE_HEADER + 1..=log.len()));
            let len = log.len();
            let offset = rng.random_range(FILE_HEADER..len);
            let expected = (offset + 1..len).any(|at| frame_at(&log, at, SALT, at as u64).is_ok());
            let seen = rng.random_range(0..=len - offset);
            let chunk = rng.random_range(1..64);
            let mut rest = &log[offset + seen..];
            let found = valid_frame_after(
                &log[offset..offset + seen],
                &mut rest,
                SALT,
                offset as u64,
                len as u64,
                chunk,
            )
            .unwrap();
            assert_eq!(
                found, expected,
                "round {round}: offset {offset}, seen {seen}, chunk {chunk}"
            );
            outcomes[usize::from(found)] += 1;
        }
        assert!(
            outcomes.iter().all(|&n| n >= 50),
            "both answers are exercised: {outcomes:?}"
        );
    }

    /// Bytes after a damaged frame that are more than the frame itself could leave are refused,
    /// not cut off: only the last frame can be torn, and only by its own size.
    #[test]
    fn a_tail_longer_than_a_torn_frame_is_refused() {
        let mut log = log_of(&[&[("a", "1", 1)], &[("a", "2", 2)]]);
        let second = log_of(&[&[("a", "1", 1)]]).len();
        let frame_len = log.len() - second;
        // The last frame's payload damaged, then zeros where more frames were.
        log[second + FRAME_HEADER + 5] ^= 1;
        assert_eq!(
            valid_len(&log),
            Ok(second),
            "one damaged frame is a torn tail"
        );
        log.extend_from_slice(&[0; 4096]);
        assert_eq!(
            valid_len(&log),
            Err(ScanError::LongTail {
                offset: second as u64,
                tail: (frame_len + 4096) as u64,
                most: frame_len as u64,
            })
        );
    }

    /// A damaged frame followed by a valid one is corruption, reported at the damaged offset.
    #[test]
    fn damage_before_valid_frames_is_refused() {
        let mut log = log_of(&[&[("a", "1", 1)], &[("a", "2", 2)], &[("a", "3", 3)]]);
        let second = log_of(&[&[("a", "1", 1)]]).len();
        log[second + 10] ^= 0x40;
        match valid_len(&log) {
            Err(ScanError::Corrupt { offset, .. }) => assert_eq!(offset, second as u64),
            other => panic!("expected corruption, got {other:?}"),
        }
    }

    /// Anything but a (prefix of the) magic is not our file; another format is named; a header
    /// cut short is a creation that never finished.
    #[test]
    fn foreign_files_and_other_formats_are_refused() {
        let salt = |bytes: &[u8]| {
            let scanned = scan(bytes, bytes.len() as u64, |_| Ok(()));
            scanned.map(|scan| scan.map(|scan| scan.salt))
        };
        assert_eq!(salt(b"hello world"), Err(ScanError::NotALog));
        assert_eq!(salt(b"x"), Err(ScanError::NotALog));
        assert_eq!(
            salt(b"KVCLOG\x00\x01 old frames"),
            Err(ScanError::Format(1))
        );
        assert_eq!(salt(&MAGIC[..3]), Ok(None));
        assert_eq!(salt(&[0; FILE_HEADER]), Ok(None));
        let mut damaged = log_of(&[&[("a", "1", 1)]]);
        damaged[9] ^= 1;
        assert_eq!(salt(&damaged), Err(ScanError::BadHeader));
        assert_eq!(salt(&[0; FILE_HEADER + 1]), Err(ScanError::NotALog));
        assert_eq!(salt(&log_of(&[])[..FILE_HEADER - 1]), Ok(None));
        assert_eq!(salt(&log_of(&[])), Ok(Some(SALT)));
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
        let (scan, records) = scan_all(&log).expect("a torn tail, not corruption");
        assert_eq!(scan.valid_len, first_end as u64);
        assert_eq!(records.len(), 1);

        // The same frame bytes moved to another offset, or into a file with another salt, fail.
        let frame = &log_of(&[&[("a", "1", 1)]])[FILE_HEADER..];
        let mut moved = log_of(&[]);
        moved.push(0);
        moved.extend_from_slice(frame);
        let at = FILE_HEADER + 1;
        assert!(frame_at(&moved, at, SALT, at as u64).is_err());
        let mut salted = Vec::new();
        encode_header(&mut salted, SALT + 1);
        salted.extend_from_slice(frame);
        let at = FILE_HEADER;
        assert!(frame_at(&salted, at, SALT + 1, at as u64).is_err());
        assert!(frame_at(&log_of(&[&[("a", "1", 1)]]), at, SALT, at as u64).is_ok());
    }
}
