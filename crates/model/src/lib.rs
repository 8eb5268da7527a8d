//! Hookline's domain model, with no I/O: data objects and records ([`object`]), webhook
//! definitions and their validation ([`webhook`]), the matching-condition language
//! ([`condition`]) and the pure decision of whether a change fires a webhook ([`trigger`]).
//! Everything above this crate (store, engine, API) speaks these types.

pub mod condition;
pub mod object;
pub mod schedule;
pub mod trigger;
pub mod url;
pub mod webhook;

pub use object::{DataObject, FieldDef, FieldError, FieldType, Fields, Record};
pub use trigger::{ChangeView, Decision, decide};
pub use webhook::{AuthDef, StoredWebhook, TriggerPlan, WebhookDef};
