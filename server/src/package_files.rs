// The files of a Rust package that its source archive carries: every regular file under the
// package's directory, but hidden ones (`.git`, `.cargo`), the `target` directory and nested
// packages (a directory with its own Cargo.toml, carried as a package of its own if it is a
// dependency). Shared by the server crate and its build script, which embeds the guest SDK's
// files with it (so a rebuild can check that an archive's SDK is this build's).

/// The package's files, as (relative path with `/` separators, bytes), sorted by path.
#[allow(dead_code)]
pub(crate) fn package_files(dir: &std::path::Path) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    fn walk(
        root: &std::path::Path,
        dir: &std::path::Path,
        out: &mut Vec<(String, Vec<u8>)>,
    ) -> std::io::Result<()> {
        let mut entries: Vec<std::fs::DirEntry> =
            std::fs::read_dir(dir)?.collect::<std::io::Result<_>>()?;
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for entry in entries {
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                return Err(std::io::Error::other(format!(
                    "{}: a file name that is not UTF-8",
                    entry.path().display()
                )));
            };
            if name.starts_with('.') || (dir == root && name == "target") {
                continue;
            }
            let path = entry.path();
            let kind = entry.file_type()?;
            if kind.is_symlink() {
                return Err(std::io::Error::other(format!(
                    "{} is a symbolic link; a module's source holds files only",
                    path.display()
                )));
            }
            if kind.is_dir() {
                if !path.join("Cargo.toml").exists() {
                    walk(root, &path, out)?;
                }
                continue;
            }
            if kind.is_file() {
                let relative = path
                    .strip_prefix(root)
                    .expect("walked under the root")
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                out.push((relative, std::fs::read(&path)?));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}
