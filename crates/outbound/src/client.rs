//! The HTTP client: [`Outbound`] sends one [`OutboundRequest`] and reads at most
//! `max_response_bytes` of the answer.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Url, redirect};
use tracing::field::Empty;

use crate::auth::redact_headers;
use crate::policy::{PolicyResolver, TargetPolicy, find_refusal};

/// The default cap on a response body kept in memory: 1 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// How the client is built.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Which targets may be called (the SSRF guard).
    pub policy: TargetPolicy,
    /// Response bodies are read up to this many bytes; the rest is dropped
    /// ([`OutboundResponse::body_truncated`]). Default 1 MiB.
    pub max_response_bytes: usize,
    /// Idle keep-alive connections kept per host. Default 1024: a webhook may run up to 1000
    /// calls at once, and each connection closed for want of room would be opened again.
    pub pool_idle_per_host: usize,
    /// The `User-Agent` sent unless a request sets its own. Default `hookline/<version>`.
    pub user_agent: String,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            policy: TargetPolicy::default(),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            pool_idle_per_host: 1024,
            user_agent: concat!("hookline/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

/// Building the client failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// The configured user agent is not a valid header value.
    #[error("invalid user agent: it must be visible ASCII without control characters")]
    InvalidUserAgent,
    /// reqwest could not build the client (e.g. the TLS backend failed to initialise).
    #[error("failed to build the HTTP client: {0}")]
    Build(String),
}

/// One HTTP request to send.
#[derive(Clone)]
pub struct OutboundRequest {
    /// The method, e.g. `POST` (case-insensitive for the standard methods).
    pub method: String,
    /// An absolute `http` or `https` URL.
    pub url: String,
    /// Headers in order; repeated names are sent repeatedly.
    pub headers: Vec<(String, String)>,
    /// The body, sent as is.
    pub body: Vec<u8>,
    /// The limit on the whole exchange: connecting, sending and reading the response body.
    pub timeout: Duration,
}

impl fmt::Debug for OutboundRequest {
    /// Shows headers redacted and the body's length only; the URL is left out (it may carry
    /// credentials or tokens).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundRequest")
            .field("method", &self.method)
            .field("headers", &redact_headers(&self.headers, &[], &[]))
            .field("body_len", &self.body.len())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// A request to send, borrowed from its owner ([`Outbound::send_call`]): nothing is copied
/// but the body's handle, so a caller that may send the same request twice (a refreshed
/// token) keeps it.
#[derive(Clone, Copy)]
pub struct OutboundCall<'a> {
    /// The method, e.g. `POST` (case-insensitive for the standard methods).
    pub method: &'a str,
    /// An absolute `http` or `https` URL.
    pub url: &'a str,
    /// Headers in order; repeated names are sent repeatedly.
    pub headers: &'a [(String, String)],
    /// The body, sent as is.
    pub body: &'a bytes::Bytes,
    /// The limit on the whole exchange: connecting, sending and reading the response body.
    pub timeout: Duration,
}

/// The answer to an [`OutboundRequest`]: any status, redirects included (they are not followed).
#[derive(Clone)]
pub struct OutboundResponse {
    /// The HTTP status code.
    pub status: u16,
    /// Response headers in order (values decoded lossily as UTF-8).
    pub headers: Vec<(String, String)>,
    /// The body, at most `max_response_bytes` long.
    pub body: Vec<u8>,
    /// Whether the body was longer than `max_response_bytes` and cut.
    pub body_truncated: bool,
    /// From the start of sending to the end of reading the (possibly truncated) body.
    pub duration: Duration,
}

impl fmt::Debug for OutboundResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundResponse")
            .field("status", &self.status)
            .field("headers", &redact_headers(&self.headers, &[], &[]))
            .field("body_len", &self.body.len())
            .field("body_truncated", &self.body_truncated)
            .field("duration", &self.duration)
            .finish()
    }
}

/// Why a request got no HTTP response. Messages never contain header values, passwords or
/// URL userinfo, query or path.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// A bad method, URL or header; retrying cannot help.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The SSRF guard refused the target, e.g. "127.0.0.1 is a loopback address; allow it with
    /// --allow-target".
    #[error("target refused: {0}")]
    TargetRefused(String),
    /// The whole exchange took longer than the request's timeout.
    #[error("timed out after {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// No connection could be made: DNS failure, connection refused, TLS handshake failure.
    #[error("connect failed: {0}")]
    Connect(String),
    /// The connection failed during the exchange, e.g. reset mid-response.
    #[error("I/O error: {0}")]
    Io(String),
}

impl SendError {
    /// A short stable name for `error.type` in traces and metrics:
    /// `invalid_request`, `target_refused`, `timeout`, `connect` or `io`.
    pub fn kind(&self) -> &'static str {
        match self {
            SendError::InvalidRequest(_) => "invalid_request",
            SendError::TargetRefused(_) => "target_refused",
            SendError::Timeout(_) => "timeout",
            SendError::Connect(_) => "connect",
            SendError::Io(_) => "io",
        }
    }
}

/// The outbound HTTP client: keep-alive connections pooled per host, no redirects followed,
/// no proxy, and the [`TargetPolicy`] enforced for IP literals and every resolved address.
/// Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct Outbound {
    client: reqwest::Client,
    policy: Arc<TargetPolicy>,
    max_response_bytes: usize,
}

impl fmt::Debug for Outbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbound")
            .field("policy", &self.policy)
            .field("max_response_bytes", &self.max_response_bytes)
            .finish_non_exhaustive()
    }
}

impl Outbound {
    /// Builds the client.
    pub fn new(config: ClientConfig) -> Result<Self, OutboundError> {
        let user_agent = HeaderValue::from_str(&config.user_agent).map_err(|_| OutboundError::InvalidUserAgent)?;
        let policy = Arc::new(config.policy);
        let client = reqwest::Client::builder()
            .user_agent(user_agent)
            .redirect(redirect::Policy::none())
            // A proxy would resolve and connect to the target itself, out of the guard's reach.
            .no_proxy()
            .pool_max_idle_per_host(config.pool_idle_per_host)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_keepalive(Duration::from_secs(60))
            .dns_resolver(Arc::new(PolicyResolver { policy: Arc::clone(&policy) }))
            .build()
            .map_err(|e| OutboundError::Build(describe(e)))?;
        Ok(Self { client, policy, max_response_bytes: config.max_response_bytes })
    }

    /// The policy this client enforces.
    pub fn policy(&self) -> &TargetPolicy {
        &self.policy
    }

    /// Sends one request and reads its response (at most `max_response_bytes` of the body),
    /// all within `request.timeout`. Any HTTP status is `Ok`; see [`crate::classify`].
    pub async fn send(&self, request: OutboundRequest) -> Result<OutboundResponse, SendError> {
        let body = bytes::Bytes::from(request.body);
        let call = OutboundCall {
            method: &request.method,
            url: &request.url,
            headers: &request.headers,
            body: &body,
            timeout: request.timeout,
        };
        self.send_call(call).await
    }

    /// [`Outbound::send`] of a borrowed request.
    #[tracing::instrument(
        name = "http.client.request",
        skip_all,
        fields(
            otel.kind = "client",
            http.request.method = Empty,
            server.address = Empty,
            server.port = Empty,
            http.response.status_code = Empty,
            error.type = Empty,
        )
    )]
    pub async fn send_call(&self, call: OutboundCall<'_>) -> Result<OutboundResponse, SendError> {
        let span = tracing::Span::current();
        let timeout = call.timeout;
        let prepared = self.prepare(call, &span)?;
        let started = Instant::now();
        let result = match tokio::time::timeout(timeout, self.exchange(prepared)).await {
            Ok(result) => result,
            Err(_elapsed) => Err(SendError::Timeout(timeout)),
        };
        match &result {
            Ok(response) => {
                span.record("http.response.status_code", i64::from(response.status));
                if response.status >= 400 {
                    span.record("error.type", response.status.to_string());
                }
                tracing::debug!(
                    status = response.status,
                    body_bytes = response.body.len(),
                    body_truncated = response.body_truncated,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "response received"
                );
            }
            Err(error) => {
                span.record("error.type", error.kind());
                tracing::debug!(error = %error, "request failed");
            }
        }
        result.map(|mut response| {
            response.duration = started.elapsed();
            response
        })
    }

    /// Validates the request and applies the guard to an IP-literal host.
    fn prepare(&self, request: OutboundCall<'_>, span: &tracing::Span) -> Result<reqwest::Request, SendError> {
        let method = parse_method(request.method).inspect_err(|e| {
            span.record("error.type", e.kind());
        })?;
        span.record("http.request.method", method.as_str());
        let result = self.build(method, request, span);
        if let Err(error) = &result {
            span.record("error.type", error.kind());
        }
        result
    }

    fn build(
        &self,
        method: Method,
        request: OutboundCall<'_>,
        span: &tracing::Span,
    ) -> Result<reqwest::Request, SendError> {
        let url = parse_url_cached(request.url)?;
        if let Some(host) = url.host_str() {
            span.record("server.address", host);
        }
        if let Some(port) = url.port_or_known_default() {
            span.record("server.port", i64::from(port));
        }
        // reqwest connects to IP literals directly, without asking the resolver.
        // The URL parser has normalised IPv4 literals (including forms like `0x7f.1`) to
        // dotted quads and IPv6 literals to `[…]`.
        let literal = url
            .host_str()
            .map(|host| host.trim_start_matches('[').trim_end_matches(']'))
            .and_then(|host| host.parse::<std::net::IpAddr>().ok());
        if let Some(ip) = literal
            && let Some(reason) = self.policy.refusal(ip)
        {
            return Err(SendError::TargetRefused(reason));
        }
        let headers = parse_headers(request.headers)?;
        self.client
            .request(method, url)
            .headers(headers)
            .body(request.body.clone())
            .build()
            .map_err(|e| SendError::InvalidRequest(describe(e)))
    }

    /// Sends the request and reads the body up to the cap.
    async fn exchange(&self, request: reqwest::Request) -> Result<OutboundResponse, SendError> {
        let mut response = self.client.execute(request).await.map_err(map_error)?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
            .collect();
        let max = self.max_response_bytes;
        let mut body = Vec::with_capacity(
            response.content_length().and_then(|n| usize::try_from(n).ok()).unwrap_or(0).min(max).min(64 * 1024),
        );
        let mut body_truncated = false;
        while let Some(chunk) = response.chunk().await.map_err(map_error)? {
            let room = max - body.len();
            if chunk.len() > room {
                body.extend_from_slice(&chunk[..room]);
                body_truncated = true;
                break;
            }
            body.extend_from_slice(&chunk);
        }
        Ok(OutboundResponse { status, headers, body, body_truncated, duration: Duration::ZERO })
    }
}

fn parse_method(method: &str) -> Result<Method, SendError> {
    let method = method.trim();
    if method.is_empty() {
        return Err(SendError::InvalidRequest("invalid method: empty".into()));
    }
    // Upper-cased only when it is not already (built requests always are).
    let upper = if method.bytes().any(|b| b.is_ascii_lowercase()) {
        std::borrow::Cow::Owned(method.to_ascii_uppercase())
    } else {
        std::borrow::Cow::Borrowed(method)
    };
    Method::from_bytes(upper.as_bytes())
        .map_err(|_| SendError::InvalidRequest("invalid method: not an HTTP token".into()))
}

thread_local! {
    /// URLs parsed lately on this thread, newest last: most calls go to a few targets, and
    /// parsing one (with its IDNA pass) is a visible share of a delivery's CPU.
    static PARSED: std::cell::RefCell<Vec<(String, Url)>> = const { std::cell::RefCell::new(Vec::new()) };
}
/// How many parsed URLs each thread keeps.
const PARSED_KEPT: usize = 16;

/// [`parse_url`], from this thread's recent URLs when it is one of them.
fn parse_url_cached(raw: &str) -> Result<Url, SendError> {
    if let Some(url) = PARSED.with_borrow(|kept| kept.iter().rev().find(|(r, _)| r == raw).map(|(_, u)| u.clone())) {
        return Ok(url);
    }
    let url = parse_url(raw)?;
    PARSED.with_borrow_mut(|kept| {
        if kept.len() == PARSED_KEPT {
            kept.remove(0);
        }
        kept.push((raw.to_string(), url.clone()));
    });
    Ok(url)
}

/// Parses and checks the URL. Error messages never echo the URL (it may hold a password or a
/// token in its query).
fn parse_url(raw: &str) -> Result<Url, SendError> {
    let url = Url::parse(raw.trim()).map_err(|e| SendError::InvalidRequest(format!("invalid URL: {e}")))?;
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(SendError::InvalidRequest(format!(
                "invalid URL: unsupported scheme {other:?} (only http and https)"
            )));
        }
    }
    if url.host().is_none() {
        return Err(SendError::InvalidRequest("invalid URL: no host".into()));
    }
    Ok(url)
}

fn parse_headers(headers: &[(String, String)]) -> Result<HeaderMap, SendError> {
    let mut map = HeaderMap::with_capacity(headers.len());
    for (index, (name, value)) in headers.iter().enumerate() {
        // Never echo the name of an invalid header: a mis-split "Authorization: Bearer …"
        // would put the secret into the name.
        let header_name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
            SendError::InvalidRequest(format!("invalid header name (header #{}): not an HTTP token", index + 1))
        })?;
        let header_value = HeaderValue::from_str(value.trim()).map_err(|_| {
            SendError::InvalidRequest(format!(
                "invalid value for header {header_name}: control characters or non-ASCII bytes are not allowed"
            ))
        })?;
        map.append(header_name, header_value);
    }
    Ok(map)
}

/// Maps a reqwest error to a [`SendError`], keeping a refusal from the resolver.
fn map_error(error: reqwest::Error) -> SendError {
    if let Some(refused) = find_refusal(&error) {
        return SendError::TargetRefused(refused.0.clone());
    }
    if error.is_builder() {
        return SendError::InvalidRequest(describe(error));
    }
    if error.is_timeout() {
        // Reached only for timeouts below ours (e.g. a TCP connect timeout); report as such.
        return SendError::Connect(describe(error));
    }
    if error.is_connect() {
        return SendError::Connect(describe(error));
    }
    SendError::Io(describe(error))
}

/// The messages of an error and its sources, joined by ": ", without the URL reqwest attaches.
fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut parts: Vec<String> = Vec::new();
    let mut current: Option<&(dyn StdError + 'static)> = Some(&error);
    while let Some(e) = current {
        let message = e.to_string();
        if !message.is_empty() && !parts.iter().any(|p| p.contains(&message)) {
            parts.push(message);
        }
        current = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;

    /// A local HTTP/1.1 server answering every request with `response`; sends each request's
    /// head to the channel and counts connections.
    struct TestServer {
        addr: SocketAddr,
        requests: mpsc::UnboundedReceiver<String>,
        connections: Arc<AtomicUsize>,
    }

    #[test]
    fn recent_urls_parse_as_a_fresh_parse_would() {
        for round in 0..2 {
            for n in 0..(PARSED_KEPT + 4) {
                let raw = format!("http://Example.COM:80/p/{n}?q=1");
                let url = parse_url_cached(&raw).expect("valid");
                assert_eq!(url, parse_url(&raw).unwrap(), "round {round}");
                assert_eq!(url.as_str(), format!("http://example.com/p/{n}?q=1"));
            }
        }
        for bad in ["ftp://example.com/", "not a url", "http://"] {
            assert!(parse_url_cached(bad).is_err(), "{bad}");
            assert!(parse_url_cached(bad).is_err(), "{bad}, again");
        }
        PARSED.with_borrow(|kept| assert_eq!(kept.len(), PARSED_KEPT));
    }

    async fn read_request(stream: &mut TcpStream) -> Option<String> {
        crate::test_http::read_request(stream).await.map(|(head, _body)| head)
    }

    async fn serve(response: Vec<u8>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = mpsc::unbounded_channel();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&connections);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let tx = tx.clone();
                let response = response.clone();
                tokio::spawn(async move {
                    if let Some(head) = read_request(&mut stream).await {
                        let _ = tx.send(head);
                        let _ = stream.write_all(&response).await;
                        let _ = stream.shutdown().await;
                    }
                });
            }
        });
        TestServer { addr, requests: rx, connections }
    }

    fn http_response(status_line: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {status_line}\r\n");
        for (n, v) in headers {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        out.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n", body.len()));
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(body);
        bytes
    }

    fn loopback_allowed() -> ClientConfig {
        ClientConfig {
            policy: TargetPolicy {
                allow: vec!["127.0.0.0/8".parse().expect("cidr"), "::1/128".parse().expect("cidr")],
            },
            ..ClientConfig::default()
        }
    }

    fn client(config: ClientConfig) -> Outbound {
        Outbound::new(config).expect("client")
    }

    fn get(url: String) -> OutboundRequest {
        OutboundRequest {
            method: "GET".into(),
            url,
            headers: Vec::new(),
            body: Vec::new(),
            timeout: Duration::from_secs(10),
        }
    }

    #[tokio::test]
    async fn loopback_refused_without_allow() {
        let server = serve(http_response("200 OK", &[], b"hello")).await;
        let outbound = client(ClientConfig::default());
        let err = outbound.send(get(format!("http://{}/hook", server.addr))).await.expect_err("refused");
        match &err {
            SendError::TargetRefused(msg) => {
                assert_eq!(msg, "127.0.0.1 is a loopback address; allow it with --allow-target")
            }
            other => panic!("expected TargetRefused, got {other:?}"),
        }
        assert_eq!(err.kind(), "target_refused");
        // IPv4-mapped IPv6 literal of the same address.
        let mapped = format!("http://[::ffff:127.0.0.1]:{}/", server.addr.port());
        assert!(matches!(outbound.send(get(mapped)).await, Err(SendError::TargetRefused(_))));
        // No connection was ever made.
        assert_eq!(server.connections.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn loopback_answered_with_allow() {
        let mut server = serve(http_response("201 Created", &[("X-Reply", "yes")], b"created")).await;
        let outbound = client(loopback_allowed());
        let mut request = get(format!("http://{}/hook?x=1", server.addr));
        request.method = "post".into();
        request.headers = vec![("Content-Type".into(), "application/json".into()), ("X-Custom".into(), "abc".into())];
        request.body = br#"{"a":1}"#.to_vec();
        let response = outbound.send(request).await.expect("answered");
        assert_eq!(response.status, 201);
        assert_eq!(response.body, b"created");
        assert!(!response.body_truncated);
        assert!(response.headers.iter().any(|(n, v)| n == "x-reply" && v == "yes"));
        let head = server.requests.recv().await.expect("request seen");
        assert!(head.starts_with("POST /hook?x=1 HTTP/1.1\r\n"), "{head}");
        let lower = head.to_ascii_lowercase();
        assert!(lower.contains("x-custom: abc"), "{head}");
        assert!(lower.contains("content-length: 7"), "{head}");
        assert!(lower.contains("user-agent: hookline/"), "{head}");
    }

    #[tokio::test]
    async fn localhost_refused_through_resolver() {
        let server = serve(http_response("200 OK", &[], b"hello")).await;
        let outbound = client(ClientConfig::default());
        let err = outbound.send(get(format!("http://localhost:{}/", server.addr.port()))).await.expect_err("refused");
        match &err {
            SendError::TargetRefused(msg) => {
                assert!(msg.starts_with("localhost resolves only to refused addresses: "), "{msg}");
                assert!(msg.contains("loopback"), "{msg}");
            }
            other => panic!("expected TargetRefused, got {other:?}"),
        }
        assert_eq!(server.connections.load(Ordering::SeqCst), 0);

        // With the loopback ranges allowed, the resolver lets it through.
        let allowed = client(loopback_allowed());
        let response = allowed.send(get(format!("http://localhost:{}/", server.addr.port()))).await.expect("answered");
        assert_eq!(response.status, 200);
        assert_eq!(response.body, b"hello");
    }

    #[tokio::test]
    async fn body_truncated_at_max_response_bytes() {
        let big = vec![b'x'; 10_000];
        let server = serve(http_response("200 OK", &[], &big)).await;
        let outbound = client(ClientConfig { max_response_bytes: 1000, ..loopback_allowed() });
        let response = outbound.send(get(format!("http://{}/", server.addr))).await.expect("answered");
        assert_eq!(response.body.len(), 1000);
        assert!(response.body_truncated);

        // A body exactly at the cap is whole.
        let exact = serve(http_response("200 OK", &[], &big[..1000])).await;
        let response = outbound.send(get(format!("http://{}/", exact.addr))).await.expect("answered");
        assert_eq!(response.body.len(), 1000);
        assert!(!response.body_truncated);
    }

    #[tokio::test]
    async fn request_times_out_when_server_never_answers() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream); // keep it open, say nothing
            }
        });
        let outbound = client(loopback_allowed());
        let mut request = get(format!("http://{addr}/"));
        request.timeout = Duration::from_millis(300);
        let started = Instant::now();
        let err = outbound.send(request).await.expect_err("timeout");
        assert!(matches!(err, SendError::Timeout(d) if d == Duration::from_millis(300)), "{err:?}");
        assert_eq!(err.kind(), "timeout");
        assert_eq!(err.to_string(), "timed out after 300ms");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let server = serve(http_response("302 Found", &[("Location", "http://127.0.0.1:1/elsewhere")], b"")).await;
        let outbound = client(loopback_allowed());
        let response = outbound.send(get(format!("http://{}/", server.addr))).await.expect("answered");
        assert_eq!(response.status, 302);
        assert_eq!(crate::classify(&Ok(response)), crate::Verdict::Fail);
    }

    #[tokio::test]
    async fn connection_refused_is_connect_without_secrets() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let outbound = client(loopback_allowed());
        let err = outbound
            .send(get(format!("http://user:hunter2@127.0.0.1:{port}/p?token=sekrit")))
            .await
            .expect_err("refused");
        assert!(matches!(err, SendError::Connect(_)), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("tcp connect error"), "{text}");
        assert!(!text.contains("hunter2") && !text.contains("sekrit"), "{text}");
        assert_eq!(crate::classify(&Err(err)), crate::Verdict::Retry { after: None });
    }

    #[tokio::test]
    async fn invalid_requests_name_the_problem_without_secrets() {
        let outbound = client(ClientConfig::default());
        let cases: Vec<(OutboundRequest, &str)> = vec![
            (get("ftp://example.com/x".into()), "unsupported scheme \"ftp\""),
            (get("not a url".into()), "invalid URL"),
            (get("http://user:hunter2@exa mple.com/".into()), "invalid URL"),
            (get("file:///etc/passwd".into()), "unsupported scheme"),
            (OutboundRequest { method: "GE T".into(), ..get("http://example.com/".into()) }, "invalid method"),
            (
                OutboundRequest {
                    headers: vec![("X-Secret".into(), "hunter2\r\nInjected: 1".into())],
                    ..get("http://example.com/".into())
                },
                "invalid value for header x-secret",
            ),
            (
                OutboundRequest {
                    headers: vec![("Authorization: Bearer hunter2".into(), "x".into())],
                    ..get("http://example.com/".into())
                },
                "invalid header name (header #1)",
            ),
        ];
        for (request, expected) in cases {
            let err = outbound.send(request).await.expect_err("invalid");
            let text = err.to_string();
            assert!(matches!(err, SendError::InvalidRequest(_)), "{expected}: {err:?}");
            assert!(text.contains(expected), "{text} should contain {expected}");
            assert!(!text.contains("hunter2"), "{text}");
        }
        // A refused literal with userinfo does not echo the password either.
        let err = outbound.send(get("http://admin:hunter2@10.0.0.1/".into())).await.expect_err("refused");
        assert!(matches!(err, SendError::TargetRefused(_)), "{err:?}");
        assert!(!err.to_string().contains("hunter2"));
    }

    #[test]
    fn debug_output_redacts() {
        let request = OutboundRequest {
            method: "POST".into(),
            url: "https://user:hunter2@example.com/".into(),
            headers: vec![("Authorization".into(), "Bearer hunter2".into())],
            body: b"hunter2".to_vec(),
            timeout: Duration::from_secs(1),
        };
        let text = format!("{request:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("***"), "{text}");
    }

    #[test]
    fn invalid_user_agent_is_rejected() {
        let err = Outbound::new(ClientConfig { user_agent: "bad\nagent".into(), ..ClientConfig::default() })
            .expect_err("invalid");
        assert!(matches!(err, OutboundError::InvalidUserAgent));
    }
}
