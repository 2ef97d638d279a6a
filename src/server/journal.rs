//! The disk store's files: the data directory, each shard's segment files, recovery at
//! start and the writer task that makes the owner's journal durable.
//!
//! In: at start, the data directory (`prepare`: created, locked, its shard count
//! checked) and each shard's segments (`recover`: read, torn tails cut, the store
//! rebuilt). While running, the bytes the shard's store encoded
//! (`msg::journal::Encoder`), taken by the writer task at the end of a batch. Out:
//! appends to the current segment through glommio's io_uring file I/O (the shard thread
//! never blocks in a write or a sync), `fdatasync` per the `fsync` policy, then
//! `Shard::on_durable`, which releases the acks, deliveries and API answers that waited
//! for those records.
//!
//! # Files
//!
//! ```text
//! DATA_DIR/wsgate.meta          "wsgate-data 1\nshards N\n": the layout and shard count
//! DATA_DIR/wsgate.lock          flock(2)ed by the running process
//! DATA_DIR/shard-00003/00000000000000000042.wal   segment 42 of shard 3
//! ```
//!
//! A segment holds whole records (a batch never straddles two files), so each is read
//! on its own at recovery. The shard count is fixed per data directory: a user's owner
//! is `hash(user) % shards`, so records written by 4 shards are in the wrong place for
//! 2. A run with another count is refused at start with a message that says so (moving
//! records between owners would be a migration tool of its own; not built).
//!
//! # Compaction
//!
//! The store in memory holds everything still needed (histories under their limits,
//! offline queues, positions), so a compaction needs no reading: when the segments hold
//! more than twice what the last compaction wrote plus one segment, the writer starts a
//! new segment, asks the owner to restate its state into the journal
//! (`Owner::restate_all`), and once that is durable deletes every older segment. The
//! restatement is encoded in one go on the shard thread (time proportional to the live
//! data: about 1 ms per 10 MB here); disk use stays under about twice the live data plus
//! two segments, and `data_max_bytes` caps it: at the shard's share, new messages are
//! refused (`storage_full`) until a compaction brings it back under 90%.
//!
//! # Write failures
//!
//! A write or sync that fails (the device is full, or failing) is retried every 100 ms
//! and the records' acks wait: nothing is acked that is not written. From the first
//! failure until a write and its sync go through again, new messages are refused with
//! `storage_full` (counted), so what waits stays bounded by what was in flight.

use std::cell::{Cell, RefCell};
use std::fs;
use std::io::{self, Write as _};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

use tracing::{error, info, warn};

use crate::config::{Config, FsyncPolicy};
use crate::msg::MsgLimits;
use crate::msg::journal::{Read, Recovery, WallClock};
use crate::msg::store::{Loaded, MemStore};

/// The first line of `wsgate.meta`: the layout version.
const META_MAGIC: &str = "wsgate-data 1";
/// How long the writer waits before retrying a failed write or sync.
const WRITE_RETRY: Duration = Duration::from_millis(100);
/// Below this share of its budget a full shard accepts messages again.
const FULL_CLEAR_RATIO: f64 = 0.9;

/// The locked data directory; unlocked when dropped (at exit).
#[derive(Debug)]
pub struct DataDirLock {
    _file: fs::File,
}

/// Creates (if needed), locks and checks the data directory for `cfg.shards` shards.
pub fn prepare(cfg: &Config) -> Result<DataDirLock, String> {
    let dir = &cfg.data_dir.0;
    let shown = dir.display();
    fs::create_dir_all(dir).map_err(|e| format!("data_dir {shown}: cannot create it: {e}"))?;
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("wsgate.lock"))
        .map_err(|e| format!("data_dir {shown}: cannot open wsgate.lock: {e}"))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(format!(
            "data_dir {shown} is in use by another wsgate process (wsgate.lock is locked); \
             give each process its own --data-dir"
        ));
    }
    let meta = dir.join("wsgate.meta");
    match fs::read_to_string(&meta) {
        Ok(text) => {
            let shards = parse_meta(&text)
                .ok_or_else(|| format!("data_dir {shown}: wsgate.meta is not a wsgate data directory's ({text:?})"))?;
            if shards != cfg.shards {
                return Err(format!(
                    "data_dir {shown} was written by {shards} shards and this run has {}: every user and \
                     room is owned by hash % shards, so the records would be in the wrong place. Start with \
                     --shards {shards}, or give this run another --data-dir",
                    cfg.shards
                ));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            write_atomically(&meta, format!("{META_MAGIC}\nshards {}\n", cfg.shards).as_bytes())
                .map_err(|e| format!("data_dir {shown}: cannot write wsgate.meta: {e}"))?;
        }
        Err(e) => return Err(format!("data_dir {shown}: cannot read wsgate.meta: {e}")),
    }
    for shard in 0..cfg.shards {
        let sub = shard_dir(dir, shard);
        fs::create_dir_all(&sub).map_err(|e| format!("data_dir {}: {e}", sub.display()))?;
    }
    Ok(DataDirLock { _file: lock })
}

fn parse_meta(text: &str) -> Option<usize> {
    let mut lines = text.lines();
    (lines.next()? == META_MAGIC).then_some(())?;
    lines.next()?.strip_prefix("shards ")?.parse().ok()
}

fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    fs::File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
}

/// The directory of shard `shard`'s segments.
pub fn shard_dir(data_dir: &Path, shard: usize) -> PathBuf {
    data_dir.join(format!("shard-{shard:05}"))
}

fn segment_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("{index:020}.wal"))
}

/// One segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    index: u64,
    /// Bytes of records: where the next append goes.
    bytes: u64,
    /// The file's length: `segment_bytes` once preallocated, else `bytes`.
    allocated: u64,
}

impl Segment {
    /// What the segment takes on disk.
    fn disk_bytes(&self) -> u64 {
        self.bytes.max(self.allocated)
    }
}

/// What a shard's recovery found, for the start-up report and the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments read.
    pub segments: u64,
    /// What was read and cut.
    pub read: Read,
    /// What the store holds afterwards.
    pub loaded: Loaded,
    /// How long reading and rebuilding took.
    pub elapsed: Duration,
}

/// A shard's store rebuilt from its segments, and the writer that continues them.
pub struct Recovered {
    /// The store with its journal, holding what the segments held.
    pub store: MemStore,
    /// The writer for the shard's task.
    pub writer: Writer,
    /// What was read.
    pub report: RecoveryReport,
}

/// Reads shard `shard`'s segments (synchronously: the shard is not serving yet),
/// cuts each damaged tail (truncating the file there), and rebuilds the store.
pub fn recover(cfg: &Config, shard: usize, limits: &MsgLimits) -> io::Result<Recovered> {
    let started = Instant::now();
    let dir = shard_dir(&cfg.data_dir.0, shard);
    let mut segments = Vec::new();
    for entry in fs::read_dir(&dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(index) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        segments.push(Segment {
            index,
            bytes: 0,
            allocated: 0,
        });
    }
    segments.sort_by_key(|s| s.index);
    let mut recovery = Recovery::new();
    for segment in &mut segments {
        let path = segment_path(&dir, segment.index);
        let bytes = fs::read(&path)?;
        let fed = recovery.feed(&bytes);
        segment.allocated = bytes.len() as u64;
        if fed.cut {
            // A torn or corrupt tail: cut it so appends continue from whole records
            // (the writer preallocates the segment again when it reopens it).
            let file = fs::OpenOptions::new().write(true).open(&path)?;
            file.set_len(fed.good as u64)?;
            file.sync_all()?;
            segment.allocated = fed.good as u64;
        }
        segment.bytes = fed.good as u64;
    }
    let now = Instant::now();
    let clock = WallClock::new(now, SystemTime::now());
    let (logs, read) = recovery.finish(&clock);
    let end: u64 = segments.iter().map(|s| s.bytes).sum();
    let mut store = MemStore::durable(limits, end, clock);
    let loaded = store.load(logs, now);
    let report = RecoveryReport {
        segments: segments.len() as u64,
        read,
        loaded,
        elapsed: started.elapsed(),
    };
    let budget = cfg.data_max_bytes / cfg.shards as u64;
    let writer = Writer {
        dir,
        segments: segments.into(),
        file: None,
        fsync: cfg.fsync,
        window: cfg.fsync_window,
        segment_bytes: cfg.segment_bytes,
        budget,
        live_bytes: 0,
        compaction: None,
        failing: false,
        signal: Rc::new(Signal::default()),
        stats: Rc::new(RefCell::new(JournalStats::default())),
    };
    writer.stats.borrow_mut().recovery = report;
    Ok(Recovered { store, writer, report })
}

/// The start-up report's events about the store: where it is, the fsync policy, what
/// recovery read and how long it took (summed over the shards; the slowest shard's
/// time, since they recover in parallel), and a warning if damaged tails were cut.
pub fn log_recovery(cfg: &Config, reports: &[RecoveryReport]) {
    if cfg.store == crate::config::StoreKind::Memory {
        warn!(
            store = "memory",
            "message store in memory (--store memory): nothing survives a restart"
        );
        return;
    }
    let mut read = Read::default();
    let mut loaded = Loaded::default();
    let mut segments = 0;
    let mut slowest = Duration::ZERO;
    for r in reports {
        segments += r.segments;
        read.records += r.read.records;
        read.bytes += r.read.bytes;
        read.cut_segments += r.read.cut_segments;
        read.cut_bytes += r.read.cut_bytes;
        loaded.logs += r.loaded.logs;
        loaded.history += r.loaded.history;
        loaded.offline += r.loaded.offline;
        loaded.trimmed += r.loaded.trimmed;
        slowest = slowest.max(r.elapsed);
    }
    info!(
        store = "disk",
        data_dir = %cfg.data_dir,
        fsync = %cfg.fsync,
        fsync_window = ?cfg.fsync_window,
        records = read.records,
        bytes = %crate::units::human_bytes(read.bytes as f64, 1),
        segments,
        took = ?slowest,
        logs = loaded.logs,
        history = loaded.history,
        offline = loaded.offline,
        trimmed = loaded.trimmed,
        "message store recovered"
    );
    if read.cut_segments > 0 {
        warn!(
            cut_bytes = read.cut_bytes,
            segments = read.cut_segments,
            "journal tails cut at start: torn or corrupt records after the last good one"
        );
    }
}

/// Wakes the writer task when the shard has encoded records, or when it must stop.
#[derive(Debug, Default)]
pub struct Signal {
    raised: Cell<bool>,
    stop: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Signal {
    /// Records are waiting (cheap when already raised).
    pub fn raise(&self) {
        if !self.raised.replace(true)
            && let Some(waker) = self.waker.borrow_mut().take()
        {
            waker.wake();
        }
    }

    /// The shard is done: write what is left and end.
    pub fn stop(&self) {
        self.stop.set(true);
        self.raised.set(false);
        self.raise();
    }

    async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.raised.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
    }
}

/// Counters of one shard's journal, published with the shard's metrics.
#[derive(Clone, Debug, Default)]
pub struct JournalStats {
    /// Bytes written to segments.
    pub bytes_written: u64,
    /// Writes (each a batch of whole records).
    pub writes: u64,
    /// `fdatasync` latencies (and count).
    pub fsync_seconds: crate::metrics::Histogram,
    /// Failed writes or syncs (each retried).
    pub write_errors: u64,
    /// Compactions finished.
    pub compactions: u64,
    /// Segment files now.
    pub segments: u64,
    /// Bytes in segment files now.
    pub disk_bytes: u64,
    /// Whether new messages are refused (the budget is spent).
    pub full: bool,
    /// What recovery found at start.
    pub recovery: RecoveryReport,
}

/// A compaction in progress: segments before `first_kept` go once the restatement is
/// durable.
#[derive(Clone, Copy, Debug)]
struct Compaction {
    first_kept: u64,
}

/// What the writer asks of the shard: the seam between the writer task and
/// `server::shard` (the shard implements it; tests can drive the writer without one).
pub trait JournalSource {
    /// Takes the records encoded so far: their bytes and the journal position after
    /// them, `None` if there are none.
    fn take_journal(&mut self) -> Option<(Vec<u8>, u64)>;
    /// Restates the owner's whole state into the journal (a compaction) and takes it:
    /// the bytes before the restatement, then the restatement, and the end position.
    fn restate_journal(&mut self) -> (Vec<u8>, Vec<u8>, u64);
    /// The journal is durable up to `upto`.
    fn on_durable(&mut self, upto: u64);
    /// The budget is spent (`true`) or available again.
    fn set_store_full(&mut self, full: bool);
}

/// The writer of one shard's journal: run by [`Writer::run`] as a task on the shard's
/// executor.
pub struct Writer {
    dir: PathBuf,
    segments: std::collections::VecDeque<Segment>,
    file: Option<glommio::io::BufferedFile>,
    fsync: FsyncPolicy,
    window: Duration,
    segment_bytes: u64,
    budget: u64,
    /// Bytes the last compaction wrote (what is live); 0 before the first.
    live_bytes: u64,
    compaction: Option<Compaction>,
    /// A write or sync failed and has not succeeded since: new messages are refused.
    failing: bool,
    signal: Rc<Signal>,
    stats: Rc<RefCell<JournalStats>>,
}

impl Writer {
    /// What the shard raises when it has encoded records.
    pub fn signal(&self) -> Rc<Signal> {
        self.signal.clone()
    }

    /// The counters the shard publishes.
    pub fn stats(&self) -> Rc<RefCell<JournalStats>> {
        self.stats.clone()
    }

    /// What the segments take on disk, preallocated space included: what the budget
    /// and the metrics count.
    fn disk_bytes(&self) -> u64 {
        self.segments.iter().map(Segment::disk_bytes).sum()
    }

    /// The records in the segments: what the compaction trigger weighs against what is
    /// live.
    fn record_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Writes the shard's records as they come until the shard stops, then what is left.
    pub async fn run<S: JournalSource>(mut self, source: Rc<RefCell<S>>) {
        self.publish();
        // Records that arrived while the last write and sync ran have waited that long
        // already: they go at once, in one batch, without a window of their own.
        let mut backlog = false;
        loop {
            self.signal.wait().await;
            let gather = self.fsync == FsyncPolicy::Batch && !self.window.is_zero() && !backlog;
            if gather && !self.signal.stop.get() {
                // Group commit: records of the next `window` share this write and sync.
                glommio::timer::sleep(self.window).await;
            }
            backlog = false;
            let taken = source.borrow_mut().take_journal();
            if let Some((bytes, end)) = taken {
                self.write(&source, &bytes).await;
                self.sync(&source).await;
                source.borrow_mut().on_durable(end);
                self.after_write(&source).await;
                backlog = self.signal.raised.get();
            }
            if self.signal.stop.get() {
                // The shard finished: nothing more can be encoded.
                let last = source.borrow_mut().take_journal();
                if let Some((bytes, _)) = last {
                    self.write(&source, &bytes).await;
                    self.sync(&source).await;
                }
                return;
            }
        }
    }

    /// Compaction, deletion of restated segments and the budget, after a write.
    async fn after_write<S: JournalSource>(&mut self, source: &Rc<RefCell<S>>) {
        if let Some(compaction) = self.compaction.take() {
            // The restatement was in this write or an earlier one: it is durable now.
            while self.segments.front().is_some_and(|s| s.index < compaction.first_kept) {
                let old = self.segments.pop_front().expect("front checked");
                if let Err(e) = glommio::io::remove(segment_path(&self.dir, old.index)).await {
                    warn!(dir = %self.dir.display(), segment = old.index, error = %e, "cannot delete a compacted segment");
                }
            }
            self.stats.borrow_mut().compactions += 1;
        }
        if self.record_bytes() > 2 * self.live_bytes + self.segment_bytes && self.segments.len() > 1 {
            let (before, restated, end) = source.borrow_mut().restate_journal();
            if !before.is_empty() {
                self.write(source, &before).await;
            }
            self.roll(source).await;
            let first_kept = self.segments.back().map_or(0, |s| s.index);
            self.live_bytes = restated.len() as u64;
            self.write(source, &restated).await;
            self.sync(source).await;
            source.borrow_mut().on_durable(end);
            self.compaction = Some(Compaction { first_kept });
            // Delete now rather than after the next write: the restatement is durable.
            Box::pin(self.after_write(source)).await;
            return;
        }
        let disk = self.disk_bytes();
        let mut stats = self.stats.borrow_mut();
        let full = if stats.full {
            disk as f64 >= self.budget as f64 * FULL_CLEAR_RATIO
        } else {
            disk >= self.budget
        };
        if full != stats.full {
            stats.full = full;
            drop(stats);
            source.borrow_mut().set_store_full(full);
        } else {
            drop(stats);
        }
        self.publish();
    }

    fn publish(&self) {
        let mut stats = self.stats.borrow_mut();
        stats.segments = self.segments.len() as u64;
        stats.disk_bytes = self.disk_bytes();
    }

    /// Starts a new segment file, preallocated (and makes its name and length durable).
    async fn roll<S: JournalSource>(&mut self, source: &Rc<RefCell<S>>) {
        let index = self.segments.back().map_or(0, |s| s.index + 1);
        loop {
            match glommio::io::BufferedFile::create(segment_path(&self.dir, index)).await {
                Ok(file) => {
                    if let Some(old) = self.file.replace(file) {
                        let _ = old.close().await;
                    }
                    self.segments.push_back(Segment {
                        index,
                        bytes: 0,
                        allocated: 0,
                    });
                    self.preallocate().await;
                    self.sync_dir().await;
                    return;
                }
                Err(e) => self.failed(source, "create a segment", &e).await,
            }
        }
    }

    /// Gives the current segment its full length up front (`fallocate(2)`; reads as
    /// zeros, which recovery takes for a clean end) and syncs that once. An append then
    /// changes neither the file's size nor its block map, so each `fdatasync` flushes
    /// only data, not a filesystem journal commit; with two shards appending, their
    /// syncs no longer queue behind each other's commits (figures in the README).
    /// Where it fails (a full disk, a filesystem without `fallocate`) the segment grows
    /// by appends as before. The preallocation stays under the shard's budget, so it
    /// never makes the store full by itself: a budget smaller than a segment gets a
    /// shorter one.
    async fn preallocate(&mut self) {
        let others: u64 = self.segments.iter().rev().skip(1).map(Segment::disk_bytes).sum();
        let want = self
            .segment_bytes
            .min(self.budget.saturating_sub(others).saturating_sub(1));
        let file = self.file.as_ref().expect("the current segment is open");
        let segment = self.segments.back_mut().expect("the current segment");
        if segment.allocated >= want || segment.bytes >= want {
            return;
        }
        let done = match file.pre_allocate(want, false).await {
            Ok(()) => file.fdatasync().await,
            Err(e) => Err(e),
        };
        match done {
            Ok(()) => segment.allocated = want,
            Err(e) => {
                warn!(dir = %self.dir.display(), segment = segment.index, error = %e, "cannot preallocate a segment; it grows by appends")
            }
        }
    }

    async fn sync_dir(&self) {
        match glommio::io::Directory::open(&self.dir).await {
            Ok(dir) => {
                let _ = dir.sync().await;
                let _ = dir.close().await;
            }
            Err(e) => warn!(dir = %self.dir.display(), error = %e, "cannot sync the journal directory"),
        }
    }

    /// Opens the last segment for appending, or starts the first.
    async fn current<S: JournalSource>(&mut self, source: &Rc<RefCell<S>>) {
        if self.file.is_some() {
            return;
        }
        let Some(last) = self.segments.back().copied() else {
            return self.roll(source).await;
        };
        loop {
            let opened = glommio::io::OpenOptions::new()
                .write(true)
                .buffered_open(segment_path(&self.dir, last.index))
                .await;
            match opened {
                Ok(file) => {
                    self.file = Some(file);
                    // A segment cut at recovery, or written by appends, gets its length.
                    self.preallocate().await;
                    return;
                }
                Err(e) => self.failed(source, "open the last segment", &e).await,
            }
        }
    }

    /// Appends `bytes` (whole records) to the current segment, starting a new one first
    /// if they would overflow it. Retries until it succeeds: the records' answers wait.
    async fn write<S: JournalSource>(&mut self, source: &Rc<RefCell<S>>, bytes: &[u8]) {
        self.current(source).await;
        let last = self.segments.back().expect("current() made one").bytes;
        if last > 0 && last + bytes.len() as u64 > self.segment_bytes {
            self.roll(source).await;
        }
        let mut written = 0;
        while written < bytes.len() {
            let segment = self.segments.back_mut().expect("current() made one");
            let file = self.file.as_ref().expect("current() opened one");
            // `write_at` takes its buffer by value: a copy, small next to the sync.
            match file.write_at(bytes[written..].to_vec(), segment.bytes).await {
                Ok(0) => {
                    let e = io::Error::new(io::ErrorKind::WriteZero, "wrote nothing");
                    self.failed(source, "write", &glommio::GlommioError::<()>::IoError(e))
                        .await;
                }
                Ok(n) => {
                    written += n;
                    segment.bytes += n as u64;
                    self.stats.borrow_mut().bytes_written += n as u64;
                }
                Err(e) => self.failed(source, "write", &e).await,
            }
        }
        self.stats.borrow_mut().writes += 1;
    }

    async fn sync<S: JournalSource>(&mut self, source: &Rc<RefCell<S>>) {
        if self.fsync == FsyncPolicy::Never {
            return self.succeeded(source);
        }
        loop {
            let file = self.file.as_ref().expect("a write opened one");
            let started = Instant::now();
            match file.fdatasync().await {
                Ok(()) => {
                    self.stats.borrow_mut().fsync_seconds.observe(started.elapsed());
                    return self.succeeded(source);
                }
                Err(e) => self.failed(source, "sync", &e).await,
            }
        }
    }

    /// A write and its sync went through: after a failure, new messages are taken again
    /// (unless the budget is spent).
    fn succeeded<S: JournalSource>(&mut self, source: &Rc<RefCell<S>>) {
        if self.failing {
            self.failing = false;
            let full = self.stats.borrow().full;
            source.borrow_mut().set_store_full(full);
            info!(dir = %self.dir.display(), "journal writes succeed again");
        }
    }

    /// A write, sync or file operation failed (a full or failing device): new messages
    /// are refused with `storage_full` until a write succeeds again, so the answers that
    /// wait stay bounded; the failed operation is retried after [`WRITE_RETRY`].
    async fn failed<T, S: JournalSource>(&mut self, source: &Rc<RefCell<S>>, what: &str, e: &glommio::GlommioError<T>) {
        self.stats.borrow_mut().write_errors += 1;
        if !self.failing {
            self.failing = true;
            source.borrow_mut().set_store_full(true);
        }
        // At most one event per retry interval per shard: not a flood.
        error!(dir = %self.dir.display(), what, error = %e, retry = ?WRITE_RETRY, "journal write failed; acks wait");
        glommio::timer::sleep(WRITE_RETRY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_names_the_layout_and_the_shard_count() {
        assert_eq!(parse_meta("wsgate-data 1\nshards 4\n"), Some(4));
        assert_eq!(parse_meta("wsgate-data 2\nshards 4\n"), None);
        assert_eq!(parse_meta("shards 4\n"), None);
        assert_eq!(parse_meta(""), None);
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wsgate-journal-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_data_dir_is_locked_and_keeps_its_shard_count() {
        let dir = temp_dir("prepare");
        let cfg = Config {
            shards: 2,
            data_dir: crate::config::DataDir(dir.clone()),
            ..Config::default()
        };
        let lock = prepare(&cfg).unwrap();
        assert!(dir.join("shard-00001").is_dir());
        let busy = prepare(&cfg).unwrap_err();
        assert!(busy.contains("in use by another wsgate process"), "{busy}");
        drop(lock);
        let other = Config {
            shards: 3,
            ..cfg.clone()
        };
        let refused = prepare(&other).unwrap_err();
        assert!(
            refused.contains("written by 2 shards") && refused.contains("--shards 2"),
            "{refused}"
        );
        drop(prepare(&cfg).unwrap());
        fs::write(dir.join("wsgate.meta"), "something else").unwrap();
        assert!(prepare(&cfg).unwrap_err().contains("not a wsgate data directory"));
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Stands in for the shard: a durable store that the test appends to, restated on
    /// the writer's demand, with what the writer reported.
    struct Source {
        store: MemStore,
        pos: crate::msg::Position,
        durable: u64,
    }

    const LOBBY: fn() -> crate::msg::store::LogKey = || crate::msg::store::LogKey::Room("lobby".into());

    impl Source {
        /// Appends message `seq` (a 200-byte frame) to the lobby.
        fn append_lobby(&mut self, seq: u64) {
            use crate::msg::store::{Record, Store as _};
            let record = Record {
                seq,
                at: Instant::now(),
                frame: crate::proto::frame::SharedFrame::text(&format!("{seq:0>200}")),
                sender: None,
                acked: false,
            };
            self.store.append(&LOBBY(), record, Instant::now());
            self.pos.seq = seq;
        }

        /// Until the writer has made everything appended so far durable.
        async fn wait_durable(source: &RefCell<Self>) {
            use crate::msg::store::Store as _;
            while source.borrow().durable < source.borrow().store.journal_end() {
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
        }
    }

    impl JournalSource for Source {
        fn take_journal(&mut self) -> Option<(Vec<u8>, u64)> {
            let journal = self.store.journal_mut()?;
            (journal.encoder.pending() > 0).then(|| {
                let end = journal.encoder.end();
                (journal.encoder.take(Vec::new()), end)
            })
        }

        fn restate_journal(&mut self) -> (Vec<u8>, Vec<u8>, u64) {
            use crate::msg::store::Store as _;
            let before = self.take_journal().map(|(b, _)| b).unwrap_or_default();
            self.store.restate(&LOBBY(), self.pos);
            let (restated, end) = self.take_journal().expect("a restatement");
            (before, restated, end)
        }

        fn on_durable(&mut self, upto: u64) {
            self.durable = self.durable.max(upto);
        }

        fn set_store_full(&mut self, full: bool) {
            self.store.set_full(full);
        }
    }

    /// The writer rolls small segments, compacts them by restatement and deletes what was
    /// restated, keeps the disk near the live data, and what it leaves recovers to the
    /// same log: the last messages under the history limit, the position and epoch.
    #[test]
    fn the_writer_rolls_compacts_and_deletes_segments_and_recovery_reads_them_back() {
        use crate::msg::store::Store as _;
        let dir = temp_dir("writer");
        let cfg = Config {
            shards: 1,
            data_dir: crate::config::DataDir(dir.clone()),
            segment_bytes: 8 * 1024,
            fsync_window: Duration::from_micros(100),
            ..Config::default()
        };
        let limits = MsgLimits {
            history_max_messages: 20,
            ..MsgLimits::default()
        };
        let _lock = prepare(&cfg).unwrap();
        let (stats, segments_seen) = glommio::LocalExecutorBuilder::default()
            .spawn({
                let (cfg, limits) = (cfg.clone(), limits.clone());
                move || async move {
                    let recovered = recover(&cfg, 0, &limits).unwrap();
                    let mut store = recovered.store;
                    let fresh = crate::msg::Position { epoch: 5, seq: 0 };
                    assert_eq!(store.start_position(&LOBBY(), fresh), fresh);
                    let writer = recovered.writer;
                    let (signal, stats) = (writer.signal(), writer.stats());
                    let source = Rc::new(RefCell::new(Source {
                        store,
                        pos: fresh,
                        durable: 0,
                    }));
                    let task = glommio::spawn_local(writer.run(source.clone()));
                    let mut segments_seen = 0;
                    for seq in 1..=2000u64 {
                        source.borrow_mut().append_lobby(seq);
                        signal.raise();
                        if seq % 50 == 0 {
                            // Every answer waits for the journal: so does the test.
                            Source::wait_durable(&source).await;
                            segments_seen = segments_seen.max(stats.borrow().segments);
                        }
                    }
                    signal.stop();
                    task.await;
                    let stats = stats.borrow();
                    ((stats.compactions, stats.segments, stats.disk_bytes), segments_seen)
                }
            })
            .unwrap()
            .join()
            .unwrap();
        let (compactions, segments, disk) = stats;
        // 2000 records of ~230 bytes: about 56 segments of 8 KiB written, few kept.
        assert!(compactions >= 5, "compactions {compactions}");
        assert!(
            segments_seen >= 2 && segments <= 4,
            "segments: at most {segments_seen}, at the end {segments}"
        );
        let on_disk: Vec<_> = fs::read_dir(shard_dir(&dir, 0)).unwrap().collect();
        assert_eq!(
            on_disk.len() as u64,
            segments,
            "deleted segments are gone from the directory"
        );
        assert!(disk < 4 * 8 * 1024, "disk {disk} bytes");
        // Every segment was preallocated to its full length: its tail is zeros, which
        // recovery below reads as a clean end, not a cut.
        for entry in on_disk {
            let len = entry.unwrap().metadata().unwrap().len();
            assert!(len >= 8 * 1024, "a segment of {len} bytes");
        }
        // What is left recovers to the same log.
        let mut recovered = recover(&cfg, 0, &limits).unwrap();
        assert_eq!(
            recovered.report.read.cut_segments, 0,
            "zeros after the records are no damage"
        );
        let mut out = Vec::new();
        recovered.store.read_since(&LOBBY(), 0, Instant::now(), &mut out);
        let seqs: Vec<u64> = out.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (1981..=2000).collect::<Vec<_>>());
        assert!(out[19].frame.as_bytes().ends_with(format!("{:0>200}", 2000).as_bytes()));
        let fresh = crate::msg::Position { epoch: 77, seq: 0 };
        assert_eq!(
            recovered.store.start_position(&LOBBY(), fresh),
            crate::msg::Position { epoch: 5, seq: 2000 },
            "the epoch and seq survive"
        );
        drop(_lock);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A budget smaller than a segment: the segment is preallocated to under the budget,
    /// so the store is not full before anything is written, and it fills as records do.
    #[test]
    fn preallocation_stays_under_the_budget() {
        use crate::msg::store::Store as _;
        let dir = temp_dir("budget");
        let cfg = Config {
            shards: 1,
            data_dir: crate::config::DataDir(dir.clone()),
            segment_bytes: 64 * 1024,
            data_max_bytes: 16 * 1024,
            ..Config::default()
        };
        let limits = MsgLimits::default();
        let _lock = prepare(&cfg).unwrap();
        let (full_early, full_late, disk_early) = glommio::LocalExecutorBuilder::default()
            .spawn({
                let (cfg, limits) = (cfg.clone(), limits.clone());
                move || async move {
                    let recovered = recover(&cfg, 0, &limits).unwrap();
                    let writer = recovered.writer;
                    let (signal, stats) = (writer.signal(), writer.stats());
                    let fresh = crate::msg::Position { epoch: 1, seq: 0 };
                    let source = Rc::new(RefCell::new(Source {
                        store: recovered.store,
                        pos: fresh,
                        durable: 0,
                    }));
                    source.borrow_mut().store.start_position(&LOBBY(), fresh);
                    let task = glommio::spawn_local(writer.run(source.clone()));
                    let mut early = None;
                    for seq in 1..=200u64 {
                        source.borrow_mut().append_lobby(seq);
                        signal.raise();
                        Source::wait_durable(&source).await;
                        if seq == 1 {
                            // The budget is weighed after the write: wait for its figures.
                            while stats.borrow().disk_bytes == 0 {
                                glommio::timer::sleep(Duration::from_millis(1)).await;
                            }
                            let stats = stats.borrow();
                            early = Some((stats.full, stats.disk_bytes));
                        }
                    }
                    signal.stop();
                    task.await;
                    let (full_early, disk_early) = early.unwrap();
                    let full_late = stats.borrow().full;
                    (full_early, full_late, disk_early)
                }
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(!full_early, "one record does not fill a 16 KiB budget");
        assert!(
            disk_early < 16 * 1024 && disk_early > 8 * 1024,
            "preallocated {disk_early} bytes"
        );
        assert!(full_late, "200 records of 230 bytes do");
        drop(_lock);
        fs::remove_dir_all(&dir).unwrap();
    }
}
