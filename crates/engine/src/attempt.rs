//! What an attempt keeps of its exchange: the request as sent and the response as received,
//! bodies cut at [`MAX_RECORDED_BODY`], secret header values masked. Pure, so the dispatcher
//! and the benchmarks build records the same way.

use hookline_outbound::{OutboundResponse, shown_header_value};
use hookline_proto::{Header, HttpRequest, HttpResponse};

use crate::render::BuiltRequest;

/// Bodies kept in attempt records are cut at this size.
pub const MAX_RECORDED_BODY: usize = 64 * 1024;

/// Header pairs as the attempt record stores them.
pub fn headers(list: &[(String, String)]) -> Vec<Header> {
    list.iter().map(|(name, value)| Header { name: name.clone(), value: value.clone() }).collect()
}

/// The first [`MAX_RECORDED_BODY`] bytes of `body`, and whether it was longer.
pub fn cut(mut body: Vec<u8>) -> (Vec<u8>, bool) {
    let longer = body.len() > MAX_RECORDED_BODY;
    body.truncate(MAX_RECORDED_BODY);
    (body, longer)
}

/// The request `req` as recorded: URL without userinfo or credential parameters, secret
/// headers masked, secret values (a script may put one in the body) replaced by `***`.
pub fn request_record(req: &BuiltRequest) -> HttpRequest {
    // Scrubbed whole, then cut: a secret across the cut is not left half shown.
    let (body, body_truncated) = cut(scrub(req.body.to_vec(), &req.secret_values));
    HttpRequest {
        method: req.method.clone(),
        url: req.display_url().to_owned(),
        headers: masked(&req.headers, req),
        body,
        body_truncated,
    }
}

/// The response to `req` as recorded: every secret value `req` carried masked in its headers
/// and replaced by `***` in its body (a target that echoes the request shows them).
pub fn response_record(resp: &OutboundResponse, req: &BuiltRequest) -> HttpResponse {
    let (body, truncated) = cut(scrub(resp.body.clone(), &req.secret_values));
    HttpResponse {
        status: u32::from(resp.status),
        headers: masked(&resp.headers, req),
        body,
        body_truncated: truncated || resp.body_truncated,
    }
}

/// `body` with every occurrence of each of `secrets` (longest first) replaced by `***`.
pub fn scrub(body: Vec<u8>, secrets: &[String]) -> Vec<u8> {
    let mut body = body;
    for secret in secrets.iter().map(String::as_bytes).filter(|s| !s.is_empty()) {
        if !body.windows(secret.len()).any(|w| w == secret) {
            continue;
        }
        let mut out = Vec::with_capacity(body.len());
        let mut i = 0;
        while i < body.len() {
            if body[i..].starts_with(secret) {
                out.extend_from_slice(b"***");
                i += secret.len();
            } else {
                out.push(body[i]);
                i += 1;
            }
        }
        body = out;
    }
    body
}

fn masked(list: &[(String, String)], req: &BuiltRequest) -> Vec<Header> {
    list.iter()
        .map(|(name, value)| Header {
            name: name.clone(),
            value: shown_header_value(name, value, &req.secret_headers, &req.secret_values).to_owned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{MAX_RECORDED_BODY, cut, scrub};

    #[test]
    fn secrets_are_scrubbed_from_bodies() {
        let secrets = vec!["dG9rZW4=".to_string(), "tok".to_string()];
        let body = br#"{"auth":"Basic dG9rZW4=","t":"tok tok","x":"to"}"#.to_vec();
        assert_eq!(scrub(body, &secrets), br#"{"auth":"Basic ***","t":"*** ***","x":"to"}"#.to_vec());
    }

    #[test]
    fn recorded_bodies_are_cut() {
        let (b, t) = cut(vec![b'x'; MAX_RECORDED_BODY + 1]);
        assert_eq!(b.len(), MAX_RECORDED_BODY);
        assert!(t);
        assert_eq!(cut(b"ok".to_vec()), (b"ok".to_vec(), false));
    }
}
