-- GCRA (generic cell rate algorithm) on Redis server time in microseconds, so every node
-- shares one limit and node clocks do not matter: one call, counted only if it may go now.
-- KEYS[1] rate key (the theoretical arrival time, µs); ARGV[1] emission interval (µs),
-- ARGV[2] burst tolerance (µs)
-- Returns 0 when the call may go (and counts it), else the microseconds to wait.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then
  tat = now
end
local allow_at = tat - tonumber(ARGV[2])
if now < allow_at then
  return allow_at - now
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], new_tat, 'PX', math.max(1, math.ceil((new_tat - now) / 1000)) + 1000)
return 0
