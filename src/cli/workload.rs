//! `scaivault-audit gen`: the reference workload (docs/workload.md) as NDJSON.
//!
//! A native port of the reference generator: it follows the reference distribution but not its
//! bytes (the random number generator differs). It is deterministic per [`WorkloadOptions`], so
//! benchmark runs compare. Events are the library's [`AuditEvent`]s, written in the API shape
//! ([`ApiEvent`]) followed by `tenant_id`: the line shape that ingest and `import` accept.

use std::f64::consts::TAU;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use fastrand::Rng;
use scaivault_audit::event::{Action, ApiEvent, AuditEvent, IdentityType};
use serde::Serialize;
use serde_json::{Map, Value};

/// (action, weight, has a secret path), as in the reference generator. The order matters: the
/// weighted pick walks it, so reordering changes every workload.
const ACTIONS: [(Action, u32, bool); 22] = [
    (Action::Read, 700, true),
    (Action::List, 100, true),
    (Action::Write, 60, true),
    (Action::Rotate, 20, true),
    (Action::Delete, 10, true),
    (Action::DynamicGenerate, 30, true),
    (Action::DynamicRenew, 20, true),
    (Action::DynamicRevoke, 10, true),
    (Action::PkiIssue, 10, true),
    (Action::PkiSign, 5, true),
    (Action::PkiRevoke, 2, true),
    (Action::PkiCaCreate, 1, true),
    (Action::PolicyCreate, 3, false),
    (Action::PolicyUpdate, 3, false),
    (Action::PolicyDelete, 1, false),
    (Action::PolicyBind, 2, false),
    (Action::PolicyUnbind, 1, false),
    (Action::WebhookDelivery, 10, true),
    (Action::SubscriptionEvent, 5, true),
    (Action::FederationSync, 2, true),
    (Action::IdentitySync, 2, false),
    (Action::ExportCreated, 1, false),
];
/// Actions performed by `system:{first word}-worker` instead of a tenant identity.
const SYSTEM_ACTIONS: [Action; 4] = [
    Action::WebhookDelivery,
    Action::SubscriptionEvent,
    Action::FederationSync,
    Action::IdentitySync,
];
const TENANT_NAMES: [&str; 8] = [
    "acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "wonka",
];
const ENVS: [&str; 3] = ["production", "staging", "development"];
const SERVICES: [&str; 14] = [
    "billing",
    "checkout",
    "search",
    "auth",
    "payments",
    "reporting",
    "ledger",
    "crm",
    "inventory",
    "shipping",
    "notifications",
    "analytics",
    "gateway",
    "scheduler",
];
const SECRETS: [&str; 10] = [
    "api-credentials",
    "db-password",
    "oauth",
    "tls",
    "signing-key",
    "webhook-secret",
    "smtp",
    "redis",
    "s3-writer",
    "kafka-sasl",
];
const VENDORS: [&str; 8] = [
    "salesforce",
    "stripe",
    "github",
    "slack",
    "datadog",
    "twilio",
    "sendgrid",
    "okta",
];
const INTEGRATION_KINDS: [&str; 3] = ["oauth", "api-key", "webhook"];
const TEAMS: [&str; 4] = ["sre", "platform", "data", "finance"];
const PKI_MOUNTS: [&str; 3] = ["internal", "edge", "mtls"];
const GROUPS: [&str; 6] = ["sre", "platform", "security", "data", "finance", "support"];
const FIRST_NAMES: [&str; 14] = [
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory",
    "oscar", "peggy", "trent",
];
const AGENTS: [&str; 10] = [
    "scaivault-python/1.0.0",
    "scaivault-python/1.2.3",
    "scaivault-js/2.1.0",
    "scaivault-dotnet/1.4.2",
    "scaivault-cli/1.1.0",
    "ScaiVault-Webhook/1.0",
    "scaivault-init/1.0",
    "curl/8.5.0",
    "terraform-provider-scaivault/0.9.1",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36",
];
const ERRORS: [&str; 7] = [
    "access_denied",
    "insufficient_scope",
    "secret_not_found",
    "ip_not_allowed",
    "mfa_required",
    "version_not_found",
    "rate_limited",
];
const LEASE_TTLS: [&str; 3] = ["15m", "1h", "8h"];

const TENANT_ZIPF_EXPONENT: f64 = 1.3;
const IDENTITY_ZIPF_EXPONENT: f64 = 1.1;
const PATH_ZIPF_EXPONENT: f64 = 1.05;
/// Service accounts call far more often than people, so each appears this many times.
const SERVICE_ACCOUNT_REPEATS: usize = 3;
const SUBNETS_PER_TENANT: usize = 12;

const USER_FAILURE_RATE: f64 = 0.03;
const OTHER_FAILURE_RATE: f64 = 0.004;
const REQUEST_ID_REUSE_RATE: f64 = 0.03;
const IPV6_RATE: f64 = 0.02;
const READ_VERSION_RATE: f64 = 0.3;
const LATE_DELIVERY_RATE: f64 = 0.05;
const MAX_LATE_DELIVERY_US: i64 = 2_000_000;
const DURATION_LOG_MEAN: f64 = 2.3;
const DURATION_LOG_SIGMA: f64 = 0.8;
const DIURNAL_AMPLITUDE: f64 = 0.15;
/// Keeps the newest event strictly before `end`, as the reference does.
const MAX_TIME_FRACTION: f64 = 0.999_999_999;

const MICROS_PER_DAY: i64 = 86_400 * 1_000_000;
/// 2026-11-01T00:00:00Z, the reference generator's default `--end`.
const DEFAULT_END_SECOND: i64 = 1_793_491_200;
/// Output is handed to the writer in chunks of about this size.
const WRITE_CHUNK_BYTES: usize = 64 * 1024;

/// Options of the reference workload (see docs/workload.md).
#[derive(Debug, Clone)]
pub struct WorkloadOptions {
    /// Number of events to produce.
    pub count: u64,
    /// Seed of every random choice: same seed and options give the same events.
    pub seed: u64,
    /// Time span covered, in days, ending at `end`.
    pub days: f64,
    /// Exclusive newest bound of the timestamps; clamped to after the Unix epoch.
    pub end: jiff::Timestamp,
    /// Number of tenants, clamped to 1..=8.
    pub tenants: usize,
    /// Whether lines carry `tenant_id` (false behaves like the reference's `--no-tenant`).
    pub include_tenant: bool,
}

impl Default for WorkloadOptions {
    fn default() -> Self {
        Self {
            count: 100_000,
            seed: 7,
            days: 90.0,
            end: jiff::Timestamp::constant(DEFAULT_END_SECOND, 0),
            tenants: 4,
            include_tenant: true,
        }
    }
}

/// Deterministic generator: same options, same events, in the same order.
pub struct WorkloadGenerator {
    count: u64,
    produced: u64,
    include_tenant: bool,
    rng: Rng,
    clock: EventClock,
    previous_request_id: Option<u64>,
    tables: WorkloadTables,
}

impl WorkloadGenerator {
    /// Builds the tenant worlds up front, so each event only draws.
    pub fn new(options: WorkloadOptions) -> Self {
        let tenant_count = options.tenants.clamp(1, TENANT_NAMES.len());
        Self {
            count: options.count,
            produced: 0,
            include_tenant: options.include_tenant,
            rng: Rng::with_seed(options.seed),
            clock: EventClock::new(&options),
            previous_request_id: None,
            tables: WorkloadTables::new(options.seed, tenant_count),
        }
    }

    /// Appends the next event as one line of compact JSON plus '\n' to `out`; returns false
    /// once `count` events were produced.
    pub fn write_next(&mut self, out: &mut Vec<u8>) -> std::io::Result<bool> {
        let Some(event) = self.next() else {
            return Ok(false);
        };
        write_line(out, &event, self.include_tenant)?;
        Ok(true)
    }

    /// The tenant ids this workload uses, largest first (e.g. "tnt_acme").
    #[cfg(test)]
    fn tenant_ids(&self) -> Vec<String> {
        self.tables
            .tenants
            .items
            .iter()
            .map(|world| world.tenant_id.clone())
            .collect()
    }
}

impl Iterator for WorkloadGenerator {
    type Item = AuditEvent;

    fn next(&mut self) -> Option<AuditEvent> {
        if self.produced >= self.count {
            return None;
        }
        let timestamp_us = self.clock.timestamp_us(self.produced, &mut self.rng);
        self.produced += 1;
        Some(
            self.tables
                .draw_event(timestamp_us, &mut self.rng, &mut self.previous_request_id),
        )
    }
}

/// One workload line: the API shape, then `tenant_id` unless the workload omits it.
#[derive(Serialize)]
struct WorkloadLine<'a> {
    #[serde(flatten)]
    event: ApiEvent<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant_id: Option<&'a str>,
}

/// Appends `event` as one NDJSON line.
fn write_line(out: &mut Vec<u8>, event: &AuditEvent, include_tenant: bool) -> std::io::Result<()> {
    let line = WorkloadLine {
        event: event.api(),
        tenant_id: include_tenant.then_some(event.tenant_id.as_str()),
    };
    serde_json::to_writer(&mut *out, &line)?;
    out.push(b'\n');
    Ok(())
}

/// Writes the whole workload as NDJSON; returns the number of events written.
pub fn write_ndjson(options: WorkloadOptions, mut out: impl Write) -> std::io::Result<u64> {
    let mut generator = WorkloadGenerator::new(options);
    let mut chunk = Vec::with_capacity(WRITE_CHUNK_BYTES + 1024);
    let mut written = 0;
    while generator.write_next(&mut chunk)? {
        written += 1;
        if chunk.len() >= WRITE_CHUNK_BYTES {
            out.write_all(&chunk)?;
            chunk.clear();
        }
    }
    out.write_all(&chunk)?;
    out.flush()?;
    Ok(written)
}

/// Flags of `scaivault-audit gen` (the reference generator's options).
#[derive(Debug, Clone, clap::Args)]
pub struct GenArgs {
    /// Number of events.
    #[arg(long, default_value_t = 100_000)]
    pub count: u64,
    /// Seed: same seed and options give the same bytes.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Days covered, ending at --end.
    #[arg(long, default_value_t = 90.0)]
    pub days: f64,
    /// Newest timestamp bound (exclusive), RFC 3339.
    #[arg(long, default_value = "2026-11-01T00:00:00Z")]
    pub end: jiff::Timestamp,
    /// Number of tenants (1 to 8).
    #[arg(long, default_value_t = 4)]
    pub tenants: usize,
    /// Omit tenant_id (single-tenant feeds).
    #[arg(long)]
    pub no_tenant: bool,
    /// Output file (default: standard output).
    #[arg(long, short)]
    pub output: Option<std::path::PathBuf>,
}

impl GenArgs {
    /// The workload these flags describe.
    pub fn options(&self) -> WorkloadOptions {
        WorkloadOptions {
            count: self.count,
            seed: self.seed,
            days: self.days,
            end: self.end,
            tenants: self.tenants,
            include_tenant: !self.no_tenant,
        }
    }
}

/// Runs `gen`: writes the workload to the output file or standard output.
pub fn run_gen(args: &GenArgs) -> std::io::Result<()> {
    match &args.output {
        Some(path) => write_ndjson(
            args.options(),
            std::io::BufWriter::new(std::fs::File::create(path)?),
        )?,
        None => write_ndjson(args.options(), std::io::stdout().lock())?,
    };
    Ok(())
}

/// Picks items by cumulative weight (binary search), like the reference's `bisect` picks.
struct Weighted<T> {
    items: Vec<T>,
    cumulative: Vec<f64>,
}

impl<T> Weighted<T> {
    /// `items` must not be empty.
    fn new(items: Vec<T>, weights: impl IntoIterator<Item = f64>) -> Self {
        let cumulative = weights
            .into_iter()
            .scan(0.0, |total, weight| {
                *total += weight;
                Some(*total)
            })
            .collect();
        Self { items, cumulative }
    }

    /// Zipf(`exponent`) popularity: the first item is the most popular.
    fn zipf(items: Vec<T>, exponent: f64) -> Self {
        let weights = (1..=items.len()).map(|rank| 1.0 / (rank as f64).powf(exponent));
        Self::new(items, weights)
    }

    fn pick(&self, rng: &mut Rng) -> &T {
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        let target = rng.f64() * total;
        let index = self.cumulative.partition_point(|&bound| bound < target);
        &self.items[index.min(self.items.len() - 1)]
    }
}

/// Uniform pick; `items` must not be empty.
fn pick<'a, T>(rng: &mut Rng, items: &'a [T]) -> &'a T {
    &items[rng.usize(..items.len())]
}

/// Maps the n-th event to a time: a sorted uniform sample with a diurnal bias, 5% delivered late.
struct EventClock {
    start_us: i64,
    span_us: i64,
    count: f64,
    days: f64,
}

impl EventClock {
    fn new(options: &WorkloadOptions) -> Self {
        // Epoch onwards keeps the id's hex timestamp meaningful; a span of at least 1 µs keeps
        // every timestamp strictly before `end`.
        let end_us = options.end.as_microsecond().max(1);
        let start_us = end_us
            .saturating_sub(requested_span_us(options.days))
            .max(0);
        Self {
            start_us,
            span_us: end_us - start_us,
            count: options.count.max(1) as f64,
            days: options.days,
        }
    }

    fn timestamp_us(&self, index: u64, rng: &mut Rng) -> i64 {
        let fraction = (index as f64 + rng.f64()) / self.count;
        let day_phase = (TAU * fraction * self.days).sin() * DIURNAL_AMPLITUDE / self.days.max(1.0);
        let biased = (fraction + day_phase).clamp(0.0, MAX_TIME_FRACTION);
        let on_time = self.start_us + (biased * self.span_us as f64) as i64;
        let delivered = if rng.f64() < LATE_DELIVERY_RATE {
            on_time - rng.i64(0..MAX_LATE_DELIVERY_US)
        } else {
            on_time
        };
        delivered.max(self.start_us)
    }
}

/// `days` in microseconds; the float-to-int cast saturates, and NaN or non-positive spans
/// become 1 µs.
fn requested_span_us(days: f64) -> i64 {
    ((days * MICROS_PER_DAY as f64) as i64).max(1)
}

/// Who acts: an identity of a tenant world or a system worker.
#[derive(Clone)]
struct Identity {
    identity_type: IdentityType,
    id: String,
}

impl Identity {
    fn new(identity_type: IdentityType, id: String) -> Self {
        Self { identity_type, id }
    }

    fn failure_rate(&self) -> f64 {
        if self.identity_type == IdentityType::User {
            USER_FAILURE_RATE
        } else {
            OTHER_FAILURE_RATE
        }
    }
}

/// Which `extra_data` an action's successful events carry.
#[derive(Clone, Copy)]
enum ActionFamily {
    Read,
    Dynamic,
    Other,
}

/// One row of [`ACTIONS`], with what the draw needs precomputed.
struct WorkloadAction {
    action: Action,
    has_path: bool,
    family: ActionFamily,
    system_actor: Option<Identity>,
}

impl WorkloadAction {
    fn new(action: Action, has_path: bool) -> Self {
        let family = match action {
            Action::Read => ActionFamily::Read,
            Action::DynamicGenerate | Action::DynamicRenew | Action::DynamicRevoke => {
                ActionFamily::Dynamic
            }
            _ => ActionFamily::Other,
        };
        Self {
            action,
            has_path,
            family,
            system_actor: system_actor(action),
        }
    }
}

/// `system:webhook-worker` for `webhook_delivery`, and so on; None for tenant actions.
fn system_actor(action: Action) -> Option<Identity> {
    if !SYSTEM_ACTIONS.contains(&action) {
        return None;
    }
    let name = action.as_str();
    let worker = name.split('_').next().unwrap_or(name);
    Some(Identity::new(
        IdentityType::System,
        format!("system:{worker}-worker"),
    ))
}

/// One tenant's population: who acts, on which paths, from which subnets.
struct TenantWorld {
    tenant_id: String,
    identities: Weighted<Identity>,
    /// Most popular first.
    paths: Weighted<String>,
    /// The second and third octets of `10.x.y.0/24` networks.
    subnets: Vec<[u8; 2]>,
}

impl TenantWorld {
    /// `index` 0 is the largest tenant; later tenants get proportionally smaller worlds.
    fn new(seed: u64, index: usize) -> Self {
        let name = TENANT_NAMES[index];
        let tenant_id = format!("tnt_{name}");
        let mut rng = Rng::with_seed(tenant_seed(seed, &tenant_id));
        let scale = index + 1;
        let users = generate_users(&mut rng, name, (2000 / scale).max(20));
        let service_accounts = generate_service_accounts(&mut rng, (300 / scale).max(10));
        let paths = generate_paths(&mut rng, (20_000 / scale).max(200));
        let subnets = generate_subnets(&mut rng);
        Self {
            tenant_id,
            identities: identity_popularity(service_accounts, users),
            paths: Weighted::zipf(paths, PATH_ZIPF_EXPONENT),
            subnets,
        }
    }
}

/// Stands in for the reference's `Random(f"{seed}/{tenant}")`: FNV-1a of the same string.
fn tenant_seed(seed: u64, tenant_id: &str) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    format!("{seed}/{tenant_id}")
        .bytes()
        .fold(FNV_OFFSET, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
        })
}

fn generate_users(rng: &mut Rng, tenant_name: &str, count: usize) -> Vec<Identity> {
    (0..count)
        .map(|i| {
            let first = pick(rng, &FIRST_NAMES);
            let id = format!("user:{first}.{i}@{tenant_name}.example");
            Identity::new(IdentityType::User, id)
        })
        .collect()
}

fn generate_service_accounts(rng: &mut Rng, count: usize) -> Vec<Identity> {
    (0..count)
        .map(|i| {
            let service = pick(rng, &SERVICES);
            let env = pick(rng, &ENVS);
            let env_abbreviation = env.get(..4).unwrap_or(env);
            let id = format!("sa:{service}-{env_abbreviation}-{i}");
            Identity::new(IdentityType::ServiceAccount, id)
        })
        .collect()
}

/// Service accounts first (repeated), then users, then groups: the order sets the popularity.
fn identity_popularity(
    service_accounts: Vec<Identity>,
    users: Vec<Identity>,
) -> Weighted<Identity> {
    let groups = GROUPS
        .iter()
        .map(|team| Identity::new(IdentityType::Group, format!("group:{team}")));
    let ranked: Vec<Identity> = std::iter::repeat_n(&service_accounts, SERVICE_ACCOUNT_REPEATS)
        .flatten()
        .cloned()
        .chain(users)
        .chain(groups)
        .collect();
    Weighted::zipf(ranked, IDENTITY_ZIPF_EXPONENT)
}

/// `count` distinct paths in a seeded random popularity order.
fn generate_paths(rng: &mut Rng, count: usize) -> Vec<String> {
    // A BTreeSet both deduplicates and gives a deterministic order before the shuffle.
    let mut distinct = std::collections::BTreeSet::new();
    while distinct.len() < count {
        distinct.insert(random_path(rng));
    }
    let mut paths: Vec<String> = distinct.into_iter().collect();
    rng.shuffle(&mut paths);
    paths
}

fn random_path(rng: &mut Rng) -> String {
    let tree = rng.f64();
    if tree < 0.6 {
        environment_path(rng)
    } else if tree < 0.8 {
        integration_path(rng)
    } else if tree < 0.93 {
        team_path(rng)
    } else {
        pki_path(rng)
    }
}

fn environment_path(rng: &mut Rng) -> String {
    let env = pick(rng, &ENVS);
    let service = pick(rng, &SERVICES);
    let secret = pick(rng, &SECRETS);
    let mut path = format!("environments/{env}/{service}/{secret}");
    if rng.bool() {
        path.push_str(&format!("-{}", rng.u32(..1000)));
    }
    path
}

fn integration_path(rng: &mut Rng) -> String {
    let vendor = pick(rng, &VENDORS);
    let kind = pick(rng, &INTEGRATION_KINDS);
    format!("integrations/{vendor}/{kind}-{}", rng.u32(..200))
}

fn team_path(rng: &mut Rng) -> String {
    let team = pick(rng, &TEAMS);
    let secret = pick(rng, &SECRETS);
    format!("teams/{team}/{secret}/{}", rng.u32(..500))
}

fn pki_path(rng: &mut Rng) -> String {
    let mount = pick(rng, &PKI_MOUNTS);
    format!("pki/{mount}/certs/{}", rng.u32(..5000))
}

fn generate_subnets(rng: &mut Rng) -> Vec<[u8; 2]> {
    (0..SUBNETS_PER_TENANT)
        .map(|_| {
            let second = rng.u8(..);
            let third = rng.u8(..);
            [second, third]
        })
        .collect()
}

/// The read-only tables every event draws from.
struct WorkloadTables {
    tenants: Weighted<TenantWorld>,
    actions: Weighted<WorkloadAction>,
}

impl WorkloadTables {
    fn new(seed: u64, tenant_count: usize) -> Self {
        let worlds = (0..tenant_count)
            .map(|index| TenantWorld::new(seed, index))
            .collect();
        let actions = ACTIONS
            .iter()
            .map(|&(action, _, has_path)| WorkloadAction::new(action, has_path))
            .collect();
        let action_weights = ACTIONS.iter().map(|&(_, weight, _)| f64::from(weight));
        Self {
            tenants: Weighted::zipf(worlds, TENANT_ZIPF_EXPONENT),
            actions: Weighted::new(actions, action_weights),
        }
    }

    /// One event. The draws happen in a fixed order (the same as the earlier hand-written
    /// encoder's): changing it changes every workload.
    fn draw_event(
        &self,
        timestamp_us: i64,
        rng: &mut Rng,
        previous_request_id: &mut Option<u64>,
    ) -> AuditEvent {
        let world = self.tenants.pick(rng);
        let action = self.actions.pick(rng);
        let identity = match &action.system_actor {
            Some(system) => system,
            None => world.identities.pick(rng),
        };
        let success = rng.f64() >= identity.failure_rate();
        let request_id = next_request_id(rng, previous_request_id);
        let source_ip = draw_source_ip(rng, world);
        let extra_data = draw_extra_data(rng, action.family, success);
        let id_random_bits = rng.u64(..) >> 12;
        let secret_path = action.has_path.then(|| world.paths.pick(rng).clone());
        let user_agent = pick(rng, &AGENTS);
        let duration_ms = draw_duration_ms(rng);
        AuditEvent {
            // A timestamp is never negative here (see EventClock::new).
            id: format!(
                "log_{:013x}{id_random_bits:013x}",
                timestamp_us.unsigned_abs()
            ),
            tenant_id: world.tenant_id.clone(),
            timestamp_us,
            action: action.action,
            secret_path,
            identity_type: identity.identity_type,
            identity_id: identity.id.clone(),
            source_ip: Some(source_ip),
            user_agent: Some((*user_agent).to_string()),
            success,
            duration_ms: Some(duration_ms),
            request_id: Some(format!("req_{request_id:016x}")),
            extra_data,
        }
    }
}

/// An error code on failure; a version on 30% of reads; a lease on dynamic secrets.
fn draw_extra_data(rng: &mut Rng, family: ActionFamily, success: bool) -> Map<String, Value> {
    let mut extra = Map::new();
    if !success {
        extra.insert("error_code".into(), (*pick(rng, &ERRORS)).into());
        return extra;
    }
    match family {
        ActionFamily::Read if rng.f64() < READ_VERSION_RATE => {
            extra.insert("version".into(), rng.u64(1..20).into());
        }
        ActionFamily::Dynamic => {
            let lease_id = rng.u64(..) >> 16;
            extra.insert("lease_id".into(), format!("lease_{lease_id:012x}").into());
            extra.insert("ttl".into(), (*pick(rng, &LEASE_TTLS)).into());
        }
        _ => {}
    }
    extra
}

/// Retries and fan-out share a request id, so a few events reuse the previous one.
fn next_request_id(rng: &mut Rng, previous: &mut Option<u64>) -> u64 {
    let request_id = match *previous {
        Some(id) if rng.f64() < REQUEST_ID_REUSE_RATE => id,
        _ => rng.u64(..),
    };
    *previous = Some(request_id);
    request_id
}

/// 98% from one of the tenant's IPv4 subnets, 2% from `fd00:{high}::{low}`.
fn draw_source_ip(rng: &mut Rng, world: &TenantWorld) -> IpAddr {
    if rng.f64() < IPV6_RATE {
        let high = rng.u16(..);
        let low = rng.u16(..);
        IpAddr::V6(Ipv6Addr::new(0xfd00, high, 0, 0, 0, 0, 0, low))
    } else {
        let [second, third] = *pick(rng, &world.subnets);
        IpAddr::V4(Ipv4Addr::new(10, second, third, rng.u8(1..255)))
    }
}

fn draw_duration_ms(rng: &mut Rng) -> u64 {
    let log_duration = DURATION_LOG_MEAN + DURATION_LOG_SIGMA * standard_normal(rng);
    (log_duration.exp() as u64).max(1)
}

/// Box-Muller transform.
fn standard_normal(rng: &mut Rng) -> f64 {
    // 1 - u lies in (0, 1], so the logarithm stays finite.
    let radius = (-2.0 * (1.0 - rng.f64()).ln()).sqrt();
    radius * (TAU * rng.f64()).cos()
}

#[cfg(test)]
mod tests {
    use super::*;
    use scaivault_audit::event::{API_FIELDS, TENANT_FIELD, TenantRule};
    use serde_json::Value;
    use std::collections::HashMap;
    use std::sync::OnceLock;

    const PATHLESS_ACTIONS: [&str; 7] = [
        "policy_create",
        "policy_update",
        "policy_delete",
        "policy_bind",
        "policy_unbind",
        "identity_sync",
        "export_created",
    ];
    const SAMPLE_SIZE: u64 = 50_000;

    /// The SPEC §2 fields in order, then `tenant_id` when the workload includes it.
    fn expected_field_order(include_tenant: bool) -> impl Iterator<Item = &'static str> {
        API_FIELDS
            .into_iter()
            .chain(include_tenant.then_some(TENANT_FIELD))
    }

    fn options(count: u64) -> WorkloadOptions {
        WorkloadOptions {
            count,
            ..WorkloadOptions::default()
        }
    }

    fn generate(options: WorkloadOptions) -> Vec<u8> {
        let mut out = Vec::new();
        let mut generator = WorkloadGenerator::new(options);
        while generator.write_next(&mut out).unwrap() {}
        out
    }

    fn parse_lines(bytes: &[u8]) -> Vec<Value> {
        std::str::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// One default-shaped sample shared by the distribution tests (generating it is the slow part).
    fn sample() -> &'static [Value] {
        static SAMPLE: OnceLock<Vec<Value>> = OnceLock::new();
        SAMPLE.get_or_init(|| parse_lines(&generate(options(SAMPLE_SIZE))))
    }

    fn share(events: &[Value], predicate: impl Fn(&Value) -> bool) -> f64 {
        events.iter().filter(|event| predicate(event)).count() as f64 / events.len() as f64
    }

    fn timestamp_us(event: &Value) -> i64 {
        let text = event["timestamp"].as_str().unwrap();
        text.parse::<jiff::Timestamp>().unwrap().as_microsecond()
    }

    fn is_valid_secret_path(path: &str) -> bool {
        let allowed = |c: char| matches!(c, 'a'..='z' | '0'..='9' | '-' | '_' | '/');
        !path.is_empty()
            && path.len() <= 512
            && path.chars().all(allowed)
            && !path.starts_with('/')
            && !path.ends_with('/')
            && !path.contains("//")
            && path.split('/').count() <= 10
    }

    #[test]
    fn same_options_produce_identical_bytes() {
        let first = generate(options(2_000));
        let second = generate(options(2_000));
        assert!(!first.is_empty());
        assert_eq!(first, second);
    }

    /// `gen --count 20000 --seed 7` (and `--count 5000 --seed 11 --no-tenant`), byte for byte as
    /// the generator wrote them before it moved into the binary: a refactoring must not change
    /// the workload that benchmark figures were measured on.
    #[test]
    fn workloads_are_pinned() {
        use sha2::{Digest, Sha256};
        let seven = generate(options(20_000));
        assert_eq!(
            hex::encode(Sha256::digest(&seven)),
            "35ce18234fc0943b19a4d39fd296c56ba0b663a9d57f6f54c5e64653bfd16d5b"
        );
        let eleven = generate(WorkloadOptions {
            seed: 11,
            include_tenant: false,
            ..options(5_000)
        });
        assert_eq!(
            hex::encode(Sha256::digest(&eleven)),
            "ae8ad3c2bb45696ad9bae21660dbcc82c27c1e466d35fd21b0c90295178daa33"
        );
    }

    #[test]
    fn different_seed_produces_different_bytes() {
        let seven = generate(options(2_000));
        let eight = generate(WorkloadOptions {
            seed: 8,
            ..options(2_000)
        });
        assert_ne!(seven, eight);
    }

    #[test]
    fn every_line_is_a_complete_valid_event() {
        for include_tenant in [true, false] {
            let opts = WorkloadOptions {
                include_tenant,
                ..options(5_000)
            };
            let end_us = opts.end.as_microsecond();
            let start_us = end_us - requested_span_us(opts.days);
            let tenant_ids = WorkloadGenerator::new(opts.clone()).tenant_ids();
            for event in parse_lines(&generate(opts)) {
                let object = event.as_object().unwrap();
                let expected_fields = if include_tenant { 13 } else { 12 };
                assert_eq!(object.len(), expected_fields, "{event}");
                for field in expected_field_order(include_tenant) {
                    assert!(object.contains_key(field), "{field} missing in {event}");
                }
                let action = event["action"].as_str().unwrap();
                // Ingest's own validation accepts every line.
                let rule = if include_tenant {
                    TenantRule::Required
                } else {
                    TenantRule::Bound("tnt_acme")
                };
                scaivault_audit::event::validate(event.clone(), rule).unwrap();
                match event["secret_path"].as_str() {
                    Some(path) => {
                        assert!(!PATHLESS_ACTIONS.contains(&action), "{event}");
                        assert!(is_valid_secret_path(path), "{path}");
                    }
                    None => {
                        assert!(event["secret_path"].is_null());
                        assert!(PATHLESS_ACTIONS.contains(&action), "{event}");
                    }
                }
                let at = timestamp_us(&event);
                assert!((start_us..end_us).contains(&at), "{event}");
                assert!(event["success"].is_boolean());
                assert!(event["duration_ms"].as_u64().unwrap() >= 1);
                assert!(event["extra_data"].is_object());
                if include_tenant {
                    let tenant = event["tenant_id"].as_str().unwrap();
                    assert!(tenant_ids.iter().any(|id| id == tenant), "{tenant}");
                }
            }
        }
    }

    #[test]
    fn fields_appear_in_reference_order() {
        let bytes = generate(options(200));
        for line in std::str::from_utf8(&bytes).unwrap().lines() {
            let positions: Vec<usize> = expected_field_order(true)
                .map(|field| line.find(&format!("\"{field}\":")).unwrap())
                .collect();
            assert!(positions.windows(2).all(|pair| pair[0] < pair[1]), "{line}");
        }
    }

    #[test]
    fn timestamps_and_ids_have_the_reference_format() {
        for event in parse_lines(&generate(options(2_000))) {
            let timestamp = event["timestamp"].as_str().unwrap();
            assert_eq!(timestamp.len(), 27, "{timestamp}");
            assert_eq!(&timestamp[19..20], ".");
            assert!(timestamp.ends_with('Z'));
            let id = event["id"].as_str().unwrap();
            let hex = id.strip_prefix("log_").unwrap();
            assert_eq!(hex.len(), 26, "{id}");
            assert!(
                hex.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            );
            let id_micros = i64::from_str_radix(&hex[..13], 16).unwrap();
            assert_eq!(id_micros, timestamp_us(&event));
            let request_id = event["request_id"].as_str().unwrap();
            assert_eq!(request_id.len(), "req_".len() + 16, "{request_id}");
        }
    }

    #[test]
    fn system_actions_come_from_system_workers() {
        for event in sample() {
            let action = event["action"].as_str().unwrap();
            let is_system = event["identity_type"] == "system";
            let system_action = SYSTEM_ACTIONS
                .iter()
                .any(|system| system.as_str() == action);
            assert_eq!(system_action, is_system, "{event}");
            if is_system {
                let worker = action.split('_').next().unwrap();
                assert_eq!(event["identity_id"], format!("system:{worker}-worker"));
            }
        }
    }

    #[test]
    fn failures_carry_an_error_code_and_leases_a_ttl() {
        for event in sample() {
            let extra = &event["extra_data"];
            let failed = event["success"] == false;
            assert_eq!(failed, extra.get("error_code").is_some(), "{event}");
            let action = event["action"].as_str().unwrap();
            if !failed && action.starts_with("dynamic_") {
                assert!(extra["lease_id"].as_str().unwrap().starts_with("lease_"));
                assert!(LEASE_TTLS.contains(&extra["ttl"].as_str().unwrap()));
            }
        }
    }

    #[test]
    fn read_share_is_about_seventy_percent() {
        let reads = share(sample(), |event| event["action"] == "read");
        assert!((0.67..0.73).contains(&reads), "read share {reads}");
    }

    #[test]
    fn largest_tenant_comes_first_and_holds_about_half() {
        let mut per_tenant: HashMap<&str, usize> = HashMap::new();
        for event in sample() {
            *per_tenant
                .entry(event["tenant_id"].as_str().unwrap())
                .or_default() += 1;
        }
        let ids = WorkloadGenerator::new(options(0)).tenant_ids();
        assert_eq!(
            ids,
            ["tnt_acme", "tnt_globex", "tnt_initech", "tnt_umbrella"]
        );
        let counts: Vec<usize> = ids.iter().map(|id| per_tenant[id.as_str()]).collect();
        assert!(
            counts.windows(2).all(|pair| pair[0] > pair[1]),
            "{counts:?}"
        );
        let largest = counts[0] as f64 / SAMPLE_SIZE as f64;
        assert!(
            (0.45..0.65).contains(&largest),
            "largest tenant share {largest}"
        );
    }

    #[test]
    fn users_fail_more_often_than_others() {
        let users: Vec<Value> = sample()
            .iter()
            .filter(|event| event["identity_type"] == "user")
            .cloned()
            .collect();
        let others: Vec<Value> = sample()
            .iter()
            .filter(|event| event["identity_type"] != "user")
            .cloned()
            .collect();
        let user_failures = share(&users, |event| event["success"] == false);
        let other_failures = share(&others, |event| event["success"] == false);
        assert!(
            (0.015..0.045).contains(&user_failures),
            "user failures {user_failures}"
        );
        assert!(other_failures < 0.01, "other failures {other_failures}");
    }

    #[test]
    fn about_two_percent_of_source_ips_are_ipv6() {
        let ipv6 = share(sample(), |event| {
            let ip = event["source_ip"].as_str().unwrap();
            ip.parse::<std::net::IpAddr>().unwrap().is_ipv6()
        });
        assert!((0.01..0.03).contains(&ipv6), "ipv6 share {ipv6}");
    }

    #[test]
    fn about_three_percent_reuse_the_previous_request_id() {
        let events = sample();
        let reused = events
            .windows(2)
            .filter(|pair| pair[0]["request_id"] == pair[1]["request_id"])
            .count() as f64
            / events.len() as f64;
        assert!(
            (0.02..0.04).contains(&reused),
            "reused request ids {reused}"
        );
    }

    #[test]
    fn durations_follow_the_reference_lognormal() {
        let mut durations: Vec<u64> = sample()
            .iter()
            .map(|event| event["duration_ms"].as_u64().unwrap())
            .collect();
        durations.sort_unstable();
        // The median of lognormal(2.3, 0.8) is e^2.3 ≈ 9.97 ms.
        let median = durations[durations.len() / 2];
        assert!((9..=10).contains(&median), "median duration {median}");
    }

    #[test]
    fn about_five_percent_arrive_out_of_order() {
        // Late deliveries only overtake neighbours closer than 2 s, so pack 50,000 events
        // into about an hour.
        let events = parse_lines(&generate(WorkloadOptions {
            days: 0.05,
            ..options(SAMPLE_SIZE)
        }));
        let overtaken = events
            .windows(2)
            .filter(|pair| timestamp_us(&pair[1]) < timestamp_us(&pair[0]))
            .count() as f64
            / events.len() as f64;
        assert!(
            (0.04..0.06).contains(&overtaken),
            "out of order {overtaken}"
        );
    }

    #[test]
    fn default_span_stays_near_time_order() {
        let events = sample();
        let first = timestamp_us(&events[0]);
        let last = timestamp_us(&events[events.len() - 1]);
        let span = requested_span_us(90.0);
        assert!(
            last - first > span * 9 / 10,
            "covers only {} µs",
            last - first
        );
        let regressions = events
            .windows(2)
            .filter(|pair| timestamp_us(&pair[1]) + MAX_LATE_DELIVERY_US < timestamp_us(&pair[0]))
            .count();
        assert_eq!(regressions, 0);
    }

    #[test]
    fn tenant_count_is_clamped_to_known_names() {
        let none = WorkloadGenerator::new(WorkloadOptions {
            tenants: 0,
            ..options(0)
        });
        assert_eq!(none.tenant_ids(), ["tnt_acme"]);
        let many = WorkloadGenerator::new(WorkloadOptions {
            tenants: 20,
            ..options(0)
        });
        assert_eq!(many.tenant_ids().len(), TENANT_NAMES.len());
        assert_eq!(many.tenant_ids()[7], "tnt_wonka");
    }

    #[test]
    fn lines_are_the_api_shape_then_the_tenant() {
        let mut generator = WorkloadGenerator::new(options(50));
        let events: Vec<AuditEvent> = generator.by_ref().collect();
        let bytes = generate(options(50));
        let lines: Vec<&str> = std::str::from_utf8(&bytes).unwrap().lines().collect();
        for (event, line) in events.iter().zip(&lines) {
            let api = serde_json::to_string(&event.api()).unwrap();
            let tenant = serde_json::to_string(&event.tenant_id).unwrap();
            let expected = format!("{},\"tenant_id\":{tenant}}}", &api[..api.len() - 1]);
            assert_eq!(*line, expected);
        }
        assert_eq!(events.len(), lines.len());
    }

    #[test]
    fn write_ndjson_writes_exactly_count_lines() {
        for count in [0, 1, 3_000] {
            let mut out = Vec::new();
            let written = write_ndjson(options(count), &mut out).unwrap();
            assert_eq!(written, count);
            assert_eq!(out.iter().filter(|&&b| b == b'\n').count() as u64, count);
            assert!(out.is_empty() || out.ends_with(b"\n"));
            assert_eq!(out, generate(options(count)));
        }
    }
}
