//! The clustered mode on NATS JetStream (docs/cluster.md): the replicated log behind
//! [`crate::store::log`]'s interface.
//!
//! - [`JetStreamLog`] ([`EventLog`]): one ingest request is one message on the stream, its id
//!   ([`message::message_id`]) in `Nats-Msg-Id`; the request is acknowledged only after
//!   JetStream's publish acknowledgement (a quorum of the stream's replicas has it, on disk
//!   with the server setting `sync_interval: always`).
//! - [`JetStreamSource`] ([`LogSource`]): this replica's durable pull consumer, named by its
//!   replica id, (re)created at the position after the index's last commit and acknowledged
//!   message by message once committed.
//!
//! Why one message per request rather than JetStream's atomic batch publish: measured against
//! nats-server 2.15.1, an atomic batch whose messages carry `Nats-Msg-Id` is refused whole
//! (error 10201, "atomic publish batch contains duplicate message id") as soon as one id was
//! published before, so a retry of a request that was committed after its timeout can never
//! succeed, nor can a request that shares one id with an earlier one; and a batch holds at most
//! 1000 messages (error 10199) where a request holds up to 10 000 events. One message is
//! stored whole or not at all, its duplicate is answered `duplicate: true` with the original
//! sequence, and the consumers' id deduplication drops events that were stored before under
//! another request.

pub mod exports;
pub mod kv;
pub mod lease;
pub mod lease_metrics;
pub mod local_ports;
pub mod manifest_links;
pub mod message;
pub mod schedules;
pub mod snapshotter;
pub mod sweeps;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_nats::{ConnectOptions, HeaderMap, ServerAddr};
use futures::{FutureExt, StreamExt};

use crate::config::ClusterSettings;
use crate::snapshot::rejoin::LogWindow;
use crate::store::log::{EventLog, LogError, LogRecord, LogSource};
use crate::store::{IngestOutcome, PreparedEvent, WriteError};

/// Room left in a message for its headers.
const HEADER_ALLOWANCE: usize = 512;
/// Most records one poll returns.
const MAX_RECORDS_PER_POLL: usize = 256;
/// Messages delivered to a replica and not yet acknowledged (committed) at most.
const MAX_ACK_PENDING: i64 = 20_000;
/// A delivered message is delivered again after this long without an acknowledgement.
const ACK_WAIT: Duration = Duration::from_secs(60);
/// How long the start waits for the NATS servers.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the start waits for the stream to answer (e.g. while it elects a leader).
const STREAM_WAIT: Duration = Duration::from_secs(30);

/// Why the clustered mode cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot read the NATS credentials file {path}: {source}")]
    Credentials {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid NATS server URL {url:?}: {message}")]
    Url { url: String, message: String },
    #[error("cannot connect to NATS ({urls}): {message}")]
    Connect { urls: String, message: String },
    #[error("JetStream stream {stream}: {message}")]
    Stream { stream: String, message: String },
}

/// Connects to NATS, creates the stream if it is missing and checks it if it exists; returns
/// the append side and this replica's read side.
pub async fn connect(
    settings: &ClusterSettings,
) -> Result<(JetStreamLog, JetStreamSource), ClusterError> {
    let client = connect_client(settings).await?;
    let max_payload = client.server_info().max_payload;
    let mut context = jetstream::new(client);
    context.set_timeout(settings.publish_timeout);
    let stream = ensure_stream(&context, settings).await?;
    let log = JetStreamLog {
        context,
        subject: settings.subject.clone(),
        timeout: settings.publish_timeout,
        max_payload,
    };
    let source = JetStreamSource {
        stream,
        subject: settings.subject.clone(),
        consumer_name: settings.replica_id.clone(),
        messages: None,
        delivered: VecDeque::new(),
        acknowledged: 0,
    };
    Ok((log, source))
}

async fn connect_client(settings: &ClusterSettings) -> Result<async_nats::Client, ClusterError> {
    let mut options = ConnectOptions::new()
        .name(format!("scaivault-audit {}", settings.replica_id))
        .connection_timeout(CONNECT_TIMEOUT);
    if let Some(path) = &settings.credentials_file {
        options =
            options
                .credentials_file(path)
                .await
                .map_err(|source| ClusterError::Credentials {
                    path: path.clone(),
                    source,
                })?;
    }
    if let Some(ca) = &settings.tls_ca_file {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let Some((cert, key)) = &settings.tls_client {
        options = options
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    let mut addresses = Vec::with_capacity(settings.nats_urls.len());
    for url in &settings.nats_urls {
        let address: ServerAddr = url.parse().map_err(|error| ClusterError::Url {
            url: url.clone(),
            message: format!("{error}"),
        })?;
        addresses.push(address);
    }
    let urls = settings.nats_urls.join(",");
    let connect = options.connect(addresses);
    match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(error)) => Err(ClusterError::Connect {
            urls,
            message: error.to_string(),
        }),
        Err(_) => Err(ClusterError::Connect {
            urls,
            message: format!("no server answered within {CONNECT_TIMEOUT:?}"),
        }),
    }
}

/// The stream as configured: created if missing; an existing one must keep events on file,
/// on at least the configured replicas, refuse (not drop) when full, and carry the subject.
async fn ensure_stream(
    context: &jetstream::Context,
    settings: &ClusterSettings,
) -> Result<stream::Stream, ClusterError> {
    let failed = |message: String| ClusterError::Stream {
        stream: settings.stream.clone(),
        message,
    };
    let config = stream::Config {
        name: settings.stream.clone(),
        subjects: vec![settings.subject.clone()],
        storage: stream::StorageType::File,
        num_replicas: settings.replicas,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::New,
        max_age: settings.max_age,
        max_bytes: i64::try_from(settings.max_bytes).unwrap_or(i64::MAX),
        duplicate_window: settings.duplicate_window,
        ..Default::default()
    };
    let (stream, info) = retry_while_leaderless("stream", &settings.stream, || async {
        let mut stream = context
            .get_or_create_stream(config.clone())
            .await
            .map_err(|error| format!("cannot be read or created: {}", describe(&error)))?;
        let info = stream
            .info()
            .await
            .map_err(|error| format!("cannot be read: {}", describe(&error)))?
            .clone();
        Ok((stream, info))
    })
    .await
    .map_err(failed)?;
    check_stream(&info.config, settings).map_err(failed)?;
    tracing::info!(
        stream = %settings.stream,
        replicas = info.config.num_replicas,
        last_sequence = info.state.last_sequence,
        "JetStream stream ready"
    );
    Ok(stream)
}

/// Runs `attempt` until it succeeds, a second apart, for up to [`STREAM_WAIT`]: JetStream
/// without a leader (a node just killed or restarting) answers nothing for a few seconds. The
/// last failure is returned after that. `kind` and `name` ("stream", "SCAIVAULT_AUDIT") name
/// what is waited for in the warnings.
async fn retry_while_leaderless<T, Attempt, Answer>(
    kind: &str,
    name: &str,
    mut attempt: Attempt,
) -> Result<T, String>
where
    Attempt: FnMut() -> Answer,
    Answer: std::future::Future<Output = Result<T, String>>,
{
    let started = std::time::Instant::now();
    loop {
        match attempt().await {
            Ok(found) => return Ok(found),
            Err(message) if started.elapsed() < STREAM_WAIT => {
                tracing::warn!(%kind, %name, %message, "JetStream does not answer yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(message) => return Err(message),
        }
    }
}

/// What an existing stream must be for the guarantees of docs/cluster.md to hold.
fn check_stream(config: &stream::Config, settings: &ClusterSettings) -> Result<(), String> {
    if config.num_replicas < settings.replicas {
        return Err(format!(
            "has {} replicas, fewer than the configured {} (raise them with `nats stream edit`, or lower cluster.replicas)",
            config.num_replicas, settings.replicas
        ));
    }
    if config.storage != stream::StorageType::File {
        return Err("keeps its messages in memory; the audit log needs file storage".into());
    }
    if config.discard != stream::DiscardPolicy::New {
        return Err(
            "discards old messages when full; the audit log needs `discard: new` (refuse, never drop)"
                .into(),
        );
    }
    if !config.subjects.contains(&settings.subject) {
        return Err(format!(
            "does not carry the subject {} (it has {:?})",
            settings.subject, config.subjects
        ));
    }
    Ok(())
}

/// An error with its sources (async-nats puts the server's description in the source).
fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The append side: publishes each request as one message and waits for the stream's
/// acknowledgement.
#[derive(Clone)]
pub struct JetStreamLog {
    context: jetstream::Context,
    subject: String,
    timeout: Duration,
    max_payload: usize,
}

impl JetStreamLog {
    /// The JetStream context this log publishes through (coordination uses it too).
    pub fn jetstream(&self) -> jetstream::Context {
        self.context.clone()
    }

    /// This log behind the store's interface.
    pub fn into_event_log(self) -> Arc<dyn EventLog> {
        Arc::new(self)
    }
}

#[async_trait::async_trait]
impl EventLog for JetStreamLog {
    async fn append(&self, events: Vec<PreparedEvent>) -> Result<IngestOutcome, WriteError> {
        let ids: Vec<String> = events.iter().map(|e| e.event.id.clone()).collect();
        let count = events.len();
        // Compressing up to a request body's worth is CPU work: off the async workers.
        let (payload, id) = tokio::task::spawn_blocking(move || {
            (message::encode(&events), message::message_id(&events))
        })
        .await
        .map_err(|error| WriteError::LogUnavailable(error.to_string()))?;
        let limit = self.max_payload.saturating_sub(HEADER_ALLOWANCE);
        if payload.len() > limit {
            return Err(WriteError::TooLargeForLog {
                size: payload.len(),
                limit,
            });
        }
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        headers.insert(message::FORMAT_HEADER, message::FORMAT);
        let publish = async {
            self.context
                .publish_with_headers(self.subject.clone(), headers, payload.into())
                .await?
                .await
        };
        match tokio::time::timeout(self.timeout, publish).await {
            Ok(Ok(ack)) => Ok(IngestOutcome {
                ids,
                duplicates: if ack.duplicate { count } else { 0 },
            }),
            Ok(Err(error)) => Err(WriteError::LogUnavailable(describe(&error))),
            Err(_) => Err(WriteError::LogUnavailable(format!(
                "no acknowledgement within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }
}

/// The read side: this replica's durable pull consumer.
pub struct JetStreamSource {
    stream: stream::Stream,
    subject: String,
    consumer_name: String,
    messages: Option<consumer::pull::Stream>,
    /// Delivered messages not yet acknowledged, with their stream sequence, in order.
    delivered: VecDeque<(u64, jetstream::Message)>,
    /// Every message through this stream sequence is committed (and acknowledged).
    acknowledged: u64,
}

impl JetStreamSource {
    /// The records the stream holds now (for the start's restore decision,
    /// [`crate::snapshot::rejoin`]).
    pub async fn window(&mut self) -> Result<LogWindow, ClusterError> {
        let stream = self.stream.cached_info().config.name.clone();
        let info = self
            .stream
            .info()
            .await
            .map_err(|error| ClusterError::Stream {
                stream,
                message: format!("cannot be read: {}", describe(&error)),
            })?;
        Ok(LogWindow {
            first: info.state.first_sequence,
            last: info.state.last_sequence,
        })
    }

    /// (Re)creates the durable consumer at the message after `after`. The position is the
    /// index's, so the consumer is recreated rather than resumed: a resumed pull consumer would
    /// deliver new messages before redelivering those a crash left unacknowledged.
    async fn open(&mut self, after: u64) -> Result<(), LogError> {
        self.messages = None;
        self.delivered.clear();
        self.acknowledged = self.acknowledged.max(after);
        match self.stream.delete_consumer(&self.consumer_name).await {
            Ok(_) => {}
            Err(error) => {
                let missing = matches!(
                    error.kind(),
                    stream::ConsumerErrorKind::JetStream(ref e)
                        if e.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND
                );
                if !missing {
                    return Err(LogError(format!(
                        "cannot replace consumer {}: {}",
                        self.consumer_name,
                        describe(&error)
                    )));
                }
            }
        }
        let config = consumer::pull::Config {
            durable_name: Some(self.consumer_name.clone()),
            description: Some("scaivault-audit replica: indexes every event".into()),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: after + 1,
            },
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            max_ack_pending: MAX_ACK_PENDING,
            filter_subject: self.subject.clone(),
            ..Default::default()
        };
        let consumer: consumer::PullConsumer =
            self.stream.create_consumer(config).await.map_err(|error| {
                LogError(format!("cannot create consumer: {}", describe(&error)))
            })?;
        let messages = consumer
            .messages()
            .await
            .map_err(|error| LogError(format!("cannot pull messages: {}", describe(&error))))?;
        self.messages = Some(messages);
        tracing::info!(consumer = %self.consumer_name, from = after + 1, "consuming the replicated log");
        Ok(())
    }

    /// Whether the stream still holds the message at `position` (when it cannot tell, assume
    /// so: reopening is safe, skipping is not).
    async fn still_holds(&self, position: u64) -> bool {
        match self.stream.get_raw_message(position).await {
            Ok(_) => true,
            Err(error) => !matches!(error.kind(), stream::RawMessageErrorKind::NoMessageFound),
        }
    }

    /// One delivered message as a record (kept for its acknowledgement).
    fn record(&mut self, message: jetstream::Message) -> Result<LogRecord, LogError> {
        let position = stream_sequence(&message)?;
        let format = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(message::FORMAT_HEADER))
            .map(|value| value.as_str().to_string());
        let events = match message::decode(format.as_deref(), &message.payload) {
            Ok(events) => events,
            Err(error) => {
                // Every replica skips it alike; it was not published by this service.
                tracing::error!(%error, position, "a log message does not decode; skipped");
                Vec::new()
            }
        };
        self.delivered.push_back((position, message));
        Ok(LogRecord { position, events })
    }
}

/// The stream sequence of a delivered message.
fn stream_sequence(message: &jetstream::Message) -> Result<u64, LogError> {
    Ok(message
        .info()
        .map_err(|error| LogError(format!("message without metadata: {error}")))?
        .stream_sequence)
}

#[async_trait::async_trait]
impl LogSource for JetStreamSource {
    async fn next_records(
        &mut self,
        after: u64,
        wait: Duration,
    ) -> Result<Vec<LogRecord>, LogError> {
        if self.messages.is_none() {
            self.open(after).await?;
        }
        let mut records = Vec::new();
        let Some(messages) = self.messages.as_mut() else {
            return Ok(records);
        };
        let first = match tokio::time::timeout(wait, messages.next()).await {
            Err(_) => return Ok(records),
            Ok(next) => next,
        };
        let mut next = first;
        // The position the next record must have for the records to be contiguous.
        let mut expected = after + 1;
        loop {
            match next {
                Some(Ok(message)) => {
                    let position = stream_sequence(&message)?;
                    if position > expected && self.still_holds(expected).await {
                        // The consumer skipped messages the stream still holds: after its
                        // leader died they count as delivered into a pull request that died
                        // with it, and come again only after ACK_WAIT. Reopened at the first
                        // of them (taking them for a gap would lose them on this replica).
                        tracing::warn!(
                            expected,
                            delivered = position,
                            "the log consumer skipped messages the stream still holds; reopening there"
                        );
                        self.messages = None;
                        return Ok(records);
                    }
                    expected = expected.max(position + 1);
                    records.push(self.record(message)?);
                }
                Some(Err(error)) => {
                    // Reopened at the next poll, from the position the store passes.
                    self.messages = None;
                    if records.is_empty() {
                        return Err(LogError(describe(&error)));
                    }
                    tracing::warn!(error = %describe(&error), "the log consumer failed; reopening");
                    return Ok(records);
                }
                None => {
                    self.messages = None;
                    return Ok(records);
                }
            }
            if records.len() >= MAX_RECORDS_PER_POLL {
                return Ok(records);
            }
            let Some(messages) = self.messages.as_mut() else {
                return Ok(records);
            };
            match messages.next().now_or_never() {
                Some(ready) => next = ready,
                None => return Ok(records),
            }
        }
    }

    async fn acknowledge_through(&mut self, position: u64) -> Result<(), LogError> {
        while self
            .delivered
            .front()
            .is_some_and(|(delivered, _)| *delivered <= position)
        {
            let Some((_, message)) = self.delivered.pop_front() else {
                break;
            };
            if let Err(error) = message.ack().await {
                // Delivered again after the ack wait, then skipped by position.
                return Err(LogError(format!("acknowledgement failed: {error}")));
            }
        }
        self.acknowledged = self.acknowledged.max(position);
        Ok(())
    }

    async fn end_position(&mut self) -> Result<u64, LogError> {
        let info = self
            .stream
            .info()
            .await
            .map_err(|error| LogError(describe(&error)))?;
        Ok(info.state.last_sequence)
    }
}

impl std::fmt::Debug for JetStreamSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamSource")
            .field("consumer", &self.consumer_name)
            .field("acknowledged", &self.acknowledged)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ClusterSettings {
        crate::config::ClusterSection {
            nats_url: Some("nats://127.0.0.1:4222".into()),
            replica_id: Some("r1".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap()
        .unwrap()
    }

    fn good(settings: &ClusterSettings) -> stream::Config {
        stream::Config {
            name: settings.stream.clone(),
            subjects: vec![settings.subject.clone()],
            storage: stream::StorageType::File,
            num_replicas: 3,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        }
    }

    #[test]
    fn an_existing_stream_must_keep_the_guarantees() {
        let settings = settings();
        assert!(check_stream(&good(&settings), &settings).is_ok());
        let cases = [
            (
                stream::Config {
                    num_replicas: 1,
                    ..good(&settings)
                },
                "fewer than the configured 3",
            ),
            (
                stream::Config {
                    storage: stream::StorageType::Memory,
                    ..good(&settings)
                },
                "file storage",
            ),
            (
                stream::Config {
                    discard: stream::DiscardPolicy::Old,
                    ..good(&settings)
                },
                "discard: new",
            ),
            (
                stream::Config {
                    subjects: vec!["other".into()],
                    ..good(&settings)
                },
                "subject",
            ),
        ];
        for (config, expected) in cases {
            let error = check_stream(&config, &settings).unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
    }
}
