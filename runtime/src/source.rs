//! A module's source as its reviewer reads it (issue 19, item 3), and what a module says it was
//! built with.
//!
//! The source is a tar archive: a Rust crate with the path crates it builds on (the guest SDK
//! among them), its lock file and a build recipe naming the pinned toolchain; or one C file with
//! a recipe naming the compiler. The platform reads the archive in memory to list it and show
//! it; it never unpacks it to disk and never builds it (a build runs the source's code: build
//! scripts, procedural macros). Rebuilding is the reviewer's, on their own machine, with
//! `tidegate module verify-source`, which records its verdict here.
//!
//! Every byte of an archive is hostile: paths are plain relative names (no `..`, no absolute
//! path, no hidden component such as `.cargo`, which would configure the reviewer's build),
//! entries are regular files or directories only (no links, devices or FIFOs), and sizes and
//! counts are bounded before anything is read.

use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::{Error, Result, sha256_hex};

/// The most bytes a source archive may have.
pub const MAX_SOURCE_BYTES: usize = 8 << 20;
/// The most files a source archive may hold.
pub const MAX_SOURCE_FILES: usize = 1024;
/// The most bytes one file of a source archive may have.
pub const MAX_SOURCE_FILE_BYTES: u64 = 2 << 20;
/// The build recipe's file name, at the archive's root.
pub const RECIPE_FILE: &str = "tidegate-build.json";
/// The custom section the guest SDK writes its name and version into.
pub const SDK_SECTION: &str = "tidegate.sdk";

/// How a module is rebuilt from its source: always for the same target, in release mode, with
/// flags that are Tidegate's (not the archive's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BuildRecipe {
    /// A crate of the archive's workspace, built by cargo (`--locked`, `--release`) for
    /// `wasm32-unknown-unknown` with the named Rust toolchain, paths remapped.
    Rust {
        /// The package to build (a member of the archive's workspace).
        package: String,
        /// The exact toolchain version, such as `1.95.0`.
        toolchain: String,
    },
    /// One C file, compiled by zig's C compiler for `wasm32-freestanding` with Tidegate's flags.
    C {
        /// The file's path in the archive.
        file: String,
        /// The exact zig version, such as `0.13.0`.
        zig: String,
    },
}

impl BuildRecipe {
    fn check(&self, files: &[SourceFile]) -> Result<()> {
        let bad = |m: String| Err(Error::BadInput(format!("the build recipe: {m}")));
        let version = |v: &str| {
            let parts: Vec<&str> = v.split('.').collect();
            parts.len() == 3
                && parts
                    .iter()
                    .all(|p| !p.is_empty() && p.len() <= 4 && p.bytes().all(|b| b.is_ascii_digit()))
        };
        match self {
            BuildRecipe::Rust { package, toolchain } => {
                let name_ok = !package.is_empty()
                    && package.len() <= 64
                    && package
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if !name_ok {
                    return bad("the package name must be 1-64 letters, digits, - or _".into());
                }
                if !version(toolchain) {
                    return bad("the toolchain must be an exact version such as 1.95.0".into());
                }
                for needed in ["Cargo.toml", "Cargo.lock"] {
                    if !files.iter().any(|f| f.path == needed) {
                        return bad(format!("a Rust source holds its workspace's {needed}"));
                    }
                }
            }
            BuildRecipe::C { file, zig } => {
                if !version(zig) {
                    return bad("the zig version must be exact, such as 0.13.0".into());
                }
                if !file.ends_with(".c") || !files.iter().any(|f| &f.path == file) {
                    return bad("the C file must be a .c file of the archive".into());
                }
            }
        }
        Ok(())
    }

    /// The toolchain the recipe pins, as one line (`rustc 1.95.0`, `zig 0.13.0`).
    pub fn toolchain(&self) -> String {
        match self {
            BuildRecipe::Rust { toolchain, .. } => format!("rustc {toolchain}"),
            BuildRecipe::C { zig, .. } => format!("zig {zig}"),
        }
    }
}

/// One file of a source archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// A relative path with `/` separators.
    pub path: String,
    pub bytes: Vec<u8>,
}

/// A source archive, read and checked.
#[derive(Debug, Clone)]
pub struct SourceArchive {
    pub recipe: BuildRecipe,
    /// Every file but the recipe, sorted by path.
    pub files: Vec<SourceFile>,
    /// The SHA-256 of the archive's bytes.
    pub sha256: String,
}

/// Checks a path from an archive or a directory: plain relative components, no hidden one.
pub fn check_source_path(path: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::BadInput(format!(
            "a source file's path {why} (paths are plain relative names)"
        )))
    };
    if path.is_empty() || path.len() > 240 {
        return bad("is empty or longer than 240 bytes");
    }
    if path.starts_with('/') || path.contains('\\') || path.contains('\0') {
        return bad("is absolute or holds a backslash or NUL");
    }
    for part in path.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return bad("has an empty, `.` or `..` component");
        }
        if part.starts_with('.') {
            return bad("has a hidden component (such as .cargo, which would configure the build)");
        }
        if part.chars().any(char::is_control) {
            return bad("holds a control character");
        }
    }
    Ok(())
}

/// Reads a source archive in memory: bounded, links and special files refused, every path
/// checked, the recipe parsed and checked against the files.
pub fn read_source_archive(bytes: &[u8]) -> Result<SourceArchive> {
    if bytes.len() > MAX_SOURCE_BYTES {
        return Err(Error::Limit(format!(
            "a source archive has at most {MAX_SOURCE_BYTES} bytes"
        )));
    }
    let malformed = |e: std::io::Error| Error::BadInput(format!("the source archive: {e}"));
    let mut archive = tar::Archive::new(std::io::Cursor::new(bytes));
    let mut files: Vec<SourceFile> = Vec::new();
    let mut recipe = None;
    for entry in archive.entries().map_err(malformed)? {
        let mut entry = entry.map_err(malformed)?;
        let kind = entry.header().entry_type();
        let path = entry.path().map_err(malformed)?;
        let path = path
            .to_str()
            .ok_or_else(|| Error::BadInput("a source file's path is not UTF-8".into()))?
            .trim_end_matches('/')
            .to_string();
        check_source_path(&path)?;
        if kind.is_dir() {
            continue;
        }
        if !kind.is_file() {
            return Err(Error::BadInput(format!(
                "the source archive's entry {path} is not a regular file (links, devices and FIFOs are refused)"
            )));
        }
        if entry.size() > MAX_SOURCE_FILE_BYTES {
            return Err(Error::Limit(format!(
                "the source file {path} is over {MAX_SOURCE_FILE_BYTES} bytes"
            )));
        }
        if files.len() >= MAX_SOURCE_FILES {
            return Err(Error::Limit(format!(
                "a source archive holds at most {MAX_SOURCE_FILES} files"
            )));
        }
        let mut content = Vec::new();
        (&mut entry)
            .take(MAX_SOURCE_FILE_BYTES + 1)
            .read_to_end(&mut content)
            .map_err(malformed)?;
        if path == RECIPE_FILE {
            recipe = Some(
                serde_json::from_slice::<BuildRecipe>(&content).map_err(|e| {
                    Error::BadInput(format!(
                        "the build recipe ({RECIPE_FILE}) does not parse: {e}"
                    ))
                })?,
            );
            continue;
        }
        files.push(SourceFile {
            path,
            bytes: content,
        });
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    if let Some(w) = files.windows(2).find(|w| w[0].path == w[1].path) {
        return Err(Error::BadInput(format!(
            "the source archive holds {} twice",
            w[0].path
        )));
    }
    // A file and a directory of the same name cannot both be unpacked.
    for f in &files {
        let dir = format!("{}/", f.path);
        if files.iter().any(|g| g.path.starts_with(&dir)) {
            return Err(Error::BadInput(format!(
                "the source archive holds {} as a file and as a directory",
                f.path
            )));
        }
    }
    let recipe = recipe.ok_or_else(|| {
        Error::BadInput(format!(
            "the source archive has no build recipe ({RECIPE_FILE}); make it with `tidegate module build`"
        ))
    })?;
    recipe.check(&files)?;
    Ok(SourceArchive {
        recipe,
        files,
        sha256: sha256_hex(bytes),
    })
}

/// Writes a source archive the same way every time for the same files: sorted, with fixed
/// times, owners and modes, the recipe first.
pub fn write_source_archive(recipe: &BuildRecipe, files: &[SourceFile]) -> Result<Vec<u8>> {
    let io = |e: std::io::Error| Error::Internal(format!("writing a source archive: {e}"));
    let mut sorted: Vec<&SourceFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let recipe_bytes = serde_json::to_vec_pretty(recipe).expect("a recipe serializes");
    let mut builder = tar::Builder::new(Vec::new());
    let mut append = |path: &str, bytes: &[u8]| -> Result<()> {
        check_source_path(path)?;
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        builder.append_data(&mut header, path, bytes).map_err(io)
    };
    append(RECIPE_FILE, &recipe_bytes)?;
    for f in sorted {
        append(&f.path, &f.bytes)?;
    }
    let bytes = builder.into_inner().map_err(io)?;
    // What is written must read back (sizes, paths, the recipe's check).
    read_source_archive(&bytes)?;
    Ok(bytes)
}

/// One file of a module's source, as its reviewer's page lists it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SourceFileView {
    pub path: String,
    pub bytes: u64,
    /// The file's text, if it is UTF-8 (source code); `None` for anything else.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// A module's source, as its reviewer reads it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SourceView {
    /// The SHA-256 of the archive.
    pub sha256: String,
    pub bytes: u64,
    pub recipe: BuildRecipe,
    pub files: Vec<SourceFileView>,
}

impl SourceView {
    /// The listing of a checked archive; `with_text` carries each UTF-8 file's text.
    pub fn of(archive: &SourceArchive, bytes: u64, with_text: bool) -> Self {
        SourceView {
            sha256: archive.sha256.clone(),
            bytes,
            recipe: archive.recipe.clone(),
            files: archive
                .files
                .iter()
                .map(|f| SourceFileView {
                    path: f.path.clone(),
                    bytes: f.bytes.len() as u64,
                    text: with_text
                        .then(|| String::from_utf8(f.bytes.clone()).ok())
                        .flatten(),
                })
                .collect(),
        }
    }
}

/// A reviewer's rebuild of a module from its source, as recorded by `tidegate module
/// verify-source`: the reviewer's statement (audited), like an approval's note.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SourceCheck {
    pub by: String,
    pub at: String,
    /// The archive that was rebuilt (the module's stored source).
    pub source_sha256: String,
    /// The SHA-256 of the bytes the rebuild gave.
    pub rebuilt_sha256: String,
    /// The toolchain that rebuilt it, as the reviewer's machine reported it.
    pub toolchain: String,
    /// Whether the rebuilt bytes are the module's (decided by the platform, from the hashes).
    pub matches: bool,
}

/// What a module's review page says of its source, in one line.
pub fn source_review(has_source: bool, check: Option<&SourceCheck>) -> &'static str {
    match (has_source, check) {
        (false, _) => "no source: unverifiable",
        (true, None) => "source given, not rebuilt yet",
        (true, Some(c)) if c.matches => "rebuilt: bytes match",
        (true, Some(_)) => "rebuilt: bytes differ",
    }
}

/// What a module says it was built with: the toolchain from its `producers` section and the
/// guest SDK from the SDK's own section. Claims, not facts: a rebuild from the source checks
/// them (a module that lies builds to other bytes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BuiltWith {
    /// Such as `rustc 1.95.0 (59807616e 2026-04-14)` or `clang 18.1.6`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub toolchain: Option<String>,
    /// Such as `tidegate-udf-sdk 0.1.0`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sdk: Option<String>,
    /// Such as `Rust` or `C11`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
}

/// A guest's or a client's text for a page: printable characters only, at most 120 of them,
/// trimmed (`None` if nothing is left).
pub(crate) fn printable(s: &str) -> Option<String> {
    let s: String = s
        .chars()
        .filter(|c| !c.is_control())
        .take(120)
        .collect::<String>()
        .trim()
        .to_string();
    (!s.is_empty()).then_some(s)
}

/// Reads what a module says it was built with (nothing it cannot parse is reported).
pub fn built_with(wasm: &[u8]) -> BuiltWith {
    use wasmparser::{KnownCustom, Parser, Payload};
    let mut out = BuiltWith::default();
    for payload in Parser::new(0).parse_all(wasm) {
        let Ok(Payload::CustomSection(c)) = payload else {
            continue;
        };
        if c.name() == SDK_SECTION {
            // The SDK writes one line; a module holding several copies is read by its first.
            let text = String::from_utf8_lossy(c.data());
            out.sdk = out.sdk.or_else(|| text.lines().next().and_then(printable));
            continue;
        }
        let KnownCustom::Producers(reader) = c.as_known() else {
            continue;
        };
        for field in reader.into_iter().flatten() {
            let first = field
                .values
                .into_iter()
                .flatten()
                .next()
                .and_then(|v| printable(&format!("{} {}", v.name, v.version)));
            match field.name {
                "processed-by" => out.toolchain = out.toolchain.or(first),
                "language" => out.language = out.language.or(first),
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rust_recipe() -> BuildRecipe {
        BuildRecipe::Rust {
            package: "demo-udf".into(),
            toolchain: "1.95.0".into(),
        }
    }

    fn crate_files() -> Vec<SourceFile> {
        ["Cargo.toml", "Cargo.lock", "demo/src/lib.rs"]
            .iter()
            .map(|p| SourceFile {
                path: p.to_string(),
                bytes: format!("// {p}\n").into_bytes(),
            })
            .collect()
    }

    #[test]
    fn an_archive_reads_back_the_files_and_recipe_it_was_written_with() {
        let bytes = write_source_archive(&rust_recipe(), &crate_files()).unwrap();
        let read = read_source_archive(&bytes).unwrap();
        assert_eq!(read.recipe, rust_recipe());
        let paths: Vec<&str> = read.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["Cargo.lock", "Cargo.toml", "demo/src/lib.rs"]);
        assert_eq!(read.sha256, sha256_hex(&bytes));
    }

    #[test]
    fn the_same_files_make_the_same_archive_whatever_their_order() {
        let mut reversed = crate_files();
        reversed.reverse();
        assert_eq!(
            write_source_archive(&rust_recipe(), &crate_files()).unwrap(),
            write_source_archive(&rust_recipe(), &reversed).unwrap()
        );
    }

    #[test]
    fn paths_that_escape_or_configure_the_build_are_refused() {
        for path in [
            "../outside.rs",
            "/etc/passwd",
            "src/../../x",
            ".cargo/config.toml",
            "src/.hidden",
            "a//b",
            "",
            "a\\b",
        ] {
            assert!(check_source_path(path).is_err(), "{path:?} was accepted");
        }
        check_source_path("examples/visitor-udf/src/lib.rs").unwrap();
    }

    /// A raw tar entry, written without the builder's own path checks.
    fn raw_entry(builder: &mut tar::Builder<Vec<u8>>, path: &str, kind: tar::EntryType) {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(0);
        header.set_mode(0o644);
        {
            let name = &mut header.as_gnu_mut().unwrap().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
        }
        if kind == tar::EntryType::Symlink {
            header.set_link_name("/etc/passwd").unwrap();
        }
        header.set_cksum();
        builder.append(&header, std::io::empty()).unwrap();
    }

    #[test]
    fn links_traversal_and_missing_recipes_are_refused() {
        let good = write_source_archive(&rust_recipe(), &crate_files()).unwrap();
        for (path, kind) in [
            ("src/link.rs", tar::EntryType::Symlink),
            ("src/hard.rs", tar::EntryType::Link),
            ("../escape.rs", tar::EntryType::Regular),
            ("/abs.rs", tar::EntryType::Regular),
            ("dev", tar::EntryType::Char),
        ] {
            let mut builder = tar::Builder::new(Vec::new());
            raw_entry(&mut builder, path, kind);
            let mut bytes = builder.into_inner().unwrap();
            // Followed by a good archive's entries, so only the hostile one can fail it.
            bytes.truncate(512);
            bytes.extend_from_slice(&good);
            assert!(
                read_source_archive(&bytes).is_err(),
                "{path} ({kind:?}) was accepted"
            );
        }
        let no_recipe = {
            let mut builder = tar::Builder::new(Vec::new());
            let mut header = tar::Header::new_gnu();
            header.set_size(3);
            builder
                .append_data(&mut header, "Cargo.toml", &b"[x]"[..])
                .unwrap();
            builder.into_inner().unwrap()
        };
        let refused = read_source_archive(&no_recipe).unwrap_err().to_string();
        assert!(refused.contains("no build recipe"), "{refused}");
        assert!(read_source_archive(b"not a tar at all, just text").is_err());
    }

    #[test]
    fn a_recipe_names_exact_versions_and_files_of_the_archive() {
        for recipe in [
            BuildRecipe::Rust {
                package: "x".into(),
                toolchain: "stable".into(),
            },
            BuildRecipe::Rust {
                package: "x; rm -rf /".into(),
                toolchain: "1.95.0".into(),
            },
            BuildRecipe::C {
                file: "missing.c".into(),
                zig: "0.13.0".into(),
            },
        ] {
            assert!(write_source_archive(&recipe, &crate_files()).is_err());
        }
    }
}
