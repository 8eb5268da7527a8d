-- Every definition and their version, in one consistent read.
-- KEYS[1] definitions version, KEYS[2] objects hash, KEYS[3] webhooks hash
-- Returns {version, objects (HGETALL), webhooks (HGETALL)}.
return {tonumber(redis.call('GET', KEYS[1]) or '0'), redis.call('HGETALL', KEYS[2]), redis.call('HGETALL', KEYS[3])}
