//! Grouping a lease of jobs into calls: solo jobs (retries, redriven jobs, whole batches)
//! one call each, fresh jobs `max_batch_size` to a call, in order. The store's take never
//! hands out more entries than these calls need permits for, so every entry read is in a
//! call.

use hookline_proto::Job;
use hookline_store::Entry;
use hookline_store::queue::Lease;

/// How many entries go in each call: solo entries alone first, then fresh ones in chunks of
/// `size`. Applied to a lease ordered solo-first (see [`solo_first`]).
pub fn call_sizes(entries: &[Entry<Job>], size: usize) -> Vec<usize> {
    let solos = entries.iter().filter(|e| e.solo).count();
    let fresh = entries.len() - solos;
    let size = size.max(1);
    let mut sizes = vec![1; solos];
    sizes.extend((0..fresh.div_ceil(size)).map(|i| size.min(fresh - i * size)));
    sizes
}

/// The lease with its solo entries first, each group in the order the store handed it out.
pub fn solo_first(lease: Lease<Job>) -> Lease<Job> {
    let (mut solo, fresh) = lease.partition(|e| e.solo);
    solo.join(fresh);
    solo
}

/// One job standing for a whole call: every record, one idempotency id derived from the
/// members' ids (so the same batch has the same id on every attempt).
pub fn combine(members: &[Entry<Job>]) -> Job {
    if let [one] = members {
        return one.value.clone();
    }
    let first = &members[0].value;
    let mut ids: Vec<&str> = members.iter().map(|e| e.value.job_id.as_str()).collect();
    ids.sort_unstable();
    // The members' arrays joined as bytes: the call parses the result once, not each part
    // twice. A member whose entities are not an array is left out, as a parse would.
    let mut entities = Vec::with_capacity(members.iter().map(|m| m.value.entities_json.len()).sum::<usize>() + 2);
    entities.push(b'[');
    for m in members {
        let Some(items) = array_items(&m.value.entities_json) else { continue };
        if !items.is_empty() {
            if entities.len() > 1 {
                entities.push(b',');
            }
            entities.extend_from_slice(items);
        }
    }
    entities.push(b']');
    Job {
        job_id: uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, ids.join("\n").as_bytes()).to_string(),
        webhook_id: first.webhook_id.clone(),
        webhook_version: first.webhook_version,
        object: first.object.clone(),
        record_ids: members.iter().flat_map(|e| e.value.record_ids.clone()).collect(),
        record_versions: members.iter().flat_map(|e| e.value.record_versions.clone()).collect(),
        entities_json: entities,
        attempts: 0,
        created_at_ms: members.iter().map(|e| e.value.created_at_ms).min().unwrap_or_default(),
        traceparent: first.traceparent.clone(),
        hops: members.iter().map(|e| e.value.hops).max().unwrap_or_default(),
    }
}

/// What lies between the brackets of a JSON array (trimmed), if `json` looks like one.
fn array_items(json: &[u8]) -> Option<&[u8]> {
    let json = json.trim_ascii();
    let inner = json.strip_prefix(b"[")?.strip_suffix(b"]")?;
    Some(inner.trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::{call_sizes, combine};
    use hookline_proto::Job;
    use hookline_store::Entry;

    fn entry(n: usize, records: usize, solo: bool) -> Entry<Job> {
        let ids: Vec<String> = (0..records).map(|r| format!("r{n}-{r}")).collect();
        let entities: Vec<serde_json::Value> = ids.iter().map(|id| serde_json::json!({"id": id})).collect();
        Entry {
            id: format!("{n}-0"),
            value: Job {
                job_id: format!("job{n}"),
                record_ids: ids,
                entities_json: serde_json::to_vec(&entities).unwrap(),
                attempts: u32::from(solo),
                ..Default::default()
            },
            redriven: false,
            deliveries: 1,
            solo,
        }
    }

    #[test]
    fn solo_jobs_travel_alone_and_fresh_ones_fill_calls() {
        let entries =
            vec![entry(1, 3, true), entry(2, 1, true), entry(3, 1, false), entry(4, 1, false), entry(5, 1, false)];
        assert_eq!(call_sizes(&entries, 2), [1, 1, 2, 1]);
        assert_eq!(call_sizes(&entries, 1), [1, 1, 1, 1, 1]);
        assert_eq!(call_sizes(&entries[2..], 10), [3]);
        assert!(call_sizes(&[], 10).is_empty());
    }

    #[test]
    fn a_combined_job_holds_every_record_under_a_stable_id() {
        let a = combine(&[entry(1, 1, false), entry(2, 1, false)]);
        let b = combine(&[entry(2, 1, false), entry(1, 1, false)]);
        assert_eq!(a.job_id, b.job_id, "the same members give the same idempotency id");
        assert_eq!(a.record_ids, ["r1-0", "r2-0"]);
        let entities: serde_json::Value = serde_json::from_slice(&a.entities_json).unwrap();
        assert_eq!(entities, serde_json::json!([{"id": "r1-0"}, {"id": "r2-0"}]));
        assert_eq!(combine(&[entry(7, 1, false)]).job_id, "job7");
        // Empty and broken members are left out; the result is one JSON array.
        let mut empty = entry(8, 0, false);
        empty.value.entities_json = b" [ ] ".to_vec();
        let mut broken = entry(9, 1, false);
        broken.value.entities_json = b"{}".to_vec();
        let c = combine(&[empty, entry(1, 2, false), broken, entry(2, 1, false)]);
        let entities: serde_json::Value = serde_json::from_slice(&c.entities_json).unwrap();
        assert_eq!(entities, serde_json::json!([{"id": "r1-0"}, {"id": "r1-1"}, {"id": "r2-0"}]));
    }
}
