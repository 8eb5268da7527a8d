//! Request URLs: what is checked when a definition is saved, and how values rendered into a
//! URL template are made safe for the part of the URL they land in.
//!
//! A template's output arrives with every rendered value between [`VALUE_START`] and
//! [`VALUE_END`] (the engine's formatter puts them there); [`finish`] reads the URL's
//! structure from the template's own text only and percent-encodes each value for the path,
//! query or fragment it sits in. So no record value can add a path segment, a query
//! parameter or a fragment, and none can set the scheme, the userinfo, the host or the port,
//! unless the definition opts in to a host taken from the record (`url_host_from_record`),
//! where the value must still be a plain host name.

use std::fmt::Write as _;

/// Marks the start of a rendered value in a URL template's output (a private-use character).
pub const VALUE_START: char = '\u{E000}';
/// Marks the end of a rendered value.
pub const VALUE_END: char = '\u{E001}';

/// Where in a URL a piece of text falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Scheme,
    /// Right after `scheme:`, where `//` must follow.
    Slashes(u8),
    Authority,
    /// Inside `[…]`, an IPv6 address.
    Bracketed,
    /// After the host's `:`.
    Port,
    Path,
    Query,
    Fragment,
}

/// Checks a URL or URL template as saved: `http` or `https`, a host, no userinfo. A template
/// must write its scheme and host out, up to the first `/`, `?` or `#`, unless the host is
/// taken from a record by choice (`host_from_record`), when at least `scheme://` must be.
pub fn check(src: &str, host_from_record: bool) -> Result<(), String> {
    let src = src.trim();
    let tag = ["{{", "{%", "{#"].iter().filter_map(|t| src.find(t)).min();
    let fixed = &src[..tag.unwrap_or(src.len())];
    let Some((scheme, rest)) = fixed.split_once("://") else {
        return Err(match tag {
            Some(_) => "must start with http:// or https:// written out, before any template tag".into(),
            None => format!("`{}` is not an absolute URL: write http:// or https:// and a host", shorten(src)),
        });
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(format!("the scheme must be http or https, not `{}`", shorten(scheme)));
    }
    let end = rest.find(['/', '?', '#']);
    let authority = &rest[..end.unwrap_or(rest.len())];
    if authority.contains('@') {
        return Err("must not hold a user name or password (user:pass@host): use `auth: {\"type\": \"basic\"}` \
                    for Basic authentication"
            .into());
    }
    let host_complete = end.is_some() || tag.is_none();
    if !host_complete {
        let after_host = authority.rsplit_once(']').map_or(authority, |(_, rest)| rest);
        if after_host.contains(':') {
            return Err("the port must be written out in the URL, not rendered from a template".into());
        }
        if host_from_record {
            return Ok(());
        }
        return Err("the host must be written out in the URL, not rendered from a template: set \
                    `request.url_host_from_record: true` to take it from the record (it is still checked \
                    by the target guard)"
            .into());
    }
    check_authority(authority)
}

/// Checks `host[:port]` as written in a definition.
fn check_authority(authority: &str) -> Result<(), String> {
    if authority.is_empty() {
        return Err("has no host: write http://host/… or https://host/…".into());
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (addr, after) = v6.split_once(']').ok_or("has an unclosed `[` in its host")?;
            if addr.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!("`[{}]` is not an IPv6 address", shorten(addr)));
            }
            if !after.is_empty() && !after.starts_with(':') {
                return Err(format!("`{}` after the IPv6 address is not a port", shorten(after)));
            }
            (None, after.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(authority), None),
        },
    };
    if let Some(host) = host
        && !valid_host(host)
    {
        return Err(format!("`{}` is not a valid host name", shorten(host)));
    }
    if let Some(port) = port
        && !port.parse::<u16>().is_ok_and(|p| p > 0)
    {
        return Err(format!("`{}` is not a valid port (1 to 65535)", shorten(port)));
    }
    Ok(())
}

/// A DNS name or IPv4 address: labels of letters, digits and hyphens.
fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').enumerate().all(|(i, label)| {
            // A trailing dot (an absolute name) leaves one empty label at the end.
            (label.is_empty() && i > 0 && host.ends_with('.') && i == host.split('.').count() - 1)
                || (label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        })
}

fn shorten(s: &str) -> String {
    match s.char_indices().nth(60) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Characters a value keeps as they are: RFC 3986's unreserved set. Everything else is
/// percent-encoded as UTF-8, so a value cannot end a path segment, start a query parameter
/// or a fragment.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

/// `value` percent-encoded as a rendered URL value is (everything but RFC 3986's unreserved
/// characters).
pub fn encoded(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    encode_into(&mut out, value);
    out
}

/// Percent-encodes `value`, keeping the escapes it already holds (a value from
/// `| urlencode` is not encoded twice), except those of `/`, `\`, `?`, `#`, `.` and `%`:
/// a target that decodes them before routing would read them as structure.
fn encode_into(out: &mut String, value: &str) {
    let bytes = value.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    for (i, &b) in bytes.iter().enumerate() {
        let escaped = match (b, bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => Some((h * 16 + l) as u8),
            _ => None,
        };
        let escape = escaped.is_some_and(|c| !b"/\\?#.%".contains(&c));
        if unreserved(b) || escape {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// Turns a URL template's output (values between the markers) into the URL to send:
/// static text is kept, each value percent-encoded for its part. Fails, naming the reason
/// but never the value, when a value lands in the scheme, the userinfo, the host or the
/// port (the host only with `host_from_record`, and then it must be a plain host name), or
/// when the result is not an http(s) URL with a host.
pub fn finish(rendered: &str, host_from_record: bool) -> Result<String, String> {
    let rendered = rendered.trim();
    let mut out = String::with_capacity(rendered.len() + 16);
    let mut part = Part::Scheme;
    let mut value: Option<String> = None;
    for c in rendered.chars() {
        match (c, &mut value) {
            (VALUE_START, None) => value = Some(String::new()),
            (VALUE_END, Some(_)) => {
                let v = value.take().unwrap_or_default();
                put_value(&mut out, part, &v, host_from_record)?;
            }
            // A marker out of place is not the template's text: drop it.
            (VALUE_START | VALUE_END, _) => {}
            (c, Some(v)) => v.push(c),
            (c, None) => {
                part = next_part(part, c)?;
                out.push(c);
            }
        }
    }
    if let Some(v) = value {
        put_value(&mut out, part, &v, host_from_record)?;
    }
    // The result, as sent, must still be what the definition promised.
    check_sent(&out)?;
    Ok(out)
}

/// The part after static character `c`, read in `part`.
fn next_part(part: Part, c: char) -> Result<Part, String> {
    Ok(match (part, c) {
        (Part::Scheme, ':') => Part::Slashes(0),
        (Part::Scheme, _) => Part::Scheme,
        (Part::Slashes(n), '/') if n < 1 => Part::Slashes(n + 1),
        (Part::Slashes(_), '/') => Part::Authority,
        (Part::Slashes(_), _) => return Err("must start with http:// or https://".into()),
        (Part::Authority, '[') => Part::Bracketed,
        (Part::Bracketed, ']') => Part::Authority,
        (Part::Bracketed, _) => Part::Bracketed,
        (Part::Authority, ':') => Part::Port,
        (Part::Authority | Part::Port, '/') => Part::Path,
        (Part::Authority | Part::Port, '?') => Part::Query,
        (Part::Authority | Part::Port, '#') => Part::Fragment,
        (Part::Authority | Part::Port, '@') => {
            return Err("must not hold a user name or password (user:pass@host)".into());
        }
        (Part::Path, '?') => Part::Query,
        (Part::Path | Part::Query, '#') => Part::Fragment,
        (p, _) => p,
    })
}

fn put_value(out: &mut String, part: Part, value: &str, host_from_record: bool) -> Result<(), String> {
    match part {
        Part::Scheme | Part::Slashes(_) => Err("a rendered value cannot set the URL's scheme".into()),
        Part::Authority if !host_from_record => Err("a rendered value cannot set the URL's host or port: set \
                                                  `request.url_host_from_record: true` to allow a host from the \
                                                  record"
            .into()),
        Part::Port | Part::Bracketed => Err("a rendered value cannot set the URL's port".into()),
        Part::Authority => {
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b)) {
                return Err("a rendered host must be letters, digits, `-` and `.` only".into());
            }
            out.push_str(&value.to_ascii_lowercase());
            Ok(())
        }
        Part::Path if matches!(percent_decoded(value).as_str(), "." | "..") => {
            Err("a rendered path value cannot be `.` or `..`".into())
        }
        Part::Path | Part::Query | Part::Fragment => {
            encode_into(out, value);
            Ok(())
        }
    }
}

/// The URL about to be sent: http(s), a valid host (and port), no userinfo.
fn check_sent(url: &str) -> Result<(), String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("is not an absolute http(s) URL".into());
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err("the scheme must be http or https".into());
    }
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    check_authority(authority)
}

/// `scheme://host[:port]` of a URL or URL template as written, lowercased, when its
/// template text writes it out in full.
pub fn origin(src: &str) -> Option<String> {
    let src = src.trim();
    let fixed = &src[..["{{", "{%", "{#"].iter().filter_map(|t| src.find(t)).min().unwrap_or(src.len())];
    let (scheme, rest) = fixed.split_once("://")?;
    let end = rest.find(['/', '?', '#']);
    if end.is_none() && fixed.len() < src.len() {
        return None;
    }
    Some(format!("{scheme}://{}", &rest[..end.unwrap_or(rest.len())]).to_ascii_lowercase())
}

/// The host (without port) a finished URL goes to, lowercased.
pub fn host_of(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let host = match authority.strip_prefix('[') {
        Some(v6) => format!("[{}]", v6.split_once(']')?.0),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h).to_string(),
    };
    Some(host.to_ascii_lowercase())
}

/// Words of a query parameter's name that make its value a credential. A name's word
/// matches when it equals one of these, or, for the longer ones (and `key`), when it
/// ends with it (or for the longer ones starts with it: `apikey`, `accesstoken`, `sessionid`).
const CREDENTIAL_WORDS: &[&str] = &[
    "key",
    "token",
    "secret",
    "password",
    "passwd",
    "pwd",
    "pass",
    "auth",
    "authorization",
    "sig",
    "signature",
    "credential",
    "credentials",
    "session",
    "code",
    "jwt",
    "bearer",
    "apikey",
    "cookie",
];

/// Whether a query parameter named `name` carries a credential (`api_key`, `access_token`,
/// `X-Amz-Signature`, `client_secret`, `sessionid`, …).
pub fn is_credential_param(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.split(|c: char| !c.is_ascii_alphanumeric()).filter(|w| !w.is_empty()).any(|w| {
        CREDENTIAL_WORDS
            .iter()
            .any(|c| w == *c || w.ends_with(c) && (c.len() >= 5 || *c == "key") || c.len() >= 5 && w.starts_with(c))
    })
}

/// A URL as shown in attempt records, spans and logs: no userinfo, and the values of query
/// parameters with credential-like names replaced by `***`.
pub fn redact(url: &str) -> String {
    let (before_fragment, fragment) = match url.find('#') {
        Some(i) => (&url[..i], &url[i..]),
        None => (url, ""),
    };
    let (base, query) = match before_fragment.find('?') {
        Some(i) => (&before_fragment[..i], Some(&before_fragment[i + 1..])),
        None => (before_fragment, None),
    };
    let mut out = String::with_capacity(url.len());
    match base.find("://") {
        Some(s) => {
            let rest = &base[s + 3..];
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let authority = &rest[..authority_end];
            out.push_str(&base[..s + 3]);
            out.push_str(authority.rsplit_once('@').map_or(authority, |(_, host)| host));
            out.push_str(&rest[authority_end..]);
        }
        None => out.push_str(base),
    }
    if let Some(query) = query {
        out.push('?');
        out.push_str(&redact_pairs(query));
    }
    // A fragment may carry parameters too (`#access_token=…`).
    match fragment.strip_prefix('#') {
        Some(params) if params.contains('=') => {
            out.push('#');
            out.push_str(&redact_pairs(params));
        }
        _ => out.push_str(fragment),
    }
    out
}

/// `a=1&api_key=2` with the values of credential-like names as `***`.
fn redact_pairs(pairs: &str) -> String {
    let mut out = String::with_capacity(pairs.len());
    for (i, pair) in pairs.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((name, _)) if is_credential_param(&percent_decoded(name)) => {
                out.push_str(name);
                out.push_str("=***");
            }
            _ => out.push_str(pair),
        }
    }
    out
}

/// The values of `url`'s query parameters with credential-like names, as written and
/// decoded, so they can be masked wherever the exchange is recorded.
pub fn credential_values(url: &str) -> Vec<String> {
    let before_fragment = url.split('#').next().unwrap_or_default();
    let Some((_, query)) = before_fragment.split_once('?') else { return Vec::new() };
    let mut out = Vec::new();
    for (name, value) in query.split('&').filter_map(|pair| pair.split_once('=')) {
        if !value.is_empty() && is_credential_param(&percent_decoded(name)) {
            out.push(value.to_string());
            let decoded = percent_decoded(value);
            if decoded != value {
                out.push(decoded);
            }
        }
    }
    out
}

/// `name` with its percent-escapes (and `+` as a space) decoded, lossily: for matching
/// parameter names, and for reading back what [`encoded`] wrote.
pub fn percent_decoded(name: &str) -> String {
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> String {
        format!("{VALUE_START}{s}{VALUE_END}")
    }

    #[test]
    fn saved_urls_are_http_with_a_host_and_no_userinfo() {
        for ok in [
            "https://api.example.com/x",
            "http://127.0.0.1:8080",
            "https://[::1]:443/a",
            "https://h/{{ record.id }}",
            "HTTPS://Example.COM./x?y={{ record.id }}",
        ] {
            assert_eq!(check(ok, false), Ok(()), "{ok}");
        }
        for (bad, says) in [
            ("ftp://example.com/x", "http or https"),
            ("example.com/x", "not an absolute URL"),
            ("http://", "has no host"),
            ("file:///etc/passwd", "http or https"),
            ("https:///x", "has no host"),
            ("http://user:pass@host/", "auth"),
            ("http://host:99999/", "not a valid port"),
            ("http://host:0/", "not a valid port"),
            ("http://ho st/", "not a valid host"),
            ("http://-a.com/", "not a valid host"),
            ("{{ record.url }}", "written out"),
            ("https://{{ record.region }}.api.example.com/", "url_host_from_record"),
            ("https://api.example.com:{{ record.port }}/", "port must be written out"),
            ("https://{{ a }}@h/", "url_host_from_record"),
            ("https://[::1]junk/", "not a port"),
            ("https://h@{{ a }}/", "user name or password"),
        ] {
            let err = check(bad, false).expect_err(bad);
            assert!(err.contains(says), "{bad}: {err}");
        }
        assert_eq!(check("https://{{ record.region }}.api.example.com/", true), Ok(()));
        assert!(check("https://api.example.com:{{ record.port }}/", true).unwrap_err().contains("port"));
        assert!(check("{{ record.url }}", true).is_err());
    }

    #[test]
    fn values_are_encoded_for_the_part_they_land_in() {
        let url = format!("https://h/a/{}/b?q={}&r=1#{}", v("x/../y?z#w"), v("a&b=c d+%"), v("é#"));
        assert_eq!(
            finish(&url, false).unwrap(),
            "https://h/a/x%2F..%2Fy%3Fz%23w/b?q=a%26b%3Dc%20d%2B%25&r=1#%C3%A9%23"
        );
        // A value cannot be a dot segment, even encoded; escapes it holds are kept.
        assert!(finish(&format!("https://h/a/{}/b", v("..")), false).is_err());
        assert!(finish(&format!("https://h/a/{}/b", v("%2e%2E")), false).is_err());
        assert_eq!(finish(&format!("https://h/?q={}", v("a%20b%zz")), false).unwrap(), "https://h/?q=a%20b%25zz");
        assert_eq!(
            finish(&format!("https://h/{}", v("..%2F..%2fadmin")), false).unwrap(),
            "https://h/..%252F..%252fadmin"
        );
    }

    #[test]
    fn no_value_can_move_the_request_to_another_host() {
        let template = |value: &str| format!("https://{}.api.example.com/x", v(value));
        assert!(finish(&template("eu"), false).unwrap_err().contains("url_host_from_record"));
        assert_eq!(finish(&template("EU"), true).unwrap(), "https://eu.api.example.com/x");
        for evil in ["evil.example#", "evil.example/", "a@evil", "evil:1", "", "a b", "evil.example?"] {
            assert!(finish(&template(evil), true).is_err(), "{evil:?}");
        }
        assert!(finish(&format!("{}://h/", v("https")), true).is_err());
        assert!(finish(&format!("https://h:{}/", v("1")), false).is_err());
        assert!(finish(&format!("https://{}:{}/", v("h"), v("6379")), true).unwrap_err().contains("port"));
        assert!(finish(&format!("https://[::1{}]/", v("1")), true).is_err());
        // Markers inside a value (or stray ones) are never taken as structure.
        let stray = format!("https://h/{VALUE_END}x{}", v(&format!("a{VALUE_START}b")));
        assert_eq!(finish(&stray, false).unwrap(), "https://h/xab");
    }

    #[test]
    fn credential_query_parameters_and_userinfo_are_redacted() {
        assert_eq!(
            redact("https://u:p@h/x?api_key=s1&q=ok&access_token=s2&X-Amz-Signature=s3&page=2#f"),
            "https://h/x?api_key=***&q=ok&access_token=***&X-Amz-Signature=***&page=2#f"
        );
        assert_eq!(redact("https://h/a@b?apiKey=1"), "https://h/a@b?apiKey=***");
        assert_eq!(redact("https://h/cb#access_token=t&state=s"), "https://h/cb#access_token=***&state=s");
        assert_eq!(redact("https://h/?%61pi_key=1&password"), "https://h/?%61pi_key=***&password");
        for name in ["key", "apikey", "client_secret", "sig", "Token", "sessionid", "auth", "code"] {
            assert!(is_credential_param(name), "{name}");
        }
        assert_eq!(credential_values("https://h/?api_key=a%2Fb&q=1&token=t#x"), ["a%2Fb", "a/b", "t"]);
        for name in ["q", "page", "region", "id", "limit", "country", "keyword_list"] {
            assert!(!is_credential_param(name), "{name}");
        }
    }
}
