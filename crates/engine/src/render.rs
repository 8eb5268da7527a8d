//! Builds the HTTP request of one job: URL, headers and body from templates or the body
//! script, then authentication. Secrets met on the way are returned for redaction.
//!
//! Templates render under minijinja's fuel ([`TEMPLATE_FUEL`] steps) and an output limit
//! ([`TEMPLATE_OUTPUT_LIMIT`]): a template that loops for ever runs out of fuel and fails its
//! attempt, naming the limit. They are first tried inline under a small fuel and output
//! ([`QUICK_TEMPLATE_FUEL`], a few hundred microseconds at most); one that needs more is
//! rendered again on the script pool's threads, so no async thread is held longer.

use std::sync::Arc;

use hookline_model::url::{VALUE_END, VALUE_START};
use hookline_model::{AuthDef, FieldError};
use hookline_proto::Job;
use hookline_script::{ScriptCall, ScriptKind, ScriptOutput, ScriptPool};
use serde_json::{Value, json};
use tracing::Instrument;

use crate::EngineContext;
use crate::catalog::{
    BODY_TEMPLATE, CompiledWebhook, TEMPLATE_FUEL, TEMPLATE_OUTPUT_LIMIT, URL_TEMPLATE, header_template,
};

/// A request ready to send. `Debug` shows its method and URL as recorded, nothing secret.
#[derive(Clone)]
pub struct BuiltRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// The body: a shared handle, so sending it (again, after a refused token) copies nothing.
    pub body: bytes::Bytes,
    /// Values to mask wherever the request is recorded.
    pub secret_values: Vec<String>,
    /// Header names whose values are secret.
    pub secret_headers: Vec<String>,
    /// The OAuth token used, so a 401 can replace it.
    pub oauth_token: Option<String>,
    /// The URL as [`BuiltRequest::display_url`] shows it, worked out once per request.
    shown_url: String,
}

impl std::fmt::Debug for BuiltRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuiltRequest")
            .field("method", &self.method)
            .field("url", &self.display_url())
            .field("body_bytes", &self.body.len())
            .finish_non_exhaustive()
    }
}

impl BuiltRequest {
    /// The URL as attempts, spans and logs show it: no userinfo, credential-like query
    /// parameters as `***`, and every secret value the request carries (a script may put
    /// one in the path) masked too.
    pub fn display_url(&self) -> &str {
        &self.shown_url
    }

    /// Swaps the bearer token after a refresh.
    pub fn set_bearer(&mut self, token: &str) {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case("authorization"));
        self.headers.push(("Authorization".into(), format!("Bearer {token}")));
        self.secret_values.push(token.to_string());
        self.oauth_token = Some(token.to_string());
        self.shown_url = shown_url(&self.url, &self.secret_values);
    }
}

/// `url` as attempts, spans and logs show it: [`display_url`], with every value of `secrets`
/// masked too.
fn shown_url(url: &str, secrets: &[String]) -> String {
    let shown = display_url(url);
    String::from_utf8(crate::attempt::scrub(shown.into_bytes(), secrets)).unwrap_or_else(|_| display_url(url))
}

/// Which step of building a request failed, and why (never holding a secret value).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{step}: {message}")]
pub struct BuildError {
    pub step: &'static str,
    pub message: String,
    /// Whether a later attempt may succeed (a token endpoint that is down) or not (a
    /// script error).
    pub retryable: bool,
}

fn template_error(step: &'static str, e: minijinja::Error) -> BuildError {
    let message = match e.kind() {
        minijinja::ErrorKind::OutOfFuel => {
            format!("the template ran out of fuel: it took more than its limit of {TEMPLATE_FUEL} steps")
        }
        minijinja::ErrorKind::WriteFailure => {
            format!("the template's output went past its limit of {} MiB", TEMPLATE_OUTPUT_LIMIT / (1024 * 1024))
        }
        _ => e.to_string(),
    };
    BuildError { step, message, retryable: false }
}

/// A writer that refuses to grow past a limit.
struct Limited {
    out: Vec<u8>,
    limit: usize,
}

impl std::io::Write for Limited {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len() + buf.len() > self.limit {
            return Err(std::io::Error::other("template output limit"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// How a template is rendered: inline under the small fuel, or on the pool under the full.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Budget {
    Quick,
    Full,
}

/// Why a render did not produce text.
enum RenderError {
    /// Over the quick budget: render again under the full one.
    TooBig,
    Failed(BuildError),
}

/// Renders template `name` of `wh` under `budget`.
fn render_template(
    wh: &CompiledWebhook,
    name: &str,
    vars: &minijinja::Value,
    step: &'static str,
    budget: Budget,
) -> Result<String, RenderError> {
    let (env, limit) = match budget {
        Budget::Quick => (&wh.quick, crate::catalog::QUICK_TEMPLATE_OUTPUT),
        Budget::Full => (&wh.templates, TEMPLATE_OUTPUT_LIMIT),
    };
    let template = env.get_template(name).map_err(|e| RenderError::Failed(template_error(step, e)))?;
    let mut out = Limited { out: Vec::new(), limit };
    if let Err(e) = template.render_captured_to(vars, &mut out) {
        let over = matches!(e.kind(), minijinja::ErrorKind::OutOfFuel | minijinja::ErrorKind::WriteFailure);
        return Err(if over && budget == Budget::Quick {
            RenderError::TooBig
        } else {
            RenderError::Failed(template_error(step, e))
        });
    }
    String::from_utf8(out.out).map_err(|_| {
        RenderError::Failed(BuildError { step, message: "the template's output is not UTF-8".into(), retryable: false })
    })
}

/// The templated parts of a request.
struct Templated {
    url: String,
    headers: Vec<(String, String)>,
    body: Option<String>,
}

fn render_parts(wh: &CompiledWebhook, vars: &minijinja::Value, budget: Budget) -> Result<Templated, RenderError> {
    let url = match (&wh.url_script, &wh.static_url) {
        (Some(_), _) => String::new(),
        (None, Some(url)) => url.clone(),
        (None, None) => {
            let marked = render_template(wh, URL_TEMPLATE, vars, "url template", budget)?;
            hookline_model::url::finish(&marked, wh.def.request.url_host_from_record).map_err(|message| {
                RenderError::Failed(BuildError {
                    step: "url template",
                    message: format!("the URL {message}"),
                    retryable: false,
                })
            })?
        }
    };
    let mut headers = Vec::with_capacity(wh.def.request.headers.len() + 4);
    for name in wh.def.request.headers.keys() {
        let value = render_template(wh, &header_template(name), vars, "header template", budget)?;
        header_value_ok(name, &value).map_err(RenderError::Failed)?;
        headers.push((name.clone(), value));
    }
    let body = match &wh.def.request.body_template {
        Some(_) if wh.body_script.is_none() => Some(render_template(wh, BODY_TEMPLATE, vars, "body template", budget)?),
        _ => None,
    };
    Ok(Templated { url, headers, body })
}

/// A header value as rendered: no CR, LF or NUL (they would start another header).
fn header_value_ok(name: &str, value: &str) -> Result<(), BuildError> {
    if value.contains(['\r', '\n', '\0']) {
        return Err(BuildError {
            step: "header template",
            message: format!("the value of header {name} contains CR, LF or NUL"),
            retryable: false,
        });
    }
    Ok(())
}

/// Runs one of the webhook's scripts on the pool, with its secrets.
async fn run_script(
    scripts: &ScriptPool,
    wh: &CompiledWebhook,
    kind: ScriptKind,
    source: &Arc<str>,
    entities: &Value,
    step: &'static str,
) -> Result<ScriptOutput, BuildError> {
    let call = ScriptCall::new(kind, source.clone(), entities.clone()).with_secrets(wh.script_secrets.clone());
    let name = match kind {
        ScriptKind::Body => "body",
        ScriptKind::Header => "header",
        ScriptKind::Url => "url",
        ScriptKind::Response => "response",
    };
    let span = tracing::info_span!("script", kind = name);
    // Script errors carry the JS message and line, never a header's value.
    scripts.run(call).instrument(span).await.map_err(|e| BuildError { step, message: e.to_string(), retryable: false })
}

/// Renders the templated parts inline when they are small, else on the script pool.
async fn templated(
    scripts: &ScriptPool,
    wh: &Arc<CompiledWebhook>,
    vars: minijinja::Value,
) -> Result<Templated, BuildError> {
    match render_parts(wh, &vars, Budget::Quick) {
        Ok(t) => return Ok(t),
        Err(RenderError::Failed(e)) => return Err(e),
        Err(RenderError::TooBig) => {}
    }
    let compiled = wh.clone();
    let full = scripts
        .run_blocking(move || render_parts(&compiled, &vars, Budget::Full))
        .await
        .map_err(|e| BuildError { step: "templates", message: e.to_string(), retryable: true })?;
    full.map_err(|e| match e {
        RenderError::Failed(e) => e,
        // The full budget never answers "too big": it fails naming the limit.
        RenderError::TooBig => template_error("templates", minijinja::Error::new(minijinja::ErrorKind::OutOfFuel, "")),
    })
}

/// Checks at save what can be checked before any record exists: renders every template of
/// `wh` once, on the script pool under the full limits, with a record whose fields are all
/// empty. One that runs out of fuel or output then (a loop that does not depend on the
/// record) is refused, naming its field; other render errors depend on the record and are
/// left to the attempt.
pub async fn check_limits(scripts: &ScriptPool, wh: &Arc<CompiledWebhook>) -> Result<(), FieldError> {
    let compiled = wh.clone();
    let checked = scripts
        .run_blocking(move || {
            let record = json!({"id": ""});
            let vars = minijinja::Value::from_serialize(json!({
                "record": record, "records": [record],
                "webhook": {"id": compiled.def.id, "version": compiled.version},
                "job": {"id": "", "attempt": 1},
            }));
            let mut names = vec![(URL_TEMPLATE.to_string(), "request.url".to_string())];
            names.extend(
                compiled.def.request.headers.keys().map(|n| (header_template(n), format!("request.headers.{n}"))),
            );
            if compiled.def.request.body_template.is_some() {
                names.push((BODY_TEMPLATE.to_string(), "request.body_template".to_string()));
            }
            for (name, field) in names {
                if let Err(RenderError::Failed(e)) = render_template(&compiled, &name, &vars, "check", Budget::Full)
                    && (e.message.contains("fuel") || e.message.contains("its limit"))
                {
                    return Err(FieldError::new(field, format!("{} (rendered with an empty record)", e.message)));
                }
            }
            Ok(())
        })
        .await;
    checked.unwrap_or(Ok(()))
}

/// The context templates see: `record` (the first record), `records`, `webhook`, `job`.
fn template_context(wh: &CompiledWebhook, job: &Job, entities: &Value) -> minijinja::Value {
    // The records converted once; `record` shares the first of them.
    let records = minijinja::Value::from_serialize(entities);
    let record = records.get_item_by_index(0).ok().filter(|r| !r.is_undefined()).unwrap_or(minijinja::Value::from(()));
    minijinja::context! {
        record => record,
        records => records,
        webhook => minijinja::context! { id => wh.def.id.as_str(), version => wh.version },
        job => minijinja::context! { id => job.job_id.as_str(), attempt => job.attempts + 1 },
    }
}

/// Renders the request for `job`. Scripts run on the script pool, never on this thread.
/// OAuth tokens come through `ctx`; without one (a dry run) a placeholder stands in.
pub async fn build_request(
    scripts: &ScriptPool,
    ctx: Option<&EngineContext>,
    wh: &Arc<CompiledWebhook>,
    job: &Job,
    entities: &Value,
) -> Result<BuiltRequest, BuildError> {
    let vars = template_context(wh, job, entities);
    let Templated { mut url, mut headers, body: templated_body } = templated(scripts, wh, vars).await?;

    let request = &wh.def.request;
    if let Some(src) = &wh.url_script {
        let step = "url script";
        let ScriptOutput::Url(returned) = run_script(scripts, wh, ScriptKind::Url, src, entities, step).await? else {
            return Err(BuildError { step, message: "returned no URL".into(), retryable: false });
        };
        // Written by the definition's own code, so its host may come from the record; it
        // must still be an http(s) URL with a host, and the target guard checks that host.
        let fixed: String = returned.chars().filter(|c| !matches!(*c, VALUE_START | VALUE_END)).collect();
        url = hookline_model::url::finish(&fixed, true).map_err(|m| BuildError {
            step,
            message: format!("the returned URL {m}"),
            retryable: false,
        })?;
    }
    let mut secret_headers = Vec::new();
    if let Some(src) = &wh.headers_script {
        let step = "headers script";
        if let ScriptOutput::Headers(hs) = run_script(scripts, wh, ScriptKind::Header, src, entities, step).await? {
            for (name, value) in hs {
                // Headers named like credentials are secret (the secrets map's values are
                // masked wherever they appear anyway).
                headers.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
                if hookline_model::url::is_credential_param(&name) {
                    secret_headers.push(name.clone());
                }
                headers.push((name, value));
            }
        }
    }
    let body: Vec<u8> = if let Some(src) = &wh.body_script {
        match run_script(scripts, wh, ScriptKind::Body, src, entities, "body script").await? {
            ScriptOutput::Written(text) => text.into_bytes(),
            _ => Vec::new(),
        }
    } else if let Some(text) = templated_body {
        text.into_bytes()
    } else if let Some(body) = &request.body {
        body.clone().into_bytes()
    } else if matches!(request.method.to_ascii_uppercase().as_str(), "GET" | "DELETE") {
        Vec::new()
    } else {
        // No body defined: the records themselves, so a plain webhook needs no template.
        serde_json::to_vec(&json!({"webhook": wh.def.id, "object": wh.def.object, "records": entities}))
            .unwrap_or_default()
    };

    let mut secret_values = wh.secret_values.clone();
    secret_values.extend(headers.iter().filter(|(n, _)| secret_headers.contains(n)).map(|(_, v)| v.clone()));
    let mut oauth_token = None;
    match &wh.def.auth {
        AuthDef::None => {}
        AuthDef::Oauth2 { .. } => {
            let token = match ctx {
                Some(ctx) => crate::oauth::bearer(ctx, wh, None).await?,
                None => hookline_model::webhook::REDACTED.to_string(),
            };
            headers.push(("Authorization".into(), format!("Bearer {token}")));
            secret_values.push(token.clone());
            oauth_token = Some(token);
        }
        AuthDef::Basic { username, password } => {
            let header = hookline_outbound::basic_auth(username, password);
            // The encoded credentials too: a target that echoes the header shows those.
            if let Some(encoded) = header.1.strip_prefix("Basic ") {
                secret_values.push(encoded.to_string());
            }
            headers.push(header);
            secret_values.push(password.clone());
        }
        AuthDef::Token { header, value } => {
            headers.push((header.clone(), value.clone()));
            secret_headers.push(header.clone());
            secret_values.push(value.clone());
        }
        AuthDef::Script { .. } => {
            let src = wh.header_script.clone().unwrap_or_else(|| "return {};".into());
            if let ScriptOutput::Headers(hs) =
                run_script(scripts, wh, ScriptKind::Header, &src, entities, "auth script").await?
            {
                for (name, value) in hs {
                    secret_headers.push(name.clone());
                    // `Basic <base64>`, `Bearer <token>`: the credential part on its own too.
                    if let Some((_, credential)) = value.split_once(' ') {
                        secret_values.push(credential.to_string());
                    }
                    secret_values.push(value.clone());
                    headers.push((name, value));
                }
            }
        }
    }

    let has = |headers: &[(String, String)], name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    if !body.is_empty() && !has(&headers, "content-type") {
        headers.push(("Content-Type".into(), "application/json".into()));
    }
    // Standard Webhooks: webhook-id (the job's idempotency id, the same on every attempt),
    // webhook-timestamp and, when the webhook has secrets, webhook-signature.
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    headers.extend(hookline_outbound::signature_headers(&wh.signing, &job.job_id, now, &body));
    if !has(&headers, "traceparent") {
        // The attempt's own context, so the target's spans join the record's trace.
        let tp = hookline_telemetry::traceparent_of(&tracing::Span::current())
            .unwrap_or_else(|| crate::trace::child_of(&job.traceparent));
        headers.push(("traceparent".into(), tp));
    }
    // Values too short to mask without masking ordinary text are left out.
    secret_values.retain(|v| v.len() >= MIN_MASKED_SECRET);
    // Credentials in the query string (a target may echo them): by their name only, so
    // a longer floor keeps `?sort_key=name` from masking every `name`.
    secret_values.extend(hookline_model::url::credential_values(&url).into_iter().filter(|v| v.len() >= 6));
    // The forms a secret travels in besides its own: base64 (`btoa`, Basic) and
    // percent-encoded (in a URL).
    let forms: Vec<String> = secret_values
        .iter()
        .flat_map(|v| {
            let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, v);
            let pct = hookline_model::url::encoded(v);
            [b64, pct].into_iter().filter(move |f| f != v)
        })
        .collect();
    secret_values.extend(forms);
    secret_values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    secret_values.dedup();
    Ok(BuiltRequest {
        method: request.method.to_ascii_uppercase(),
        shown_url: shown_url(&url, &secret_values),
        url,
        headers,
        body: body.into(),
        secret_values,
        secret_headers,
        oauth_token,
    })
}

/// Secrets shorter than this are not masked in recorded text (a 2-character value would
/// mask ordinary words).
pub const MIN_MASKED_SECRET: usize = 3;

/// The URL as attempt records, spans and logs show it: no userinfo, credential-like query
/// parameters as `***`.
pub fn display_url(url: &str) -> String {
    hookline_model::url::redact(url)
}

#[cfg(test)]
mod tests {
    use super::display_url;

    #[test]
    fn userinfo_and_credential_parameters_are_dropped() {
        assert_eq!(display_url("https://u:p@host/x?y=1&api_key=k"), "https://host/x?y=1&api_key=***");
        assert_eq!(display_url("https://host/a@b"), "https://host/a@b");
    }
}
