-- Keeps a consumer's entries from going idle (its heartbeat), only those it still owns: an
-- entry another consumer took over is never taken back. XCLAIM … JUSTID resets the idle
-- time without counting a delivery.
-- KEYS[1] stream, KEYS[2] solo stream of a job queue (else KEYS[1] again)
-- ARGV[1] group, ARGV[2] consumer, ARGV[3..] entry ids. Returns the ids another consumer
-- holds now (those no longer pending at all — finished meanwhile — are not listed).
local lost = {}
for i = 3, #ARGV do
  local stream, id = job_stream(ARGV[i], KEYS[1], KEYS[2])
  local holder = owner(stream, ARGV[1], id)
  if holder == ARGV[2] then
    redis.call('XCLAIM', stream, ARGV[1], ARGV[2], 0, id, 'JUSTID')
  elseif holder then
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
