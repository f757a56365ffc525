//! Files written once, in a stream, and read later (the gate's spill, a job's sets of
//! subjects) are written out behind their writer: the whole pages of each range written are
//! handed to the disk at once, and once they and the ranges after them pass 8 MiB, waited for
//! and dropped from the page cache. A page the writer is still filling (the last of a range
//! that ends within one) is handed with the range that fills it: a write to a page under
//! writeback waits for the disk, so a stream of ranges of odd lengths would wait for the disk
//! at every range. The cache then holds a few megabytes of each such file, used again and again,
//! instead of all of it in pages the kernel must find fresh: on this project's machines a
//! fresh page cost several times a reused one (BENCHMARKS.md (ad)), and gigabytes of a job's
//! spill would otherwise push out what other jobs read. What is dropped is read back from the
//! disk. While the advice is on, the whole pages of every range are handed to the disk as it
//! is written (a file's last page, never filled, is written out by the kernel or the writer's
//! final `fsync`), even of a file removed soon after (which the kernel might never have
//! written out): the files written so hold ciphertext only.
//!
//! This is advice, never a change of what a file holds: dropping never discards a page not yet
//! written. Off Linux, or where the kernel refuses the first range (a call it does not have,
//! or a file it cannot write out so) or refuses to drop one, no advice is given again; on a
//! file system without writeback (`tmpfs`) the calls succeed and do nothing. Any error the
//! kernel reports while the writer waits for a range, or when a range after the first is
//! handed to the disk, fails the writer (a wait's as the final `fsync`'s would: the wait, not
//! the `fsync`, then reports it).

use std::collections::VecDeque;
use std::fs::File;

use crate::error::Result;

/// Bytes written and not yet dropped, at most (beyond them, the oldest ranges are waited for
/// and dropped).
const WINDOW: u64 = 8 << 20;

/// The ranges of one or more files (told apart by a key) written and not yet dropped.
pub(crate) struct Behind<K> {
    /// Oldest first: (file, offset, length).
    pending: VecDeque<(K, u64, u64)>,
    bytes: u64,
    /// The kernel does not take the advice: none is given again.
    off: bool,
    /// A range was handed to the disk (after which no error is taken for a refusal).
    started: bool,
}

impl<K: Copy + PartialEq> Default for Behind<K> {
    fn default() -> Self {
        Behind {
            pending: VecDeque::new(),
            bytes: 0,
            off: false,
            started: false,
        }
    }
}

impl<K: Copy + PartialEq> Behind<K> {
    /// `len` bytes were written at `offset` of `file` (named `key`), which is written in
    /// order (each range where the one before it ended): starts writing out the pages they
    /// fill (from the one `offset` is in, which the range before it began, to the last one
    /// they fill whole), then waits for and drops the oldest ranges until the window holds
    /// them; `open(key)` is a range's file, `None` once it is gone (its range is then
    /// forgotten).
    pub(crate) fn wrote<'f>(
        &mut self,
        key: K,
        file: &File,
        offset: u64,
        len: u64,
        open: impl Fn(K) -> Option<&'f File>,
    ) -> Result<()> {
        let (offset, len) = whole_pages(offset, len);
        if self.off || len == 0 {
            return Ok(());
        }
        match sync_range(file, offset, len, START) {
            Ok(()) => self.started = true,
            // Refused before anything was handed to the disk: the kernel does not do this.
            Err(e) if !self.started && refused(&e) => {
                self.off = true;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        self.pending.push_back((key, offset, len));
        self.bytes += len;
        while self.bytes > WINDOW {
            let Some((key, offset, len)) = self.pending.pop_front() else {
                break;
            };
            self.bytes -= len;
            if let Some(file) = open(key) {
                // Whatever error it reports is the disk's: the range may not be there.
                sync_range(file, offset, len, WAIT)?;
                // Dropping reports no error of the disk (a refusal only stops the advice).
                if advise(file, offset, len, DONTNEED).is_err() {
                    self.off = true;
                    self.pending.clear();
                    self.bytes = 0;
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Forgets the ranges of `key`'s file (it is about to be read whole, or removed).
    pub(crate) fn forget(&mut self, key: K) {
        self.pending.retain(|(k, _, len)| {
            if *k == key {
                self.bytes -= len;
            }
            *k != key
        });
    }
}

/// The size of a page of the page cache (the processor's page, 4 KiB on x86-64), read once:
/// pages are written out whole. Where the file system caches files in larger folios (ext4
/// and XFS may), the last folio of a range may still be handed to the disk unfilled: that
/// costs a wait, never a byte.
fn page() -> u64 {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        #[cfg(unix)]
        {
            // SAFETY: sysconf reads no memory of ours.
            let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
            if size > 0 && (size as u64).is_power_of_two() {
                return size as u64;
            }
        }
        4096
    })
}

/// The pages a range of `len` bytes at `offset` fills, of a file written in order: from the
/// page `offset` is in (begun by the range before, if not by this one) to the last page the
/// range fills to its end; none when it ends on the page it begins on.
fn whole_pages(offset: u64, len: u64) -> (u64, u64) {
    whole_pages_of(page(), offset, len)
}

fn whole_pages_of(page: u64, offset: u64, len: u64) -> (u64, u64) {
    let start = offset - offset % page;
    let end = offset.saturating_add(len);
    let end = end - end % page;
    (start, end.saturating_sub(start))
}

/// Asks the kernel to read `file`'s first `len` bytes into the page cache now, without
/// waiting for them: a hint, whose refusal changes nothing (the reads then wait as before).
/// Asked in steps of 128 KiB, since the kernel reads at most its read-ahead window or the
/// device's largest request for each ask, whichever is larger (128 KiB and more).
pub(crate) fn read_ahead(file: &File, len: u64) {
    const STEP: u64 = 128 << 10;
    let mut at = 0;
    while at < len {
        if advise(file, at, STEP.min(len - at), WILLNEED).is_err() {
            return;
        }
        at += STEP;
    }
}

/// An answer to the first range that says the kernel does not do this here (no call, no
/// such file, not allowed), not an error of the disk.
fn refused(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::ENOSYS | libc::ESPIPE | libc::EOPNOTSUPP | libc::EPERM)
    )
}

#[cfg(target_os = "linux")]
const START: libc::c_uint = libc::SYNC_FILE_RANGE_WRITE;
#[cfg(target_os = "linux")]
const WAIT: libc::c_uint = libc::SYNC_FILE_RANGE_WAIT_BEFORE
    | libc::SYNC_FILE_RANGE_WRITE
    | libc::SYNC_FILE_RANGE_WAIT_AFTER;

#[cfg(target_os = "linux")]
fn sync_range(file: &File, offset: u64, len: u64, flags: libc::c_uint) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (offset, len): (libc::off64_t, libc::off64_t) = as_offsets(offset, len)?;
    // SAFETY: sync_file_range reads no memory of ours; the descriptor is open while `file`
    // is borrowed.
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(target_os = "linux")]
const DONTNEED: libc::c_int = libc::POSIX_FADV_DONTNEED;
#[cfg(target_os = "linux")]
const WILLNEED: libc::c_int = libc::POSIX_FADV_WILLNEED;

/// Advice about a range of `file`'s pages (`posix_fadvise`): drop them, or read them now.
#[cfg(target_os = "linux")]
fn advise(file: &File, offset: u64, len: u64, advice: libc::c_int) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (offset, len): (libc::off_t, libc::off_t) = as_offsets(offset, len)?;
    // SAFETY: posix_fadvise reads no memory of ours; the descriptor is open while `file` is
    // borrowed. It answers its error, not -1.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), offset, len, advice) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

#[cfg(target_os = "linux")]
fn as_offsets<T: TryFrom<u64>>(offset: u64, len: u64) -> std::io::Result<(T, T)> {
    let too_far = || std::io::Error::from_raw_os_error(libc::EOVERFLOW);
    Ok((
        offset.try_into().map_err(|_| too_far())?,
        len.try_into().map_err(|_| too_far())?,
    ))
}

#[cfg(not(target_os = "linux"))]
const START: u32 = 0;
#[cfg(not(target_os = "linux"))]
const WAIT: u32 = 0;

#[cfg(not(target_os = "linux"))]
fn sync_range(_: &File, _: u64, _: u64, _: u32) -> std::io::Result<()> {
    Err(std::io::Error::from_raw_os_error(libc::ENOSYS))
}

#[cfg(not(target_os = "linux"))]
const DONTNEED: i32 = 0;
#[cfg(not(target_os = "linux"))]
const WILLNEED: i32 = 0;

#[cfg(not(target_os = "linux"))]
fn advise(_: &File, _: u64, _: u64, _: i32) -> std::io::Result<()> {
    Err(std::io::Error::from_raw_os_error(libc::ENOSYS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    #[test]
    fn a_file_the_kernel_cannot_write_out_turns_the_advice_off_without_an_error() {
        // Not a regular file: the first range is refused, and no advice is given again.
        let null = File::options().write(true).open("/dev/null").unwrap();
        let mut behind = Behind::<()>::default();
        behind.wrote((), &null, 0, page(), |_| Some(&null)).unwrap();
        assert!(behind.off || cfg!(not(target_os = "linux")));
        assert!(behind.pending.is_empty() && behind.bytes == 0);
    }

    #[test]
    fn the_pages_handed_to_the_disk_are_whole_and_the_page_being_filled_waits_for_its_end() {
        // Ranges of odd lengths, written one after another (pages of 4 KiB).
        let pages = |offset, len| whole_pages_of(4096, offset, len);
        assert_eq!(pages(0, 5000), (0, 4096));
        assert_eq!(pages(5000, 5000), (4096, 4096));
        assert_eq!(pages(10000, 5000), (8192, 4096));
        // A range within one page hands nothing; the range that fills it hands the page.
        assert_eq!(pages(12288 + 10, 100), (12288, 0));
        assert_eq!(pages(12288 + 110, 4096), (12288, 4096));
        // A range that ends on a page's end hands every page it touches.
        assert_eq!(pages(100, 8092), (0, 8192));
        // Over a stream of ranges, every page but the last, unfilled one is handed once, for
        // pages of this machine's size and larger ones.
        for page in [page(), 16 << 10, 64 << 10] {
            let mut x = 0x2545_f491_4f6c_dd1du64;
            let (mut at, mut handed) = (0u64, 0u64);
            for _ in 0..1000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let len = 1 + x % (300 << 10);
                let (start, n) = whole_pages_of(page, at, len);
                if n > 0 {
                    assert_eq!(start, handed, "a page handed twice, or one skipped");
                    assert_eq!((start % page, n % page), (0, 0));
                    handed = start + n;
                }
                at += len;
            }
            assert_eq!(handed, at - at % page);
        }
    }

    #[test]
    fn files_written_behind_read_back_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<File> = (0..3)
            .map(|i| {
                File::options()
                    .create_new(true)
                    .read(true)
                    .append(true)
                    .open(dir.path().join(format!("{i}")))
                    .unwrap()
            })
            .collect();
        let mut behind = Behind::<usize>::default();
        let mut ends = [0u64; 3];
        let mut expected = vec![Vec::new(); 3];
        // Ranges of many sizes, past the window several times over, across three files.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..400u64 {
            let f = (next() % 3) as usize;
            let len = 1 + (next() % (200 << 10)) as usize;
            let bytes: Vec<u8> = (0..len).map(|j| (i as usize * 31 + j) as u8).collect();
            (&files[f]).write_all(&bytes).unwrap();
            behind
                .wrote(f, &files[f], ends[f], len as u64, |k| files.get(k))
                .unwrap();
            ends[f] += len as u64;
            expected[f].extend_from_slice(&bytes);
        }
        behind.forget(1);
        assert!(behind.pending.iter().all(|(k, ..)| *k != 1));
        assert_eq!(
            behind.bytes,
            behind.pending.iter().map(|(.., len)| len).sum::<u64>()
        );
        assert!(behind.bytes <= WINDOW + (200 << 10) + page());
        for (mut file, expected) in files.iter().zip(&expected) {
            file.rewind().unwrap();
            let mut read = Vec::new();
            file.read_to_end(&mut read).unwrap();
            assert!(read == *expected, "a file reads back otherwise");
        }
    }
}
