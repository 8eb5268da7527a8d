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

-- The stream of a job entry id: `s:<id>` is on the solo stream, anything else on the fresh.
local function job_stream(id, fresh, solo)
  if string.sub(id, 1, 2) == 's:' then
    return solo, string.sub(id, 3)
  end
  return fresh, id
end

-- The entries of `stream` pending for `consumer` with ids from `lo` to `hi` (the lowest and
-- highest id of the entries a request names, which the caller works out), as a set {[id] =
-- deliveries}: one look at the pending list, not one per entry.
local function owned_set(stream, group, consumer, lo, hi)
  local set = {}
  if lo == nil or lo == '' then
    return set
  end
  local pending = redis.pcall('XPENDING', stream, group, lo, hi, 1000000, consumer)
  if type(pending) == 'table' and not pending.err then
    for _, p in ipairs(pending) do
      set[p[1]] = p[4]
    end
  end
  return set
end

-- `owned_set` for a queue's fresh and solo streams, with the bounds at ARGV[at..at+3]
-- (fresh lo, fresh hi, solo lo, solo hi): {[stream] = set}. A queue without a solo stream
-- passes its one stream as both.
local function owned_sets(fresh, solo, group, consumer, at)
  local sets = {[fresh] = owned_set(fresh, group, consumer, ARGV[at], ARGV[at + 1])}
  if solo ~= fresh then
    sets[solo] = owned_set(solo, group, consumer, ARGV[at + 2], ARGV[at + 3])
  end
  return sets
end

-- Whether job entry `full` (`s:<id>` on the solo stream) is in `sets`; its stream and id.
local function owned_in(sets, full, fresh, solo)
  local stream, id = job_stream(full, fresh, solo)
  return sets[stream][id] ~= nil, stream, id
end

-- ARGV from position `from` on, as a list (unpack would overflow Lua's stack on long lists).
local function argv_from(from)
  local list = {}
  for i = from, #ARGV do
    list[#list + 1] = ARGV[i]
  end
  return list
end

-- Runs `cmd stream <prefix...> ids...` in chunks of a few thousand ids.
local function in_chunks(cmd, stream, prefix, ids)
  for i = 1, #ids, 4000 do
    local args = {cmd, stream}
    for _, p in ipairs(prefix) do args[#args + 1] = p end
    for j = i, math.min(i + 3999, #ids) do args[#args + 1] = ids[j] end
    redis.call(unpack(args))
  end
end


-- The heartbeat of entries (see touch.lua): resets the idle time of those `consumer` owns
-- (bounds at ARGV[at..at+3]), returns those another consumer holds now.
local function touch_entries(full_ids, fresh, solo, group, consumer, at)
  local sets = owned_sets(fresh, solo, group, consumer, at)
  local mine, lost = {}, {}
  for _, full in ipairs(full_ids) do
    local owned, stream, id = owned_in(sets, full, fresh, solo)
    if owned then
      mine[stream] = mine[stream] or {}
      table.insert(mine[stream], id)
    elseif owner(stream, group, id) then
      lost[#lost + 1] = full
    end
  end
  for stream, ids in pairs(mine) do
    for i = 1, #ids, 4000 do
      local args = {'XCLAIM', stream, group, consumer, 0}
      for j = i, math.min(i + 3999, #ids) do args[#args + 1] = ids[j] end
      args[#args + 1] = 'JUSTID'
      redis.call(unpack(args))
    end
  end
  return lost
end
