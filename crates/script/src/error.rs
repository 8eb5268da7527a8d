//! The error type and the translation of QuickJS exceptions into it.

use std::time::Duration;

use rquickjs::{CatchResultExt, CaughtError, Coerced, Ctx, Exception, Value};

/// File name the user's script is compiled under; stack frames of the script carry it.
pub(crate) const SCRIPT_FILE: &str = "script";

/// Why a script call (or a syntax check) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScriptError {
    /// The script does not compile.
    #[error("syntax error{}: {message}", line_suffix(*line))]
    Syntax {
        /// QuickJS's message, e.g. `unexpected token in expression: ';'`.
        message: String,
        /// Line in the user's script (1 = first line).
        line: Option<u32>,
    },
    /// The script threw, e.g. `ReferenceError: record is not defined (line 31)`.
    #[error("{message}{}", line_suffix(*line))]
    Runtime {
        /// `Name: message` of the JavaScript error (or a description of a non-error value).
        message: String,
        /// Line in the user's script of the innermost script frame, when known.
        line: Option<u32>,
    },
    /// The call ran past the time limit and was interrupted.
    #[error("script ran longer than {0:?}")]
    Timeout(Duration),
    /// The script's runtime ran out of its memory limit.
    #[error("script exceeded its memory limit")]
    OutOfMemory,
    /// `write()` output went past the limit (in bytes).
    #[error("script output exceeds {0} bytes")]
    OutputTooLarge(usize),
    /// A header script returned something other than an object of header names to values.
    #[error("header script must return an object of header names to string values: {0}")]
    BadReturn(String),
    /// The pool's threads are gone.
    #[error("script pool is shut down")]
    PoolClosed,
}

fn line_suffix(line: Option<u32>) -> String {
    match line {
        Some(line) => format!(" (line {line})"),
        None => String::new(),
    }
}

impl ScriptError {
    pub(crate) fn internal(what: impl std::fmt::Display) -> Self {
        ScriptError::Runtime { message: format!("internal script engine error: {what}"), line: None }
    }
}

/// Where an exception came from: only a compile-time `SyntaxError` is a syntax error
/// (`JSON.parse` throws `SyntaxError` at run time too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Compile,
    Run,
}

/// Shown for a thrown value that cannot be turned into text.
pub(crate) const UNPRINTABLE: &str = "(unprintable value)";

/// Turns a caught QuickJS error into a [`ScriptError`]. Reading the exception's properties
/// never leaves an exception pending on the context.
pub(crate) fn classify<'js>(ctx: &Ctx<'js>, error: CaughtError<'js>, phase: Phase) -> ScriptError {
    match error {
        CaughtError::Error(rquickjs::Error::Allocation) => ScriptError::OutOfMemory,
        CaughtError::Error(other) => ScriptError::internal(other),
        CaughtError::Exception(exception) => from_exception(ctx, &exception, phase),
        CaughtError::Value(value) => {
            let text = string_of(ctx, value).unwrap_or_else(|| UNPRINTABLE.to_owned());
            ScriptError::Runtime { message: format!("uncaught exception: {text}"), line: None }
        }
    }
}

fn from_exception<'js>(ctx: &Ctx<'js>, exception: &Exception<'js>, phase: Phase) -> ScriptError {
    let object = exception.as_object();
    let prop = |key: &str| object.get::<_, Value>(key).catch(ctx).ok().and_then(|v| string_of(ctx, v));
    let name = prop("name").unwrap_or_default();
    let message = prop("message").unwrap_or_default();
    if name == "InternalError" && message == "out of memory" {
        return ScriptError::OutOfMemory;
    }
    let line = prop("stack").as_deref().and_then(user_line);
    if phase == Phase::Compile && name == "SyntaxError" {
        return ScriptError::Syntax { message, line };
    }
    let message = match (name.is_empty(), message.is_empty()) {
        (true, _) => message,
        (false, true) => name,
        (false, false) => format!("{name}: {message}"),
    };
    ScriptError::Runtime { message, line }
}

/// `String(value)`, or `None` for `undefined`/`null` or when the conversion throws.
fn string_of<'js>(ctx: &Ctx<'js>, value: Value<'js>) -> Option<String> {
    if value.is_undefined() || value.is_null() {
        return None;
    }
    value.get::<Coerced<String>>().catch(ctx).ok().map(|Coerced(s)| s)
}

/// The user's line from a QuickJS-ng stack trace: the first (innermost) frame located in
/// [`SCRIPT_FILE`]. Frames look like `    at getPayload (script:14:37)`, `    at <anonymous>
/// (script:31:27)`, `    at JSON.parse (native)` or, for syntax errors, `    at script:2:9`.
pub(crate) fn user_line(stack: &str) -> Option<u32> {
    stack.lines().find_map(|frame| {
        let frame = frame.trim();
        let location = match frame.strip_suffix(')') {
            Some(rest) => rest.rsplit_once('(').map(|(_, location)| location)?,
            None => frame.strip_prefix("at ")?,
        };
        let position = location.strip_prefix(SCRIPT_FILE)?.strip_prefix(':')?;
        position.split(':').next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quickjs_ng_frames() {
        assert_eq!(user_line("    at b (script:2:29)\n    at <anonymous> (script:4:3)\n"), Some(2));
        assert_eq!(user_line("    at script:7:9\n"), Some(7));
        assert_eq!(user_line("    at JSON.parse (native)\n    at <anonymous> (script:12:5)\n"), Some(12));
        assert_eq!(user_line("    at f (eval_script:3:1)\n"), None);
        assert_eq!(user_line("    at weird(script:9:9) (native)\n"), None);
        assert_eq!(user_line(""), None);
    }

    #[test]
    fn display_strings() {
        let e = ScriptError::Runtime { message: "ReferenceError: record is not defined".into(), line: Some(31) };
        assert_eq!(e.to_string(), "ReferenceError: record is not defined (line 31)");
        let e = ScriptError::Syntax { message: "unexpected token".into(), line: None };
        assert_eq!(e.to_string(), "syntax error: unexpected token");
    }
}
