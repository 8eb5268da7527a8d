//! Whether one change to a record fires one webhook: pure logic, tested by table.

use serde_json::Value;

use crate::object::Fields;
use crate::webhook::TriggerPlan;

/// A change as the trigger sees it.
#[derive(Debug, Clone, Copy)]
pub struct ChangeView<'a> {
    /// None when the change created the record.
    pub old: Option<&'a Fields>,
    pub new: &'a Fields,
    /// The webhook whose write-back made this change, if any.
    pub origin_webhook: Option<&'a str>,
}

/// The trigger's verdict, with the reason when it does not fire (for spans and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Fire,
    NotOnCreate,
    NotOnUpdate,
    /// An update that changed none of the triggering fields.
    NoTriggeringFieldChanged,
    ConditionFalse,
    /// A write-back of this very webhook: firing again would loop.
    OwnWriteback,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Fire => "fire",
            Decision::NotOnCreate => "not_on_create",
            Decision::NotOnUpdate => "not_on_update",
            Decision::NoTriggeringFieldChanged => "no_triggering_field_changed",
            Decision::ConditionFalse => "condition_false",
            Decision::OwnWriteback => "own_writeback",
        }
    }
}

/// A missing field and an explicit null are the same value.
fn value<'a>(fields: &'a Fields, key: &str) -> &'a Value {
    fields.get(key).unwrap_or(&Value::Null)
}

/// Decides whether `change` fires the webhook `webhook_id` with trigger `plan`.
pub fn decide(webhook_id: &str, plan: &TriggerPlan, change: ChangeView<'_>) -> Decision {
    if change.origin_webhook == Some(webhook_id) {
        return Decision::OwnWriteback;
    }
    match change.old {
        None if !plan.on_create => return Decision::NotOnCreate,
        Some(_) if !plan.on_update => return Decision::NotOnUpdate,
        Some(old) => {
            let changed = |key: &str| value(old, key) != value(change.new, key);
            let any = if plan.fields.is_empty() {
                old.keys().chain(change.new.keys()).any(|k| changed(k))
            } else {
                plan.fields.iter().any(|k| changed(k))
            };
            if !any {
                return Decision::NoTriggeringFieldChanged;
            }
        }
        None => {}
    }
    match &plan.condition {
        Some(c) if !c.eval(change.new, change.old) => Decision::ConditionFalse,
        _ => Decision::Fire,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::DataObject;
    use serde_json::json;

    fn survey() -> DataObject {
        serde_json::from_value(json!({
            "name": "survey",
            "fields": [
                {"key": "status", "label": "Status", "type": "string"},
                {"key": "sat", "label": "Transactional Satisfaction", "type": "number"},
                {"key": "comment", "type": "string"}
            ]
        }))
        .unwrap()
    }

    fn plan(on_create: bool, on_update: bool, fields: &[&str], condition: Option<&str>) -> TriggerPlan {
        TriggerPlan {
            on_create,
            on_update,
            fields: fields.iter().map(|s| s.to_string()).collect(),
            condition: condition.map(|c| crate::condition::parse(c, &survey()).unwrap()),
            schedule: None,
        }
    }

    fn fields(v: serde_json::Value) -> Fields {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn decisions() {
        let seed = plan(false, true, &["status", "sat"], Some("Status = Completed and Transactional Satisfaction = 0"));
        let open = fields(json!({"status": "Open", "sat": 0, "comment": "x"}));
        let done0 = fields(json!({"status": "Completed", "sat": 0, "comment": "x"}));
        let done5 = fields(json!({"status": "Completed", "sat": 5, "comment": "x"}));
        let done0_comment = fields(json!({"status": "Completed", "sat": 0, "comment": "y"}));
        let view = |old, new| ChangeView { old, new, origin_webhook: None };
        let cases: Vec<(&TriggerPlan, ChangeView<'_>, Decision)> = vec![
            (&seed, view(None, &done0), Decision::NotOnCreate),
            (&seed, view(Some(&open), &done0), Decision::Fire),
            (&seed, view(Some(&open), &done5), Decision::ConditionFalse),
            (&seed, view(Some(&done0), &done0_comment), Decision::NoTriggeringFieldChanged),
            (&seed, view(Some(&done0), &done0), Decision::NoTriggeringFieldChanged),
            (&seed, ChangeView { old: Some(&open), new: &done0, origin_webhook: Some("wh") }, Decision::OwnWriteback),
            (&seed, ChangeView { old: Some(&open), new: &done0, origin_webhook: Some("other") }, Decision::Fire),
        ];
        for (i, (p, change, expected)) in cases.into_iter().enumerate() {
            assert_eq!(decide("wh", p, change), expected, "case {i}");
        }
    }

    #[test]
    fn empty_field_list_means_any_field_and_missing_equals_null() {
        let any = plan(true, true, &[], None);
        let a = fields(json!({"status": "Open"}));
        let a_null = fields(json!({"status": "Open", "comment": null}));
        let b = fields(json!({"status": "Open", "comment": "hi"}));
        let view = |old, new| ChangeView { old, new, origin_webhook: None };
        assert_eq!(decide("wh", &any, view(None, &a)), Decision::Fire);
        assert_eq!(decide("wh", &any, view(Some(&a), &b)), Decision::Fire);
        assert_eq!(decide("wh", &any, view(Some(&a), &a_null)), Decision::NoTriggeringFieldChanged);
        let create_only = plan(true, false, &[], None);
        assert_eq!(decide("wh", &create_only, view(Some(&a), &b)), Decision::NotOnUpdate);
    }
}
