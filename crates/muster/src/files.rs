//! Writing a set of files all-or-nothing.
//!
//! Every target is checked before anything is written, so a refused overwrite or a bad input
//! leaves the directory as it was. Each file is written to a temporary sibling, synced, then
//! renamed into place; private keys are created with mode 0600 from the start (never chmod-ed
//! after being readable).

use std::fs::{self, OpenOptions};
use std::io::Write;
#[cfg(unix)]
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Whether a file holds a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sensitivity {
    /// Certificates: mode 0644.
    Public,
    /// Private keys and PFX files: mode 0600.
    Secret,
}

/// Files to write together.
#[derive(Debug, Default)]
pub(crate) struct FileSet {
    files: Vec<(PathBuf, Vec<u8>, Sensitivity)>,
}

impl FileSet {
    pub(crate) fn add(
        &mut self,
        path: PathBuf,
        contents: impl Into<Vec<u8>>,
        sensitivity: Sensitivity,
    ) {
        self.files.push((path, contents.into(), sensitivity));
    }

    /// Write every file, or none.
    pub(crate) fn commit(self, dir: &Path, force: bool) -> Result<()> {
        if !force {
            let existing: Vec<String> = self
                .files
                .iter()
                .filter(|(p, _, _)| p.exists())
                .map(|(p, _, _)| p.display().to_string())
                .collect();
            if !existing.is_empty() {
                bail!(
                    "refusing to overwrite {} (use --force to replace)",
                    existing.join(", ")
                );
            }
        }
        fs::create_dir_all(dir)
            .with_context(|| format!("cannot create directory {}", dir.display()))?;
        let mut staged: Vec<(PathBuf, PathBuf)> = Vec::new();
        let result = (|| -> Result<()> {
            for (path, contents, sensitivity) in &self.files {
                let tmp = temp_sibling(path);
                write_new(&tmp, contents, *sensitivity)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                staged.push((tmp, path.clone()));
            }
            for (tmp, path) in &staged {
                fs::rename(tmp, path)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            Ok(())
        })();
        if result.is_err() {
            for (tmp, _) in &staged {
                let _ = fs::remove_file(tmp);
            }
        }
        result
    }
}

fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

fn write_new(path: &Path, contents: &[u8], sensitivity: Sensitivity) -> std::io::Result<()> {
    // A leftover temporary file would keep its old mode: start from nothing.
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(match sensitivity {
        Sensitivity::Public => 0o644,
        Sensitivity::Secret => 0o600,
    });
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}
