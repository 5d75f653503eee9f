//! `scaivault-audit integrity`: create or rotate the Ed25519 key ring that signs checkpoints and
//! export manifests (docs/integrity.md). A running service reads its ring at start only: after
//! a rotation, restart it (in Kubernetes: update the Secret, then restart the pod).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use scaivault_audit::integrity::keys::{KeyError, Keyring};

#[derive(Debug, Subcommand)]
pub enum IntegrityCommand {
    /// Create a key ring (`keyring.json` and the private key `KID.pem`, mode 0600) in DIR,
    /// e.g. to make a Kubernetes Secret of it. Refuses when DIR already holds a ring.
    Keygen {
        /// Directory of the new ring (created if missing).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
    /// Replace the active key of the ring in DIR by a new one. The old public key stays listed
    /// (with `valid_until`), so what it signed still verifies; its private key is deleted.
    /// A running service uses the new key after its next restart.
    RotateKey {
        /// Directory of the ring (a stopped service's `DATA_DIR/integrity/keys`, or a copy of
        /// the Secret's files).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
}

/// Runs an `integrity` subcommand.
pub fn run(command: IntegrityCommand) -> anyhow::Result<()> {
    match command {
        IntegrityCommand::Keygen { dir } => keygen(&dir),
        IntegrityCommand::RotateKey { dir } => rotate(&dir),
    }
}

fn keygen(dir: &Path) -> anyhow::Result<()> {
    match Keyring::load(dir, false) {
        Ok(ring) => anyhow::bail!(
            "{} already holds a key ring (active key {}); use `integrity rotate-key` to replace its key",
            dir.display(),
            ring.kid()
        ),
        Err(KeyError::Missing(_)) => {}
        Err(error) => {
            return Err(error).context(format!(
                "{} holds something that is not a usable key ring",
                dir.display()
            ));
        }
    }
    let ring = Keyring::load(dir, true)?;
    print_ring(dir, &ring, "created");
    Ok(())
}

fn rotate(dir: &Path) -> anyhow::Result<()> {
    let ring = Keyring::rotate(dir)?;
    print_ring(dir, &ring, "rotated");
    println!("restart the service to sign with the new key");
    Ok(())
}

fn print_ring(dir: &Path, ring: &Keyring, what: &str) {
    println!(
        "key ring {what} in {}: active key {} ({} key(s) listed)",
        dir.display(),
        ring.kid(),
        ring.entries().len()
    );
    println!(
        "files: {}, {}",
        dir.join("keyring.json").display(),
        dir.join(format!("{}.pem", ring.kid())).display()
    );
}
