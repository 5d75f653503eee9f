//! The client address of the request being handled (the TCP peer), kept in a task-local
//! for the duration of the request like the request id, so authentication can limit failed
//! attempts per address without threading the address through every route.
//!
//! It is the direct peer: behind a proxy or ingress every client shares the proxy's address
//! (forwarded headers are not trusted).

use std::future::Future;
use std::net::IpAddr;

tokio::task_local! {
    static CLIENT: IpAddr;
}

/// Runs `request` with `client` as its client address.
pub async fn scope<F: Future>(client: IpAddr, request: F) -> F::Output {
    CLIENT.scope(client, request).await
}

/// The current request's client address (`None` outside a request).
pub fn current() -> Option<IpAddr> {
    CLIENT.try_with(|client| *client).ok()
}
