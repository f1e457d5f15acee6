//! Test-only fault injection for the write path (simulates a full disk).

use std::path::Path;
use std::sync::Mutex;

use crate::error::StorageError;

/// Which paths (by prefix) should fail, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The write itself fails (nothing written).
    BeforeWrite,
    /// The bytes are written, then an error is reported (so rollback must truncate them).
    AfterWrite,
}

static FAULTS: Mutex<Vec<(std::path::PathBuf, Fault)>> = Mutex::new(Vec::new());

/// Makes every write under `dir` fail with `fault` until [`clear`].
pub(crate) fn inject(dir: &Path, fault: Fault) {
    crate::sync::lock(&FAULTS).push((dir.to_path_buf(), fault));
}

/// Removes faults under `dir`.
pub(crate) fn clear(dir: &Path) {
    crate::sync::lock(&FAULTS).retain(|(d, _)| d != dir);
}

fn check(path: &Path, when: Fault) -> Result<(), StorageError> {
    let hit = crate::sync::lock(&FAULTS).iter().any(|(d, f)| *f == when && path.starts_with(d));
    if hit {
        Err(StorageError::io(path, std::io::Error::new(std::io::ErrorKind::StorageFull, "injected: no space left")))
    } else {
        Ok(())
    }
}

pub(crate) fn before_write(path: &Path) -> Result<(), StorageError> {
    check(path, Fault::BeforeWrite)
}

pub(crate) fn after_write(path: &Path) -> Result<(), StorageError> {
    check(path, Fault::AfterWrite)
}
