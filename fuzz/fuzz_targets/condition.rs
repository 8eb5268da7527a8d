//! `hookline_model::condition::parse` over arbitrary UTF-8, then `eval` on records made from
//! the same input.
//!
//! Input: `<condition source> [0xFF <record bytes>]`. 0xFF never occurs in UTF-8, so the
//! source can be any string; the bytes after it drive the new and old records.
//!
//! Properties (a violation panics):
//! - `parse` and `eval` never panic (nor overflow the stack or hang);
//! - a refusal points inside the text: column in `1..=chars + 1`, and says something;
//! - what `parse` (a save) accepts, `parse_saved` (a stored definition) accepts too; the
//!   checks below run on the strict parse, or on the saved one where only it succeeds;
//! - `parse(condition.source())` parses again, reads the same fields, evaluates the same;
//! - `fields()` are keys of the object, and changing any field it does not list never
//!   changes the result (the trigger relies on knowing what a condition reads);
//! - `not (C)` is `!C`, `(C) and (C)` and `(C) or (C)` are `C` (unless the extra
//!   parenthesis goes past `MAX_DEPTH`, which must then be the reason given).
#![no_main]

use hookline_model::condition::{self, Condition};
use hookline_model::{DataObject, Fields};
use libfuzzer_sys::arbitrary::{Result as ArbResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};
use std::sync::OnceLock;

/// The object of the condition module's own tests: labels with spaces, one label a prefix of
/// another, one holding a keyword, and a field of every type.
fn object() -> &'static DataObject {
    static OBJECT: OnceLock<DataObject> = OnceLock::new();
    OBJECT.get_or_init(|| {
        serde_json::from_value(json!({
            "name": "survey", "id_field": "a_surveyid",
            "fields": [
                {"key": "a_surveyid", "type": "string"},
                {"key": "status", "label": "Status", "type": "string"},
                {"key": "status_reason", "label": "Status Reason", "type": "string"},
                {"key": "score", "label": "Transactional Satisfaction", "type": "number"},
                {"key": "tis", "label": "Time In Status", "type": "number"},
                {"key": "active", "label": "Active", "type": "boolean"},
                {"key": "due", "label": "Due Date", "type": "datetime"},
                {"key": "tags", "label": "Tags", "type": "json"},
                {"key": "e_email", "label": "Email", "type": "string"}
            ]
        }))
        .expect("the fuzz object is valid")
    })
}

/// Words of the source, so generated values sometimes equal the condition's literals.
fn words(src: &str) -> Vec<&str> {
    src.split(|c: char| c.is_whitespace() || "()[],=<>!'\"".contains(c)).filter(|w| !w.is_empty()).collect()
}

fn value(u: &mut Unstructured<'_>, pool: &[&str], depth: u32) -> ArbResult<Value> {
    let max = if depth >= 2 { 8 } else { 10 };
    Ok(match u.int_in_range(0..=max)? {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => json!(u.int_in_range(-3i64..=12)?),
        3 => json!(u.arbitrary::<i64>()?),
        4 => serde_json::Number::from_f64(u.arbitrary::<f64>()?).map_or(Value::Null, Value::Number),
        5 => json!(u.arbitrary::<u64>()?),
        6 if !pool.is_empty() => Value::String(u.choose(pool)?.to_string()),
        6 | 7 => Value::String(u.arbitrary::<String>()?),
        8 => {
            // A datetime, sometimes a plain date, sometimes with an offset.
            let (y, m, d, h) = (
                u.int_in_range(1999..=2030)?,
                u.int_in_range(1..=12)?,
                u.int_in_range(1..=31)?,
                u.int_in_range(0..=23)?,
            );
            Value::String(match u.int_in_range(0..=2)? {
                0 => format!("{y:04}-{m:02}-{d:02}"),
                1 => format!("{y:04}-{m:02}-{d:02}T{h:02}:00:00Z"),
                _ => format!("{y:04}-{m:02}-{d:02}T{h:02}:30:00.5+02:00"),
            })
        }
        9 => {
            let n = u.int_in_range(0..=3)?;
            Value::Array((0..n).map(|_| value(u, pool, depth + 1)).collect::<ArbResult<_>>()?)
        }
        _ => {
            let n = u.int_in_range(0..=3)?;
            let mut map = Map::new();
            for _ in 0..n {
                let key = if pool.is_empty() { u.arbitrary::<String>()? } else { u.choose(pool)?.to_string() };
                map.insert(key, value(u, pool, depth + 1)?);
            }
            Value::Object(map)
        }
    })
}

fn record(u: &mut Unstructured<'_>, object: &DataObject, pool: &[&str]) -> ArbResult<Fields> {
    let mut fields = Fields::new();
    for f in &object.fields {
        if u.ratio(1, 4)? {
            continue; // missing
        }
        fields.insert(f.key.clone(), value(u, pool, 0)?);
    }
    Ok(fields)
}

/// `fields` with every field the condition does not read replaced by another value.
fn perturb(u: &mut Unstructured<'_>, fields: &Fields, read: &[String], pool: &[&str]) -> ArbResult<Fields> {
    let mut out = fields.clone();
    for f in &object().fields {
        if read.contains(&f.key) {
            continue;
        }
        if u.ratio(1, 3)? {
            out.remove(&f.key);
        } else {
            out.insert(f.key.clone(), value(u, pool, 0)?);
        }
    }
    Ok(out)
}

/// Parses a condition built around `c`; None when the extra nesting is what refused it.
fn wrapped(
    parse: fn(&str, &DataObject) -> Result<Condition, condition::ConditionError>,
    src: &str,
    what: &str,
) -> Option<Condition> {
    match parse(src, object()) {
        Ok(c) => Some(c),
        Err(e) if e.message.contains("nest more than") => None,
        Err(e) => panic!("{what} of a valid condition is refused: {src:?}: {e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let (text, rest) = match data.iter().position(|b| *b == 0xFF) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let Ok(src) = std::str::from_utf8(text) else { return };
    let object = object();

    // What a save accepts, a stored definition loads (`parse_saved` is the laxer one).
    let strict = condition::parse(src, object);
    let saved = condition::parse_saved(src, object);
    if let (Ok(_), Err(e)) = (&strict, &saved) {
        panic!("a condition that can be saved does not load: {src:?}: {e}");
    }
    for e in [strict.as_ref().err(), saved.as_ref().err()].into_iter().flatten() {
        let len = src.chars().count();
        assert!((1..=len + 1).contains(&e.column), "column out of the text: {src:?}: {e:?}");
        assert!(!e.message.is_empty(), "empty message: {src:?}");
    }
    let strict_ok = strict.is_ok();
    let Ok(condition) = strict.or(saved) else { return };
    // Only a strictly parsed condition is re-parsed and wrapped below with `parse`.
    let parse: fn(&str, &DataObject) -> Result<Condition, condition::ConditionError> =
        if strict_ok { condition::parse } else { condition::parse_saved };

    let read = condition.fields();
    for key in &read {
        assert!(object.field(key).is_some(), "fields() names `{key}`, no field of the object: {src:?}");
    }
    assert_eq!(condition.source(), src);
    let again = parse(condition.source(), object)
        .unwrap_or_else(|e| panic!("the source of a parsed condition is refused: {src:?}: {e}"));
    assert_eq!(again.fields(), read, "re-parse reads other fields: {src:?}");

    let negated = wrapped(parse, &format!("not ({src})"), "`not (C)`");
    let both = wrapped(parse, &format!("({src}) and ({src})"), "`(C) and (C)`");
    let either = wrapped(parse, &format!("({src}) or ({src})"), "`(C) or (C)`");

    let pool = words(src);
    let mut u = Unstructured::new(rest);
    // Up to four (new, old) pairs from the bytes; the first always exists.
    for round in 0..4 {
        if round > 0 && u.is_empty() {
            break;
        }
        let Ok(new) = record(&mut u, object, &pool) else { break };
        let old = match u.arbitrary::<bool>() {
            Ok(true) => record(&mut u, object, &pool).ok(),
            _ => None,
        };
        let result = condition.eval(&new, old.as_ref());
        let show = || format!("{src:?} on new {new:?} old {old:?}");
        assert_eq!(again.eval(&new, old.as_ref()), result, "re-parsed condition differs: {}", show());
        if let Some(c) = &negated {
            assert_eq!(c.eval(&new, old.as_ref()), !result, "`not (C)` is not !C: {}", show());
        }
        if let Some(c) = &both {
            assert_eq!(c.eval(&new, old.as_ref()), result, "`(C) and (C)` is not C: {}", show());
        }
        if let Some(c) = &either {
            assert_eq!(c.eval(&new, old.as_ref()), result, "`(C) or (C)` is not C: {}", show());
        }
        // Fields the condition does not read cannot matter.
        let Ok(new2) = perturb(&mut u, &new, &read, &pool) else { break };
        let old2 = match &old {
            Some(o) => match perturb(&mut u, o, &read, &pool) {
                Ok(o2) => Some(o2),
                Err(_) => break,
            },
            None => None,
        };
        assert_eq!(
            condition.eval(&new2, old2.as_ref()),
            result,
            "a field outside fields() {read:?} changed the result: {} vs new {new2:?} old {old2:?}",
            show()
        );
    }
});
