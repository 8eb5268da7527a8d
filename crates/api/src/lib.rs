//! Hookline's HTTP API (actix-web): objects, records, webhooks, attempts; one error-to-HTTP mapping.
