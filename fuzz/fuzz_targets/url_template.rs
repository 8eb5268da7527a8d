//! URL templates (`hookline_model::url`): a template's output, static text and rendered
//! values between `VALUE_START`/`VALUE_END` (stripped of markers, as the engine's formatter
//! does), through `finish`; the same template as written through `check`; `redact` and
//! `host_of` on what comes out. The first byte picks the mode: odd bytes feed the rest as a
//! raw string to every function (nothing may panic), even ones build a template.
//!
//! Properties of `finish(rendered, host_from_record)` when it succeeds (a violation panics):
//! - the URL is `http(s)://` with a host (`host_of` finds one), and its authority is
//!   exactly that host and an optional `:port` (what the target guard reads as the host is
//!   all there is);
//! - no value adds structure: each of `:/?#[]@!$&'()*+,;=` occurs as often in the URL as in
//!   the template's static text;
//! - without `host_from_record`, the URL's scheme and authority (host and port) are the
//!   static text's, byte for byte;
//! - with it, the port is still the static text's (a value may set the host, never the
//!   port: "the host only with `host_from_record`");
//! - `redact` is idempotent and leaves no userinfo;
//! - a template `check` accepts without `host_from_record` never fails in `finish` but for a
//!   value that is `.` or `..` (maybe percent-encoded) in the path, and `origin` of it is
//!   the finished URL's `scheme://host[:port]`, lowercased;
//! - `credential_values` never panics.
//!
//! Regression seeds: `regress-ipv6-trailing` (`https://[::1]x:` was accepted, text after an
//! IPv6 literal's `]` ignored) and `regress-port-from-record` (`https://h:` + value `4` was
//! accepted with `host_from_record`: a record value set the port); both fixed in the model.
#![no_main]

use hookline_model::url::{self, VALUE_END, VALUE_START};
use libfuzzer_sys::arbitrary::{Result as ArbResult, Unstructured};
use libfuzzer_sys::fuzz_target;

const STATIC_PIECES: &[&str] = &[
    "https://", "http://", "HTTPS://", "ftp://", "https:", "//", "/", "?", "#", "&", "=", "@", ":", ".", "..",
    "-", "api.example.com", "h", "127.0.0.1", "[::1]", "[", "]", "8080", ":443", "/v1/", "?q=", "&api_key=",
    "#frag", " ", "%", "%2F", "\\", "x", "{{", "{%", "}}",
];
const VALUES: &[&str] = &[
    "", ".", "..", "x", "EU", "evil.example", "evil.example/", "a@b", "a:1", "8080", "a b", "/", "?", "#", "&",
    "=", "%", "é", "..%2F", "127.0.0.1", "-", "a.b-c",
];

#[derive(Debug)]
enum Piece {
    Static(String),
    Value(String),
}

fn text(u: &mut Unstructured<'_>, pool: &[&str]) -> ArbResult<String> {
    if u.ratio(3, 4)? { Ok(u.choose(pool)?.to_string()) } else { u.arbitrary::<String>() }
}

fn strip_markers(s: &str) -> String {
    s.chars().filter(|c| !matches!(*c, VALUE_START | VALUE_END)).collect()
}

const STRUCTURE: &str = ":/?#[]@!$&'()*+,;=";

/// `scheme://authority` of a URL (up to the first `/`, `?` or `#` after `://`).
fn origin(s: &str) -> Option<&str> {
    let at = s.find("://")?;
    let rest = &s[at + 3..];
    Some(&s[..at + 3 + rest.find(['/', '?', '#']).unwrap_or(rest.len())])
}

fn port(origin: &str) -> Option<&str> {
    let authority = &origin[origin.find("://")? + 3..];
    match authority.rfind(']') {
        Some(i) => authority[i + 1..].strip_prefix(':'),
        None => authority.rsplit_once(':').map(|(_, p)| p),
    }
}

/// The authority of a finished URL is its host (as `host_of` reads it) and maybe `:port`.
fn assert_authority_is_host_and_port(out: &str, context: &dyn Fn() -> String) {
    let origin = origin(out).unwrap_or_else(|| panic!("no origin in {out:?}; {}", context()));
    let authority = origin[origin.find("://").expect("an origin has ://") + 3..].to_ascii_lowercase();
    let host = url::host_of(out).unwrap_or_else(|| panic!("finished URL without a host: {out:?}; {}", context()));
    let rebuilt = match port(origin) {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    assert_eq!(authority, rebuilt, "the authority is more than host_of's host and a port: {out:?}; {}", context());
}

fn raw(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    for hfr in [false, true] {
        let _ = url::check(&s, hfr);
        if let Ok(out) = url::finish(&s, hfr) {
            assert_authority_is_host_and_port(&out, &|| format!("raw {s:?}, host_from_record {hfr}"));
        }
    }
    let once = url::redact(&s);
    assert_eq!(url::redact(&once), once, "redact is not idempotent on {s:?}");
    let _ = url::host_of(&s);
    let _ = url::origin(&s);
    let _ = url::credential_values(&s);
    let _ = url::encoded(&s);
    let _ = url::is_credential_param(&s);
}

fn template(u: &mut Unstructured<'_>) -> ArbResult<()> {
    let host_from_record: bool = u.arbitrary()?;
    let n = u.int_in_range(1..=8)?;
    let mut pieces = Vec::with_capacity(n);
    for _ in 0..n {
        pieces.push(if u.ratio(2, 3)? {
            Piece::Static(strip_markers(&text(u, STATIC_PIECES)?))
        } else {
            Piece::Value(strip_markers(&text(u, VALUES)?))
        });
    }
    // The template as written, and its output as the engine's formatter marks it.
    let mut source = String::new();
    let mut rendered = String::new();
    for p in &pieces {
        match p {
            Piece::Static(s) => {
                source.push_str(s);
                rendered.push_str(s);
            }
            Piece::Value(v) => {
                source.push_str("{{ v }}");
                rendered.push(VALUE_START);
                rendered.push_str(v);
                rendered.push(VALUE_END);
            }
        }
    }
    // What `finish` reads as the template's own text: the trimmed output, values removed.
    let mut static_text = String::new();
    let mut in_value = false;
    for c in rendered.trim().chars() {
        match c {
            VALUE_START => in_value = true,
            VALUE_END => in_value = false,
            c if !in_value => static_text.push(c),
            _ => {}
        }
    }
    let show = || format!("pieces {pieces:?}, host_from_record {host_from_record}");

    let checked = url::check(&source, host_from_record);
    let finished = url::finish(&rendered, host_from_record);
    let statics_are_plain = pieces.iter().all(|p| match p {
        Piece::Static(s) => !s.contains('{'),
        Piece::Value(_) => true,
    });
    if checked.is_ok() && !host_from_record && statics_are_plain {
        // A path value that is `.` or `..`, also percent-encoded, is refused by design.
        let dot_value = pieces.iter().any(|p| {
            matches!(p, Piece::Value(v) if matches!(v.to_ascii_lowercase().replace("%2e", ".").as_str(), "." | ".."))
        });
        if let Err(e) = &finished
            && !dot_value
        {
            panic!("`check` accepted the template {source:?} but `finish` refuses its output: {e}; {}", show());
        }
    }
    let Ok(out) = finished else { return Ok(()) };

    assert_authority_is_host_and_port(&out, &show);
    let scheme = out.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    assert!(matches!(scheme.as_deref(), Some("http" | "https")), "not http(s): {out:?}; {}", show());
    for c in STRUCTURE.chars() {
        let (sent, written) = (out.matches(c).count(), static_text.matches(c).count());
        assert_eq!(sent, written, "a value added `{c}`: {out:?} from static {static_text:?}; {}", show());
    }
    let (sent_origin, static_origin) = (origin(&out), origin(&static_text));
    if host_from_record {
        assert_eq!(
            sent_origin.and_then(port),
            static_origin.and_then(port),
            "a value set the port: {out:?} from static {static_text:?}; {}",
            show()
        );
    } else {
        assert_eq!(sent_origin, static_origin, "a value changed scheme/host/port: {out:?}; {}", show());
        // `origin` of the template as written (what a PUT keeps secrets by) is where it goes.
        if checked.is_ok() && statics_are_plain {
            assert_eq!(
                url::origin(&source),
                sent_origin.map(str::to_ascii_lowercase),
                "origin() of the template differs from where it sends: {out:?}; {}",
                show()
            );
        }
    }
    let shown = url::redact(&out);
    assert_eq!(url::redact(&shown), shown, "redact is not idempotent on {out:?}");
    let shown_origin = origin(&shown).unwrap_or_else(|| panic!("redact lost the origin of {out:?}: {shown:?}"));
    assert!(!shown_origin.contains('@'), "redact left userinfo: {shown:?}");
    let _ = url::credential_values(&out);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((mode, rest)) if mode % 2 == 1 => raw(rest),
        Some((_, rest)) => {
            let _ = template(&mut Unstructured::new(rest));
        }
        None => {}
    }
});
