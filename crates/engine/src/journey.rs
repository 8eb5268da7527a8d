//! The record's journey, as the trigger decided it: for each change, what changed and, for
//! each webhook of the object, whether it fired and, if not, why (with the value of each
//! part of a false condition). Kept by the store ([`hookline_store::Store::note_changes`]),
//! read by `GET /v1/objects/{object}/records/{id}/journey`.

use hookline_model::condition::Part;
use hookline_model::trigger::Decision;
use hookline_model::{Fields, TriggerPlan};
use hookline_proto::Change;
use hookline_store::JourneyNote;
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use serde_json::Value;

/// String values longer than this are cut in the note (it shows what changed, not a copy).
const SHOWN_CHARS: usize = 200;

/// What the trigger decided for one webhook on one change.
pub(crate) struct Decided<'a> {
    pub webhook: &'a str,
    pub webhook_version: u64,
    pub plan: &'a TriggerPlan,
    pub decision: Decision,
    pub job_id: Option<String>,
}

/// The note on `change`, whose versions are `old` (None: created) and `new`. It is written
/// straight from borrowed parts, with no JSON tree built first: the trigger notes every
/// change an object's webhooks see.
pub(crate) fn note(
    change: &Change,
    old: Option<&Fields>,
    new: &Fields,
    decided: &[Decided<'_>],
    stopped: Option<&str>,
) -> JourneyNote {
    let note = Note {
        version: change.version,
        at_ms: change.at_ms,
        created: old.is_none(),
        changed: Changed { old, new },
        origin_webhook: (!change.origin_webhook.is_empty()).then_some(&change.origin_webhook),
        hops: change.hops,
        trace_id: crate::trace::trace_id(&change.traceparent),
        decisions: decided.iter().map(|d| DecisionNote::of(d, old, new)).collect(),
        stopped,
    };
    JourneyNote {
        object: change.object.clone(),
        record_id: change.record_id.clone(),
        version: change.version,
        note: serde_json::to_vec(&note).unwrap_or_default(),
    }
}

#[derive(Serialize)]
struct Note<'a> {
    version: u64,
    at_ms: i64,
    created: bool,
    changed: Changed<'a>,
    origin_webhook: Option<&'a String>,
    hops: u32,
    trace_id: Option<&'a str>,
    decisions: Vec<DecisionNote<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stopped: Option<&'a str>,
}

#[derive(Serialize)]
struct DecisionNote<'a> {
    webhook: &'a str,
    webhook_version: u64,
    fired: bool,
    decision: &'static str,
    reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    job_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    triggering_fields: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    condition: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parts: Option<Vec<PartNote>>,
}

impl<'a> DecisionNote<'a> {
    fn of(d: &'a Decided<'a>, old: Option<&Fields>, new: &Fields) -> Self {
        let mut out = DecisionNote {
            webhook: d.webhook,
            webhook_version: d.webhook_version,
            fired: d.decision == Decision::Fire,
            decision: d.decision.as_str(),
            reason: reason(d),
            job_id: d.job_id.as_deref(),
            triggering_fields: None,
            condition: None,
            parts: None,
        };
        match d.decision {
            Decision::NoTriggeringFieldChanged => out.triggering_fields = Some(&d.plan.fields),
            Decision::ConditionFalse => {
                if let Some(c) = &d.plan.condition {
                    out.condition = Some(c.source());
                    out.parts = Some(c.explain(new, old).parts.into_iter().map(PartNote).collect());
                }
            }
            _ => {}
        }
        out
    }
}

/// A part of a false condition: `{"part", "value", "fields": {name: value}}`.
struct PartNote(Part);

impl Serialize for PartNote {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Values<'a>(&'a [(String, Value)]);
        impl Serialize for Values<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut map = serializer.serialize_map(None)?;
                for (i, (name, value)) in self.0.iter().enumerate() {
                    // A field read twice by one part is shown once.
                    if !self.0[..i].iter().any(|(seen, _)| seen == name) {
                        map.serialize_entry(name, &Shown(value))?;
                    }
                }
                map.end()
            }
        }
        let mut map = serializer.serialize_map(Some(3))?;
        map.serialize_entry("part", &self.0.text)?;
        map.serialize_entry("value", &self.0.value)?;
        map.serialize_entry("fields", &Values(&self.0.values))?;
        map.end()
    }
}

/// Why a webhook fired or did not, in a sentence.
fn reason(d: &Decided<'_>) -> String {
    match d.decision {
        Decision::Fire => "fired".into(),
        Decision::NotOnCreate | Decision::NotOnUpdate => {
            let on = if d.decision == Decision::NotOnCreate { "created" } else { "updated" };
            let schedule = if d.plan.schedule.is_some() { " (it runs on its schedule)" } else { "" };
            format!("it does not fire when a record is {on}{schedule}")
        }
        Decision::NoTriggeringFieldChanged => {
            format!("none of its triggering fields changed ({})", d.plan.fields.join(", "))
        }
        Decision::ConditionFalse => "its condition was false".into(),
        Decision::OwnWriteback => "the change is its own write-back".into(),
    }
}

/// The fields the change set: on an update those whose value differs, old and new; on a
/// creation every field, new only.
struct Changed<'a> {
    old: Option<&'a Fields>,
    new: &'a Fields,
}

impl Serialize for Changed<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Pair<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            old: Option<Shown<'a>>,
            new: Shown<'a>,
        }
        let mut map = serializer.serialize_map(None)?;
        match self.old {
            None => {
                for (k, v) in self.new {
                    map.serialize_entry(k, &Pair { old: None, new: Shown(v) })?;
                }
            }
            Some(old) => {
                let keys = old.keys().chain(self.new.keys().filter(|k| !old.contains_key(*k)));
                for k in keys {
                    let (o, n) = (old.get(k).unwrap_or(&Value::Null), self.new.get(k).unwrap_or(&Value::Null));
                    if o != n {
                        map.serialize_entry(k, &Pair { old: Some(Shown(o)), new: Shown(n) })?;
                    }
                }
            }
        }
        map.end()
    }
}

/// `v` as the note keeps it: long strings cut, large arrays and objects summarised.
struct Shown<'a>(&'a Value);

impl Serialize for Shown<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let cut = |text: &str| format!("{}…", text.chars().take(SHOWN_CHARS).collect::<String>());
        match self.0 {
            Value::String(s) if s.len() > SHOWN_CHARS && s.chars().count() > SHOWN_CHARS => {
                serializer.serialize_str(&cut(s))
            }
            Value::Array(_) | Value::Object(_) => {
                let text = self.0.to_string();
                if text.len() > 4 * SHOWN_CHARS {
                    serializer.serialize_str(&cut(&text))
                } else {
                    self.0.serialize(serializer)
                }
            }
            v => v.serialize(serializer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Changed, Shown};
    use serde_json::{Value, json};

    fn changed(old: Option<&hookline_model::Fields>, new: &hookline_model::Fields) -> Value {
        serde_json::to_value(Changed { old, new }).unwrap()
    }

    fn shown(v: &Value) -> Value {
        serde_json::to_value(Shown(v)).unwrap()
    }

    #[test]
    fn changes_show_what_differs_and_cut_long_values() {
        let old = json!({"a": 1, "b": "x", "gone": true}).as_object().cloned().unwrap();
        let new = json!({"a": 1, "b": "y", "added": 2}).as_object().cloned().unwrap();
        assert_eq!(
            changed(Some(&old), &new),
            json!({"b": {"old": "x", "new": "y"}, "gone": {"old": true, "new": null}, "added": {"old": null, "new": 2}})
        );
        assert_eq!(changed(None, &new), json!({"a": {"new": 1}, "b": {"new": "y"}, "added": {"new": 2}}));
        let long = "é".repeat(500);
        let cut = shown(&json!(long));
        assert_eq!(cut.as_str().unwrap().chars().count(), 201);
    }
}
