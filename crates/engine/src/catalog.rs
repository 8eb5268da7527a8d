//! The compiled view of every definition: data objects and webhooks with their trigger
//! plans, templates and scripts checked once, at save or load, never per call — and the
//! view every worker of a node shares ([`CatalogView`]), replaced whole when any definition
//! changes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use hookline_model::url::{VALUE_END, VALUE_START};
use hookline_model::webhook::Backoff as DefBackoff;
use hookline_model::{AuthDef, DataObject, FieldError, StoredWebhook, TriggerPlan, WebhookDef};
use hookline_outbound::{Backoff, RetryPolicy};
use hookline_secrets::SecretBox;
use hookline_store::{Store, StoreError};
use tokio::sync::{mpsc, watch};

/// Template names inside a webhook's environment.
pub(crate) const URL_TEMPLATE: &str = "url";
pub(crate) const BODY_TEMPLATE: &str = "body";
pub(crate) fn header_template(name: &str) -> String {
    format!("header:{name}")
}

/// A webhook ready to run: validated, templates parsed, scripts syntax-checked. `Debug`
/// names it only: it holds secrets and script sources.
pub struct CompiledWebhook {
    pub def: WebhookDef,
    pub version: u64,
    pub paused: bool,
    pub plan: TriggerPlan,
    pub retry: RetryPolicy,
    /// The templates under the full fuel, rendered on the script pool.
    pub(crate) templates: minijinja::Environment<'static>,
    /// The same templates under a small fuel, rendered inline: a template that needs more
    /// (or writes more than a little) is rendered again on the pool.
    pub(crate) quick: minijinja::Environment<'static>,
    /// The request URL when it is plain text (no template syntax, no URL script): the same
    /// for every call, so it is rendered and checked once, here.
    pub(crate) static_url: Option<String>,
    pub body_script: Option<Arc<str>>,
    /// `auth.script`: headers that authenticate.
    pub header_script: Option<Arc<str>>,
    /// `request.headers_script`: other computed headers.
    pub headers_script: Option<Arc<str>>,
    pub url_script: Option<Arc<str>>,
    /// The `secrets` map scripts see.
    pub script_secrets: hookline_script::ScriptSecrets,
    /// Every secret value a request of this webhook may carry, for redaction.
    pub secret_values: Vec<String>,
    pub response_script: Option<Arc<str>>,
    /// Standard Webhooks signing secrets (empty: unsigned).
    pub signing: Vec<hookline_outbound::SigningSecret>,
    /// Calls per period across the cluster, if limited.
    pub rate: Option<hookline_model::webhook::RateLimit>,
}

impl std::fmt::Debug for CompiledWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledWebhook").field("id", &self.def.id).field("version", &self.version).finish()
    }
}

impl CompiledWebhook {
    /// The rate limit in the store's terms.
    pub fn store_rate(&self) -> Option<hookline_store::Rate> {
        self.rate.map(|r| hookline_store::Rate { interval: r.interval(), burst: 0 })
    }
}

/// Most a template may do in one render: instructions (minijinja's fuel), then output.
pub const TEMPLATE_FUEL: u64 = 2_000_000;
pub const TEMPLATE_OUTPUT_LIMIT: usize = 8 * 1024 * 1024;
/// What a template may do when rendered inline on an async thread — a few hundred
/// microseconds at most; one that needs more is rendered on the script pool instead.
pub const QUICK_TEMPLATE_FUEL: u64 = 5_000;
pub const QUICK_TEMPLATE_OUTPUT: usize = 64 * 1024;

/// The templates of `def` (URL, headers, body) in one environment, under `fuel`.
fn environment(def: &WebhookDef, fuel: u64) -> Result<minijinja::Environment<'static>, FieldError> {
    let mut templates = minijinja::Environment::new();
    templates.set_undefined_behavior(minijinja::UndefinedBehavior::Lenient);
    templates.set_fuel(Some(fuel));
    // Values rendered into the URL are marked, so the URL's structure is read from the
    // template's own text and each value encoded for its part (`hookline_model::url`).
    templates.set_formatter(|out, state, value| {
        if state.name() != URL_TEMPLATE {
            return minijinja::escape_formatter(out, state, value);
        }
        let text = if value.is_undefined() || value.is_none() { String::new() } else { value.to_string() };
        let clean: String = text.chars().filter(|c| !matches!(*c, VALUE_START | VALUE_END)).collect();
        write!(out, "{VALUE_START}{clean}{VALUE_END}").map_err(minijinja::Error::from)
    });
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
    Ok(templates)
}

/// The URL of `def` as every call sends it, if no part of it depends on the call.
fn static_url(def: &WebhookDef, env: &minijinja::Environment<'static>) -> Option<String> {
    if def.request.url_script.is_some() || def.request.url.contains(['{', '}']) {
        return None;
    }
    let marked = env.get_template(URL_TEMPLATE).ok()?.render(minijinja::context! {}).ok()?;
    hookline_model::url::finish(&marked, def.request.url_host_from_record).ok()
}

/// Validates and compiles a stored webhook against the objects it names. Errors name the
/// definition field at fault. Parses templates (microseconds); script syntax is checked by
/// the caller on the script pool ([`check_scripts`]), never on an async thread.
pub fn compile<'a>(
    stored: &StoredWebhook,
    object_of: impl Fn(&str) -> Option<&'a DataObject>,
) -> Result<CompiledWebhook, FieldError> {
    let def = &stored.definition;
    let plan = def.validate_stored(object_of)?;

    let templates = environment(def, TEMPLATE_FUEL)?;
    let quick = environment(def, QUICK_TEMPLATE_FUEL)?;
    let static_url = static_url(def, &quick);

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
        quick,
        static_url,
        body_script: def.request.body_script.as_deref().map(Arc::from),
        header_script,
        headers_script: def.request.headers_script.as_deref().map(Arc::from),
        url_script: def.request.url_script.as_deref().map(Arc::from),
        script_secrets: hookline_script::ScriptSecrets(Arc::new(def.secrets.clone())),
        secret_values: def.secret_values(),
        response_script: def.response_script.as_deref().map(Arc::from),
        signing,
        // validate() checked the text already.
        rate: def.settings.rate_limit.as_deref().and_then(|r| hookline_model::webhook::parse_rate_limit(r).ok()),
    })
}

/// Checks the syntax of every script of a definition on the script pool; the error names
/// the definition field at fault.
pub async fn check_scripts(scripts: &hookline_script::ScriptPool, def: &WebhookDef) -> Result<(), FieldError> {
    for (path, source) in def.scripts() {
        scripts.check_syntax(source.to_string()).await.map_err(|e| FieldError::new(path, e.to_string()))?;
    }
    Ok(())
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

/// A webhook this node cannot run, and why (never holding a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// The data object it watches: that object's changes wait until it loads.
    pub object: String,
    pub reason: String,
}

/// An immutable snapshot of all definitions; replaced whole when any changes.
#[derive(Debug, Default)]
pub struct Catalog {
    /// The definitions' version this snapshot holds (at least).
    pub version: u64,
    pub objects: HashMap<String, Arc<DataObject>>,
    pub webhooks: HashMap<String, Arc<CompiledWebhook>>,
    /// Webhooks that do not load here: their secrets do not open with this node's key, or
    /// they no longer compile against their object.
    pub broken: BTreeMap<String, Broken>,
}

impl Catalog {
    /// Loads and compiles every definition, as of one version of them all. A webhook that
    /// does not load is kept in [`Catalog::broken`] with the reason, rather than stopping
    /// the node or being skipped silently.
    pub async fn load(store: &dyn Store, secrets: &SecretBox) -> Result<Catalog, StoreError> {
        let defs = store.definitions().await?;
        let secrets = secrets.clone();
        // Opening secrets and compiling conditions and templates of every webhook is CPU
        // work in proportion to their number: off the async threads.
        tokio::task::spawn_blocking(move || Catalog::compile_all(defs, &secrets))
            .await
            .map_err(|e| StoreError::Backend(format!("compiling the definitions failed: {e}")))
    }

    fn compile_all(defs: hookline_store::Definitions, secrets: &SecretBox) -> Catalog {
        let objects: HashMap<String, Arc<DataObject>> =
            defs.objects.into_iter().map(|o| (o.name.clone(), Arc::new(o))).collect();
        let mut webhooks = HashMap::new();
        let mut broken = BTreeMap::new();
        for mut stored in defs.webhooks {
            let id = stored.definition.id.clone();
            let object = stored.definition.object.clone();
            if open_secrets(&mut stored, secrets).is_err() {
                let reason = "its secrets do not open with this node's --secret-key (every node of a cluster needs the same key)";
                broken.insert(id, Broken { object, reason: reason.into() });
                continue;
            }
            match compile(&stored, |name| objects.get(name).map(|o| o.as_ref())) {
                Ok(c) => {
                    webhooks.insert(id, Arc::new(c));
                }
                Err(error) => {
                    broken.insert(id, Broken { object, reason: format!("does not compile: {error}") });
                }
            }
        }
        Catalog { version: defs.version, objects, webhooks, broken }
    }

    /// Webhooks whose trigger watches `object`.
    pub fn webhooks_on<'a>(&'a self, object: &'a str) -> impl Iterator<Item = &'a Arc<CompiledWebhook>> + 'a {
        self.webhooks.values().filter(move |w| w.def.object == object)
    }

    /// Webhooks on `object` this node cannot load.
    pub fn broken_on<'a>(&'a self, object: &'a str) -> impl Iterator<Item = (&'a String, &'a Broken)> + 'a {
        self.broken.iter().filter(move |(_, b)| b.object == object)
    }
}

/// The node's current catalog, shared by every worker, and a way to ask for a newer one.
#[derive(Clone)]
pub struct CatalogView {
    rx: watch::Receiver<Arc<Catalog>>,
    refresh: mpsc::UnboundedSender<u64>,
    /// The sender of a fixed view, kept so the view stays open.
    _fixed: Option<Arc<watch::Sender<Arc<Catalog>>>>,
}

impl CatalogView {
    /// A view fed by `rx`, asking for reloads on `refresh` (the coordinator's).
    pub fn new(rx: watch::Receiver<Arc<Catalog>>, refresh: mpsc::UnboundedSender<u64>) -> Self {
        CatalogView { rx, refresh, _fixed: None }
    }

    /// A view of a fixed catalog (tests, tools).
    pub fn fixed(catalog: Catalog) -> Self {
        let (tx, rx) = watch::channel(Arc::new(catalog));
        let (refresh, _) = mpsc::unbounded_channel();
        CatalogView { rx, refresh, _fixed: Some(Arc::new(tx)) }
    }

    pub fn current(&self) -> Arc<Catalog> {
        self.rx.borrow().clone()
    }

    /// A catalog of definitions at least at `version`: the current one if it is, else one
    /// loaded for it; None if none came within `timeout`.
    pub async fn at_least(&self, version: u64, timeout: Duration) -> Option<Arc<Catalog>> {
        let current = self.current();
        if current.version >= version {
            return Some(current);
        }
        let _ = self.refresh.send(version);
        let mut rx = self.rx.clone();
        let fresh = tokio::time::timeout(timeout, rx.wait_for(|c| c.version >= version)).await;
        match fresh {
            Ok(Ok(c)) => Some(c.clone()),
            _ => None,
        }
    }

    /// Resolves when the catalog is replaced.
    pub async fn changed(&mut self) {
        if self.rx.changed().await.is_err() {
            // The coordinator is gone (the node is stopping): nothing will change again.
            std::future::pending::<()>().await;
        }
    }
}
