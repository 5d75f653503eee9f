//! Re-reading mounted files when they change, without a restart: the TLS certificate and key,
//! the tokens file and the JWKS file (issue 15).
//!
//! Each watched set of files is read every [`POLL_INTERVAL`] *by path* and compared by a
//! SHA-256 of its contents. Reading by path follows symlinks, so Kubernetes' atomic update of a
//! mounted Secret or ConfigMap (a new `..2026_…` directory, then one rename of the `..data`
//! symlink every file points through) is seen like an edit in place; comparing contents, not
//! modification times, catches every change and ignores touches. A set is only taken when two
//! reads in a row agree, so a certificate and key read across a swap are not mixed.
//!
//! A new version is handed to the owner's `apply`; if it refuses it (a broken PEM, a key that
//! does not match, a tokens file that does not parse), the previous version stays in force and
//! one error is logged per broken version. Files that cannot be read at all (a swap in
//! progress, a deleted file) also keep the previous version, with one warning.
//!
//! Why polling and not `notify` (inotify): the Secret swap replaces the directory the watched
//! files live in, so an inotify watch on a file sees its inode disappear and must be re-armed
//! on the new target, and a watch on the directory sees the `..data` rename rather than the
//! files; on network and overlay file systems events may not arrive at all. Handling that
//! correctly takes more code than the poll, and the poll costs a few kilobytes read every few
//! seconds. The crate is not in our dependency tree either.

use std::path::PathBuf;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often watched files are read.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// A set of files watched together (a certificate and its key), and what was last seen.
#[derive(Debug)]
pub struct Watch {
    what: &'static str,
    paths: Vec<PathBuf>,
    seen: Option<[u8; 32]>,
    unreadable: Option<String>,
}

/// What one look at the files found.
#[derive(Debug, PartialEq, Eq)]
pub enum Look {
    /// Nothing new.
    Same,
    /// New contents, one per path, in order.
    Changed(Vec<Vec<u8>>),
}

impl Watch {
    /// Watches `paths` (named `what` in logs). The first look reports their contents as
    /// changed, so whatever was loaded at start is re-checked once.
    pub fn new(what: &'static str, paths: Vec<PathBuf>) -> Self {
        Watch {
            what,
            paths,
            seen: None,
            unreadable: None,
        }
    }

    /// Starts from `contents` as already applied (what the server loaded at start).
    pub fn with_applied(mut self, contents: &[Vec<u8>]) -> Self {
        self.seen = Some(fingerprint(contents));
        self
    }

    /// Reads the files; new contents (stable over two reads) once per version.
    pub fn look(&mut self) -> Look {
        let (first, second) = match (self.read(), self.read()) {
            (Ok(first), Ok(second)) => (first, second),
            (Err(error), _) | (_, Err(error)) => {
                if self.unreadable.as_deref() != Some(error.as_str()) {
                    tracing::warn!(what = self.what, %error, "cannot read the file; keeping the current one");
                    self.unreadable = Some(error);
                }
                return Look::Same;
            }
        };
        self.unreadable = None;
        let print = fingerprint(&first);
        if print != fingerprint(&second) || self.seen == Some(print) {
            return Look::Same;
        }
        self.seen = Some(print);
        Look::Changed(first)
    }

    fn read(&self) -> Result<Vec<Vec<u8>>, String> {
        self.paths
            .iter()
            .map(|path| std::fs::read(path).map_err(|error| format!("{}: {error}", path.display())))
            .collect()
    }

    /// Looks every [`POLL_INTERVAL`] until `shutdown`, handing new contents to `apply`; a
    /// refusal keeps the previous version and is logged as an error.
    pub fn spawn<F>(self, shutdown: CancellationToken, apply: F) -> JoinHandle<()>
    where
        F: FnMut(&[Vec<u8>]) -> Result<(), String> + Send + 'static,
    {
        self.spawn_every(POLL_INTERVAL, shutdown, apply)
    }

    /// [`Self::spawn`] with another interval (tests).
    pub fn spawn_every<F>(
        mut self,
        interval: Duration,
        shutdown: CancellationToken,
        mut apply: F,
    ) -> JoinHandle<()>
    where
        F: FnMut(&[Vec<u8>]) -> Result<(), String> + Send + 'static,
    {
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(interval) => {}
                }
                let Look::Changed(contents) = self.look() else {
                    continue;
                };
                match apply(&contents) {
                    Ok(()) => tracing::info!(what = self.what, "reloaded"),
                    Err(error) => tracing::error!(
                        what = self.what,
                        %error,
                        "the changed file is refused; the previous one stays in force"
                    ),
                }
            }
        })
    }
}

fn fingerprint(contents: &[Vec<u8>]) -> [u8; 32] {
    let mut hash = Sha256::new();
    for content in contents {
        hash.update((content.len() as u64).to_le_bytes());
        hash.update(content);
    }
    hash.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_reported_once_and_a_touch_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        std::fs::write(&path, "one").unwrap();
        let mut watch = Watch::new("tokens", vec![path.clone()]).with_applied(&[b"one".to_vec()]);
        assert_eq!(watch.look(), Look::Same);
        std::fs::write(&path, "one").unwrap();
        assert_eq!(watch.look(), Look::Same);
        std::fs::write(&path, "two").unwrap();
        assert_eq!(watch.look(), Look::Changed(vec![b"two".to_vec()]));
        assert_eq!(watch.look(), Look::Same);
    }

    #[test]
    fn an_unreadable_file_keeps_the_current_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tls.crt");
        std::fs::write(&path, "one").unwrap();
        let mut watch = Watch::new("tls", vec![path.clone()]).with_applied(&[b"one".to_vec()]);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(watch.look(), Look::Same);
        std::fs::write(&path, "one").unwrap();
        assert_eq!(watch.look(), Look::Same);
    }

    /// Kubernetes updates a mounted Secret by writing a new directory and renaming the
    /// `..data` symlink the file names point through.
    #[test]
    fn an_atomic_symlink_swap_of_a_mounted_secret_is_seen() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let mount = dir.path();
        let version = |name: &str, cert: &str, key: &str| {
            let data = mount.join(name);
            std::fs::create_dir(&data).unwrap();
            std::fs::write(data.join("tls.crt"), cert).unwrap();
            std::fs::write(data.join("tls.key"), key).unwrap();
        };
        version("..2026_01", "cert-1", "key-1");
        symlink("..2026_01", mount.join("..data")).unwrap();
        symlink("..data/tls.crt", mount.join("tls.crt")).unwrap();
        symlink("..data/tls.key", mount.join("tls.key")).unwrap();
        let paths = vec![mount.join("tls.crt"), mount.join("tls.key")];
        let mut watch = Watch::new("tls", paths);
        assert_eq!(
            watch.look(),
            Look::Changed(vec![b"cert-1".to_vec(), b"key-1".to_vec()])
        );
        version("..2026_02", "cert-2", "key-2");
        symlink("..2026_02", mount.join("..data_tmp")).unwrap();
        std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
        std::fs::remove_dir_all(mount.join("..2026_01")).unwrap();
        assert_eq!(
            watch.look(),
            Look::Changed(vec![b"cert-2".to_vec(), b"key-2".to_vec()])
        );
        assert_eq!(watch.look(), Look::Same);
    }

    async fn wait_for(applied: &parking_lot::Mutex<Vec<String>>, expected: &[&str]) {
        for _ in 0..500 {
            if *applied.lock() == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("applied {:?}, expected {expected:?}", applied.lock());
    }

    #[tokio::test]
    async fn a_refused_version_is_offered_once_and_a_fixed_one_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, "good-1").unwrap();
        let applied = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
        let seen = applied.clone();
        let shutdown = CancellationToken::new();
        let task = Watch::new("jwks", vec![path.clone()])
            .with_applied(&[b"good-1".to_vec()])
            .spawn_every(
                Duration::from_millis(10),
                shutdown.clone(),
                move |contents| {
                    let text = String::from_utf8_lossy(&contents[0]).into_owned();
                    seen.lock().push(text.clone());
                    if text.starts_with("broken") {
                        Err("does not parse".into())
                    } else {
                        Ok(())
                    }
                },
            );
        std::fs::write(&path, "broken").unwrap();
        wait_for(&applied, &["broken"]).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        std::fs::write(&path, "good-2").unwrap();
        wait_for(&applied, &["broken", "good-2"]).await;
        shutdown.cancel();
        task.await.unwrap();
    }
}
