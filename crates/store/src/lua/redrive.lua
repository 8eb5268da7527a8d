-- Moves dead-lettered jobs back onto the job stream, atomically per batch. The caller has
-- re-encoded each job with a fresh attempt budget. A job already moved by a concurrent
-- redrive is skipped (XDEL answers 0), so a redrive never duplicates a job.
-- KEYS[1] dead stream, KEYS[2] job stream; ARGV pairs: dead entry id, job protobuf.
-- Returns the number moved.
local moved = 0
for i = 1, #ARGV, 2 do
  if redis.call('XDEL', KEYS[1], ARGV[i]) == 1 then
    redis.call('XADD', KEYS[2], '*', 'j', ARGV[i + 1], 'redriven', '1')
    moved = moved + 1
  end
end
return moved
