-- Takes a lock for a holder, or renews it when that holder already has it (re-entrant);
-- another holder is refused until the lock is released or expires.
-- KEYS[1] lock key; ARGV[1] holder id, ARGV[2] TTL (ms). Returns 1 when the holder holds it.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
