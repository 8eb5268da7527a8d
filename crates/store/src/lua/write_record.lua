-- Stores a record's new version and appends its change, in one atomic step.
-- KEYS[1] record hash, KEYS[2] the object's change stream
-- ARGV[1] expected current version (0: the record must not exist), ARGV[2] fields JSON,
-- ARGV[3] Change protobuf (already carrying version ARGV[1] + 1)
-- Returns {1, new version} or {0, current version} on a conflict.
local current = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if current ~= tonumber(ARGV[1]) then
  return {0, current}
end
local version = current + 1
redis.call('HSET', KEYS[1], 'v', version, 'f', ARGV[2])
redis.call('XADD', KEYS[2], '*', 'c', ARGV[3])
return {1, version}
