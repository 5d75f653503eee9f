//! 32-byte secret keys kept in the data directory (cursor signing, annotation signing): read
//! when present, otherwise created once, random, mode 0600, and synced.

use std::fs;
use std::path::Path;

/// Length of every key file.
pub const KEY_BYTES: usize = 32;

/// Reads the key at `path`, or creates it when it does not exist yet.
pub fn load_or_create(path: &Path) -> std::io::Result<[u8; KEY_BYTES]> {
    match fs::read(path) {
        Ok(bytes) => {
            return bytes.try_into().map_err(|_| {
                std::io::Error::other(format!(
                    "{} must hold exactly {KEY_BYTES} bytes",
                    path.display()
                ))
            });
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let mut key = [0u8; KEY_BYTES];
    getrandom::fill(&mut key).map_err(std::io::Error::other)?;
    crate::durable_file::create_private(path, &key)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_key_is_created_once_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.key");
        let first = load_or_create(&path).unwrap();
        assert_eq!(load_or_create(&path).unwrap(), first);
        let mode = fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        fs::write(&path, b"short").unwrap();
        assert!(load_or_create(&path).is_err());
    }
}
