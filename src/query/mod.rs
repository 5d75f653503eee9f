//! Query parameters of `GET /v1/audit/logs` (SPEC §3.1) and their Tantivy queries.
//!
//! Parsing is pure and reports every bad parameter at once (`details.fields`); building turns
//! validated [`LogFilters`] plus the caller's tenant into one conjunctive Tantivy query.

pub mod cursor;
pub mod partials;
pub mod summary;
pub mod tenant;

use std::net::IpAddr;
use std::ops::Bound;
use std::sync::Arc;

use ipnet::IpNet;
use tantivy::query::{
    BooleanQuery, Occur, Query, QueryParser, RangeQuery, TermQuery, TermSetQuery,
};
use tantivy::schema::IndexRecordOption;
use tantivy::{Index, Term};

use crate::event::{Action, FieldErrors, IdentityType};
use crate::query::partials::PartialCache;
use crate::query::tenant::TenantQuery;
use crate::store::Fields;
use crate::store::lookup::RequestIdQuery;
use crate::store::schema::to_ipv6;
use crate::store::search::{ColumnFilter, Direction, SearchPlan, SortKey, prefix_successor};
use crate::timestamp;

/// Default page size (SPEC §3.1).
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page size (SPEC §3.1).
pub const MAX_LIMIT: usize = 1000;
const MAX_QUERY_TEXT_CHARS: usize = 1024;

/// The SPEC §3.1 filters, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct LogFilters {
    /// Inclusive lower bound, microseconds.
    pub from_us: Option<i64>,
    /// Exclusive upper bound, microseconds.
    pub to_us: Option<i64>,
    /// Any of these actions (empty = all).
    pub actions: Vec<Action>,
    pub identity_id: Option<String>,
    pub identity_type: Option<IdentityType>,
    /// Plain string prefix of `secret_path`.
    pub path_prefix: Option<String>,
    /// Exact `secret_path` (the secret trail).
    pub secret_path: Option<String>,
    pub success: Option<bool>,
    /// Exact address (a /32 or /128) or CIDR network.
    pub source_ip: Option<IpNet>,
    pub request_id: Option<String>,
    /// Free-text Tantivy query over user agent, path, identity and extra data.
    pub text: Option<String>,
    /// Only events ingested before this sequence number (an export's snapshot).
    pub before_seq: Option<u64>,
    /// A scheduled export run's late events: an event older than the window start (`.0`,
    /// microseconds) matches only when it was ingested at or after sequence `.1` (after the
    /// previous run's snapshot). Not a query parameter.
    pub late: Option<(i64, u64)>,
}

/// Paging parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageParams {
    pub limit: usize,
    pub cursor: Option<String>,
    pub direction: Direction,
}

/// Parsed query string of a log listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogParams {
    pub filters: LogFilters,
    pub page: PageParams,
}

/// Names accepted by [`parse_log_params`]; endpoints may accept more (`top`) and remove some.
pub const LOG_PARAM_NAMES: &[&str] = &[
    "from",
    "to",
    "action",
    "identity_id",
    "identity_type",
    "path_prefix",
    "success",
    "source_ip",
    "request_id",
    "q",
    "limit",
    "cursor",
    "order",
];

/// Decodes an `application/x-www-form-urlencoded` query string into pairs.
pub fn query_pairs(raw_query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(raw_query.as_bytes())
        .into_owned()
        .collect()
}

/// Parses the log query parameters; `allowed` lists the parameter names this endpoint takes.
pub fn parse_log_params(
    pairs: &[(String, String)],
    allowed: &[&str],
) -> Result<LogParams, FieldErrors> {
    let mut errors = FieldErrors::default();
    let mut seen = std::collections::HashSet::new();
    for (name, _) in pairs {
        if !allowed.contains(&name.as_str()) {
            errors.add(name.clone(), "unknown parameter");
        } else if !seen.insert(name.as_str()) {
            errors.add(
                name.clone(),
                "given more than once (use a comma-separated list)",
            );
        }
    }
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    let from_us = parse_with(get("from"), "from", &mut errors, parse_time);
    let to_us = parse_with(get("to"), "to", &mut errors, parse_time);
    if from_us.zip(to_us).is_some_and(|(from, to)| from > to) {
        errors.add("to", "must not be before from");
    }
    let filters = LogFilters {
        from_us,
        to_us,
        actions: parse_with(get("action"), "action", &mut errors, parse_actions)
            .unwrap_or_default(),
        identity_id: parse_with(get("identity_id"), "identity_id", &mut errors, non_empty),
        identity_type: parse_with(get("identity_type"), "identity_type", &mut errors, |text| {
            IdentityType::parse(text)
                .ok_or_else(|| "must be one of user, service_account, group, system".to_string())
        }),
        path_prefix: parse_with(
            get("path_prefix"),
            "path_prefix",
            &mut errors,
            parse_path_prefix,
        ),
        secret_path: None,
        success: parse_with(get("success"), "success", &mut errors, |text| match text {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err("must be true or false".to_string()),
        }),
        source_ip: parse_with(get("source_ip"), "source_ip", &mut errors, parse_ip_or_cidr),
        request_id: parse_with(get("request_id"), "request_id", &mut errors, non_empty),
        text: parse_with(get("q"), "q", &mut errors, |text| {
            if text.chars().count() > MAX_QUERY_TEXT_CHARS {
                Err(format!("must be at most {MAX_QUERY_TEXT_CHARS} characters"))
            } else {
                non_empty(text)
            }
        }),
        before_seq: None,
        late: None,
    };
    let limit =
        parse_with(get("limit"), "limit", &mut errors, parse_limit).unwrap_or(DEFAULT_LIMIT);
    let direction = parse_with(get("order"), "order", &mut errors, |text| match text {
        "desc" => Ok(Direction::NewestFirst),
        "asc" => Ok(Direction::OldestFirst),
        _ => Err("must be asc or desc".to_string()),
    })
    .unwrap_or(Direction::NewestFirst);
    let cursor = get("cursor")
        .filter(|text| !text.is_empty())
        .map(str::to_string);
    if errors.is_empty() {
        Ok(LogParams {
            filters,
            page: PageParams {
                limit,
                cursor,
                direction,
            },
        })
    } else {
        Err(errors)
    }
}

fn parse_with<T>(
    value: Option<&str>,
    name: &str,
    errors: &mut FieldErrors,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Option<T> {
    match parse(value?) {
        Ok(parsed) => Some(parsed),
        Err(message) => {
            errors.add(name, message);
            None
        }
    }
}

fn non_empty(text: &str) -> Result<String, String> {
    if text.is_empty() {
        Err("must not be empty".to_string())
    } else {
        Ok(text.to_string())
    }
}

/// `from` / `to` of every query route: see [`timestamp::parse_time_param`].
fn parse_time(text: &str) -> Result<i64, String> {
    timestamp::parse_time_param(text)
}

fn parse_limit(text: &str) -> Result<usize, String> {
    match text.parse::<i64>() {
        Ok(limit) if limit < 1 => Err("must be >= 1".to_string()),
        Ok(limit) if limit > MAX_LIMIT as i64 => Err(format!("must be <= {MAX_LIMIT}")),
        Ok(limit) => Ok(limit as usize),
        Err(_) => Err("must be an integer between 1 and 1000".to_string()),
    }
}

/// Parses `read` or `read,write`; unknown names are an error.
pub fn parse_actions(text: &str) -> Result<Vec<Action>, String> {
    let mut actions = Vec::new();
    for name in text.split(',').map(str::trim) {
        let action = Action::parse(name).ok_or_else(|| format!("unknown action '{name}'"))?;
        if !actions.contains(&action) {
            actions.push(action);
        }
    }
    Ok(actions)
}

fn parse_path_prefix(text: &str) -> Result<String, String> {
    let allowed =
        |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'/');
    if text.len() > crate::event::MAX_PATH_CHARS || !text.bytes().all(allowed) {
        return Err("must be at most 512 characters of a-z 0-9 - _ /".to_string());
    }
    non_empty(text)
}

fn parse_ip_or_cidr(text: &str) -> Result<IpNet, String> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    text.parse::<IpNet>()
        .map(|net| net.trunc())
        .map_err(|_| "must be an IP address or a CIDR network such as 10.0.0.0/8".to_string())
}

/// Tightens the time range to what can still follow the cursor, so the index skips the rest.
pub fn narrow_to_cursor(
    mut filters: LogFilters,
    direction: Direction,
    after: Option<SortKey>,
) -> LogFilters {
    let Some(after) = after else {
        return filters;
    };
    match direction {
        Direction::NewestFirst => {
            let bound = after.timestamp_us.saturating_add(1);
            filters.to_us = Some(filters.to_us.map_or(bound, |to| to.min(bound)));
        }
        Direction::OldestFirst => {
            filters.from_us = Some(
                filters
                    .from_us
                    .map_or(after.timestamp_us, |from| from.max(after.timestamp_us)),
            );
        }
    }
    filters
}

/// Errors building a query from valid-looking filters (the free text can still be malformed).
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("q: {0}")]
    Text(String),
}

/// The search for `tenant` and `filters`: postings drive it, fast columns filter it (see
/// [`crate::store::search`]).
pub fn build_search(
    index: &Index,
    fields: &Fields,
    tenant: &str,
    filters: &LogFilters,
    partials: Option<&Arc<PartialCache>>,
) -> Result<SearchPlan, QueryError> {
    let filter = ColumnFilter {
        from_us: filters.from_us,
        to_us: filters.to_us,
        before_seq: filters.before_seq,
        late: filters.late,
        actions: (!filters.actions.is_empty()).then(|| action_mask(&filters.actions)),
        path_prefix: filters.path_prefix.clone(),
        source_ip: filters
            .source_ip
            .map(|network| to_ipv6(network.network())..=to_ipv6(network.broadcast())),
        request_id: filters.request_id.clone(),
    };
    let clauses = posting_clauses(index, fields, tenant, filters, partials)?;
    Ok(SearchPlan {
        query: Box::new(BooleanQuery::new(clauses)),
        filter,
    })
}

/// The Tantivy query for `tenant` and `filters`, every filter included (for counts and
/// aggregates that visit all matches anyway).
pub fn build_query(
    index: &Index,
    fields: &Fields,
    tenant: &str,
    filters: &LogFilters,
    partials: Option<&Arc<PartialCache>>,
) -> Result<Box<dyn Query>, QueryError> {
    let mut clauses = posting_clauses(index, fields, tenant, filters, partials)?;
    if filters.from_us.is_some() || filters.to_us.is_some() {
        let lower = filters.from_us.map_or(Bound::Unbounded, |from| {
            Bound::Included(Term::from_field_i64(fields.timestamp, from))
        });
        let upper = filters.to_us.map_or(Bound::Unbounded, |to| {
            Bound::Excluded(Term::from_field_i64(fields.timestamp, to))
        });
        clauses.push((Occur::Must, Box::new(RangeQuery::new(lower, upper))));
    }
    if !filters.actions.is_empty() {
        let terms = filters
            .actions
            .iter()
            .map(|action| Term::from_field_u64(fields.action, action.ordinal()));
        clauses.push((Occur::Must, Box::new(TermSetQuery::new(terms))));
    }
    if let Some(prefix) = &filters.path_prefix {
        clauses.push((Occur::Must, prefix_query(fields, prefix)));
    }
    if let Some(network) = filters.source_ip {
        clauses.push((Occur::Must, ip_query(fields, network)));
    }
    if let Some(before) = filters.before_seq {
        // A fast field only: the snapshot is the range [0, before).
        clauses.push((
            Occur::Must,
            Box::new(RangeQuery::new(
                Bound::Unbounded,
                Bound::Excluded(Term::from_field_u64(fields.seq, before)),
            )),
        ));
    }
    if let Some((window_from_us, since_seq)) = filters.late {
        // In the window, or ingested since the previous snapshot.
        let in_window: Box<dyn Query> = Box::new(RangeQuery::new(
            Bound::Included(Term::from_field_i64(fields.timestamp, window_from_us)),
            Bound::Unbounded,
        ));
        let since: Box<dyn Query> = Box::new(RangeQuery::new(
            Bound::Included(Term::from_field_u64(fields.seq, since_seq)),
            Bound::Unbounded,
        ));
        clauses.push((
            Occur::Must,
            Box::new(BooleanQuery::new(vec![
                (Occur::Should, in_window),
                (Occur::Should, since),
            ])),
        ));
    }
    Ok(Box::new(BooleanQuery::new(clauses)))
}

/// One clause of a conjunction.
type Clause = (Occur, Box<dyn Query>);

/// Bit `n` set for every action of ordinal `n`.
fn action_mask(actions: &[Action]) -> u64 {
    actions
        .iter()
        .map(|action| action.ordinal())
        .filter(|ordinal| *ordinal < 64)
        .fold(0, |mask, ordinal| mask | (1 << ordinal))
}

/// The clauses answered from postings: the tenant (from the segments' tenant maps that
/// `partials` keeps, if given; see [`tenant`]) and the filters that usually select few
/// documents.
fn posting_clauses(
    index: &Index,
    fields: &Fields,
    tenant: &str,
    filters: &LogFilters,
    partials: Option<&Arc<PartialCache>>,
) -> Result<Vec<Clause>, QueryError> {
    let mut clauses: Vec<Clause> = vec![(
        Occur::Must,
        Box::new(TenantQuery::new(fields.tenant, tenant, partials.cloned())),
    )];
    if let Some(identity_id) = &filters.identity_id {
        clauses.push((
            Occur::Must,
            term(Term::from_field_text(fields.identity_id, identity_id)),
        ));
    }
    if let Some(identity_type) = filters.identity_type {
        clauses.push((
            Occur::Must,
            term(Term::from_field_u64(
                fields.identity_type,
                identity_type.ordinal(),
            )),
        ));
    }
    if let Some(path) = &filters.secret_path {
        clauses.push((
            Occur::Must,
            term(Term::from_field_text(fields.secret_path, path)),
        ));
    }
    if let Some(success) = filters.success {
        clauses.push((
            Occur::Must,
            term(Term::from_field_bool(fields.success, success)),
        ));
    }
    if let Some(request_id) = &filters.request_id {
        // Bucket postings confirmed on the column: no scan (see `store::lookup`).
        clauses.push((
            Occur::Must,
            Box::new(RequestIdQuery::new(fields, request_id)),
        ));
    }
    if let Some(text) = &filters.text {
        let mut parser = QueryParser::for_index(index, vec![fields.text]);
        parser.set_conjunction_by_default();
        let parsed = parser
            .parse_query(text)
            .map_err(|error| QueryError::Text(error.to_string()))?;
        clauses.push((Occur::Must, parsed));
    }
    Ok(clauses)
}

fn term(term: Term) -> Box<dyn Query> {
    Box::new(TermQuery::new(term, IndexRecordOption::Basic))
}

/// Paths starting with `prefix`: the term range `[prefix, prefix with its last byte + 1)`.
fn prefix_query(fields: &Fields, prefix: &str) -> Box<dyn Query> {
    let lower = Bound::Included(Term::from_field_text(fields.secret_path, prefix));
    let upper = match prefix_successor(prefix) {
        Some(next) => Bound::Excluded(Term::from_field_text(fields.secret_path, &next)),
        None => Bound::Unbounded,
    };
    Box::new(RangeQuery::new(lower, upper))
}

fn ip_query(fields: &Fields, network: IpNet) -> Box<dyn Query> {
    let first = to_ipv6(network.network());
    let last = to_ipv6(network.broadcast());
    Box::new(RangeQuery::new(
        Bound::Included(Term::from_field_ip_addr(fields.source_ip, first)),
        Bound::Included(Term::from_field_ip_addr(fields.source_ip, last)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(query: &str) -> Vec<(String, String)> {
        query_pairs(query)
    }

    fn errors(query: &str) -> Vec<String> {
        parse_log_params(&pairs(query), LOG_PARAM_NAMES)
            .unwrap_err()
            .0
            .into_keys()
            .collect()
    }

    #[test]
    fn parses_every_filter() {
        let params = parse_log_params(
            &pairs("from=2026-04-22T00:00:00Z&to=2026-04-23T00:00:00%2B02:00&action=read,%20write&identity_id=user:alice@acme.example&identity_type=user&path_prefix=environments/prod&success=false&source_ip=10.0.0.0/8&request_id=req_1&q=salesforce&limit=5&order=asc&cursor=abc"),
            LOG_PARAM_NAMES,
        )
        .unwrap();
        let filters = params.filters;
        assert_eq!(filters.actions, vec![Action::Read, Action::Write]);
        assert_eq!(
            filters.identity_id.as_deref(),
            Some("user:alice@acme.example")
        );
        assert_eq!(filters.identity_type, Some(IdentityType::User));
        assert_eq!(filters.success, Some(false));
        assert_eq!(filters.source_ip, Some("10.0.0.0/8".parse().unwrap()));
        assert_eq!(
            filters.to_us.unwrap() - filters.from_us.unwrap(),
            22 * 3_600_000_000
        );
        assert_eq!(
            params.page,
            PageParams {
                limit: 5,
                cursor: Some("abc".into()),
                direction: Direction::OldestFirst
            }
        );
    }

    #[test]
    fn defaults_are_newest_first_100() {
        let params = parse_log_params(&[], LOG_PARAM_NAMES).unwrap();
        assert_eq!(
            params.page,
            PageParams {
                limit: 100,
                cursor: None,
                direction: Direction::NewestFirst
            }
        );
        assert_eq!(params.filters, LogFilters::default());
    }

    #[test]
    fn every_bad_parameter_is_reported() {
        assert_eq!(errors("limit=0"), vec!["limit"]);
        assert_eq!(errors("limit=1001"), vec!["limit"]);
        assert_eq!(errors("limit=ten"), vec!["limit"]);
        assert_eq!(errors("action=read,launch"), vec!["action"]);
        assert_eq!(
            errors("from=yesterday&success=maybe"),
            vec!["from", "success"]
        );
        assert_eq!(
            errors("from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z"),
            vec!["to"]
        );
        assert_eq!(errors("identity_type=robot"), vec!["identity_type"]);
        assert_eq!(errors("source_ip=10.0.0.0/33"), vec!["source_ip"]);
        assert_eq!(errors("path_prefix=Env"), vec!["path_prefix"]);
        assert_eq!(errors("order=sideways"), vec!["order"]);
        assert_eq!(errors("colour=red"), vec!["colour"]);
        assert_eq!(errors("limit=1&limit=2"), vec!["limit"]);
    }

    #[test]
    fn prefix_successor_covers_every_extension() {
        assert_eq!(
            prefix_successor("environments/prod").as_deref(),
            Some("environments/proe")
        );
        assert_eq!(prefix_successor("a/").as_deref(), Some("a0"));
        assert_eq!(prefix_successor(""), None);
    }

    #[test]
    fn cidr_host_bits_are_dropped() {
        assert_eq!(
            parse_ip_or_cidr("10.1.2.3/8").unwrap(),
            "10.0.0.0/8".parse().unwrap()
        );
        assert_eq!(
            parse_ip_or_cidr("fd00::1").unwrap(),
            "fd00::1/128".parse().unwrap()
        );
    }

    #[test]
    fn cursor_narrowing_keeps_ties() {
        let after = Some(SortKey {
            timestamp_us: 100,
            seq: 5,
        });
        let newest = narrow_to_cursor(LogFilters::default(), Direction::NewestFirst, after);
        assert_eq!(newest.to_us, Some(101));
        let bounded = narrow_to_cursor(
            LogFilters {
                to_us: Some(50),
                ..Default::default()
            },
            Direction::NewestFirst,
            after,
        );
        assert_eq!(bounded.to_us, Some(50));
        let oldest = narrow_to_cursor(LogFilters::default(), Direction::OldestFirst, after);
        assert_eq!(oldest.from_us, Some(100));
    }
}
