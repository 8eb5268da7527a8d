//! Grouping a lease of jobs into calls: solo jobs (retries, redriven jobs, whole batches)
//! one call each, fresh jobs `max_batch_size` to a call, in order. The store's take never
//! hands out more entries than these calls need permits for, so every entry read is in a
//! call.

use std::collections::HashMap;

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
    merge(&members.iter().map(|e| &e.value).collect::<Vec<_>>())
}

/// The jobs `members` as one: their records in order, the first one's trace (and the others'
/// as member traces), the earliest creation, an id derived from the members' ids (the same
/// members give the same id).
pub fn merge(members: &[&Job]) -> Job {
    let first = members[0];
    let mut ids: Vec<&str> = members.iter().map(|j| j.job_id.as_str()).collect();
    ids.sort_unstable();
    // The members' arrays joined as bytes: the call parses the result once, not each part
    // twice. A member whose entities are not an array is left out, as a parse would.
    let mut entities = Vec::with_capacity(members.iter().map(|m| m.entities_json.len()).sum::<usize>() + 2);
    entities.push(b'[');
    for m in members {
        let Some(items) = array_items(&m.entities_json) else { continue };
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
        record_ids: members.iter().flat_map(|j| j.record_ids.iter().cloned()).collect(),
        record_versions: members.iter().flat_map(|j| j.record_versions.iter().copied()).collect(),
        entities_json: entities,
        attempts: 0,
        created_at_ms: members.iter().map(|j| j.created_at_ms).min().unwrap_or_default(),
        traceparent: first.traceparent.clone(),
        hops: members.iter().map(|j| j.hops).max().unwrap_or_default(),
        // Only spans exported make use of them; else they would cost a copy per record and
        // ~60 bytes per record in the queue for nothing.
        member_traceparents: if hookline_telemetry::exporting() { member_traces(members) } else { Vec::new() },
    }
}

/// Every record's trace after the first's, in record order: packs merged again (a
/// dispatcher combining packed jobs) keep their members' too.
fn member_traces(members: &[&Job]) -> Vec<String> {
    members
        .iter()
        .enumerate()
        .flat_map(|(i, m)| (i > 0).then_some(&m.traceparent).into_iter().chain(&m.member_traceparents))
        .cloned()
        .collect()
}

/// Packs fresh one-record jobs into full calls before they are queued: for each webhook
/// that sends bulk calls (`batch_size` of its id above 1), every `batch_size` of them in
/// order (of the same write-back hop count) become one job, which the queue stores, hands
/// out and acknowledges as one entry. What does not fill a call stays as it is, for the
/// dispatcher to combine with jobs that arrive meanwhile (`batch_linger_ms`). Returns the
/// jobs and, for each packed member's id, its pack's id.
pub fn pack(jobs: Vec<Job>, batch_size: impl Fn(&str) -> usize) -> (Vec<Job>, HashMap<String, String>) {
    let mut groups: HashMap<(String, u32), Vec<usize>> = HashMap::new();
    for (i, job) in jobs.iter().enumerate() {
        if job.attempts == 0 && job.record_ids.len() == 1 && batch_size(&job.webhook_id) > 1 {
            groups.entry((job.webhook_id.clone(), job.hops)).or_default().push(i);
        }
    }
    let mut packed_into = HashMap::new();
    // Each full call, as (its members' positions); the pack takes the first one's place.
    let mut packs: HashMap<usize, Vec<usize>> = HashMap::new();
    for ((webhook, _), members) in groups {
        let size = batch_size(&webhook);
        for call in members.chunks_exact(size) {
            packs.insert(call[0], call.to_vec());
        }
    }
    if packs.is_empty() {
        return (jobs, packed_into);
    }
    // A call's first member comes before the others, so they are still in their slots.
    let mut slots: Vec<Option<Job>> = jobs.into_iter().map(Some).collect();
    let mut out = Vec::with_capacity(slots.len());
    for i in 0..slots.len() {
        if let Some(call) = packs.get(&i) {
            let members: Vec<Job> = call.iter().filter_map(|&m| slots[m].take()).collect();
            let one = merge(&members.iter().collect::<Vec<_>>());
            for m in &members {
                packed_into.insert(m.job_id.clone(), one.job_id.clone());
            }
            out.push(one);
        } else if let Some(job) = slots[i].take() {
            out.push(job);
        }
    }
    (out, packed_into)
}

/// What lies between the brackets of a JSON array (trimmed), if `json` looks like one.
fn array_items(json: &[u8]) -> Option<&[u8]> {
    let json = json.trim_ascii();
    let inner = json.strip_prefix(b"[")?.strip_suffix(b"]")?;
    Some(inner.trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::{call_sizes, combine, member_traces, pack};
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

    #[test]
    fn a_combined_job_carries_every_members_trace_in_record_order() {
        let traced = |n: usize| Job { traceparent: format!("tp{n}"), ..Default::default() };
        let (one, two, three) = (traced(1), traced(2), traced(3));
        assert_eq!(member_traces(&[&one, &two, &three]), ["tp2", "tp3"], "the first's trace is the call's own");
        // Packs combined again keep their own members' traces, in order.
        let packed = Job { member_traceparents: member_traces(&[&one, &two, &three]), ..one.clone() };
        let (four, five) = (traced(4), traced(5));
        let other = Job { member_traceparents: member_traces(&[&four, &five]), ..four.clone() };
        assert_eq!(member_traces(&[&packed, &other]), ["tp2", "tp3", "tp4", "tp5"]);
        assert!(member_traces(&[&one]).is_empty());
    }

    fn fresh(webhook: &str, n: usize) -> Job {
        Job {
            job_id: format!("{webhook}-{n}"),
            webhook_id: webhook.into(),
            record_ids: vec![format!("r{n}")],
            record_versions: vec![1],
            entities_json: format!("[{{\"id\":\"r{n}\"}}]").into_bytes(),
            created_at_ms: 1000 + n as i64,
            ..Default::default()
        }
    }

    #[test]
    fn full_calls_are_packed_and_the_rest_left_as_they_are() {
        let mut jobs: Vec<Job> = Vec::new();
        for n in 0..7 {
            jobs.push(fresh("bulk", n));
            jobs.push(fresh("single", n));
        }
        jobs.push(Job { attempts: 1, ..fresh("bulk", 7) });
        jobs.push(Job { hops: 1, ..fresh("bulk", 8) });
        let size = |id: &str| if id == "bulk" { 3 } else { 1 };
        let (out, packed_into) = pack(jobs, size);
        let bulk: Vec<&Job> = out.iter().filter(|j| j.webhook_id == "bulk").collect();
        let records: Vec<Vec<&str>> = bulk.iter().map(|j| j.record_ids.iter().map(String::as_str).collect()).collect();
        assert_eq!(
            records,
            [vec!["r0", "r1", "r2"], vec!["r3", "r4", "r5"], vec!["r6"], vec!["r7"], vec!["r8"]],
            "two full calls in order; the leftover, the retry and the write-back's job alone"
        );
        assert_eq!(out.iter().filter(|j| j.webhook_id == "single").count(), 7, "no bulk calls, no packing");
        let first: serde_json::Value = serde_json::from_slice(&bulk[0].entities_json).unwrap();
        assert_eq!(first, serde_json::json!([{"id": "r0"}, {"id": "r1"}, {"id": "r2"}]));
        assert_eq!(bulk[0].created_at_ms, 1000);
        assert_eq!(packed_into["bulk-1"], bulk[0].job_id);
        assert_eq!(packed_into["bulk-5"], bulk[1].job_id);
        assert_eq!(packed_into.len(), 6);
        // The same members make the same job id (a change read twice packs the same way).
        let again = pack((0..3).map(|n| fresh("bulk", n)).collect(), size).0;
        assert_eq!(again[0].job_id, bulk[0].job_id);
    }
}
