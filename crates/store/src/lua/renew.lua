-- A dispatcher's heartbeat, atomically: renews its permits (and the permit keys' expiry),
-- keeps its wish for permits alive, and keeps its job entries from going idle — only those
-- it still owns, so an entry another consumer took over is never taken back.
-- KEYS[1] fresh jobs stream, KEYS[2] solo stream, KEYS[3] permits, KEYS[4] holders,
-- KEYS[5] contenders, KEYS[6] permit sequence
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] lease (ms), ARGV[4] limit, ARGV[5] contending
-- ('1'/'0'), ARGV[6] number of permits n, ARGV[7..6+n] permits, then the entry ids' bounds
-- (4 values, see owned_sets), then entry ids
-- Returns {lost permits, fair share, entries another consumer holds now}.
local fresh, solo, permits, holders, contenders, seq = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local group, consumer = ARGV[1], ARGV[2]
local lease, limit, n = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[6])
local now = math.floor(now_us() / 1000)

expire_permits(permits, holders, contenders, now)
local lost_permits = {}
for i = 7, 6 + n do
  if redis.call('ZSCORE', permits, ARGV[i]) then
    redis.call('ZADD', permits, 'XX', now + lease, ARGV[i])
  else
    lost_permits[#lost_permits + 1] = ARGV[i]
  end
end
if ARGV[5] == '1' then
  redis.call('ZADD', contenders, now + lease, consumer)
else
  redis.call('ZREM', contenders, consumer)
end
keep_alive({permits, holders, contenders, seq}, lease)
local share = fair_share(contenders, limit)

local lost_entries = touch_entries(argv_from(11 + n), fresh, solo, group, consumer, 7 + n)
return {lost_permits, share, lost_entries}
