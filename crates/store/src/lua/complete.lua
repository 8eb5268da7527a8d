-- Finishes one delivery of a job, atomically: records the attempt, enqueues its follow-ups
-- (a retry, a dead letter, a write-back — each optional) and only then acknowledges the
-- job. Also trims attempts older than the retention, a few at a time.
-- KEYS[1] job stream, KEYS[2] attempts hash, KEYS[3] attempts zset, KEYS[4] delayed zset,
-- KEYS[5] dead-letter stream, KEYS[6] write-back stream
-- ARGV[1] entry ids, space-separated ('' when the job was never on the stream), ARGV[2] group,
-- ARGV[3] attempt id, ARGV[4] attempt protobuf, ARGV[5] attempt time (ms),
-- ARGV[6] retention cutoff (ms), ARGV[7] retry job ('' = none), ARGV[8] retry due (ms),
-- ARGV[9] dead-letter job ('' = none), ARGV[10] its reason, ARGV[11] write-back job ('' = none)
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[3])
if ARGV[7] ~= '' then
  redis.call('ZADD', KEYS[4], ARGV[8], ARGV[7])
end
if ARGV[9] ~= '' then
  redis.call('XADD', KEYS[5], '*', 'j', ARGV[9], 'r', ARGV[10])
end
if ARGV[11] ~= '' then
  redis.call('XADD', KEYS[6], '*', 'w', ARGV[11])
end
local ids = {}
for id in string.gmatch(ARGV[1], '%S+') do
  ids[#ids + 1] = id
end
if #ids > 0 then
  redis.call('XACK', KEYS[1], ARGV[2], unpack(ids))
  redis.call('XDEL', KEYS[1], unpack(ids))
end
local old = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', '(' .. ARGV[6], 'LIMIT', 0, 100)
if #old > 0 then
  redis.call('HDEL', KEYS[2], unpack(old))
  redis.call('ZREM', KEYS[3], unpack(old))
end
return 1
