//! The database file before redb opens it: created private, refused when empty, and tightened
//! when others may read it.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use super::StoreError;

/// Permissions of a new database file: the owner only (it holds the admin secret's hash and
/// every plugin's data).
pub(crate) const DB_MODE: u32 = 0o600;

/// Readies `path` for redb: creates it with [`DB_MODE`] when missing; refuses an empty file (redb
/// would silently make a new database in it, with a new instance id that licences no longer
/// match); removes group and other permissions from an existing file, saying so.
///
/// Other failures (a folder, no permission) are left for redb to report.
pub(crate) fn prepare(path: &Path) -> Result<(), StoreError> {
    match fs::metadata(path) {
        Ok(meta) if meta.is_file() => {
            if meta.len() == 0 {
                return Err(StoreError::Corrupt {
                    path: path.to_path_buf(),
                    source: redb::DatabaseError::Storage(redb::StorageError::Corrupted(
                        "the file is empty (0 bytes); move it away to start a new database, \
                         with a new instance id"
                            .into(),
                    )),
                });
            }
            tighten(path, meta.permissions().mode());
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(DB_MODE)
                .open(path)
            {
                // Made by another process meanwhile: redb's lock sorts that out.
                Ok(_) | Err(_) => Ok(()),
            }
        }
        Err(_) => Ok(()),
    }
}

/// Removes group and other permissions from `path` (whose mode is `mode`), with a warning.
fn tighten(path: &Path, mode: u32) {
    let mode = mode & 0o7777;
    if mode & 0o077 == 0 {
        return;
    }
    let tight = mode & !0o077;
    match fs::set_permissions(path, fs::Permissions::from_mode(tight)) {
        Ok(()) => tracing::warn!(
            path = %path.display(),
            from = format!("{mode:04o}"),
            to = format!("{tight:04o}"),
            "the database was readable by others; tightened its permissions"
        ),
        Err(e) => tracing::warn!(
            path = %path.display(),
            mode = format!("{mode:04o}"),
            error = %e,
            "the database is readable by others, and its permissions cannot be changed"
        ),
    }
}
