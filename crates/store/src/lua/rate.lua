-- GCRA (generic cell rate algorithm) on Redis server time, so every node shares one limit
-- and node clocks do not matter. The key holds the theoretical arrival time (TAT).
-- KEYS[1] rate key; ARGV[1] emission interval (ms), ARGV[2] burst tolerance (ms)
-- Returns 0 when the call may go (and counts it), else the milliseconds to wait.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
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
redis.call('SET', KEYS[1], new_tat, 'PX', math.max(1, new_tat - now) + 1000)
return 0
