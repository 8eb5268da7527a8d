-- Many record writes of one object in one step, each as write_record.lua does it (checked
-- on its own: a conflict refuses only that write), in order.
-- KEYS[1..n] the records' hashes, KEYS[n+1] the object's change stream, KEYS[n+2] its
-- position counter, KEYS[n+3] its write index
-- ARGV: per write 5 values: expected version, fields JSON, Change protobuf, origin webhook
-- ('' = none), record id
-- Returns per write {1, new version} or {0, current version}.
local n = #KEYS - 3
local changes, counter, index = KEYS[n + 1], KEYS[n + 2], KEYS[n + 3]
-- The script runs alone: the positions are taken from the counter here and the counter set
-- once at the end, and the write index is updated with one ZADD per 200 records, not one
-- INCR and one ZADD per record. A record written twice in the batch keeps its last position.
local position = tonumber(redis.call('GET', counter) or '0')
local out, indexed = {}, {}
for i = 1, n do
  local base = (i - 1) * 5
  local key = KEYS[i]
  local expected, fields, change, origin, id =
    ARGV[base + 1], ARGV[base + 2], ARGV[base + 3], ARGV[base + 4], ARGV[base + 5]
  local prev = redis.call('HMGET', key, 'v', 'o', 'p', 'q')
  local current = tonumber(prev[1] or '0')
  if current ~= tonumber(expected) then
    out[i] = {0, current}
  else
    local other
    if origin == (prev[2] or '') then
      other = tonumber(prev[4] or '0')
    else
      other = tonumber(prev[3] or '0')
    end
    local version = current + 1
    position = position + 1
    redis.call('HSET', key, 'v', version, 'f', fields, 'o', origin, 'p', position, 'q', other)
    redis.call('XADD', changes, '*', 'c', change)
    indexed[#indexed + 1] = position
    indexed[#indexed + 1] = id
    out[i] = {1, version}
  end
end
if #indexed > 0 then
  redis.call('SET', counter, position)
  for from = 1, #indexed, 400 do
    redis.call('ZADD', index, unpack(indexed, from, math.min(from + 399, #indexed)))
  end
end
return out
