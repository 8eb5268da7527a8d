-- One dispatcher step, atomically: give permits back, take more (within the limit and the
-- consumer's fair share), move due retries to the solo stream, take over entries of dead
-- consumers (when asked), then read the entries the free permits and the rate tokens can
-- carry — solo entries one call each, fresh ones `batch` to a call — and count the calls
-- against the rate limit. Nothing is read that no permit could carry.
-- KEYS[1] fresh jobs stream, KEYS[2] solo stream, KEYS[3] delayed zset, KEYS[4] permits,
-- KEYS[5] holders, KEYS[6] contenders, KEYS[7] permit sequence, KEYS[8] rate (GCRA TAT, µs)
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] lease (ms), ARGV[4] limit, ARGV[5] number of free
-- permits f, ARGV[6] permits wanted, ARGV[7] batch, ARGV[8] max entries, ARGV[9] rate
-- interval (µs, '' = none), ARGV[10] rate burst (µs), ARGV[11] claim min idle (ms, '' = no
-- claim), ARGV[12] claim cursor ('<fresh>|<solo>'), ARGV[13] retries to promote at most,
-- ARGV[14] free permits known to be held (counted without a look), ARGV[15..14+f] the other
-- free permits (only those still held count, and they are renewed), then the permits to
-- release
-- Returns {granted permits, fair share, entries (flat: id, payload, deliveries * 2 + redriven
-- for each; a solo entry's id is `s:<id>`), claim cursor ('' = came round; '-' = no scan ran), next due (ms) or -1, rate wait
-- (µs) or -1, mark ('<fresh>|<solo>' last ids when no entry was read, else '')}.
local fresh, solo, delayed = KEYS[1], KEYS[2], KEYS[3]
local permits, holders, contenders, seq, rate = KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local group, consumer = ARGV[1], ARGV[2]
local lease, limit = tonumber(ARGV[3]), tonumber(ARGV[4])
local nfree, want, batch, max_entries = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])

local us = now_us()
local now = math.floor(us / 1000)

-- Permits: only free permits still held carry calls (renewed, as they are in use now).
expire_permits(permits, holders, contenders, now)
local free = tonumber(ARGV[14])
for i = 15, 14 + nfree do
  if redis.call('ZSCORE', permits, ARGV[i]) then
    redis.call('ZADD', permits, 'XX', now + lease, ARGV[i])
    free = free + 1
  end
end
for i = 15 + nfree, #ARGV do
  drop_permit(permits, holders, ARGV[i])
end
local mine = tonumber(redis.call('HGET', holders, consumer) or '0')
if want > 0 or free > 0 or mine > 0 then
  redis.call('ZADD', contenders, now + lease, consumer)
end
local share = fair_share(contenders, limit)
local grant = math.min(want, limit - redis.call('ZCARD', permits), share - mine)
local granted = {}
for _ = 1, grant do
  local name = consumer .. '/' .. redis.call('INCR', seq)
  redis.call('ZADD', permits, now + lease, name)
  granted[#granted + 1] = name
end
if grant > 0 then
  redis.call('HINCRBY', holders, consumer, grant)
end
keep_alive({permits, holders, contenders, seq}, lease)
local calls = free + math.max(grant, 0)

-- Rate tokens: how many calls may start now.
local interval, tat = nil, nil
local rate_wait = -1
if ARGV[9] ~= '' and calls > 0 then
  interval = tonumber(ARGV[9])
  local burst = tonumber(ARGV[10])
  tat = tonumber(redis.call('GET', rate) or us)
  if tat < us then
    tat = us
  end
  local allow_at = tat - burst
  if us < allow_at then
    rate_wait = allow_at - us
    calls = 0
  else
    calls = math.min(calls, math.floor((us - allow_at) / interval) + 1)
  end
end

-- Due retries join the solo stream.
local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, tonumber(ARGV[13]))
for _, job in ipairs(due) do
  redis.call('XADD', solo, '*', 'j', job)
  redis.call('ZREM', delayed, job)
end
local head = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
local next_due = -1
if head[2] then
  next_due = tonumber(head[2])
end

local entries = {}
local solos, fresh_n = 0, 0
local function ensure_group(stream)
  local r = redis.pcall('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
  return r
end
local function add(stream_entries, is_solo, deliveries)
  for _, e in ipairs(stream_entries) do
    local fields = e[2]
    local payload, redriven = nil, '0'
    for i = 1, #fields, 2 do
      if fields[i] == 'j' then
        payload = fields[i + 1]
      elseif fields[i] == 'redriven' then
        redriven = '1'
      end
    end
    local count = 1
    local stream = fresh
    if is_solo then
      stream = solo
    end
    if deliveries then
      local p = redis.call('XPENDING', stream, group, e[1], e[1], 1)
      if p[1] then
        count = p[1][4]
      end
    end
    local id = e[1]
    if is_solo then
      id = 's:' .. id
      solos = solos + 1
    else
      fresh_n = fresh_n + 1
    end
    entries[#entries + 1] = id
    entries[#entries + 1] = payload or ''
    entries[#entries + 1] = tonumber(count) * 2 + tonumber(redriven)
  end
end
local function room_for_fresh()
  return math.min((calls - solos) * batch - fresh_n, max_entries - (solos + fresh_n))
end

-- Take-over of entries whose consumer stopped heartbeating, within the same capacity (none
-- when no call can be made: the scan waits for a step that can carry what it finds).
local cursor = '-'
if ARGV[11] ~= '' and calls > 0 then
  local fresh_cursor, solo_cursor = string.match(ARGV[12], '^([^|]*)|([^|]*)$')
  fresh_cursor = (fresh_cursor == nil or fresh_cursor == '') and '0-0' or fresh_cursor
  solo_cursor = (solo_cursor == nil or solo_cursor == '') and '0-0' or solo_cursor
  local next_solo, next_fresh = solo_cursor, fresh_cursor
  if calls - solos > 0 then
    local r = redis.pcall('XAUTOCLAIM', solo, group, consumer, ARGV[11], solo_cursor, 'COUNT', math.min(calls, max_entries))
    if type(r) == 'table' and not r.err then
      next_solo = r[1]
      add(r[2], true, true)
    else
      ensure_group(solo)
    end
  end
  if room_for_fresh() > 0 then
    local r = redis.pcall('XAUTOCLAIM', fresh, group, consumer, ARGV[11], fresh_cursor, 'COUNT', room_for_fresh())
    if type(r) == 'table' and not r.err then
      next_fresh = r[1]
      add(r[2], false, true)
    else
      ensure_group(fresh)
    end
  end
  if next_fresh == '0-0' and next_solo == '0-0' then
    cursor = ''
  else
    cursor = next_fresh .. '|' .. next_solo
  end
end

-- New entries: solo first (each a call of its own), then fresh ones.
local function read(stream, count)
  local r = redis.pcall('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count, 'STREAMS', stream, '>')
  if type(r) == 'table' and r.err then
    ensure_group(stream)
    r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count, 'STREAMS', stream, '>')
  end
  if r and r[1] then
    return r[1][2]
  end
  return {}
end
local room = math.min(calls - solos, max_entries - (solos + fresh_n))
if room > 0 then
  add(read(solo, room), true, false)
end
if room_for_fresh() > 0 then
  add(read(fresh, room_for_fresh()), false, false)
end

-- The calls made count against the rate limit.
if interval then
  local used = solos + math.ceil(fresh_n / batch)
  if used > 0 then
    local new_tat = tat + used * interval
    redis.call('SET', rate, new_tat, 'PX', math.max(1, math.ceil((new_tat - us) / 1000)) + 1000)
  end
end

local function last_id(stream)
  local ok, info = pcall(redis.call, 'XINFO', 'STREAM', stream)
  if not ok then
    return '0-0'
  end
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      return info[i + 1]
    end
  end
  return '0-0'
end
-- The mark only serves a step that read nothing (its worker waits for entries past it);
-- one that read entries goes straight on, so it skips the two XINFOs.
local mark = ''
if #entries == 0 then
  mark = last_id(fresh) .. '|' .. last_id(solo)
end
return {granted, share, entries, cursor, next_due, rate_wait, mark}
