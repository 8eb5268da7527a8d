-- Releases a lock only if the caller still holds it (it may have expired and been taken).
-- KEYS[1] lock key; ARGV[1] holder id. Returns 1 when released.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
