//! Webhook definitions as the API reads them: bytes → `serde_json::from_slice::<WebhookDef>`
//! → `validate` against fixed objects (JSON only).
//!
//! Properties (a violation panics):
//! - parsing, validating and what the API then asks of a valid schedule never panic;
//! - a valid plan's fields are keys of the object, its condition is the trimmed source;
//! - a definition serialises and reads back equal (the store keeps them as JSON);
//! - security: `redacted()` equals the definition with every sealed slot set to `***`,
//!   worked out here from the JSON alone: the auth's password / token value / OAuth client
//!   secret / script, `request.headers_script`, each signing secret and each value of the
//!   `secrets` map (a new sealed slot in the model must be added here too);
//! - security: the redacted JSON holds no sealed value (every `secret_values()` one is
//!   sealed) that is not `***` and is longer than 3 bytes, raw or escaped, unless the same
//!   text is in the definition's non-secret parts anyway (a secret reused in a URL or a
//!   header is the user's doing);
//! - security: `Debug` of the definition, its auth and its signing prints exactly what it
//!   prints for the blanked definition, so it cannot show a secret;
//! - a definition `validate` accepts, `validate_stored` accepts too (what is saved loads);
//! - what a client reads back and PUTs again (`redacted` → JSON → `keep_secrets_from`)
//!   is the original definition, but for a Basic/Token secret when the URL's origin cannot
//!   be read from its text (then it stays `***`, and `redacted_left` says so).
#![no_main]

use hookline_model::webhook::REDACTED;
use hookline_model::{AuthDef, DataObject, WebhookDef};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use std::sync::OnceLock;

fn objects() -> &'static [DataObject; 2] {
    static OBJECTS: OnceLock<[DataObject; 2]> = OnceLock::new();
    OBJECTS.get_or_init(|| {
        let survey = serde_json::from_value(json!({
            "name": "survey", "id_field": "a_surveyid",
            "fields": [
                {"key": "a_surveyid", "type": "string"},
                {"key": "status", "label": "Status", "type": "string"},
                {"key": "transactional_satisfaction", "label": "Transactional Satisfaction", "type": "number"},
                {"key": "t_ticket_id", "type": "string"},
                {"key": "active", "label": "Active", "type": "boolean"},
                {"key": "due", "label": "Due Date", "type": "datetime"},
                {"key": "tags", "type": "json"}
            ]
        }))
        .expect("valid object");
        let ticket = serde_json::from_value(json!({
            "name": "ticket",
            "fields": [{"key": "number", "type": "number"}, {"key": "state", "label": "State", "type": "string"}]
        }))
        .expect("valid object");
        [survey, ticket]
    })
}

/// The definition's JSON with every sealed slot set to `***`, worked out from the JSON alone.
fn redact_by_hand(def: &WebhookDef) -> Value {
    let mut v = serde_json::to_value(def).expect("a definition serialises");
    let auth = &mut v["auth"];
    let slot = match auth["type"].as_str() {
        Some("basic") => Some("password"),
        Some("token") => Some("value"),
        Some("oauth2") => Some("client_secret"),
        Some("script") => Some("script"),
        _ => None,
    };
    if let Some(slot) = slot {
        auth[slot] = json!(REDACTED);
    }
    if let Some(script) = v.get_mut("request").and_then(|r| r.get_mut("headers_script")) {
        *script = json!(REDACTED);
    }
    if let Some(secrets) = v.get_mut("signing").and_then(|s| s.get_mut("secrets")).and_then(Value::as_array_mut) {
        for s in secrets {
            *s = json!(REDACTED);
        }
    }
    if let Some(map) = v.get_mut("secrets").and_then(Value::as_object_mut) {
        for s in map.values_mut() {
            *s = json!(REDACTED);
        }
    }
    v
}

/// `s` as it appears inside a JSON string.
fn json_escaped(s: &str) -> String {
    let quoted = serde_json::to_string(s).expect("a string serialises");
    quoted[1..quoted.len() - 1].to_string()
}

/// `s` as it appears inside a `Debug`-printed string.
fn debug_escaped(s: &str) -> String {
    let quoted = format!("{s:?}");
    quoted[1..quoted.len() - 1].to_string()
}

fn holds(haystack: &str, secret: &str) -> bool {
    haystack.contains(secret) || haystack.contains(&json_escaped(secret)) || haystack.contains(&debug_escaped(secret))
}

fuzz_target!(|data: &[u8]| {
    let Ok(def) = serde_json::from_slice::<WebhookDef>(data) else { return };
    let [survey, ticket] = objects();
    let object_of = |name: &str| match name {
        "survey" => Some(survey),
        "ticket" => Some(ticket),
        _ => None,
    };

    let saved = def.validate(object_of);
    if let Err(e) = def.validate_stored(object_of)
        && saved.is_ok()
    {
        panic!("a definition that can be saved does not load: {e}");
    }
    match saved {
        Ok(plan) => {
            let object = object_of(&def.object).expect("validate found the object");
            for key in &plan.fields {
                assert!(object.field(key).is_some(), "plan field `{key}` is not a key of `{}`", object.name);
            }
            if let Some(c) = &plan.condition {
                assert_eq!(Some(c.source()), def.trigger.condition.as_deref().map(str::trim));
            }
            if let Some(schedule) = &plan.schedule {
                // What the API and the scheduler ask of a saved schedule.
                let now = 1_780_000_000_000; // 2026-05-28
                if let Some(next) = schedule.next_after(now) {
                    assert!(next > now, "next tick {next} is not after {now}");
                    let _ = schedule.local_time(next);
                }
                if let Some(due) = schedule.due(now - 86_400_000, now) {
                    assert!(due > now - 86_400_000 && due <= now, "due tick {due} outside the window");
                }
                let _ = schedule.time_zone();
            }
        }
        Err(e) => assert!(!e.field.is_empty() && !e.message.is_empty(), "an error names no field: {e:?}"),
    }

    // The store keeps definitions as JSON: they must read back as they were.
    let stored = serde_json::to_vec(&def).expect("a definition serialises");
    let back: WebhookDef = serde_json::from_slice(&stored).unwrap_or_else(|e| {
        panic!("a definition does not read back: {e}: {}", String::from_utf8_lossy(&stored))
    });
    assert_eq!(back, def, "a definition reads back different: {}", String::from_utf8_lossy(&stored));

    // Redaction.
    let redacted = def.redacted();
    let shown_text = serde_json::to_string(&redacted).expect("a redacted definition serialises");
    // What the definition shows without its secrets, worked out here, not by `redacted()`.
    let expected = redact_by_hand(&def);
    let public_text = expected.to_string();
    let mut sealed: Vec<String> = def.clone().secrets_mut().into_iter().map(|s| s.clone()).collect();
    for v in def.secret_values() {
        assert!(sealed.contains(&v), "secret_values() has {v:?}, which is not sealed");
    }
    sealed.retain(|s| s != REDACTED && s.len() > 3);
    for secret in &sealed {
        if holds(&shown_text, secret) && !holds(&public_text, secret) {
            panic!("sealed value {secret:?} leaks into the redacted definition: {shown_text}");
        }
    }
    let shown: Value = serde_json::from_str(&shown_text).expect("reads back as JSON");
    assert_eq!(shown, expected, "redacted() differs from blanking every sealed slot");
    // `Debug` shows nothing a blanked definition would not: it prints the same.
    let blank: WebhookDef = serde_json::from_value(expected).expect("the blanked definition reads back");
    let debug = format!("{def:?} | {:?} | {:?}", def.auth, def.signing);
    let blank_debug = format!("{blank:?} | {:?} | {:?}", blank.auth, blank.signing);
    if debug != blank_debug {
        let leaked = sealed.iter().find(|s| holds(&debug, s) && !holds(&blank_debug, s));
        panic!("Debug depends on a secret (leaked: {leaked:?}): {debug}");
    }

    assert_eq!(
        redacted.redacted_left().is_some(),
        !def.clone().secrets_mut().is_empty(),
        "redacted_left() misses a `***` of the redacted definition"
    );

    // A client reads the redacted definition and PUTs it back unchanged: every secret is
    // kept, except a Basic/Token secret when the request's origin cannot be read from the
    // URL as written (a templated host, or a URL script): then it is not sent anywhere new.
    let mut put_back: WebhookDef = serde_json::from_str(&shown_text).expect("the redacted JSON reads back");
    put_back.keep_secrets_from(&def);
    let mut expected_back = def.clone();
    let origin_known = def.request.url_script.is_none() && hookline_model::url::origin(&def.request.url).is_some();
    match &mut expected_back.auth {
        AuthDef::Basic { password: s, .. } | AuthDef::Token { value: s, .. } if !origin_known => {
            *s = REDACTED.to_string();
        }
        _ => {}
    }
    assert_eq!(put_back, expected_back, "PUT of the redacted definition loses or changes a secret");
    assert_eq!(
        put_back.redacted_left().is_some(),
        put_back != def,
        "redacted_left() disagrees with what a PUT-back could not keep"
    );
});
