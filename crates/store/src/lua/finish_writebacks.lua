-- Finishes write-backs, each atomically and only if the consumer still owns its entry:
-- notes the result on the attempt (if the attempt is still kept) by appending the encoded
-- result fields to it (in protobuf the last occurrence of a field wins), keeps a failed one
-- among the failed write-backs, then acknowledges the entry.
-- KEYS[1] write-back stream, KEYS[2] attempts hash, KEYS[3] failed write-backs stream
-- ARGV[1] group, ARGV[2] consumer, ARGV[3..6] the entry ids' bounds (see owned_sets), then
-- per write-back 5 values: entry id, attempt id
-- ('' = none), the encoded result fields, failed WritebackJob ('' = none), its reason
-- Returns one 1 (done) or 0 (not this consumer's) per write-back.
local mine = owned_set(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
local results = {}
for base = 7, #ARGV, 5 do
  local id = ARGV[base]
  if mine[id] then
    mine[id] = nil
    if ARGV[base + 1] ~= '' then
      local attempt = redis.call('HGET', KEYS[2], ARGV[base + 1])
      if attempt then
        redis.call('HSET', KEYS[2], ARGV[base + 1], attempt .. ARGV[base + 2])
      end
    end
    if ARGV[base + 3] ~= '' then
      redis.call('XADD', KEYS[3], '*', 'w', ARGV[base + 3], 'r', ARGV[base + 4])
    end
    redis.call('XACK', KEYS[1], ARGV[1], id)
    redis.call('XDEL', KEYS[1], id)
    results[#results + 1] = 1
  else
    results[#results + 1] = 0
  end
end
return results
