//! Opening the clustered mode's JetStream key-value buckets (leases, export jobs, sweeps,
//! manifest links): every replica opens a bucket, the first one to find it missing creates it.

use async_nats::jetstream::{self, kv};

/// Opens the bucket `config.bucket`, creating it with `config` if it does not exist yet. An
/// existing bucket keeps its own configuration. JetStream without a meta leader (a node just
/// killed or restarting) answers neither for a few seconds, so this retries as long as the
/// stream itself is waited for at start ([`super::retry_while_leaderless`]), then fails with a
/// readable reason ("cannot be created: …").
pub async fn open_or_create(
    context: &jetstream::Context,
    config: kv::Config,
) -> Result<kv::Store, String> {
    let bucket = config.bucket.clone();
    super::retry_while_leaderless("key-value bucket", &bucket, || {
        open_or_create_once(context, config.clone())
    })
    .await
}

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
