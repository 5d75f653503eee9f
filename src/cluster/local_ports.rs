//! Loopback ports for the NATS nodes a process starts itself (`bench ingest --cluster` and the
//! integration tests).
//!
//! A port taken from `bind(127.0.0.1:0)` and released lies in the kernel's ephemeral range, so
//! any outgoing connection can take it before the node listens on it, and the nodes' own route
//! dials to one another are such connections: a node then dies with "address already in use".
//! These ports come from below the ephemeral range instead, where only listeners that choose
//! their port live, starting at an offset of the process id so that two processes picking at
//! once rarely probe the same ports.

use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

/// The lowest port handed out: below it sit well-known and commonly configured services.
const FLOOR: u32 = 10_000;
/// The kernel's default ephemeral range starts here (used when `/proc` does not say).
const DEFAULT_EPHEMERAL_LOW: u32 = 32_768;
/// Where the kernel states its ephemeral range.
const EPHEMERAL_RANGE_FILE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// A loopback TCP port that nothing listens on now and that no outgoing connection will be
/// given. Falls back to a kernel-chosen port when the ephemeral range leaves no room below it.
pub fn unclaimed_loopback_port() -> io::Result<u16> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = ephemeral_low();
    let Some(span) = ephemeral_low
        .checked_sub(FLOOR)
        .filter(|span| *span >= 1_000)
    else {
        return listen_port(0);
    };
    let offset = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let port = FLOOR + (offset + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        if let Ok(port) = listen_port(port as u16) {
            return Ok(port);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("every loopback port from {FLOOR} to {ephemeral_low} is taken"),
    ))
}

/// The first port of the kernel's ephemeral range.
fn ephemeral_low() -> u32 {
    std::fs::read_to_string(EPHEMERAL_RANGE_FILE)
        .ok()
        .and_then(|text| ephemeral_low_of(&text))
        .unwrap_or(DEFAULT_EPHEMERAL_LOW)
}

/// The low end of `ip_local_port_range`'s "LOW\tHIGH".
fn ephemeral_low_of(text: &str) -> Option<u32> {
    text.split_whitespace().next()?.parse().ok()
}

/// Binds `port` (0: any) on 127.0.0.1 and releases it; the port bound.
fn listen_port(port: u16) -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, port))?
        .local_addr()?
        .port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_free_and_below_the_ephemeral_range() {
        let ephemeral_low = ephemeral_low();
        let ports: Vec<u16> = (0..9)
            .map(|_| unclaimed_loopback_port().expect("a port"))
            .collect();
        let mut distinct = ports.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        for port in ports {
            assert!(
                u32::from(port) >= FLOOR && u32::from(port) < ephemeral_low,
                "{port}"
            );
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("the port is free");
        }
    }

    #[test]
    fn the_range_file_is_read_by_its_low_end() {
        assert_eq!(ephemeral_low_of("32768\t60999\n"), Some(32_768));
        assert_eq!(ephemeral_low_of(""), None);
    }
}
