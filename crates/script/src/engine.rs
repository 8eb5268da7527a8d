//! One thread's QuickJS runtime: compilation, the per-script realm cache and running calls.

use std::cell::{Cell, RefCell};
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rquickjs::context::EvalOptions;
use rquickjs::function::{Opt, This};
use rquickjs::{
    CatchResultExt, Coerced, Context, Ctx, Exception, Function, IntoJs, Object, Persistent, Runtime, Value,
};

use crate::error::{Phase, SCRIPT_FILE, ScriptError, classify};
use crate::{PoolConfig, ResponseView, ScriptCall, ScriptKind, ScriptOutput};

/// Opening of the wrapper; it stays on the script's first line so line numbers match.
const WRAP_OPEN: &str = "(function(){";
/// Closing of the wrapper, on its own line so a trailing `// comment` cannot swallow it.
const WRAP_CLOSE: &str = "\n})";

/// Runs first in every fresh realm: removes what scripts must not have, snapshots the
/// pristine global object and returns a function that restores it (returns `false` when it
/// could not). It only calls built-ins captured here, so later tampering cannot fool it.
const REALM_SETUP_JS: &str = r#"(function () {
  "use strict";
  var g = globalThis;
  delete g.FinalizationRegistry;
  var ownKeys = Reflect.ownKeys, getDesc = Reflect.getOwnPropertyDescriptor,
      define = Reflect.defineProperty, remove = Reflect.deleteProperty,
      getProto = Reflect.getPrototypeOf, setProto = Reflect.setPrototypeOf,
      isExtensible = Reflect.isExtensible, hasOwn = Object.hasOwn, same = Object.is,
      create = Object.create;
  var proto = getProto(g);
  var keys = ownKeys(g);
  var snapshot = create(null);
  for (var i = 0; i < keys.length; i++) snapshot[keys[i]] = getDesc(g, keys[i]);
  return function reset() {
    if (!isExtensible(g)) return false;
    var ok = true;
    var now = ownKeys(g);
    for (var i = 0; i < now.length; i++) {
      if (!hasOwn(snapshot, now[i]) && !remove(g, now[i])) ok = false;
    }
    for (var j = 0; j < keys.length; j++) {
      var want = snapshot[keys[j]], have = getDesc(g, keys[j]);
      if (!have || !same(have.value, want.value) || !same(have.get, want.get) ||
          !same(have.set, want.set) || have.writable !== want.writable ||
          have.enumerable !== want.enumerable || have.configurable !== want.configurable) {
        if (!define(g, keys[j], want)) ok = false;
      }
    }
    if (getProto(g) !== proto && !setProto(g, proto)) ok = false;
    return ok;
  };
})()"#;

/// Limits one engine applies.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub memory: usize,
    pub time: Duration,
    pub max_output: usize,
    pub cache: usize,
    pub stack: usize,
}

impl Limits {
    pub fn from_config(config: &PoolConfig, stack: usize) -> Self {
        Self {
            memory: config.memory_limit_bytes,
            time: config.time_limit,
            max_output: config.max_output_bytes,
            cache: config.cache_per_thread.max(1),
            stack,
        }
    }
}

/// The per-call deadline the interrupt handler checks.
#[derive(Default)]
struct Clock {
    deadline: Cell<Option<Instant>>,
    interrupted: Cell<bool>,
}

impl Clock {
    fn start(&self, limit: Duration) {
        self.interrupted.set(false);
        self.deadline.set(Instant::now().checked_add(limit));
    }

    fn stop(&self) {
        self.deadline.set(None);
    }

    fn expired(&self) -> bool {
        self.deadline.get().is_some_and(|deadline| Instant::now() >= deadline)
    }

    /// The interrupt handler: `true` makes QuickJS throw an uncatchable "interrupted".
    fn should_interrupt(&self) -> bool {
        if self.expired() {
            self.interrupted.set(true);
            true
        } else {
            false
        }
    }
}

/// Whether the engine must be thrown away after a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Health {
    Good,
    Discard,
}

/// A compiled script in its own realm. Field order is drop order: the persistent
/// functions must go before their context, and all of it before the runtime.
struct CachedScript {
    function: Persistent<Function<'static>>,
    reset: Persistent<Function<'static>>,
    context: Context,
    source: Arc<str>,
}

/// Bounded map from source hash to compiled script, least recently used first in `order`.
struct ScriptCache {
    entries: HashMap<u64, CachedScript>,
    order: VecDeque<u64>,
    capacity: usize,
}

impl ScriptCache {
    fn new(capacity: usize) -> Self {
        Self { entries: HashMap::new(), order: VecDeque::new(), capacity }
    }

    /// Whether `source` is cached under `key`; marks it most recently used. An entry with
    /// the same hash but another text is dropped.
    fn lookup(&mut self, key: u64, source: &str) -> bool {
        match self.entries.get(&key) {
            Some(entry) if *entry.source == *source => {
                self.touch(key);
                true
            }
            Some(_) => {
                self.remove(key);
                false
            }
            None => false,
        }
    }

    fn touch(&mut self, key: u64) {
        if let Some(pos) = self.order.iter().position(|k| *k == key) {
            self.order.remove(pos);
        }
        self.order.push_back(key);
    }

    fn insert(&mut self, key: u64, entry: CachedScript) {
        while self.entries.len() >= self.capacity && self.evict_oldest() {}
        self.entries.insert(key, entry);
        self.touch(key);
    }

    fn remove(&mut self, key: u64) {
        self.entries.remove(&key);
        self.order.retain(|k| *k != key);
    }

    fn evict_oldest(&mut self) -> bool {
        match self.order.pop_front() {
            Some(key) => {
                self.entries.remove(&key);
                true
            }
            None => false,
        }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// The output sink behind `write()`.
struct Sink {
    text: RefCell<String>,
    max: usize,
    overflow: Cell<bool>,
}

/// What `http` reports.
struct HttpView {
    request_body: String,
    status: u16,
    body: String,
    /// Headers with repeated names (case-insensitively) merged as `a, b`, first spelling kept.
    headers: Vec<(String, String)>,
}

impl HttpView {
    fn new(request_body: Option<&str>, response: Option<&ResponseView>) -> Self {
        let mut headers: Vec<(String, String)> = Vec::new();
        if let Some(response) = response {
            for (name, value) in &response.headers {
                match headers.iter_mut().find(|(seen, _)| seen.eq_ignore_ascii_case(name)) {
                    Some((_, merged)) => {
                        merged.push_str(", ");
                        merged.push_str(value);
                    }
                    None => headers.push((name.clone(), value.clone())),
                }
            }
        }
        Self {
            request_body: request_body.unwrap_or_default().to_owned(),
            status: response.map_or(0, |r| r.status),
            body: response.map(|r| r.body.clone()).unwrap_or_default(),
            headers,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(seen, _)| seen.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }
}

/// One thread's QuickJS runtime and its cache. Field order is drop order.
pub(crate) struct Engine {
    cache: ScriptCache,
    runtime: Runtime,
    clock: Rc<Clock>,
    limits: Limits,
}

impl Engine {
    pub fn new(limits: Limits) -> Result<Self, ScriptError> {
        let runtime = Runtime::new().map_err(|_| ScriptError::OutOfMemory)?;
        runtime.set_memory_limit(limits.memory);
        runtime.set_max_stack_size(limits.stack);
        let clock = Rc::new(Clock::default());
        let handler_clock = Rc::clone(&clock);
        runtime.set_interrupt_handler(Some(Box::new(move || handler_clock.should_interrupt())));
        Ok(Self { cache: ScriptCache::new(limits.cache), runtime, clock, limits })
    }

    /// Runs one call. `compiled` is told about every real compilation.
    pub fn run(&mut self, call: &ScriptCall, compiled: &dyn Fn()) -> (Result<ScriptOutput, ScriptError>, Health) {
        self.clock.start(self.limits.time);
        let result = self.run_timed(call, compiled);
        self.clock.stop();
        if self.clock.interrupted.get() || matches!(result, Err(ScriptError::Timeout(_))) {
            return (Err(ScriptError::Timeout(self.limits.time)), Health::Discard);
        }
        match result {
            Err(ScriptError::OutOfMemory) => (Err(ScriptError::OutOfMemory), Health::Discard),
            other => (other, Health::Good),
        }
    }

    fn run_timed(&mut self, call: &ScriptCall, compiled: &dyn Fn()) -> Result<ScriptOutput, ScriptError> {
        let key = source_key(&call.source);
        if !self.cache.lookup(key, &call.source) {
            let entry = compile_cached(&self.runtime, &call.source)?;
            compiled();
            tracing::debug!(source_hash = key, bytes = call.source.len(), "compiled script");
            self.make_room();
            self.cache.insert(key, entry);
        }
        let Some(entry) = self.cache.entries.get(&key) else {
            return Err(ScriptError::internal("compiled script missing from cache"));
        };
        let sink = Rc::new(Sink {
            text: RefCell::new(String::new()),
            max: self.limits.max_output,
            overflow: Cell::new(false),
        });
        let (result, clean) = entry.context.with(|ctx| call_in_realm(&ctx, entry, call, &sink, &self.clock));
        if !clean {
            tracing::debug!(source_hash = key, "discarding realm that could not be reset");
            self.cache.remove(key);
        }
        if sink.overflow.get() && !matches!(result, Err(ScriptError::OutOfMemory)) {
            return Err(ScriptError::OutputTooLarge(self.limits.max_output));
        }
        result
    }

    /// Before caching another realm: evict the oldest ones while the runtime uses more
    /// than half of its memory limit.
    fn make_room(&mut self) {
        if self.limits.memory == 0 {
            return;
        }
        let budget = i64::try_from(self.limits.memory / 2).unwrap_or(i64::MAX);
        let mut evicted = false;
        while self.cache.len() > 0 && self.runtime.memory_usage().malloc_size > budget {
            self.cache.evict_oldest();
            evicted = true;
        }
        if evicted {
            self.runtime.run_gc();
        }
    }

    /// Compiles `source` in a throwaway realm (for [`crate::check_syntax`]).
    pub fn check(&self, source: &str) -> Result<(), ScriptError> {
        self.clock.start(self.limits.time);
        let result = Context::full(&self.runtime)
            .map_err(|_| ScriptError::OutOfMemory)
            .and_then(|context| context.with(|ctx| compile(&ctx, source).map(drop)));
        self.clock.stop();
        if self.clock.interrupted.get() {
            return Err(ScriptError::Timeout(self.limits.time));
        }
        result
    }
}

/// Stack size QuickJS may use on a pool thread (the threads get a larger OS stack).
pub(crate) const POOL_JS_STACK: usize = 1024 * 1024;
/// OS stack of a pool thread.
pub(crate) const POOL_THREAD_STACK: usize = 8 * 1024 * 1024;
/// QuickJS stack for [`check_syntax`], which runs on the caller's thread.
const CHECK_JS_STACK: usize = 256 * 1024;

pub(crate) fn check_syntax(source: &str, config: &PoolConfig) -> Result<(), ScriptError> {
    Engine::new(Limits::from_config(config, CHECK_JS_STACK))?.check(source)
}

fn source_key(source: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    source.hash(&mut hasher);
    hasher.finish()
}

fn eval_options() -> EvalOptions {
    let mut options = EvalOptions::default();
    options.strict = false;
    options.filename = Some(SCRIPT_FILE.to_owned());
    options
}

/// A fresh realm with the reset function and the compiled script.
fn compile_cached(runtime: &Runtime, source: &Arc<str>) -> Result<CachedScript, ScriptError> {
    let context = Context::full(runtime).map_err(|_| ScriptError::OutOfMemory)?;
    let (function, reset) = context.with(|ctx| {
        let reset: Function = ctx.eval(REALM_SETUP_JS).catch(&ctx).map_err(|e| classify(&ctx, e, Phase::Run))?;
        let function = compile(&ctx, source)?;
        Ok::<_, ScriptError>((Persistent::save(&ctx, function), Persistent::save(&ctx, reset)))
    })?;
    Ok(CachedScript { function, reset, context, source: Arc::clone(source) })
}

/// Compiles the wrapped script and checks the result is exactly the wrapper function.
fn compile<'js>(ctx: &Ctx<'js>, source: &str) -> Result<Function<'js>, ScriptError> {
    if let Some(pos) = source.find('\0') {
        return Err(ScriptError::Syntax {
            message: "the script contains a NUL character".to_owned(),
            line: line_of(source, pos),
        });
    }
    // Taken before any user code can run, so a script cannot replace it to fool the check.
    let to_string: Function = ctx
        .globals()
        .get::<_, Object>("Function")
        .and_then(|f| f.get::<_, Object>("prototype"))
        .and_then(|p| p.get("toString"))
        .catch(ctx)
        .map_err(|e| classify(ctx, e, Phase::Run))?;
    let wrapped = format!("{WRAP_OPEN}{source}{WRAP_CLOSE}");
    let value: Value =
        ctx.eval_with_options(wrapped, eval_options()).catch(ctx).map_err(|e| classify(ctx, e, Phase::Compile))?;
    let function = value.into_function().ok_or_else(unbalanced)?;
    let text: String =
        to_string.call((This(function.clone()),)).catch(ctx).map_err(|e| classify(ctx, e, Phase::Run))?;
    // `function(){` + source + `\n}`: anything else means the source closed the wrapper.
    let body = text.strip_prefix(&WRAP_OPEN[1..]).and_then(|t| t.strip_suffix(&WRAP_CLOSE[..WRAP_CLOSE.len() - 1]));
    if body != Some(source) {
        return Err(unbalanced());
    }
    Ok(function)
}

fn unbalanced() -> ScriptError {
    ScriptError::Syntax {
        message: "the script closes the function it runs in (unbalanced `}` or `)`)".to_owned(),
        line: None,
    }
}

fn line_of(source: &str, byte: usize) -> Option<u32> {
    let newlines = source.get(..byte)?.matches('\n').count();
    u32::try_from(newlines + 1).ok()
}

/// Sets the call's globals, runs the script and its promise jobs, reads the result and
/// resets the realm's globals. Returns the result and whether the reset worked.
fn call_in_realm<'js>(
    ctx: &Ctx<'js>,
    entry: &CachedScript,
    call: &ScriptCall,
    sink: &Rc<Sink>,
    clock: &Clock,
) -> (Result<ScriptOutput, ScriptError>, bool) {
    let (function, reset) = match (entry.function.clone().restore(ctx), entry.reset.clone().restore(ctx)) {
        (Ok(function), Ok(reset)) => (function, reset),
        (Err(e), _) | (_, Err(e)) => return (Err(ScriptError::internal(e)), false),
    };
    let result = install_globals(ctx, call, sink)
        .and_then(|()| function.call::<_, Value>(()).catch(ctx).map_err(|e| classify(ctx, e, Phase::Run)))
        .and_then(|value| match call.kind {
            ScriptKind::Header => headers_from(ctx, value).map(ScriptOutput::Headers),
            ScriptKind::Body | ScriptKind::Response => Ok(ScriptOutput::Written(String::new())),
        });
    // Promise jobs: run them all, within the deadline. Jobs left over would run later in
    // some other script's call, so a queue that cannot be drained ends the call as a timeout.
    let mut drained = false;
    while !clock.expired() {
        if !ctx.execute_pending_job() {
            drained = true;
            break;
        }
    }
    if !drained {
        return (Err(ScriptError::Timeout(Duration::ZERO)), false);
    }
    let result = result.map(|output| match output {
        ScriptOutput::Written(_) => ScriptOutput::Written(sink.text.take()),
        headers => headers,
    });
    let clean = reset.call::<_, bool>(()).catch(ctx).unwrap_or(false);
    (result, clean)
}

fn install_globals<'js>(ctx: &Ctx<'js>, call: &ScriptCall, sink: &Rc<Sink>) -> Result<(), ScriptError> {
    let entities = serde_json::to_string(&call.changed_entities)
        .map_err(|e| ScriptError::internal(format!("changed entities: {e}")))?;
    let json = format!("{{\"changedEntities\":{entities}}}");
    let http = Rc::new(HttpView::new(call.request_body.as_deref(), call.response.as_ref()));
    let globals = ctx.globals();
    ctx.json_parse(json)
        .and_then(|data| globals.set("data", data))
        .and_then(|()| globals.set("http", http_object(ctx, http)?))
        .and_then(|()| globals.set("write", write_function(ctx, Rc::clone(sink))?))
        .catch(ctx)
        .map_err(|e| classify(ctx, e, Phase::Run))
}

fn write_function<'js>(ctx: &Ctx<'js>, sink: Rc<Sink>) -> rquickjs::Result<Function<'js>> {
    Function::new(ctx.clone(), move |ctx: Ctx<'js>, text: Opt<Coerced<String>>| -> rquickjs::Result<()> {
        let Some(Coerced(text)) = text.0 else {
            return Ok(());
        };
        let mut buffer = sink.text.borrow_mut();
        if buffer.len().saturating_add(text.len()) > sink.max {
            sink.overflow.set(true);
            return Err(Exception::throw_range(&ctx, &format!("write(): output exceeds {} bytes", sink.max)));
        }
        buffer.push_str(&text);
        Ok(())
    })?
    .with_name("write")
}

fn http_object<'js>(ctx: &Ctx<'js>, view: Rc<HttpView>) -> rquickjs::Result<Object<'js>> {
    let http = Object::new(ctx.clone())?;
    let v = Rc::clone(&view);
    http.set(
        "getRequestBodyUtf8",
        Function::new(ctx.clone(), move || v.request_body.clone())?.with_name("getRequestBodyUtf8")?,
    )?;
    let v = Rc::clone(&view);
    http.set(
        "getResponseBodyUtf8",
        Function::new(ctx.clone(), move || v.body.clone())?.with_name("getResponseBodyUtf8")?,
    )?;
    let v = Rc::clone(&view);
    http.set(
        "getResponseStatusCode",
        Function::new(ctx.clone(), move || i32::from(v.status))?.with_name("getResponseStatusCode")?,
    )?;
    let v = Rc::clone(&view);
    http.set(
        "getResponseHeader",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, name: Opt<Coerced<String>>| -> rquickjs::Result<Value<'js>> {
            match name.0.and_then(|Coerced(name)| v.header(&name).map(str::to_owned)) {
                Some(value) => value.into_js(&ctx),
                None => Ok(Value::new_null(ctx)),
            }
        })?
        .with_name("getResponseHeader")?,
    )?;
    let v = view;
    http.set(
        "getResponseHeaders",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>| -> rquickjs::Result<Object<'js>> {
            let headers = Object::new(ctx)?;
            for (name, value) in &v.headers {
                headers.set(name.as_str(), value.as_str())?;
            }
            Ok(headers)
        })?
        .with_name("getResponseHeaders")?,
    )?;
    Ok(http)
}

/// Reads a header script's return value: a plain object (or a proxy of one) whose own
/// enumerable string-keyed properties become headers, values converted with `String()`.
fn headers_from<'js>(ctx: &Ctx<'js>, value: Value<'js>) -> Result<Vec<(String, String)>, ScriptError> {
    let kind = value.type_of();
    let object = match kind {
        rquickjs::Type::Object | rquickjs::Type::Proxy => value.into_object(),
        _ => None,
    };
    let Some(object) = object else {
        let got = match kind {
            rquickjs::Type::Undefined => "undefined (did the script `return` an object?)",
            rquickjs::Type::Int | rquickjs::Type::Float => "a number",
            rquickjs::Type::Constructor => "a function",
            rquickjs::Type::Exception => "an Error object",
            other => other.as_str(),
        };
        return Err(ScriptError::BadReturn(format!("got {got}")));
    };
    let mut headers = Vec::new();
    for property in object.props::<String, Coerced<String>>() {
        let (name, Coerced(value)) = property.catch(ctx).map_err(|e| classify(ctx, e, Phase::Run))?;
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(ScriptError::BadReturn(format!("{name:?} is not a valid header name")));
        }
        if value.contains(['\r', '\n', '\0']) {
            return Err(ScriptError::BadReturn(format!("the value of {name:?} contains CR, LF or NUL")));
        }
        headers.push((name, value));
    }
    Ok(headers)
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
