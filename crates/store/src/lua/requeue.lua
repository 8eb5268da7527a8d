-- Hands jobs a consumer read but will not deliver (it is stopping) back to the queue, at
-- its end, atomically per job. A job another consumer already claimed is left alone
-- (XACK answers 0), so a requeue never duplicates one.
-- KEYS[1] job stream; ARGV[1] group, then pairs: entry id, Job protobuf.
local moved = 0
for i = 2, #ARGV, 2 do
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then
    redis.call('XDEL', KEYS[1], ARGV[i])
    redis.call('XADD', KEYS[1], '*', 'j', ARGV[i + 1])
    moved = moved + 1
  end
end
return moved
