//! Envelope encryption: a master key wraps per-object data keys; objects are sealed in
//! AES-256-GCM chunks whose additional data binds the object, the chunk index and finality.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::{Error, Result};

const OBJECT_MAGIC: &[u8; 4] = b"TGE1";
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

impl MasterKey {
    /// Creates a new random master key at `path`, mode 0600; refuses to overwrite.
    pub fn create(path: &Path) -> Result<MasterKey> {
        let key = random_bytes::<32>();
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                Error::BadInput(format!(
                    "cannot create the master key file {}: {e}",
                    path.display()
                ))
            })?;
        f.write_all(hex::encode(key).as_bytes())?;
        f.sync_all()?;
        Ok(MasterKey(key))
    }

    /// Loads the master key from a file that only its owner can read.
    pub fn load(path: &Path) -> Result<MasterKey> {
        let meta = fs::metadata(path).map_err(|e| {
            Error::BadInput(format!(
                "cannot read the master key file {}: {e}",
                path.display()
            ))
        })?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(Error::Refused(format!(
                "the master key file {} is readable by others; chmod 600 it",
                path.display()
            )));
        }
        Self::from_hex(fs::read_to_string(path)?.trim())
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

fn seal_one(key: &[u8; 32], plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let cipher = Aes256Gcm::new(key.into());
    let nonce = random_bytes::<NONCE_LEN>();
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .expect("AES-GCM encryption of a bounded buffer cannot fail");
    [nonce.as_slice(), &ct].concat()
}

fn open_one(key: &[u8; 32], sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(Error::Integrity("a sealed value is truncated".into()));
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    Aes256Gcm::new(key.into())
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
        .map_err(|_| Error::Integrity("decryption failed: wrong key or altered data".into()))
}

/// A per-object data key. A fresh one is made for every object, so random nonces stay far
/// below the 2^32 messages-per-key bound.
pub struct DataKey([u8; 32]);

impl DataKey {
    pub fn generate() -> DataKey {
        DataKey(random_bytes::<32>())
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
            let sealed = seal_one(&self.0, chunk, &chunk_aad(context, i as u64, i == last));
            out.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
            out.extend_from_slice(&sealed);
        }
        out
    }

    /// Opens an object sealed by [`DataKey::seal_object`] under the same `context`. Fails
    /// closed on any change, reordering, truncation or transplant.
    pub fn open_object(&self, context: &str, sealed: &[u8]) -> Result<Vec<u8>> {
        let bad = || Error::Integrity(format!("encrypted object {context} is damaged"));
        let mut rest = sealed.strip_prefix(OBJECT_MAGIC).ok_or_else(bad)?;
        let mut out = Vec::with_capacity(sealed.len());
        let mut index = 0u64;
        loop {
            if rest.len() < 4 {
                return Err(bad());
            }
            let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
            let body = rest.get(4..4 + len).ok_or_else(bad)?;
            rest = &rest[4 + len..];
            let last = rest.is_empty();
            let chunk = open_one(&self.0, body, &chunk_aad(context, index, last))?;
            out.extend_from_slice(&chunk);
            if last {
                return Ok(out);
            }
            index += 1;
        }
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

/// Writes `bytes` to `path` atomically: temporary file, fsync, rename, fsync of the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| Error::Internal("a file path has no parent directory".into()))?;
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        hex::encode(random_bytes::<6>())
    ));
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
    fn wrapped_keys_are_bound_to_their_object() {
        let master = MasterKey(random_bytes::<32>());
        let dek = DataKey::generate();
        let wrapped = master.wrap(&dek, "ds/1/v1");
        let back = master.unwrap(&wrapped, "ds/1/v1").unwrap();
        assert_eq!(back.0, dek.0);
        assert!(master.unwrap(&wrapped, "ds/1/v2").is_err());
    }
}
