//! Native port of the reference workload generator (`bench/gen_events.py`, see WORKLOAD.md).
//!
//! The output follows the reference distribution but not its bytes: the random number generator
//! differs. It is deterministic per [`WorkloadOptions`], so benchmark runs compare.

use std::f64::consts::TAU;
use std::io::Write;

use fastrand::Rng;

use crate::timestamp::civil_from_days;

/// (action, weight, has a secret path), as in the reference generator.
const ACTIONS: [(&str, u32, bool); 22] = [
    ("read", 700, true),
    ("list", 100, true),
    ("write", 60, true),
    ("rotate", 20, true),
    ("delete", 10, true),
    ("dynamic_generate", 30, true),
    ("dynamic_renew", 20, true),
    ("dynamic_revoke", 10, true),
    ("pki_issue", 10, true),
    ("pki_sign", 5, true),
    ("pki_revoke", 2, true),
    ("pki_ca_create", 1, true),
    ("policy_create", 3, false),
    ("policy_update", 3, false),
    ("policy_delete", 1, false),
    ("policy_bind", 2, false),
    ("policy_unbind", 1, false),
    ("webhook_delivery", 10, true),
    ("subscription_event", 5, true),
    ("federation_sync", 2, true),
    ("identity_sync", 2, false),
    ("export_created", 1, false),
];
/// Actions performed by `system:{first word}-worker` instead of a tenant identity.
const SYSTEM_ACTIONS: [&str; 4] = [
    "webhook_delivery",
    "subscription_event",
    "federation_sync",
    "identity_sync",
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

const MICROS_PER_SECOND: i64 = 1_000_000;
const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;
/// 2026-11-01T00:00:00Z, the reference generator's default `--end`.
const DEFAULT_END_SECOND: i64 = 1_793_491_200;
/// Output is handed to the writer in chunks of about this size.
const WRITE_CHUNK_BYTES: usize = 64 * 1024;

/// Options of the reference workload (see WORKLOAD.md).
#[derive(Debug, Clone)]
pub struct WorkloadOptions {
    /// Number of events to produce.
    pub count: u64,
    /// Seed of every random choice: same seed and options give the same bytes.
    pub seed: u64,
    /// Time span covered, in days, ending at `end`.
    pub days: f64,
    /// Exclusive newest bound of the timestamps; clamped to after the Unix epoch.
    pub end: jiff::Timestamp,
    /// Number of tenants, clamped to 1..=8.
    pub tenants: usize,
    /// Whether events carry `tenant_id` (false behaves like the reference's `--no-tenant`).
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

/// Deterministic generator: same options -> same bytes.
pub struct WorkloadGenerator {
    count: u64,
    produced: u64,
    include_tenant: bool,
    rng: Rng,
    clock: EventClock,
    timestamp_format: TimestampFormat,
    previous_request_id: Option<u64>,
    tables: WorkloadTables,
}

impl WorkloadGenerator {
    /// Builds the tenant worlds up front, so `write_next` only draws and formats.
    pub fn new(options: WorkloadOptions) -> Self {
        let tenant_count = options.tenants.clamp(1, TENANT_NAMES.len());
        Self {
            count: options.count,
            produced: 0,
            include_tenant: options.include_tenant,
            rng: Rng::with_seed(options.seed),
            clock: EventClock::new(&options),
            timestamp_format: TimestampFormat::default(),
            previous_request_id: None,
            tables: WorkloadTables::new(options.seed, tenant_count),
        }
    }

    /// Appends the next event as one line of compact JSON plus '\n' to `out`; returns false once `count` events were produced.
    pub fn write_next(&mut self, out: &mut Vec<u8>) -> bool {
        if self.produced >= self.count {
            return false;
        }
        let timestamp_us = self.clock.timestamp_us(self.produced, &mut self.rng);
        self.produced += 1;
        let event =
            self.tables
                .draw_event(timestamp_us, &mut self.rng, &mut self.previous_request_id);
        write_event(out, &event, &mut self.timestamp_format, self.include_tenant);
        true
    }

    /// The tenant ids this workload uses, largest first (e.g. "tnt_acme").
    pub fn tenant_ids(&self) -> Vec<String> {
        self.tables
            .tenants
            .items
            .iter()
            .map(|world| world.tenant_id.clone())
            .collect()
    }
}

/// Writes the whole workload as NDJSON; returns the number of events written.
pub fn write_ndjson(options: WorkloadOptions, mut out: impl Write) -> std::io::Result<u64> {
    let mut generator = WorkloadGenerator::new(options);
    let mut chunk = Vec::with_capacity(WRITE_CHUNK_BYTES + 1024);
    let mut written = 0;
    while generator.write_next(&mut chunk) {
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

/// [`pick`] for owned strings, so callers get a plain `&str`.
fn pick_str<'a>(rng: &mut Rng, items: &'a [Box<str>]) -> &'a str {
    pick::<Box<str>>(rng, items)
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

/// Everything drawn for one event; strings are already JSON-encoded (quoted and escaped).
struct Event<'a> {
    timestamp_us: i64,
    id_random_bits: u64,
    action: &'a Action,
    secret_path: Option<&'a str>,
    identity: &'a Identity,
    source_ip: SourceIp<'a>,
    user_agent: &'a str,
    success: bool,
    duration_ms: u64,
    request_id: u64,
    extra_data: ExtraData<'a>,
    tenant_id: &'a str,
}

enum SourceIp<'a> {
    /// `subnet` is three dotted decimal octets.
    V4 {
        subnet: &'a str,
        host: u8,
    },
    V6 {
        high: u16,
        low: u16,
    },
}

enum ExtraData<'a> {
    Empty,
    ErrorCode(&'a str),
    Version(u64),
    Lease { id: u64, ttl: &'a str },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum IdentityType {
    User,
    ServiceAccount,
    Group,
    System,
}

impl IdentityType {
    fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::ServiceAccount => "service_account",
            Self::Group => "group",
            Self::System => "system",
        }
    }

    fn failure_rate(self) -> f64 {
        if self == Self::User {
            USER_FAILURE_RATE
        } else {
            OTHER_FAILURE_RATE
        }
    }
}

#[derive(Clone)]
struct Identity {
    identity_type: IdentityType,
    id_json: Box<str>,
}

impl Identity {
    fn new(identity_type: IdentityType, id: &str) -> Self {
        Self {
            identity_type,
            id_json: json_string(id),
        }
    }
}

#[derive(Clone, Copy)]
enum ActionFamily {
    Read,
    Dynamic,
    Other,
}

struct Action {
    name_json: Box<str>,
    has_path: bool,
    family: ActionFamily,
    system_actor: Option<Identity>,
}

impl Action {
    fn new(name: &str, has_path: bool) -> Self {
        let family = if name == "read" {
            ActionFamily::Read
        } else if name.starts_with("dynamic_") {
            ActionFamily::Dynamic
        } else {
            ActionFamily::Other
        };
        Self {
            name_json: json_string(name),
            has_path,
            family,
            system_actor: system_actor(name),
        }
    }
}

/// `system:webhook-worker` for `webhook_delivery`, and so on; None for tenant actions.
fn system_actor(action: &str) -> Option<Identity> {
    if !SYSTEM_ACTIONS.contains(&action) {
        return None;
    }
    let worker = action.split('_').next().unwrap_or(action);
    Some(Identity::new(
        IdentityType::System,
        &format!("system:{worker}-worker"),
    ))
}

/// One tenant's population: who acts, on which paths, from which subnets.
struct TenantWorld {
    tenant_id: String,
    tenant_id_json: Box<str>,
    identities: Weighted<Identity>,
    /// JSON-encoded paths, most popular first.
    paths: Weighted<Box<str>>,
    subnets: Vec<Box<str>>,
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
            tenant_id_json: json_string(&tenant_id),
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
            Identity::new(IdentityType::User, &id)
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
            Identity::new(IdentityType::ServiceAccount, &id)
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
        .map(|team| Identity::new(IdentityType::Group, &format!("group:{team}")));
    let ranked: Vec<Identity> = std::iter::repeat_n(&service_accounts, SERVICE_ACCOUNT_REPEATS)
        .flatten()
        .cloned()
        .chain(users)
        .chain(groups)
        .collect();
    Weighted::zipf(ranked, IDENTITY_ZIPF_EXPONENT)
}

/// `count` distinct paths, JSON-encoded, in a seeded random popularity order.
fn generate_paths(rng: &mut Rng, count: usize) -> Vec<Box<str>> {
    // A BTreeSet both deduplicates and gives a deterministic order before the shuffle.
    let mut distinct = std::collections::BTreeSet::new();
    while distinct.len() < count {
        distinct.insert(random_path(rng));
    }
    let mut paths: Vec<Box<str>> = distinct.iter().map(|path| json_string(path)).collect();
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

fn generate_subnets(rng: &mut Rng) -> Vec<Box<str>> {
    (0..SUBNETS_PER_TENANT)
        .map(|_| format!("10.{}.{}", rng.u8(..), rng.u8(..)).into_boxed_str())
        .collect()
}

/// The read-only tables every event draws from.
struct WorkloadTables {
    tenants: Weighted<TenantWorld>,
    actions: Weighted<Action>,
    user_agents: Vec<Box<str>>,
    error_codes: Vec<Box<str>>,
    lease_ttls: Vec<Box<str>>,
}

impl WorkloadTables {
    fn new(seed: u64, tenant_count: usize) -> Self {
        let worlds = (0..tenant_count)
            .map(|index| TenantWorld::new(seed, index))
            .collect();
        let actions = ACTIONS
            .iter()
            .map(|&(name, _, has_path)| Action::new(name, has_path))
            .collect();
        let action_weights = ACTIONS.iter().map(|&(_, weight, _)| f64::from(weight));
        Self {
            tenants: Weighted::zipf(worlds, TENANT_ZIPF_EXPONENT),
            actions: Weighted::new(actions, action_weights),
            user_agents: json_strings(&AGENTS),
            error_codes: json_strings(&ERRORS),
            lease_ttls: json_strings(&LEASE_TTLS),
        }
    }

    fn draw_event(
        &self,
        timestamp_us: i64,
        rng: &mut Rng,
        previous_request_id: &mut Option<u64>,
    ) -> Event<'_> {
        let world = self.tenants.pick(rng);
        let action = self.actions.pick(rng);
        let identity = match &action.system_actor {
            Some(system) => system,
            None => world.identities.pick(rng),
        };
        let success = rng.f64() >= identity.identity_type.failure_rate();
        let request_id = next_request_id(rng, previous_request_id);
        let source_ip = draw_source_ip(rng, world);
        let extra_data = self.draw_extra_data(rng, action.family, success);
        Event {
            timestamp_us,
            id_random_bits: rng.u64(..) >> 12,
            action,
            secret_path: action.has_path.then(|| &**world.paths.pick(rng)),
            identity,
            source_ip,
            user_agent: pick_str(rng, &self.user_agents),
            success,
            duration_ms: draw_duration_ms(rng),
            request_id,
            extra_data,
            tenant_id: &world.tenant_id_json,
        }
    }

    fn draw_extra_data(&self, rng: &mut Rng, family: ActionFamily, success: bool) -> ExtraData<'_> {
        if !success {
            return ExtraData::ErrorCode(pick_str(rng, &self.error_codes));
        }
        match family {
            ActionFamily::Read if rng.f64() < READ_VERSION_RATE => {
                ExtraData::Version(rng.u64(1..20))
            }
            ActionFamily::Dynamic => ExtraData::Lease {
                id: rng.u64(..) >> 16,
                ttl: pick_str(rng, &self.lease_ttls),
            },
            _ => ExtraData::Empty,
        }
    }
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

fn draw_source_ip<'a>(rng: &mut Rng, world: &'a TenantWorld) -> SourceIp<'a> {
    if rng.f64() < IPV6_RATE {
        SourceIp::V6 {
            high: rng.u16(..),
            low: rng.u16(..),
        }
    } else {
        SourceIp::V4 {
            subnet: pick_str(rng, &world.subnets),
            host: rng.u8(1..255),
        }
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

fn write_event(
    out: &mut Vec<u8>,
    event: &Event<'_>,
    timestamp_format: &mut TimestampFormat,
    include_tenant: bool,
) {
    out.extend_from_slice(b"{\"id\":\"log_");
    // A timestamp is never negative here (see EventClock::new).
    push_hex(out, event.timestamp_us.unsigned_abs(), 13);
    push_hex(out, event.id_random_bits, 13);
    out.extend_from_slice(b"\",\"timestamp\":\"");
    timestamp_format.push(out, event.timestamp_us);
    out.extend_from_slice(b"\",\"action\":");
    out.extend_from_slice(event.action.name_json.as_bytes());
    out.extend_from_slice(b",\"secret_path\":");
    out.extend_from_slice(event.secret_path.unwrap_or("null").as_bytes());
    out.extend_from_slice(b",\"identity_type\":\"");
    out.extend_from_slice(event.identity.identity_type.as_str().as_bytes());
    out.extend_from_slice(b"\",\"identity_id\":");
    out.extend_from_slice(event.identity.id_json.as_bytes());
    out.extend_from_slice(b",\"source_ip\":\"");
    push_source_ip(out, &event.source_ip);
    out.extend_from_slice(b"\",\"user_agent\":");
    out.extend_from_slice(event.user_agent.as_bytes());
    out.extend_from_slice(b",\"success\":");
    out.extend_from_slice(if event.success { b"true" } else { b"false" });
    out.extend_from_slice(b",\"duration_ms\":");
    push_decimal(out, event.duration_ms);
    out.extend_from_slice(b",\"request_id\":\"req_");
    push_hex(out, event.request_id, 16);
    out.extend_from_slice(b"\",\"extra_data\":");
    push_extra_data(out, &event.extra_data);
    if include_tenant {
        out.extend_from_slice(b",\"tenant_id\":");
        out.extend_from_slice(event.tenant_id.as_bytes());
    }
    out.extend_from_slice(b"}\n");
}

fn push_source_ip(out: &mut Vec<u8>, source_ip: &SourceIp<'_>) {
    match *source_ip {
        SourceIp::V4 { subnet, host } => {
            out.extend_from_slice(subnet.as_bytes());
            out.push(b'.');
            push_decimal(out, u64::from(host));
        }
        SourceIp::V6 { high, low } => {
            out.extend_from_slice(b"fd00:");
            push_hex(out, u64::from(high), 1);
            out.extend_from_slice(b"::");
            push_hex(out, u64::from(low), 1);
        }
    }
}

fn push_extra_data(out: &mut Vec<u8>, extra_data: &ExtraData<'_>) {
    match *extra_data {
        ExtraData::Empty => out.extend_from_slice(b"{}"),
        ExtraData::ErrorCode(code) => {
            out.extend_from_slice(b"{\"error_code\":");
            out.extend_from_slice(code.as_bytes());
            out.push(b'}');
        }
        ExtraData::Version(version) => {
            out.extend_from_slice(b"{\"version\":");
            push_decimal(out, version);
            out.push(b'}');
        }
        ExtraData::Lease { id, ttl } => {
            out.extend_from_slice(b"{\"lease_id\":\"lease_");
            push_hex(out, id, 12);
            out.extend_from_slice(b"\",\"ttl\":");
            out.extend_from_slice(ttl.as_bytes());
            out.push(b'}');
        }
    }
}

/// RFC 3339 UTC with microseconds; events come near time order, so the date part is cached.
#[derive(Default)]
struct TimestampFormat {
    cached_day: Option<i64>,
    /// `YYYY-MM-DDT` of `cached_day`.
    date_prefix: Vec<u8>,
}

impl TimestampFormat {
    /// `timestamp_us` must lie between the Unix epoch and year 9999.
    fn push(&mut self, out: &mut Vec<u8>, timestamp_us: i64) {
        let day = timestamp_us.div_euclid(MICROS_PER_DAY);
        if self.cached_day != Some(day) {
            self.date_prefix.clear();
            push_date(&mut self.date_prefix, day);
            self.date_prefix.push(b'T');
            self.cached_day = Some(day);
        }
        out.extend_from_slice(&self.date_prefix);
        push_time_of_day(out, timestamp_us.rem_euclid(MICROS_PER_DAY));
    }
}

fn push_date(out: &mut Vec<u8>, days_since_epoch: i64) {
    let (year, month, day) = civil_from_days(days_since_epoch);
    push_padded_decimal(out, year.unsigned_abs(), 4);
    out.push(b'-');
    push_padded_decimal(out, month.unsigned_abs(), 2);
    out.push(b'-');
    push_padded_decimal(out, day.unsigned_abs(), 2);
}

fn push_time_of_day(out: &mut Vec<u8>, micros_of_day: i64) {
    let micros = micros_of_day.unsigned_abs();
    let seconds = micros / MICROS_PER_SECOND.unsigned_abs();
    push_padded_decimal(out, seconds / 3600, 2);
    out.push(b':');
    push_padded_decimal(out, seconds / 60 % 60, 2);
    out.push(b':');
    push_padded_decimal(out, seconds % 60, 2);
    out.push(b'.');
    push_padded_decimal(out, micros % MICROS_PER_SECOND.unsigned_abs(), 6);
    out.push(b'Z');
}

fn push_decimal(out: &mut Vec<u8>, value: u64) {
    push_padded_decimal(out, value, 1);
}

/// Decimal digits, left-padded with zeros to at least `min_digits` (at most 20).
fn push_padded_decimal(out: &mut Vec<u8>, mut value: u64, min_digits: usize) {
    let mut digits = [b'0'; 20];
    let mut start = digits.len();
    while value > 0 {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
    }
    out.extend_from_slice(&digits[start.min(digits.len() - min_digits)..]);
}

/// Lowercase hex digits, left-padded with zeros to at least `min_digits` (at most 16), like
/// Python's `%0{min_digits}x`.
fn push_hex(out: &mut Vec<u8>, mut value: u64, min_digits: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [b'0'; 16];
    let mut start = digits.len();
    while value > 0 {
        start -= 1;
        digits[start] = HEX[(value & 0xf) as usize];
        value >>= 4;
    }
    out.extend_from_slice(&digits[start.min(digits.len() - min_digits)..]);
}

fn json_strings(values: &[&str]) -> Vec<Box<str>> {
    values.iter().map(|value| json_string(value)).collect()
}

/// `value` as a quoted, escaped JSON string, encoded once so events copy bytes only.
fn json_string(value: &str) -> Box<str> {
    let mut encoded = String::with_capacity(value.len() + 2);
    encoded.push('"');
    for character in value.chars() {
        match character {
            '"' => encoded.push_str("\\\""),
            '\\' => encoded.push_str("\\\\"),
            control if u32::from(control) < 0x20 => {
                encoded.push_str(&format!("\\u{:04x}", u32::from(control)));
            }
            other => encoded.push(other),
        }
    }
    encoded.push('"');
    encoded.into_boxed_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{API_FIELDS, Action, IdentityType, TENANT_FIELD};
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
        while generator.write_next(&mut out) {}
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
                assert!(Action::parse(action).is_some(), "{action}");
                let identity_type = event["identity_type"].as_str().unwrap();
                assert!(
                    IdentityType::parse(identity_type).is_some(),
                    "{identity_type}"
                );
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
            assert_eq!(SYSTEM_ACTIONS.contains(&action), is_system, "{event}");
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

    #[test]
    fn json_strings_round_trip_through_serde() {
        for raw in [
            "plain",
            "quote\" back\\slash",
            "tab\tnew\nline\u{1}",
            "ünïcode ✓",
        ] {
            let encoded = json_string(raw);
            let decoded: String = serde_json::from_str(&encoded).unwrap();
            assert_eq!(decoded, raw);
        }
    }

    #[test]
    fn civil_dates_match_jiff() {
        let mut out = Vec::new();
        for day in (0..2_932_895).step_by(997).chain([0, 59, 60, 2_932_895]) {
            out.clear();
            push_date(&mut out, day);
            let expected = jiff::Timestamp::from_second(day * 86_400)
                .unwrap()
                .strftime("%Y-%m-%d")
                .to_string();
            assert_eq!(std::str::from_utf8(&out).unwrap(), expected, "day {day}");
        }
    }

    #[test]
    fn number_formatting_pads_like_python() {
        let mut out = Vec::new();
        push_hex(&mut out, 0xabc, 13);
        out.push(b' ');
        push_hex(&mut out, u64::MAX, 16);
        out.push(b' ');
        push_hex(&mut out, 0, 1);
        out.push(b' ');
        push_padded_decimal(&mut out, 7, 2);
        out.push(b' ');
        push_decimal(&mut out, u64::MAX);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "0000000000abc ffffffffffffffff 0 07 18446744073709551615"
        );
    }
}
