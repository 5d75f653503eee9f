//! Leases on JetStream's key-value store: one holder per named role or export job among the
//! replicas of a cluster (docs/cluster.md, "Coordination").
//!
//! Every guarantee comes from JetStream, none from code of ours that imitates consensus:
//!
//! - **acquire** is `create` (a write expecting no live value for the key): it fails while
//!   anyone holds the key;
//! - **renew** is `update` expecting the revision this holder wrote last: it fails as soon as
//!   anyone else wrote the key (the lease was taken over), and then the lease is lost;
//! - **expiry** is the bucket's `max_age`: a value nobody renews is removed by the servers one
//!   TTL after it was written, so the lease of a dead holder lapses and `create` succeeds again.
//!
//! The holder counts its lease valid until one TTL after it *sent* its last successful write:
//! the servers store the value later than that, so they expire it later too. A renewal that
//! fails for another reason (NATS unreachable) is retried; the lease is lost once its validity
//! ran out. The TTL every replica uses is the bucket's own `max_age`, not a local setting, so
//! two replicas configured differently cannot disagree about it.
//!
//! **Fencing.** Work done under a lease calls [`Lease::confirm`] (a renewal) right before each
//! irreversible step, which then starts with a whole TTL of validity. The remaining window is
//! that step taking longer than the TTL (a stalled process, a very slow request): a replica that
//! pauses for more than a TTL between `confirm` and the write can still write after another
//! replica took over. Export steps are idempotent by key (a part is overwritten with the same
//! records, the manifest by the same key), so such a late write duplicates no object.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::lease_metrics::LeaseMetrics;

/// How long one key-value request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Renewals per TTL (a lease survives two failed renewals in a row).
const RENEWALS_PER_TTL: u32 = 3;

/// Failures of the lease bucket.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The bucket cannot be created or read.
    #[error("JetStream key-value bucket {bucket}: {message}")]
    Bucket { bucket: String, message: String },
    /// A request to the bucket failed (NATS unreachable, no quorum, timeout).
    #[error("lease {key}: {message}")]
    Unavailable { key: String, message: String },
    /// The lease is no longer this replica's.
    #[error("lease {key} was lost")]
    Lost { key: String },
}

/// What a lease's value records (for operators reading the bucket; nothing depends on it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseValue {
    pub holder: String,
    /// RFC 3339 time of the write.
    pub written_at: String,
}

/// The lease bucket: one key per role or job, values expiring after the bucket's TTL.
#[derive(Clone)]
pub struct LeaseBucket {
    store: kv::Store,
    bucket: String,
    ttl: Duration,
    holder: String,
    metrics: LeaseMetrics,
}

impl std::fmt::Debug for LeaseBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseBucket")
            .field("bucket", &self.bucket)
            .field("ttl", &self.ttl)
            .field("holder", &self.holder)
            .finish()
    }
}

impl LeaseBucket {
    /// Opens the bucket `bucket`, creating it (file storage, `replicas` replicas, `max_age`
    /// `ttl`, one value per key) if missing. An existing bucket keeps its own TTL, which is the
    /// one used (logged when it differs from `ttl`). `holder` is this replica's id.
    pub async fn open(
        context: &jetstream::Context,
        bucket: &str,
        ttl: Duration,
        replicas: usize,
        holder: &str,
    ) -> Result<LeaseBucket, LeaseError> {
        let failed = |message: String| LeaseError::Bucket {
            bucket: bucket.to_string(),
            message,
        };
        let config = kv::Config {
            bucket: bucket.to_string(),
            description: "scaivault-audit leases: one holder per role and export job".into(),
            history: 1,
            max_age: ttl,
            max_value_size: 1024,
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        };
        let store = super::kv::open_or_create(context, config)
            .await
            .map_err(failed)?;
        let effective = store.stream.cached_info().config.max_age;
        if effective.is_zero() {
            return Err(failed(
                "has no max_age: a dead holder's lease would never lapse (delete the bucket, \
                 the service recreates it)"
                    .into(),
            ));
        }
        if effective != ttl {
            tracing::warn!(
                bucket,
                configured = ?ttl,
                bucket_ttl = ?effective,
                "the lease bucket exists with another TTL; the bucket's is used"
            );
        }
        Ok(LeaseBucket {
            store,
            bucket: bucket.to_string(),
            ttl: effective,
            holder: holder.to_string(),
            metrics: LeaseMetrics::default(),
        })
    }

    /// Counts the leases taken and lost through this bucket, and the roles held, in `metrics`.
    pub fn with_metrics(mut self, metrics: LeaseMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The TTL of every lease (the bucket's `max_age`).
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// This replica's id, the holder of the leases it takes.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    fn value(&self) -> Bytes {
        let value = LeaseValue {
            holder: self.holder.clone(),
            written_at: crate::timestamp::format_micros(crate::timestamp::now_micros()),
        };
        Bytes::from(serde_json::to_vec(&value).unwrap_or_default())
    }

    fn unavailable(key: &str, message: impl std::fmt::Display) -> LeaseError {
        LeaseError::Unavailable {
            key: key.to_string(),
            message: message.to_string(),
        }
    }

    /// Takes the lease `key` when nobody holds it: `None` while another holder (or this
    /// replica, through another [`Lease`]) has it.
    pub async fn try_acquire(&self, key: &str) -> Result<Option<Lease>, LeaseError> {
        let sent = Instant::now();
        let created = tokio::time::timeout(REQUEST_TIMEOUT, self.store.create(key, self.value()))
            .await
            .map_err(|_| Self::unavailable(key, "no answer in time"))?;
        match created {
            Ok(revision) => {
                self.metrics.acquired(key);
                Ok(Some(Lease::new(self.clone(), key, revision, sent)))
            }
            Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(error) => Err(Self::unavailable(key, super::describe(&error))),
        }
    }

    /// The current holder of `key`, if anyone holds it.
    pub async fn holder_of(&self, key: &str) -> Result<Option<String>, LeaseError> {
        let entry = tokio::time::timeout(REQUEST_TIMEOUT, self.store.entry(key))
            .await
            .map_err(|_| Self::unavailable(key, "no answer in time"))?
            .map_err(|error| Self::unavailable(key, super::describe(&error)))?;
        Ok(entry
            .filter(|entry| entry.operation == kv::Operation::Put)
            .and_then(|entry| serde_json::from_slice::<LeaseValue>(&entry.value).ok())
            .map(|value| value.holder))
    }
}

/// The state of a held lease.
#[derive(Debug, Clone, Copy)]
struct Held {
    /// The revision this holder wrote last.
    revision: u64,
    /// One TTL after that write was sent.
    valid_until: Instant,
}

/// A held lease. Cheap to clone; every clone sees the same state. Renew it with
/// [`Lease::renew`] (or let [`Lease::keep`] do it), check it with [`Lease::is_held`] and
/// [`Lease::confirm`], give it back with [`Lease::release`].
#[derive(Clone)]
pub struct Lease {
    inner: Arc<LeaseInner>,
}

struct LeaseInner {
    bucket: LeaseBucket,
    key: String,
    held: Mutex<Option<Held>>,
    /// One write at a time (a renewal and a release never race).
    writing: tokio::sync::Mutex<()>,
    /// Fires when the lease ends: lost or released.
    ended: CancellationToken,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.inner.key)
            .field("held", &self.is_held())
            .finish()
    }
}

impl Lease {
    fn new(bucket: LeaseBucket, key: &str, revision: u64, sent: Instant) -> Lease {
        let valid_until = sent + bucket.ttl;
        Lease {
            inner: Arc::new(LeaseInner {
                bucket,
                key: key.to_string(),
                held: Mutex::new(Some(Held {
                    revision,
                    valid_until,
                })),
                writing: tokio::sync::Mutex::new(()),
                ended: CancellationToken::new(),
            }),
        }
    }

    /// The lease's key.
    pub fn key(&self) -> &str {
        &self.inner.key
    }

    /// Whether this replica still holds the lease: no renewal found it taken over, and the
    /// last successful write was sent less than one TTL ago.
    pub fn is_held(&self) -> bool {
        self.inner
            .held
            .lock()
            .is_some_and(|held| Instant::now() < held.valid_until)
    }

    /// Fires once the lease ended (lost, or released).
    pub fn ended(&self) -> CancellationToken {
        self.inner.ended.clone()
    }

    fn lose(&self, why: &str) {
        if self.inner.held.lock().take().is_some() {
            tracing::warn!(lease = %self.inner.key, why, "lease lost");
            self.inner.bucket.metrics.lost(&self.inner.key);
        }
        self.inner.ended.cancel();
    }

    /// Renews the lease: a write expecting the revision written last. Taken over → lost; a
    /// failed request leaves the lease held until its validity runs out.
    pub async fn renew(&self) -> Result<(), LeaseError> {
        let _writing = self.inner.writing.lock().await;
        let key = &self.inner.key;
        let lost = || LeaseError::Lost { key: key.clone() };
        let Some(held) = *self.inner.held.lock() else {
            return Err(lost());
        };
        if Instant::now() >= held.valid_until {
            self.lose("not renewed within its TTL");
            return Err(lost());
        }
        let sent = Instant::now();
        let bucket = &self.inner.bucket;
        let update = bucket.store.update(key, bucket.value(), held.revision);
        match tokio::time::timeout(REQUEST_TIMEOUT, update).await {
            Ok(Ok(revision)) => {
                let mut state = self.inner.held.lock();
                if state.is_some() {
                    *state = Some(Held {
                        revision,
                        valid_until: sent + bucket.ttl,
                    });
                }
                Ok(())
            }
            Ok(Err(error)) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                self.lose("another holder wrote it, or it lapsed");
                Err(lost())
            }
            Ok(Err(error)) => self.renewal_failed(held, super::describe(&error)),
            Err(_) => self.renewal_failed(held, "no answer in time".into()),
        }
    }

    fn renewal_failed(&self, held: Held, message: String) -> Result<(), LeaseError> {
        if Instant::now() >= held.valid_until {
            self.lose("renewals failed for a whole TTL");
            return Err(LeaseError::Lost {
                key: self.inner.key.clone(),
            });
        }
        tracing::warn!(lease = %self.inner.key, %message, "lease renewal failed; retrying");
        Err(LeaseError::Unavailable {
            key: self.inner.key.clone(),
            message,
        })
    }

    /// Fencing before an irreversible step: renews now and succeeds only when the renewal
    /// did, so the step starts with a whole TTL of validity.
    pub async fn confirm(&self) -> Result<(), LeaseError> {
        self.renew().await?;
        if self.is_held() {
            Ok(())
        } else {
            Err(LeaseError::Lost {
                key: self.inner.key.clone(),
            })
        }
    }

    /// Renews the lease [`RENEWALS_PER_TTL`] times per TTL in a task until it ends (lost or
    /// released); returns that task.
    pub fn keep(&self) -> tokio::task::JoinHandle<()> {
        let lease = self.clone();
        let period = lease.inner.bucket.ttl / RENEWALS_PER_TTL;
        tokio::spawn(async move {
            let ended = lease.ended();
            loop {
                tokio::select! {
                    () = ended.cancelled() => return,
                    () = tokio::time::sleep(period) => {}
                }
                if let Err(LeaseError::Lost { .. }) = lease.renew().await {
                    return;
                }
            }
        })
    }

    /// Gives the lease back at once (a delete expecting our revision), so another replica can
    /// take it without waiting for the TTL. Failures only delay that takeover (logged).
    pub async fn release(&self) {
        let _writing = self.inner.writing.lock().await;
        let held = self.inner.held.lock().take();
        self.inner.ended.cancel();
        let Some(held) = held else {
            return;
        };
        let key = &self.inner.key;
        let delete = self
            .inner
            .bucket
            .store
            .delete_expect_revision(key, Some(held.revision));
        match tokio::time::timeout(REQUEST_TIMEOUT, delete).await {
            Ok(Ok(())) => tracing::debug!(lease = %key, "lease released"),
            Ok(Err(error)) => {
                tracing::warn!(lease = %key, error = %super::describe(&error), "lease not released; it lapses after its TTL")
            }
            Err(_) => {
                tracing::warn!(lease = %key, "lease not released in time; it lapses after its TTL")
            }
        }
    }
}

/// A cluster-wide role (the retention sweeper, …) held by at most one replica at a time. A
/// task keeps trying to take the role's lease and renews it while held; [`RoleLease::is_held`]
/// and [`RoleLease::subscribe`] tell the work that belongs to the role whether to run. In the
/// embedded mode [`RoleLease::always`] holds it forever.
#[derive(Clone)]
pub struct RoleLease {
    name: String,
    current: Arc<Mutex<Option<Lease>>>,
    held: watch::Receiver<bool>,
}

impl std::fmt::Debug for RoleLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoleLease")
            .field("name", &self.name)
            .field("held", &self.is_held())
            .finish()
    }
}

impl RoleLease {
    /// A role held for good (the embedded mode: the only replica).
    pub fn always(name: &str) -> RoleLease {
        let (_, held) = watch::channel(true);
        RoleLease {
            name: name.to_string(),
            current: Arc::default(),
            held,
        }
    }

    /// Competes for the role `name` (lease key `role.<name>`) until `shutdown`: tries to take
    /// it every third of a TTL, renews it while held, and releases it at shutdown.
    pub fn spawn(
        bucket: LeaseBucket,
        name: &str,
        shutdown: CancellationToken,
    ) -> (RoleLease, tokio::task::JoinHandle<()>) {
        let (sender, held) = watch::channel(false);
        let role = RoleLease {
            name: name.to_string(),
            current: Arc::default(),
            held,
        };
        let task = tokio::spawn(compete(bucket, role.clone(), sender, shutdown));
        (role, task)
    }

    /// The role's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this replica holds the role now (always true for [`RoleLease::always`]).
    pub fn is_held(&self) -> bool {
        if !*self.held.borrow() {
            return false;
        }
        match &*self.current.lock() {
            Some(lease) => lease.is_held(),
            None => true,
        }
    }

    /// Fencing before an irreversible step of the role's work: renews the lease now (always
    /// `true` for [`RoleLease::always`]).
    pub async fn confirm(&self) -> bool {
        if !*self.held.borrow() {
            return false;
        }
        let lease = self.current.lock().clone();
        match lease {
            Some(lease) => lease.confirm().await.is_ok(),
            None => true,
        }
    }

    /// Tells every change of [`RoleLease::is_held`] (true when taken, false when lost).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.held.clone()
    }
}

/// The role's task: take, renew, announce, release.
async fn compete(
    bucket: LeaseBucket,
    role: RoleLease,
    sender: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let key = format!("role.{}", role.name);
    let period = bucket.ttl() / RENEWALS_PER_TTL;
    loop {
        let lease = match bucket.try_acquire(&key).await {
            Ok(lease) => lease,
            Err(error) => {
                tracing::warn!(role = %role.name, %error, "cannot compete for the role");
                None
            }
        };
        if let Some(lease) = lease {
            tracing::info!(role = %role.name, holder = bucket.holder(), "this replica holds the role");
            *role.current.lock() = Some(lease.clone());
            sender.send_replace(true);
            bucket.metrics.role_held(&role.name, true);
            let keeper = lease.keep();
            let ended = lease.ended();
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = ended.cancelled() => {}
            }
            sender.send_replace(false);
            bucket.metrics.role_held(&role.name, false);
            lease.release().await;
            let _ = keeper.await;
            *role.current.lock() = None;
            tracing::info!(role = %role.name, "this replica no longer holds the role");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// A NATS server of the test's own (`$SCAIVAULT_TEST_NATS_SERVER`, one node, JetStream on,
    /// a free loopback port); panics with how to get it.
    pub(crate) struct Nats {
        child: std::process::Child,
        pub(crate) url: String,
        _dir: tempfile::TempDir,
    }

    impl Drop for Nats {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    pub(crate) async fn nats() -> Nats {
        let binary = std::env::var("SCAIVAULT_TEST_NATS_SERVER").unwrap_or_else(|_| {
            panic!(
                "SCAIVAULT_TEST_NATS_SERVER is not set: this test needs nats-server 2.15.1. Run \
                 `scripts/cluster.sh start && source .tools/cluster.env`"
            )
        });
        let dir = tempfile::tempdir().unwrap();
        let port = crate::cluster::local_ports::unclaimed_loopback_port().unwrap();
        let child = std::process::Command::new(binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("nats://127.0.0.1:{port}");
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Nats {
            child,
            url,
            _dir: dir,
        }
    }

    async fn bucket(nats: &Nats, holder: &str, ttl: Duration) -> LeaseBucket {
        let client = async_nats::connect(&nats.url).await.unwrap();
        let context = jetstream::new(client);
        LeaseBucket::open(&context, "LEASES_TEST", ttl, 1, holder)
            .await
            .unwrap()
    }

    #[tokio::test]
    #[ignore = "needs scripts/cluster.sh"]
    async fn one_holder_at_a_time_and_a_dead_holders_lease_lapses() {
        let nats = nats().await;
        let ttl = Duration::from_secs(2);
        let a = bucket(&nats, "a", ttl).await;
        let b = bucket(&nats, "b", Duration::from_secs(30)).await;
        assert_eq!(b.ttl(), ttl, "the bucket's TTL wins over a local setting");

        let held = a.try_acquire("export.x").await.unwrap().expect("free");
        assert!(held.is_held());
        assert!(b.try_acquire("export.x").await.unwrap().is_none());
        assert_eq!(b.holder_of("export.x").await.unwrap().as_deref(), Some("a"));
        // Renewals keep it past its TTL.
        let keeper = held.keep();
        tokio::time::sleep(ttl * 2).await;
        assert!(held.is_held());
        assert!(b.try_acquire("export.x").await.unwrap().is_none());
        // The holder dies (no more renewals): the servers expire the value, b takes over.
        keeper.abort();
        let started = Instant::now();
        let taken = loop {
            if let Some(lease) = b.try_acquire("export.x").await.unwrap() {
                break lease;
            }
            assert!(started.elapsed() < ttl * 5, "the lease never lapsed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(
            started.elapsed() >= ttl / 2,
            "taken before the TTL could have run out: {:?}",
            started.elapsed()
        );
        // The old holder counts itself out by time, and its renewal finds the takeover.
        assert!(!held.is_held());
        assert!(matches!(held.renew().await, Err(LeaseError::Lost { .. })));
        assert!(held.ended().is_cancelled());
        assert!(taken.confirm().await.is_ok());
        assert_eq!(a.holder_of("export.x").await.unwrap().as_deref(), Some("b"));
    }

    #[tokio::test]
    #[ignore = "needs scripts/cluster.sh"]
    async fn a_takeover_is_noticed_and_a_release_frees_the_key_at_once() {
        let nats = nats().await;
        let ttl = Duration::from_secs(10);
        let a = bucket(&nats, "a", ttl).await;
        let b = bucket(&nats, "b", ttl).await;
        let held = a.try_acquire("job").await.unwrap().unwrap();
        // Someone writes the key behind the holder's back: the next renewal loses the lease.
        a.store.put("job", Bytes::from_static(b"{}")).await.unwrap();
        assert!(matches!(held.confirm().await, Err(LeaseError::Lost { .. })));
        assert!(!held.is_held());
        a.store.delete("job").await.unwrap();
        // A release frees the key without waiting for the TTL.
        let again = b
            .try_acquire("job")
            .await
            .unwrap()
            .expect("free after delete");
        again.release().await;
        assert!(!again.is_held());
        assert!(again.ended().is_cancelled());
        let third = a.try_acquire("job").await.unwrap().expect("released");
        assert!(third.is_held());
    }

    #[tokio::test]
    #[ignore = "needs scripts/cluster.sh"]
    async fn a_role_has_one_holder_and_moves_when_it_stops() {
        let nats = nats().await;
        let ttl = Duration::from_secs(2);
        let stop_a = CancellationToken::new();
        let stop_b = CancellationToken::new();
        let (role_a, task_a) =
            RoleLease::spawn(bucket(&nats, "a", ttl).await, "sweeper", stop_a.clone());
        let mut changes_a = role_a.subscribe();
        tokio::time::timeout(Duration::from_secs(5), changes_a.wait_for(|held| *held))
            .await
            .unwrap()
            .unwrap();
        let (role_b, task_b) =
            RoleLease::spawn(bucket(&nats, "b", ttl).await, "sweeper", stop_b.clone());
        tokio::time::sleep(ttl * 2).await;
        assert!(role_a.is_held() && role_a.confirm().await);
        assert!(!role_b.is_held() && !role_b.confirm().await);
        // a stops (releasing the role): b takes it within a renewal period or so.
        stop_a.cancel();
        task_a.await.unwrap();
        assert!(!role_a.is_held());
        let mut changes_b = role_b.subscribe();
        tokio::time::timeout(ttl * 2, changes_b.wait_for(|held| *held))
            .await
            .unwrap()
            .unwrap();
        assert!(role_b.is_held());
        stop_b.cancel();
        task_b.await.unwrap();
        assert!(RoleLease::always("x").is_held());
    }
}
