-- Finishes calls, each atomically: records the attempt, enqueues its follow-ups (a retry, a
-- dead letter, a write-back — each optional), then acknowledges the entries — only those
-- the consumer still owns, and only if it owns any (or the call had none: a job never
-- queued). A call whose entries were all taken over is left to the consumer that took them:
-- its outcome is not recorded twice. Also trims attempts older than the retention, a few at
-- a time.
-- KEYS[1] fresh jobs stream, KEYS[2] solo stream, KEYS[3] attempts hash, KEYS[4] attempts
-- zset, KEYS[5] delayed zset, KEYS[6] dead-letter stream, KEYS[7] write-back stream
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] retention cutoff (ms), ARGV[4..7] the bounds of
-- every call's entry ids (see owned_sets), then per call: entry ids (space-separated),
-- attempt id, attempt protobuf, attempt time (ms), its follow-ups ('r' a retry, 'd' a dead
-- letter, 'w' a write-back, in that order, '' none), then for a retry the job and when it is
-- due (ms), for a dead letter the job and the reason, for a write-back its job.
-- Returns one 1 (done) or 0 (not this consumer's) per call.
local group, consumer = ARGV[1], ARGV[2]
local fresh, solo = KEYS[1], KEYS[2]

-- Which of every call's entries the consumer owns: one look per stream.
local mine = owned_sets(fresh, solo, group, consumer, 4)

local results = {}
local acks = {[fresh] = {}, [solo] = {}}
-- Attempts are written in bulk after the loop: one HSET and one ZADD for all of them, not
-- two commands per call (each command run from a script has a fixed cost of its own).
local records, times = {}, {}
local i = 8
while i <= #ARGV do
  local ids, attempt_id, attempt, at, follow = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  i = i + 5
  local retry, due, dead, reason, writeback
  if string.find(follow, 'r', 1, true) then
    retry, due = ARGV[i], ARGV[i + 1]
    i = i + 2
  end
  if string.find(follow, 'd', 1, true) then
    dead, reason = ARGV[i], ARGV[i + 1]
    i = i + 2
  end
  if string.find(follow, 'w', 1, true) then
    writeback = ARGV[i]
    i = i + 1
  end

  local named, owned = 0, {}
  for full in string.gmatch(ids, '%S+') do
    local stream, id = job_stream(full, fresh, solo)
    named = named + 1
    if mine[stream][id] then
      owned[#owned + 1] = {stream, id}
    end
  end
  if #owned > 0 or named == 0 then
    records[#records + 1] = attempt_id
    records[#records + 1] = attempt
    times[#times + 1] = at
    times[#times + 1] = attempt_id
    if retry then
      redis.call('ZADD', KEYS[5], due, retry)
    end
    if dead then
      redis.call('XADD', KEYS[6], '*', 'j', dead, 'r', reason)
    end
    if writeback then
      redis.call('XADD', KEYS[7], '*', 'w', writeback)
    end
    for _, o in ipairs(owned) do
      table.insert(acks[o[1]], o[2])
      -- Owned once: a second call naming it (there is none) would not ack it again.
      mine[o[1]][o[2]] = nil
    end
    results[#results + 1] = 1
  else
    results[#results + 1] = 0
  end
end
in_chunks('HSET', KEYS[3], {}, records)
in_chunks('ZADD', KEYS[4], {}, times)
-- Acknowledged and removed in bulk, a few thousand ids per command at most.
for stream, ids in pairs(acks) do
  in_chunks('XACK', stream, {group}, ids)
  in_chunks('XDEL', stream, {}, ids)
end
local old = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', '(' .. ARGV[3], 'LIMIT', 0, 100)
if #old > 0 then
  redis.call('HDEL', KEYS[3], unpack(old))
  redis.call('ZREM', KEYS[4], unpack(old))
end
return results
