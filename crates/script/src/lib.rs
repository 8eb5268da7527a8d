//! QuickJS sandbox for Hookline user scripts: request body, header and response scripts.
//!
//! # The three kinds of script
//!
//! * **Body** scripts ([`ScriptKind::Body`]) build the HTTP request body: they read
//!   `data.changedEntities` and call `write(string)` (any number of times; the pieces are
//!   concatenated). Result: [`ScriptOutput::Written`].
//! * **Header** scripts ([`ScriptKind::Header`]) end with a top-level
//!   `return { "Header-Name": "value" }`. Every value is converted to a string with the
//!   JavaScript `String()` rules; anything but a plain object (an array, a function, a
//!   primitive, or no `return` at all) is [`ScriptError::BadReturn`], and so is a header name
//!   that is not an HTTP token or a value holding CR, LF or NUL. Result:
//!   [`ScriptOutput::Headers`], in the object's property order. `write()` exists but its
//!   output is discarded (it still counts against the output limit).
//! * **Response** scripts ([`ScriptKind::Response`]) read the exchange through `http` and
//!   `data.changedEntities` and call `write(string)`. Result: [`ScriptOutput::Written`].
//!
//! # What a script sees
//!
//! Four names are in scope (they are the parameters of the function the script runs in,
//! not properties of the global object):
//!
//! * `data` — `{ changedEntities: <ScriptCall::changed_entities> }`, new for every call.
//! * `write(s)` — appends `String(s)` to the call's output; `write()` with no argument appends
//!   nothing. Going past [`PoolConfig::max_output_bytes`] throws inside the script and the
//!   call ends with [`ScriptError::OutputTooLarge`] even if the script catches that error.
//! * `http` — `getRequestBodyUtf8()` (the request body, `""` when none),
//!   `getResponseBodyUtf8()` (`""` when there was no response), `getResponseStatusCode()`
//!   (a number, `0` when there was no response), `getResponseHeader(name)` (case-insensitive,
//!   `null` when absent, repeated headers joined with `", "`) and `getResponseHeaders()` (a
//!   new object, name → value, repeated names joined the same way). It exists for every kind;
//!   for body and header scripts it simply reports what the [`ScriptCall`] carries (normally
//!   no request body and no response).
//! * `secrets` — the webhook's named secrets (`secrets.API_KEY`), a frozen object, empty when
//!   the call carries none ([`ScriptCall::with_secrets`]).
//!
//! **URL** scripts ([`ScriptKind::Url`]) end with `return "https://…"`; anything but a string
//! is [`ScriptError::BadReturn`]. Result: [`ScriptOutput::Url`].
//!
//! Everything else is plain ECMAScript as QuickJS-ng implements it (JSON, Math, Date, RegExp,
//! typed arrays, Promise, `btoa`/`atob`, …). Promise jobs queued by a script are run after
//! its body returns, inside the same time limit; rejections nobody handles are ignored.
//! `FinalizationRegistry` is removed (its callbacks would run at unpredictable times).
//!
//! # Sandbox
//!
//! Only the QuickJS core is compiled in: there is no module loader, no `std`/`os` module and
//! therefore no file, network, process or timer access. `Atomics.wait` cannot block (QuickJS
//! runtimes are created with `can_block = false`). Each pool thread owns one QuickJS
//! [`rquickjs::Runtime`] with:
//!
//! * a memory limit ([`PoolConfig::memory_limit_bytes`], `Runtime::set_memory_limit`) — going
//!   past it is [`ScriptError::OutOfMemory`];
//! * a time limit ([`PoolConfig::time_limit`]) enforced by an interrupt handler that checks a
//!   per-call deadline; the interrupt cannot be caught by the script, so `while(true){}` ends
//!   with [`ScriptError::Timeout`] shortly after the limit;
//! * after a timeout, an out-of-memory error or a panic, the thread throws away its whole
//!   runtime (with every cached script) and makes a fresh one, since the engine state may be
//!   inconsistent. A failing call never takes the pool down.
//!
//! Scripts run as the body of a function: the source is compiled as
//! `(function(data, http, write){` + source + `\n})`, so top-level `return` works and line 1 of the user's
//! script is line 1 of the compiled code. Runtime errors report the JavaScript error name,
//! its message and the user's line, taken from the innermost stack frame of the script
//! (for example `ReferenceError: record is not defined (line 31)`). Scripts run in sloppy
//! (non-strict) mode, like a browser `<script>`; a script may opt in with `"use strict";`.
//!
//! A source that closes the wrapper function early (e.g. starts with `})`) is rejected as a
//! syntax error. Detecting that needs the wrapper to be evaluated, so such a source may run
//! its stray top-level code once, inside the sandbox and its limits, before being rejected.
//!
//! # Caching and isolation
//!
//! Each pool thread keeps a bounded cache ([`PoolConfig::cache_per_thread`] entries, least
//! recently used evicted first) keyed by a hash of the source text (the text itself is
//! compared on a hit, so collisions cannot mix scripts up). A script is compiled once per
//! thread, not once per call; [`ScriptPool::stats`] counts real compilations.
//!
//! Every cached script has its **own QuickJS context (realm)** inside the thread's runtime,
//! and every call starts from the same pristine built-ins:
//!
//! * before any user code runs in a realm, every built-in object a script can reach is
//!   frozen: the global constructors and namespaces, their prototypes, their methods and
//!   accessors, and the intrinsics only reachable through instances (iterator and generator
//!   prototypes, `%TypedArray%`, …). `http`, `write` and the compiled function are frozen
//!   too. So `Object.prototype.x = data` or `JSON.stringify = spy` has no effect (sloppy
//!   mode) or throws a `TypeError` (strict mode), and no call can see another's data;
//! * the built-in globals are non-writable and non-configurable (`JSON = null` does nothing);
//! * after every call, the globals it created (implicit globals such as `leak = data`) are
//!   deleted and the global object's prototype is restored; if that cannot be done (the
//!   global object was made non-extensible, a global was made non-configurable) the realm is
//!   discarded and the next call compiles a fresh one.
//!
//! Freezing a prototype would make assigning an inherited name on an instance fail (`o.toString
//! = f` on a plain object, `this.name = "MyError"` in an `Error` subclass). So the names scripts
//! commonly assign that way (everything on `Object.prototype`; `constructor` and `toString` on
//! `Function.prototype`; `toString` on `Array.prototype`; `constructor`, `name`, `message` and
//! `toString` on the error prototypes) are accessors whose setter defines the property on the
//! instance, as ordinary assignment would; assigning them on the prototype itself throws.
//!
//! A realm costs roughly 60–80 KiB of the runtime's memory, so when the runtime uses more than
//! half its memory limit, the oldest cached scripts are evicted before a new one is added.
//!
//! # Threads
//!
//! [`ScriptPool::new`] starts [`PoolConfig::threads`] dedicated OS threads that take jobs from
//! one shared channel (so a slow script does not hold up work queued behind it when another
//! thread is free). [`ScriptPool::run`] never blocks its async caller: it sends the call to the
//! channel and awaits a tokio oneshot. The queue is unbounded; the time limit counts from
//! the moment a thread starts the call. A call whose caller has gone away before a thread
//! picks it up is skipped. Dropping the last [`ScriptPool`] clone closes the channel and the
//! threads end after their current call.

mod engine;
mod error;
mod pool;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

pub use error::ScriptError;
pub use pool::{PoolStats, ScriptPool};

/// Settings of a [`ScriptPool`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Number of dedicated script threads (at least one is started).
    pub threads: usize,
    /// QuickJS heap limit per thread (each thread has its own runtime). `0` means unlimited.
    pub memory_limit_bytes: usize,
    /// Wall-clock limit of one call (compilation, body, promise jobs and result conversion).
    pub time_limit: Duration,
    /// Largest total `write()` output of one call.
    pub max_output_bytes: usize,
    /// Compiled scripts kept per thread (at least one).
    pub cache_per_thread: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            threads: 2,
            memory_limit_bytes: 32 * 1024 * 1024,
            time_limit: Duration::from_secs(2),
            max_output_bytes: 10 * 1024 * 1024,
            cache_per_thread: 256,
        }
    }
}

/// Which of the three kinds of user script is run; decides how the result is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScriptKind {
    /// Builds the request body with `write()`.
    Body,
    /// Returns an object of header names to values.
    Header,
    /// Reads the exchange through `http` and writes a result with `write()`.
    Response,
    /// Returns the request URL as a string. Result: [`ScriptOutput::Written`].
    Url,
}

/// Named secret values a script reads as `secrets.NAME` (a frozen object). `Debug` shows
/// the names only.
#[derive(Clone, Default, PartialEq)]
pub struct ScriptSecrets(pub Arc<std::collections::BTreeMap<String, String>>);

impl ScriptSecrets {
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter()
    }
}

impl std::fmt::Debug for ScriptSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.0.keys().map(|k| (k, "***"))).finish()
    }
}

/// One script invocation. `Debug` shows its kind and sizes only: sources, bodies and
/// secrets may hold credentials.
#[derive(Clone, PartialEq)]
pub struct ScriptCall {
    /// What kind of script this is.
    pub kind: ScriptKind,
    /// The user's script text, exactly as saved.
    pub source: Arc<str>,
    /// A JSON array of record objects (field key → value), exposed as `data.changedEntities`.
    pub changed_entities: serde_json::Value,
    /// The request body that was sent (`http.getRequestBodyUtf8()`), for response scripts.
    pub request_body: Option<String>,
    /// The response that came back, for response scripts; `None` when there was none
    /// (status `0`, empty body, no headers).
    pub response: Option<ResponseView>,
    /// The webhook's secrets, seen as `secrets`.
    pub secrets: ScriptSecrets,
}

impl std::fmt::Debug for ScriptCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptCall")
            .field("kind", &self.kind)
            .field("source_bytes", &self.source.len())
            .field("secrets", &self.secrets)
            .finish_non_exhaustive()
    }
}

impl ScriptCall {
    /// A call without request body or response.
    pub fn new(kind: ScriptKind, source: impl Into<Arc<str>>, changed_entities: serde_json::Value) -> Self {
        Self {
            kind,
            source: source.into(),
            changed_entities,
            request_body: None,
            response: None,
            secrets: ScriptSecrets::default(),
        }
    }

    /// Sets the secrets seen as `secrets`.
    pub fn with_secrets(mut self, secrets: ScriptSecrets) -> Self {
        self.secrets = secrets;
        self
    }

    /// Sets the request body seen by `http.getRequestBodyUtf8()`.
    pub fn with_request_body(mut self, body: impl Into<String>) -> Self {
        self.request_body = Some(body.into());
        self
    }

    /// Sets the response seen through `http`.
    pub fn with_response(mut self, response: ResponseView) -> Self {
        self.response = Some(response);
        self
    }
}

/// The HTTP response a response script inspects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseView {
    /// Status code, e.g. `200`.
    pub status: u16,
    /// Header names and values as received (names are matched case-insensitively).
    pub headers: Vec<(String, String)>,
    /// The body, decoded as UTF-8.
    pub body: String,
}

/// What a successful call produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptOutput {
    /// Everything passed to `write()` (body and response scripts).
    Written(String),
    /// The header script's returned object, in property order.
    Headers(Vec<(String, String)>),
    /// The URL script's returned string.
    Url(String),
}

/// Syntax-checks a script at save time without running it.
///
/// Compiles the script the way [`ScriptPool::run`] does, in a short-lived runtime with the
/// default [`PoolConfig`] limits, on the calling thread (it takes well under a millisecond
/// for ordinary scripts). Errors carry the user's line number when QuickJS reports one.
/// A source that closes the wrapper function early is rejected too (see the crate docs).
pub fn check_syntax(source: &str) -> Result<(), ScriptError> {
    engine::check_syntax(source, &PoolConfig::default())
}
