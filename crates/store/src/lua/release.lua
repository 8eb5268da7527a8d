-- Gives back entries a consumer owns, undone: they stay pending but look idle for a day, so
-- the next take-over scan of any consumer takes them at once (their order is kept, which
-- acknowledging and appending them again would not).
-- KEYS[1] stream, KEYS[2] solo stream of a job queue (else KEYS[1] again)
-- ARGV[1] group, ARGV[2] consumer, ARGV[3..] entry ids.
for i = 3, #ARGV do
  local stream, id = job_stream(ARGV[i], KEYS[1], KEYS[2])
  if owns(stream, ARGV[1], ARGV[2], id) then
    redis.call('XCLAIM', stream, ARGV[1], ARGV[2], 0, id, 'IDLE', 86400000, 'JUSTID')
  end
end
return 1
