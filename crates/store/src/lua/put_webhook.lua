-- Saves a webhook if its stored version is the expected one, bumps the definitions' version
-- and announces the change, atomically.
-- KEYS[1] webhooks hash, KEYS[2] versions hash, KEYS[3] events stream, KEYS[4] definitions version
-- ARGV[1] id, ARGV[2] expected version (0: must not exist), ARGV[3] JSON (version ARGV[2] + 1),
-- ARGV[4] "delete" to delete instead
local current = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if current ~= tonumber(ARGV[2]) then
  return 0
end
if ARGV[4] == 'delete' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  redis.call('HSET', KEYS[2], ARGV[1], current + 1)
end
redis.call('INCR', KEYS[4])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', 10000, '*', 'k', 'webhook', 'id', ARGV[1])
return 1
