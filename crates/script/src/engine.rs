//! One thread's QuickJS runtime: its locked-down realm, the scripts compiled in it and running calls.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rquickjs::context::EvalOptions;
use rquickjs::function::{Opt, This};
use rquickjs::{
    Atom, CatchResultExt, Coerced, Context, Ctx, Exception, Filter, Function, IntoJs, Object, Persistent, Runtime,
    Value,
};

use crate::error::{Phase, SCRIPT_FILE, ScriptError, UNPRINTABLE, classify};
use crate::{PoolConfig, ResponseView, ScriptCall, ScriptKind, ScriptOutput};

/// Opening of the wrapper; it stays on the script's first line so line numbers match. The
/// call's values come in as parameters, so they never touch the realm's global object.
const WRAP_OPEN: &str = "(function(data, http, write){";
/// Closing of the wrapper, on its own line so a trailing `// comment` cannot swallow it.
const WRAP_CLOSE: &str = "\n})";
/// The wrapper a script runs in: the one above inside a function that takes `secrets` too,
/// so a script that declares its own `secrets` (`let secrets = …`, from before the name
/// was given) shadows it instead of failing to compile. The source is first compiled in the
/// plain wrapper, which proves it does not close it; then it cannot close this one either.
const RUN_OPEN: &str = "(function(data, http, write, secrets){return (function(data, http, write){";
const RUN_CLOSE: &str = "\n}).call(this, data, http, write)})";

/// Runs first in every fresh realm, before any user code. It removes what scripts must not
/// have, freezes every built-in object a script can reach (so nothing one call hangs on a
/// built-in, or on a built-in's prototype, outlives the call), pins the built-in globals, and
/// returns `{ reset, freeze }`: `reset()` deletes the globals a call created and restores the
/// global object's prototype (returning `false` when it could not); `freeze(o)` freezes the
/// realm's own objects (the compiled wrapper, `http`, `write`), their `prototype` and their
/// methods. Both only use built-ins captured here.
///
/// Freezing a prototype makes assigning an inherited name on an instance fail (`o.toString =
/// f` on a plain object, `this.name = "MyError"` in an `Error` subclass). For the names
/// scripts commonly assign that way, the prototype's property becomes a getter and a setter
/// that defines the property on the instance instead, as it would before freezing.
const REALM_SETUP_JS: &str = r#"(function () {
  "use strict";
  var g = globalThis;
  delete g.FinalizationRegistry;
  var R = Reflect, O = Object;
  var ownKeys = R.ownKeys, getDesc = R.getOwnPropertyDescriptor, define = R.defineProperty,
      remove = R.deleteProperty, getProto = R.getPrototypeOf, setProto = R.setPrototypeOf,
      isExtensible = R.isExtensible, freeze = O.freeze, hasOwn = O.hasOwn, create = O.create,
      TypeErr = TypeError;

  function tame(object, key) {
    var d = getDesc(object, key);
    if (!d || !hasOwn(d, "value") || !d.writable || !d.configurable) return;
    var value = d.value;
    define(object, key, {
      get: function () { return value; },
      set: function (v) {
        if (this === object) throw new TypeErr("built-in " + String(key) + " is read-only");
        if (this === null || (typeof this !== "object" && typeof this !== "function")) return;
        define(this, key, { value: v, writable: true, enumerable: true, configurable: true });
      },
      enumerable: d.enumerable,
      configurable: false
    });
  }
  var tamed = [[O.prototype, ownKeys(O.prototype)],
               [Function.prototype, ["constructor", "toString"]],
               [Array.prototype, ["toString"]]];
  var errors = ["Error", "EvalError", "RangeError", "ReferenceError", "SyntaxError",
                "TypeError", "URIError", "AggregateError", "InternalError"];
  for (var e = 0; e < errors.length; e++) {
    var E = g[errors[e]];
    if (typeof E === "function") tamed.push([E.prototype, ["constructor", "name", "message", "toString"]]);
  }
  for (var t = 0; t < tamed.length; t++) {
    for (var k = 0; k < tamed[t][1].length; k++) tame(tamed[t][0], tamed[t][1][k]);
  }

  // Intrinsics no global property leads to: reach them through instances.
  var roots = [g];
  function protoOf(make) { try { roots.push(getProto(make())); } catch (_) {} }
  protoOf(function () { return [][Symbol.iterator](); });
  protoOf(function () { return new Map().entries(); });
  protoOf(function () { return new Set().values(); });
  protoOf(function () { return ""[Symbol.iterator](); });
  protoOf(function () { return /a/[Symbol.matchAll](""); });
  protoOf(function () { return function* () {}; });
  protoOf(function () { return async function () {}; });
  protoOf(function () { return async function* () {}; });
  protoOf(function () { return [].values().map(function (x) { return x; }); });
  protoOf(function () { return Iterator.from({ next: function () { return { done: true }; } }); });

  var stack = roots.slice(), seen = new Set(), frozen = [];
  while (stack.length) {
    var o = stack.pop();
    if ((typeof o !== "object" && typeof o !== "function") || o === null || seen.has(o)) continue;
    seen.add(o);
    if (o !== g) frozen.push(o);
    stack.push(getProto(o));
    var keys = ownKeys(o);
    for (var i = 0; i < keys.length; i++) {
      var d = getDesc(o, keys[i]);
      if (!d) continue;
      if (hasOwn(d, "value")) stack.push(d.value); else { stack.push(d.get); stack.push(d.set); }
    }
  }
  for (var f = 0; f < frozen.length; f++) freeze(frozen[f]);

  var globals = ownKeys(g), known = create(null);
  for (var j = 0; j < globals.length; j++) {
    known[globals[j]] = true;
    var gd = getDesc(g, globals[j]);
    if (hasOwn(gd, "value")) define(g, globals[j], { writable: false, configurable: false });
    else define(g, globals[j], { configurable: false });
  }
  var count = globals.length, proto = getProto(g);

  // `n`: how many own keys the global object has now, counted by the caller without
  // building the array `ownKeys` would (which costs more than most scripts). The built-in
  // globals cannot be deleted, so an unchanged count means nothing was added.
  function reset(n) {
    if (!isExtensible(g)) return false;
    var ok = true;
    if (n !== count) {
      var now = ownKeys(g);
      for (var i = 0; i < now.length; i++) {
        if (!hasOwn(known, now[i]) && !remove(g, now[i])) ok = false;
      }
    }
    if (getProto(g) !== proto && !setProto(g, proto)) ok = false;
    return ok;
  }
  function freezeAll(object) {
    freeze(object);
    if (object.prototype) freeze(object.prototype);
    var keys = ownKeys(object);
    for (var i = 0; i < keys.length; i++) {
      var d = getDesc(object, keys[i]);
      if (hasOwn(d, "value") && typeof d.value === "function") freeze(d.value);
    }
  }
  return { reset: reset, freeze: freezeAll, count: count };
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

/// A compiled script (the wrapper function, in the engine's realm) and its text.
struct CachedScript {
    function: Persistent<Function<'static>>,
    source: Arc<str>,
    /// When it last ran, in the cache's ticks: the smallest is evicted first.
    used: u64,
}

/// Bounded map from source hash to compiled script, least recently used evicted first.
struct ScriptCache {
    entries: HashMap<u64, CachedScript>,
    capacity: usize,
    tick: u64,
}

impl ScriptCache {
    fn new(capacity: usize) -> Self {
        Self { entries: HashMap::new(), capacity, tick: 0 }
    }

    /// The script `source` cached under `key`, marked most recently used. An entry with the
    /// same hash but another text is dropped.
    fn get(&mut self, key: u64, source: &str) -> Option<Persistent<Function<'static>>> {
        self.tick += 1;
        match self.entries.get_mut(&key) {
            Some(entry) if *entry.source == *source => {
                entry.used = self.tick;
                Some(entry.function.clone())
            }
            Some(_) => {
                self.entries.remove(&key);
                None
            }
            None => None,
        }
    }

    fn insert(&mut self, key: u64, function: Persistent<Function<'static>>, source: Arc<str>) {
        while self.entries.len() >= self.capacity && self.evict_oldest() {}
        self.entries.insert(key, CachedScript { function, source, used: self.tick });
    }

    /// Evicting scans every entry: that only happens when a script is compiled anyway.
    fn evict_oldest(&mut self) -> bool {
        let oldest = self.entries.iter().min_by_key(|(_, entry)| entry.used).map(|(key, _)| *key);
        oldest.is_some_and(|key| self.entries.remove(&key).is_some())
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// The engine's one realm, locked down by [`REALM_SETUP_JS`], with the objects it gives
/// every call and the scripts compiled in it. Field order is drop order: everything held in
/// the realm goes before its context.
struct Realm {
    cache: ScriptCache,
    reset: Persistent<Function<'static>>,
    freeze: Persistent<Function<'static>>,
    http: Persistent<Object<'static>>,
    write: Persistent<Function<'static>>,
    /// The frozen empty `secrets` of calls that carry none.
    no_secrets: Persistent<Object<'static>>,
    context: Context,
}

impl Realm {
    fn new(runtime: &Runtime, state: &Rc<CallState>, cache: usize) -> Result<Self, ScriptError> {
        let context = Context::full(runtime).map_err(|_| ScriptError::OutOfMemory)?;
        let (reset, freeze, http, write, no_secrets) = context.with(|ctx| {
            let run_error = |e| classify(&ctx, e, Phase::Run);
            let tools: Object = ctx.eval(REALM_SETUP_JS).catch(&ctx).map_err(run_error)?;
            let reset: Function = tools.get("reset").catch(&ctx).map_err(run_error)?;
            let freeze: Function = tools.get("freeze").catch(&ctx).map_err(run_error)?;
            let http = http_object(&ctx, state).catch(&ctx).map_err(run_error)?;
            let write = write_function(&ctx, state).catch(&ctx).map_err(run_error)?;
            let no_secrets = Object::new(ctx.clone()).catch(&ctx).map_err(run_error)?;
            for object in [http.clone().into_value(), write.clone().into_value(), no_secrets.clone().into_value()] {
                freeze.call::<_, ()>((object,)).catch(&ctx).map_err(run_error)?;
            }
            Ok::<_, ScriptError>((
                Persistent::save(&ctx, reset),
                Persistent::save(&ctx, freeze),
                Persistent::save(&ctx, http),
                Persistent::save(&ctx, write),
                Persistent::save(&ctx, no_secrets),
            ))
        })?;
        Ok(Self { cache: ScriptCache::new(cache), reset, freeze, http, write, no_secrets, context })
    }

    /// Compiles `source` into a frozen wrapper function. Returns it, or the error, and
    /// whether the realm is still pristine (a source that escapes the wrapper runs its stray
    /// code while being compiled).
    fn compile(&self, source: &str) -> (Result<Persistent<Function<'static>>, ScriptError>, bool) {
        self.context.with(|ctx| {
            let compiled = compile(&ctx, source).and_then(|function| {
                let freeze = self.freeze.clone().restore(&ctx).map_err(ScriptError::internal)?;
                freeze.call::<_, ()>((function.clone(),)).catch(&ctx).map_err(|e| classify(&ctx, e, Phase::Run))?;
                Ok(Persistent::save(&ctx, function))
            });
            (compiled, reset(&ctx, &self.reset))
        })
    }
}

/// Resets the realm's global object after user code ran; `false` when it could not.
fn reset<'js>(ctx: &Ctx<'js>, reset: &Persistent<Function<'static>>) -> bool {
    let keys = global_key_count(ctx);
    reset.clone().restore(ctx).and_then(|reset| reset.call::<_, bool>((keys,))).catch(ctx).unwrap_or(false)
}

/// The global object's own string and symbol keys, as many as `Reflect.ownKeys` lists
/// (0 when they cannot be listed, which makes the reset look at them all).
fn global_key_count(ctx: &Ctx<'_>) -> usize {
    ctx.globals().own_keys::<Atom>(Filter::new().string().symbol()).len()
}

/// The call in progress, as `http` and `write` see it. One per engine: every realm's `http`
/// object and `write` function are made once and read this, since calls on one engine run
/// one at a time.
struct CallState {
    http: RefCell<HttpView>,
    output: RefCell<String>,
    max_output: usize,
    overflow: Cell<bool>,
}

impl CallState {
    fn begin(&self, call: &ScriptCall) {
        *self.http.borrow_mut() = HttpView::new(call.request_body.as_deref(), call.response.as_ref());
        self.output.borrow_mut().clear();
        self.overflow.set(false);
    }

    /// Ends the call: returns what it wrote and drops its copy of the exchange.
    fn finish(&self) -> String {
        *self.http.borrow_mut() = HttpView::default();
        self.output.take()
    }
}

/// What `http` reports.
#[derive(Default)]
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

/// One thread's QuickJS runtime, its realm and the scripts compiled in it. Field order is
/// drop order: the realm goes before the runtime.
pub(crate) struct Engine {
    realm: Option<Realm>,
    runtime: Runtime,
    clock: Rc<Clock>,
    state: Rc<CallState>,
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
        let state = Rc::new(CallState {
            http: RefCell::default(),
            output: RefCell::default(),
            max_output: limits.max_output,
            overflow: Cell::new(false),
        });
        Ok(Self { realm: None, runtime, clock, state, limits })
    }

    /// Sets up the realm now (a few milliseconds) rather than in the next call.
    pub fn prepare(&mut self) -> Result<(), ScriptError> {
        if self.realm.is_none() {
            self.clock.start(self.limits.time);
            let realm = Realm::new(&self.runtime, &self.state, self.limits.cache);
            self.clock.stop();
            self.realm = Some(realm?);
        }
        Ok(())
    }

    /// Runs one call. `compiled` is told about every real compilation.
    pub fn run(&mut self, call: &ScriptCall, compiled: &dyn Fn()) -> (Result<ScriptOutput, ScriptError>, Health) {
        let result = self.prepare().and_then(|()| {
            self.clock.start(self.limits.time);
            let result = self.run_timed(call, compiled);
            self.clock.stop();
            result
        });
        if self.clock.interrupted.get() || matches!(result, Err(ScriptError::Timeout(_))) {
            return (Err(ScriptError::Timeout(self.limits.time)), Health::Discard);
        }
        match result {
            Err(ScriptError::OutOfMemory) => (Err(ScriptError::OutOfMemory), Health::Discard),
            // Out of memory, QuickJS throws a bare `null` when it cannot even allocate the
            // error: from a script that throws nothing itself, that is the memory limit.
            Err(ScriptError::Runtime { line: None, message })
                if message.ends_with(UNPRINTABLE) && !call.source.contains("throw") =>
            {
                (Err(ScriptError::OutOfMemory), Health::Discard)
            }
            other => (other, Health::Good),
        }
    }

    fn run_timed(&mut self, call: &ScriptCall, compiled: &dyn Fn()) -> Result<ScriptOutput, ScriptError> {
        let key = source_key(&call.source);
        let cached = self.realm.as_mut().and_then(|realm| realm.cache.get(key, &call.source));
        let function = match cached {
            Some(function) => function,
            None => self.compile(key, &call.source, compiled)?,
        };
        let realm = self.realm.as_ref().ok_or_else(|| ScriptError::internal("no realm"))?;
        self.state.begin(call);
        let (result, clean) = realm.context.with(|ctx| call_in_realm(&ctx, realm, &function, call, &self.clock));
        let written = self.state.finish();
        if !clean {
            self.discard_realm();
        }
        let result = result.map(|output| match output {
            ScriptOutput::Written(_) => ScriptOutput::Written(written),
            returned => returned,
        });
        if self.state.overflow.get() && !matches!(result, Err(ScriptError::OutOfMemory)) {
            return Err(ScriptError::OutputTooLarge(self.limits.max_output));
        }
        result
    }

    /// Compiles `source` in the realm and caches it under `key`.
    fn compile(
        &mut self,
        key: u64,
        source: &Arc<str>,
        compiled: &dyn Fn(),
    ) -> Result<Persistent<Function<'static>>, ScriptError> {
        let realm = self.realm.as_mut().ok_or_else(|| ScriptError::internal("no realm"))?;
        let (function, clean) = realm.compile(source);
        if !clean {
            // Only a source that escapes its wrapper runs code while compiled, and such a
            // source is refused: `function` is an error here.
            self.discard_realm();
            return function.and_then(|_| Err(ScriptError::internal("the realm could not be reset after compiling")));
        }
        let function = function?;
        compiled();
        tracing::debug!(source_hash = key, bytes = source.len(), "compiled script");
        let budget = (self.limits.memory > 0).then(|| i64::try_from(self.limits.memory / 2).unwrap_or(i64::MAX));
        make_room(&self.runtime, &mut realm.cache, budget);
        realm.cache.insert(key, function.clone(), Arc::clone(source));
        Ok(function)
    }

    /// A script left the realm in a state its reset cannot undo: drop the realm with every
    /// script compiled in it; the next call sets up a fresh one.
    fn discard_realm(&mut self) {
        tracing::debug!("discarding a realm that could not be reset");
        self.realm = None;
        self.runtime.run_gc();
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

/// Before caching another script: evict the least recently used ones while the runtime uses
/// more than `budget` (half its memory limit).
fn make_room(runtime: &Runtime, cache: &mut ScriptCache, budget: Option<i64>) {
    let Some(budget) = budget else {
        return;
    };
    let mut evicted = false;
    while cache.len() > 0 && runtime.memory_usage().malloc_size > budget {
        cache.evict_oldest();
        evicted = true;
    }
    if evicted {
        runtime.run_gc();
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
    // Fixed seed: keys only live in this process's caches, and a hit compares the text.
    foldhash::fast::FixedState::with_seed(0x686f_6f6b_6c69_6e65).hash_one(source)
}

fn eval_options() -> EvalOptions {
    let mut options = EvalOptions::default();
    options.strict = false;
    options.filename = Some(SCRIPT_FILE.to_owned());
    options
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
    wrapped(ctx, &to_string, WRAP_OPEN, source, WRAP_CLOSE)?;
    wrapped(ctx, &to_string, RUN_OPEN, source, RUN_CLOSE)
}

/// Evaluates `open + source + close` into a function whose text is exactly that: anything
/// else means the source closed the wrapper.
fn wrapped<'js>(
    ctx: &Ctx<'js>,
    to_string: &Function<'js>,
    open: &str,
    source: &str,
    close: &str,
) -> Result<Function<'js>, ScriptError> {
    let value: Value = ctx
        .eval_with_options(format!("{open}{source}{close}"), eval_options())
        .catch(ctx)
        .map_err(|e| classify(ctx, e, Phase::Compile))?;
    let function = value.into_function().ok_or_else(unbalanced)?;
    let text: String =
        to_string.call((This(function.clone()),)).catch(ctx).map_err(|e| classify(ctx, e, Phase::Run))?;
    let body = text.strip_prefix(&open[1..]).and_then(|t| t.strip_suffix(&close[..close.len() - 1]));
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

/// Runs the script with the call's `data` and the realm's `http` and `write`, then its
/// promise jobs, reads a header script's result and resets the realm's global object.
/// Returns the result (written output is taken from the engine's [`CallState`] by the
/// caller) and whether the reset worked.
fn call_in_realm<'js>(
    ctx: &Ctx<'js>,
    realm: &Realm,
    function: &Persistent<Function<'static>>,
    call: &ScriptCall,
    clock: &Clock,
) -> (Result<ScriptOutput, ScriptError>, bool) {
    let restored = (|| {
        Ok::<_, rquickjs::Error>((
            function.clone().restore(ctx)?,
            realm.http.clone().restore(ctx)?,
            realm.write.clone().restore(ctx)?,
            realm.no_secrets.clone().restore(ctx)?,
        ))
    })();
    let (function, http, write, no_secrets) = match restored {
        Ok(restored) => restored,
        Err(e) => return (Err(ScriptError::internal(e)), false),
    };
    let result = data_value(ctx, call)
        .and_then(|data| {
            let secrets = match call.secrets.0.is_empty() {
                true => no_secrets.into_value(),
                false => secrets_value(ctx, call)?,
            };
            function.call::<_, Value>((data, http, write, secrets)).catch(ctx).map_err(|e| classify(ctx, e, Phase::Run))
        })
        .and_then(|value| match call.kind {
            ScriptKind::Header => headers_from(ctx, value).map(ScriptOutput::Headers),
            ScriptKind::Url => url_from(value).map(ScriptOutput::Url),
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
    (result, reset(ctx, &realm.reset))
}

/// `{ changedEntities: [...] }`, parsed by QuickJS from JSON written straight into one buffer.
fn data_value<'js>(ctx: &Ctx<'js>, call: &ScriptCall) -> Result<Value<'js>, ScriptError> {
    let mut json = Vec::with_capacity(256);
    json.extend_from_slice(b"{\"changedEntities\":");
    serde_json::to_writer(&mut json, &call.changed_entities)
        .map_err(|e| ScriptError::internal(format!("changed entities: {e}")))?;
    json.push(b'}');
    ctx.json_parse(json).catch(ctx).map_err(|e| classify(ctx, e, Phase::Run))
}

/// The webhook's `secrets` map as a new frozen object (an empty one when it has none).
fn secrets_value<'js>(ctx: &Ctx<'js>, call: &ScriptCall) -> Result<Value<'js>, ScriptError> {
    let object = Object::new(ctx.clone()).map_err(ScriptError::internal)?;
    for (name, value) in call.secrets.iter() {
        object.set(name.as_str(), value.as_str()).map_err(ScriptError::internal)?;
    }
    let freeze: Function =
        ctx.globals().get::<_, Object>("Object").and_then(|o| o.get("freeze")).map_err(ScriptError::internal)?;
    freeze.call::<_, Value>((object,)).catch(ctx).map_err(|e| classify(ctx, e, Phase::Run))
}

/// Reads a URL script's return value: a string.
fn url_from(value: Value<'_>) -> Result<String, ScriptError> {
    match value.as_string() {
        Some(s) => s.to_string().map_err(ScriptError::internal),
        None => Err(ScriptError::BadReturn(format!(
            "a URL script must `return` the URL as a string, got {}",
            match value.type_of() {
                rquickjs::Type::Undefined => "undefined",
                other => other.as_str(),
            }
        ))),
    }
}

fn write_function<'js>(ctx: &Ctx<'js>, state: &Rc<CallState>) -> rquickjs::Result<Function<'js>> {
    let state = Rc::clone(state);
    Function::new(ctx.clone(), move |ctx: Ctx<'js>, text: Opt<Coerced<String>>| -> rquickjs::Result<()> {
        let Some(Coerced(text)) = text.0 else {
            return Ok(());
        };
        let mut output = state.output.borrow_mut();
        if output.len().saturating_add(text.len()) > state.max_output {
            state.overflow.set(true);
            let message = format!("write(): output exceeds {} bytes", state.max_output);
            return Err(Exception::throw_range(&ctx, &message));
        }
        output.push_str(&text);
        Ok(())
    })?
    .with_name("write")
}

fn http_object<'js>(ctx: &Ctx<'js>, state: &Rc<CallState>) -> rquickjs::Result<Object<'js>> {
    let http = Object::new(ctx.clone())?;
    let s = Rc::clone(state);
    http.set(
        "getRequestBodyUtf8",
        Function::new(ctx.clone(), move || s.http.borrow().request_body.clone())?.with_name("getRequestBodyUtf8")?,
    )?;
    let s = Rc::clone(state);
    http.set(
        "getResponseBodyUtf8",
        Function::new(ctx.clone(), move || s.http.borrow().body.clone())?.with_name("getResponseBodyUtf8")?,
    )?;
    let s = Rc::clone(state);
    http.set(
        "getResponseStatusCode",
        Function::new(ctx.clone(), move || i32::from(s.http.borrow().status))?.with_name("getResponseStatusCode")?,
    )?;
    let s = Rc::clone(state);
    http.set(
        "getResponseHeader",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, name: Opt<Coerced<String>>| -> rquickjs::Result<Value<'js>> {
            let http = s.http.borrow();
            match name.0.and_then(|Coerced(name)| http.header(&name)) {
                Some(value) => value.into_js(&ctx),
                None => Ok(Value::new_null(ctx)),
            }
        })?
        .with_name("getResponseHeader")?,
    )?;
    let s = Rc::clone(state);
    http.set(
        "getResponseHeaders",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>| -> rquickjs::Result<Object<'js>> {
            let headers = Object::new(ctx)?;
            for (name, value) in &s.http.borrow().headers {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The reset skips listing the globals when their count is unchanged: the count taken in
    /// Rust must be the one the realm's setup took with `Reflect.ownKeys`.
    #[test]
    fn the_global_key_count_matches_the_realms_own() {
        let runtime = Runtime::new().unwrap();
        let context = Context::full(&runtime).unwrap();
        context.with(|ctx| {
            let tools: Object = ctx.eval(REALM_SETUP_JS).unwrap();
            let count: usize = tools.get("count").unwrap();
            assert!(count > 50, "{count}");
            assert_eq!(global_key_count(&ctx), count);
            let _: () = ctx.eval("globalThis.added = 1; globalThis[Symbol('s')] = 2;").unwrap();
            assert_eq!(global_key_count(&ctx), count + 2);
            let reset: Function = tools.get("reset").unwrap();
            assert!(reset.call::<_, bool>((global_key_count(&ctx),)).unwrap());
            assert_eq!(global_key_count(&ctx), count);
        });
    }
}
