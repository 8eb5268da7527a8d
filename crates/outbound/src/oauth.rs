//! OAuth 2.0 client credentials (RFC 6749 §4.4): [`Outbound::fetch_token`] asks a token
//! endpoint for an access token with a client id and secret, for webhooks whose target wants
//! `Authorization: Bearer <token>`.
//!
//! The request is built and the answer parsed by the `oauth2` crate, but sent through the
//! same [`Outbound`] client as deliveries, so the SSRF guard, the timeout, the response size
//! cap and the no-redirect rule apply to the token endpoint too. The client credentials go
//! either in an HTTP Basic `Authorization` header (id and secret form-urlencoded first, as
//! RFC 6749 §2.3.1 requires) or as `client_id`/`client_secret` form fields; `scope` and
//! `audience` (an extension several providers require) are sent as form fields when set.
//!
//! Every [`OAuthError`] names the step that failed ("token endpoint answered 401
//! (invalid_client)") and never contains the client secret, the `Authorization` header, the
//! token, the endpoint's `error_description` or any other text from the response body but
//! the OAuth `error` code. [`OAuthConfig`] and [`Token`] print their secrets as `***` in
//! `Debug`.
//!
//! Caching the token until shortly before `expires_in` runs out is the caller's job.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use oauth2::basic::{BasicClient, BasicErrorResponse, BasicTokenType};
use oauth2::{
    AsyncHttpClient, AuthType, ClientId, ClientSecret, HttpRequest, HttpResponse, RequestTokenError, Scope,
    TokenResponse, TokenUrl,
};

use crate::auth::REDACTED;
use crate::client::{Outbound, OutboundRequest, OutboundResponse, SendError};

/// Where the client id and secret go in the token request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CredentialsIn {
    /// `Authorization: Basic base64(urlencode(id):urlencode(secret))`, RFC 6749 §2.3.1 (the
    /// method every authorization server must support).
    #[default]
    Header,
    /// `client_id` and `client_secret` form fields in the request body.
    Body,
}

/// How to obtain a token with the client credentials grant.
#[derive(Clone, PartialEq, Eq)]
pub struct OAuthConfig {
    /// The token endpoint, an absolute `http` or `https` URL.
    pub token_url: String,
    /// The client id.
    pub client_id: String,
    /// The client secret; never logged, never part of an error.
    pub client_secret: String,
    /// Space-separated scopes, sent as the `scope` form field.
    pub scope: Option<String>,
    /// Sent as the `audience` form field (Auth0, Okta and others want it).
    pub audience: Option<String>,
    /// Where the credentials go.
    pub credentials_in: CredentialsIn,
}

impl fmt::Debug for OAuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthConfig")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &REDACTED)
            .field("scope", &self.scope)
            .field("audience", &self.audience)
            .field("credentials_in", &self.credentials_in)
            .finish()
    }
}

/// An access token; `Debug` shows `***` for the token itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// The access token.
    pub access_token: String,
    /// How long the token is valid from the moment it was issued, if the endpoint said.
    pub expires_in: Option<Duration>,
    /// The token type: `Bearer` (written so, whatever case the endpoint used), or another
    /// type in lower case (e.g. `dpop`, `mac`); authentication schemes are case-insensitive.
    pub token_type: String,
}

impl Token {
    /// The `Authorization` header that presents this token: `<token_type> <access_token>`,
    /// e.g. `Bearer abc` (RFC 6750).
    pub fn authorization_header(&self) -> (String, String) {
        ("Authorization".to_owned(), format!("{} {}", self.token_type, self.access_token))
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("access_token", &REDACTED)
            .field("expires_in", &self.expires_in)
            .field("token_type", &self.token_type)
            .finish()
    }
}

/// Why no token was obtained. Messages never contain the client secret, the `Authorization`
/// header, a token or free text from the endpoint's response.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// The token endpoint answered with an error status. `error` is the OAuth error code
    /// (`invalid_client`, `invalid_scope`, …) when the body carried a well-formed one.
    #[error("token endpoint answered {status}{}", .error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default())]
    Endpoint {
        /// The HTTP status.
        status: u16,
        /// The OAuth `error` code, only if it looks like one (lower-case letters and `_`).
        error: Option<String>,
    },
    /// The endpoint answered 200 with something that is not a token response.
    #[error("malformed token response: {0}")]
    Malformed(String),
    /// No answer: connection failure, timeout, I/O error.
    #[error("token request failed: {0}")]
    Transport(SendError),
    /// The token request was not sent: the SSRF guard refused the endpoint, or its URL (or
    /// the request) is invalid.
    #[error("token request refused: {0}")]
    Refused(String),
}

impl OAuthError {
    /// Whether asking again later may succeed: transport failures and the statuses
    /// 408, 429 and 5xx.
    pub fn is_retryable(&self) -> bool {
        match self {
            OAuthError::Transport(_) => true,
            OAuthError::Endpoint { status, .. } => matches!(status, 408 | 429 | 500..=599),
            OAuthError::Malformed(_) | OAuthError::Refused(_) => false,
        }
    }
}

/// What the adapter saw of the token endpoint's answer, for error messages.
#[derive(Clone, Debug, Default)]
struct Seen {
    status: u16,
    content_type: Option<String>,
    body_len: usize,
    truncated: bool,
}

impl Outbound {
    /// Fetches an access token with the client credentials grant, through this client (so the
    /// SSRF guard applies), within `timeout`.
    pub async fn fetch_token(&self, cfg: &OAuthConfig, timeout: Duration) -> Result<Token, OAuthError> {
        let token_url = TokenUrl::new(cfg.token_url.trim().to_owned())
            .map_err(|e| OAuthError::Refused(format!("invalid token URL: {e}")))?;
        let auth_type = match cfg.credentials_in {
            CredentialsIn::Header => AuthType::BasicAuth,
            CredentialsIn::Body => AuthType::RequestBody,
        };
        let client = BasicClient::new(ClientId::new(cfg.client_id.clone()))
            .set_client_secret(ClientSecret::new(cfg.client_secret.clone()))
            .set_auth_type(auth_type)
            .set_token_uri(token_url);
        let mut request = client.exchange_client_credentials();
        if let Some(scope) = &cfg.scope {
            request = request.add_scopes(scope.split_whitespace().map(|s| Scope::new(s.to_owned())));
        }
        if let Some(audience) = &cfg.audience {
            request = request.add_extra_param("audience", audience.clone());
        }

        let adapter = Adapter { outbound: self, timeout, seen: Mutex::new(Seen::default()) };
        let result = request.request_async(&adapter).await;
        let seen = adapter.seen.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());

        match result {
            Ok(response) => {
                let token_type = match response.token_type() {
                    BasicTokenType::Bearer => "Bearer".to_owned(),
                    other => other.as_ref().to_owned(),
                };
                let token = Token {
                    access_token: response.access_token().secret().clone(),
                    expires_in: response.expires_in(),
                    token_type,
                };
                tracing::debug!(expires_in = ?token.expires_in, token_type = %token.token_type, "access token obtained");
                Ok(token)
            }
            Err(error) => Err(map_error(error, &seen, &cfg.client_secret)),
        }
    }
}

/// The oauth2 crate's HTTP client: sends through [`Outbound::send`] and notes what came back.
struct Adapter<'a> {
    outbound: &'a Outbound,
    timeout: Duration,
    seen: Mutex<Seen>,
}

impl<'c> AsyncHttpClient<'c> for Adapter<'_> {
    type Error = SendError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, SendError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let response = self.outbound.send(to_outbound(request, self.timeout)).await?;
            if let Ok(mut seen) = self.seen.lock() {
                *seen = Seen {
                    status: response.status,
                    content_type: response
                        .headers
                        .iter()
                        .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
                        .map(|(_, value)| value.clone()),
                    body_len: response.body.len(),
                    truncated: response.body_truncated,
                };
            }
            Ok(to_http(response))
        })
    }
}

/// The oauth2 crate's request as one of ours.
fn to_outbound(request: HttpRequest, timeout: Duration) -> OutboundRequest {
    let (parts, body) = request.into_parts();
    OutboundRequest {
        method: parts.method.as_str().to_owned(),
        url: parts.uri.to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
            .collect(),
        body,
        timeout,
    }
}

/// Our response as the oauth2 crate's. Headers that do not convert are dropped (only
/// `Content-Type` matters to it).
fn to_http(response: OutboundResponse) -> HttpResponse {
    let mut http = HttpResponse::new(response.body);
    *http.status_mut() =
        oauth2::http::StatusCode::from_u16(response.status).unwrap_or(oauth2::http::StatusCode::BAD_GATEWAY);
    for (name, value) in &response.headers {
        if let (Ok(name), Ok(value)) =
            (oauth2::http::HeaderName::from_bytes(name.as_bytes()), oauth2::http::HeaderValue::from_str(value))
        {
            http.headers_mut().append(name, value);
        }
    }
    http
}

type OAuth2Error = RequestTokenError<SendError, BasicErrorResponse>;

/// Turns the oauth2 crate's error into ours, keeping nothing from the body but a plain
/// OAuth error code.
fn map_error(error: OAuth2Error, seen: &Seen, client_secret: &str) -> OAuthError {
    match error {
        OAuth2Error::Request(SendError::TargetRefused(reason)) => OAuthError::Refused(reason),
        OAuth2Error::Request(SendError::InvalidRequest(reason)) => OAuthError::Refused(reason),
        OAuth2Error::Request(other) => OAuthError::Transport(other),
        // Only reached for a status other than 200, with a JSON error body.
        OAuth2Error::ServerResponse(response) => {
            OAuthError::Endpoint { status: seen.status, error: plain_code(response.error().as_ref(), client_secret) }
        }
        // Before the request was sent: the request could not be built.
        OAuth2Error::Other(_) if seen.status == 0 => {
            OAuthError::Refused("the token request could not be built (invalid client id or scope?)".to_owned())
        }
        // An error status whose body is empty or not an OAuth error.
        OAuth2Error::Other(_) | OAuth2Error::Parse(..) if seen.status != 200 => {
            OAuthError::Endpoint { status: seen.status, error: None }
        }
        _ if seen.truncated => {
            OAuthError::Malformed(format!("the body is longer than the {} bytes read", seen.body_len))
        }
        OAuth2Error::Other(_) if seen.body_len == 0 => OAuthError::Malformed("the body is empty".to_owned()),
        OAuth2Error::Other(_) => OAuthError::Malformed(format!(
            "content type {}, not application/json",
            seen.content_type.as_deref().map(|ct| plain_media_type(ct, client_secret)).unwrap_or("(none)")
        )),
        parse @ OAuth2Error::Parse(..) => OAuthError::Malformed(describe_parse(&parse, client_secret)),
    }
}

/// A parse failure described by position or field name only: serde's messages quote the
/// offending value, which may be a token.
fn describe_parse(error: &OAuth2Error, client_secret: &str) -> String {
    let OAuth2Error::Parse(error, _body) = error else {
        return "the body is not a token response".to_owned();
    };
    let inner = error.inner();
    if inner.is_syntax() || inner.is_eof() {
        return format!("the body is not JSON (line {}, column {})", inner.line(), inner.column());
    }
    let message = inner.to_string();
    if let Some(field) = message.strip_prefix("missing field `").and_then(|rest| rest.split('`').next())
        && let Some(field) = plain_code(field, client_secret)
    {
        return format!("the field `{field}` is missing");
    }
    match plain_code(&error.path().to_string(), client_secret) {
        Some(path) => format!("the field `{path}` has the wrong type or value"),
        None => "the body is not a token response".to_owned(),
    }
}

/// `code` if it looks like an OAuth error code or a field name — lower-case ASCII letters and
/// `_`, at most 64 of them, as every registered code is — and does not contain the client
/// secret; `None` otherwise.
fn plain_code(code: &str, client_secret: &str) -> Option<String> {
    let plain = !code.is_empty()
        && code.len() <= 64
        && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        && (client_secret.is_empty() || !code.contains(client_secret));
    plain.then(|| code.to_owned())
}

/// The media type of a `Content-Type` value without its parameters, if it looks like one.
fn plain_media_type<'a>(content_type: &'a str, client_secret: &str) -> &'a str {
    let media = content_type.split(';').next().unwrap_or("").trim();
    let plain = !media.is_empty()
        && (client_secret.is_empty() || !media.contains(client_secret))
        && media.len() <= 64
        && media.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'+' | b'.' | b'-' | b'_'));
    if plain { media } else { "(unreadable)" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ClientConfig;
    use crate::policy::TargetPolicy;
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use std::net::SocketAddr;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;

    const SECRET: &str = "PLANTED-s3cr3t/with+odd&chars=";

    /// One request as the token endpoint got it.
    #[derive(Debug)]
    struct Received {
        request_line: String,
        /// Header names in lower case.
        headers: Vec<(String, String)>,
        form: Vec<(String, String)>,
    }

    impl Received {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
        }
        fn field(&self, name: &str) -> Option<&str> {
            self.form.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
        }
    }

    async fn read_request(stream: &mut TcpStream) -> Option<Received> {
        let (head, body) = crate::test_http::read_request(stream).await?;
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default().to_owned();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let form = oauth2::url::form_urlencoded::parse(&body).into_owned().collect();
        Some(Received { request_line, headers, form })
    }

    /// A token endpoint on 127.0.0.1 answering every request with `response`.
    async fn endpoint(response: Vec<u8>) -> (SocketAddr, mpsc::UnboundedReceiver<Received>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let tx = tx.clone();
                let response = response.clone();
                tokio::spawn(async move {
                    if let Some(seen) = read_request(&mut stream).await {
                        let _ = tx.send(seen);
                        let _ = stream.write_all(&response).await;
                        let _ = stream.shutdown().await;
                    }
                });
            }
        });
        (addr, rx)
    }

    fn response(status_line: &str, content_type: &str, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status_line}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn json(status_line: &str, body: &str) -> Vec<u8> {
        response(status_line, "application/json;charset=UTF-8", body)
    }

    fn outbound() -> Outbound {
        Outbound::new(ClientConfig {
            policy: TargetPolicy { allow: vec!["127.0.0.0/8".parse().expect("cidr")] },
            ..ClientConfig::default()
        })
        .expect("client")
    }

    fn config(addr: SocketAddr, credentials_in: CredentialsIn) -> OAuthConfig {
        OAuthConfig {
            token_url: format!("http://{addr}/oauth/token"),
            client_id: "hookline client".into(),
            client_secret: SECRET.into(),
            scope: None,
            audience: None,
            credentials_in,
        }
    }

    const TIMEOUT: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn credentials_in_header_with_scope_and_audience() {
        let (addr, mut requests) =
            endpoint(json("200 OK", r#"{"access_token":"tok-123","token_type":"bearer","expires_in":3600}"#)).await;
        let cfg = OAuthConfig {
            scope: Some("tickets:write  tickets:read".into()),
            audience: Some("https://api.example.com/".into()),
            ..config(addr, CredentialsIn::Header)
        };
        let token = outbound().fetch_token(&cfg, TIMEOUT).await.expect("token");
        assert_eq!(token.access_token, "tok-123");
        assert_eq!(token.token_type, "Bearer");
        assert_eq!(token.expires_in, Some(Duration::from_secs(3600)));
        assert_eq!(token.authorization_header(), ("Authorization".to_owned(), "Bearer tok-123".to_owned()));

        let seen = requests.recv().await.expect("request");
        assert_eq!(seen.request_line, "POST /oauth/token HTTP/1.1");
        assert_eq!(seen.header("content-type"), Some("application/x-www-form-urlencoded"));
        assert_eq!(seen.header("accept"), Some("application/json"));
        // RFC 6749 §2.3.1: id and secret form-urlencoded, then Basic.
        let expected = STANDARD.encode("hookline+client:PLANTED-s3cr3t%2Fwith%2Bodd%26chars%3D");
        assert_eq!(seen.header("authorization"), Some(format!("Basic {expected}").as_str()));
        assert_eq!(seen.field("grant_type"), Some("client_credentials"));
        assert_eq!(seen.field("scope"), Some("tickets:write tickets:read"));
        assert_eq!(seen.field("audience"), Some("https://api.example.com/"));
        assert_eq!(seen.field("client_secret"), None);
        assert_eq!(seen.field("client_id"), None);
        assert!(seen.header("user-agent").is_some_and(|ua| ua.starts_with("hookline/")), "{seen:?}");
    }

    #[tokio::test]
    async fn credentials_in_body() {
        let (addr, mut requests) =
            endpoint(json("200 OK", r#"{"access_token":"tok-456","token_type":"Bearer"}"#)).await;
        let token = outbound().fetch_token(&config(addr, CredentialsIn::Body), TIMEOUT).await.expect("token");
        assert_eq!(token.access_token, "tok-456");
        assert_eq!(token.token_type, "Bearer");
        assert_eq!(token.expires_in, None);

        let seen = requests.recv().await.expect("request");
        assert_eq!(seen.header("authorization"), None);
        assert_eq!(seen.field("grant_type"), Some("client_credentials"));
        assert_eq!(seen.field("client_id"), Some("hookline client"));
        assert_eq!(seen.field("client_secret"), Some(SECRET));
        assert_eq!(seen.field("scope"), None);
        assert_eq!(seen.field("audience"), None);
    }

    #[tokio::test]
    async fn other_token_types_are_kept() {
        let (addr, _requests) = endpoint(json("200 OK", r#"{"access_token":"t","token_type":"DPoP"}"#)).await;
        let token = outbound().fetch_token(&config(addr, CredentialsIn::Header), TIMEOUT).await.expect("token");
        assert_eq!(token.token_type, "dpop");
    }

    #[tokio::test]
    async fn invalid_client_is_an_endpoint_error_with_its_code() {
        let body = r#"{"error":"invalid_client","error_description":"Client authentication failed"}"#;
        let (addr, _requests) = endpoint(json("401 Unauthorized", body)).await;
        let err = outbound().fetch_token(&config(addr, CredentialsIn::Header), TIMEOUT).await.expect_err("401");
        assert!(
            matches!(&err, OAuthError::Endpoint { status: 401, error: Some(code) } if code == "invalid_client"),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "token endpoint answered 401 (invalid_client)");
        assert!(!err.is_retryable());
    }

    #[tokio::test]
    async fn error_status_without_oauth_body() {
        let (addr, _requests) = endpoint(response("503 Service Unavailable", "text/html", "<h1>down</h1>")).await;
        let err = outbound().fetch_token(&config(addr, CredentialsIn::Header), TIMEOUT).await.expect_err("503");
        assert!(matches!(err, OAuthError::Endpoint { status: 503, error: None }), "{err:?}");
        assert_eq!(err.to_string(), "token endpoint answered 503");
        assert!(err.is_retryable());

        let (addr, _requests) = endpoint(json("400 Bad Request", "")).await;
        let err = outbound().fetch_token(&config(addr, CredentialsIn::Header), TIMEOUT).await.expect_err("400");
        assert!(matches!(err, OAuthError::Endpoint { status: 400, error: None }), "{err:?}");
    }

    #[tokio::test]
    async fn nonsense_is_malformed() {
        let cases = [
            (json("200 OK", "this is not json {"), "the body is not JSON (line 1, column 2)"),
            (json("200 OK", r#"{"token_type":"bearer"}"#), "the field `access_token` is missing"),
            (
                json("200 OK", r#"{"access_token":"t","token_type":"bearer","expires_in":"soon"}"#),
                "the field `expires_in` has the wrong type or value",
            ),
            (json("200 OK", ""), "the body is empty"),
            (response("200 OK", "text/html; charset=utf-8", "<html/>"), "content type text/html, not application/json"),
        ];
        for (reply, expected) in cases {
            let (addr, _requests) = endpoint(reply).await;
            let err = outbound().fetch_token(&config(addr, CredentialsIn::Header), TIMEOUT).await.expect_err("bad");
            match &err {
                OAuthError::Malformed(message) => assert_eq!(message, expected),
                other => panic!("expected Malformed({expected}), got {other:?}"),
            }
            assert!(!err.is_retryable());
        }
    }

    #[tokio::test]
    async fn loopback_endpoint_refused_without_allow() {
        let (addr, _requests) = endpoint(json("200 OK", r#"{"access_token":"t","token_type":"bearer"}"#)).await;
        let guarded = Outbound::new(ClientConfig::default()).expect("client");
        let err = guarded.fetch_token(&config(addr, CredentialsIn::Header), TIMEOUT).await.expect_err("refused");
        assert!(matches!(&err, OAuthError::Refused(m) if m.contains("loopback")), "{err:?}");

        let bad = OAuthConfig { token_url: "not a url".into(), ..config(addr, CredentialsIn::Header) };
        let err = outbound().fetch_token(&bad, TIMEOUT).await.expect_err("invalid");
        assert!(matches!(&err, OAuthError::Refused(m) if m.starts_with("invalid token URL")), "{err:?}");

        let ftp = OAuthConfig { token_url: format!("ftp://{addr}/token"), ..config(addr, CredentialsIn::Header) };
        let err = outbound().fetch_token(&ftp, TIMEOUT).await.expect_err("scheme");
        assert!(matches!(&err, OAuthError::Refused(m) if m.contains("unsupported scheme")), "{err:?}");
    }

    #[tokio::test]
    async fn silent_endpoint_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let err = outbound()
            .fetch_token(&config(addr, CredentialsIn::Header), Duration::from_millis(200))
            .await
            .expect_err("timeout");
        assert!(matches!(err, OAuthError::Transport(SendError::Timeout(_))), "{err:?}");
        assert_eq!(err.to_string(), "token request failed: timed out after 200ms");
        assert!(err.is_retryable());
    }

    #[tokio::test]
    async fn no_error_reveals_secrets() {
        let basic = STANDARD.encode(format!("hookline+client:{}", "PLANTED-s3cr3t%2Fwith%2Bodd%26chars%3D"));
        let forbidden = [SECRET, "PLANTED", basic.as_str(), "leaked-token", "echo-description"];
        let replies = [
            // The endpoint echoes the secret in every free-text place it has.
            json(
                "401 Unauthorized",
                &format!(r#"{{"error":"invalid_client","error_description":"echo-description {SECRET}"}}"#),
            ),
            json("400 Bad Request", &format!(r#"{{"error":"{SECRET}"}}"#)),
            json("400 Bad Request", r#"{"error":"PLANTED-s3cr3t"}"#),
            json("400 Bad Request", "PLANTED not json"),
            json(
                "200 OK",
                &format!("{{\"access_token\":\"leaked-token\",\"token_type\":\"bearer\",\"expires_in\":\"{SECRET}\"}}"),
            ),
            json("200 OK", r#"{"access_token":"leaked-token","token_type":"bearer","expires_in":-1}"#),
            json("200 OK", r#"{"access_token":["leaked-token"],"token_type":"bearer"}"#),
            json("200 OK", r#"{"leaked-token":1, "PLANTED": 2}"#),
            json("200 OK", "leaked-token PLANTED"),
            response("200 OK", &format!("text/{SECRET}"), "x"),
        ];
        let mut errors = Vec::new();
        for reply in replies {
            let (addr, _requests) = endpoint(reply).await;
            for credentials_in in [CredentialsIn::Header, CredentialsIn::Body] {
                errors.push(outbound().fetch_token(&config(addr, credentials_in), TIMEOUT).await.expect_err("error"));
            }
        }
        // Nobody listening, a refused target, a URL carrying the secret.
        let closed = {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            listener.local_addr().expect("addr")
        };
        errors.push(outbound().fetch_token(&config(closed, CredentialsIn::Header), TIMEOUT).await.expect_err("closed"));
        let guarded = Outbound::new(ClientConfig::default()).expect("client");
        errors.push(guarded.fetch_token(&config(closed, CredentialsIn::Body), TIMEOUT).await.expect_err("refused"));
        for url in [format!("http://user:PLANTED-pw@{closed}/t?token=leaked-token"), "http://PLANTED host/".to_owned()]
        {
            let cfg = OAuthConfig { token_url: url, ..config(closed, CredentialsIn::Header) };
            errors.push(outbound().fetch_token(&cfg, TIMEOUT).await.expect_err("bad url"));
        }

        assert_eq!(errors.len(), 24);
        for error in &errors {
            let text = format!("{error} | {error:?}");
            for secret in forbidden {
                assert!(!text.contains(secret), "{secret:?} leaked in {text}");
            }
        }
        // The echoed error codes were dropped, the clean one kept.
        assert!(
            errors.iter().any(|e| matches!(e, OAuthError::Endpoint { error: Some(c), .. } if c == "invalid_client"))
        );

        let cfg = config(closed, CredentialsIn::Header);
        let token = Token { access_token: "leaked-token".into(), expires_in: None, token_type: "Bearer".into() };
        for text in [format!("{cfg:?}"), format!("{token:?}")] {
            assert!(!text.contains(SECRET) && !text.contains("leaked-token") && text.contains("***"), "{text}");
        }
    }

    #[test]
    fn fetch_token_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let outbound = outbound();
        let cfg = config("127.0.0.1:1".parse().expect("addr"), CredentialsIn::Header);
        let future = outbound.fetch_token(&cfg, TIMEOUT);
        assert_send(&future);
    }
}
