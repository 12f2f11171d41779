//! A run's log on disk: one append-only file of checksummed frames per run.
//!
//! Why files and not LMDB records: an LMDB commit copies every page it touches and flushes
//! twice, which held a streaming log to a fraction of what the disk takes. A frame is written
//! once, where the file ends, and a batch of frames costs one `fdatasync`. LMDB keeps only a
//! sparse index (run and log offset to file position, `LOG_INDEX`) that spares a reader a
//! scan from the file's start; the file alone is the truth and the index is never ahead of it.
//!
//! A frame is `len: u32 | crc32: u32 | offset: u64 | flags: u32 | data_len: u32 | payload`,
//! little-endian. The payload is the log bytes, then what says whose they are: the time stamp
//! (`i64`) and the spans (a varint count, then each `len << 2 | stream` as a varint). Bytes
//! first, so a reader takes them as read, without copying; `offset` is where the first byte
//! lies in the log, and the checksum covers everything after itself. A reader stops at the
//! first frame that is short, fails its checksum or does not continue the log where the one
//! before ended. After a crash that is the torn tail: nothing past it is served, and the next
//! writer cuts the file back to it before appending.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use tinyci_store::records::{LogRecord, LogSpan};

use crate::MAX_LOG_CHUNK;

/// Bytes of a frame's header.
pub(crate) const HEADER_LEN: usize = 24;

/// The most a frame stores beyond its log bytes: the header, then the record's time stamp,
/// span count and first span (varints at their longest). The size limit counts it for
/// every frame a log's writes start (see `LogWriter::accept`).
pub(crate) const FRAME_COST: u64 = HEADER_LEN as u64 + 8 + 3 + 3;

/// What a switch of stream within a frame costs, at most: a span, one varint
/// (`len << 2 | stream`), one byte under 32 bytes and three up to 64 KiB.
pub(crate) const SPAN_COST: u64 = 3;

/// Flag of a frame after which the log takes nothing more: it ends with the line saying it
/// was cut at its size limit.
const FLAG_CUT: u32 = 1;

/// The longest payload a valid frame has: a full record whose every byte is a span of its
/// own. A header claiming more is not a frame.
const MAX_PAYLOAD: usize = 3 * MAX_LOG_CHUNK + 64;

/// A frame boundary: where in the log and where in the file the next frame starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Position {
    /// Offset in the log.
    pub(crate) offset: u64,
    /// Byte position in the file.
    pub(crate) pos: u64,
}

/// One frame read back.
#[derive(Debug)]
pub(crate) struct Frame {
    /// Where it starts.
    pub(crate) at: Position,
    /// Where the frame after it starts.
    pub(crate) end: Position,
    /// The log was cut with this frame.
    pub(crate) cut: bool,
    pub(crate) record: LogRecord,
}

/// What a frame holds besides its log bytes: what goes before them and after them. The log
/// bytes themselves are written from where they lie (see [`append_durably`]), not copied
/// into a frame buffer first.
#[derive(Debug)]
pub(crate) struct FrameShell {
    /// `len | crc32 | offset | flags | data_len`.
    pub(crate) head: [u8; HEADER_LEN],
    /// The time stamp and the spans.
    pub(crate) tail: Vec<u8>,
    /// The whole frame's length: head, log bytes and tail.
    pub(crate) len: u64,
}

/// The head and tail of a frame holding `pieces` (each a stream's bytes, in order), starting
/// at log offset `offset` and stamped `timestamp_micros`. Consecutive pieces of one stream
/// share a span.
pub(crate) fn frame_shell<'a>(
    offset: u64,
    cut: bool,
    timestamp_micros: i64,
    pieces: impl IntoIterator<Item = (u8, &'a [u8])> + Clone,
) -> FrameShell {
    let flags = if cut { FLAG_CUT } else { 0 };
    let mut spans: Vec<LogSpan> = Vec::new();
    let mut data_len = 0usize;
    for (stream, bytes) in pieces.clone() {
        if bytes.is_empty() {
            continue;
        }
        data_len += bytes.len();
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        match spans.last_mut() {
            Some(last) if last.stream == stream => last.len = last.len.saturating_add(len),
            _ => spans.push(LogSpan { stream, len }),
        }
    }
    let mut tail = Vec::with_capacity(8 + 3 * (spans.len() + 1));
    tail.extend_from_slice(&timestamp_micros.to_le_bytes());
    push_varint(&mut tail, spans.len() as u64);
    for span in spans {
        push_varint(&mut tail, u64::from(u32::from(span)));
    }
    let payload = data_len + tail.len();
    let mut head = [0u8; HEADER_LEN];
    head[0..4].copy_from_slice(&u32::try_from(payload).unwrap_or(u32::MAX).to_le_bytes());
    head[8..16].copy_from_slice(&offset.to_le_bytes());
    head[16..20].copy_from_slice(&flags.to_le_bytes());
    head[20..24].copy_from_slice(&u32::try_from(data_len).unwrap_or(u32::MAX).to_le_bytes());
    // The checksum covers everything after itself, in the order the bytes lie in the file.
    let mut crc = crc32fast::Hasher::new();
    crc.update(&head[8..]);
    for (_, bytes) in pieces {
        crc.update(bytes);
    }
    crc.update(&tail);
    head[4..8].copy_from_slice(&crc.finalize().to_le_bytes());
    FrameShell {
        head,
        tail,
        len: (HEADER_LEN + payload) as u64,
    }
}

/// Appends a frame holding `pieces` (see [`frame_shell`]) to `out`; returns its length.
pub(crate) fn encode_frame<'a>(
    offset: u64,
    cut: bool,
    timestamp_micros: i64,
    pieces: impl IntoIterator<Item = (u8, &'a [u8])> + Clone,
    out: &mut Vec<u8>,
) -> u64 {
    let frame = frame_shell(offset, cut, timestamp_micros, pieces.clone());
    out.extend_from_slice(&frame.head);
    for (_, bytes) in pieces {
        out.extend_from_slice(bytes);
    }
    out.extend_from_slice(&frame.tail);
    frame.len
}

/// The frame of a stored record (one piece per span).
pub(crate) fn encode_record(offset: u64, record: &LogRecord, out: &mut Vec<u8>) -> u64 {
    let mut at = 0usize;
    let pieces: Vec<(u8, &[u8])> = record
        .spans
        .iter()
        .map(|span| {
            let end = (at + span.len as usize).min(record.data.len());
            let piece = (span.stream, &record.data[at.min(end)..end]);
            at = end;
            piece
        })
        .collect();
    encode_frame(offset, false, record.timestamp_micros, pieces, out)
}

/// The record a frame's payload holds, its bytes being the payload's first `data_len`; `None`
/// when it is not one.
fn decode_payload(mut payload: Vec<u8>, data_len: usize) -> Option<LogRecord> {
    let meta = payload.get(data_len..)?;
    let (timestamp, mut rest) = meta.split_first_chunk::<8>()?;
    let timestamp_micros = i64::from_le_bytes(*timestamp);
    let count = take_varint(&mut rest)?;
    let mut spans = Vec::with_capacity(usize::try_from(count).ok()?.min(rest.len()));
    for _ in 0..count {
        let packed = u32::try_from(take_varint(&mut rest)?).ok()?;
        spans.push(LogSpan::from(packed));
    }
    if !rest.is_empty() {
        return None;
    }
    payload.truncate(data_len);
    Some(LogRecord {
        timestamp_micros,
        spans,
        data: payload,
    })
}

fn push_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn take_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Reads a log file's frames in order from a frame boundary, stopping at the first that is
/// not valid.
#[derive(Debug)]
pub(crate) struct FrameReader {
    file: BufReader<File>,
    next: Position,
    /// Set when reading stopped at bytes that are not a valid frame (a torn tail).
    torn: bool,
}

impl FrameReader {
    /// Reads `path` from `from`; `None` when there is no such file (an empty log).
    pub(crate) fn open(path: &Path, from: Position) -> io::Result<Option<Self>> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        // A position past the file's end (an index entry for bytes the file no longer
        // holds) leads to no frame: a torn start, which the caller reads again from 0.
        let past_end = file.metadata()?.len() < from.pos;
        let mut file = BufReader::with_capacity(64 * 1024, file);
        file.seek(SeekFrom::Start(from.pos))?;
        Ok(Some(Self {
            file,
            next: from,
            torn: past_end,
        }))
    }

    /// Where the frame after the last one read starts (the end of the valid log, once
    /// [`FrameReader::next_frame`] said `None`).
    pub(crate) fn position(&self) -> Position {
        self.next
    }

    /// Whether reading stopped at bytes that are not a valid frame.
    pub(crate) fn torn(&self) -> bool {
        self.torn
    }

    /// The next frame, or `None` at the end of the file or at the first invalid frame.
    pub(crate) fn next_frame(&mut self) -> io::Result<Option<Frame>> {
        if self.torn {
            return Ok(None);
        }
        let mut header = [0u8; HEADER_LEN];
        match read_full(&mut self.file, &mut header)? {
            0 => return Ok(None),
            n if n < HEADER_LEN => return Ok(self.stop()),
            _ => {}
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let mut offset = [0u8; 8];
        offset.copy_from_slice(&header[8..16]);
        let offset = u64::from_le_bytes(offset);
        let flags = u32::from_le_bytes([header[16], header[17], header[18], header[19]]);
        let data_len = u32::from_le_bytes([header[20], header[21], header[22], header[23]]);
        if len > MAX_PAYLOAD || offset != self.next.offset {
            return Ok(self.stop());
        }
        // Read into spare capacity: a zeroed buffer would be written twice.
        let mut payload = Vec::with_capacity(len);
        (&mut self.file)
            .take(len as u64)
            .read_to_end(&mut payload)?;
        if payload.len() < len {
            return Ok(self.stop());
        }
        let mut check = crc32fast::Hasher::new();
        check.update(&header[8..]);
        check.update(&payload);
        if check.finalize() != crc {
            return Ok(self.stop());
        }
        let Some(record) = decode_payload(payload, data_len as usize) else {
            return Ok(self.stop());
        };
        let spanned: u64 = record.spans.iter().map(|s| u64::from(s.len)).sum();
        if spanned != record.data.len() as u64 {
            return Ok(self.stop());
        }
        let at = self.next;
        let end = Position {
            offset: at.offset + record.data.len() as u64,
            pos: at.pos + (HEADER_LEN + len) as u64,
        };
        self.next = end;
        Ok(Some(Frame {
            at,
            end,
            cut: flags & FLAG_CUT != 0,
            record,
        }))
    }

    fn stop(&mut self) -> Option<Frame> {
        self.torn = true;
        None
    }
}

/// Reads until `buf` is full or the file ends; returns how much was read.
fn read_full(file: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
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

/// Where a log file's valid frames end, read from a frame boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scanned {
    pub(crate) end: Position,
    /// Where the last valid frame read starts, if the scan read any.
    pub(crate) last: Option<Position>,
    /// The last frame says the log was cut.
    pub(crate) cut: bool,
    /// Bytes follow the last valid frame (a torn tail).
    pub(crate) torn: bool,
    /// The file's length when scanned.
    pub(crate) file_len: u64,
}

/// Scans `path` from `from` to the end of its valid frames.
pub(crate) fn scan(path: &Path, from: Position) -> io::Result<Scanned> {
    let Some(mut reader) = FrameReader::open(path, from)? else {
        return Ok(Scanned {
            end: Position::default(),
            last: None,
            cut: false,
            torn: false,
            file_len: 0,
        });
    };
    let file_len = reader.file.get_ref().metadata()?.len();
    let (mut cut, mut last) = (false, None);
    while let Some(frame) = reader.next_frame()? {
        cut = frame.cut;
        last = Some(frame.at);
    }
    Ok(Scanned {
        end: reader.position(),
        last,
        cut,
        torn: reader.torn(),
        file_len,
    })
}

/// The directory of a site's log files: `<data dir>/logs/<run / 4096, hex>/<run>.log`, so no
/// directory holds more than 4,096 logs however long the history.
#[derive(Debug, Clone)]
pub(crate) struct LogFiles {
    dir: PathBuf,
}

impl LogFiles {
    /// The log files under `data_dir`, created if missing. Flushes the file system first:
    /// bytes a crashed site wrote but never synced may sit in the page cache, and from here
    /// on whatever a file holds is served as durable.
    pub(crate) fn open(data_dir: &Path) -> io::Result<Self> {
        let dir = data_dir.join("logs");
        std::fs::create_dir_all(&dir)?;
        let handle = File::open(&dir)?;
        nix::unistd::syncfs(&handle).map_err(io::Error::from)?;
        Ok(Self { dir })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of `run`'s log.
    pub(crate) fn path(&self, run: u64) -> PathBuf {
        self.dir
            .join(format!("{:04x}", run >> 12))
            .join(format!("{run}.log"))
    }

    /// Opens `run`'s log for appending, creating it (durably: its directory entries are
    /// synced) when it does not exist yet.
    pub(crate) fn open_for_append(&self, run: u64) -> io::Result<File> {
        let path = self.path(run);
        let shard = path.parent().unwrap_or(&self.dir);
        match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => return Ok(file),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        match std::fs::create_dir(shard) {
            Ok(()) => File::open(&self.dir)?.sync_all()?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        File::open(shard)?.sync_all()?;
        Ok(file)
    }

    /// Removes `run`'s log file; a log that has none is already gone.
    pub(crate) fn remove(&self, run: u64) -> io::Result<()> {
        match std::fs::remove_file(self.path(run)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every run with a log file, and the file's size.
    pub(crate) fn list(&self) -> io::Result<Vec<(u64, u64)>> {
        let mut found = Vec::new();
        for shard in std::fs::read_dir(&self.dir)? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for file in std::fs::read_dir(shard.path())? {
                let file = file?;
                let name = file.file_name();
                let Some(run) = name
                    .to_str()
                    .and_then(|n| n.strip_suffix(".log"))
                    .and_then(|n| n.parse::<u64>().ok())
                else {
                    continue;
                };
                found.push((run, file.metadata()?.len()));
            }
        }
        found.sort_unstable();
        Ok(found)
    }
}

/// Writes `parts`, one after another, at `pos` of `file` and makes them durable.
pub(crate) fn append_durably(
    file: &File,
    pos: u64,
    mut parts: &mut [io::IoSlice<'_>],
) -> io::Result<()> {
    use std::io::Write as _;
    // `writev` takes the frames' heads, tails and log bytes from where they lie (as many
    // calls as the slices need). The position is this handle's own: only the log's one
    // committing task writes through it, and readers open handles of their own.
    let mut file = file;
    file.seek(SeekFrom::Start(pos))?;
    while !parts.is_empty() {
        match file.write_vectored(parts) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => io::IoSlice::advance_slices(&mut parts, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn record(data: &[u8]) -> LogRecord {
        LogRecord {
            timestamp_micros: i64::MIN,
            spans: vec![LogSpan {
                stream: 1,
                len: u32::try_from(data.len()).unwrap(),
            }],
            data: data.to_vec(),
        }
    }

    fn encode(offset: u64, cut: bool, data: &[u8], out: &mut Vec<u8>) -> u64 {
        encode_frame(offset, cut, i64::MIN, [(1, data)], out)
    }

    #[test]
    fn a_frame_costs_at_most_frame_cost_beyond_its_bytes() {
        let mut out = Vec::new();
        let len = encode(u64::MAX, true, &[7; MAX_LOG_CHUNK], &mut out);
        assert_eq!(len, out.len() as u64);
        assert!(len <= MAX_LOG_CHUNK as u64 + FRAME_COST, "{len}");
    }

    #[test]
    fn a_frame_written_from_its_parts_is_the_frame_encoded_whole_past_the_iovec_limit() {
        // More parts than one `writev` takes (IOV_MAX is 1024 on Linux): the rest follow.
        let dir = tempfile::tempdir().unwrap();
        let pieces: Vec<(u8, &[u8])> = (0..3000).map(|i| ((i % 3) as u8, &b"yz"[..])).collect();
        let shell = frame_shell(11, true, 7, pieces.iter().copied());
        let mut parts = vec![io::IoSlice::new(&shell.head)];
        parts.extend(pieces.iter().map(|(_, bytes)| io::IoSlice::new(bytes)));
        parts.push(io::IoSlice::new(&shell.tail));
        let file = File::create(dir.path().join("1.log")).unwrap();
        append_durably(&file, 0, &mut parts).unwrap();
        let mut whole = Vec::new();
        let len = encode_frame(11, true, 7, pieces, &mut whole);
        assert_eq!(len, shell.len);
        assert_eq!(std::fs::read(dir.path().join("1.log")).unwrap(), whole);
    }

    #[test]
    fn every_byte_keeps_its_stream_and_a_switch_costs_a_span() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.log");
        let pieces: Vec<(u8, &[u8])> = (0..1000).map(|i| ((i % 2) as u8, &b"x"[..])).collect();
        let mut out = Vec::new();
        let len = encode_frame(5, false, 42, pieces, &mut out);
        assert!(len <= 1000 + 1000 * SPAN_COST + FRAME_COST, "{len}");
        std::fs::write(&path, &out).unwrap();
        let mut reader = FrameReader::open(&path, Position { offset: 5, pos: 0 })
            .unwrap()
            .unwrap();
        let frame = reader.next_frame().unwrap().unwrap();
        assert_eq!(frame.record.timestamp_micros, 42);
        assert_eq!(frame.record.spans.len(), 1000);
        assert!(
            frame
                .record
                .spans
                .iter()
                .enumerate()
                .all(|(i, s)| s.len == 1 && s.stream == (i % 2) as u8)
        );
        // A stored record reads back as it was.
        let stored = record(b"a record");
        out.clear();
        encode_record(9, &stored, &mut out);
        std::fs::write(&path, &out).unwrap();
        let mut reader = FrameReader::open(&path, Position { offset: 9, pos: 0 })
            .unwrap()
            .unwrap();
        assert_eq!(reader.next_frame().unwrap().unwrap().record, stored);
    }

    #[test]
    fn a_reader_stops_at_a_torn_or_corrupt_frame() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.log");
        let mut bytes = Vec::new();
        let first = encode(0, false, b"hello ", &mut bytes);
        encode(6, true, b"world", &mut bytes);
        let whole = bytes.len();
        std::fs::write(&path, &bytes).unwrap();
        let scanned = scan(&path, Position::default()).unwrap();
        assert_eq!(
            scanned,
            Scanned {
                end: Position {
                    offset: 11,
                    pos: whole as u64
                },
                last: Some(Position {
                    offset: 6,
                    pos: first
                }),
                cut: true,
                torn: false,
                file_len: whole as u64,
            }
        );
        // Every cut through the second frame leaves the first, and says the tail is torn.
        for keep in first as usize + 1..whole {
            std::fs::write(&path, &bytes[..keep]).unwrap();
            let scanned = scan(&path, Position::default()).unwrap();
            assert_eq!(
                scanned.end,
                Position {
                    offset: 6,
                    pos: first
                },
                "{keep}"
            );
            assert!(scanned.torn && !scanned.cut);
        }
        // A flipped bit anywhere in the second frame does the same.
        for at in first as usize..whole {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x10;
            std::fs::write(&path, &flipped).unwrap();
            let scanned = scan(&path, Position::default()).unwrap();
            assert_eq!(scanned.end.offset, 6, "bit flipped at {at}");
        }
        // A frame that does not continue the log is not read as part of it.
        let mut misplaced = bytes[..first as usize].to_vec();
        encode(7, false, b"x", &mut misplaced);
        let mut file = File::create(&path).unwrap();
        file.write_all(&misplaced).unwrap();
        assert_eq!(scan(&path, Position::default()).unwrap().end.offset, 6);
    }
}
