-- Saves a data object, bumps the definitions' version and announces the change, atomically.
-- KEYS[1] objects hash, KEYS[2] definitions version, KEYS[3] events stream
-- ARGV[1] name, ARGV[2] DataObject JSON. Returns 1 if the object is new, else 0.
local created = redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', 10000, '*', 'k', 'object', 'id', ARGV[1])
return created
