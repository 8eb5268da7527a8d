//! Matching conditions: a small boolean language over the fields of one data object.
//!
//! ```text
//! Status = Completed and Transactional Satisfaction = 0
//! (Score >= 9 or not Active) and changed(Status) and old.Status != Open
//! Tags contains vip and [Status Reason] not in ("Spam", Duplicate) and Due is not empty
//! ```
//!
//! [`parse`] turns the text into a [`Condition`] when a webhook is saved, checking it against
//! the data object's schema; [`Condition::eval`] then decides a change, with no I/O.
//!
//! # How it is parsed
//!
//! Three passes, each refusing bad input with a 1-based column (in chars) and a reason:
//!
//! 1. **Lexing** (winnow over the characters, `LocatingSlice` for positions). Field names are
//!    recognised here because labels may hold spaces: at the start of each word that is not a
//!    keyword, the object's keys and labels are tried longest-first and must end at a word
//!    boundary, so with fields `Status` and `Status Reason`, `Status Reason = x` reads the
//!    longer one. `[Any Name]` names a field by key or label; an unknown one is refused here.
//! 2. **Parsing** (winnow over the tokens, `TokenSlice`) into an unchecked tree. Precedence is
//!    `not` > `and` > `or`; parentheses group; `and`/`or` chains are flat lists.
//! 3. **Checking** against the schema: every comparison needs a field on one side (which is
//!    what catches typos: `Sttus = Open` is refused as "`Sttus` is not a field of survey"), and
//!    every literal compared with a field is converted to that field's type, or refused.
//!
//! # The language, with the decisions the design document leaves open
//!
//! - Operators: `=` (also `==`), `!=` (also `<>`), `<`, `<=`, `>`, `>=`; `X in (a, b)`,
//!   `X not in (...)`; `X contains y`, `X not contains y`; `X is empty`, `X is not empty`;
//!   `changed(X)`; `old.X` / `old.[Name]` read the previous version.
//! - Keywords are case-insensitive: `and or not in contains is true false null`; `old` is a
//!   keyword only as `old.`, `changed` only before `(`, and `empty` only after `is`, so values
//!   such as `Old Stock` or `Empty` need no quotes. Keywords win over field names outside
//!   brackets, so a label that starts with one (`Is Active`) must be written `[Is Active]`;
//!   keywords *inside* a label (`Time In Status`) are fine, the label being matched whole.
//! - Field names match case-sensitively (keys first, as [`DataObject::resolve`]).
//! - Values: numbers (`0`, `-1.5`, `2e3`), quoted strings (`"..."` or `'...'`, where `\n`,
//!   `\t`, `\r` are escapes and a backslash before any other character yields that character),
//!   `true`/`false`/`null`, or bare words. A run of bare words (and numbers) is one string whose
//!   text is taken verbatim from the source. After an operator (and in an `in` list) a run
//!   ends only at `and`, `or`, punctuation, a quoted string, a field name or the end, since
//!   nothing else can follow a value there: `Status = In Progress and X = 1` compares Status
//!   with `"In Progress"`. Before an operator a run ends at every keyword, so `Sttus is empty`
//!   is reported as a typo. A run stops at a field name so that a forgotten `and` is
//!   reported rather than swallowed; quote values that contain a field name, `and` or `or`.
//!   A field name in a value position makes a field-to-field comparison.
//! - Literals take the type of the field they are compared with, at save time: a number field
//!   needs a number (`"5"` in quotes is accepted), a boolean field `true`/`false`, a datetime
//!   field an RFC 3339 instant (or a plain `YYYY-MM-DD` date, read as midnight UTC); a string
//!   field takes the literal's text (`Zip = 01234` compares with `"01234"`); a json field
//!   takes numbers as numbers, `true`/`false` as booleans and anything else as a string.
//! - A field alone is a condition only for boolean fields (`Active and ...` means
//!   `Active = true`).
//! - Comparing two fields of different types compares by the "stronger" type: number, then
//!   datetime, then the non-json one.
//!
//! # Evaluation
//!
//! - A missing field and a `null` value are the same. Then `=` is false, `!=` true, ordering
//!   false, `in` false (true if the list holds `null`); `is empty` is true for missing, `null`,
//!   `""`, `[]` and `{}`. `X = null` is the way to ask "is missing", and `X != null` the reverse.
//! - Number fields compare numerically (`0 = 0.0`), also when a value arrives as a JSON string
//!   that parses as a number; integers compare exactly, other numbers as `f64`. Strings compare
//!   exactly and order by code point. Datetimes compare as instants when both sides parse;
//!   otherwise they are equal only when identical and never ordered. Booleans only `=`/`!=`.
//! - `contains` is substring for strings, element membership for arrays, key membership for
//!   objects; it applies to string and json fields only.
//! - `changed(X)`: the new value differs from the old one (by the field's type); on creation,
//!   the new value is present and not `null`. `old.X` on creation is `null`.
//! - `not not X` is `X`. Parentheses may nest [`MAX_DEPTH`] deep, which bounds every recursion
//!   over the tree; no input makes [`parse`] or [`Condition::eval`] panic.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::time::SystemTime;

use serde_json::{Number, Value};
use winnow::LocatingSlice;
use winnow::ascii::{Caseless, digit1};
use winnow::combinator::{alt, not, opt, peek, preceded, repeat, terminated};
use winnow::error::{ErrMode, ParserError};
use winnow::prelude::*;
use winnow::stream::{Location, Stateful, Stream, TokenSlice};
use winnow::token::{any, literal, none_of, one_of, take_till, take_while};

use crate::object::{DataObject, FieldDef, FieldType, Fields};

/// How deeply parentheses may nest.
pub const MAX_DEPTH: usize = 64;

// ---------------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------------

/// A parsed, schema-checked matching condition.
#[derive(Debug, Clone)]
pub struct Condition {
    /// The text as the user wrote it.
    source: String,
    expr: Expr,
}

/// A condition refused at save time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at column {column}: {message}")]
pub struct ConditionError {
    /// 1-based, in chars.
    pub column: usize,
    pub message: String,
}

/// Parses `src` and checks it against `object`'s schema, as a definition being saved is.
pub fn parse(src: &str, object: &DataObject) -> Result<Condition, ConditionError> {
    parse_with(src, object, true)
}

/// [`parse`] for a definition saved before the stricter type checks (ordering a string
/// field against a number): it still loads, and compares as it always did.
pub fn parse_saved(src: &str, object: &DataObject) -> Result<Condition, ConditionError> {
    parse_with(src, object, false)
}

fn parse_with(src: &str, object: &DataObject, strict: bool) -> Result<Condition, ConditionError> {
    let error = |f: Failure| ConditionError {
        column: column_of(src, f.at),
        message: f.message.unwrap_or_else(|| unexpected_at(src, f.at)),
    };
    let tokens = Lexer::new(object).tokens(src).map_err(error)?;
    let raw = parse_tokens(src, &tokens).map_err(|f| {
        // A generic parser failure names the token it stopped at.
        let message = f.message.clone().unwrap_or_else(|| match tokens.iter().find(|t| t.start >= f.at) {
            Some(t) if t.kind != Kind::Eof => format!("unexpected {}", t.describe()),
            _ => "unexpected end of condition".to_string(),
        });
        error(Failure { at: f.at, message: Some(message) })
    })?;
    let expr = Checker { object, strict }.expr(raw).map_err(error)?;
    Ok(Condition { source: src.to_string(), expr })
}

impl Condition {
    /// Evaluates on the new record; `old` is the previous version (None on creation).
    pub fn eval(&self, new: &Fields, old: Option<&Fields>) -> bool {
        self.expr.eval(&Versions { new, old })
    }

    /// The text as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates like [`eval`](Self::eval) and says why: every part (each comparison,
    /// membership, `changed(...)` and so on, in the order written), the values it read and
    /// what it came to. For the record's journey: "the condition was false because ...".
    pub fn explain(&self, new: &Fields, old: Option<&Fields>) -> Explained {
        let v = Versions { new, old };
        let mut parts = Vec::new();
        self.expr.explain(&v, &mut parts);
        Explained { value: self.expr.eval(&v), parts }
    }

    /// Keys of every field the condition reads (deduplicated, in order of first use).
    pub fn fields(&self) -> Vec<String> {
        let mut keys = Vec::new();
        self.expr.collect_fields(&mut keys);
        keys
    }
}

/// What [`Condition::explain`] found.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Explained {
    /// The condition's value.
    pub value: bool,
    pub parts: Vec<Part>,
}

/// One part of a condition, as evaluated.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Part {
    /// The part written out by field key (`Status = "Completed"`, `changed(Score)`).
    pub text: String,
    /// Each field the part read (`old.X` for the previous version), with its value (`null`
    /// when missing).
    pub values: Vec<(String, Value)>,
    pub value: bool,
}

/// The 1-based char column of byte offset `at`.
fn column_of(src: &str, at: usize) -> usize {
    src.get(..at).unwrap_or(src).chars().count() + 1
}

fn unexpected_at(src: &str, at: usize) -> String {
    match src.get(at..).and_then(|rest| rest.chars().next()) {
        Some(c) => format!("unexpected `{c}`"),
        None => "unexpected end of condition".to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// The checked tree and its evaluation
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Expr {
    Or(Vec<Expr>),
    And(Vec<Expr>),
    Not(Box<Expr>),
    Pred(Pred),
}

#[derive(Debug, Clone)]
enum Pred {
    /// `ty` is the type the two sides compare by.
    Compare {
        left: Operand,
        op: CmpOp,
        right: Operand,
        ty: FieldType,
    },
    In {
        subject: Operand,
        list: Vec<Operand>,
        ty: FieldType,
        negated: bool,
    },
    Contains {
        subject: Operand,
        needle: Operand,
        negated: bool,
    },
    Empty {
        subject: Operand,
        negated: bool,
    },
    Changed {
        key: String,
        ty: FieldType,
    },
    /// A boolean field used alone.
    IsTrue(Operand),
}

/// Where a value comes from. Constants are already converted to the compared field's type.
#[derive(Debug, Clone)]
enum Operand {
    New(String),
    Old(String),
    Const(Value),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    fn symbol(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }

    fn is_ordering(self) -> bool {
        !matches!(self, CmpOp::Eq | CmpOp::Ne)
    }

    fn holds(self, ordering: Ordering) -> bool {
        match self {
            CmpOp::Eq => ordering.is_eq(),
            CmpOp::Ne => ordering.is_ne(),
            CmpOp::Lt => ordering.is_lt(),
            CmpOp::Le => ordering.is_le(),
            CmpOp::Gt => ordering.is_gt(),
            CmpOp::Ge => ordering.is_ge(),
        }
    }
}

/// The two versions of the record being decided.
struct Versions<'r> {
    new: &'r Fields,
    old: Option<&'r Fields>,
}

impl Operand {
    /// The value, with `null` and missing both `None`.
    fn get<'r>(&'r self, v: &Versions<'r>) -> Option<&'r Value> {
        let value = match self {
            Operand::New(key) => v.new.get(key),
            Operand::Old(key) => v.old.and_then(|old| old.get(key)),
            Operand::Const(value) => Some(value),
        };
        value.filter(|value| !value.is_null())
    }

    fn is_null_const(&self) -> bool {
        matches!(self, Operand::Const(Value::Null))
    }

    fn key(&self) -> Option<&str> {
        match self {
            Operand::New(key) | Operand::Old(key) => Some(key),
            Operand::Const(_) => None,
        }
    }
}

impl Expr {
    fn eval(&self, v: &Versions<'_>) -> bool {
        match self {
            Expr::Or(items) => items.iter().any(|e| e.eval(v)),
            Expr::And(items) => items.iter().all(|e| e.eval(v)),
            Expr::Not(inner) => !inner.eval(v),
            Expr::Pred(pred) => pred.eval(v),
        }
    }

    fn explain(&self, v: &Versions<'_>, parts: &mut Vec<Part>) {
        match self {
            Expr::Or(items) | Expr::And(items) => items.iter().for_each(|e| e.explain(v, parts)),
            Expr::Not(inner) => inner.explain(v, parts),
            Expr::Pred(pred) => {
                let mut values = Vec::new();
                pred.operands(&mut |o| {
                    let name = match o {
                        Operand::New(key) => key.clone(),
                        Operand::Old(key) => format!("old.{key}"),
                        Operand::Const(_) => return,
                    };
                    if !values.iter().any(|(n, _)| *n == name) {
                        values.push((name, o.get(v).cloned().unwrap_or(Value::Null)));
                    }
                });
                parts.push(Part { text: pred.to_string(), values, value: pred.eval(v) });
            }
        }
    }

    fn collect_fields(&self, keys: &mut Vec<String>) {
        let mut add = |key: Option<&str>| {
            if let Some(key) = key
                && !keys.iter().any(|k| k == key)
            {
                keys.push(key.to_string());
            }
        };
        match self {
            Expr::Or(items) | Expr::And(items) => {
                items.iter().for_each(|e| e.collect_fields(keys));
            }
            Expr::Not(inner) => inner.collect_fields(keys),
            Expr::Pred(pred) => match pred {
                Pred::Compare { left, right, .. } => {
                    add(left.key());
                    add(right.key());
                }
                Pred::In { subject, list, .. } => {
                    add(subject.key());
                    list.iter().for_each(|o| add(o.key()));
                }
                Pred::Contains { subject, needle, .. } => {
                    add(subject.key());
                    add(needle.key());
                }
                Pred::Empty { subject, .. } | Pred::IsTrue(subject) => add(subject.key()),
                Pred::Changed { key, .. } => add(Some(key)),
            },
        }
    }
}

impl Pred {
    /// Calls `f` with every operand, in the order written.
    fn operands(&self, f: &mut impl FnMut(&Operand)) {
        match self {
            Pred::Compare { left, right, .. } => {
                f(left);
                f(right);
            }
            Pred::In { subject, list, .. } => {
                f(subject);
                list.iter().for_each(&mut *f);
            }
            Pred::Contains { subject, needle, .. } => {
                f(subject);
                f(needle);
            }
            Pred::Empty { subject, .. } | Pred::IsTrue(subject) => f(subject),
            Pred::Changed { key, .. } => {
                f(&Operand::New(key.clone()));
                f(&Operand::Old(key.clone()));
            }
        }
    }

    fn eval(&self, v: &Versions<'_>) -> bool {
        match self {
            Pred::Compare { left, op, right, ty } => {
                // `X = null` asks whether X is missing; the checker refuses ordering with null.
                if left.is_null_const() || right.is_null_const() {
                    let other = if left.is_null_const() { right } else { left };
                    let present = other.get(v).is_some();
                    return match op {
                        CmpOp::Eq => !present,
                        CmpOp::Ne => present,
                        _ => false,
                    };
                }
                match (left.get(v), right.get(v)) {
                    (Some(a), Some(b)) => match op {
                        CmpOp::Eq => equal(*ty, a, b),
                        CmpOp::Ne => !equal(*ty, a, b),
                        _ => order(*ty, a, b).is_some_and(|o| op.holds(o)),
                    },
                    _ => *op == CmpOp::Ne,
                }
            }
            Pred::In { subject, list, ty, negated } => {
                let found = match subject.get(v) {
                    None => list.iter().any(Operand::is_null_const),
                    Some(a) => list.iter().any(|item| item.get(v).is_some_and(|b| equal(*ty, a, b))),
                };
                found != *negated
            }
            Pred::Contains { subject, needle, negated } => {
                let needle = needle.get(v);
                let found = match subject.get(v) {
                    None => false,
                    Some(Value::String(s)) => match needle {
                        Some(Value::String(n)) => s.contains(n.as_str()),
                        Some(Value::Number(n)) => s.contains(&n.to_string()),
                        Some(Value::Bool(b)) => s.contains(&b.to_string()),
                        _ => false,
                    },
                    Some(Value::Array(items)) => items.iter().any(|item| match needle {
                        None => item.is_null(),
                        Some(n) => equal(FieldType::Json, item, n),
                    }),
                    Some(Value::Object(map)) => {
                        matches!(needle, Some(Value::String(k)) if map.contains_key(k))
                    }
                    Some(_) => false,
                };
                found != *negated
            }
            Pred::Empty { subject, negated } => {
                let empty = match subject.get(v) {
                    None => true,
                    Some(Value::String(s)) => s.is_empty(),
                    Some(Value::Array(a)) => a.is_empty(),
                    Some(Value::Object(o)) => o.is_empty(),
                    Some(_) => false,
                };
                empty != *negated
            }
            Pred::Changed { key, ty } => {
                let now = v.new.get(key).filter(|x| !x.is_null());
                let Some(old) = v.old else {
                    return now.is_some();
                };
                match (now, old.get(key).filter(|x| !x.is_null())) {
                    (None, None) => false,
                    (Some(a), Some(b)) => !equal(*ty, a, b),
                    _ => true,
                }
            }
            Pred::IsTrue(operand) => matches!(operand.get(v), Some(Value::Bool(true))),
        }
    }
}

impl std::fmt::Display for Operand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Operand::New(key) => f.write_str(&shown_name(key)),
            Operand::Old(key) => write!(f, "old.{}", shown_name(key)),
            Operand::Const(value) => write!(f, "{value}"),
        }
    }
}

/// A key as a condition may name it: bare when it is one plain word, else in brackets.
fn shown_name(key: &str) -> Cow<'_, str> {
    if !key.is_empty() && key.chars().all(|c| c.is_alphanumeric() || c == '_') {
        Cow::Borrowed(key)
    } else {
        Cow::Owned(format!("[{key}]"))
    }
}

impl std::fmt::Display for Pred {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |items: &[Operand]| items.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        let not = |negated: bool| if negated { "not " } else { "" };
        match self {
            Pred::Compare { left, op, right, .. } => write!(f, "{left} {} {right}", op.symbol()),
            Pred::In { subject, list: items, negated, .. } => {
                write!(f, "{subject} {}in ({})", not(*negated), list(items))
            }
            Pred::Contains { subject, needle, negated } => write!(f, "{subject} {}contains {needle}", not(*negated)),
            Pred::Empty { subject, negated } => write!(f, "{subject} is {}empty", not(*negated)),
            Pred::Changed { key, .. } => write!(f, "changed({})", shown_name(key)),
            Pred::IsTrue(subject) => write!(f, "{subject}"),
        }
    }
}

/// Equality by the compared field's type; falls back to plain JSON equality.
fn equal(ty: FieldType, a: &Value, b: &Value) -> bool {
    match ty {
        FieldType::Number => {
            if let (Some(x), Some(y)) = (as_number(a), as_number(b)) {
                return number_cmp(&x, &y) == Some(Ordering::Equal);
            }
        }
        FieldType::Datetime => {
            if let (Some(x), Some(y)) = (as_instant(a), as_instant(b)) {
                return x == y;
            }
        }
        _ => {
            if let (Value::Number(x), Value::Number(y)) = (a, b) {
                return number_cmp(x, y) == Some(Ordering::Equal);
            }
        }
    }
    a == b
}

/// Ordering by the compared field's type; `None` when the values cannot be ordered.
fn order(ty: FieldType, a: &Value, b: &Value) -> Option<Ordering> {
    match ty {
        FieldType::Number => number_cmp(&as_number(a)?, &as_number(b)?),
        FieldType::Datetime => Some(as_instant(a)?.cmp(&as_instant(b)?)),
        FieldType::Boolean => None,
        FieldType::String | FieldType::Json => match (a, b) {
            (Value::Number(x), Value::Number(y)) => number_cmp(x, y),
            (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
            _ => None,
        },
    }
}

/// Integers compare exactly; anything else as `f64`.
fn number_cmp(x: &Number, y: &Number) -> Option<Ordering> {
    if let (Some(a), Some(b)) = (x.as_i64(), y.as_i64()) {
        return Some(a.cmp(&b));
    }
    if let (Some(a), Some(b)) = (x.as_u64(), y.as_u64()) {
        return Some(a.cmp(&b));
    }
    x.as_f64()?.partial_cmp(&y.as_f64()?)
}

/// A number, or a string holding one (values of number fields sometimes arrive as `"0"`).
fn as_number(v: &Value) -> Option<Number> {
    match v {
        Value::Number(n) => Some(n.clone()),
        Value::String(s) => parse_number(s.trim()),
        _ => None,
    }
}

/// A finite number; `inf` and `NaN`, which `f64::from_str` accepts, are not numbers here.
fn parse_number(s: &str) -> Option<Number> {
    if let Ok(i) = s.parse::<i64>() {
        return Some(i.into());
    }
    if let Ok(u) = s.parse::<u64>() {
        return Some(u.into());
    }
    s.parse::<f64>().ok().filter(|f| f.is_finite()).and_then(Number::from_f64)
}

fn as_instant(v: &Value) -> Option<SystemTime> {
    match v {
        Value::String(s) => parse_instant(s),
        _ => None,
    }
}

/// An RFC 3339 instant, or a `YYYY-MM-DD` date read as midnight UTC.
fn parse_instant(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    humantime::parse_rfc3339_weak(s)
        .ok()
        .or_else(|| (s.len() == 10).then(|| humantime::parse_rfc3339_weak(&format!("{s}T00:00:00Z")).ok()).flatten())
}

// ---------------------------------------------------------------------------------------------
// Failures shared by the lexer and the parser
// ---------------------------------------------------------------------------------------------

/// A refusal at byte offset `at`; without a message, the caller names what is found there.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    at: usize,
    message: Option<String>,
}

type PResult<T> = Result<T, ErrMode<Failure>>;

/// A committed failure: stops all backtracking, so this message is the one reported.
fn cut(at: usize, message: impl Into<String>) -> ErrMode<Failure> {
    ErrMode::Cut(Failure { at, message: Some(message.into()) })
}

fn flatten(e: ErrMode<Failure>) -> Failure {
    match e {
        ErrMode::Backtrack(f) | ErrMode::Cut(f) => f,
        ErrMode::Incomplete(_) => Failure { at: 0, message: None },
    }
}

/// Where a stream stands, as a byte offset into the source.
trait Position {
    fn position(&self) -> usize;
}

impl<I: Stream + Position> ParserError<I> for Failure {
    type Inner = Self;

    fn from_input(input: &I) -> Self {
        Failure { at: input.position(), message: None }
    }

    // winnow panics here in debug builds when a repeated parser consumes nothing; that would
    // be a bug in this module, but a condition must never bring down the server.
    fn assert(input: &I, _message: &'static str) -> Self
    where
        I: std::fmt::Debug,
    {
        Failure { at: input.position(), message: Some("internal parser error".to_string()) }
    }

    fn into_inner(self) -> Result<Self::Inner, Self> {
        Ok(self)
    }
}

// ---------------------------------------------------------------------------------------------
// Pass 1: lexing
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    LParen,
    RParen,
    Comma,
    Op(CmpOp),
    And,
    Or,
    Not,
    In,
    Contains,
    Is,
    /// `changed`, only when a `(` follows.
    Changed,
    True,
    False,
    Null,
    /// `old.`
    Old,
    /// A field of the object, by index into `DataObject::fields`.
    Field {
        index: usize,
        bracketed: bool,
    },
    /// A quoted string; its unescaped content is in `Token::value`.
    Str,
    Number,
    Word,
    /// Always the last token, so every position has a token to report.
    Eof,
}

#[derive(Debug, Clone)]
struct Token<'s> {
    kind: Kind,
    /// Byte offsets into the source.
    start: usize,
    end: usize,
    /// The source text of the token.
    text: &'s str,
    /// The value the token stands for: the unescaped content of a string, else `text`.
    value: Cow<'s, str>,
}

impl Token<'_> {
    fn describe(&self) -> String {
        match self.kind {
            Kind::Eof => "the end".to_string(),
            _ => format!("`{}`", self.text),
        }
    }
}

type Chars<'s> = LocatingSlice<&'s str>;

impl Position for Chars<'_> {
    fn position(&self) -> usize {
        self.current_token_start()
    }
}

struct Lexer<'o> {
    object: &'o DataObject,
    /// Every key and label with its field index, longest first.
    names: Vec<(&'o str, usize)>,
}

impl<'o> Lexer<'o> {
    fn new(object: &'o DataObject) -> Self {
        let mut names: Vec<(&str, usize)> = Vec::new();
        for (index, field) in object.fields.iter().enumerate() {
            names.push((&field.key, index));
            if let Some(label) = &field.label {
                names.push((label, index));
            }
        }
        // An empty name would match without consuming anything.
        names.retain(|(name, _)| !name.trim().is_empty());
        // Stable: on equal length, keys (pushed first) win over labels, as in `resolve`.
        names.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
        Lexer { object, names }
    }

    fn tokens<'s>(&self, src: &'s str) -> Result<Vec<Token<'s>>, Failure> {
        let mut input = LocatingSlice::new(src);
        let mut tokens: Vec<Token<'s>> =
            preceded(space, repeat(0.., terminated(|i: &mut Chars<'s>| self.token(i), space)))
                .parse_next(&mut input)
                .map_err(flatten)?;
        if !input.is_empty() {
            // Only a stray `]` reaches here: every other character starts some token.
            return Err(Failure { at: input.current_token_start(), message: None });
        }
        tokens.push(Token { kind: Kind::Eof, start: src.len(), end: src.len(), text: "", value: Cow::Borrowed("") });
        Ok(tokens)
    }

    fn token<'s>(&self, i: &mut Chars<'s>) -> PResult<Token<'s>> {
        let (((kind, unescaped), text), span) = alt((
            punct.map(|k| (k, None)),
            quoted.map(|s| (Kind::Str, Some(s))),
            (|i: &mut Chars<'s>| self.bracket(i)).map(|k| (k, None)),
            literal(Caseless("old.")).value((Kind::Old, None)),
            keyword.map(|k| (k, None)),
            (|i: &mut Chars<'s>| self.field(i)).map(|k| (k, None)),
            number.value((Kind::Number, None)),
            word.value((Kind::Word, None)),
        ))
        .with_taken()
        .with_span()
        .parse_next(i)?;
        let value = match unescaped {
            Some(s) => Cow::Owned(s),
            None => Cow::Borrowed(text),
        };
        Ok(Token { kind, start: span.start, end: span.end, text, value })
    }

    /// `[Any Name]`: a field by key or label, which must exist.
    fn bracket(&self, i: &mut Chars<'_>) -> PResult<Kind> {
        let start = i.current_token_start();
        '['.parse_next(i)?;
        let name: &str = take_till(0.., ']').parse_next(i)?;
        if opt(']').parse_next(i)?.is_none() {
            return Err(cut(start, "unclosed `[`"));
        }
        let name = name.trim();
        if name.is_empty() {
            return Err(cut(start, "empty field name in brackets"));
        }
        match resolve_index(self.object, name) {
            Some(index) => Ok(Kind::Field { index, bracketed: true }),
            None => Err(cut(start, format!("unknown field `{name}` in brackets"))),
        }
    }

    /// The longest key or label of the object that starts here and ends at a word boundary.
    fn field(&self, i: &mut Chars<'_>) -> PResult<Kind> {
        for &(name, index) in &self.names {
            let start = i.checkpoint();
            let matched: PResult<()> = terminated(literal(name), not(word_cont)).void().parse_next(i);
            if matched.is_ok() {
                return Ok(Kind::Field { index, bracketed: false });
            }
            i.reset(&start);
        }
        Err(ErrMode::from_input(i))
    }
}

/// The field with this key or label (keys first), as an index.
fn resolve_index(object: &DataObject, name: &str) -> Option<usize> {
    let fields = &object.fields;
    fields.iter().position(|f| f.key == name).or_else(|| fields.iter().position(|f| f.label.as_deref() == Some(name)))
}

fn space(i: &mut Chars<'_>) -> PResult<()> {
    take_while(0.., char::is_whitespace).void().parse_next(i)
}

fn punct(i: &mut Chars<'_>) -> PResult<Kind> {
    alt((
        '('.value(Kind::LParen),
        ')'.value(Kind::RParen),
        ','.value(Kind::Comma),
        alt(("==", "=")).value(Kind::Op(CmpOp::Eq)),
        alt(("!=", "<>")).value(Kind::Op(CmpOp::Ne)),
        "<=".value(Kind::Op(CmpOp::Le)),
        "<".value(Kind::Op(CmpOp::Lt)),
        ">=".value(Kind::Op(CmpOp::Ge)),
        ">".value(Kind::Op(CmpOp::Gt)),
    ))
    .parse_next(i)
}

/// `"..."` or `'...'`; a backslash escapes the next character.
fn quoted(i: &mut Chars<'_>) -> PResult<String> {
    let start = i.current_token_start();
    let quote = one_of(['"', '\'']).parse_next(i)?;
    let content: String = repeat(
        0..,
        alt((
            preceded('\\', any).map(|c| match c {
                'n' => '\n',
                't' => '\t',
                'r' => '\r',
                other => other,
            }),
            none_of([quote, '\\']),
        )),
    )
    .parse_next(i)?;
    if opt(quote).parse_next(i)?.is_none() {
        return Err(cut(start, "unclosed string"));
    }
    Ok(content)
}

/// Characters that end a bare word besides whitespace (and `!` before `=`).
const WORD_ENDS: &[char] = &['(', ')', '[', ']', ',', '=', '<', '>', '!'];

fn word_cont(i: &mut Chars<'_>) -> PResult<char> {
    alt((one_of(|c: char| !c.is_whitespace() && !WORD_ENDS.contains(&c)), terminated('!', not('=')))).parse_next(i)
}

/// Quotes inside a word are part of it (`O'Brien`); at its start they open a string.
fn word_start(i: &mut Chars<'_>) -> PResult<char> {
    alt((
        one_of(|c: char| !c.is_whitespace() && !WORD_ENDS.contains(&c) && c != '"' && c != '\''),
        terminated('!', not('=')),
    ))
    .parse_next(i)
}

fn word<'s>(i: &mut Chars<'s>) -> PResult<&'s str> {
    (word_start, repeat(0.., word_cont).map(|()| ())).take().parse_next(i)
}

/// A number literal that is a whole word: `0`, `-1.5`, `2e3` (not `1-2` or `3rd`).
fn number(i: &mut Chars<'_>) -> PResult<()> {
    terminated(
        (opt('-'), digit1, opt(('.', digit1)), opt((one_of(['e', 'E']), opt(one_of(['+', '-'])), digit1))),
        not(word_cont),
    )
    .void()
    .parse_next(i)
}

fn keyword(i: &mut Chars<'_>) -> PResult<Kind> {
    let w = word.parse_next(i)?;
    let kind = match w.to_ascii_lowercase().as_str() {
        "and" => Kind::And,
        "or" => Kind::Or,
        "not" => Kind::Not,
        "in" => Kind::In,
        "contains" => Kind::Contains,
        "is" => Kind::Is,
        "true" => Kind::True,
        "false" => Kind::False,
        "null" => Kind::Null,
        "changed" if peek((space, '(')).parse_next(i).is_ok() => Kind::Changed,
        _ => return Err(ErrMode::from_input(i)),
    };
    Ok(kind)
}

// ---------------------------------------------------------------------------------------------
// Pass 2: parsing the tokens into an unchecked tree
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
enum RawExpr {
    Or(Vec<RawExpr>),
    And(Vec<RawExpr>),
    Not(Box<RawExpr>),
    Pred(RawPred),
}

#[derive(Debug)]
enum RawPred {
    Alone(RawOperand),
    Compare { left: RawOperand, op: CmpOp, op_at: usize, right: RawOperand },
    In { subject: RawOperand, list: Vec<RawOperand>, negated: bool },
    Contains { subject: RawOperand, needle: RawOperand, negated: bool, op_at: usize },
    Empty { subject: RawOperand, negated: bool },
    Changed { arg: RawOperand },
}

#[derive(Debug)]
struct RawOperand {
    term: Term,
    /// Byte offset of the operand (of the name, for an unknown `old.` name).
    at: usize,
    /// Source text, for messages; for a bare value, the value itself.
    text: String,
}

#[derive(Debug)]
enum Term {
    Field(usize),
    Old(usize),
    /// `old.` followed by something that is no field.
    OldUnknown,
    /// A quoted string, unescaped.
    Quoted(String),
    Number,
    Bool(bool),
    Null,
    /// A run of bare words that is no field.
    Bare,
}

/// Parser state: the source (for the text of word runs) and the parenthesis depth.
#[derive(Debug, Clone)]
struct Ctx<'s> {
    src: &'s str,
    depth: usize,
}

type Tokens<'a> = Stateful<TokenSlice<'a, Token<'a>>, Ctx<'a>>;

impl Position for Tokens<'_> {
    fn position(&self) -> usize {
        self.first().map_or(self.state.src.len(), |t| t.start)
    }
}

fn parse_tokens<'a>(src: &'a str, tokens: &'a [Token<'a>]) -> Result<RawExpr, Failure> {
    let mut input = Stateful { input: TokenSlice::new(tokens), state: Ctx { src, depth: 0 } };
    condition(&mut input).map_err(flatten)
}

/// One token of this kind (for kinds without a payload).
fn kind<'a>(k: Kind) -> impl Parser<Tokens<'a>, &'a Token<'a>, ErrMode<Failure>> {
    one_of(move |t: &'a Token<'a>| t.kind == k)
}

/// The next token, not consumed. The `Eof` token is never consumed, so there always is one.
fn lookahead<'a>(i: &mut Tokens<'a>) -> PResult<&'a Token<'a>> {
    peek(any).parse_next(i)
}

fn previous<'a>(i: &Tokens<'a>) -> Option<&'a Token<'a>> {
    i.input.previous_tokens().next()
}

fn condition(i: &mut Tokens<'_>) -> PResult<RawExpr> {
    if lookahead(i)?.kind == Kind::Eof {
        return Err(cut(0, "empty condition"));
    }
    let expr = or_expr(i)?;
    let next = lookahead(i)?;
    match next.kind {
        Kind::Eof => Ok(expr),
        Kind::RParen => Err(cut(next.start, "unexpected `)`")),
        _ => Err(cut(next.start, missing_connective(next, "`and` or `or`"))),
    }
}

/// What to say when a complete condition is followed by something that cannot follow it.
fn missing_connective(next: &Token<'_>, expected: &str) -> String {
    let mut message = format!("expected {expected} before {}", next.describe());
    if matches!(next.kind, Kind::Field { bracketed: false, .. }) {
        // Most likely a value that happens to contain a field name, e.g. `= High Priority`.
        message.push_str("; quote a value that contains a field name");
    }
    message
}

fn or_expr(i: &mut Tokens<'_>) -> PResult<RawExpr> {
    let first = and_expr(i)?;
    let rest: Vec<RawExpr> = repeat(0.., preceded(kind(Kind::Or), and_expr)).parse_next(i)?;
    Ok(flat(first, rest, RawExpr::Or))
}

fn and_expr(i: &mut Tokens<'_>) -> PResult<RawExpr> {
    let first = not_expr(i)?;
    let rest: Vec<RawExpr> = repeat(0.., preceded(kind(Kind::And), not_expr)).parse_next(i)?;
    Ok(flat(first, rest, RawExpr::And))
}

fn flat(first: RawExpr, rest: Vec<RawExpr>, join: fn(Vec<RawExpr>) -> RawExpr) -> RawExpr {
    if rest.is_empty() {
        return first;
    }
    let mut all = Vec::with_capacity(rest.len() + 1);
    all.push(first);
    all.extend(rest);
    join(all)
}

/// `not` binds tighter than `and`; a run of `not`s is counted rather than recursed into.
fn not_expr(i: &mut Tokens<'_>) -> PResult<RawExpr> {
    let nots: usize = repeat(0.., kind(Kind::Not)).parse_next(i)?;
    let inner = primary(i)?;
    Ok(if nots % 2 == 1 { RawExpr::Not(Box::new(inner)) } else { inner })
}

/// A parenthesised condition, `changed(...)` or a predicate. Never backtracks: every caller
/// has committed to a condition here, so a failure says what was expected.
fn primary(i: &mut Tokens<'_>) -> PResult<RawExpr> {
    let next = lookahead(i)?;
    match next.kind {
        Kind::LParen => group(i),
        Kind::Changed => changed(i),
        k if starts_operand(k, Place::Subject) => predicate(i).map(RawExpr::Pred),
        _ => {
            let prev = previous(i);
            let message = match (next.kind, prev) {
                (Kind::RParen, Some(p)) if p.kind == Kind::LParen => "empty parentheses".to_string(),
                (Kind::RParen, _) => "unexpected `)`".to_string(),
                (Kind::Eof, None) => "empty condition".to_string(),
                (Kind::Eof, Some(p)) => format!("expected a condition after {}", p.describe()),
                (_, Some(p)) => {
                    format!("expected a condition after {}, found {}", p.describe(), next.describe())
                }
                (_, None) => format!("expected a condition, found {}", next.describe()),
            };
            Err(cut(next.start, message))
        }
    }
}

fn group(i: &mut Tokens<'_>) -> PResult<RawExpr> {
    let open = kind(Kind::LParen).parse_next(i)?;
    if i.state.depth >= MAX_DEPTH {
        return Err(cut(open.start, format!("parentheses nest more than {MAX_DEPTH} deep")));
    }
    i.state.depth += 1;
    let inner = or_expr(i)?;
    i.state.depth -= 1;
    close_paren(i, open, "`and`, `or` or `)`")?;
    Ok(inner)
}

/// The `)` matching `open`.
fn close_paren(i: &mut Tokens<'_>, open: &Token<'_>, expected: &str) -> PResult<()> {
    let next = lookahead(i)?;
    match next.kind {
        Kind::RParen => {
            any.void().parse_next(i)?;
            Ok(())
        }
        Kind::Eof => Err(cut(open.start, "unclosed parenthesis")),
        _ => Err(cut(next.start, missing_connective(next, expected))),
    }
}

fn changed(i: &mut Tokens<'_>) -> PResult<RawExpr> {
    kind(Kind::Changed).parse_next(i)?;
    // The lexer reads `changed` as a keyword only before `(`.
    let open = kind(Kind::LParen).parse_next(i)?;
    let next = lookahead(i)?;
    if !starts_operand(next.kind, Place::Subject) {
        return Err(cut(next.start, "expected a field name in `changed(...)`"));
    }
    let arg = operand(i, Place::Subject)?;
    close_paren(i, open, "`)`")?;
    Ok(RawExpr::Pred(RawPred::Changed { arg }))
}

/// Where an operand stands, which decides what ends a run of bare words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Before an operator, or alone: every keyword ends a run (`Sttus is empty`).
    Subject,
    /// After an operator or in an `in` list. Only `and`, `or` and punctuation can follow a
    /// value there, so other keywords are read as words: `Status = In Progress`.
    Value,
}

fn starts_operand(k: Kind, place: Place) -> bool {
    matches!(k, Kind::Field { .. } | Kind::Old | Kind::Str) || is_run_kind(k, place)
}

/// Tokens that make up a run of bare words.
fn is_run_kind(k: Kind, place: Place) -> bool {
    let keyword_as_word = matches!(k, Kind::Not | Kind::In | Kind::Contains | Kind::Is);
    (place == Place::Value && keyword_as_word)
        || matches!(k, Kind::Word | Kind::Number | Kind::True | Kind::False | Kind::Null)
}

fn predicate(i: &mut Tokens<'_>) -> PResult<RawPred> {
    let subject = operand(i, Place::Subject)?;
    let next = lookahead(i)?;
    let pred = match next.kind {
        Kind::Op(op) => {
            any.void().parse_next(i)?;
            let right = value_after(i, next)?;
            RawPred::Compare { left: subject, op, op_at: next.start, right }
        }
        Kind::In => {
            any.void().parse_next(i)?;
            RawPred::In { subject, list: in_list(i, next)?, negated: false }
        }
        Kind::Contains => {
            any.void().parse_next(i)?;
            let needle = value_after(i, next)?;
            RawPred::Contains { subject, needle, negated: false, op_at: next.start }
        }
        Kind::Not => {
            any.void().parse_next(i)?;
            let op = lookahead(i)?;
            match op.kind {
                Kind::In => {
                    any.void().parse_next(i)?;
                    RawPred::In { subject, list: in_list(i, op)?, negated: true }
                }
                Kind::Contains => {
                    any.void().parse_next(i)?;
                    let needle = value_after(i, op)?;
                    RawPred::Contains { subject, needle, negated: true, op_at: next.start }
                }
                _ => return Err(cut(op.start, "expected `in` or `contains` after `not`")),
            }
        }
        Kind::Is => {
            any.void().parse_next(i)?;
            let negated = opt(kind(Kind::Not)).parse_next(i)?.is_some();
            let empty = lookahead(i)?;
            // `empty` is no keyword elsewhere, so it arrives as a word (or a field so named).
            let is_empty_word = matches!(empty.kind, Kind::Word | Kind::Field { bracketed: false, .. })
                && empty.text.eq_ignore_ascii_case("empty");
            if !is_empty_word {
                let after = if negated { "`is not`" } else { "`is`" };
                return Err(cut(empty.start, format!("expected `empty` after {after}")));
            }
            any.void().parse_next(i)?;
            RawPred::Empty { subject, negated }
        }
        Kind::And | Kind::Or | Kind::RParen | Kind::Eof => RawPred::Alone(subject),
        _ => {
            let message = format!("expected an operator after `{}`, found {}", subject.text, next.describe());
            return Err(cut(next.start, message));
        }
    };
    Ok(pred)
}

/// The value that must follow an operator token `op`.
fn value_after(i: &mut Tokens<'_>, op: &Token<'_>) -> PResult<RawOperand> {
    let next = lookahead(i)?;
    if !starts_operand(next.kind, Place::Value) {
        let message = match next.kind {
            Kind::Eof => format!("expected a value after `{}`", op.text),
            _ => format!("expected a value after `{}`, found {}", op.text, next.describe()),
        };
        return Err(cut(next.start, message));
    }
    operand(i, Place::Value)
}

/// `(a, b, ...)` after `in`.
fn in_list(i: &mut Tokens<'_>, in_token: &Token<'_>) -> PResult<Vec<RawOperand>> {
    let next = lookahead(i)?;
    if next.kind != Kind::LParen {
        return Err(cut(next.start, format!("expected `(` after {}", in_token.describe())));
    }
    let open = any.parse_next(i)?;
    let first = value_after(i, open)?;
    let comma_value = |i: &mut Tokens<'_>| {
        let comma = kind(Kind::Comma).parse_next(i)?;
        value_after(i, comma)
    };
    let rest: Vec<RawOperand> = repeat(0.., comma_value).parse_next(i)?;
    close_paren(i, open, "`,` or `)`")?;
    let mut list = Vec::with_capacity(rest.len() + 1);
    list.push(first);
    list.extend(rest);
    Ok(list)
}

fn operand(i: &mut Tokens<'_>, place: Place) -> PResult<RawOperand> {
    let first = any.parse_next(i)?;
    let operand = match first.kind {
        Kind::Field { index, .. } => {
            RawOperand { term: Term::Field(index), at: first.start, text: first.text.to_string() }
        }
        Kind::Str => {
            RawOperand { term: Term::Quoted(first.value.to_string()), at: first.start, text: first.text.to_string() }
        }
        Kind::Old => {
            let next = lookahead(i)?;
            match next.kind {
                Kind::Field { index, .. } => {
                    any.void().parse_next(i)?;
                    RawOperand { term: Term::Old(index), at: first.start, text: format!("{}{}", first.text, next.text) }
                }
                k if is_run_kind(k, place) => {
                    let word = any.parse_next(i)?;
                    let (_, text) = bare_run(i, word, place)?;
                    RawOperand { term: Term::OldUnknown, at: word.start, text }
                }
                _ => return Err(cut(next.start, "expected a field name after `old.`")),
            }
        }
        k if is_run_kind(k, place) => {
            let (single, text) = bare_run(i, first, place)?;
            // A lone token keeps its own meaning; a longer run is a string.
            let term = match k {
                Kind::Number if single => Term::Number,
                Kind::True if single => Term::Bool(true),
                Kind::False if single => Term::Bool(false),
                Kind::Null if single => Term::Null,
                _ => Term::Bare,
            };
            RawOperand { term, at: first.start, text }
        }
        _ => return Err(ErrMode::from_input(i)),
    };
    Ok(operand)
}

/// A run of bare words from `first` (already consumed) on. Returns whether `first` stood
/// alone, and the verbatim source text of the run, inner whitespace included.
fn bare_run(i: &mut Tokens<'_>, first: &Token<'_>, place: Place) -> PResult<(bool, String)> {
    let rest: Vec<&Token<'_>> = repeat(0.., one_of(|t: &Token<'_>| is_run_kind(t.kind, place))).parse_next(i)?;
    let end = rest.last().map_or(first.end, |t| t.end);
    let text = i.state.src.get(first.start..end).unwrap_or(first.text).to_string();
    Ok((rest.is_empty(), text))
}

// ---------------------------------------------------------------------------------------------
// Pass 3: checking against the schema
// ---------------------------------------------------------------------------------------------

struct Checker<'o> {
    object: &'o DataObject,
    /// Whether the checks added since definitions were first stored apply.
    strict: bool,
}

impl Checker<'_> {
    fn expr(&self, raw: RawExpr) -> Result<Expr, Failure> {
        Ok(match raw {
            RawExpr::Or(items) => Expr::Or(self.exprs(items)?),
            RawExpr::And(items) => Expr::And(self.exprs(items)?),
            RawExpr::Not(inner) => Expr::Not(Box::new(self.expr(*inner)?)),
            RawExpr::Pred(pred) => Expr::Pred(self.pred(pred)?),
        })
    }

    fn exprs(&self, items: Vec<RawExpr>) -> Result<Vec<Expr>, Failure> {
        items.into_iter().map(|e| self.expr(e)).collect()
    }

    fn pred(&self, raw: RawPred) -> Result<Pred, Failure> {
        match raw {
            RawPred::Alone(operand) => {
                let (source, def) =
                    self.require_field(&operand, || format!("expected a condition, found `{}`", operand.text))?;
                if def.ty != FieldType::Boolean {
                    return Err(fail(
                        operand.at,
                        format!(
                            "`{}` is a {} field, not a condition: compare it with a value",
                            operand.text,
                            def.ty.name()
                        ),
                    ));
                }
                Ok(Pred::IsTrue(source))
            }
            RawPred::Compare { left, op, op_at, right } => self.compare(left, op, op_at, right),
            RawPred::In { subject, list, negated } => {
                let (subject, def) =
                    self.require_field(&subject, || format!("`in` needs a field on its left, not `{}`", subject.text))?;
                let list = list.iter().map(|item| self.value_for(def, item)).collect::<Result<Vec<_>, _>>()?;
                Ok(Pred::In { subject, list, ty: def.ty, negated })
            }
            RawPred::Contains { subject, needle, negated, op_at } => {
                let (subject, def) = self.require_field(&subject, || {
                    format!("`contains` needs a field on its left, not `{}`", subject.text)
                })?;
                if !matches!(def.ty, FieldType::String | FieldType::Json) {
                    return Err(fail(
                        op_at,
                        format!(
                            "`contains` applies to string and json fields; {} is a {} field",
                            display_name(def),
                            def.ty.name()
                        ),
                    ));
                }
                let needle = self.value_for(def, &needle)?;
                Ok(Pred::Contains { subject, needle, negated })
            }
            RawPred::Empty { subject, negated } => {
                let (subject, _) = self.require_field(&subject, || {
                    format!("`is empty` needs a field on its left, not `{}`", subject.text)
                })?;
                Ok(Pred::Empty { subject, negated })
            }
            RawPred::Changed { arg } => match self.field_of(&arg)? {
                Some((Operand::New(key), def)) => Ok(Pred::Changed { key, ty: def.ty }),
                Some(_) => Err(fail(arg.at, "`changed(...)` takes a field, not an `old.` value")),
                None if matches!(arg.term, Term::Bare) => Err(self.not_a_field(&arg)),
                None => Err(fail(arg.at, format!("`changed(...)` takes a field name, not `{}`", arg.text))),
            },
        }
    }

    fn compare(&self, left: RawOperand, op: CmpOp, op_at: usize, right: RawOperand) -> Result<Pred, Failure> {
        let (left_field, right_field) = (self.field_of(&left)?, self.field_of(&right)?);
        // The field compared with a literal, and the literal, if that is the comparison.
        let literal = match (&left_field, &right_field) {
            (Some((_, def)), None) => Some((*def, &right)),
            (None, Some((_, def))) => Some((*def, &left)),
            _ => None,
        };
        let (l, r, ty) = match (left_field, right_field) {
            (Some((l, ld)), Some((r, rd))) => (l, r, common_type(ld.ty, rd.ty)),
            (Some((l, def)), None) => (l, self.value_for(def, &right)?, def.ty),
            (None, Some((r, def))) => (self.value_for(def, &left)?, r, def.ty),
            (None, None) => {
                let culprit = [&left, &right].into_iter().find(|o| matches!(o.term, Term::Bare));
                return Err(match culprit {
                    Some(bare) => self.not_a_field(bare),
                    None => fail(left.at, "a comparison needs a field on one side"),
                });
            }
        };
        if op.is_ordering() {
            // A string field ordered against a number would compare text (`"10" < "9"`).
            if let Some((def, raw)) = literal
                && self.strict
                && def.ty == FieldType::String
                && matches!(raw.term, Term::Number)
            {
                return Err(fail(
                    raw.at,
                    format!(
                        "{} is a string field, so `{}` would compare text (\"10\" < \"9\"); quote the value \
                         ('{}') to compare text, or make the field a number",
                        display_name(def),
                        op.symbol(),
                        raw.text
                    ),
                ));
            }
            if l.is_null_const() || r.is_null_const() {
                return Err(fail(
                    op_at,
                    format!("`{}` cannot compare with null; use `= null` or `is empty`", op.symbol()),
                ));
            }
            if ty == FieldType::Boolean {
                return Err(fail(op_at, format!("`{}` does not apply to boolean fields", op.symbol())));
            }
        }
        Ok(Pred::Compare { left: l, op, right: r, ty })
    }

    /// The field an operand reads, if it is one; an `old.` naming no field is refused.
    fn field_of(&self, raw: &RawOperand) -> Result<Option<(Operand, &FieldDef)>, Failure> {
        let field = |index: usize| self.object.fields.get(index);
        Ok(match raw.term {
            Term::Field(index) => field(index).map(|def| (Operand::New(def.key.clone()), def)),
            Term::Old(index) => field(index).map(|def| (Operand::Old(def.key.clone()), def)),
            Term::OldUnknown => return Err(self.not_a_field(raw)),
            _ => None,
        })
    }

    /// A field, or a refusal: "not a field" for a bare word, `otherwise()` for a literal.
    fn require_field(
        &self,
        raw: &RawOperand,
        otherwise: impl FnOnce() -> String,
    ) -> Result<(Operand, &FieldDef), Failure> {
        match self.field_of(raw)? {
            Some(found) => Ok(found),
            None if matches!(raw.term, Term::Bare) => Err(self.not_a_field(raw)),
            None => Err(fail(raw.at, otherwise())),
        }
    }

    /// An operand compared with field `def`: a field as is, a literal converted to its type.
    fn value_for(&self, def: &FieldDef, raw: &RawOperand) -> Result<Operand, Failure> {
        if let Some((operand, _)) = self.field_of(raw)? {
            return Ok(operand);
        }
        coerce(def, raw).map(Operand::Const)
    }

    fn not_a_field(&self, raw: &RawOperand) -> Failure {
        fail(raw.at, format!("`{}` is not a field of {}", raw.text, self.object.name))
    }
}

fn fail(at: usize, message: impl Into<String>) -> Failure {
    Failure { at, message: Some(message.into()) }
}

fn display_name(def: &FieldDef) -> &str {
    def.label.as_deref().unwrap_or(&def.key)
}

/// The type two fields compare by: number, then datetime, then the one that is not json.
fn common_type(a: FieldType, b: FieldType) -> FieldType {
    use FieldType::{Datetime, Json, Number};
    match (a, b) {
        _ if a == b => a,
        (Number, _) | (_, Number) => Number,
        (Datetime, _) | (_, Datetime) => Datetime,
        (Json, other) => other,
        (other, _) => other,
    }
}

/// Converts a literal to the type of the field it is compared with, or refuses it.
fn coerce(def: &FieldDef, raw: &RawOperand) -> Result<Value, Failure> {
    let text = match &raw.term {
        Term::Null => return Ok(Value::Null),
        Term::Quoted(s) => s.as_str(),
        _ => raw.text.as_str(),
    };
    let name = display_name(def);
    match def.ty {
        FieldType::Number => match parse_number(text.trim()) {
            Some(n) => Ok(Value::Number(n)),
            None => Err(fail(raw.at, format!("{name} is a number field; `{text}` is not a number"))),
        },
        FieldType::String => Ok(Value::String(text.to_string())),
        FieldType::Boolean => match &raw.term {
            Term::Bool(b) => Ok(Value::Bool(*b)),
            Term::Quoted(s) if s.eq_ignore_ascii_case("true") => Ok(Value::Bool(true)),
            Term::Quoted(s) if s.eq_ignore_ascii_case("false") => Ok(Value::Bool(false)),
            _ => Err(fail(raw.at, format!("{name} is a boolean field; `{text}` is not true or false"))),
        },
        FieldType::Datetime => match parse_instant(text) {
            Some(_) => Ok(Value::String(text.trim().to_string())),
            None => Err(fail(
                raw.at,
                format!(
                    "{name} is a datetime field; `{text}` is not an RFC 3339 datetime \
                     (such as 2026-01-31T12:00:00Z)"
                ),
            )),
        },
        FieldType::Json => Ok(match &raw.term {
            Term::Bool(b) => Value::Bool(*b),
            Term::Number => parse_number(text).map_or_else(|| Value::String(text.to_string()), Value::Number),
            _ => Value::String(text.to_string()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Labels with spaces, one label a prefix of another (`Status` / `Status Reason`), one
    /// holding a keyword (`Time In Status`), and a field of every type.
    fn survey() -> DataObject {
        serde_json::from_value(json!({
            "name": "survey", "id_field": "a_surveyid",
            "fields": [
                {"key": "a_surveyid", "type": "string"},
                {"key": "status", "label": "Status", "type": "string"},
                {"key": "status_reason", "label": "Status Reason", "type": "string"},
                {"key": "score", "label": "Transactional Satisfaction", "type": "number"},
                {"key": "tis", "label": "Time In Status", "type": "number"},
                {"key": "active", "label": "Active", "type": "boolean"},
                {"key": "due", "label": "Due Date", "type": "datetime"},
                {"key": "tags", "label": "Tags", "type": "json"}
            ]
        }))
        .expect("the test object is valid")
    }

    fn fields(v: Value) -> Fields {
        match v {
            Value::Object(map) => map,
            other => panic!("test records are objects, not {other}"),
        }
    }

    #[test]
    fn explain_names_every_part_with_the_values_it_read() {
        let c =
            parse("Status = Completed and (Transactional Satisfaction < 3 or changed(Tags)) and not Active", &survey())
                .unwrap();
        let new = fields(json!({"status": "Completed", "score": 7, "tags": ["a"], "active": false}));
        let old = fields(json!({"status": "Open", "score": 7, "tags": ["a"]}));
        let e = c.explain(&new, Some(&old));
        assert_eq!(e.value, c.eval(&new, Some(&old)));
        assert!(!e.value);
        let shown: Vec<(&str, bool)> = e.parts.iter().map(|p| (p.text.as_str(), p.value)).collect();
        assert_eq!(
            shown,
            [("status = \"Completed\"", true), ("score < 3", false), ("changed(tags)", false), ("active", false)]
        );
        assert_eq!(e.parts[1].values, [("score".to_string(), json!(7))]);
        assert_eq!(e.parts[2].values, [("tags".to_string(), json!(["a"])), ("old.tags".to_string(), json!(["a"]))]);
        // Every condition of the table explains to the value it evaluates to.
        for (src, new, old, expected) in eval_table() {
            let c = parse(src, &survey()).unwrap();
            let (new, old) = (fields(new), old.map(fields));
            assert_eq!(c.explain(&new, old.as_ref()).value, expected, "{src}");
        }
    }

    const SEED: &str = "Status = Completed and Transactional Satisfaction = 0";

    /// (condition, new record, old record, expected)
    #[rustfmt::skip]
    fn eval_table() -> Vec<(&'static str, Value, Option<Value>, bool)> {
        vec![
            // The seed condition, exactly as written in the product documentation.
            (SEED, json!({"status": "Completed", "score": 0}), None, true),
            (SEED, json!({"status": "Completed", "score": 5}), None, false),
            (SEED, json!({"status": "Open", "score": 0}), None, false),
            (SEED, json!({"status": "Completed", "score": 0.0}), None, true),
            (SEED, json!({"status": "Completed", "score": "0"}), None, true),
            (SEED, json!({"status": "Completed"}), None, false),
            (SEED, json!({"status": "completed", "score": 0}), None, false),
            // Longest-first label matching, keys, brackets, field-to-field.
            ("Status Reason = Spam", json!({"status_reason": "Spam"}), None, true),
            ("Status = Spam", json!({"status_reason": "Spam"}), None, false),
            ("Status Reason = Spam and Status = Open", json!({"status": "Open", "status_reason": "Spam"}), None, true),
            ("status_reason = Spam", json!({"status_reason": "Spam"}), None, true),
            ("[Status Reason] = 'Spam'", json!({"status_reason": "Spam"}), None, true),
            ("[status_reason] = Spam", json!({"status_reason": "Spam"}), None, true),
            ("[ Status ] = Open", json!({"status": "Open"}), None, true),
            ("[Transactional Satisfaction] = 0", json!({"score": 0}), None, true),
            ("Time In Status > 3", json!({"tis": 4}), None, true),
            ("Status = Status Reason", json!({"status": "x", "status_reason": "x"}), None, true),
            ("Status = Status Reason", json!({"status": "x", "status_reason": "y"}), None, false),
            // Precedence: not > and > or; parentheses group.
            ("Active or Status = A and Transactional Satisfaction = 1", json!({"active": true, "status": "B", "score": 2}), None, true),
            ("(Active or Status = A) and Transactional Satisfaction = 1", json!({"active": true, "status": "B", "score": 2}), None, false),
            ("Status = A or Status = B and Active", json!({"status": "A", "active": false}), None, true),
            ("not Active and Status = A", json!({"active": true, "status": "A"}), None, false),
            ("not Active and Status = A", json!({"active": false, "status": "A"}), None, true),
            ("not Active and Status = A", json!({"active": false, "status": "B"}), None, false),
            ("not (Active and Status = A)", json!({"active": true, "status": "B"}), None, true),
            ("not not Active", json!({"active": true}), None, true),
            ("((Active))", json!({"active": true}), None, true),
            // Case-insensitive keywords.
            ("Status = Completed AND Transactional Satisfaction = 0", json!({"status": "Completed", "score": 0}), None, true),
            ("NOT Active Or Status = A", json!({"active": true, "status": "A"}), None, true),
            ("Status IS NOT EMPTY", json!({"status": "x"}), None, true),
            ("Status In (Open) aNd Active", json!({"status": "Open", "active": true}), None, true),
            // Bare word runs (only `and`/`or` end one after an operator), quoting, operators.
            ("Status = In Progress and Transactional Satisfaction = 1", json!({"status": "In Progress", "score": 1}), None, true),
            ("Status = In Progress and Transactional Satisfaction = 1", json!({"status": "In", "score": 1}), None, false),
            ("Status = This is not it", json!({"status": "This is not it"}), None, true),
            ("Status in (In Progress, Done)", json!({"status": "In Progress"}), None, true),
            ("Status = Waiting on customer or Active", json!({"status": "Waiting on customer"}), None, true),
            ("Status = \"In Progress\"", json!({"status": "In Progress"}), None, true),
            (r"Status = 'It\'s done'", json!({"status": "It's done"}), None, true),
            ("Status = O'Brien", json!({"status": "O'Brien"}), None, true),
            ("Status = Old Stock", json!({"status": "Old Stock"}), None, true),
            ("Status = Empty", json!({"status": "Empty"}), None, true),
            ("Status = true", json!({"status": "true"}), None, true),
            ("Status <> Open", json!({"status": "Closed"}), None, true),
            ("Status == Open", json!({"status": "Open"}), None, true),
            ("Status!=Open", json!({"status": "Open"}), None, false),
            // Numbers compare as numbers against number fields, strings as strings.
            ("Transactional Satisfaction > 9", json!({"score": 10}), None, true),
            ("Transactional Satisfaction>=9.5", json!({"score": 9.5}), None, true),
            ("Transactional Satisfaction < -1", json!({"score": -1.5}), None, true),
            ("Transactional Satisfaction = '5'", json!({"score": 5}), None, true),
            ("Transactional Satisfaction = 2e1", json!({"score": 20}), None, true),
            ("Transactional Satisfaction > 9", json!({"score": "10"}), None, true),
            ("0 = Transactional Satisfaction", json!({"score": 0}), None, true),
            ("5 > Transactional Satisfaction", json!({"score": 3}), None, true),
            ("a_surveyid = 007", json!({"a_surveyid": "007"}), None, true),
            ("a_surveyid = 007", json!({"a_surveyid": "7"}), None, false),
            ("Status > B", json!({"status": "C"}), None, true),
            ("Status > B", json!({"status": "Ab"}), None, false),
            // Missing and null values.
            ("Transactional Satisfaction != 5", json!({}), None, true),
            ("Transactional Satisfaction = 5", json!({"score": null}), None, false),
            ("Transactional Satisfaction < 5", json!({}), None, false),
            ("Transactional Satisfaction >= 5", json!({}), None, false),
            ("Status is empty", json!({}), None, true),
            ("Status is empty", json!({"status": null}), None, true),
            ("Status is empty", json!({"status": ""}), None, true),
            ("Status is empty", json!({"status": "x"}), None, false),
            ("Status is not empty", json!({}), None, false),
            ("Tags is empty", json!({"tags": []}), None, true),
            ("Tags is empty", json!({"tags": ["a"]}), None, false),
            ("Transactional Satisfaction is empty", json!({"score": 0}), None, false),
            ("Status = null", json!({}), None, true),
            ("Status = null", json!({"status": "x"}), None, false),
            ("Status != NULL", json!({"status": "x"}), None, true),
            // The previous version.
            ("old.Status = Open and Status = Closed", json!({"status": "Closed"}), Some(json!({"status": "Open"})), true),
            ("old.Status = Open and Status = Closed", json!({"status": "Closed"}), None, false),
            ("OLD.Status = Open", json!({}), Some(json!({"status": "Open"})), true),
            ("old.Status is empty", json!({"status": "Closed"}), None, true),
            ("old.[Status Reason] = Spam", json!({}), Some(json!({"status_reason": "Spam"})), true),
            ("old.Status Reason = Spam", json!({}), Some(json!({"status_reason": "Spam"})), true),
            ("Transactional Satisfaction > old.Transactional Satisfaction", json!({"score": 5}), Some(json!({"score": 3})), true),
            ("Transactional Satisfaction > old.Transactional Satisfaction", json!({"score": 5}), Some(json!({"score": 7})), false),
            // changed()
            ("changed(Status)", json!({"status": "Open"}), Some(json!({"status": "Closed"})), true),
            ("changed(Status)", json!({"status": "Open"}), Some(json!({"status": "Open"})), false),
            ("changed(Status)", json!({"status": "Open"}), None, true),
            ("changed(Status)", json!({}), None, false),
            ("changed(Status)", json!({"status": null}), Some(json!({})), false),
            ("changed(Status)", json!({}), Some(json!({"status": "Open"})), true),
            ("changed(Transactional Satisfaction)", json!({"score": 1}), Some(json!({"score": 1.0})), false),
            ("CHANGED ( [Status Reason] )", json!({"status_reason": "a"}), Some(json!({"status_reason": "b"})), true),
            ("changed(Status) and Status = Completed", json!({"status": "Completed"}), Some(json!({"status": "Open"})), true),
            // in
            ("Status in (Open, Closed)", json!({"status": "Open"}), None, true),
            ("Status in (Open, Closed)", json!({"status": "Pending"}), None, false),
            ("Status in (Open, Closed)", json!({}), None, false),
            ("Status not in (Open, Closed)", json!({"status": "Pending"}), None, true),
            ("Status not in (Open, Closed)", json!({}), None, true),
            ("Status in (open)", json!({"status": "Open"}), None, false),
            ("Status in ('Waiting on customer', Open)", json!({"status": "Waiting on customer"}), None, true),
            ("Status in (null, Open)", json!({}), None, true),
            ("Transactional Satisfaction in (0, 1, 2)", json!({"score": 1.0}), None, true),
            ("Transactional Satisfaction in (0, 1, 2)", json!({"score": 3}), None, false),
            // contains
            ("Status contains plet", json!({"status": "Completed"}), None, true),
            ("Status contains Plet", json!({"status": "Completed"}), None, false),
            ("Tags contains vip", json!({"tags": ["vip", "x"]}), None, true),
            ("Tags contains vip", json!({"tags": ["x"]}), None, false),
            ("Tags contains vip", json!({}), None, false),
            ("Tags contains vip", json!({"tags": "very vip"}), None, true),
            ("Tags contains 5", json!({"tags": [5.0]}), None, true),
            ("Tags contains true", json!({"tags": [true]}), None, true),
            ("Tags not contains vip", json!({"tags": []}), None, true),
            ("Tags contains vip", json!({"tags": {"vip": 1}}), None, true),
            // Datetimes compare as instants.
            ("Due Date < 2026-01-01T00:00:00Z", json!({"due": "2025-12-31T23:59:59Z"}), None, true),
            ("Due Date < 2026-01-01T00:00:00Z", json!({"due": "2026-01-01T00:00:01Z"}), None, false),
            ("Due Date >= 2026-01-01", json!({"due": "2026-01-01T00:00:00Z"}), None, true),
            ("Due Date = 2026-01-01T00:00:00.000Z", json!({"due": "2026-01-01T00:00:00Z"}), None, true),
            // Booleans.
            ("Active = true", json!({"active": true}), None, true),
            ("Active = FALSE", json!({"active": false}), None, true),
            ("Active != true", json!({}), None, true),
            ("Active", json!({"active": "true"}), None, false),
            ("Active = 'true'", json!({"active": true}), None, true),
        ]
    }

    #[test]
    fn conditions_evaluate_as_the_table_says() {
        let object = survey();
        for (src, new, old, expected) in eval_table() {
            let condition = parse(src, &object).unwrap_or_else(|e| panic!("{src:?}: {e}"));
            let old = old.map(fields);
            let got = condition.eval(&fields(new.clone()), old.as_ref());
            assert_eq!(got, expected, "{src:?} on new {new} old {old:?}");
        }
    }

    /// (condition, expected column, part of the message)
    #[rustfmt::skip]
    const BAD: &[(&str, usize, &str)] = &[
        ("", 1, "empty condition"),
        ("   ", 1, "empty condition"),
        // Typos: a comparison needs a field on one side.
        ("Sttus = Open", 1, "`Sttus` is not a field of survey"),
        ("Status = Completed and Transactional Satisfacton = 0", 24, "`Transactional Satisfacton` is not a field of survey"),
        ("'a' = Sttus", 7, "`Sttus` is not a field of survey"),
        ("Sttus is empty", 1, "`Sttus` is not a field of survey"),
        ("Sttus", 1, "`Sttus` is not a field"),
        ("1 = 2", 1, "needs a field on one side"),
        ("Status", 1, "is a string field, not a condition"),
        ("Status = Black and White", 20, "`White` is not a field"),
        // Types.
        ("Transactional Satisfaction = abc", 30, "Transactional Satisfaction is a number field; `abc` is not a number"),
        ("Transactional Satisfaction = 1-2", 30, "`1-2` is not a number"),
        ("Transactional Satisfaction = 1e999", 30, "`1e999` is not a number"),
        ("Transactional Satisfaction in (1, two)", 35, "`two` is not a number"),
        ("Active = yes", 10, "Active is a boolean field; `yes` is not true or false"),
        ("Active < true", 8, "does not apply to boolean"),
        ("Due Date > tomorrow", 12, "is not an RFC 3339 datetime"),
        ("Transactional Satisfaction contains 5", 28, "`contains` applies to string and json fields"),
        ("Status < null", 8, "cannot compare with null"),
        ("Status > 5", 10, "Status is a string field, so `>` would compare text"),
        ("5 <= Status", 1, "so `<=` would compare text"),
        // Syntax.
        ("Status =", 9, "expected a value after `=`"),
        ("Status = ", 10, "expected a value after `=`"),
        ("Status = and Active", 10, "expected a value after `=`, found `and`"),
        ("Status Open", 8, "expected an operator after `Status`, found `Open`"),
        ("(Status = Open", 1, "unclosed parenthesis"),
        ("((Status = Open)", 1, "unclosed parenthesis"),
        ("Status = Open)", 14, "unexpected `)`"),
        (")", 1, "unexpected `)`"),
        ("()", 2, "empty parentheses"),
        ("(Status = Open Active)", 16, "expected `and`, `or` or `)` before `Active`"),
        ("Status = Open Transactional Satisfaction = 1", 15, "expected `and` or `or` before `Transactional Satisfaction`; quote"),
        ("Status = \"x\" \"y\"", 14, "expected `and` or `or` before `\"y\"`"),
        ("Status = Open and", 18, "expected a condition after `and`"),
        ("Status = Open or or Active", 18, "expected a condition after `or`, found `or`"),
        ("not", 4, "expected a condition after `not`"),
        ("= Open", 1, "expected a condition, found `=`"),
        ("Status = Open ]", 15, "unexpected `]`"),
        ("Status = 'open", 10, "unclosed string"),
        ("Status = \"open\\\"", 10, "unclosed string"),
        ("Status in Open", 11, "expected `(` after `in`"),
        ("Status in (Open", 11, "unclosed parenthesis"),
        ("Status in ()", 12, "expected a value after `(`"),
        ("Status in (Open,)", 17, "expected a value after `,`"),
        ("Status in (Open Active)", 17, "expected `,` or `)` before `Active`"),
        ("'x' in (a)", 1, "`in` needs a field on its left"),
        ("Status is full", 11, "expected `empty` after `is`"),
        ("Status is not", 14, "expected `empty` after `is not`"),
        ("Status not Open", 12, "expected `in` or `contains` after `not`"),
        // Field names in brackets, `old.` and `changed()`.
        ("[Foo] = 1", 1, "unknown field `Foo` in brackets"),
        ("Status = 1 or [Foo Bar] = 1", 15, "unknown field `Foo Bar` in brackets"),
        ("[Status", 1, "unclosed `[`"),
        ("[] = 1", 1, "empty field name in brackets"),
        ("old.Foo = 1", 5, "`Foo` is not a field of survey"),
        ("old. = 1", 6, "expected a field name after `old.`"),
        ("changed(Foo)", 9, "`Foo` is not a field of survey"),
        ("changed(old.Status)", 9, "takes a field, not an `old.` value"),
        ("changed('x')", 9, "takes a field name"),
        ("changed()", 9, "expected a field name in `changed(...)`"),
        ("changed(Status", 8, "unclosed parenthesis"),
        // Columns count chars, not bytes.
        ("Status = 'ééé' and Sttus = 1", 20, "`Sttus` is not a field"),
    ];

    #[test]
    fn bad_conditions_are_refused_with_column_and_reason() {
        let object = survey();
        for &(src, column, message) in BAD {
            let err = match parse(src, &object) {
                Ok(c) => panic!("{src:?} should be refused, parsed as {c:?}"),
                Err(e) => e,
            };
            assert!(err.message.contains(message), "{src:?}: got {err:?}, wanted {message:?}");
            assert_eq!(err.column, column, "{src:?}: {err}");
        }
    }

    #[test]
    fn error_display_names_the_column() {
        let err = parse("Sttus = Open", &survey()).unwrap_err();
        assert_eq!(err.to_string(), "at column 1: `Sttus` is not a field of survey");
    }

    #[test]
    fn fields_lists_keys_read_in_order_of_first_use() {
        let src = "Status = Open and (old.Transactional Satisfaction > 1 or changed(Status Reason)) \
                   and Status != Closed and Tags in (x, [a_surveyid])";
        let condition = parse(src, &survey()).unwrap();
        assert_eq!(condition.fields(), ["status", "score", "status_reason", "tags", "a_surveyid"]);
        assert_eq!(condition.source(), src);
    }

    #[test]
    fn nesting_is_bounded_and_long_chains_are_fine() {
        let object = survey();
        let too_deep = format!("{}Active{}", "(".repeat(MAX_DEPTH + 1), ")".repeat(MAX_DEPTH + 1));
        let err = parse(&too_deep, &object).unwrap_err();
        assert!(err.message.contains("nest more than"), "{err}");
        let deep = format!("{}Active{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert!(parse(&deep, &object).is_ok());
        assert!(parse(&"(".repeat(100_000), &object).is_err());
        let active = fields(json!({"active": true}));
        let nots = format!("{}Active", "not ".repeat(10_001));
        assert!(!parse(&nots, &object).unwrap().eval(&active, None));
        let chain = vec!["Active"; 10_000].join(" and ");
        assert!(parse(&chain, &object).unwrap().eval(&active, None));
    }

    /// Random and garbage input never panics, and any refusal points inside the text.
    #[test]
    fn garbage_never_panics() {
        const PIECES: &[&str] = &[
            "Status",
            "Status Reason",
            "Transactional Satisfaction",
            "Tags",
            "Active",
            "Due Date",
            " ",
            "  ",
            "\t",
            "=",
            "!=",
            "<>",
            "<",
            ">=",
            "!",
            "(",
            ")",
            "[",
            "]",
            ",",
            "'",
            "\"",
            "\\",
            ".",
            "-",
            "and",
            "OR",
            "not",
            "in",
            "contains",
            "is",
            "empty",
            "changed",
            "old.",
            "old",
            "true",
            "null",
            "0",
            "-1.5",
            "1e999",
            "é",
            "🙂",
            "[Status Reason]",
            "x",
            "Completed",
            "2026-01-01",
            "\u{a0}",
            "\n",
        ];
        let object = survey();
        let records = [
            fields(json!({})),
            fields(json!({"status": "Completed", "score": 0, "active": true, "tags": ["x"]})),
            fields(json!({"status": null, "score": "abc", "due": "nope", "tags": {"x": 1}})),
        ];
        // xorshift64: reproducible without a dependency.
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut parsed = 0;
        for round in 0..600 {
            let mut src = String::new();
            for _ in 0..(next() % 14) {
                if round % 3 == 0 {
                    // Raw characters, including ones no piece contains.
                    src.push(char::from_u32((next() % 0x3000) as u32).unwrap_or('?'));
                } else {
                    src.push_str(PIECES[(next() % PIECES.len() as u64) as usize]);
                }
            }
            match parse(&src, &object) {
                Ok(condition) => {
                    parsed += 1;
                    for new in &records {
                        condition.eval(new, None);
                        for old in &records {
                            condition.eval(new, Some(old));
                        }
                    }
                }
                Err(e) => {
                    let len = src.chars().count();
                    assert!((1..=len + 1).contains(&e.column), "{src:?}: {e}");
                    assert!(!e.message.is_empty());
                }
            }
        }
        assert!(parsed > 0, "the generator should produce some valid conditions");
    }
}
