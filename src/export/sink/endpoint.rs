//! Which network endpoints an export may connect to (SSRF protection).
//!
//! Destination endpoints come from a tenant's credentials secret (`endpoint_url`, a GCS key's
//! `token_uri`, an Azure `BlobEndpoint`), so a tenant could point the service at the cloud
//! metadata service, at loopback or at cluster-internal addresses. An [`EndpointPolicy`] refuses
//! every address that is not public unicast unless private endpoints are allowed or the host is
//! on the allowlist:
//!
//! - [`EndpointPolicy::check_url`] runs before a job opens any connection: an IP literal is
//!   classified, a host name is resolved and every address it resolves to is classified;
//! - [`FilteringResolver`] is the DNS resolver of the S3 and Azure clients: it classifies the
//!   addresses of every connection they make, so a name that rebinds to a private address after
//!   the check is refused at connect time. (IP literals never reach a resolver; they cannot
//!   rebind, and the check above covers them. The Azure client follows no redirects.) The GCS
//!   client accepts no resolver: for GCS only the check before the job applies.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use aws_smithy_runtime_api::client::dns::{DnsFuture, ResolveDns, ResolveDnsError};

/// The failure code of a refused endpoint.
pub const REFUSED_CODE: &str = "destination_endpoint_refused";

/// Why an address is not a public unicast address, `None` when it is.
pub fn non_public_reason(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

fn v4_reason(address: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = address.octets();
    let reason = if address.is_unspecified() || a == 0 {
        "an unspecified (0.0.0.0/8) address"
    } else if address.is_loopback() {
        "a loopback address"
    } else if address.is_link_local() {
        "a link-local address (169.254.0.0/16, cloud metadata)"
    } else if address.is_private() {
        "a private (RFC 1918) address"
    } else if a == 100 && (64..128).contains(&b) {
        "a shared (CGNAT 100.64.0.0/10) address"
    } else if a == 192 && b == 0 && c == 0 {
        "an IETF protocol (192.0.0.0/24) address"
    } else if (a == 192 && b == 0 && c == 2)
        || (a == 198 && b == 51 && c == 100)
        || (a == 203 && b == 0 && c == 113)
    {
        "a documentation address"
    } else if a == 198 && (b == 18 || b == 19) {
        "a benchmarking (198.18.0.0/15) address"
    } else if address.is_multicast() {
        "a multicast address"
    } else if a >= 240 {
        "a reserved (240.0.0.0/4) or broadcast address"
    } else {
        return None;
    };
    Some(reason)
}

fn v6_reason(address: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = embedded_v4(address) {
        return v4_reason(v4);
    }
    let segments = address.segments();
    let first = segments[0];
    let reason = if address.is_unspecified() {
        "an unspecified (::) address"
    } else if address.is_loopback() {
        "a loopback address"
    } else if first & 0xffc0 == 0xfe80 {
        "a link-local (fe80::/10) address"
    } else if first & 0xffc0 == 0xfec0 {
        "a site-local (fec0::/10) address"
    } else if first & 0xfe00 == 0xfc00 {
        "a unique local (fc00::/7) address"
    } else if first & 0xff00 == 0xff00 {
        "a multicast address"
    } else if first == 0x2001 && segments[1] == 0x0db8 {
        "a documentation (2001:db8::/32) address"
    } else if first == 0x2001 && segments[1] == 0 {
        "a Teredo (2001::/32) address"
    } else if first == 0x0100 && segments[1..4] == [0, 0, 0] {
        "a discard-only (100::/64) address"
    } else if segments[..6] == [0; 6] {
        "an IPv4-compatible (::/96) address"
    } else {
        return None;
    };
    Some(reason)
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:0:0/96`), NAT64 (`64:ff9b::/96`) or 6to4
/// (`2002::/16`) address: those reach the IPv4 address, so they are judged by it.
fn embedded_v4(address: Ipv6Addr) -> Option<Ipv4Addr> {
    let segments = address.segments();
    let low = |high: u16, low: u16| Ipv4Addr::from((u32::from(high) << 16) | u32::from(low));
    if let Some(v4) = address.to_ipv4_mapped() {
        return Some(v4);
    }
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(low(segments[6], segments[7]));
    }
    if segments[0] == 0x2002 {
        return Some(low(segments[1], segments[2]));
    }
    None
}

/// An endpoint the policy refused, with a message fit for the export's error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// The endpoint is (or resolves to) a non-public address.
    #[error("{0}")]
    Refused(String),
    /// The host name could not be resolved (retried: DNS may be briefly away).
    #[error("{0}")]
    Unresolved(String),
}

pub use crate::config::export::EndpointPolicy;

impl EndpointPolicy {
    /// Allows every endpoint.
    pub fn allow_all() -> Self {
        EndpointPolicy {
            allow_private: true,
            allowlist: Vec::new(),
        }
    }

    /// Whether `host` (a name or an IP literal, IPv6 with or without brackets) is exempt.
    pub fn exempt(&self, host: &str) -> bool {
        if self.allow_private {
            return true;
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.allowlist.iter().any(|allowed| {
            allowed
                .trim_start_matches('[')
                .trim_end_matches(']')
                .eq_ignore_ascii_case(host)
        })
    }

    /// Refuses `address` (reached through `host`) when it is not public and not exempt.
    pub fn check_address(&self, host: &str, address: IpAddr) -> Result<(), EndpointError> {
        if self.exempt(host) {
            return Ok(());
        }
        match non_public_reason(address) {
            None => Ok(()),
            Some(reason) => Err(EndpointError::Refused(refusal(host, address, reason))),
        }
    }

    /// Checks the endpoint `url` (what a credentials secret named as `what`): an IP literal
    /// directly, a host name by resolving it and checking every address.
    pub async fn check_url(&self, what: &str, url: &str) -> Result<(), EndpointError> {
        let parsed = reqwest::Url::parse(url).map_err(|_| {
            EndpointError::Refused(format!("the {what} in the credentials secret is not a URL"))
        })?;
        let port = parsed.port_or_known_default().unwrap_or(443);
        let (host, literal) = match parsed.host() {
            Some(url::Host::Ipv4(v4)) => (v4.to_string(), Some(IpAddr::V4(v4))),
            Some(url::Host::Ipv6(v6)) => (v6.to_string(), Some(IpAddr::V6(v6))),
            Some(url::Host::Domain(name)) => (name.to_string(), None),
            None => {
                return Err(EndpointError::Refused(format!(
                    "the {what} in the credentials secret has no host"
                )));
            }
        };
        if self.exempt(&host) {
            return Ok(());
        }
        if let Some(address) = literal {
            return self.check_address(&host, address);
        }
        let addresses = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|_| {
                EndpointError::Unresolved(format!("the {what} host {host} could not be resolved"))
            })?;
        for address in addresses {
            self.check_address(&host, address.ip())?;
        }
        Ok(())
    }
}

fn refusal(host: &str, address: IpAddr, reason: &str) -> String {
    let shown = if host == address.to_string() {
        host.to_string()
    } else {
        format!("{host} ({address})")
    };
    format!(
        "the destination endpoint {shown} is {reason}; exports only reach public endpoints \
         unless an operator adds the host to [export] endpoint_allowlist or sets \
         [export] allow_private_endpoints"
    )
}

/// A DNS resolver for the S3 client that drops every address the policy refuses, so that the
/// addresses actually connected to are checked (no DNS rebinding between check and connect).
#[derive(Debug, Clone)]
pub struct FilteringResolver {
    policy: EndpointPolicy,
}

impl FilteringResolver {
    pub fn new(policy: EndpointPolicy) -> Self {
        FilteringResolver { policy }
    }
}

impl ResolveDns for FilteringResolver {
    fn resolve_dns<'a>(&'a self, name: &'a str) -> DnsFuture<'a> {
        let policy = self.policy.clone();
        let name = name.to_string();
        DnsFuture::new(async move {
            let resolved = tokio::net::lookup_host((name.as_str(), 0))
                .await
                .map_err(ResolveDnsError::new)?;
            let addresses: Vec<IpAddr> = resolved.map(|address: SocketAddr| address.ip()).collect();
            let mut allowed = Vec::with_capacity(addresses.len());
            let mut refused = None;
            for address in addresses {
                match policy.check_address(&name, address) {
                    Ok(()) => allowed.push(address),
                    Err(error) => refused = Some(error),
                }
            }
            match (allowed.is_empty(), refused) {
                (true, Some(error)) => {
                    tracing::warn!(host = name, %error, "refused a destination address");
                    Err(ResolveDnsError::new(error))
                }
                _ => Ok(allowed),
            }
        })
    }
}

impl reqwest::dns::Resolve for FilteringResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let this = self.clone();
        Box::pin(async move {
            let addresses = this
                .resolve_dns(name.as_str())
                .await
                .map_err(|error| Box::new(error) as Box<dyn std::error::Error + Send + Sync>)?;
            let addresses: reqwest::dns::Addrs = Box::new(
                addresses
                    .into_iter()
                    .map(|address| SocketAddr::new(address, 0))
                    .collect::<Vec<_>>()
                    .into_iter(),
            );
            Ok(addresses)
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn reason(text: &str) -> Option<&'static str> {
        non_public_reason(text.parse().unwrap())
    }

    #[test]
    fn non_public_ipv4_addresses_are_classified() {
        for address in [
            "127.0.0.1",
            "127.255.255.254",
            "0.0.0.0",
            "0.1.2.3",
            "169.254.169.254",
            "169.254.0.1",
            "10.0.0.1",
            "10.255.255.255",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "192.0.0.170",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
        ] {
            assert!(reason(address).is_some(), "{address} must be refused");
        }
        assert!(reason("169.254.169.254").unwrap().contains("metadata"));
        assert!(reason("100.64.0.1").unwrap().contains("CGNAT"));
    }

    #[test]
    fn public_ipv4_addresses_pass() {
        for address in [
            "8.8.8.8",
            "52.216.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "192.169.0.1",
            "1.1.1.1",
        ] {
            assert_eq!(reason(address), None, "{address} is public");
        }
    }

    #[test]
    fn non_public_ipv6_addresses_are_classified() {
        for address in [
            "::1",
            "::",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "2001:db8::1",
            "2001:0:4136:e378::1",
            "100::1",
            // IPv4-mapped, NAT64 and 6to4 forms of non-public IPv4 addresses.
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.1.2.3",
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "2002:7f00:1::1",
            // IPv4-compatible (deprecated) addresses.
            "::127.0.0.1",
            "::8.8.8.8",
        ] {
            assert!(reason(address).is_some(), "{address} must be refused");
        }
        assert!(
            reason("::ffff:169.254.169.254")
                .unwrap()
                .contains("link-local")
        );
    }

    #[test]
    fn public_ipv6_addresses_pass() {
        for address in [
            "2600:1f18::1",
            "2a00:1450:4001::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert_eq!(reason(address), None, "{address} is public");
        }
    }

    #[test]
    fn the_allowlist_and_the_switch_exempt_hosts() {
        let strict = EndpointPolicy::default();
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(strict.check_address("127.0.0.1", loopback).is_err());
        let listed = EndpointPolicy {
            allow_private: false,
            allowlist: vec!["127.0.0.1".into(), "MinIO.internal".into(), "[::1]".into()],
        };
        assert!(listed.check_address("127.0.0.1", loopback).is_ok());
        assert!(
            listed
                .check_address("minio.internal", "10.0.0.5".parse().unwrap())
                .is_ok()
        );
        assert!(listed.check_address("::1", "::1".parse().unwrap()).is_ok());
        assert!(
            listed
                .check_address("other.internal", "10.0.0.5".parse().unwrap())
                .is_err()
        );
        assert!(
            EndpointPolicy::allow_all()
                .check_address("x", loopback)
                .is_ok()
        );
    }

    #[tokio::test]
    async fn urls_with_private_literals_are_refused_without_resolving() {
        let strict = EndpointPolicy::default();
        for url in [
            "http://127.0.0.1:9000",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]:9000",
            "http://[::ffff:a9fe:a9fe]/",
            "http://[fe80::1]/",
            "https://10.0.0.1/bucket",
            "http://0.0.0.0:80",
            "http://2130706433/", // 127.0.0.1 as one decimal number
        ] {
            let error = strict.check_url("endpoint_url", url).await.unwrap_err();
            assert!(
                matches!(&error, EndpointError::Refused(message)
                    if message.contains("endpoint_allowlist")),
                "{url}: {error:?}"
            );
        }
        assert!(strict.check_url("endpoint_url", "not a url").await.is_err());
        let listed = EndpointPolicy {
            allow_private: false,
            allowlist: vec!["127.0.0.1".into()],
        };
        assert!(
            listed
                .check_url("endpoint_url", "http://127.0.0.1:9000")
                .await
                .is_ok()
        );
        // "localhost" resolves (from /etc/hosts) to loopback only.
        assert!(
            strict
                .check_url("endpoint_url", "http://localhost:9000")
                .await
                .is_err()
        );
    }
}
