//! The `/v1` API described as OpenAPI 3.0, served at `/openapi.json`. Written here rather
//! than derived, so it reads as a contract; the test command checks it against a running
//! node with schemathesis (no 5xx, every response as described).

use actix_web::HttpResponse;
use serde_json::{Value, json};

fn r(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn body(schema: Value) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": schema}}})
}

fn ok(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

/// An operation: its summary, parameters, body and success responses; every failure is the
/// common error shape.
fn op(summary: &str, params: &[Value], request: Option<Value>, responses: Value) -> Value {
    let mut responses = responses;
    responses["default"] = ok("refused: the error names the field at fault", r("Error"));
    let mut o = json!({"summary": summary, "responses": responses});
    if !params.is_empty() {
        o["parameters"] = Value::Array(params.to_vec());
    }
    if let Some(b) = request {
        o["requestBody"] = b;
    }
    o
}

fn path_param(name: &str, description: &str, example: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": description,
           "schema": {"type": "string", "minLength": 1}, "example": example})
}

fn query(name: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema})
}

fn doc() -> Value {
    let object = path_param("object", "a data object's name", "survey");
    let record = path_param("id", "a record's id", "S1");
    let webhook = path_param("id", "a webhook's id", "tickets");
    let example_object = json!({"name": "survey", "id_field": "a_surveyid", "fields": [
        {"key": "a_surveyid", "type": "string"}, {"key": "status", "label": "Status", "type": "string"},
        {"key": "score", "label": "Score", "type": "number"}]});
    let example_webhook = json!({"id": "tickets", "object": "survey",
        "trigger": {"on_create": true, "on_update": true, "fields": ["Status"], "condition": "Status = Completed and Score < 5"},
        "request": {"method": "POST", "url": "http://127.0.0.1:9/tickets", "body_template": "{\"id\": \"{{ record.id }}\"}"},
        "settings": {"retries": 1, "max_concurrency": 2}});
    let redriven = json!({"type": "object", "required": ["redriven"], "properties": {"redriven": {"type": "integer", "minimum": 0}}});
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Hookline",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Turns changes to records into calls to REST APIs and writes their answers back. \
                With --api-token, every /v1 call needs `Authorization: Bearer TOKEN`.",
        },
        "components": {
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object", "required": ["error"],
                    "properties": {"error": {
                        "type": "object", "required": ["code", "message"],
                        "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"}},
                    }},
                },
                "Field": {
                    "type": "object", "required": ["key", "type"],
                    "properties": {
                        "key": {"type": "string"}, "label": {"type": "string", "nullable": true},
                        "type": {"type": "string", "enum": ["string", "number", "boolean", "datetime", "json"]},
                    },
                },
                "DataObject": {
                    "type": "object", "required": ["name", "fields"], "example": example_object,
                    "properties": {
                        "name": {"type": "string"}, "id_field": {"type": "string", "nullable": true},
                        "fields": {"type": "array", "items": r("Field")},
                    },
                },
                "RecordInput": {
                    "type": "object", "required": ["fields"],
                    "example": {"id": "S1", "fields": {"a_surveyid": "S1", "status": "Completed", "score": 2}},
                    "properties": {"id": {"type": "string"}, "fields": {"type": "object"}},
                },
                "Record": {
                    "type": "object", "required": ["id", "version", "fields"],
                    "properties": {"id": {"type": "string"}, "version": {"type": "integer"}, "fields": {"type": "object"}},
                },
                "WriteResults": {
                    "type": "object", "required": ["results"],
                    "properties": {"results": {"type": "array", "items": {
                        "type": "object", "required": ["id", "version", "status"],
                        "properties": {
                            "id": {"type": "string"}, "version": {"type": "integer"},
                            "status": {"type": "string", "enum": ["created", "updated", "unchanged"]},
                        },
                    }}},
                },
                "Webhook": {
                    "type": "object", "required": ["id", "object", "trigger", "request"], "example": example_webhook,
                    "description": "A webhook definition (see the README for every field). Secrets read back as ***.",
                    "properties": {
                        "id": {"type": "string"}, "object": {"type": "string"},
                        "trigger": {"type": "object"}, "request": {"type": "object"},
                        "auth": {"type": "object"}, "signing": {"type": "object", "nullable": true},
                        "response_script": {"type": "string", "nullable": true},
                        "writeback": {"type": "object", "nullable": true},
                        "settings": {"type": "object"}, "secrets": {"type": "object"},
                        "version": {"type": "integer"}, "paused": {"type": "boolean"},
                    },
                },
                "Attempt": {
                    "type": "object",
                    "required": ["id", "webhook_id", "job_id", "record_ids", "attempt", "started_at", "duration_ms", "outcome", "cursor"],
                    "properties": {
                        "id": {"type": "string"}, "webhook_id": {"type": "string"}, "webhook_version": {"type": "integer"},
                        "job_id": {"type": "string"}, "record_ids": {"type": "array", "items": {"type": "string"}},
                        "attempt": {"type": "integer"}, "node_id": {"type": "string"},
                        "started_at": {"type": "string", "format": "date-time"}, "duration_ms": {"type": "integer"},
                        "outcome": {"type": "string", "enum": ["success", "retry_scheduled", "failed", "exhausted", "unspecified"]},
                        "error": {"type": "string", "nullable": true},
                        "next_attempt_at": {"type": "string", "nullable": true},
                        "request": {"type": "object", "nullable": true},
                        "response": {"type": "object", "nullable": true},
                        "writeback": {"type": "object", "nullable": true},
                        "traceparent": {"type": "string"}, "cursor": {"type": "string"},
                    },
                },
                "DeadLetter": {
                    "type": "object", "required": ["id", "job_id", "record_ids", "attempts", "reason"],
                    "properties": {
                        "id": {"type": "string"}, "job_id": {"type": "string"},
                        "record_ids": {"type": "array", "items": {"type": "string"}},
                        "attempts": {"type": "integer"}, "reason": {"type": "string"},
                    },
                },
                "FailedWriteback": {
                    "type": "object", "required": ["id", "job_id", "attempt_id", "record_ids", "reason"],
                    "properties": {
                        "id": {"type": "string"}, "job_id": {"type": "string"}, "attempt_id": {"type": "string"},
                        "record_ids": {"type": "array", "items": {"type": "string"}}, "reason": {"type": "string"},
                    },
                },
                "Journey": {
                    "type": "object", "required": ["object", "record_id", "record", "changes"],
                    "properties": {
                        "object": {"type": "string"}, "record_id": {"type": "string"},
                        "record": {"type": "object", "nullable": true},
                        "changes": {"type": "array", "items": {
                            "type": "object", "required": ["version", "at_ms", "created", "changed", "decisions"],
                            "properties": {
                                "version": {"type": "integer"}, "at_ms": {"type": "integer"}, "created": {"type": "boolean"},
                                "changed": {"type": "object"}, "origin_webhook": {"type": "string", "nullable": true},
                                "hops": {"type": "integer"}, "trace_id": {"type": "string", "nullable": true},
                                "stopped": {"type": "string"},
                                "decisions": {"type": "array", "items": {
                                    "type": "object", "required": ["webhook", "fired", "decision", "reason"],
                                    "properties": {
                                        "webhook": {"type": "string"}, "webhook_version": {"type": "integer"},
                                        "fired": {"type": "boolean"}, "reason": {"type": "string"},
                                        "decision": {"type": "string", "enum": ["fire", "not_on_create", "not_on_update", "no_triggering_field_changed", "condition_false", "own_writeback"]},
                                        "job_id": {"type": "string"}, "delivery": {"type": "string"},
                                        "condition": {"type": "string"}, "parts": {"type": "array", "items": {"type": "object"}},
                                        "triggering_fields": {"type": "array", "items": {"type": "string"}},
                                        "attempts": {"type": "array", "items": {"type": "object"}},
                                    },
                                }},
                            },
                        }},
                    },
                },
                "DryRunInput": {
                    "type": "object", "example": {"record_id": "S1"},
                    "properties": {"record_id": {"type": "string"}, "fields": {"type": "object"}, "send": {"type": "boolean"}},
                },
                "DryRun": {
                    "type": "object", "required": ["condition", "request"],
                    "properties": {
                        "condition": {"type": "boolean"},
                        "condition_parts": {"type": "array", "items": {"type": "object"}},
                        "request": {"type": "object"},
                        "sent": {"type": "object", "properties": {"job_id": {"type": "string"}}},
                    },
                },
            },
        },
        "security": [{"token": []}, {}],
        "paths": {
            "/v1/objects": {
                "get": op("Every data object", &[], None, json!({"200": ok("the objects", json!({"type": "array", "items": r("DataObject")}))})),
                "post": op("Create (or replace) a data object", &[], Some(body(r("DataObject"))), json!({
                    "201": ok("created", r("DataObject")), "200": ok("replaced", r("DataObject")),
                })),
            },
            "/v1/objects/{object}": {
                "get": op("One data object", std::slice::from_ref(&object), None, json!({"200": ok("the object", r("DataObject"))})),
                "put": op("Replace a data object", std::slice::from_ref(&object), Some(body(r("DataObject"))), json!({
                    "201": ok("created", r("DataObject")), "200": ok("replaced", r("DataObject")),
                })),
            },
            "/v1/objects/{object}/records": {
                "post": op(
                    "Create or update records: one, or an array checked whole (NDJSON with application/x-ndjson)",
                    std::slice::from_ref(&object),
                    Some(body(json!({"oneOf": [r("RecordInput"), {"type": "array", "items": r("RecordInput")}]}))),
                    json!({"201": ok("created", r("Record")), "200": ok("updated, or the results of an array", json!({"oneOf": [r("Record"), r("WriteResults")]}))}),
                ),
            },
            "/v1/objects/{object}/records/{id}": {
                "get": op("One record", &[object.clone(), record.clone()], None, json!({"200": ok("the record", r("Record"))})),
                "patch": op("Update a record's fields (null clears one)", &[object.clone(), record.clone()],
                    Some(body(json!({"type": "object", "required": ["fields"], "properties": {"fields": {"type": "object"}}}))),
                    json!({"200": ok("the record", r("Record"))})),
            },
            "/v1/objects/{object}/records/{id}/journey": {
                "get": op("A record's journey: each change, what it fired and why not, then each call's attempts",
                    &[object.clone(), record.clone(), query("limit", "the newest changes to show", json!({"type": "integer", "minimum": 1, "maximum": 50}))],
                    None, json!({"200": ok("the journey", r("Journey"))})),
            },
            "/v1/webhooks": {
                "get": op("Every webhook", &[], None, json!({"200": ok("the webhooks", json!({"type": "array", "items": r("Webhook")}))})),
                "post": op("Create a webhook", &[], Some(body(r("Webhook"))), json!({"201": ok("created", r("Webhook"))})),
            },
            "/v1/webhooks/{id}": {
                "get": op("One webhook", &[webhook.clone(), query("reveal", "`scripts`: the header scripts' sources (needs --api-token)", json!({"type": "string", "enum": ["scripts"]}))],
                    None, json!({"200": ok("the definition", r("Webhook"))})),
                "put": op("Create or replace a webhook (*** keeps a stored secret; the same definition changes nothing)",
                    std::slice::from_ref(&webhook), Some(body(r("Webhook"))),
                    json!({"200": ok("replaced or unchanged", r("Webhook")), "201": ok("created", r("Webhook"))})),
                "delete": op("Delete a webhook with its queue, attempts and dead letters", std::slice::from_ref(&webhook), None,
                    json!({"204": {"description": "deleted"}})),
            },
            "/v1/webhooks/{id}/pause": {
                "post": op("Pause: jobs queue, nothing is sent", std::slice::from_ref(&webhook), None, json!({"200": ok("the definition", r("Webhook"))})),
            },
            "/v1/webhooks/{id}/resume": {
                "post": op("Resume sending", std::slice::from_ref(&webhook), None, json!({"200": ok("the definition", r("Webhook"))})),
            },
            "/v1/webhooks/{id}/test": {
                "post": op("Dry run on a stored record or on fields: nothing is sent", std::slice::from_ref(&webhook),
                    Some(body(r("DryRunInput"))), json!({"200": ok("the condition and the request", r("DryRun"))})),
            },
            "/v1/webhooks/{id}/attempts": {
                "get": op("Attempts, newest first (NDJSON with Accept: application/x-ndjson)", &[
                    webhook.clone(),
                    query("record_id", "only attempts carrying this record", json!({"type": "string"})),
                    query("outcome", "only this outcome", json!({"type": "string", "enum": ["success", "retry_scheduled", "failed", "exhausted"]})),
                    query("status", "only responses with this status", json!({"type": "integer", "minimum": 0, "maximum": 999})),
                    query("since", "RFC 3339 time or Unix ms", json!({"type": "string"})),
                    query("before", "the previous page's last cursor", json!({"type": "string"})),
                    query("limit", "at most this many", json!({"type": "integer", "minimum": 1, "maximum": 10000})),
                ], None, json!({"200": ok("the attempts", json!({"type": "array", "items": r("Attempt")}))})),
            },
            "/v1/webhooks/{id}/dead-letters": {
                "get": op("Dead letters", std::slice::from_ref(&webhook), None, json!({"200": ok("the dead letters", json!({"type": "array", "items": r("DeadLetter")}))})),
            },
            "/v1/webhooks/{id}/dead-letters/redrive": {
                "post": op("Send dead letters again: all (no body), the listed ids, or those matching a record and a reason; dry_run only counts",
                    std::slice::from_ref(&webhook),
                    Some(json!({"required": false, "content": {"application/json": {"schema": {"type": "object", "properties": {
                        "ids": {"type": "array", "items": {"type": "string"}}, "record_id": {"type": "string"},
                        "reason": {"type": "string"}, "dry_run": {"type": "boolean"}}}}}})),
                    json!({"200": ok("how many matched and how many were sent", json!({"type": "object", "required": ["matching", "redriven"],
                        "properties": {"matching": {"type": "integer", "minimum": 0}, "redriven": {"type": "integer", "minimum": 0}}}))})),
            },
            "/v1/webhooks/{id}/writeback-failures": {
                "get": op("Write-backs that failed for good", std::slice::from_ref(&webhook), None, json!({"200": ok("the failures", json!({"type": "array", "items": r("FailedWriteback")}))})),
            },
            "/v1/webhooks/{id}/writeback-failures/redrive": {
                "post": op("Run every failed write-back again", std::slice::from_ref(&webhook), None, json!({"200": ok("how many", redriven)})),
            },
            "/v1/attempts/{id}": {
                "get": op("One attempt", &[path_param("id", "an attempt's id", "0190c9a8-7a4c-7cc3-8d6e-1f2a3b4c5d6e")], None, json!({"200": ok("the attempt", r("Attempt"))})),
            },
        },
    })
}

pub async fn serve() -> HttpResponse {
    HttpResponse::Ok().json(doc())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_route_is_described() {
        let doc = super::doc();
        let paths = doc["paths"].as_object().unwrap();
        for p in [
            "/v1/objects",
            "/v1/objects/{object}",
            "/v1/objects/{object}/records",
            "/v1/objects/{object}/records/{id}",
            "/v1/objects/{object}/records/{id}/journey",
            "/v1/webhooks",
            "/v1/webhooks/{id}",
            "/v1/webhooks/{id}/pause",
            "/v1/webhooks/{id}/resume",
            "/v1/webhooks/{id}/test",
            "/v1/webhooks/{id}/attempts",
            "/v1/webhooks/{id}/dead-letters",
            "/v1/webhooks/{id}/dead-letters/redrive",
            "/v1/webhooks/{id}/writeback-failures",
            "/v1/webhooks/{id}/writeback-failures/redrive",
            "/v1/attempts/{id}",
        ] {
            assert!(paths.contains_key(p), "{p} is not described");
        }
        // Every reference resolves.
        let text = doc.to_string();
        for name in text.split("#/components/schemas/").skip(1).map(|s| s.split('"').next().unwrap()) {
            assert!(doc["components"]["schemas"].get(name).is_some(), "{name} is not defined");
        }
    }
}
