//! Wire messages that cross a process boundary — changes, jobs, attempts and write-back
//! jobs — as prost types. `proto/hookline/v1/queue.proto` is the source of truth; the
//! structs below mirror it by hand so the build needs no `protoc`. A test round-trips each
//! message and pins a few encodings, so a renumbered field fails loudly.

#![allow(clippy::derive_partial_eq_without_eq)]

pub use prost::Message;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Change {
    #[prost(string, tag = "1")]
    pub object: String,
    #[prost(string, tag = "2")]
    pub record_id: String,
    #[prost(uint64, tag = "3")]
    pub version: u64,
    #[prost(bytes = "vec", tag = "4")]
    pub old_json: Vec<u8>,
    #[prost(bytes = "vec", tag = "5")]
    pub new_json: Vec<u8>,
    #[prost(string, tag = "6")]
    pub origin_webhook: String,
    #[prost(string, tag = "7")]
    pub traceparent: String,
    #[prost(int64, tag = "8")]
    pub at_ms: i64,
    /// The definitions' version read before the change was written.
    #[prost(uint64, tag = "9")]
    pub definitions_version: u64,
    /// Write-backs between the user's change and this one (0: not a write-back).
    #[prost(uint32, tag = "10")]
    pub hops: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Job {
    #[prost(string, tag = "1")]
    pub job_id: String,
    #[prost(string, tag = "2")]
    pub webhook_id: String,
    #[prost(uint64, tag = "3")]
    pub webhook_version: u64,
    #[prost(string, tag = "4")]
    pub object: String,
    #[prost(string, repeated, tag = "5")]
    pub record_ids: Vec<String>,
    #[prost(uint64, repeated, tag = "6")]
    pub record_versions: Vec<u64>,
    #[prost(bytes = "vec", tag = "7")]
    pub entities_json: Vec<u8>,
    #[prost(uint32, tag = "8")]
    pub attempts: u32,
    #[prost(int64, tag = "9")]
    pub created_at_ms: i64,
    /// The trace the call's attempt spans join: the first record's, in a call of several.
    #[prost(string, tag = "10")]
    pub traceparent: String,
    /// The hops of the change that made it.
    #[prost(uint32, tag = "11")]
    pub hops: u32,
    /// In a call of several records, the traceparents of the records after the first, in
    /// order (each of their traces gets a `bulk call` span linked to the attempt).
    #[prost(string, repeated, tag = "12")]
    pub member_traceparents: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Header {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HttpRequest {
    #[prost(string, tag = "1")]
    pub method: String,
    #[prost(string, tag = "2")]
    pub url: String,
    #[prost(message, repeated, tag = "3")]
    pub headers: Vec<Header>,
    #[prost(bytes = "vec", tag = "4")]
    pub body: Vec<u8>,
    #[prost(bool, tag = "5")]
    pub body_truncated: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HttpResponse {
    #[prost(uint32, tag = "1")]
    pub status: u32,
    #[prost(message, repeated, tag = "2")]
    pub headers: Vec<Header>,
    #[prost(bytes = "vec", tag = "3")]
    pub body: Vec<u8>,
    #[prost(bool, tag = "4")]
    pub body_truncated: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Outcome {
    Unspecified = 0,
    Success = 1,
    RetryScheduled = 2,
    Failed = 3,
    Exhausted = 4,
}

impl Outcome {
    /// The name used by the HTTP API and in filters.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Unspecified => "unspecified",
            Outcome::Success => "success",
            Outcome::RetryScheduled => "retry_scheduled",
            Outcome::Failed => "failed",
            Outcome::Exhausted => "exhausted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Outcome::Success, Outcome::RetryScheduled, Outcome::Failed, Outcome::Exhausted]
            .into_iter()
            .find(|o| o.as_str() == s)
    }

    /// Whether no further attempt follows this one.
    pub fn is_final(self) -> bool {
        !matches!(self, Outcome::RetryScheduled | Outcome::Unspecified)
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Attempt {
    #[prost(string, tag = "1")]
    pub attempt_id: String,
    #[prost(string, tag = "2")]
    pub webhook_id: String,
    #[prost(uint64, tag = "3")]
    pub webhook_version: u64,
    #[prost(string, tag = "4")]
    pub job_id: String,
    #[prost(string, repeated, tag = "5")]
    pub record_ids: Vec<String>,
    #[prost(uint32, tag = "6")]
    pub number: u32,
    #[prost(string, tag = "7")]
    pub node_id: String,
    #[prost(int64, tag = "8")]
    pub started_at_ms: i64,
    #[prost(uint64, tag = "9")]
    pub duration_ms: u64,
    #[prost(message, optional, tag = "10")]
    pub request: Option<HttpRequest>,
    #[prost(message, optional, tag = "11")]
    pub response: Option<HttpResponse>,
    #[prost(string, tag = "12")]
    pub error: String,
    #[prost(enumeration = "Outcome", tag = "13")]
    pub outcome: i32,
    #[prost(int64, tag = "14")]
    pub next_attempt_at_ms: i64,
    #[prost(string, tag = "15")]
    pub writeback_status: String,
    #[prost(string, tag = "16")]
    pub writeback_error: String,
    #[prost(string, tag = "17")]
    pub traceparent: String,
}

impl Attempt {
    /// Field numbers of `writeback_status` and `writeback_error`.
    const WRITEBACK_STATUS_TAG: u32 = 15;
    const WRITEBACK_ERROR_TAG: u32 = 16;

    /// The bytes that set `writeback_status` and `writeback_error` when appended to an
    /// encoded attempt: in protobuf the last occurrence of a singular field wins, so a
    /// store can note a write-back's result on a stored attempt without decoding it. Both
    /// fields are written even when empty, so an earlier error is cleared.
    pub fn writeback_patch(status: &str, error: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(status.len() + error.len() + 4);
        prost::encoding::string::encode(Self::WRITEBACK_STATUS_TAG, &status.to_owned(), &mut out);
        prost::encoding::string::encode(Self::WRITEBACK_ERROR_TAG, &error.to_owned(), &mut out);
        out
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WritebackJob {
    #[prost(string, tag = "1")]
    pub job_id: String,
    #[prost(string, tag = "2")]
    pub webhook_id: String,
    #[prost(uint64, tag = "3")]
    pub webhook_version: u64,
    #[prost(string, tag = "4")]
    pub attempt_id: String,
    #[prost(string, repeated, tag = "5")]
    pub record_ids: Vec<String>,
    #[prost(bytes = "vec", tag = "6")]
    pub entities_json: Vec<u8>,
    #[prost(bytes = "vec", tag = "7")]
    pub request_body: Vec<u8>,
    #[prost(uint32, tag = "8")]
    pub status: u32,
    #[prost(message, repeated, tag = "9")]
    pub response_headers: Vec<Header>,
    #[prost(bytes = "vec", tag = "10")]
    pub response_body: Vec<u8>,
    #[prost(string, tag = "11")]
    pub traceparent: String,
    /// The hops of the job whose response it writes back.
    #[prost(uint32, tag = "12")]
    pub hops: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writeback_patch_appended_to_an_attempt_sets_its_result() {
        let attempt = Attempt {
            attempt_id: "a1".into(),
            writeback_status: "error".into(),
            writeback_error: "record r1 does not exist".into(),
            ..Default::default()
        };
        let mut bytes = attempt.encode_to_vec();
        bytes.extend(Attempt::writeback_patch("done", ""));
        let patched = Attempt::decode(bytes.as_slice()).unwrap();
        assert_eq!(patched, Attempt { writeback_status: "done".into(), writeback_error: String::new(), ..attempt });
    }

    #[test]
    fn job_round_trips_and_keeps_its_field_numbers() {
        let job = Job {
            job_id: "j".into(),
            webhook_id: "w".into(),
            attempts: 2,
            record_ids: vec!["r1".into()],
            ..Default::default()
        };
        let bytes = job.encode_to_vec();
        // tag 1 (string "j"), tag 2 (string "w"), tag 5 (string "r1"), tag 8 (varint 2)
        assert_eq!(bytes, [0x0a, 1, b'j', 0x12, 1, b'w', 0x2a, 2, b'r', b'1', 0x40, 2]);
        assert_eq!(Job::decode(bytes.as_slice()).unwrap(), job);
    }

    #[test]
    fn attempt_round_trips() {
        let attempt = Attempt {
            attempt_id: "a".into(),
            outcome: Outcome::Exhausted as i32,
            response: Some(HttpResponse { status: 500, ..Default::default() }),
            ..Default::default()
        };
        let back = Attempt::decode(attempt.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back.outcome(), Outcome::Exhausted);
        assert_eq!(back, attempt);
    }

    #[test]
    fn outcome_names_round_trip() {
        for o in [Outcome::Success, Outcome::RetryScheduled, Outcome::Failed, Outcome::Exhausted] {
            assert_eq!(Outcome::parse(o.as_str()), Some(o));
        }
        assert!(!Outcome::RetryScheduled.is_final());
        assert!(Outcome::Exhausted.is_final());
    }
}
