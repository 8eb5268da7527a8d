-- Keeps the trigger's notes on changes of one object: each goes on the front of its
-- record's journey list, which keeps the newest ARGV[2] notes and expires ARGV[1] ms after
-- its last note. One step for a batch of notes instead of three commands per note; the list
-- is trimmed only when this push took it past the limit.
-- KEYS[i] the journey list of note i, ARGV[1] time to live (ms), ARGV[2] notes kept per
-- record, ARGV[2 + i] note i ("<version> <note>").
local ttl, kept = ARGV[1], tonumber(ARGV[2])
for i = 1, #KEYS do
  if redis.call('LPUSH', KEYS[i], ARGV[2 + i]) > kept then
    redis.call('LTRIM', KEYS[i], 0, kept - 1)
  end
  redis.call('PEXPIRE', KEYS[i], ttl)
end
return #KEYS
