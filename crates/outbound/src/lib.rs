//! Outbound HTTP for Hookline: the layer that actually delivers a webhook.
//!
//! - [`Outbound`] wraps one pooled `reqwest` client (keep-alive per host, redirects **not**
//!   followed, no proxy) and sends an [`OutboundRequest`], reading at most
//!   [`ClientConfig::max_response_bytes`] of the response body, all within the request's own
//!   timeout. Failures without an HTTP response are a [`SendError`]; its messages never carry
//!   header values, passwords, URL userinfo or query strings.
//! - [`TargetPolicy`] is the SSRF guard: loopback, private, link-local, CGNAT, unique-local,
//!   multicast, documentation and similar special-purpose addresses are refused unless an
//!   `allow` CIDR covers them. It is enforced both for IP-literal URLs (before anything is sent)
//!   and inside the client's DNS resolver for every resolved address, so a host name that
//!   resolves to `127.0.0.1` is refused as well ([`SendError::TargetRefused`]).
//! - [`classify`] turns a result into a [`Verdict`] (success, retry — with the server's
//!   `Retry-After` — or permanent failure), and [`RetryPolicy`] computes the wait before the
//!   next attempt (fixed, or exponential with jitter).
//! - [`basic_auth`] builds an HTTP Basic `Authorization` header; [`redact_headers`] masks
//!   secrets in headers before they are logged or stored in attempt records.
//!
//! `send` runs in a `http.client.request` tracing span with the OpenTelemetry HTTP client
//! attributes `http.request.method`, `server.address`, `server.port`,
//! `http.response.status_code` and `error.type`.

mod auth;
mod client;
mod oauth;
mod policy;
mod retry;
mod signing;
#[cfg(test)]
mod test_http;

pub use auth::{REDACTED, basic_auth, redact_headers, shown_header_value};
pub use client::{
    ClientConfig, DEFAULT_MAX_RESPONSE_BYTES, Outbound, OutboundCall, OutboundError, OutboundRequest, OutboundResponse,
    SendError,
};
pub use oauth::{CredentialsIn, OAuthConfig, OAuthError, Token};
pub use policy::TargetPolicy;
pub use retry::{Backoff, MAX_RETRY_AFTER, RetryPolicy, Verdict, classify, parse_http_date, parse_retry_after};
pub use signing::{
    MAX_SECRET_BYTES, MIN_SECRET_BYTES, SECRET_PREFIX, SigningError, SigningSecret, WEBHOOK_ID, WEBHOOK_SIGNATURE,
    WEBHOOK_TIMESTAMP, sign, signature_headers, verify,
};
