-- Finishes calls, each atomically and only if the consumer still owns every entry of it:
-- records the attempt, enqueues its follow-ups (a retry, a dead letter, a write-back — each
-- optional), then acknowledges the entries. A call whose entries were taken over is left to
-- the consumer that took them (its attempt is not recorded twice). Also trims attempts older
-- than the retention, a few at a time.
-- KEYS[1] fresh jobs stream, KEYS[2] solo stream, KEYS[3] attempts hash, KEYS[4] attempts
-- zset, KEYS[5] delayed zset, KEYS[6] dead-letter stream, KEYS[7] write-back stream
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] retention cutoff (ms), then per call 9 values:
-- entry ids (space-separated), attempt id, attempt protobuf, attempt time (ms), retry job
-- ('' = none), retry due (ms), dead-letter job ('' = none), its reason, write-back job ('' = none)
-- Returns one 1 (done) or 0 (not this consumer's) per call.
local group, consumer = ARGV[1], ARGV[2]
local results = {}
for base = 4, #ARGV, 9 do
  local ids = {}
  for id in string.gmatch(ARGV[base], '%S+') do
    ids[#ids + 1] = id
  end
  local owned = true
  for _, full in ipairs(ids) do
    local stream, id = job_stream(full, KEYS[1], KEYS[2])
    if not owns(stream, group, consumer, id) then
      owned = false
      break
    end
  end
  if owned then
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
    for _, full in ipairs(ids) do
      local stream, id = job_stream(full, KEYS[1], KEYS[2])
      redis.call('XACK', stream, group, id)
      redis.call('XDEL', stream, id)
    end
    results[#results + 1] = 1
  else
    results[#results + 1] = 0
  end
end
local old = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', '(' .. ARGV[3], 'LIMIT', 0, 100)
if #old > 0 then
  redis.call('HDEL', KEYS[3], unpack(old))
  redis.call('ZREM', KEYS[4], unpack(old))
end
return results
