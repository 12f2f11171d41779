//! The log store on real files and a real LMDB store: ordering, resends, gaps, truncation,
//! takeover by a newer attempt, following, retention, torn tails after a crash, and moving
//! logs stored the old way into files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;
use std::rc::Rc;

use tinyci_core::RunStatus;
use tinyci_logs::{FollowSource, Follower, LogChunk, LogError, Logs, MAX_LOG_CHUNK, Stream};
use tinyci_store::{GroupCommitter, Store, StoreOptions};

struct Fixture {
    _dir: tempfile::TempDir,
    logs: Rc<Logs>,
}

fn fixture(max_run_bytes: u64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let logs = open_logs(dir.path(), max_run_bytes);
    Fixture { _dir: dir, logs }
}

/// The logs kept under `dir`, as a site starting there opens them.
fn open_logs(dir: &std::path::Path, max_run_bytes: u64) -> Rc<Logs> {
    let store = Store::open(dir, StoreOptions::default()).unwrap();
    let (committer, _writer) = GroupCommitter::start(store.clone()).unwrap();
    Rc::new(Logs::open(dir, store, committer, max_run_bytes).unwrap())
}

/// Runs `test` on the logs under `dir` as a site starting there sees them, then closes them
/// as a stopping site does (the store's writer joined), so the next start finds them free.
fn with_logs<T>(
    dir: &std::path::Path,
    max_run_bytes: u64,
    test: impl AsyncFnOnce(&Logs) -> T,
) -> T {
    let store = Store::open(dir, StoreOptions::default()).unwrap();
    let (committer, writer) = GroupCommitter::start(store.clone()).unwrap();
    let logs = Logs::open(dir, store, committer, max_run_bytes).unwrap();
    let out = run_local(test(&logs));
    drop(logs);
    writer.join();
    out
}

/// Bytes stored on disk for a run's log.
async fn stored_bytes(logs: &Logs, run: u64) -> u64 {
    logs.usage().await.unwrap().get(&run).map_or(0, |u| u.bytes)
}

fn chunk(text: &str) -> LogChunk {
    LogChunk {
        stream: Stream::Stdout.tag(),
        timestamp_micros: 1,
        data: text.as_bytes().to_vec(),
    }
}

fn run_local<F: std::future::Future>(test: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&runtime, test)
}

async fn text(logs: &Logs, run: u64) -> String {
    let chunks = logs.read(run, 0, usize::MAX).await.unwrap();
    chunks
        .into_iter()
        .map(|(_, c)| String::from_utf8(c.data).unwrap())
        .collect()
}

#[test]
fn writes_read_back_in_order_and_resends_are_ignored_but_gaps_refused() {
    run_local(async {
        let f = fixture(1024);
        let writer = f.logs.writer(7, 1).await.unwrap();
        writer.write(0, chunk("hello ")).await.unwrap();
        writer.write(6, chunk("world")).await.unwrap();
        // A runner resending after a reconnect: already stored, accepted, not duplicated.
        writer.write(0, chunk("hello ")).await.unwrap();
        let gap = writer.write(20, chunk("late")).await.unwrap_err();
        assert!(
            matches!(
                gap,
                LogError::Gap {
                    run: 7,
                    offset: 20,
                    expected: 11
                }
            ),
            "{gap}"
        );
        writer.close().await.unwrap();
        assert_eq!(writer.acknowledged(), 11);
        assert_eq!(text(&f.logs, 7).await, "hello world");
        assert_eq!(f.logs.stored_length(7).await.unwrap(), 11);
        // Reading from the middle trims the first chunk.
        let tail = f.logs.read(7, 8, 100).await.unwrap();
        assert_eq!(tail[0].0, 8);
        assert_eq!(tail[0].1.data, b"rld");
    });
}

#[test]
fn a_chunk_over_the_wire_limit_is_refused() {
    run_local(async {
        let f = fixture(u64::MAX);
        let writer = f.logs.writer(1, 1).await.unwrap();
        let big = LogChunk {
            data: vec![b'x'; MAX_LOG_CHUNK + 1],
            ..chunk("")
        };
        let refused = writer.write(0, big).await.unwrap_err();
        assert!(
            matches!(refused, LogError::ChunkTooLarge { .. }),
            "{refused}"
        );
        assert_eq!(f.logs.stored_length(1).await.unwrap(), 0);
    });
}

#[test]
fn a_log_is_cut_at_its_limit_with_a_system_line_and_then_takes_everything() {
    run_local(async {
        // The limit counts what a frame costs beyond its bytes: this log keeps 10 bytes.
        let f = fixture(tinyci_logs::MAX_WRITE_OVERHEAD + 10);
        let writer = f.logs.writer(3, 1).await.unwrap();
        writer.write(0, chunk("0123456")).await.unwrap();
        writer.write(7, chunk("789abc")).await.unwrap();
        writer.write(13, chunk("lost-output")).await.unwrap();
        writer.close().await.unwrap();
        let chunks = f.logs.read(3, 0, usize::MAX).await.unwrap();
        let stored: Vec<u8> = chunks.iter().flat_map(|(_, c)| c.data.clone()).collect();
        let stored = String::from_utf8(stored).unwrap();
        assert!(
            stored.starts_with("0123456789\n[tinyci] log truncated"),
            "{stored}"
        );
        assert!(!stored.contains("lost-output"));
        let last = chunks.last().unwrap();
        assert_eq!(Stream::of_tag(last.1.stream), Stream::System);
        // Nothing needs resending: the runner may drop what it holds.
        assert_eq!(writer.acknowledged(), u64::MAX);
        // A log at its limit stays cut when loaded afresh.
        drop(writer);
        let again = f.logs.writer(3, 2).await.unwrap();
        assert_eq!(again.acknowledged(), u64::MAX);
    });
}

#[test]
fn a_newer_attempt_takes_the_log_over_and_the_older_is_refused() {
    run_local(async {
        let f = fixture(1024);
        let first = f.logs.writer(5, 1).await.unwrap();
        first.write(0, chunk("one ")).await.unwrap();
        first.close().await.unwrap();
        let second = f.logs.writer(5, 2).await.unwrap();
        // The retried attempt continues after what the first stored.
        assert_eq!(second.acknowledged(), 4);
        second.write(4, chunk("two")).await.unwrap();
        let stale = first.write(4, chunk("late")).await.unwrap_err();
        assert!(
            matches!(
                stale,
                LogError::Superseded {
                    run: 5,
                    lease: 1,
                    by: 2
                }
            ),
            "{stale}"
        );
        let older = f.logs.writer(5, 1).await.unwrap_err();
        assert!(matches!(older, LogError::Superseded { .. }), "{older}");
        second.close().await.unwrap();
        assert_eq!(text(&f.logs, 5).await, "one two");
    });
}

/// A follower that records what it was given.
#[derive(Default)]
struct Recorder {
    chunks: RefCell<Vec<(u64, String)>>,
    done: RefCell<Option<RunStatus>>,
    delivered: tokio::sync::Notify,
}

impl Follower for Recorder {
    type Error = std::convert::Infallible;

    async fn chunk(&self, offset: u64, chunk: &LogChunk) -> Result<(), Self::Error> {
        self.chunks
            .borrow_mut()
            .push((offset, String::from_utf8_lossy(&chunk.data).into_owned()));
        self.delivered.notify_one();
        Ok(())
    }

    async fn done(&self, status: RunStatus) -> Result<(), Self::Error> {
        *self.done.borrow_mut() = Some(status);
        Ok(())
    }
}

#[test]
fn a_follower_gets_the_backfill_then_live_chunks_then_the_end() {
    run_local(async {
        let f = fixture(1024);
        let writer = f.logs.writer(9, 1).await.unwrap();
        writer.write(0, chunk("before ")).await.unwrap();
        writer.close().await.unwrap();

        let status = Rc::new(RefCell::new(RunStatus::Running));
        let (changes, feed) = tokio::sync::mpsc::unbounded_channel::<()>();
        let source = FollowSource {
            run: 9,
            status: {
                let status = status.clone();
                Rc::new(move || Some(*status.borrow()))
            },
            changes: feed,
        };
        let recorder = Rc::new(Recorder::default());
        let follow = tokio::task::spawn_local({
            let logs = f.logs.clone();
            let recorder = recorder.clone();
            async move { logs.follow(source, 2, &*recorder).await }
        });
        recorder.delivered.notified().await;
        writer.write(7, chunk("after")).await.unwrap();
        writer.close().await.unwrap();
        recorder.delivered.notified().await;
        assert_eq!(f.logs.stats().active(), 1);
        *status.borrow_mut() = RunStatus::Passed;
        changes.send(()).unwrap();
        follow.await.unwrap().unwrap();
        assert_eq!(
            *recorder.chunks.borrow(),
            vec![(2, "fore ".to_owned()), (7, "after".to_owned())]
        );
        assert_eq!(*recorder.done.borrow(), Some(RunStatus::Passed));
        let stats = f.logs.stats();
        assert_eq!(stats.active(), 0);
        assert_eq!(stats.delivered_bytes(), 10);
        assert_eq!(stats.buffered_bytes(), 0);
    });
}

#[test]
fn retention_sees_each_runs_usage_and_removes_whole_logs() {
    run_local(async {
        let f = fixture(1024);
        for run in [1, 2] {
            let writer = f.logs.writer(run, 1).await.unwrap();
            writer.write(0, chunk("abc")).await.unwrap();
            writer.write(3, chunk("de")).await.unwrap();
            writer.close().await.unwrap();
        }
        let usage = f.logs.usage().await.unwrap();
        assert_eq!(usage.len(), 2);
        assert!(
            (5..=5 + 40).contains(&usage[&1].bytes),
            "two writes of one stream share a frame: {:?}",
            usage[&1]
        );
        f.logs.remove(vec![1]).await.unwrap();
        let usage = f.logs.usage().await.unwrap();
        assert_eq!(usage.keys().copied().collect::<Vec<_>>(), vec![2]);
        assert_eq!(f.logs.stored_length(1).await.unwrap(), 0);
        assert_eq!(text(&f.logs, 2).await, "abcde");
    });
}

#[test]
fn a_byte_at_a_time_costs_records_by_the_chunk_limit_not_by_the_write() {
    run_local(async {
        let f = fixture(1 << 20);
        let writer = f.logs.writer(7, 1).await.unwrap();
        let mut written = String::new();
        for i in 0..40_000u64 {
            let byte = char::from(b'a' + u8::try_from(i % 26).unwrap());
            written.push(byte);
            writer.write(i, chunk(&byte.to_string())).await.unwrap();
            if i % 5_000 == 0 {
                // Some writes land after a commit: they grow the stored record.
                writer.close().await.unwrap();
            }
        }
        writer.close().await.unwrap();
        let stored = stored_bytes(&f.logs, 7).await;
        // Frames by the commit, not by the write: 40,000 writes cost a few hundred frames.
        assert!(
            stored <= 40_000 + 200 * tinyci_logs::MAX_WRITE_OVERHEAD,
            "40,000 one-byte writes are stored as {stored} bytes"
        );
        assert_eq!(f.logs.stored_length(7).await.unwrap(), 40_000);
        assert_eq!(text(&f.logs, 7).await, written);
    });
}

/// Stored size stays within 1.2x of the log plus a small fixed overhead, however the output
/// arrives: one byte per write on one stream, alternating streams a byte at a time, or
/// alternating in bursts, committed in small batches (here a commit per KiB, far more often
/// than a runner's flush window allows; each commit costs a frame header). Before records
/// held several streams, alternation cost a record (about 40 bytes) per write.
#[test]
fn stored_bytes_stay_near_the_log_whatever_the_write_pattern() {
    const LOG: usize = 512 * 1024;
    /// The stream and length of the `i`th write.
    type Pattern = fn(usize) -> (u8, usize);
    // Each pattern with the bound its stored bytes keep, in tenths of the log's size: a
    // switch of stream costs a span (a byte, two past 31 bytes), so only output alternating
    // streams every few bytes costs more, and that is what the log's size limit counts.
    let patterns: [(&str, Pattern, usize); 4] = [
        ("single bytes on stdout", |_| (0, 1), 12),
        (
            "lines alternating stdout and stderr",
            |i| ((i % 2) as u8, 40),
            12,
        ),
        (
            "bursts of 1-40 bytes alternating",
            |i| ((i % 2) as u8, 1 + i % 40),
            12,
        ),
        (
            "single bytes alternating stdout and stderr",
            |i| ((i % 2) as u8, 1),
            21,
        ),
    ];
    for (run, (name, pattern, tenths)) in (1u64..).zip(patterns) {
        run_local(async {
            let f = fixture(u64::MAX);
            let writer = f.logs.writer(run, 1).await.unwrap();
            let (mut offset, mut i) = (0usize, 0usize);
            while offset < LOG {
                let (stream, len) = pattern(i);
                let data = vec![b'a' + (i % 26) as u8; len.min(LOG - offset)];
                let next = offset + data.len();
                // Unconstrained: tokio's cooperative budget would otherwise make this task
                // yield every so many writes, letting a commit (and its frame header) in at a
                // point that depends on the disk's speed; the commits here are the closes.
                tokio::task::unconstrained(writer.write(
                    offset as u64,
                    LogChunk {
                        stream,
                        timestamp_micros: i as i64,
                        data,
                    },
                ))
                .await
                .unwrap();
                if i % 1024 == 0 {
                    // Every so often wait for the commit, so appends to a stored record are
                    // exercised as well as merging within a batch.
                    writer.close().await.unwrap();
                }
                offset = next;
                i += 1;
            }
            writer.close().await.unwrap();
            let stored = stored_bytes(&f.logs, run).await as usize;
            eprintln!("{name}: {LOG} log bytes stored as {stored}");
            assert!(
                stored <= LOG * tenths / 10 + 1024,
                "{name}: a {LOG}-byte log is stored as {stored} bytes"
            );
            // And it reads back whole, in order, each byte with its stream where recorded.
            let chunks = f.logs.read(run, 0, usize::MAX).await.unwrap();
            let total: usize = chunks.iter().map(|(_, c)| c.data.len()).sum();
            assert_eq!(total, LOG, "{name}");
            let mut at = 0;
            for (offset, c) in &chunks {
                assert_eq!(*offset, at, "{name}: chunks are contiguous");
                at += c.data.len() as u64;
            }
        });
    }
}

/// A switch of stream costs a span stored, and the log's size limit counts it: a log that
/// alternates streams a byte at a time is cut after about a third as many bytes, so what a
/// run can make the site store stays within its limit whatever it prints.
#[test]
fn switches_of_stream_count_against_the_log_limit() {
    run_local(async {
        let f = fixture(1000);
        let writer = f.logs.writer(9, 1).await.unwrap();
        for i in 0..2000u64 {
            let chunk = LogChunk {
                stream: (i % 2) as u8,
                timestamp_micros: 0,
                data: b"x".to_vec(),
            };
            writer.write(i, chunk).await.unwrap();
        }
        writer.close().await.unwrap();
        let chunks = f.logs.read(9, 0, usize::MAX).await.unwrap();
        let kept: usize = chunks
            .iter()
            .filter(|(_, c)| c.stream != Stream::System.tag())
            .map(|(_, c)| c.data.len())
            .sum();
        assert!(
            kept <= 1000 / 3 + 1,
            "{kept} bytes kept of a 1000-byte limit"
        );
        assert!(
            chunks
                .last()
                .is_some_and(|(_, c)| String::from_utf8_lossy(&c.data).contains("log truncated")),
            "the cut is marked"
        );
        let stored = stored_bytes(&f.logs, 9).await;
        assert!(
            stored <= 1000 + 200,
            "{stored} bytes stored for a 1000-byte limit"
        );
    });
}

/// The file a run's log is kept in under a data directory.
fn log_file(dir: &std::path::Path, run: u64) -> std::path::PathBuf {
    dir.join("logs")
        .join(format!("{:04x}", run >> 12))
        .join(format!("{run}.log"))
}

/// A crash can leave any prefix of the last write on disk, or garbage after it. Whatever it
/// left, the log read back after a restart is exactly a prefix of what was written, ending
/// where a commit ended; it is what the writer acknowledges, so the runner resends from there;
/// and the finished log has no gap, duplicate or stray byte.
#[test]
fn a_torn_tail_after_a_crash_is_cut_and_the_runner_resends_from_what_is_durable() {
    let text: Vec<String> = (0..64).map(|i| format!("line {i} of the log\n")).collect();
    let whole: String = text.concat();
    // The log as committed in two batches: the first durable, the second the torn one.
    let dir = tempfile::tempdir().unwrap();
    let first_end = with_logs(dir.path(), 1 << 20, async |logs| {
        let writer = logs.writer(5, 1).await.unwrap();
        let mut at = 0u64;
        for line in &text[..32] {
            writer.write(at, chunk(line)).await.unwrap();
            at += line.len() as u64;
        }
        writer.close().await.unwrap();
        for line in &text[32..] {
            writer.write(at, chunk(line)).await.unwrap();
            at += line.len() as u64;
        }
        writer.close().await.unwrap();
        text[..32].concat().len() as u64
    });
    let path = log_file(dir.path(), 5);
    let bytes = std::fs::read(&path).unwrap();
    // The first batch is the file's first frame: a 24-byte header, then its length.
    let first_frame_end = 24 + u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
    let tails: Vec<(&str, Vec<u8>)> = vec![
        ("half a header", bytes[..first_frame_end + 7].to_vec()),
        (
            "a header and half its bytes",
            bytes[..(first_frame_end + bytes.len()) / 2].to_vec(),
        ),
        (
            "the whole frame but its last byte",
            bytes[..bytes.len() - 1].to_vec(),
        ),
        (
            "garbage",
            [&bytes[..first_frame_end], &[0xAB; 300][..]].concat(),
        ),
        (
            "zeros, as a file grown but not written",
            [&bytes[..first_frame_end], &[0; 4096][..]].concat(),
        ),
    ];
    for (name, on_disk) in tails {
        std::fs::write(&path, &on_disk).unwrap();
        with_logs(dir.path(), 1 << 20, async |logs| {
            assert_eq!(logs.stored_length(5).await.unwrap(), first_end, "{name}");
            assert_eq!(text_of(logs, 5).await, text[..32].concat(), "{name}");
            // The next attempt's writer acknowledges what is durable and takes the rest.
            let writer = logs.writer(5, 2).await.unwrap();
            assert_eq!(writer.acknowledged(), first_end, "{name}");
            let mut at = first_end;
            for line in &text[32..] {
                writer.write(at, chunk(line)).await.unwrap();
                at += line.len() as u64;
            }
            writer.close().await.unwrap();
            assert_eq!(text_of(logs, 5).await, whole, "{name}");
        });
        // And it reads back the same from a fresh start: the torn bytes were cut, not
        // written over in part.
        with_logs(dir.path(), 1 << 20, async |logs| {
            assert_eq!(text_of(logs, 5).await, whole, "{name}, reopened");
        });
    }
}

async fn text_of(logs: &Logs, run: u64) -> String {
    text(logs, run).await
}

/// A log longer than the index's spacing reads the same from any offset (through the LMDB
/// index and the file), from a fresh start as while it is written, and a follower from the
/// middle gets exactly the rest.
#[test]
fn a_long_log_reads_the_same_from_any_offset_through_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let block: Vec<u8> = (0..MAX_LOG_CHUNK).map(|i| (i % 251) as u8).collect();
    let total = 12 * 1024 * 1024u64;
    let byte_at = |at: u64| ((at % MAX_LOG_CHUNK as u64) % 251) as u8;
    with_logs(dir.path(), u64::MAX, async |logs| {
        let writer = logs.writer(3, 1).await.unwrap();
        let mut at = 0;
        while at < total {
            let chunk = LogChunk {
                stream: Stream::Stdout.tag(),
                timestamp_micros: 0,
                data: block.clone(),
            };
            writer.write(at, chunk).await.unwrap();
            at += block.len() as u64;
            if at % (1024 * 1024) == 0 {
                // Commit by the MiB, as a runner asking for acknowledgements does.
                writer.close().await.unwrap();
            }
        }
        writer.close().await.unwrap();
    });
    with_logs(dir.path(), u64::MAX, async |logs| {
        assert_eq!(logs.stored_length(3).await.unwrap(), total);
        for from in [0, 1, 4 * 1024 * 1024 + 17, 9 * 1024 * 1024 - 1, total - 5] {
            let chunks = logs.read(3, from, 100_000).await.unwrap();
            assert_eq!(chunks.first().map(|(at, _)| *at), Some(from), "from {from}");
            let mut at = from;
            for (offset, chunk) in &chunks {
                assert_eq!(*offset, at);
                for (i, byte) in chunk.data.iter().enumerate() {
                    assert_eq!(*byte, byte_at(at + i as u64), "byte {}", at + i as u64);
                }
                at += chunk.data.len() as u64;
            }
        }
        let (from, tail) = logs.tail(3, 1000).await.unwrap();
        assert_eq!((from, tail.len()), (total - 1000, 1000));
    });
}

/// A site upgraded from storing logs as LMDB records finds them in files, whole, and the
/// records gone; a log moved that way takes more output where it ended.
#[test]
fn logs_stored_as_records_move_into_files_when_the_logs_open() {
    use tinyci_store::records::{LogRecord, LogSpan, log_key};
    use tinyci_store::tables::LOG_CHUNKS;
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let record = |stream: u8, text: &str| LogRecord {
            timestamp_micros: 1,
            spans: vec![LogSpan {
                stream,
                len: u32::try_from(text.len()).unwrap(),
            }],
            data: text.as_bytes().to_vec(),
        };
        store
            .write(|txn| {
                txn.put(LOG_CHUNKS, &log_key(4, 0)[..], &record(0, "old "))?;
                txn.put(LOG_CHUNKS, &log_key(4, 4)[..], &record(1, "log "))?;
                txn.put(LOG_CHUNKS, &log_key(9, 0)[..], &record(0, "other"))
            })
            .unwrap();
    }
    with_logs(dir.path(), 1024, async |logs| {
        assert_eq!(text(logs, 4).await, "old log ");
        assert_eq!(text(logs, 9).await, "other");
        let streams: Vec<u8> = logs
            .read(4, 0, usize::MAX)
            .await
            .unwrap()
            .iter()
            .map(|(_, c)| c.stream)
            .collect();
        assert_eq!(streams, vec![0, 1], "each byte keeps its stream");
        let writer = logs.writer(4, 2).await.unwrap();
        assert_eq!(writer.acknowledged(), 8);
        writer.write(8, chunk("and new")).await.unwrap();
        writer.close().await.unwrap();
        assert_eq!(text(logs, 4).await, "old log and new");
    });
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let left = store
        .read(|txn| Ok(txn.iter_range(LOG_CHUNKS, &..)?.count()))
        .unwrap();
    assert_eq!(
        left, 0,
        "the records were deleted once their files were durable"
    );
}

/// What a hostile runner sends cannot grow a log's file past its limit: empty chunks store
/// nothing (not even a frame), an offset that would overflow is refused as a gap, and a log
/// cut at its limit stays cut, with what its frames cost remembered, however often it is
/// loaded afresh and written again.
#[test]
fn a_hostile_writer_cannot_grow_a_log_past_its_limit_across_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let limit = 2_000u64;
    with_logs(dir.path(), limit, async |logs| {
        let writer = logs.writer(6, 1).await.unwrap();
        for _ in 0..200 {
            writer.write(0, chunk("")).await.unwrap();
            writer.close().await.unwrap();
        }
        assert_eq!(stored_bytes(logs, 6).await, 0, "empty chunks stored frames");
        let refused = writer
            .write(u64::MAX - 1, chunk("overflow"))
            .await
            .unwrap_err();
        assert!(matches!(refused, LogError::Gap { .. }), "{refused}");
    });
    // One byte per commit, each its own frame, and the log loaded afresh every few writes.
    let mut offset = 0u64;
    for attempt in 1..=20u32 {
        with_logs(dir.path(), limit, async |logs| {
            let writer = logs.writer(6, attempt).await.unwrap();
            if writer.acknowledged() == u64::MAX {
                return;
            }
            assert_eq!(writer.acknowledged(), offset);
            for _ in 0..10 {
                writer.write(offset, chunk("x")).await.unwrap();
                offset += 1;
                writer.close().await.unwrap();
            }
        });
    }
    with_logs(dir.path(), limit, async |logs| {
        let writer = logs.writer(6, 99).await.unwrap();
        assert_eq!(
            writer.acknowledged(),
            u64::MAX,
            "the cut log was taken up again"
        );
        let text = text(logs, 6).await;
        assert!(text.contains("log truncated"), "{text}");
        let stored = stored_bytes(logs, 6).await;
        assert!(
            stored <= limit + 200,
            "a {limit}-byte limit let the file grow to {stored} bytes"
        );
    });
}
