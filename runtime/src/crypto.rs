//! Envelope encryption: a master key wraps per-object data keys; objects are sealed in
//! AES-256-GCM chunks whose additional data binds the object, the chunk index and finality.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use ring::rand::{SecureRandom, SystemRandom};

use crate::error::{Error, Result};

const OBJECT_MAGIC: &[u8; 4] = b"TGE1";
/// Plaintext bytes per sealed chunk; every chunk but the last is full.
const CHUNK: usize = 1 << 20;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Fills a buffer from the operating system's CSPRNG.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .expect("the operating system's random number generator failed");
    out
}

/// A fresh random token: 32 bytes, hex, with a recognizable prefix.
pub fn random_token() -> String {
    format!("tg_{}", hex::encode(random_bytes::<32>()))
}

/// SHA-256 of `data`, as lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, data))
}

/// Whether `signature` is a valid Ed25519 signature of `message` under `public_key` (raw bytes).
pub(crate) fn ed25519_verifies(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public_key)
        .verify(message, signature)
        .is_ok()
}

/// The master key: 32 bytes that never live inside the data directory.
pub struct MasterKey([u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

/// Creates a file at `path` holding a new random 32-byte key (`what`, in errors) as hex, mode
/// 0600; refuses to overwrite.
pub(crate) fn create_key_file(path: &Path, what: &str) -> Result<[u8; 32]> {
    let key = random_bytes::<32>();
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            Error::BadInput(format!(
                "cannot create the {what} file {}: {e}",
                path.display()
            ))
        })?;
    f.write_all(hex::encode(key).as_bytes())?;
    f.sync_all()?;
    Ok(key)
}

/// Loads a 32-byte key (`what`, in errors) from a file that only its owner can read.
pub(crate) fn load_key_file(path: &Path, what: &str) -> Result<[u8; 32]> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    // The file itself (never a link to another), judged as it was opened.
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| {
            Error::BadInput(format!(
                "cannot read the {what} file {}: {e}",
                path.display()
            ))
        })?;
    let meta = file.metadata()?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(Error::Refused(format!(
            "the {what} file {} is readable by others; chmod 600 it",
            path.display()
        )));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if meta.uid() != unsafe { libc::geteuid() } {
        return Err(Error::Refused(format!(
            "the {what} file {} belongs to another user",
            path.display()
        )));
    }
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    hex::decode(text.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| Error::BadInput(format!("a {what} is 64 hex characters")))
}

impl MasterKey {
    /// Creates a new random master key at `path`, mode 0600; refuses to overwrite.
    pub fn create(path: &Path) -> Result<MasterKey> {
        create_key_file(path, "master key").map(MasterKey)
    }

    /// Loads the master key from a file that only its owner can read.
    pub fn load(path: &Path) -> Result<MasterKey> {
        load_key_file(path, "master key").map(MasterKey)
    }

    /// Parses a key given as 64 hex characters (the file's content, or an environment variable).
    pub fn from_hex(s: &str) -> Result<MasterKey> {
        let bytes = hex::decode(s)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| Error::BadInput("a master key is 64 hex characters".into()))?;
        Ok(MasterKey(bytes))
    }

    /// A short public identifier of the key, to tell which key a data directory expects.
    pub fn fingerprint(&self) -> String {
        sha256_hex(&[b"tidegate-master-key-id-v1|".as_slice(), &self.0].concat())[..16].to_string()
    }

    /// Wraps a data key for the object named by `context`.
    pub fn wrap(&self, dek: &DataKey, context: &str) -> Vec<u8> {
        seal_one(&self.0, &dek.0, &wrap_aad(context))
    }

    /// Unwraps the data key of the object named by `context`; fails closed.
    pub fn unwrap(&self, wrapped: &[u8], context: &str) -> Result<DataKey> {
        let key = open_one(&self.0, wrapped, &wrap_aad(context))?;
        let key = <[u8; 32]>::try_from(key.as_slice())
            .map_err(|_| Error::Integrity("a wrapped data key has the wrong length".into()))?;
        Ok(DataKey(key))
    }
}

fn wrap_aad(context: &str) -> Vec<u8> {
    [b"tidegate-dek-v1|".as_slice(), context.as_bytes()].concat()
}

/// Seals `plaintext` as `nonce || ciphertext || tag` (standard AES-256-GCM, a fresh random
/// nonce) with ring's implementation (assembly with AES-NI and CLMUL), as the read path and
/// the spill do; objects sealed by the RustCrypto one open here and the other way (tested).
fn seal_one(key: &[u8; 32], plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
    seal_into(key, plaintext, aad, &mut out);
    out
}

/// One chunk of an object as stored, appended to `out`: the sealed length (4 bytes, little
/// endian), then the chunk sealed in place (the plaintext is copied once).
fn seal_frame(key: &[u8; 32], plaintext: &[u8], aad: &[u8], out: &mut Vec<u8>) {
    let sealed_len = NONCE_LEN + plaintext.len() + TAG_LEN;
    out.extend_from_slice(&(sealed_len as u32).to_le_bytes());
    seal_into(key, plaintext, aad, out);
}

/// [`seal_one`], appending to `out`.
fn seal_into(key: &[u8; 32], plaintext: &[u8], aad: &[u8], out: &mut Vec<u8>) {
    use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce as RingNonce, UnboundKey};
    let nonce = random_bytes::<NONCE_LEN>();
    out.extend_from_slice(&nonce);
    let start = out.len();
    out.extend_from_slice(plaintext);
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte key"));
    let tag = key
        .seal_in_place_separate_tag(
            RingNonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut out[start..],
        )
        .expect("AES-GCM encryption of a bounded buffer cannot fail");
    out.extend_from_slice(tag.as_ref());
}

fn open_one(key: &[u8; 32], sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(Error::Integrity("a sealed value is truncated".into()));
    }
    let mut plain = vec![0u8; sealed.len() - NONCE_LEN - TAG_LEN];
    open_in_place(key, sealed, aad, &mut plain)?;
    Ok(plain)
}

/// A per-object data key. A fresh one is made for every object, so random nonces stay far
/// below the 2^32 messages-per-key bound.
pub struct DataKey([u8; 32]);

impl DataKey {
    pub fn generate() -> DataKey {
        DataKey(random_bytes::<32>())
    }

    /// A copy of this key (for a holder that keeps it in memory only and hands it out).
    pub(crate) fn copy(&self) -> DataKey {
        DataKey(self.0)
    }

    /// Seals `plaintext` as the object named by `context`.
    pub fn seal_object(&self, context: &str, plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plaintext.len() + plaintext.len() / CHUNK * 32 + 64);
        out.extend_from_slice(OBJECT_MAGIC);
        let chunks: Vec<&[u8]> = if plaintext.is_empty() {
            vec![&[]]
        } else {
            plaintext.chunks(CHUNK).collect()
        };
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            seal_frame(
                &self.0,
                chunk,
                &chunk_aad(context, i as u64, i == last),
                &mut out,
            );
        }
        out
    }

    /// Random access to the object sealed in `file` under `context`.
    pub fn reader(&self, context: &str, file: fs::File) -> Result<SealedReader> {
        let damaged = || Error::Integrity(format!("encrypted object {context} is damaged"));
        let size = file.metadata()?.len();
        let mut magic = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut magic, 0).map_err(|_| damaged())?;
        if &magic != OBJECT_MAGIC {
            return Err(damaged());
        }
        let body = size - OBJECT_MAGIC.len() as u64;
        let chunks = body.div_ceil(SEALED_CHUNK).max(1);
        let last = body - (chunks - 1) * SEALED_CHUNK;
        let overhead = (4 + NONCE_LEN + TAG_LEN) as u64;
        if last < overhead {
            return Err(damaged());
        }
        Ok(SealedReader {
            file,
            key: self.0,
            context: context.to_string(),
            chunks,
            len: (chunks - 1) * CHUNK as u64 + (last - overhead),
            read: std::sync::atomic::AtomicU64::new(0),
            decrypted: std::sync::atomic::AtomicU64::new(0),
            recent: std::sync::Mutex::new(Vec::with_capacity(RECENT_CHUNKS)),
        })
    }

    /// Opens an object sealed by [`DataKey::seal_object`] under the same `context`. Fails
    /// closed on any change, reordering, truncation or transplant. The chunks are decrypted in
    /// place, spread over the machine's cores.
    pub fn open_object(&self, context: &str, sealed: &[u8]) -> Result<Vec<u8>> {
        let bad = || Error::Integrity(format!("encrypted object {context} is damaged"));
        let mut rest = sealed.strip_prefix(OBJECT_MAGIC).ok_or_else(bad)?;
        // Frame every chunk before decrypting any.
        let mut bodies = Vec::new();
        loop {
            if rest.len() < 4 {
                return Err(bad());
            }
            let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
            let body = rest.get(4..4 + len).ok_or_else(bad)?;
            if body.len() < NONCE_LEN + TAG_LEN {
                return Err(bad());
            }
            bodies.push(body);
            rest = &rest[4 + len..];
            if rest.is_empty() {
                break;
            }
        }
        let total = bodies.iter().map(|b| b.len() - NONCE_LEN - TAG_LEN).sum();
        let mut out = vec![0u8; total];
        let last = bodies.len() - 1;
        let mut work = Vec::with_capacity(bodies.len());
        let mut free = out.as_mut_slice();
        for (index, body) in bodies.into_iter().enumerate() {
            let (mine, others) = free.split_at_mut(body.len() - NONCE_LEN - TAG_LEN);
            free = others;
            work.push((chunk_aad(context, index as u64, index == last), body, mine));
        }
        let open = |part: &mut [(Vec<u8>, &[u8], &mut [u8])]| -> Result<()> {
            for (aad, body, plain) in part.iter_mut() {
                open_in_place(&self.0, body, aad, plain)?;
            }
            Ok(())
        };
        let threads = crate::threads::parallelism().min(work.len());
        if threads <= 1 {
            open(&mut work)?;
        } else {
            let per = work.len().div_ceil(threads);
            std::thread::scope(|s| {
                let handles: Vec<_> = work
                    .chunks_mut(per)
                    .map(|part| s.spawn(move || open(part)))
                    .collect();
                handles.into_iter().try_for_each(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(Error::Internal("a decryption thread panicked".into()))
                    })
                })
            })?;
        }
        Ok(out)
    }
}

/// Decrypts one sealed chunk into `plain`, which has exactly the plaintext's length (ring's
/// AES-GCM; the format is standard AES-256-GCM, so objects sealed by the RustCrypto `aes-gcm`
/// crate, as earlier versions did, open here).
fn open_in_place(key: &[u8; 32], sealed: &[u8], aad: &[u8], plain: &mut [u8]) -> Result<()> {
    use ring::aead::{
        AES_256_GCM, Aad, LessSafeKey, Nonce as RingNonce, Tag as RingTag, UnboundKey,
    };
    let failed = || Error::Integrity("decryption failed: wrong key or altered data".into());
    // Checked here too, whatever the caller checked: hostile bytes never reach a panic.
    if sealed.len() < NONCE_LEN + TAG_LEN || plain.len() != sealed.len() - NONCE_LEN - TAG_LEN {
        return Err(Error::Integrity("a sealed value is truncated".into()));
    }
    let (nonce, rest) = sealed.split_at(NONCE_LEN);
    let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
    plain.copy_from_slice(ct);
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte key"));
    let nonce = RingNonce::try_assume_unique_for_key(nonce).map_err(|_| failed())?;
    let tag = RingTag::try_from(tag).map_err(|_| failed())?;
    key.open_in_place_separate_tag(nonce, Aad::from(aad), tag, plain, 0..)
        .map(|_| ())
        .map_err(|_| failed())
}

/// A scenario's pseudonymization key, derived from the platform's pseudonym root key (held
/// wrapped by the master key) and the scenario's id.
#[derive(Clone)]
pub struct PseudonymKey(ring::hmac::Key);

/// The key that names subjects in the gate's memory: a keyed hash (SipHash-1-3) of each
/// entity key, stable across jobs, datasets and versions, meaningless without the key; and the
/// secret seed of the audit's random weights. Derived from the pseudonym root, so it is
/// re-wrapped with it on rotation and never stored apart.
#[derive(Clone, Copy)]
pub struct SubjectKey {
    hash: [u8; 16],
    seed: u64,
}

impl std::fmt::Debug for SubjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubjectKey(..)")
    }
}

impl SubjectKey {
    /// A subject's name in the gate's memory.
    pub fn subject(&self, entity_key: &[u8]) -> u64 {
        use std::hash::Hasher;
        let mut h = self.subject_hasher();
        h.write(entity_key);
        h.finish()
    }

    /// The hasher [`SubjectKey::subject`] starts from: a copy of it named with `write` and
    /// `finish` names a subject as it does, without keying a hasher for every one.
    pub(crate) fn subject_hasher(&self) -> siphasher::sip::SipHasher13 {
        siphasher::sip::SipHasher13::new_with_key(&self.hash)
    }

    /// The seed of the audit's weights.
    pub fn seed(&self) -> u64 {
        self.seed
    }
}

impl std::fmt::Debug for PseudonymKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PseudonymKey(..)")
    }
}

impl PseudonymKey {
    /// `ps_` and 16 letters `a`-`p` (64 bits of HMAC-SHA256): stable for equal values, no
    /// digits, so never mistaken for a number a detector looks for.
    pub fn pseudonym(&self, value: &str) -> String {
        let tag = ring::hmac::sign(&self.0, value.as_bytes());
        let mut out = String::with_capacity(19);
        out.push_str("ps_");
        for byte in &tag.as_ref()[..8] {
            out.push(char::from(b'a' + (byte >> 4)));
            out.push(char::from(b'a' + (byte & 0x0f)));
        }
        out
    }
}

impl DataKey {
    /// Derives a scenario's pseudonymization key from this (root) key.
    /// The subject key derived from this (pseudonym root) key.
    pub fn subject_key(&self) -> SubjectKey {
        let root = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.0);
        let derived = ring::hmac::sign(&root, b"tidegate-subjects-v1");
        let bytes = derived.as_ref();
        let mut hash = [0u8; 16];
        hash.copy_from_slice(&bytes[..16]);
        let mut seed = [0u8; 8];
        seed.copy_from_slice(&bytes[16..24]);
        SubjectKey {
            hash,
            seed: u64::from_le_bytes(seed),
        }
    }

    pub fn pseudonym_key(&self, scenario: &str) -> PseudonymKey {
        let root = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.0);
        let derived = ring::hmac::sign(
            &root,
            format!("tidegate-pseudonym-v1|{scenario}").as_bytes(),
        );
        PseudonymKey(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            derived.as_ref(),
        ))
    }
}

/// Random access to the plaintext of a sealed object file without decrypting the rest: only
/// the chunks a read touches are read and authenticated. Chunks are fixed-size except the
/// last, so the file's size says where each one is and which one is final; reading the final
/// chunk (Parquet always reads its footer there) authenticates the object's length.
pub struct SealedReader {
    file: fs::File,
    key: [u8; 32],
    context: String,
    chunks: u64,
    len: u64,
    read: std::sync::atomic::AtomicU64,
    decrypted: std::sync::atomic::AtomicU64,
    /// The chunks decrypted last: a decoder reads page after page, and pages straddle chunks.
    recent: std::sync::Mutex<Vec<(u64, std::sync::Arc<Vec<u8>>)>>,
}

/// How many decrypted chunks a reader keeps (1 MiB each).
const RECENT_CHUNKS: usize = 8;

const SEALED_CHUNK: u64 = (4 + NONCE_LEN + CHUNK + TAG_LEN) as u64;

impl SealedReader {
    /// The plaintext length.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Plaintext bytes returned by reads so far.
    pub fn bytes_read(&self) -> u64 {
        self.read.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Plaintext bytes decrypted so far (each chunk counted each time it is decrypted).
    pub fn bytes_decrypted(&self) -> u64 {
        self.decrypted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The plaintext of chunk `index`, authenticated.
    fn chunk(&self, index: u64) -> Result<std::sync::Arc<Vec<u8>>> {
        use std::os::unix::fs::FileExt;
        let recent = |r: &mut Vec<(u64, std::sync::Arc<Vec<u8>>)>| {
            r.iter()
                .find(|(i, _)| *i == index)
                .map(|(_, c)| std::sync::Arc::clone(c))
        };
        if let Some(hit) = recent(
            &mut self
                .recent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        ) {
            return Ok(hit);
        }
        let offset = OBJECT_MAGIC.len() as u64 + index * SEALED_CHUNK;
        let is_last = index == self.chunks - 1;
        let body_len = if is_last {
            (self.len - index * CHUNK as u64) as usize + NONCE_LEN + TAG_LEN
        } else {
            NONCE_LEN + CHUNK + TAG_LEN
        };
        let mut frame = vec![0u8; 4 + body_len];
        self.file
            .read_exact_at(&mut frame, offset)
            .map_err(|_| self.damaged())?;
        if u32::from_le_bytes(frame[..4].try_into().expect("4 bytes")) as usize != body_len {
            return Err(self.damaged());
        }
        let mut plain = vec![0u8; body_len - NONCE_LEN - TAG_LEN];
        open_in_place(
            &self.key,
            &frame[4..],
            &chunk_aad(&self.context, index, is_last),
            &mut plain,
        )
        .map_err(|_| self.damaged())?;
        self.decrypted
            .fetch_add(plain.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let plain = std::sync::Arc::new(plain);
        let mut r = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if r.len() == RECENT_CHUNKS {
            r.remove(0);
        }
        r.push((index, std::sync::Arc::clone(&plain)));
        Ok(plain)
    }

    fn damaged(&self) -> Error {
        Error::Integrity(format!("encrypted object {} is damaged", self.context))
    }

    /// `len` plaintext bytes from `start`.
    pub fn read_at(&self, start: u64, len: usize) -> Result<Vec<u8>> {
        let end = start
            .checked_add(len as u64)
            .filter(|e| *e <= self.len)
            .ok_or_else(|| self.damaged())?;
        let mut out = Vec::with_capacity(len);
        if len == 0 {
            return Ok(out);
        }
        let (first, last) = (start / CHUNK as u64, (end - 1) / CHUNK as u64);
        for index in first..=last {
            let plain = self.chunk(index)?;
            let chunk_start = index * CHUNK as u64;
            let from = start.saturating_sub(chunk_start) as usize;
            let to = ((end - chunk_start) as usize).min(plain.len());
            out.extend_from_slice(&plain[from..to]);
        }
        self.read
            .fetch_add(len as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(out)
    }
}

fn chunk_aad(context: &str, index: u64, last: bool) -> Vec<u8> {
    let mut aad = b"tidegate-chunk-v1|".to_vec();
    aad.extend_from_slice(context.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&index.to_le_bytes());
    aad.push(u8::from(last));
    aad
}

/// An object sealed as it is written, chunk by chunk, in the format of
/// [`DataKey::seal_object`]: at most one plaintext chunk is held at a time, so an upload of any
/// size reaches the disk encrypted and never sits whole in memory.
pub(crate) struct SealingWriter {
    file: fs::File,
    key: [u8; 32],
    context: String,
    pending: Vec<u8>,
    /// The sealed frame of the pending chunk, reused from chunk to chunk.
    frame: Vec<u8>,
    index: u64,
    written: u64,
    /// Where the next frame goes, and the frames written out behind the writer (when asked).
    at: u64,
    behind: Option<crate::behind::Behind<()>>,
}

impl SealingWriter {
    /// Creates `path` (it must not exist) for an object sealed under `key` and `context`.
    pub(crate) fn create(path: &Path, key: &DataKey, context: &str) -> Result<SealingWriter> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        file.write_all(OBJECT_MAGIC)?;
        Ok(SealingWriter {
            file,
            key: key.0,
            context: context.to_string(),
            pending: Vec::with_capacity(CHUNK),
            frame: Vec::with_capacity(4 + NONCE_LEN + CHUNK + TAG_LEN),
            index: 0,
            written: 0,
            at: OBJECT_MAGIC.len() as u64,
            behind: None,
        })
    }

    /// The same writer, its frames written out behind it and dropped from the page cache
    /// ([`crate::behind`]): for an object written in one stream and read seldom or later.
    pub(crate) fn behind(mut self) -> SealingWriter {
        self.behind = Some(Default::default());
        self
    }

    /// Plaintext bytes written so far.
    pub(crate) fn len(&self) -> u64 {
        self.written
    }

    pub(crate) fn write(&mut self, mut bytes: &[u8]) -> Result<()> {
        self.written += bytes.len() as u64;
        while !bytes.is_empty() {
            if self.pending.len() == CHUNK {
                // More follows: the full chunk is not the last one.
                self.seal_pending(false)?;
            }
            let take = (CHUNK - self.pending.len()).min(bytes.len());
            self.pending.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        }
        Ok(())
    }

    fn seal_pending(&mut self, last: bool) -> Result<()> {
        self.frame.clear();
        seal_frame(
            &self.key,
            &self.pending,
            &chunk_aad(&self.context, self.index, last),
            &mut self.frame,
        );
        self.file.write_all(&self.frame)?;
        let len = self.frame.len() as u64;
        if let Some(behind) = &mut self.behind {
            let file = &self.file;
            behind.wrote((), file, self.at, len, |_| Some(file))?;
        }
        self.at += len;
        self.pending.clear();
        self.index += 1;
        Ok(())
    }

    /// Seals the last chunk and syncs the file.
    pub(crate) fn finish(mut self) -> Result<()> {
        self.seal_pending(true)?;
        self.file.sync_all()?;
        Ok(())
    }
}

/// A fresh temporary name beside `path`: hidden, marked `.tmp-` (the pattern the data
/// directory's cleanup at open removes), random.
pub(crate) fn temporary_path(path: &Path) -> std::path::PathBuf {
    path.with_file_name(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        hex::encode(random_bytes::<6>())
    ))
}

/// Writes `bytes` to `path` atomically: temporary file, fsync, rename, fsync of the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| Error::Internal("a file path has no parent directory".into()))?;
    fs::create_dir_all(dir)?;
    let tmp = temporary_path(path);
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_round_trip_across_chunks() {
        let key = DataKey::generate();
        for len in [0, 1, CHUNK, CHUNK + 1, 2 * CHUNK + 7] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let sealed = key.seal_object("ds/1/v1", &data);
            assert_eq!(key.open_object("ds/1/v1", &sealed).unwrap(), data);
        }
    }

    #[test]
    fn a_flipped_bit_a_truncation_or_another_context_fails_closed() {
        let key = DataKey::generate();
        let data = vec![7u8; CHUNK + 100];
        let sealed = key.seal_object("ds/1/v1", &data);
        let mut flipped = sealed.clone();
        flipped[40] ^= 1;
        assert!(key.open_object("ds/1/v1", &flipped).is_err());
        // Dropping the final chunk leaves a well-formed prefix that is not marked final.
        let first_len = u32::from_le_bytes(sealed[4..8].try_into().unwrap()) as usize;
        assert!(
            key.open_object("ds/1/v1", &sealed[..8 + first_len])
                .is_err()
        );
        assert!(key.open_object("ds/2/v1", &sealed).is_err());
    }

    #[test]
    fn what_is_sealed_is_standard_aes_256_gcm_that_another_implementation_opens_and_seals() {
        use aes_gcm::aead::{Aead, KeyInit, Payload};
        use aes_gcm::{Aes256Gcm, Nonce};
        let key = [9u8; 32];
        let aad = b"ds/1/v1|0|last";
        let other = Aes256Gcm::new((&key).into());
        for len in [0, 1, 4096 + 3] {
            let data: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            // Sealed here, opened by the RustCrypto implementation.
            let sealed = seal_one(&key, &data, aad);
            let (nonce, ct) = sealed.split_at(NONCE_LEN);
            let opened = other
                .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
                .unwrap();
            assert_eq!(opened, data);
            // Sealed by it (as earlier versions of the store did), opened here.
            let nonce = [3u8; NONCE_LEN];
            let ct = other
                .encrypt(Nonce::from_slice(&nonce), Payload { msg: &data, aad })
                .unwrap();
            let theirs = [nonce.as_slice(), &ct].concat();
            assert_eq!(open_one(&key, &theirs, aad).unwrap(), data);
            assert!(open_one(&key, &theirs, b"another context").is_err());
        }
    }

    fn sealed_file(key: &DataKey, data: &[u8]) -> (tempfile::TempDir, fs::File) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.tge");
        fs::write(&path, key.seal_object("ds/1/v1", data)).unwrap();
        let file = fs::File::open(&path).unwrap();
        (dir, file)
    }

    #[test]
    fn any_range_reads_back_without_decrypting_the_rest() {
        let key = DataKey::generate();
        for len in [0usize, 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let (_dir, file) = sealed_file(&key, &data);
            let r = key.reader("ds/1/v1", file).unwrap();
            assert_eq!(r.len(), len as u64);
            for (start, n) in [
                (0, len),
                (len / 2, len / 3),
                (len.saturating_sub(5), 5.min(len)),
            ] {
                assert_eq!(
                    r.read_at(start as u64, n).unwrap(),
                    data[start..start + n],
                    "len {len}, range {start}+{n}"
                );
            }
            assert!(r.read_at(0, len + 1).is_err());
        }
    }

    #[test]
    fn a_random_read_fails_closed_on_change_truncation_or_another_context() {
        let key = DataKey::generate();
        let data = vec![7u8; 2 * CHUNK + 100];
        let sealed = key.seal_object("ds/1/v1", &data);
        let dir = tempfile::tempdir().unwrap();
        let open = |bytes: &[u8], context: &str| {
            let path = dir.path().join("o.tge");
            fs::write(&path, bytes).unwrap();
            key.reader(context, fs::File::open(&path).unwrap())
        };
        let mut flipped = sealed.clone();
        flipped[40] ^= 1;
        assert!(open(&flipped, "ds/1/v1").unwrap().read_at(0, 10).is_err());
        // Cut after the second chunk: it now looks final, but was not sealed as final.
        let cut = &sealed[..OBJECT_MAGIC.len() + 2 * SEALED_CHUNK as usize];
        let r = open(cut, "ds/1/v1").unwrap();
        assert!(r.read_at(r.len() - 8, 8).is_err());
        assert!(open(&sealed, "ds/2/v1").unwrap().read_at(0, 10).is_err());
        assert!(open(b"TGE", "ds/1/v1").is_err());
    }

    #[test]
    fn pseudonyms_are_stable_per_scenario_and_differ_across_scenarios() {
        let root = DataKey::generate();
        let a = root.pseudonym_key("sc_a");
        let b = root.pseudonym_key("sc_b");
        let p = a.pseudonym("11010519491231002X");
        assert_eq!(p, a.pseudonym("11010519491231002X"));
        assert_ne!(p, b.pseudonym("11010519491231002X"));
        assert_ne!(p, a.pseudonym("11010519491231003X"));
        assert!(p.starts_with("ps_") && p.len() == 19);
        assert!(!p.chars().any(|c| c.is_ascii_digit()));
    }

    #[test]
    fn wrapped_keys_are_bound_to_their_object() {
        let master = MasterKey(random_bytes::<32>());
        let dek = DataKey::generate();
        let wrapped = master.wrap(&dek, "ds/1/v1");
        let back = master.unwrap(&wrapped, "ds/1/v1").unwrap();
        assert_eq!(back.0, dek.0);
        assert!(master.unwrap(&wrapped, "ds/1/v2").is_err());
    }
}
