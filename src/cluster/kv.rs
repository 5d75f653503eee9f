//! Opening the clustered mode's JetStream key-value buckets (leases, export jobs, sweeps,
//! manifest links): every replica opens a bucket, the first one to find it missing creates it.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};

/// Opens the bucket `config.bucket`, creating it with `config` if it does not exist yet. An
/// existing bucket keeps its own configuration. JetStream without a meta leader (a node just
/// killed or restarting) answers neither for a few seconds, so this retries for as long as the
/// stream itself is waited for at start ([`super::STREAM_WAIT`]), then fails with a readable
/// reason ("cannot be created: …").
pub async fn open_or_create(
    context: &jetstream::Context,
    config: kv::Config,
) -> Result<kv::Store, String> {
    let started = Instant::now();
    loop {
        match open_or_create_once(context, config.clone()).await {
            Ok(store) => return Ok(store),
            Err(message) if started.elapsed() < super::STREAM_WAIT => {
                tracing::warn!(bucket = %config.bucket, %message, "the JetStream key-value bucket does not answer yet; retrying");
                tokio::time::sleep(RETRY_INTERVAL).await;
            }
            Err(message) => return Err(message),
        }
    }
}

/// How long a failed attempt waits before the next.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

async fn open_or_create_once(
    context: &jetstream::Context,
    config: kv::Config,
) -> Result<kv::Store, String> {
    if let Ok(store) = context.get_key_value(&config.bucket).await {
        return Ok(store);
    }
    let bucket = config.bucket.clone();
    match context.create_key_value(config).await {
        Ok(store) => Ok(store),
        // Another replica created it in between.
        Err(created) => context
            .get_key_value(&bucket)
            .await
            .map_err(|_| format!("cannot be created: {}", super::describe(&created))),
    }
}
