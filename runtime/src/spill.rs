//! The gate's sealed spill: every subject's rows of a job, partitioned by subject, held in
//! memory while they fit the job's budget and otherwise written to disk sealed under a key
//! that exists only in the job's memory (AES-256-GCM by ring, a fresh random key for each of
//! a job's sets of files,
//! each frame's nonce its number; the files die with the job, and a file left by a killed
//! process is noise without its key).
//!
//! Rows are hashed by subject into [`BUCKETS`] buckets, each written to a file of its own
//! ([`SealedFiles`], shared with the tally's own records in `release/parts.rs`); the engine's
//! rows ([`SealedSpill`]) are read back as groups of consecutive buckets of at most the
//! budget's share, so each group's per-(cell, subject) aggregation is bounded whatever the
//! table's size, and every subject's rows are all in one group (a cell sees each of its
//! subjects exactly once across the groups).

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::execution::memory_pool::MemoryReservation;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

use crate::error::{Error, Result};

/// Buckets the subjects are hashed into; a group is one or more consecutive buckets.
pub(crate) const BUCKETS: usize = 256;

/// A frame on disk: the ciphertext's length, its number (the nonce), the ciphertext and tag.
const HEADER: usize = 4 + 8;

/// One bucket: its rows held in memory, what it holds in all (in memory and in its file).
#[derive(Default)]
struct Bucket {
    /// Slices of partitioned batches, each with its share of its batch's memory.
    held: Vec<(RecordBatch, usize)>,
    bytes: usize,
}

/// The sealed files of a job's buckets, in a directory of its own made when first written:
/// each write is a frame sealed under a key that exists only in the job's memory, numbered
/// (its nonce) and bound to its bucket. Everything is removed when this is dropped.
pub(crate) struct SealedFiles {
    dir: PathBuf,
    created: bool,
    /// Shared with the buckets taken out to be read.
    cipher: Arc<LessSafeKey>,
    files: Vec<Option<File>>,
    /// Per bucket, the numbers of the frames written to its file, in order: read back exactly
    /// these.
    frames: Vec<Vec<u64>>,
    next_frame: u64,
    written: u64,
    /// What it and its siblings (the same job's other files) wrote, and the most bytes they
    /// may write: sixteen times the job's budget.
    all_written: std::sync::Arc<std::sync::atomic::AtomicU64>,
    max_written: u64,
    /// Each bucket's file's length, and its frames written out behind the writer.
    ends: Vec<u64>,
    behind: crate::behind::Behind<usize>,
    /// Each bucket's file was asked of the disk ahead of its read.
    asked: Vec<bool>,
    /// Removes the files read, behind their readers (shared with the buckets taken out).
    remover: Arc<Remover>,
}

/// Removes the bucket files read, on a thread of its own (made when first asked; one for each
/// of a job's sibling files, at most one per lane: at 100M rows each was busy for most of the
/// tally, so one for all would fall behind): on a file system that discards freed blocks as it
/// frees them (ext4 mounted with `discard`), removing a file waits for the disk, which would
/// stall the tally's readers at every bucket. Only when files are removed changes: a file is
/// removed once read, a little later; the files' directory is removed when its
/// [`SealedFiles`] is dropped, after every file asked for before (and with every file not
/// read). Where no thread can be made, a file is removed by its reader.
#[derive(Default)]
struct Remover {
    /// To the thread, while it runs; with its handle.
    queue: std::sync::Mutex<Option<RemoverThread>>,
}

struct RemoverThread {
    files: std::sync::mpsc::Sender<(File, PathBuf)>,
    thread: std::thread::JoinHandle<()>,
}

impl RemoverThread {
    /// A thread that removes each file it is given until its sender is dropped; `None` when
    /// no thread can be made.
    fn start() -> Option<RemoverThread> {
        let (files, rx) = std::sync::mpsc::channel::<(File, PathBuf)>();
        let thread = std::thread::Builder::new()
            .name("tidegate-spill-rm".into())
            .spawn(move || {
                for (file, path) in rx {
                    remove_now(file, &path);
                }
            })
            .ok()?;
        Some(RemoverThread { files, thread })
    }
}

impl Remover {
    /// Removes `path` (whose open file is `file`) soon.
    fn remove(&self, file: File, path: PathBuf) {
        let Ok(mut queue) = self.queue.lock() else {
            return remove_now(file, &path);
        };
        if queue.is_none() {
            *queue = RemoverThread::start();
        }
        let Some(q) = queue.as_ref() else {
            return remove_now(file, &path);
        };
        if let Err(std::sync::mpsc::SendError((file, path))) = q.files.send((file, path)) {
            remove_now(file, &path);
        }
    }

    /// Waits until every file asked for is removed (a file asked for later starts a thread
    /// again).
    fn wait(&self) {
        let running = self.queue.lock().ok().and_then(|mut queue| queue.take());
        if let Some(RemoverThread { files, thread }) = running {
            drop(files);
            let _ = thread.join();
        }
    }
}

fn remove_now(file: File, path: &Path) {
    let _ = fs::remove_file(path);
    // The file's blocks are freed (and discarded) when it is closed, here.
    drop(file);
}

/// Buckets whose files are asked of the disk ahead of a read: the buckets are read in
/// their order (by two readers, each a bucket at a time), so the next ones come from the
/// disk while one is opened and taken.
const AHEAD: usize = 3;

/// The most of a file asked of the disk ahead: a bucket of one subject's many rows (up to the
/// job's disk limit) is not pulled into the page cache whole before it is read (its reading
/// reserves it first, and fails the job when it is too large); the kernel's own read-ahead
/// follows the rest as it is read.
const AHEAD_BYTES: u64 = 32 << 20;

/// Files to ask of the disk ahead of their reading ([`SealedFiles::take`]): asked by
/// [`Ahead::ask`], by a thread that holds no lock (asking allocates page-cache pages and may
/// wait for the disk's queue).
#[derive(Default)]
pub(crate) struct Ahead(Vec<(File, u64)>);

impl Ahead {
    /// Asks for the files' first bytes (at most [`AHEAD_BYTES`] of each). Advice only.
    pub(crate) fn ask(self) {
        for (file, len) in self.0 {
            crate::behind::read_ahead(&file, len.min(AHEAD_BYTES));
        }
    }
}

impl SealedFiles {
    /// Files under `root` for a job of `budget` bytes of memory.
    pub(crate) fn new(root: &Path, budget: usize) -> Result<SealedFiles> {
        SealedFiles::counted(root, (budget as u64).saturating_mul(16), Default::default())
    }

    /// Files of the same job in a directory of their own, under a key of their own, whose
    /// writes count toward the same limit.
    pub(crate) fn sibling(&self) -> Result<SealedFiles> {
        let root = self.dir.parent().unwrap_or(&self.dir);
        SealedFiles::counted(
            root,
            self.max_written,
            std::sync::Arc::clone(&self.all_written),
        )
    }

    fn counted(
        root: &Path,
        max_written: u64,
        all_written: std::sync::Arc<std::sync::atomic::AtomicU64>,
    ) -> Result<SealedFiles> {
        let key = crate::crypto::random_bytes::<32>();
        let name = hex::encode(crate::crypto::random_bytes::<12>());
        Ok(SealedFiles {
            dir: root.join(format!("job-{name}")),
            created: false,
            cipher: Arc::new(LessSafeKey::new(
                UnboundKey::new(&AES_256_GCM, &key)
                    .map_err(|_| Error::Internal("gate spill: key".into()))?,
            )),
            files: (0..BUCKETS).map(|_| None).collect(),
            frames: vec![Vec::new(); BUCKETS],
            next_frame: 0,
            written: 0,
            all_written,
            max_written,
            ends: vec![0; BUCKETS],
            behind: Default::default(),
            asked: vec![false; BUCKETS],
            remover: Default::default(),
        })
    }

    /// Bytes written to disk (sealed), in all.
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// Seals `plain` as the next frame of bucket `b`'s file (in place: `plain` holds the
    /// sealed frame after).
    pub(crate) fn write(&mut self, b: usize, plain: &mut Vec<u8>) -> Result<()> {
        if plain.len() > u32::MAX as usize - 64 {
            return Err(Error::Limit(
                "the gate's work for the job holds too many rows of one subject".into(),
            ));
        }
        if !self.created {
            create_private_dir(&self.dir)?;
            self.created = true;
        }
        let frame = self.next_frame;
        self.next_frame += 1;
        self.cipher
            .seal_in_place_append_tag(nonce(frame), Aad::from(aad(b, frame)), plain)
            .map_err(|_| Error::Internal("gate spill: sealing failed".into()))?;
        // The disk is shared with the metadata and the audit log: a job never takes its
        // last gigabyte (or its last twentieth).
        if let Some(free) = free_bytes(&self.dir)
            && free.saturating_sub((HEADER + plain.len()) as u64) < disk_reserve(&self.dir)
        {
            return Err(Error::Limit(
                "the disk is too full for the gate's work for the job".into(),
            ));
        }
        let bytes = (HEADER + plain.len()) as u64;
        self.written += bytes;
        let all = self
            .all_written
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed)
            .saturating_add(bytes);
        if all > self.max_written {
            return Err(Error::Limit(
                "the gate's work for the job exceeded its disk limit (sixteen times its memory)"
                    .into(),
            ));
        }
        let file = match &mut self.files[b] {
            Some(f) => f,
            None => self.files[b].insert(
                fs::OpenOptions::new()
                    .create_new(true)
                    .read(true)
                    .append(true)
                    .open(self.dir.join(format!("{b:03}.sealed")))?,
            ),
        };
        let mut header = [0u8; HEADER];
        header[..4].copy_from_slice(&(plain.len() as u32).to_le_bytes());
        header[4..].copy_from_slice(&frame.to_le_bytes());
        file.write_all(&header)?;
        file.write_all(plain)?;
        self.frames[b].push(frame);
        let at = self.ends[b];
        self.ends[b] += bytes;
        let files = &self.files;
        if let Some(file) = &files[b] {
            self.behind
                .wrote(b, file, at, bytes, |k| files[k].as_ref())?;
        }
        Ok(())
    }

    /// Opens every frame of bucket `b`'s file in order, each reserved in `reservation` before
    /// it is read (so an oversized bucket, one subject's many rows, fails the job, not the
    /// host), and gives each to `each`; the file is checked whole (every frame there, in
    /// order, unaltered) and removed, behind the reader.
    pub(crate) fn read(
        &mut self,
        b: usize,
        reservation: &MemoryReservation,
        each: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let (bucket, ahead) = self.take(b);
        ahead.ask();
        match bucket {
            Some(bucket) => bucket.read(reservation, each),
            None => Ok(()),
        }
    }

    /// Bucket `b`'s file, taken out to be read (by [`SealedBucket::read`], on any thread,
    /// while these files are written or other buckets read), and nothing of it kept here;
    /// `None` when nothing was written to it. With it, the next buckets' files not asked for
    /// before, to ask of the disk now ([`Ahead::ask`]) so that they are in memory when read.
    pub(crate) fn take(&mut self, b: usize) -> (Option<SealedBucket>, Ahead) {
        let mut ahead = Ahead::default();
        for next in b..(b + 1 + AHEAD).min(BUCKETS) {
            if let Some(file) = &self.files[next]
                && !std::mem::replace(&mut self.asked[next], true)
                // A handle of its own (the same open file): none, no advice.
                && let Ok(file) = file.try_clone()
            {
                ahead.0.push((file, self.ends[next]));
            }
        }
        let frames = std::mem::take(&mut self.frames[b]);
        self.behind.forget(b);
        self.ends[b] = 0;
        let bucket = self.files[b].take().map(|file| SealedBucket {
            b,
            file,
            frames,
            cipher: Arc::clone(&self.cipher),
            path: self.dir.join(format!("{b:03}.sealed")),
            remover: Arc::clone(&self.remover),
        });
        (bucket, ahead)
    }

    /// Waits until every file read is removed.
    #[cfg(test)]
    pub(crate) fn removed(&self) {
        self.remover.wait();
    }
}

/// One bucket's sealed file, taken out of its [`SealedFiles`] to be read: the frames written
/// to it, in order, and the key that opens them.
pub(crate) struct SealedBucket {
    b: usize,
    file: File,
    frames: Vec<u64>,
    cipher: Arc<LessSafeKey>,
    path: PathBuf,
    remover: Arc<Remover>,
}

impl SealedBucket {
    /// Opens every frame in order, each reserved in `reservation` before it is read (so an
    /// oversized bucket, one subject's many rows, fails the job, not the host), and gives
    /// each to `each`; the file is checked whole (every frame there, in order, unaltered)
    /// and removed, behind the reader (a file whose reading fails is removed with its job's
    /// directory).
    pub(crate) fn read(
        self,
        reservation: &MemoryReservation,
        mut each: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let SealedBucket {
            b,
            file,
            frames,
            cipher,
            path,
            remover,
        } = self;
        let mut reader = std::io::BufReader::new(file);
        std::io::Seek::rewind(&mut reader)?;
        let damaged = || Error::Integrity("the gate's spill file is damaged".into());
        // One room for every frame in turn (its pages made once, used again while hot),
        // reserved while it is held, besides each frame.
        let (mut sealed, mut room) = (Vec::new(), 0usize);
        for expected in frames {
            let mut header = [0u8; HEADER];
            reader.read_exact(&mut header).map_err(|_| damaged())?;
            let len = u32::from_le_bytes(header[..4].try_into().unwrap_or_default());
            let frame = u64::from_le_bytes(header[4..].try_into().unwrap_or_default());
            // Each frame in the place it was written: none dropped, moved or repeated.
            if frame != expected {
                return Err(damaged());
            }
            reservation
                .try_grow(len as usize)
                .map_err(|_| memory_limit())?;
            if len as usize > room {
                reservation
                    .try_grow(len as usize - room)
                    .map_err(|_| memory_limit())?;
                room = len as usize;
                sealed = Vec::new();
                sealed.reserve_exact(room);
            }
            sealed.clear();
            sealed.resize(len as usize, 0);
            reader.read_exact(&mut sealed).map_err(|_| damaged())?;
            let plain = cipher
                .open_in_place(nonce(frame), Aad::from(aad(b, frame)), &mut sealed)
                .map_err(|_| damaged())?;
            each(plain)?;
        }
        drop(sealed);
        reservation.shrink(room.min(reservation.size()));
        // Nothing more may follow the last frame.
        if reader.read(&mut [0u8; 1])? != 0 {
            return Err(damaged());
        }
        remover.remove(reader.into_inner(), path);
        Ok(())
    }
}

impl Drop for SealedFiles {
    fn drop(&mut self) {
        // The files read are removed first: none is removed after its directory.
        self.remover.wait();
        if self.created {
            self.files.clear();
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Where a job's per-subject rows wait for their aggregation.
pub(crate) struct SealedSpill {
    files: SealedFiles,
    /// The rows' schema as the engine gives them, and as the spill keeps them: string and
    /// binary views as plain strings and binaries, whose slices own only their rows' bytes (a
    /// view's slice shares its batch's whole data, which the accounting and the files would
    /// count again for every bucket).
    schema: SchemaRef,
    stored: SchemaRef,
    subject: usize,
    seed: u64,
    /// Rows before anything was partitioned: a job that fits its budget never hashes them.
    raw: Vec<RecordBatch>,
    buckets: Vec<Bucket>,
    partitioned: bool,
    /// The first bucket not read yet: the groups are read once each, in order.
    next: usize,
    /// Bytes held in memory since the last write, reserved in the job's pool until no row of
    /// them is held (a slice keeps its whole partitioned batch); and the most the spill holds
    /// before it writes.
    held: usize,
    limit: usize,
    /// The most bytes of rows aggregated at once (the aggregation's state is a few times
    /// their size).
    group_limit: usize,
    reservation: MemoryReservation,
}

impl SealedSpill {
    /// A spill for batches of `schema` partitioned by the column `subject`, writing under
    /// `root` (a directory of its own, made when first needed) once more than a quarter of
    /// `budget` is held, and giving back groups of at most an eighth of it. What it holds is
    /// reserved in the job's memory pool through `reservation`.
    pub(crate) fn new(
        root: &Path,
        schema: SchemaRef,
        subject: &str,
        budget: usize,
        reservation: MemoryReservation,
    ) -> Result<SealedSpill> {
        let subject = schema
            .index_of(subject)
            .map_err(|_| Error::Internal("gate columns: no subject".into()))?;
        let stored = Arc::new(arrow::datatypes::Schema::new(
            schema
                .fields()
                .iter()
                .map(|f| {
                    f.as_ref()
                        .clone()
                        .with_data_type(stored_type(f.data_type()))
                })
                .collect::<Vec<_>>(),
        ));
        Ok(SealedSpill {
            files: SealedFiles::new(root, budget)?,
            schema,
            stored,
            subject,
            seed: u64::from_le_bytes(crate::crypto::random_bytes::<8>()),
            raw: Vec::new(),
            buckets: (0..BUCKETS).map(|_| Bucket::default()).collect(),
            partitioned: false,
            next: 0,
            held: 0,
            limit: (budget / 4).clamp(1 << 20, 1 << 30),
            group_limit: (budget / 8).clamp(1 << 19, 1 << 29),
            reservation,
        })
    }

    /// The rows' schema, as the engine gave them and [`SealedSpill::read`] gives them back.
    pub(crate) fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    /// Bytes written to disk (sealed), in all.
    pub(crate) fn written(&self) -> u64 {
        self.files.written()
    }

    /// Takes one batch of rows.
    pub(crate) fn push(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let batch = self.convert(&batch, &self.stored)?;
        let size = match self.partitioned {
            true => self.partition(&batch)?,
            false => {
                let size = slice_bytes(&batch);
                self.raw.push(batch);
                size
            }
        };
        self.hold(size)
    }

    /// `batch` with its columns cast to `schema`'s types (each an exact conversion between a
    /// view and its plain form).
    fn convert(&self, batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
        if batch.schema().fields() == schema.fields() {
            return Ok(batch.clone());
        }
        let columns = batch
            .columns()
            .iter()
            .zip(schema.fields())
            .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Internal(format!("gate spill: {e}")))?;
        RecordBatch::try_new(Arc::clone(schema), columns)
            .map_err(|e| Error::Internal(format!("gate spill: {e}")))
    }

    /// Counts `size` more bytes held, writing everything held when over the limit (or when
    /// the job's pool has no room for them). Everything: a bucket's held rows are slices of
    /// whole partitioned batches, and one bucket kept would keep every batch it has a slice of.
    fn hold(&mut self, size: usize) -> Result<()> {
        self.held += size;
        if self.held <= self.limit && self.reservation.try_grow(size).is_ok() {
            return Ok(());
        }
        self.partition_raw()?;
        self.write_held()
    }

    /// Partitions the rows held before anything was (once); what is held is then counted as
    /// the buckets count it.
    fn partition_raw(&mut self) -> Result<()> {
        if !self.partitioned {
            self.partitioned = true;
            let mut held = 0;
            for b in std::mem::take(&mut self.raw) {
                held += self.partition(&b)?;
            }
            self.held = held;
        }
        Ok(())
    }

    /// Hashes each row's subject to its bucket and adds the rows to the buckets' held rows.
    /// Returns the bytes they hold there.
    fn partition(&mut self, batch: &RecordBatch) -> Result<usize> {
        let subjects = arrow::compute::cast(batch.column(self.subject), &DataType::Utf8)
            .map_err(|e| Error::Internal(format!("gate spill: {e}")))?;
        let subjects = subjects.as_string::<i32>();
        let state = foldhash::fast::FixedState::with_seed(self.seed);
        let of: Vec<u32> = (0..subjects.len())
            .map(|i| {
                let who: &[u8] = match subjects.is_valid(i) {
                    true => subjects.value(i).as_bytes(),
                    false => &[],
                };
                (std::hash::BuildHasher::hash_one(&state, who) % BUCKETS as u64) as u32
            })
            .collect();
        // Counting sort: one `take` puts every bucket's rows side by side.
        let mut starts = vec![0u32; BUCKETS + 1];
        for b in &of {
            starts[*b as usize + 1] += 1;
        }
        for i in 0..BUCKETS {
            starts[i + 1] += starts[i];
        }
        let mut next = starts.clone();
        let mut held = 0;
        let mut order = vec![0u32; of.len()];
        for (row, b) in of.iter().enumerate() {
            order[next[*b as usize] as usize] = row as u32;
            next[*b as usize] += 1;
        }
        let sorted = arrow::compute::take_record_batch(batch, &UInt32Array::from(order))
            .map_err(|e| Error::Internal(format!("gate spill: {e}")))?;
        for b in 0..BUCKETS {
            let (start, end) = (starts[b] as usize, starts[b + 1] as usize);
            if end > start {
                let part = sorted.slice(start, end - start);
                let share = slice_bytes(&part);
                self.buckets[b].bytes += share;
                self.buckets[b].held.push((part, share));
                held += share;
            }
        }
        Ok(held)
    }

    /// Seals every bucket's held rows into its file; nothing is held after.
    fn write_held(&mut self) -> Result<()> {
        for b in 0..BUCKETS {
            if self.buckets[b].held.is_empty() {
                continue;
            }
            // One batch per bucket and write: the slices are small (a 256th of a batch).
            let held = coalesce(&self.stored, std::mem::take(&mut self.buckets[b].held))?;
            let mut plain = encode(&self.stored, &held)?;
            drop(held);
            self.files.write(b, &mut plain)?;
        }
        self.held = 0;
        self.reservation.free();
        Ok(())
    }

    /// The buckets of each group, in order: all of them at once when they fit one group
    /// (rows held in memory are partitioned then, without writing them).
    pub(crate) fn groups(&mut self) -> Result<Vec<std::ops::Range<usize>>> {
        if !self.partitioned {
            if self.held <= self.group_limit {
                return Ok(std::iter::once(0..BUCKETS).collect());
            }
            self.partition_raw()?;
        }
        let mut groups = Vec::new();
        let (mut start, mut bytes) = (0, 0usize);
        for (b, bucket) in self.buckets.iter().enumerate() {
            if bytes > 0 && bytes + bucket.bytes > self.group_limit {
                groups.push(start..b);
                (start, bytes) = (b, 0);
            }
            bytes += bucket.bytes;
        }
        groups.push(start..BUCKETS);
        Ok(groups)
    }

    /// The rows of one group, read back and opened; each file is checked whole (every frame
    /// there, in order, unaltered). They are reserved in the job's pool until the next call.
    pub(crate) fn read(&mut self, group: std::ops::Range<usize>) -> Result<Vec<RecordBatch>> {
        // Each group once, in order: a group read twice or skipped would give its subjects'
        // rows to no one, or to one cell twice, and the job fails instead.
        if !group.is_empty() {
            if group.start != self.next || group.end > BUCKETS {
                return Err(Error::Internal(
                    "the gate's spill: a group read out of its order".into(),
                ));
            }
            self.next = group.end;
        }
        // The group before is given back. Rows still held keep the batches they are slices
        // of: those stay reserved whole until no bucket holds a row.
        let holding = !self.raw.is_empty() || self.buckets.iter().any(|b| !b.held.is_empty());
        if !holding {
            self.held = 0;
        }
        self.reservation
            .try_resize(self.held)
            .map_err(|_| memory_limit())?;
        let mut out = Vec::new();
        if !self.partitioned {
            out = std::mem::take(&mut self.raw);
        }
        let group = if self.partitioned { group } else { 0..0 };
        for b in group {
            let held = std::mem::take(&mut self.buckets[b].held);
            // Its rows' copy (below), beside the batches they are slices of.
            self.reservation
                .try_grow(held.iter().map(|(_, share)| share).sum::<usize>())
                .map_err(|_| memory_limit())?;
            self.files.read(b, &self.reservation, |plain| {
                out.extend(decode(plain)?);
                Ok(())
            })?;
            out.extend(coalesce(&self.stored, held)?);
        }
        let schema = Arc::clone(&self.schema);
        out.iter().map(|b| self.convert(b, &schema)).collect()
    }
}

/// A view type's plain form (the spill keeps strings and binaries whole per row).
fn stored_type(t: &DataType) -> DataType {
    match t {
        DataType::Utf8View => DataType::Utf8,
        DataType::BinaryView => DataType::Binary,
        other => other.clone(),
    }
}

/// Free bytes on the file system of `dir` (or of its nearest existing parent).
pub(crate) fn free_bytes(dir: &Path) -> Option<u64> {
    let stat = statvfs(dir)?;
    Some(stat.0.saturating_mul(stat.2))
}

/// What a job's spill always leaves free: a gigabyte, or a twentieth of the file system.
pub(crate) fn disk_reserve(dir: &Path) -> u64 {
    let total = statvfs(dir).map_or(0, |s| s.1.saturating_mul(s.2));
    (1u64 << 30).max(total / 20)
}

/// (blocks available, blocks in all, block size) of the file system holding `dir`.
fn statvfs(dir: &Path) -> Option<(u64, u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `path` is a NUL-terminated string that outlives the call; `stat` is a valid,
    // writable `statvfs` the call fills in, read only when it reports success.
    let stat = unsafe {
        if libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) != 0 {
            return None;
        }
        stat.assume_init()
    };
    Some((
        stat.f_bavail as u64,
        stat.f_blocks as u64,
        stat.f_frsize as u64,
    ))
}

/// The memory of a batch's own rows: a slice (of a table's batch, of a partitioned one)
/// shares its buffers with its whole, which it is not counted for.
fn slice_bytes(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|c| {
            let data = c.to_data();
            data.get_slice_memory_size()
                .unwrap_or_else(|_| c.get_array_memory_size())
        })
        .sum()
}

fn memory_limit() -> Error {
    Error::Limit("the job exceeded its memory limit".into())
}

fn nonce(frame: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&frame.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Binds a frame to its bucket and place: frames cannot be moved between files.
fn aad(bucket: usize, frame: u64) -> Vec<u8> {
    let mut a = b"tidegate-spill-v1|".to_vec();
    a.extend_from_slice(&(bucket as u64).to_le_bytes());
    a.extend_from_slice(&frame.to_le_bytes());
    a
}

/// Held slices as whole batches of about the engine's batch size.
fn coalesce(schema: &SchemaRef, held: Vec<(RecordBatch, usize)>) -> Result<Vec<RecordBatch>> {
    if held.is_empty() {
        return Ok(Vec::new());
    }
    let whole = arrow::compute::concat_batches(schema, held.iter().map(|(b, _)| b))
        .map_err(|e| Error::Internal(format!("gate spill: {e}")))?;
    Ok(chunks(whole))
}

/// A batch as zero-copy slices of at most [`ROWS_PER_BATCH`] rows.
fn chunks(whole: RecordBatch) -> Vec<RecordBatch> {
    (0..whole.num_rows())
        .step_by(ROWS_PER_BATCH)
        .map(|at| whole.slice(at, ROWS_PER_BATCH.min(whole.num_rows() - at)))
        .collect()
}

/// The engine's batch size.
const ROWS_PER_BATCH: usize = 8192;

fn encode(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let bad = |e: arrow::error::ArrowError| Error::Internal(format!("gate spill: {e}"));
    let mut w = arrow_ipc::writer::StreamWriter::try_new(Vec::new(), schema).map_err(bad)?;
    for b in batches {
        w.write(b).map_err(bad)?;
    }
    w.finish().map_err(bad)?;
    w.into_inner().map_err(bad)
}

fn decode(bytes: &[u8]) -> Result<Vec<RecordBatch>> {
    let bad = |_| Error::Integrity("the gate's spill file is damaged".into());
    let mut out = Vec::new();
    for b in
        arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).map_err(bad)?
    {
        out.extend(chunks(b.map_err(bad)?));
    }
    Ok(out)
}

/// The spill's directory, readable by this user only.
fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::DirBuilder::new().mode(0o700).create(dir)?;
    Ok(())
}

/// Removes what killed jobs left under `root` (sealed under keys that died with them).
pub(crate) fn sweep(root: &Path) {
    if let Ok(entries) = fs::read_dir(root) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("job-") {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Test helpers: what a spill wrote.
#[cfg(test)]
pub(crate) fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(dirs) = fs::read_dir(root) {
        for d in dirs.flatten() {
            if let Ok(files) = fs::read_dir(d.path()) {
                out.extend(files.flatten().map(|f| f.path()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};
    use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryConsumer, MemoryPool};
    use std::sync::Arc;

    fn rows(from: usize, n: usize) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("who", DataType::Utf8, true),
            Field::new("v", DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(
                    (from..from + n).map(|i| format!("MARKER-{:06}", i % 5000)),
                )),
                Arc::new(Int64Array::from_iter_values(
                    (from..from + n).map(|i| i as i64),
                )),
            ],
        )
        .unwrap()
    }

    fn spill(root: &Path, limit: usize) -> SealedSpill {
        let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(1 << 30));
        let r = MemoryConsumer::new("test").register(&pool);
        SealedSpill::new(root, rows(0, 1).schema(), "who", limit, r).unwrap()
    }

    fn read_all(s: &mut SealedSpill) -> Vec<(String, i64)> {
        let mut got = Vec::new();
        for g in s.groups().unwrap() {
            for b in s.read(g).unwrap() {
                let who = b.column(0).as_string::<i32>();
                let v = b.column(1).as_primitive::<arrow::datatypes::Int64Type>();
                got.extend((0..b.num_rows()).map(|i| (who.value(i).to_string(), v.value(i))));
            }
        }
        got.sort();
        got
    }

    #[test]
    fn rows_that_fit_the_budget_never_reach_the_disk() {
        let root = tempfile::tempdir().unwrap();
        let mut s = spill(root.path(), 256 << 20);
        for i in 0..10 {
            s.push(rows(i * 1000, 1000)).unwrap();
        }
        let groups = s.groups().unwrap();
        assert_eq!((groups.len(), groups[0].clone()), (1, 0..BUCKETS));
        assert_eq!(read_all(&mut s).len(), 10_000);
        assert_eq!(s.written(), 0);
        assert!(std::fs::read_dir(root.path()).unwrap().next().is_none());
    }

    #[test]
    fn rows_over_the_budget_are_written_sealed_read_back_whole_and_destroyed_with_the_job() {
        let root = tempfile::tempdir().unwrap();
        let mut s = spill(root.path(), 4 << 20);
        let mut expected = Vec::new();
        for i in 0..40 {
            let b = rows(i * 8192, 8192);
            let who = b.column(0).as_string::<i32>().clone();
            expected.extend((0..8192).map(|r| (who.value(r).to_string(), (i * 8192 + r) as i64)));
            s.push(b).unwrap();
        }
        assert!(s.written() > 0);
        let files = files_under(root.path());
        assert!(!files.is_empty());
        for f in &files {
            let bytes = std::fs::read(f).unwrap();
            assert!(
                !bytes.windows(6).any(|w| w == b"MARKER"),
                "a spill file holds a value in plaintext"
            );
        }
        let groups = s.groups().unwrap();
        assert!(groups.len() > 1, "{groups:?}");
        // Every subject's rows are in one group only.
        let mut seen = std::collections::HashMap::new();
        let mut got = Vec::new();
        for (g, range) in groups.into_iter().enumerate() {
            for b in s.read(range).unwrap() {
                let who = b.column(0).as_string::<i32>();
                let v = b.column(1).as_primitive::<arrow::datatypes::Int64Type>();
                for i in 0..b.num_rows() {
                    let w = who.value(i).to_string();
                    assert_eq!(*seen.entry(w.clone()).or_insert(g), g);
                    got.push((w, v.value(i)));
                }
            }
        }
        got.sort();
        expected.sort();
        assert_eq!(got, expected);
        drop(s);
        assert!(files_under(root.path()).is_empty());
        assert!(std::fs::read_dir(root.path()).unwrap().next().is_none());
    }

    #[test]
    fn a_group_read_twice_out_of_order_or_beyond_the_buckets_fails_rather_than_reads_nothing() {
        let root = tempfile::tempdir().unwrap();
        let mut s = spill(root.path(), 4 << 20);
        for i in 0..40 {
            s.push(rows(i * 8192, 8192)).unwrap();
        }
        let groups = s.groups().unwrap();
        assert!(groups.len() > 2, "{groups:?}");
        assert!(s.read(groups[1].clone()).is_err(), "a group skipped");
        assert!(!s.read(groups[0].clone()).unwrap().is_empty());
        assert!(s.read(groups[0].clone()).is_err(), "a group read twice");
        assert!(s.read(BUCKETS..BUCKETS + 1).is_err(), "beyond the buckets");
        // Nothing asked for is nothing read, anywhere in the order.
        assert!(s.read(0..0).unwrap().is_empty());
        assert!(!s.read(groups[1].clone()).unwrap().is_empty());
    }

    #[test]
    fn rows_held_in_memory_stay_reserved_until_their_group_is_read() {
        let root = tempfile::tempdir().unwrap();
        let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(1 << 30));
        let r = MemoryConsumer::new("test").register(&pool);
        // Held up to 4 MiB, read back 2 MiB at a time.
        let mut s = SealedSpill::new(root.path(), rows(0, 1).schema(), "who", 16 << 20, r).unwrap();
        for i in 0..14 {
            s.push(rows(i * 8192, 8192)).unwrap();
        }
        assert_eq!(s.written(), 0);
        let held = pool.reserved();
        let groups = s.groups().unwrap();
        assert!(groups.len() > 1, "{groups:?}");
        let first = s.read(groups[0].clone()).unwrap();
        // The first group's rows and the others, still held, are all counted.
        assert!(
            pool.reserved() >= held * 9 / 10,
            "{} of {held} bytes reserved while the first group is read",
            pool.reserved()
        );
        drop(first);
        for g in &groups[1..] {
            s.read(g.clone()).unwrap();
        }
        // Once every group was read, the next call gives everything back.
        s.read(0..0).unwrap();
        assert_eq!(pool.reserved(), 0);
    }

    #[test]
    fn files_read_are_removed_before_their_directory_whichever_sibling_goes_first() {
        for _ in 0..20 {
            let root = tempfile::tempdir().unwrap();
            let mut files = SealedFiles::new(root.path(), 64 << 20).unwrap();
            let mut sibling = files.sibling().unwrap();
            let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(1 << 30));
            let reservation = MemoryConsumer::new("reader").register(&pool);
            for b in 0..16 {
                files.write(b, &mut vec![b as u8; 9000]).unwrap();
                sibling.write(b, &mut vec![b as u8; 9000]).unwrap();
            }
            // Each file read is given to its files' remover; half of them are never read.
            for b in 0..8 {
                files.read(b, &reservation, |_| Ok(())).unwrap();
                sibling.read(b, &reservation, |_| Ok(())).unwrap();
            }
            drop(files);
            // The sibling's files read later are removed too.
            sibling.read(8, &reservation, |_| Ok(())).unwrap();
            sibling.removed();
            assert_eq!(files_under(root.path()).len(), 7);
            drop(sibling);
            assert!(std::fs::read_dir(root.path()).unwrap().next().is_none());
        }
    }

    #[test]
    fn buckets_taken_out_are_read_on_threads_of_their_own_while_the_others_are_read() {
        let root = tempfile::tempdir().unwrap();
        let mut files = SealedFiles::new(root.path(), 64 << 20).unwrap();
        // Three frames in each of eight buckets, each naming its bucket and its round.
        let frame = |b: usize, round: u8| [vec![b as u8, round], vec![0x5a; 70_000]].concat();
        for round in 0..3 {
            for b in 0..8 {
                files.write(b, &mut frame(b, round)).unwrap();
            }
        }
        let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(1 << 30));
        let readers: Vec<_> = [1, 2]
            .into_iter()
            .map(|b| {
                let bucket = files.take(b).0.expect("bucket written");
                let reservation = MemoryConsumer::new("reader").register(&pool);
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    bucket
                        .read(&reservation, |plain| {
                            got.push(plain.to_vec());
                            Ok(())
                        })
                        .map(|()| (b, got))
                })
            })
            .collect();
        let reservation = MemoryConsumer::new("here").register(&pool);
        for b in [0, 3, 4, 5, 6, 7] {
            let mut got = Vec::new();
            files
                .read(b, &reservation, |plain| {
                    got.push(plain.to_vec());
                    Ok(())
                })
                .unwrap();
            assert_eq!(got, (0..3).map(|r| frame(b, r)).collect::<Vec<_>>());
        }
        for reader in readers {
            let (b, got) = reader.join().unwrap().unwrap();
            assert_eq!(got, (0..3).map(|r| frame(b, r)).collect::<Vec<_>>());
        }
        // A bucket is taken once, and every file read is gone (behind its reader).
        assert!(files.take(1).0.is_none());
        files.removed();
        assert!(files_under(root.path()).is_empty());
    }

    #[test]
    fn a_job_writes_at_most_sixteen_times_its_budget() {
        let root = tempfile::tempdir().unwrap();
        let mut s = spill(root.path(), 4 << 20);
        let stopped = (0..2_000)
            .map(|i| s.push(rows(i * 8192, 8192)))
            .find_map(Result::err)
            .expect("the spill stops the job");
        assert!(matches!(stopped, Error::Limit(_)), "{stopped}");
        assert!(s.written() <= (64 << 20) + (4 << 20));
    }

    #[test]
    fn frames_moved_within_a_file_fail_closed() {
        let root = tempfile::tempdir().unwrap();
        let mut s = spill(root.path(), 4 << 20);
        for i in 0..60 {
            s.push(rows(i * 8192, 8192)).unwrap();
        }
        // A file of two frames or more, its first two swapped.
        let (f, frames) = files_under(root.path())
            .into_iter()
            .find_map(|f| {
                let bytes = std::fs::read(&f).unwrap();
                let mut frames = Vec::new();
                let mut at = 0;
                while at < bytes.len() {
                    let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
                    frames.push(bytes[at..at + HEADER + len].to_vec());
                    at += HEADER + len;
                }
                (frames.len() > 1).then_some((f, frames))
            })
            .expect("a bucket written more than once");
        let mut swapped = frames.clone();
        swapped.swap(0, 1);
        std::fs::write(&f, swapped.concat()).unwrap();
        let failed = s
            .groups()
            .unwrap()
            .into_iter()
            .map(|g| s.read(g))
            .any(|r| matches!(r, Err(Error::Integrity(_))));
        assert!(failed);
    }

    #[test]
    fn string_views_are_kept_and_counted_by_their_own_bytes() {
        let root = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new(
            "who",
            DataType::Utf8View,
            true,
        )]));
        let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(1 << 30));
        let r = MemoryConsumer::new("test").register(&pool);
        let mut s = SealedSpill::new(root.path(), Arc::clone(&schema), "who", 8 << 20, r).unwrap();
        let mut bytes = 0;
        for i in 0..40 {
            let values: Vec<String> = (0..8192)
                .map(|r| format!("a long district name, visitor {:08}", i * 8192 + r))
                .collect();
            bytes += values.iter().map(String::len).sum::<usize>();
            let column = arrow::array::StringViewArray::from_iter_values(values);
            s.push(RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(column)]).unwrap())
                .unwrap();
        }
        assert!(s.written() > 0);
        assert!(
            (s.written() as usize) < 2 * bytes,
            "{} bytes written for {bytes} bytes of strings",
            s.written()
        );
        let mut rows = 0;
        for g in s.groups().unwrap() {
            for b in s.read(g).unwrap() {
                assert_eq!(b.schema(), schema);
                rows += b.num_rows();
            }
        }
        assert_eq!(rows, 40 * 8192);
    }

    #[test]
    fn an_altered_spill_file_fails_closed() {
        let root = tempfile::tempdir().unwrap();
        let mut s = spill(root.path(), 4 << 20);
        for i in 0..20 {
            s.push(rows(i * 8192, 8192)).unwrap();
        }
        let f = files_under(root.path()).pop().unwrap();
        let mut bytes = std::fs::read(&f).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&f, bytes).unwrap();
        let failed = s
            .groups()
            .unwrap()
            .into_iter()
            .map(|g| s.read(g))
            .any(|r| matches!(r, Err(Error::Integrity(_))));
        assert!(failed);
    }
}
