-- Finishes calls, each atomically: records the attempt, enqueues its follow-ups (a retry, a
-- dead letter, a write-back — each optional), then acknowledges the entries — only those
-- the consumer still owns, and only if it owns any (or the call had none: a job never
-- queued). A call whose entries were all taken over is left to the consumer that took them:
-- its outcome is not recorded twice. Also trims attempts older than the retention, a few at
-- a time.
-- KEYS[1] fresh jobs stream, KEYS[2] solo stream, KEYS[3] attempts hash, KEYS[4] attempts
-- zset, KEYS[5] delayed zset, KEYS[6] dead-letter stream, KEYS[7] write-back stream
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] retention cutoff (ms), ARGV[4..7] the bounds of
-- every call's entry ids (see owned_sets), then per call 9 values:
-- entry ids (space-separated), attempt id, attempt protobuf, attempt time (ms), retry job
-- ('' = none), retry due (ms), dead-letter job ('' = none), its reason, write-back job ('' = none)
-- Returns one 1 (done) or 0 (not this consumer's) per call.
local group, consumer = ARGV[1], ARGV[2]

-- Which of every call's entries the consumer owns: one look per stream.
local mine = owned_sets(KEYS[1], KEYS[2], group, consumer, 4)

local results = {}
local acks = {[KEYS[1]] = {}, [KEYS[2]] = {}}
for base = 8, #ARGV, 9 do
  local ids, owned = {}, {}
  for full in string.gmatch(ARGV[base], '%S+') do
    local stream, id = job_stream(full, KEYS[1], KEYS[2])
    ids[#ids + 1] = id
    if mine[stream][id] then
      owned[#owned + 1] = {stream, id}
    end
  end
  if #owned > 0 or #ids == 0 then
    redis.call('HSET', KEYS[3], ARGV[base + 1], ARGV[base + 2])
    redis.call('ZADD', KEYS[4], ARGV[base + 3], ARGV[base + 1])
    if ARGV[base + 4] ~= '' then
      redis.call('ZADD', KEYS[5], ARGV[base + 5], ARGV[base + 4])
    end
    if ARGV[base + 6] ~= '' then
      redis.call('XADD', KEYS[6], '*', 'j', ARGV[base + 6], 'r', ARGV[base + 7])
    end
    if ARGV[base + 8] ~= '' then
      redis.call('XADD', KEYS[7], '*', 'w', ARGV[base + 8])
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
