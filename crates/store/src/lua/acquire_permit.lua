-- Takes (or renews) one permit of a counting semaphore with leases, on Redis server time so
-- node clocks do not matter. A holder that stops renewing loses its permit at expiry.
-- KEYS[1] permits zset; ARGV[1] holder id, ARGV[2] lease (ms), ARGV[3] limit
-- Returns 1 when the holder holds a permit, 0 when all are taken.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local expiry = now + tonumber(ARGV[2])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], expiry, ARGV[1])
  return 1
end
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], expiry, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
  return 1
end
return 0
