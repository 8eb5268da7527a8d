//! The record's journey, as the trigger decided it: for each change, what changed and, for
//! each webhook of the object, whether it fired and, if not, why (with the value of each
//! part of a false condition). Kept by the store ([`hookline_store::Store::note_changes`]),
//! read by `GET /v1/objects/{object}/records/{id}/journey`.

use hookline_model::trigger::Decision;
use hookline_model::{Fields, TriggerPlan};
use hookline_proto::Change;
use hookline_store::JourneyNote;
use serde_json::{Map, Value, json};

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

/// The note on `change`, whose versions are `old` (None: created) and `new`.
pub(crate) fn note(
    change: &Change,
    old: Option<&Fields>,
    new: &Fields,
    decided: &[Decided<'_>],
    stopped: Option<&str>,
) -> JourneyNote {
    let decisions: Vec<Value> = decided.iter().map(|d| decision(d, old, new)).collect();
    let mut note = json!({
        "version": change.version,
        "at_ms": change.at_ms,
        "created": old.is_none(),
        "changed": changed(old, new),
        "origin_webhook": (!change.origin_webhook.is_empty()).then_some(&change.origin_webhook),
        "hops": change.hops,
        "trace_id": crate::trace::trace_id(&change.traceparent),
        "decisions": decisions,
    });
    if let Some(why) = stopped {
        note["stopped"] = json!(why);
    }
    JourneyNote {
        object: change.object.clone(),
        record_id: change.record_id.clone(),
        version: change.version,
        note: serde_json::to_vec(&note).unwrap_or_default(),
    }
}

fn decision(d: &Decided<'_>, old: Option<&Fields>, new: &Fields) -> Value {
    let mut out = json!({
        "webhook": d.webhook,
        "webhook_version": d.webhook_version,
        "fired": d.decision == Decision::Fire,
        "decision": d.decision.as_str(),
        "reason": reason(d),
    });
    if let Some(id) = &d.job_id {
        out["job_id"] = json!(id);
    }
    match d.decision {
        Decision::NoTriggeringFieldChanged => out["triggering_fields"] = json!(d.plan.fields),
        Decision::ConditionFalse => {
            if let Some(c) = &d.plan.condition {
                let explained = c.explain(new, old);
                out["condition"] = json!(c.source());
                out["parts"] = explained
                    .parts
                    .iter()
                    .map(|p| {
                        let values: Map<String, Value> =
                            p.values.iter().map(|(name, v)| (name.clone(), shown(v))).collect();
                        json!({"part": p.text, "value": p.value, "fields": values})
                    })
                    .collect();
            }
        }
        _ => {}
    }
    out
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
fn changed(old: Option<&Fields>, new: &Fields) -> Value {
    let mut out = Map::new();
    match old {
        None => {
            for (k, v) in new {
                out.insert(k.clone(), json!({"new": shown(v)}));
            }
        }
        Some(old) => {
            let keys = old.keys().chain(new.keys().filter(|k| !old.contains_key(*k)));
            for k in keys {
                let (o, n) = (old.get(k).unwrap_or(&Value::Null), new.get(k).unwrap_or(&Value::Null));
                if o != n {
                    out.insert(k.clone(), json!({"old": shown(o), "new": shown(n)}));
                }
            }
        }
    }
    Value::Object(out)
}

/// `v` as the note keeps it: long strings cut, large arrays and objects summarised.
fn shown(v: &Value) -> Value {
    match v {
        Value::String(s) if s.chars().count() > SHOWN_CHARS => {
            Value::String(format!("{}…", s.chars().take(SHOWN_CHARS).collect::<String>()))
        }
        Value::Array(_) | Value::Object(_) => {
            let text = v.to_string();
            if text.len() > 4 * SHOWN_CHARS {
                Value::String(format!("{}…", text.chars().take(SHOWN_CHARS).collect::<String>()))
            } else {
                v.clone()
            }
        }
        _ => v.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::{changed, shown};
    use serde_json::json;

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
