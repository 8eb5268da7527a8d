-- Moves delayed jobs that are due onto the job stream, atomically, so a job is never in
-- both places or in neither.
-- KEYS[1] delayed zset, KEYS[2] job stream; ARGV[1] now (ms), ARGV[2] max jobs to move
-- Returns {moved, next due (ms) or -1}.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, job in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', 'j', job)
  redis.call('ZREM', KEYS[1], job)
end
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if head[2] then
  return {#due, tonumber(head[2])}
end
return {#due, -1}
