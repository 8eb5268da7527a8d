//! The compiled view of every definition: data objects and webhooks with their trigger
//! plans, templates and scripts checked once, at save or load, never per call.

use std::collections::HashMap;
use std::sync::Arc;

use hookline_model::webhook::Backoff as DefBackoff;
use hookline_model::{AuthDef, DataObject, FieldError, StoredWebhook, TriggerPlan, WebhookDef};
use hookline_outbound::{Backoff, RetryPolicy};
use hookline_secrets::SecretBox;
use hookline_store::{Store, StoreError};

/// Template names inside a webhook's environment.
pub(crate) const URL_TEMPLATE: &str = "url";
pub(crate) const BODY_TEMPLATE: &str = "body";
pub(crate) fn header_template(name: &str) -> String {
    format!("header:{name}")
}

/// A webhook ready to run: validated, templates parsed, scripts syntax-checked.
#[derive(Debug)]
pub struct CompiledWebhook {
    pub def: WebhookDef,
    pub version: u64,
    pub paused: bool,
    pub plan: TriggerPlan,
    pub retry: RetryPolicy,
    pub(crate) templates: minijinja::Environment<'static>,
    pub body_script: Option<Arc<str>>,
    pub header_script: Option<Arc<str>>,
    pub response_script: Option<Arc<str>>,
    /// Standard Webhooks signing secrets (empty: unsigned).
    pub signing: Vec<hookline_outbound::SigningSecret>,
    /// Calls per period across the cluster, if limited.
    pub rate: Option<hookline_model::webhook::RateLimit>,
}

/// Validates and compiles a stored webhook against the objects it names. Errors name the
/// definition field at fault.
pub fn compile<'a>(
    stored: &StoredWebhook,
    object_of: impl Fn(&str) -> Option<&'a DataObject>,
) -> Result<CompiledWebhook, FieldError> {
    let def = &stored.definition;
    let plan = def.validate(object_of)?;

    let mut templates = minijinja::Environment::new();
    templates.set_undefined_behavior(minijinja::UndefinedBehavior::Lenient);
    let template_err = |field: String, e: minijinja::Error| {
        FieldError::new(field, format!("template error: {}", e.detail().unwrap_or(&e.to_string())))
    };
    templates
        .add_template_owned(URL_TEMPLATE, def.request.url.clone())
        .map_err(|e| template_err("request.url".into(), e))?;
    for (name, value) in &def.request.headers {
        templates
            .add_template_owned(header_template(name), value.clone())
            .map_err(|e| template_err(format!("request.headers.{name}"), e))?;
    }
    if let Some(body) = &def.request.body_template {
        templates
            .add_template_owned(BODY_TEMPLATE, body.clone())
            .map_err(|e| template_err("request.body_template".into(), e))?;
    }
    for (path, script) in def.scripts() {
        hookline_script::check_syntax(script).map_err(|e| FieldError::new(path, e.to_string()))?;
    }

    let mut signing = Vec::new();
    for (i, secret) in def.signing.iter().flat_map(|s| &s.secrets).enumerate() {
        let parsed = hookline_outbound::SigningSecret::parse(secret)
            .map_err(|e| FieldError::new(format!("signing.secrets[{i}]"), e.to_string()))?;
        signing.push(parsed);
    }
    let s = &def.settings;
    let retry = RetryPolicy {
        retries: s.retries,
        wait: s.retry_wait.0,
        backoff: match s.backoff {
            DefBackoff::Fixed => Backoff::Fixed,
            DefBackoff::Exponential => Backoff::Exponential { max: s.max_retry_wait.0 },
        },
    };
    let header_script = match &def.auth {
        AuthDef::Script { script } => Some(Arc::from(script.as_str())),
        _ => None,
    };
    Ok(CompiledWebhook {
        def: def.clone(),
        version: stored.version,
        paused: stored.paused,
        plan,
        retry,
        templates,
        body_script: def.request.body_script.as_deref().map(Arc::from),
        header_script,
        response_script: def.response_script.as_deref().map(Arc::from),
        signing,
        // validate() checked the text already.
        rate: def.settings.rate_limit.as_deref().and_then(|r| hookline_model::webhook::parse_rate_limit(r).ok()),
    })
}

/// Seals every secret of a definition for storage. Already sealed values stay as they are.
pub fn seal_secrets(stored: &mut StoredWebhook, secrets: &SecretBox) {
    for s in stored.definition.secrets_mut() {
        if !SecretBox::is_sealed(s) {
            *s = secrets.seal(s);
        }
    }
}

/// Opens the sealed secrets of a stored definition (plain values, from before encryption,
/// are kept).
pub fn open_secrets(stored: &mut StoredWebhook, secrets: &SecretBox) -> Result<(), hookline_secrets::SecretError> {
    for s in stored.definition.secrets_mut() {
        if SecretBox::is_sealed(s) {
            *s = secrets.open(s)?;
        }
    }
    Ok(())
}

/// An immutable snapshot of all definitions; replaced whole when any changes.
#[derive(Debug, Default)]
pub struct Catalog {
    pub objects: HashMap<String, Arc<DataObject>>,
    pub webhooks: HashMap<String, Arc<CompiledWebhook>>,
}

impl Catalog {
    /// Loads and compiles every definition. A webhook that no longer compiles (say, its
    /// object lost a field) is left out and logged, rather than stopping the node.
    pub async fn load(store: &dyn Store, secrets: &SecretBox) -> Result<Catalog, StoreError> {
        let objects: HashMap<String, Arc<DataObject>> =
            store.list_objects().await?.into_iter().map(|o| (o.name.clone(), Arc::new(o))).collect();
        let mut webhooks = HashMap::new();
        for mut stored in store.list_webhooks().await? {
            if let Err(error) = open_secrets(&mut stored, secrets) {
                tracing::error!(webhook_id = %stored.definition.id, %error, "cannot decrypt the webhook's secrets (is --secret-key the same on every node?); skipped");
                continue;
            }
            match compile(&stored, |name| objects.get(name).map(|o| o.as_ref())) {
                Ok(c) => {
                    webhooks.insert(stored.definition.id.clone(), Arc::new(c));
                }
                Err(error) => {
                    tracing::error!(webhook_id = %stored.definition.id, %error, "webhook does not compile; skipped")
                }
            }
        }
        Ok(Catalog { objects, webhooks })
    }

    /// Webhooks whose trigger watches `object`.
    pub fn webhooks_on<'a>(&'a self, object: &'a str) -> impl Iterator<Item = &'a Arc<CompiledWebhook>> + 'a {
        self.webhooks.values().filter(move |w| w.def.object == object)
    }
}
