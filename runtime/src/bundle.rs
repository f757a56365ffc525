//! Release bundles: the approved result, a manifest of its provenance, and the platform's
//! Ed25519 signature over the manifest; verifiable offline with the public key alone.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::Value;

use crate::crypto::{MasterKey, sha256_hex};
use crate::error::{Error, Result};

pub(crate) const MANIFEST_FILE: &str = "manifest.json";
pub(crate) const SIGNATURE_FILE: &str = "manifest.sig";
const SIGNING_CONTEXT: &str = "platform-signing-key";

/// The platform's signing key, stored wrapped by the master key.
pub struct Signer {
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", self.public_key_hex())
    }
}

impl Signer {
    /// Generates a key pair and returns it with its wrapped PKCS#8 form for storage.
    pub fn generate(master: &MasterKey) -> Result<(Signer, Vec<u8>)> {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .map_err(|_| Error::Internal("Ed25519 key generation failed".into()))?;
        let dek = crate::crypto::DataKey::generate();
        let sealed = dek.seal_object(SIGNING_CONTEXT, pkcs8.as_ref());
        let wrapped = master.wrap(&dek, SIGNING_CONTEXT);
        let stored = serde_json::to_vec(&serde_json::json!({
            "wrapped_key": hex::encode(wrapped),
            "sealed": hex::encode(sealed),
        }))?;
        Ok((Signer::from_pkcs8(pkcs8.as_ref())?, stored))
    }

    pub fn load(master: &MasterKey, stored: &[u8]) -> Result<Signer> {
        let v: Value = serde_json::from_slice(stored)?;
        let field = |k: &str| {
            v[k].as_str()
                .and_then(|s| hex::decode(s).ok())
                .ok_or_else(|| Error::Integrity("the stored signing key is damaged".into()))
        };
        let dek = master.unwrap(&field("wrapped_key")?, SIGNING_CONTEXT)?;
        let pkcs8 = dek.open_object(SIGNING_CONTEXT, &field("sealed")?)?;
        Signer::from_pkcs8(&pkcs8)
    }

    /// The stored form re-wrapped from `old` to `new`; the sealed key itself is unchanged.
    pub(crate) fn rewrap(old: &MasterKey, new: &MasterKey, stored: &[u8]) -> Result<Vec<u8>> {
        let mut v: Value = serde_json::from_slice(stored)?;
        let wrapped = v["wrapped_key"]
            .as_str()
            .and_then(|s| hex::decode(s).ok())
            .ok_or_else(|| Error::Integrity("the stored signing key is damaged".into()))?;
        let dek = old.unwrap(&wrapped, SIGNING_CONTEXT)?;
        v["wrapped_key"] = Value::String(hex::encode(new.wrap(&dek, SIGNING_CONTEXT)));
        Ok(serde_json::to_vec(&v)?)
    }

    fn from_pkcs8(pkcs8: &[u8]) -> Result<Signer> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8)
            .map_err(|_| Error::Integrity("the signing key does not parse".into()))?;
        Ok(Signer { pair })
    }

    pub fn public_key_hex(&self) -> String {
        hex::encode(self.pair.public_key().as_ref())
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }
}

/// Builds the files of a bundle: the given result files, the manifest (which lists each file's
/// SHA-256) and its signature.
pub(crate) fn build(
    signer: &Signer,
    mut manifest: Value,
    files: Vec<(String, Vec<u8>)>,
) -> Result<Vec<(String, Vec<u8>)>> {
    let hashes: BTreeMap<String, String> = files
        .iter()
        .map(|(name, bytes)| (name.clone(), sha256_hex(bytes)))
        .collect();
    manifest["files"] = serde_json::to_value(hashes)?;
    let manifest_bytes = serde_json::to_vec_pretty(&manifest)?;
    let signature = hex::encode(signer.sign(&manifest_bytes));
    let mut out = files;
    out.push((MANIFEST_FILE.to_string(), manifest_bytes));
    out.push((SIGNATURE_FILE.to_string(), signature.into_bytes()));
    Ok(out)
}

/// What offline verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub files: Vec<String>,
    pub manifest: Value,
}

/// Verifies the bundle in `dir` against the platform public key (hex or raw file content).
pub fn verify(dir: &Path, public_key: &[u8]) -> Result<Verified> {
    let key = parse_public_key(public_key)?;
    let read = |name: &str| {
        fs::read(dir.join(name))
            .map_err(|e| Error::BadInput(format!("the bundle has no readable {name}: {e}")))
    };
    let manifest_bytes = read(MANIFEST_FILE)?;
    let sig_text = read(SIGNATURE_FILE)?;
    let signature = hex::decode(String::from_utf8_lossy(&sig_text).trim())
        .map_err(|_| Error::Integrity(format!("{SIGNATURE_FILE} is not a hex signature")))?;
    if !crate::crypto::ed25519_verifies(&key, &manifest_bytes, &signature) {
        return Err(Error::Integrity(
            "the manifest's signature does not verify with this public key: the manifest was changed or signed by another platform"
                .into(),
        ));
    }
    let manifest: Value = serde_json::from_slice(&manifest_bytes)
        .map_err(|_| Error::Integrity("the signed manifest is not JSON".into()))?;
    let files = manifest["files"]
        .as_object()
        .ok_or_else(|| Error::Integrity("the manifest lists no files".into()))?;
    let mut names = Vec::new();
    for (name, hash) in files {
        if name.contains('/') || name.starts_with('.') {
            return Err(Error::Integrity(format!(
                "the manifest names an unsafe path {name}"
            )));
        }
        let bytes = read(name)?;
        if Some(sha256_hex(&bytes).as_str()) != hash.as_str() {
            return Err(Error::Integrity(format!(
                "{name} does not match the hash in the signed manifest: it was changed"
            )));
        }
        names.push(name.clone());
    }
    // A bundle is exactly what its manifest lists: any other entry (a file, a folder, a
    // hidden file, a link) is something the platform did not sign.
    let listed: std::collections::BTreeSet<&str> = names
        .iter()
        .map(String::as_str)
        .chain([MANIFEST_FILE, SIGNATURE_FILE])
        .collect();
    let mut extra = Vec::new();
    for entry in fs::read_dir(dir)
        .map_err(|e| Error::BadInput(format!("the bundle folder cannot be read: {e}")))?
    {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if !listed.contains(name.as_str()) || !is_file {
            extra.push(crate::text::defuse(&name, 80));
        }
    }
    if !extra.is_empty() {
        extra.sort();
        return Err(Error::Integrity(format!(
            "the bundle holds what its signed manifest does not list: {}",
            extra.join(", ")
        )));
    }
    Ok(Verified {
        files: names,
        manifest,
    })
}

fn parse_public_key(bytes: &[u8]) -> Result<Vec<u8>> {
    let text = String::from_utf8_lossy(bytes);
    if let Ok(k) = hex::decode(text.trim())
        && k.len() == 32
    {
        return Ok(k);
    }
    if bytes.len() == 32 {
        return Ok(bytes.to_vec());
    }
    Err(Error::BadInput(
        "the public key is neither 64 hex characters nor 32 raw bytes".into(),
    ))
}

/// Writes bundle files into `dir` (created if needed).
pub fn write(dir: &Path, files: &[(String, Vec<u8>)]) -> Result<()> {
    fs::create_dir_all(dir)?;
    for (name, bytes) in files {
        if name.contains('/') || name.starts_with('.') {
            return Err(Error::BadInput(format!("unsafe bundle file name {name}")));
        }
        fs::write(dir.join(name), bytes)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bundle() -> (tempfile::TempDir, Signer) {
        let master = MasterKey::from_hex(&"11".repeat(32)).unwrap();
        let (signer, _) = Signer::generate(&master).unwrap();
        let files = build(
            &signer,
            json!({"scenario": "sc_1"}),
            vec![(
                "result.csv".into(),
                b"spot,visits\nWest Lake,120\n".to_vec(),
            )],
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &files).unwrap();
        (dir, signer)
    }

    #[test]
    fn an_untouched_bundle_verifies() {
        let (dir, signer) = bundle();
        let v = verify(dir.path(), signer.public_key_hex().as_bytes()).unwrap();
        assert_eq!(v.files, vec!["result.csv"]);
    }

    #[test]
    fn a_changed_result_fails_and_says_which_file() {
        let (dir, signer) = bundle();
        fs::write(
            dir.path().join("result.csv"),
            "spot,visits\nWest Lake,121\n",
        )
        .unwrap();
        let err = verify(dir.path(), signer.public_key_hex().as_bytes()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "integrity: result.csv does not match the hash in the signed manifest: it was changed"
        );
    }

    #[test]
    fn another_platforms_key_fails() {
        let (dir, _) = bundle();
        let master = MasterKey::from_hex(&"22".repeat(32)).unwrap();
        let (other, _) = Signer::generate(&master).unwrap();
        assert!(verify(dir.path(), other.public_key_hex().as_bytes()).is_err());
    }
}
