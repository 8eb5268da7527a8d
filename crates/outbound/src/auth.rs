//! Authentication headers and the redaction of secrets from headers shown in logs and
//! attempt records.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// The replacement for a secret header value.
pub const REDACTED: &str = "***";

/// Header names whose values are always secret.
const ALWAYS_SECRET: &[&str] = &["authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"];

/// The `Authorization` header for HTTP Basic authentication (RFC 7617, UTF-8 credentials).
pub fn basic_auth(username: &str, password: &str) -> (String, String) {
    let credentials = STANDARD.encode(format!("{username}:{password}"));
    ("Authorization".to_owned(), format!("Basic {credentials}"))
}

/// Copies headers for logs and attempt records with secret values replaced by `"***"`.
///
/// Secret are the values of `Authorization`, `Proxy-Authorization`, `Cookie`, `Set-Cookie`,
/// `X-Api-Key`, of any header named in `secret_names` (case-insensitive), and of any header
/// whose value contains one of the non-empty `secret_values`. Names and order are kept.
pub fn redact_headers(
    headers: &[(String, String)],
    secret_names: &[&str],
    secret_values: &[&str],
) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| (name.clone(), shown_header_value(name, value, secret_names, secret_values).to_owned()))
        .collect()
}

/// The value of header `name: value` as [`redact_headers`] shows it: `value`, or
/// [`REDACTED`] when it is secret.
pub fn shown_header_value<'a, N: AsRef<str>, V: AsRef<str>>(
    name: &str,
    value: &'a str,
    secret_names: &[N],
    secret_values: &[V],
) -> &'a str {
    let secret = ALWAYS_SECRET.iter().any(|s| s.eq_ignore_ascii_case(name))
        || secret_names.iter().any(|s| s.as_ref().eq_ignore_ascii_case(name))
        || secret_values.iter().map(AsRef::as_ref).any(|s| !s.is_empty() && value.contains(s));
    if secret { REDACTED } else { value }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    #[test]
    fn basic_auth_batman() {
        assert_eq!(basic_auth("batman", "robin"), ("Authorization".to_string(), "Basic YmF0bWFuOnJvYmlu".to_string()));
    }

    /// Input headers, secret names, secret values, expected output.
    type Case = (Vec<(String, String)>, &'static [&'static str], &'static [&'static str], Vec<(String, String)>);

    #[test]
    fn redact_headers_table() {
        let cases: Vec<Case> = vec![
            (
                h(&[("Authorization", "Bearer abc"), ("Content-Type", "application/json")]),
                &[],
                &[],
                h(&[("Authorization", "***"), ("Content-Type", "application/json")]),
            ),
            (
                h(&[
                    ("proxy-authorization", "Basic xyz"),
                    ("COOKIE", "session=1"),
                    ("Set-Cookie", "a=b"),
                    ("x-api-key", "k"),
                ]),
                &[],
                &[],
                h(&[("proxy-authorization", "***"), ("COOKIE", "***"), ("Set-Cookie", "***"), ("x-api-key", "***")]),
            ),
            (
                h(&[("X-Signature", "sha256=abc"), ("X-Other", "fine")]),
                &["x-signature"],
                &[],
                h(&[("X-Signature", "***"), ("X-Other", "fine")]),
            ),
            (
                h(&[("X-Token-Wrapped", "prefix-s3cr3t-suffix"), ("X-Plain", "plain")]),
                &[],
                &["s3cr3t"],
                h(&[("X-Token-Wrapped", "***"), ("X-Plain", "plain")]),
            ),
            // Empty secret values match nothing.
            (h(&[("X-Plain", "plain")]), &[], &[""], h(&[("X-Plain", "plain")])),
            (Vec::new(), &["a"], &["b"], Vec::new()),
        ];
        for (input, names, values, expected) in cases {
            assert_eq!(redact_headers(&input, names, values), expected, "{input:?}");
        }
    }
}
