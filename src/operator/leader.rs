//! Leader election on a `coordination.k8s.io/v1` Lease: only the holder runs export jobs; every
//! replica keeps serving the API.
//!
//! Writes are replaces with the observed `resourceVersion`, so two candidates can never both
//! win a round (the loser gets 409 Conflict). A lease counts as expired when its record has not
//! changed for `leaseDurationSeconds` *as observed locally*, so clock skew between nodes does
//! not matter (client-go's rule). A renewal gets its own timeout (at most until the holder
//! would have to give up anyway), so a hung API call cannot keep a stale leader running jobs
//! past the lease duration. kube-lease-manager was not used: it relies on server-side apply
//! conflicts, which the test emulator does not implement.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::metrics::OperatorMetrics;

/// Lease settings.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// A lease not renewed for this long may be taken over.
    pub lease_duration: Duration,
    /// How often the holder renews, and candidates retry.
    pub renew_interval: Duration,
    /// How long one renewal (read and replace) may take; it is also cut short when the holder
    /// would have to give up (`lease_duration - renew_interval` after the last renewal).
    pub renew_timeout: Duration,
}

impl LeaseSettings {
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        LeaseSettings {
            namespace: namespace.to_string(),
            name: name.to_string(),
            identity: identity.to_string(),
            lease_duration: Duration::from_secs(15),
            renew_interval: Duration::from_secs(5),
            renew_timeout: Duration::from_secs(5),
        }
    }
}

/// Failures talking to the Lease API.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("failed to read lease: {0}")]
    Read(#[source] kube::Error),
    #[error("failed to write lease: {0}")]
    Write(#[source] kube::Error),
    #[error("the lease renewal took longer than {0:?}")]
    Timeout(Duration),
}

/// One election round's view of the lease.
struct Observed {
    resource_version: Option<String>,
    since: Instant,
}

/// Campaigns for the lease until `shutdown`; while holding it runs `lead(token)`, whose token
/// is cancelled when leadership is lost or on shutdown (then the lease is released).
pub async fn run<F, Fut>(
    api: Api<Lease>,
    settings: LeaseSettings,
    metrics: OperatorMetrics,
    shutdown: CancellationToken,
    lead: F,
) where
    F: Fn(CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut observed: Option<Observed> = None;
    while !shutdown.is_cancelled() {
        match try_acquire(&api, &settings, &mut observed).await {
            Ok(true) => {
                tracing::info!(identity = %settings.identity, lease = %settings.name, "became leader");
                metrics.leader.set(1);
                let leading = shutdown.child_token();
                let work = tokio::spawn(lead(leading.clone()));
                hold(&api, &settings, &shutdown).await;
                leading.cancel();
                if let Err(error) = work.await {
                    tracing::error!(%error, "leader work panicked");
                }
                metrics.leader.set(0);
                if shutdown.is_cancelled() {
                    release(&api, &settings).await;
                    return;
                }
                tracing::warn!(identity = %settings.identity, "lost leadership");
                observed = None;
            }
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, "leader election failed; retrying"),
        }
        tokio::select! {
            () = tokio::time::sleep(settings.renew_interval) => {}
            () = shutdown.cancelled() => {}
        }
    }
}

/// Renews until a renewal fails for longer than the lease lasts, or shutdown.
async fn hold(api: &Api<Lease>, settings: &LeaseSettings, shutdown: &CancellationToken) {
    let mut last_renewal = Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep(settings.renew_interval) => {}
            () = shutdown.cancelled() => return,
        }
        match renew_in_time(api, settings, last_renewal).await {
            Ok(true) => last_renewal = Instant::now(),
            Ok(false) => return,
            Err(error) => {
                tracing::warn!(%error, "failed to renew the lease");
                // Stop before another replica may take over.
                if last_renewal.elapsed() + settings.renew_interval >= settings.lease_duration {
                    return;
                }
            }
        }
    }
}

/// [`renew`], given at most `renew_timeout`, and never past the moment the holder would have
/// to give up after `last_renewal`.
async fn renew_in_time(
    api: &Api<Lease>,
    settings: &LeaseSettings,
    last_renewal: Instant,
) -> Result<bool, LeaseError> {
    let give_up = last_renewal
        + settings
            .lease_duration
            .saturating_sub(settings.renew_interval);
    let budget = give_up
        .saturating_duration_since(Instant::now())
        .min(settings.renew_timeout);
    tokio::time::timeout(budget, renew(api, settings))
        .await
        .map_err(|_| LeaseError::Timeout(budget))?
}

/// Takes the lease if it is free, expired or already ours. `Ok(true)` when we hold it.
async fn try_acquire(
    api: &Api<Lease>,
    settings: &LeaseSettings,
    observed: &mut Option<Observed>,
) -> Result<bool, LeaseError> {
    let Some(lease) = api
        .get_opt(&settings.name)
        .await
        .map_err(LeaseError::Read)?
    else {
        let lease = new_lease(settings, 0);
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.is_already_exists() || status.is_conflict() => {
                Ok(false)
            }
            Err(error) => Err(LeaseError::Write(error)),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec
        .holder_identity
        .as_deref()
        .filter(|holder| !holder.is_empty());
    let version = lease.metadata.resource_version.clone();
    let expired = match observed {
        Some(seen) if seen.resource_version == version => {
            seen.since.elapsed() >= duration_of(&spec, settings)
        }
        _ => {
            *observed = Some(Observed {
                resource_version: version,
                since: Instant::now(),
            });
            false
        }
    };
    let ours = holder == Some(settings.identity.as_str());
    if holder.is_some() && !ours && !expired {
        return Ok(false);
    }
    let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
    let mut next = new_lease(settings, transitions);
    next.metadata.resource_version = lease.metadata.resource_version.clone();
    if ours && let Some(next_spec) = next.spec.as_mut() {
        next_spec.acquire_time = spec.acquire_time.clone();
    }
    replace(api, settings, &next).await
}

/// Renews our lease; `Ok(false)` when someone else holds it now.
async fn renew(api: &Api<Lease>, settings: &LeaseSettings) -> Result<bool, LeaseError> {
    let mut lease = api.get(&settings.name).await.map_err(LeaseError::Read)?;
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(settings.identity.as_str()) {
        return Ok(false);
    }
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    replace(api, settings, &lease).await
}

async fn replace(
    api: &Api<Lease>,
    settings: &LeaseSettings,
    lease: &Lease,
) -> Result<bool, LeaseError> {
    match api
        .replace(&settings.name, &PostParams::default(), lease)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.is_conflict() => Ok(false),
        Err(error) => Err(LeaseError::Write(error)),
    }
}

/// Gives the lease up on shutdown so another replica takes over at once.
async fn release(api: &Api<Lease>, settings: &LeaseSettings) {
    let result = async {
        let mut lease = api.get(&settings.name).await.map_err(LeaseError::Read)?;
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(settings.identity.as_str()) {
            return Ok(false);
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        replace(api, settings, &lease).await
    }
    .await;
    if let Err(error) = result {
        tracing::warn!(%error, "failed to release the lease");
    }
}

fn duration_of(spec: &LeaseSpec, settings: &LeaseSettings) -> Duration {
    spec.lease_duration_seconds
        .and_then(|seconds| u64::try_from(seconds).ok())
        .map_or(settings.lease_duration, Duration::from_secs)
}

fn new_lease(settings: &LeaseSettings, transitions: i32) -> Lease {
    let now = MicroTime(Timestamp::now());
    Lease {
        metadata: ObjectMeta {
            name: Some(settings.name.clone()),
            namespace: Some(settings.namespace.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(settings.identity.clone()),
            lease_duration_seconds: i32::try_from(settings.lease_duration.as_secs()).ok(),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;

    /// A renewal whose API call never answers ends the term before the lease could expire, so
    /// no other replica can lead while this one still runs jobs.
    #[tokio::test(start_paused = true)]
    async fn a_renewal_that_never_answers_ends_the_term_before_the_lease_expires() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api: Api<Lease> = Api::namespaced(kube::Client::new(service, "default"), "default");
        let settings = LeaseSettings::new("default", "scaivault-audit", "replica-a");
        let shutdown = CancellationToken::new();
        let started = Instant::now();
        let mut held = tokio::spawn(async move {
            hold(&api, &settings, &shutdown).await;
            Instant::now()
        });
        // Requests are kept unanswered (dropping one would fail the call at once).
        let mut unanswered = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                tokio::select! {
                    request = handle.next_request() => match request {
                        Some(request) => unanswered.push(request),
                        // The holder returned and dropped its client.
                        None => return (&mut held).await.unwrap(),
                    },
                    ended = &mut held => return ended.unwrap(),
                }
            }
        })
        .await
        .expect("the holder never gave up");
        let lease_duration = LeaseSettings::new("", "", "").lease_duration;
        assert!(
            ended - started < lease_duration,
            "gave up after {:?}",
            ended - started
        );
        assert!(!unanswered.is_empty(), "it tried to renew");
        let (request, _) = &unanswered[0];
        assert_eq!(
            request.uri().path(),
            "/apis/coordination.k8s.io/v1/namespaces/default/leases/scaivault-audit"
        );
    }
}
