-- Acknowledges and removes the entries a consumer still owns; the others (taken over,
-- already gone) are left alone.
-- KEYS[1] stream, KEYS[2] solo stream of a job queue (else KEYS[1] again)
-- ARGV[1] group, ARGV[2] consumer, ARGV[3..] entry ids. Returns the ids acknowledged.
local done = {}
for i = 3, #ARGV do
  local stream, id = job_stream(ARGV[i], KEYS[1], KEYS[2])
  if owns(stream, ARGV[1], ARGV[2], id) then
    redis.call('XACK', stream, ARGV[1], id)
    redis.call('XDEL', stream, id)
    done[#done + 1] = ARGV[i]
  end
end
return done
