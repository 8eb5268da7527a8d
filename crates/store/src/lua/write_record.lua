-- Stores a record's new version, appends its change and moves the record to the object's
-- next write position, in one atomic step. Also keeps `q`, the position of the record's
-- latest write by a writer other than its latest write's origin: a write by the same origin
-- as the previous one keeps the previous `q`; a write by another origin sets `q` to the
-- previous write's position. Origins are compared as strings, '' (the API, an import)
-- included. Missing fields (a new record; one written before the index, or before `q`)
-- count as origin '', position 0, `q` 0.
-- KEYS[1] record hash, KEYS[2] the object's change stream, KEYS[3] its position counter,
-- KEYS[4] its write index (zset)
-- ARGV[1] expected current version (0: the record must not exist), ARGV[2] fields JSON,
-- ARGV[3] Change protobuf (already carrying version ARGV[1] + 1), ARGV[4] the change's
-- origin webhook ('' = none), ARGV[5] record id
-- Returns {1, new version} or {0, current version} on a conflict.
local prev = redis.call('HMGET', KEYS[1], 'v', 'o', 'p', 'q')
local current = tonumber(prev[1] or '0')
if current ~= tonumber(ARGV[1]) then
  return {0, current}
end
local other
if ARGV[4] == (prev[2] or '') then
  other = tonumber(prev[4] or '0')
else
  other = tonumber(prev[3] or '0')
end
local version = current + 1
local position = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[1], 'v', version, 'f', ARGV[2], 'o', ARGV[4], 'p', position, 'q', other)
redis.call('XADD', KEYS[2], '*', 'c', ARGV[3])
-- Overwrites the score of an earlier write: a record stands at its latest write only.
redis.call('ZADD', KEYS[4], position, ARGV[5])
return {1, version}
