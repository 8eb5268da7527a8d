-- Gives back entries a consumer owns, undone: they stay pending but look idle for a day, so
-- the next take-over scan of any consumer takes them (their order is kept, which
-- acknowledging and appending them again would not). Their delivery count is lowered by one
-- first: the take-over adds it back, so a give-back does not count as a delivery.
-- KEYS[1] stream, KEYS[2] solo stream of a job queue (else KEYS[1] again)
-- ARGV[1] group, ARGV[2] consumer, ARGV[3..6] the ids' bounds (see owned_sets), ARGV[7..]
-- entry ids.
local sets = owned_sets(KEYS[1], KEYS[2], ARGV[1], ARGV[2], 3)
for i = 7, #ARGV do
  local stream, id = job_stream(ARGV[i], KEYS[1], KEYS[2])
  local count = sets[stream][id]
  if count then
    count = math.max(0, tonumber(count) - 1)
    redis.call('XCLAIM', stream, ARGV[1], ARGV[2], 0, id, 'IDLE', 86400000, 'RETRYCOUNT', count, 'JUSTID')
  end
end
return 1
