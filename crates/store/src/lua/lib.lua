-- The prelude of every queue script (prepended by the store): Redis server time, the
-- concurrency permits of one webhook and queue-entry ownership. Permits, on Redis server time
-- so node clocks do not matter:
--   permits    ZSET  permit name → lease expiry (ms); a name is `<consumer>/<n>`
--   holders    HASH  consumer → permits it holds
--   contenders ZSET  consumer → expiry (ms) of its wish for permits
-- Expired permits are dropped (and their holders' counts lowered) before anything else, so a
-- dead holder's permits come back one lease after its last renewal. Every step refreshes the
-- keys' expiry, so the set outlives any live holder however long its permits are held.

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function holder_of(permit)
  return string.match(permit, '^(.*)/[^/]*$') or permit
end

local function drop_permit(permits, holders, permit)
  if redis.call('ZREM', permits, permit) == 1 then
    local left = redis.call('HINCRBY', holders, holder_of(permit), -1)
    if left <= 0 then
      redis.call('HDEL', holders, holder_of(permit))
    end
    return true
  end
  return false
end

local function expire_permits(permits, holders, contenders, now)
  local expired = redis.call('ZRANGEBYSCORE', permits, '-inf', now)
  for _, p in ipairs(expired) do
    drop_permit(permits, holders, p)
  end
  redis.call('ZREMRANGEBYSCORE', contenders, '-inf', now)
end

-- The share of `limit` each contender may hold: the limit split evenly, rounded up (the
-- grant below never takes the total past the limit).
local function fair_share(contenders, limit)
  local n = redis.call('ZCARD', contenders)
  if n < 1 then
    n = 1
  end
  return math.ceil(limit / n)
end

local function keep_alive(keys, lease)
  for _, k in ipairs(keys) do
    redis.call('PEXPIRE', k, lease * 3)
  end
end

-- The consumer pending entry `id` of `stream` is handed to, or nil if it is not pending
-- (acknowledged or deleted since it was handed out).
local function owner(stream, group, id)
  local p = redis.pcall('XPENDING', stream, group, id, id, 1)
  if type(p) ~= 'table' or p.err or not p[1] then
    return nil
  end
  return p[1][2]
end

-- Whether `consumer` owns pending entry `id` of `stream` (it may have been taken over,
-- acknowledged or deleted since it was handed out).
local function owns(stream, group, consumer, id)
  return owner(stream, group, id) == consumer
end

-- The stream of a job entry id: `s:<id>` is on the solo stream, anything else on the fresh.
local function job_stream(id, fresh, solo)
  if string.sub(id, 1, 2) == 's:' then
    return solo, string.sub(id, 3)
  end
  return fresh, id
end
