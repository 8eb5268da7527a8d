//! NDJSON ingestion as `POST /v1/objects/{o}/records` reads it, through
//! `hookline_api::objects::fuzz_ndjson`: the body split into lines the way `ingest_ndjson`
//! splits it, each line read by `read_line`, each record read checked by
//! `hookline_engine::records::check`. Three objects: record ids from a string field, from a
//! number field, and given as `id`.
//!
//! Properties (a violation panics):
//! - nothing panics;
//! - a body's count is the sum of its lines' counts (lines are read independently), and at
//!   most its number of lines;
//! - a line accepted on its own is a JSON object whose `fields` pass the schema, whose id
//!   (the id field's value, else `id`) is 1-512 bytes, and which has no other keys than
//!   `id` and `fields`; when both name the id, they agree;
//! - removing the line's trailing `\n` or `\r\n` changes nothing.
#![no_main]

use hookline_api::objects::fuzz_ndjson;
use hookline_model::DataObject;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use std::sync::OnceLock;

/// An object whose record id is a string field, one whose id is a number field, and one
/// with no id field (the id is given as `id`).
fn objects() -> &'static [DataObject; 3] {
    static OBJECTS: OnceLock<[DataObject; 3]> = OnceLock::new();
    OBJECTS.get_or_init(|| {
        let fields = json!([
            {"key": "a_surveyid", "type": "string"},
            {"key": "status", "label": "Status", "type": "string"},
            {"key": "score", "label": "Score", "type": "number"},
            {"key": "active", "type": "boolean"},
            {"key": "due", "type": "datetime"},
            {"key": "tags", "type": "json"}
        ]);
        [
            json!({"name": "survey", "id_field": "a_surveyid", "fields": fields}),
            json!({"name": "ticket", "id_field": "score", "fields": fields}),
            json!({"name": "plain", "fields": fields}),
        ]
        .map(|v| {
            let o: DataObject = serde_json::from_value(v).expect("a valid object");
            o.validate().expect("a valid object");
            o
        })
    })
}

/// A record id as the API makes one from a JSON value.
fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The properties of one line that `fuzz_ndjson` accepted.
fn check_accepted(object: &DataObject, line: &[u8]) {
    let value: Value = serde_json::from_slice(line)
        .unwrap_or_else(|e| panic!("an accepted line is no JSON: {e}: {:?}", String::from_utf8_lossy(line)));
    let map = value.as_object().unwrap_or_else(|| panic!("an accepted line is no object: {value}"));
    assert!(map.keys().all(|k| k == "id" || k == "fields"), "an accepted line has other keys: {value}");
    let fields = map.get("fields").and_then(Value::as_object).unwrap_or_else(|| panic!("no fields: {value}"));
    object.check_fields(fields).unwrap_or_else(|e| panic!("accepted fields break the schema ({e}): {value}"));
    let from_field = object.id_field.as_ref().and_then(|k| fields.get(k)).and_then(id_text);
    let given = map.get("id").and_then(id_text);
    if let (Some(a), Some(b)) = (&from_field, &given) {
        assert_eq!(a, b, "the id field and `id` disagree on an accepted line: {value}");
    }
    let id = from_field.or(given).unwrap_or_else(|| panic!("an accepted line names no id: {value}"));
    assert!((1..=512).contains(&id.len()), "accepted id of {} bytes: {value}", id.len());
}

fuzz_target!(|data: &[u8]| {
    for object in objects() {
        let total = fuzz_ndjson(object, data);
        let mut sum = 0;
        let mut lines = 0;
        for line in data.split_inclusive(|b| *b == b'\n') {
            lines += 1;
            let one = fuzz_ndjson(object, line);
            assert!(one <= 1, "one line counted {one} times: {:?}", String::from_utf8_lossy(line));
            let bare = line.strip_suffix(b"\n").map(|l| l.strip_suffix(b"\r").unwrap_or(l)).unwrap_or(line);
            if bare.len() != line.len() {
                assert_eq!(
                    fuzz_ndjson(object, bare),
                    one,
                    "the line ending changes the verdict: {:?}",
                    String::from_utf8_lossy(line)
                );
            }
            if one == 1 {
                check_accepted(object, line);
            }
            sum += one;
        }
        assert_eq!(total, sum, "a body counts other than its lines");
        assert!(total <= lines);
    }
});
