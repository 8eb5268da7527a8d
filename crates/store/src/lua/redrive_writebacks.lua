-- Moves failed write-backs back onto the write-back stream, atomically per batch; one moved
-- by a concurrent redrive is skipped (XDEL answers 0), so a redrive never duplicates one.
-- KEYS[1] failed write-backs stream, KEYS[2] write-back stream; ARGV pairs: failed entry id,
-- WritebackJob protobuf. Returns the number moved.
local moved = 0
for i = 1, #ARGV, 2 do
  if redis.call('XDEL', KEYS[1], ARGV[i]) == 1 then
    redis.call('XADD', KEYS[2], '*', 'w', ARGV[i + 1])
    moved = moved + 1
  end
end
return moved
