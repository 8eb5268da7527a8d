-- Stores a value only while the caller holds a lock of the same webhook, in one step: a
-- holder whose lock expired (and may have been taken by another) or was deleted with its
-- webhook cannot overwrite its successor's value.
-- KEYS[1] lock key, KEYS[2] value key; ARGV[1] holder id, ARGV[2] value, ARGV[3] TTL (ms).
-- Returns 1 when stored, 0 when the caller does not hold the lock (nothing stored).
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
