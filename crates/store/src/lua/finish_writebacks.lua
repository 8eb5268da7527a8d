-- Finishes write-backs in one atomic step, each only if the consumer still owns its entry:
-- notes the result on the attempt (if the attempt is still kept) by appending the encoded
-- result fields to it (in protobuf the last occurrence of a field wins), keeps a failed one
-- among the failed write-backs, then acknowledges the entry (all of them in bulk, at the end).
-- KEYS[1] write-back stream, KEYS[2] attempts hash, KEYS[3] failed write-backs stream
-- ARGV[1] group, ARGV[2] consumer, ARGV[3..6] the entry ids' bounds (see owned_sets), then
-- per write-back 5 values: entry id, attempt id
-- ('' = none), the encoded result fields, failed WritebackJob ('' = none), its reason
-- Returns one 1 (done) or 0 (not this consumer's) per write-back.
local mine = owned_set(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
local results, acks = {}, {}
-- The attempts' result fields, appended after the loop: one HMGET and one HSET for a batch.
local appended, attempts = {}, {}
for base = 7, #ARGV, 5 do
  local id = ARGV[base]
  if mine[id] then
    mine[id] = nil
    local attempt = ARGV[base + 1]
    if attempt ~= '' then
      if appended[attempt] then
        appended[attempt] = appended[attempt] .. ARGV[base + 2]
      else
        appended[attempt] = ARGV[base + 2]
        attempts[#attempts + 1] = attempt
      end
    end
    if ARGV[base + 3] ~= '' then
      redis.call('XADD', KEYS[3], '*', 'w', ARGV[base + 3], 'r', ARGV[base + 4])
    end
    acks[#acks + 1] = id
    results[#results + 1] = 1
  else
    results[#results + 1] = 0
  end
end
for from = 1, #attempts, 1000 do
  local chunk = {unpack(attempts, from, math.min(from + 999, #attempts))}
  local kept, updates = redis.call('HMGET', KEYS[2], unpack(chunk)), {}
  for j, attempt in ipairs(chunk) do
    if kept[j] then
      updates[#updates + 1] = attempt
      updates[#updates + 1] = kept[j] .. appended[attempt]
    end
  end
  if #updates > 0 then
    redis.call('HSET', KEYS[2], unpack(updates))
  end
end
in_chunks('XACK', KEYS[1], {ARGV[1]}, acks)
in_chunks('XDEL', KEYS[1], {}, acks)
return results
