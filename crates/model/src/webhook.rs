//! Webhook definitions: the JSON (or YAML) a user saves, and its validation against the
//! data objects it names. Field names here are a contract with users' scripts: extend,
//! never rename.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::condition::{self, Condition};
use crate::object::{DataObject, FieldError, valid_name};
use crate::schedule::{Schedule, Select};

/// Shown instead of a secret when a definition is read back.
pub const REDACTED: &str = "***";

/// A webhook as the user defines it. `Debug` shows it as the API does, secrets as `***`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookDef {
    pub id: String,
    /// The data object whose changes fire it.
    pub object: String,
    pub trigger: TriggerDef,
    pub request: RequestDef,
    #[serde(default)]
    pub auth: AuthDef,
    /// JavaScript run on the final attempt's response; its `write()` output is written back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_script: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writeback: Option<WritebackDef>,
    #[serde(default)]
    pub settings: Settings,
    /// Standard Webhooks signatures on every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing: Option<SigningDef>,
    /// Named secret values scripts read as `secrets.NAME`, so credentials need not sit in a
    /// script's source. Sealed at rest, shown as `***`, kept on a PUT of `***`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
}

impl fmt::Debug for WebhookDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = serde_json::to_string(&self.redacted()).map_err(|_| fmt::Error)?;
        write!(f, "WebhookDef {shown}")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerDef {
    #[serde(default)]
    pub on_create: bool,
    #[serde(default)]
    pub on_update: bool,
    /// Labels or keys. On update the webhook fires only when one of them changed value;
    /// empty: any field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
    /// Matching condition, evaluated on the new record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// Cron with seconds (`0 */15 * * * *`): each tick sends the records the condition
    /// matches, instead of or beside the real-time triggers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// IANA time zone the schedule is read in; UTC when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// What a tick sends: records `changed` since the previous tick (the default) or `all`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select: Option<Select>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestDef {
    #[serde(default = "default_method")]
    pub method: String,
    /// A minijinja template over `record` (the first record) and `records`. Rendered values
    /// are percent-encoded for the part of the URL they land in; scheme and host are written
    /// out unless `url_host_from_record` is set. Empty when `url_script` builds the URL.
    #[serde(default)]
    pub url: String,
    /// Lets a template value set the URL's host (it must be a plain host name, and the
    /// target guard still checks it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub url_host_from_record: bool,
    /// JavaScript returning the URL (`return "https://…"`), with the body script's globals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_script: Option<String>,
    /// JavaScript returning `{name: value}` headers, with the body script's globals. Sealed
    /// at rest and shown as `***` like other secrets: header scripts hold credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers_script: Option<String>,
    /// Values are minijinja templates like the URL.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// A literal body, sent as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// A minijinja template rendering the body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_template: Option<String>,
    /// JavaScript building the body with `data.changedEntities` and `write()`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_script: Option<String>,
}

fn default_method() -> String {
    "POST".to_string()
}

/// How requests authenticate. Secrets are write-only through the API; `Debug` hides them.
#[derive(Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum AuthDef {
    #[default]
    None,
    Basic {
        username: String,
        password: String,
    },
    /// A shared token sent in a header, e.g. `X-Api-Key: …` or `Authorization: Bearer …`.
    Token {
        #[serde(default = "default_token_header")]
        header: String,
        value: String,
    },
    /// JavaScript returning `{header: value}`; its output is treated as secret.
    Script {
        script: String,
    },
    /// OAuth 2.0 client credentials: a token is fetched on the first call, shared by every
    /// node, refreshed before it expires and once more when the target answers 401.
    Oauth2 {
        token_url: String,
        client_id: String,
        client_secret: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        audience: Option<String>,
        /// `header` (HTTP Basic, RFC 6749 §2.3.1) or `body` (form parameters).
        #[serde(default)]
        credentials_in: CredentialsIn,
    },
}

/// Where OAuth client credentials go in the token request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CredentialsIn {
    #[default]
    Header,
    Body,
}

/// Standard Webhooks signing: `webhook-signature` with one `v1,` signature per secret, so
/// secrets can be rotated by listing the new one beside the old. `Debug` hides them.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningDef {
    /// `whsec_<base64>` secrets.
    pub secrets: Vec<String>,
}

fn default_token_header() -> String {
    "Authorization".to_string()
}

impl fmt::Debug for AuthDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthDef::None => f.write_str("None"),
            AuthDef::Basic { username, .. } => {
                f.debug_struct("Basic").field("username", username).field("password", &REDACTED).finish()
            }
            AuthDef::Token { header, .. } => {
                f.debug_struct("Token").field("header", header).field("value", &REDACTED).finish()
            }
            AuthDef::Script { .. } => f.debug_struct("Script").field("script", &REDACTED).finish(),
            AuthDef::Oauth2 { token_url, client_id, scope, audience, credentials_in, .. } => f
                .debug_struct("Oauth2")
                .field("token_url", token_url)
                .field("client_id", client_id)
                .field("client_secret", &REDACTED)
                .field("scope", scope)
                .field("audience", audience)
                .field("credentials_in", credentials_in)
                .finish(),
        }
    }
}

impl fmt::Debug for SigningDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningDef").field("secrets", &vec![REDACTED; self.secrets.len()]).finish()
    }
}

impl AuthDef {
    /// The secret of this auth, if it has one (each kind has at most one; a script's
    /// source is sealed like a secret, since header scripts hold credentials).
    fn secret_mut(&mut self) -> Option<&mut String> {
        match self {
            AuthDef::None => None,
            AuthDef::Script { script } => Some(script),
            AuthDef::Basic { password, .. } => Some(password),
            AuthDef::Token { value, .. } => Some(value),
            AuthDef::Oauth2 { client_secret, .. } => Some(client_secret),
        }
    }

    fn same_kind(&self, other: &AuthDef) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

/// How the response script's output becomes a record update (the import mapping).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WritebackDef {
    /// The object to update; default: the webhook's object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    pub key: KeyMap,
    /// Output name → record field key. Output fields not named here keep their names.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
    /// Lets the response script update records of the webhook's object other than the
    /// job's own. Off by default: an output naming another record is refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub any_record: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyMap {
    /// The output field holding the record id.
    pub from: String,
    /// `id`, or the object's id field.
    pub to: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backoff {
    #[default]
    Fixed,
    Exponential,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Records per call; >1 is a bulk call: `data.changedEntities` (and `records` in
    /// templates) hold every record of the call.
    pub max_batch_size: u32,
    pub batch_linger_ms: u64,
    /// In-flight requests for this webhook.
    pub max_concurrency: u32,
    /// `N/s`, `N/m` or `N/h`: calls per period for this webhook, across the cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<String>,
    /// Attempts after the first.
    pub retries: u32,
    pub retry_wait: Dur,
    pub backoff: Backoff,
    /// Cap of the exponential backoff.
    pub max_retry_wait: Dur,
    pub timeout: Dur,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_batch_size: 1,
            batch_linger_ms: 200,
            max_concurrency: 4,
            rate_limit: None,
            retries: 5,
            retry_wait: Dur(Duration::from_secs(10)),
            backoff: Backoff::Fixed,
            max_retry_wait: Dur(Duration::from_secs(3600)),
            timeout: Dur(Duration::from_secs(30)),
        }
    }
}

/// A rate limit: `count` calls per `per`, as written `50/s`, `600/m` or `1000/h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub count: u32,
    pub per: Duration,
}

impl RateLimit {
    /// The spacing of calls at the limit (GCRA's emission interval).
    pub fn interval(&self) -> Duration {
        self.per / self.count.max(1)
    }
}

/// Parses `N/s`, `N/m` or `N/h` (N from 1 to 100000).
pub fn parse_rate_limit(text: &str) -> Result<RateLimit, String> {
    let bad = || format!("`{text}` is not a rate: write N/s, N/m or N/h, e.g. 50/s");
    let (n, unit) = text.trim().split_once('/').ok_or_else(bad)?;
    let count: u32 = n.trim().parse().map_err(|_| bad())?;
    if !(1..=100_000).contains(&count) {
        return Err(format!("`{text}`: the count must be 1 to 100000"));
    }
    let per = match unit.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        _ => return Err(bad()),
    };
    Ok(RateLimit { count, per })
}

/// A duration written as `10s`, `200ms`, `1h 30m` (or a number of milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Ms(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Ms(ms) => Ok(Dur(Duration::from_millis(ms))),
            Raw::Text(t) => humantime::parse_duration(&t)
                .map(Dur)
                .map_err(|e| serde::de::Error::custom(format!("invalid duration `{t}`: {e}"))),
        }
    }
}

/// The parts of a definition the trigger needs, checked against the schema.
#[derive(Debug, Clone)]
pub struct TriggerPlan {
    pub on_create: bool,
    pub on_update: bool,
    /// Field keys; empty: any field.
    pub fields: Vec<String>,
    pub condition: Option<Condition>,
    pub schedule: Option<Schedule>,
}

const MAX_SCRIPT_BYTES: usize = 256 * 1024;
/// Templates and conditions are parsed where they are saved; their size keeps that quick.
const MAX_TEMPLATE_BYTES: usize = 256 * 1024;
const MAX_URL_BYTES: usize = 8 * 1024;
const MAX_HEADER_BYTES: usize = 8 * 1024;
const MAX_CONDITION_BYTES: usize = 16 * 1024;

impl WebhookDef {
    /// Checks the definition being saved against the data objects it names and returns its
    /// trigger plan. Errors name the field at fault (`trigger.condition`, `settings.retries`,
    /// …). Templates and scripts are checked by the engine, which owns their engines.
    pub fn validate<'a>(&self, object_of: impl Fn(&str) -> Option<&'a DataObject>) -> Result<TriggerPlan, FieldError> {
        self.check(object_of, true)
    }

    /// [`validate`](Self::validate) for a definition already stored: the checks added since
    /// definitions were first saved (URL and header rules, sizes, condition types, the
    /// scope of a write-back to another object) apply to saves only, so a definition saved
    /// before them still loads, and its jobs fail alone if they must (an unsafe URL fails
    /// its attempt) instead of holding its object's changes.
    pub fn validate_stored<'a>(
        &self,
        object_of: impl Fn(&str) -> Option<&'a DataObject>,
    ) -> Result<TriggerPlan, FieldError> {
        self.check(object_of, false)
    }

    fn check<'a>(
        &self,
        object_of: impl Fn(&str) -> Option<&'a DataObject>,
        strict: bool,
    ) -> Result<TriggerPlan, FieldError> {
        if !valid_name(&self.id) {
            return Err(FieldError::new("id", "must be 1-128 characters of A-Z a-z 0-9 _ - ."));
        }
        let object = object_of(&self.object)
            .ok_or_else(|| FieldError::new("object", format!("no data object named `{}`", self.object)))?;

        let t = &self.trigger;
        let schedule = match t.schedule.as_deref() {
            Some(expr) => Some(
                Schedule::parse(expr, t.time_zone.as_deref(), t.select.unwrap_or_default())
                    .map_err(|e| FieldError::new(e.field, e.message))?,
            ),
            None if t.time_zone.is_some() => {
                return Err(FieldError::new("trigger.time_zone", "applies to a schedule; set trigger.schedule"));
            }
            None if t.select.is_some() => {
                return Err(FieldError::new("trigger.select", "applies to a schedule; set trigger.schedule"));
            }
            None => None,
        };
        if !t.on_create && !t.on_update && schedule.is_none() {
            return Err(FieldError::new(
                "trigger",
                "the webhook never fires: set on_create and/or on_update, or a schedule",
            ));
        }
        let mut fields = Vec::with_capacity(t.fields.len());
        for (i, name) in t.fields.iter().enumerate() {
            let f = object.resolve(name).ok_or_else(|| {
                FieldError::new(format!("trigger.fields[{i}]"), format!("`{name}` is not a field of `{}`", object.name))
            })?;
            fields.push(f.key.clone());
        }
        if strict && t.condition.as_ref().is_some_and(|c| c.len() > MAX_CONDITION_BYTES) {
            return Err(FieldError::new("trigger.condition", format!("is limited to {MAX_CONDITION_BYTES} bytes")));
        }
        let condition = match t.condition.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(src) => {
                let parsed = if strict { condition::parse(src, object) } else { condition::parse_saved(src, object) };
                Some(parsed.map_err(|e| FieldError::new("trigger.condition", e.to_string()))?)
            }
        };

        let r = &self.request;
        let method = r.method.to_ascii_uppercase();
        if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method.as_str()) {
            return Err(FieldError::new("request.method", "must be one of GET, POST, PUT, PATCH, DELETE"));
        }
        match (r.url.trim().is_empty(), &r.url_script) {
            (true, None) => return Err(FieldError::new("request.url", "must not be empty")),
            (false, Some(_)) => {
                return Err(FieldError::new("request.url_script", "set one of request.url and request.url_script"));
            }
            (false, None) if strict => {
                crate::url::check(&r.url, r.url_host_from_record).map_err(|m| FieldError::new("request.url", m))?
            }
            (false, None) => {}
            // The script decides the whole URL, host included: say so.
            (true, Some(_)) if !r.url_host_from_record => {
                return Err(FieldError::new(
                    "request.url_host_from_record",
                    "a URL script decides the host of every request: set request.url_host_from_record: true",
                ));
            }
            (true, Some(_)) => {}
        }
        let bodies = [r.body.is_some(), r.body_template.is_some(), r.body_script.is_some()];
        if bodies.iter().filter(|b| **b).count() > 1 {
            return Err(FieldError::new("request", "set at most one of body, body_template and body_script"));
        }
        for name in r.headers.keys() {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)) {
                return Err(FieldError::new(format!("request.headers.{name}"), "invalid header name"));
            }
        }
        for (name, value) in r.headers.iter().filter(|_| strict) {
            if let Some(at) = value.find(['\r', '\n', '\0']) {
                return Err(FieldError::new(
                    format!("request.headers.{name}"),
                    format!("must not contain CR, LF or NUL (found at byte {at})"),
                ));
            }
        }
        for name in self.secrets.keys() {
            let ident = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && name.len() <= 64
                && !name.starts_with("__");
            if !ident {
                return Err(FieldError::new(
                    format!("secrets.{name}"),
                    "a secret's name must be 1-64 of A-Z a-z 0-9 _, not starting with a digit or `__`",
                ));
            }
        }
        let sized =
            [("request.url", Some(&r.url), MAX_URL_BYTES), ("request.body", r.body.as_ref(), MAX_TEMPLATE_BYTES)];
        for (path, text, limit) in sized
            .into_iter()
            .chain([("request.body_template", r.body_template.as_ref(), MAX_TEMPLATE_BYTES)])
            .filter(|_| strict)
        {
            if text.is_some_and(|t| t.len() > limit) {
                return Err(FieldError::new(path, format!("is limited to {limit} bytes")));
            }
        }
        for (name, value) in r.headers.iter().filter(|_| strict) {
            if value.len() > MAX_HEADER_BYTES {
                return Err(FieldError::new(
                    format!("request.headers.{name}"),
                    format!("is limited to {MAX_HEADER_BYTES} bytes"),
                ));
            }
        }
        for (path, script) in self.scripts() {
            if script.len() > MAX_SCRIPT_BYTES {
                return Err(FieldError::new(path, format!("scripts are limited to {MAX_SCRIPT_BYTES} bytes")));
            }
        }

        match &self.auth {
            AuthDef::Oauth2 { token_url, client_id, client_secret, .. } => {
                if !strict {
                    if !(token_url.starts_with("https://") || token_url.starts_with("http://")) {
                        return Err(FieldError::new("auth.token_url", "must be an http or https URL"));
                    }
                } else if token_url.contains("{{") || token_url.contains("{%") {
                    return Err(FieldError::new("auth.token_url", "must be a plain URL, not a template"));
                } else {
                    crate::url::check(token_url, false).map_err(|m| FieldError::new("auth.token_url", m))?;
                }
                if client_id.is_empty() {
                    return Err(FieldError::new("auth.client_id", "must not be empty"));
                }
                if client_secret.is_empty() {
                    return Err(FieldError::new("auth.client_secret", "must not be empty"));
                }
            }
            AuthDef::Token { header, value } => {
                if header.is_empty() || !header.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)) {
                    return Err(FieldError::new("auth.header", "invalid header name"));
                }
                if value.is_empty() {
                    return Err(FieldError::new("auth.value", "must not be empty"));
                }
            }
            AuthDef::Basic { username, .. } if username.contains(':') => {
                return Err(FieldError::new("auth.username", "must not contain `:`"));
            }
            _ => {}
        }

        if let Some(signing) = &self.signing
            && signing.secrets.is_empty()
        {
            return Err(FieldError::new("signing.secrets", "list at least one whsec_ secret"));
        }

        if let Some(wb) = &self.writeback {
            if self.response_script.is_none() {
                return Err(FieldError::new("writeback", "a write-back needs a response_script to produce its input"));
            }
            let target_name = wb.object.as_deref().unwrap_or(&self.object);
            let target = object_of(target_name)
                .ok_or_else(|| FieldError::new("writeback.object", format!("no data object named `{target_name}`")))?;
            if strict && target_name != self.object && !wb.any_record {
                return Err(FieldError::new(
                    "writeback.any_record",
                    "a write-back to another object updates records that are not the job's own: set \
                     writeback.any_record: true",
                ));
            }
            if wb.key.from.is_empty() {
                return Err(FieldError::new("writeback.key.from", "must name the output field holding the record id"));
            }
            if wb.key.to != "id" && target.id_field.as_deref() != Some(wb.key.to.as_str()) {
                return Err(FieldError::new(
                    "writeback.key.to",
                    format!("must be `id` or the id field of `{}`", target.name),
                ));
            }
            for (from, to) in &wb.fields {
                if target.field(to).is_none() {
                    return Err(FieldError::new(
                        format!("writeback.fields.{from}"),
                        format!("`{to}` is not a field of `{}`", target.name),
                    ));
                }
            }
        }

        let s = &self.settings;
        let check = |ok: bool, field: &str, msg: &str| if ok { Ok(()) } else { Err(FieldError::new(field, msg)) };
        check(s.max_batch_size >= 1, "settings.max_batch_size", "must be at least 1")?;
        check(s.max_batch_size <= 1000, "settings.max_batch_size", "must be at most 1000")?;
        check(s.batch_linger_ms <= 60_000, "settings.batch_linger_ms", "must be at most 60000")?;
        check((1..=1000).contains(&s.max_concurrency), "settings.max_concurrency", "must be 1 to 1000")?;
        if let Some(r) = &s.rate_limit {
            parse_rate_limit(r).map_err(|m| FieldError::new("settings.rate_limit", m))?;
        }
        check(s.retries <= 100, "settings.retries", "must be at most 100")?;
        check(s.retry_wait.0 <= Duration::from_secs(86_400), "settings.retry_wait", "must be at most 24h")?;
        check(s.max_retry_wait.0 >= s.retry_wait.0, "settings.max_retry_wait", "must be at least retry_wait")?;
        check(
            s.timeout.0 >= Duration::from_millis(10) && s.timeout.0 <= Duration::from_secs(300),
            "settings.timeout",
            "must be between 10ms and 5m",
        )?;

        Ok(TriggerPlan { on_create: t.on_create, on_update: t.on_update, fields, condition, schedule })
    }

    /// Every script of the definition with its path, for checks and caching.
    pub fn scripts(&self) -> Vec<(&'static str, &str)> {
        let mut out = Vec::new();
        if let Some(s) = &self.request.body_script {
            out.push(("request.body_script", s.as_str()));
        }
        if let Some(s) = &self.request.url_script {
            out.push(("request.url_script", s.as_str()));
        }
        if let Some(s) = &self.request.headers_script {
            out.push(("request.headers_script", s.as_str()));
        }
        if let AuthDef::Script { script } = &self.auth {
            out.push(("auth.script", script.as_str()));
        }
        if let Some(s) = &self.response_script {
            out.push(("response_script", s.as_str()));
        }
        out
    }

    /// Everything of the definition that is sealed at rest and shown as `***`: the auth's
    /// secret (a header script's source), the header script, the signing secrets and the
    /// `secrets` map's values.
    pub fn secrets_mut(&mut self) -> Vec<&mut String> {
        let mut out: Vec<&mut String> = self.auth.secret_mut().into_iter().collect();
        out.extend(self.request.headers_script.as_mut());
        if let Some(signing) = &mut self.signing {
            out.extend(signing.secrets.iter_mut());
        }
        out.extend(self.secrets.values_mut());
        out
    }

    /// Secret values, for redaction of attempt records and logs (script sources aside:
    /// they are sealed and hidden, but they are not values a request carries).
    pub fn secret_values(&self) -> Vec<String> {
        let mut d = self.clone();
        if let AuthDef::Script { script } = &mut d.auth {
            script.clear();
        }
        d.request.headers_script = None;
        d.secrets_mut().into_iter().map(|s| s.clone()).filter(|s| !s.is_empty()).collect()
    }

    /// The first secret still written as [`REDACTED`] (after [`keep_secrets_from`](Self::keep_secrets_from)),
    /// by its field: there was no stored value to keep for it.
    pub fn redacted_left(&self) -> Option<String> {
        let is = |s: &str| s == REDACTED;
        let auth = match &self.auth {
            AuthDef::Basic { password, .. } if is(password) => Some("auth.password"),
            AuthDef::Token { value, .. } if is(value) => Some("auth.value"),
            AuthDef::Oauth2 { client_secret, .. } if is(client_secret) => Some("auth.client_secret"),
            AuthDef::Script { script } if is(script) => Some("auth.script"),
            _ => None,
        };
        if let Some(field) = auth {
            return Some(field.to_string());
        }
        if self.request.headers_script.as_deref().is_some_and(is) {
            return Some("request.headers_script".into());
        }
        if let Some(i) = self.signing.iter().flat_map(|s| &s.secrets).position(|s| is(s)) {
            return Some(format!("signing.secrets[{i}]"));
        }
        self.secrets.iter().find(|(_, v)| is(v)).map(|(name, _)| format!("secrets.{name}"))
    }

    /// The definition as shown to API clients: secrets replaced by [`REDACTED`].
    pub fn redacted(&self) -> WebhookDef {
        let mut d = self.clone();
        for s in d.secrets_mut() {
            *s = REDACTED.into();
        }
        d
    }

    /// Keeps `previous`'s secrets where this definition says [`REDACTED`], so a client can
    /// PUT back what it read (signing secrets by position).
    /// The auth's secret is kept only while it goes where it went: the same token URL, or
    /// requests to the same scheme, host and port; else the client must give it again.
    pub fn keep_secrets_from(&mut self, previous: &WebhookDef) {
        let mut previous = previous.clone();
        let same_destination = match (&self.auth, &previous.auth) {
            (AuthDef::Oauth2 { token_url: new, .. }, AuthDef::Oauth2 { token_url: old, .. }) => new == old,
            (AuthDef::Basic { .. } | AuthDef::Token { .. }, _) => {
                let origin =
                    |d: &WebhookDef| crate::url::origin(&d.request.url).filter(|_| d.request.url_script.is_none());
                origin(self).is_some() && origin(self) == origin(&previous)
            }
            _ => true,
        };
        if self.auth.same_kind(&previous.auth)
            && same_destination
            && let (Some(new), Some(old)) = (self.auth.secret_mut(), previous.auth.secret_mut())
            && new == REDACTED
        {
            *new = old.clone();
        }
        if let (Some(new), Some(old)) = (&mut self.request.headers_script, &previous.request.headers_script)
            && new == REDACTED
        {
            *new = old.clone();
        }
        for (name, value) in &mut self.secrets {
            if value == REDACTED
                && let Some(old) = previous.secrets.get(name)
            {
                *value = old.clone();
            }
        }
        if let (Some(new), Some(old)) = (&mut self.signing, &previous.signing) {
            for (n, o) in new.secrets.iter_mut().zip(&old.secrets) {
                if n == REDACTED {
                    *n = o.clone();
                }
            }
        }
    }
}

/// A stored webhook: the definition plus the state the API manages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredWebhook {
    pub definition: WebhookDef,
    /// +1 on every save; jobs carry the version they were made under.
    pub version: u64,
    pub paused: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn survey() -> DataObject {
        serde_json::from_value(json!({
            "name": "survey", "id_field": "a_surveyid",
            "fields": [
                {"key": "a_surveyid", "type": "string"},
                {"key": "status", "label": "Status", "type": "string"},
                {"key": "transactional_satisfaction", "label": "Transactional Satisfaction", "type": "number"},
                {"key": "t_ticket_id", "type": "string"}
            ]
        }))
        .unwrap()
    }

    fn def(extra: serde_json::Value) -> Result<WebhookDef, serde_json::Error> {
        let mut base = json!({
            "id": "it-negative-feedback", "object": "survey",
            "trigger": {"on_update": true, "fields": ["Status", "Transactional Satisfaction"],
                        "condition": "Status = Completed and Transactional Satisfaction = 0"},
            "request": {"url": "https://tickets.example.com/rest/api/2/issue"}
        });
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        serde_json::from_value(base)
    }

    fn validate(d: &WebhookDef) -> Result<TriggerPlan, FieldError> {
        let o = survey();
        d.validate(|name| (name == "survey").then_some(&o))
    }

    #[test]
    fn the_seed_definition_validates_and_resolves_labels() {
        let d = def(json!({})).unwrap();
        let plan = validate(&d).unwrap();
        assert_eq!(plan.fields, ["status", "transactional_satisfaction"]);
        assert!(plan.condition.is_some());
        assert_eq!(d.settings.retry_wait.0, Duration::from_secs(10));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (json!({"object": "nope"}), "object"),
            (json!({"trigger": {"on_update": true, "fields": ["Nope"]}}), "trigger.fields[0]"),
            (json!({"trigger": {"on_update": true, "condition": "Status = "}}), "trigger.condition"),
            (json!({"trigger": {}}), "trigger"),
            (json!({"trigger": {"schedule": "*/15 * * * *"}}), "trigger.schedule"),
            (json!({"trigger": {"schedule": "0 * * * * *", "time_zone": "Berlin"}}), "trigger.time_zone"),
            (json!({"trigger": {"on_update": true, "time_zone": "UTC"}}), "trigger.time_zone"),
            (json!({"trigger": {"on_update": true, "select": "all"}}), "trigger.select"),
            (json!({"settings": {"max_concurrency": 0}}), "settings.max_concurrency"),
            (json!({"request": {"url": "https://x", "method": "BREW"}}), "request.method"),
            (json!({"request": {"url": "ftp://x/y"}}), "request.url"),
            (json!({"request": {"url": "file:///etc/passwd"}}), "request.url"),
            (json!({"request": {"url": "http://user:pass@host/"}}), "request.url"),
            (json!({"request": {"url": "https://{{ record.region }}.example.com/"}}), "request.url"),
            (json!({"request": {"url": "https://x/", "url_script": "return 'https://y/';"}}), "request.url_script"),
            (json!({"request": {"url": "https://x/", "headers": {"X-A": "a\r\nX-B: b"}}}), "request.headers.X-A"),
            (json!({"secrets": {"1bad": "v"}}), "secrets.1bad"),
            (
                json!({"auth": {"type": "oauth2", "token_url": "https://u:p@idp/token", "client_id": "c", "client_secret": "s"}}),
                "auth.token_url",
            ),
            (
                json!({"response_script": "write('{}')", "writeback": {"key": {"from": "a", "to": "t_ticket_id"}}}),
                "writeback.key.to",
            ),
            (
                json!({"response_script": "write('{}')", "writeback": {"key": {"from": "a", "to": "a_surveyid"}, "fields": {"x": "nope"}}}),
                "writeback.fields.x",
            ),
        ];
        for (extra, field) in cases {
            let d = def(extra.clone()).unwrap();
            assert_eq!(validate(&d).unwrap_err().field, field, "{extra}");
        }
    }

    #[test]
    fn a_schedule_alone_is_a_trigger() {
        let d = def(json!({"trigger": {"schedule": "0 0 9 * * MON-FRI", "time_zone": "Europe/Berlin",
                                       "select": "all", "condition": "Status = Completed"}}))
        .unwrap();
        let plan = validate(&d).unwrap();
        let schedule = plan.schedule.expect("a schedule");
        assert_eq!((schedule.select, schedule.time_zone()), (Select::All, "Europe/Berlin"));
        assert!(!plan.on_create && !plan.on_update && plan.condition.is_some());
        // `select` defaults to `changed`, and it round-trips as written.
        let d = def(json!({"trigger": {"schedule": "*/30 * * * * *"}})).unwrap();
        assert_eq!(validate(&d).unwrap().schedule.unwrap().select, Select::Changed);
        assert_eq!(
            serde_json::to_value(&d.trigger).unwrap(),
            json!({"on_create": false, "on_update": false, "schedule": "*/30 * * * * *"})
        );
        assert!(
            def(json!({"trigger": {"schedule": "* * * * * *", "select": "some"}}))
                .unwrap_err()
                .to_string()
                .contains("some")
        );
    }

    #[test]
    fn rate_limits_parse_or_name_the_problem() {
        assert_eq!(parse_rate_limit("50/s").unwrap().interval(), Duration::from_millis(20));
        assert_eq!(parse_rate_limit(" 600 / m ").unwrap().interval(), Duration::from_millis(100));
        for bad in ["50", "x/s", "0/s", "5/d", "50/"] {
            assert!(parse_rate_limit(bad).is_err(), "{bad}");
        }
        let d = def(json!({"settings": {"rate_limit": "fast"}})).unwrap();
        assert_eq!(validate(&d).unwrap_err().field, "settings.rate_limit");
    }

    #[test]
    fn unknown_fields_and_bad_durations_are_refused_by_the_parser() {
        assert!(def(json!({"sttings": {}})).unwrap_err().to_string().contains("sttings"));
        assert!(def(json!({"settings": {"retry_wait": "soon"}})).unwrap_err().to_string().contains("soon"));
        let d = def(json!({"settings": {"retry_wait": "250ms", "timeout": 5000}})).unwrap();
        assert_eq!(d.settings.retry_wait.0, Duration::from_millis(250));
        assert_eq!(d.settings.timeout.0, Duration::from_secs(5));
    }

    #[test]
    fn secrets_are_redacted_and_kept_on_put_back() {
        let d = def(json!({"auth": {"type": "basic", "username": "batman", "password": "robin"},
                           "signing": {"secrets": ["whsec_old", "whsec_new"]}}))
        .unwrap();
        assert_eq!(d.secret_values(), ["robin", "whsec_old", "whsec_new"]);
        let shown = serde_json::to_string(&d.redacted()).unwrap();
        assert!(!shown.contains("robin") && !shown.contains("whsec_") && shown.contains(REDACTED), "{shown}");
        let mut back: WebhookDef = serde_json::from_str(&shown).unwrap();
        back.keep_secrets_from(&d);
        assert_eq!(back.auth, d.auth);
    }

    #[test]
    fn script_sources_and_the_secrets_map_are_sealed_shown_hidden_and_kept() {
        let d = def(json!({"auth": {"type": "script", "script": "return {A: 'pw-in-source'};"},
                           "request": {"url": "https://x/", "headers_script": "return {B: 'pw2'};"},
                           "secrets": {"API_KEY": "k-123456"}}))
        .unwrap();
        assert_eq!(validate(&d).map(|_| ()), Ok(()));
        assert_eq!(d.secret_values(), ["k-123456"]);
        let shown = serde_json::to_string(&d.redacted()).unwrap();
        let debug = format!("{d:?}");
        for text in [&shown, &debug] {
            for secret in ["pw-in-source", "pw2", "k-123456"] {
                assert!(!text.contains(secret), "{secret} in {text}");
            }
        }
        let mut back: WebhookDef = serde_json::from_str(&shown).unwrap();
        back.keep_secrets_from(&d);
        assert_eq!(back, d);
    }

    #[test]
    fn a_secret_is_kept_only_while_it_goes_where_it_went() {
        let oauth = |url: &str, secret: &str| {
            def(json!({"auth": {"type": "oauth2", "token_url": url, "client_id": "c", "client_secret": secret}}))
                .unwrap()
        };
        let stored = oauth("https://idp/token", "s3cret");
        let mut same = oauth("https://idp/token", REDACTED);
        same.keep_secrets_from(&stored);
        assert_eq!((same.redacted_left(), &same.auth), (None, &stored.auth));
        let mut moved = oauth("https://attacker/token", REDACTED);
        moved.keep_secrets_from(&stored);
        assert_eq!(moved.redacted_left().as_deref(), Some("auth.client_secret"));

        let basic = |url: &str, pw: &str| {
            def(json!({"request": {"url": url}, "auth": {"type": "basic", "username": "u", "password": pw}})).unwrap()
        };
        let stored = basic("https://api.example.com/a", "pw");
        let mut path_changed = basic("https://API.example.com/b/{{ record.id }}", REDACTED);
        path_changed.keep_secrets_from(&stored);
        assert_eq!(path_changed.redacted_left(), None);
        let mut host_changed = basic("https://evil.example/a", REDACTED);
        host_changed.keep_secrets_from(&stored);
        assert_eq!(host_changed.redacted_left().as_deref(), Some("auth.password"));
    }

    #[test]
    fn debug_never_prints_a_secret() {
        let d = def(json!({"auth": {"type": "oauth2", "token_url": "https://idp/t", "client_id": "c",
                                    "client_secret": "cs-secret"},
                           "signing": {"secrets": ["whsec_c2VjcmV0"]}}))
        .unwrap();
        let all = format!("{d:?} {:?} {:?}", d.auth, d.signing);
        assert!(!all.contains("cs-secret") && !all.contains("whsec_c2VjcmV0") && all.contains("***"), "{all}");
        let basic = AuthDef::Basic { username: "u".into(), password: "pa55".into() };
        assert!(!format!("{basic:?}").contains("pa55"));
    }
}
