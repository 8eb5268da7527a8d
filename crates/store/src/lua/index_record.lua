-- Puts a record written before the write index existed (its hash has no `p`) into the
-- index, at the object's next write position, in one atomic step. A record that already has
-- `p` is left alone: live writes (write_record.lua) set it themselves, and another node
-- indexing the same namespace at the same time indexes each record once only.
-- KEYS[1] record hash, KEYS[2] the object's position counter, KEYS[3] its write index (zset)
-- ARGV[1] record id
-- Returns 1 if the record was indexed, 0 if it does not exist or was indexed already.
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], 'p') == 1 then
  return 0
end
local position = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'p', position)
-- No origin is known for a write of the earlier version: it counts as the API's.
redis.call('HSETNX', KEYS[1], 'o', '')
-- Nor any write by another writer before it.
redis.call('HSETNX', KEYS[1], 'q', 0)
redis.call('ZADD', KEYS[3], position, ARGV[1])
return 1
