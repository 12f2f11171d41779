//! Reading and writing certificate and key files with the right permissions.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::PkiError;

/// Writes a private key (or any secret) with mode 0600, replacing an existing file. The mode is
/// set at creation and again afterwards, so a pre-existing file with a wider mode is narrowed.
pub fn write_secret_file(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    write_file(path, contents, 0o600)
}

/// Writes a public file (certificate) with mode 0644.
pub fn write_public_file(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    write_file(path, contents, 0o644)
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let io = |action, source| PkiError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    // Write to a sibling temp file and rename, so a crash never leaves a half-written key.
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| io("failed to create", e))?;
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| io("failed to set permissions on", e))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| io("failed to write", e))?;
    fs::rename(&tmp, path).map_err(|e| io("failed to rename into place", e))?;
    Ok(())
}

/// Reads a UTF-8 text file (PEM), naming the path on failure. With `secret`, refuses a file
/// that group or others can read.
pub fn read_text_file(path: &Path, secret: bool) -> Result<String, PkiError> {
    let io = |action, source| PkiError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    if secret {
        let mode = fs::metadata(path)
            .map_err(|e| io("failed to read", e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(PkiError::InsecurePermissions {
                path: path.to_owned(),
                mode: mode & 0o777,
            });
        }
    }
    fs::read_to_string(path).map_err(|e| io("failed to read", e))
}
