//! How many threads the runtime's own parallel work (decoding, decryption, the gate's scans)
//! may use: below every module that uses it, so none of them imports another for it.

/// The machine's cores (at least one).
pub(crate) fn parallelism() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
