-- Acknowledges and removes the entries a consumer still owns; the others (taken over,
-- already gone) are left alone. Ownership is read once per stream, and the entries are
-- acknowledged and removed in bulk.
-- KEYS[1] stream, KEYS[2] solo stream of a job queue (else KEYS[1] again)
-- ARGV[1] group, ARGV[2] consumer, ARGV[3..6] the ids' bounds (see owned_sets), ARGV[7..]
-- entry ids. Returns the ids acknowledged.
local sets = owned_sets(KEYS[1], KEYS[2], ARGV[1], ARGV[2], 3)
local done, acks = {}, {}
for i = 7, #ARGV do
  local owned, stream, id = owned_in(sets, ARGV[i], KEYS[1], KEYS[2])
  if owned then
    acks[stream] = acks[stream] or {}
    table.insert(acks[stream], id)
    done[#done + 1] = ARGV[i]
  end
end
for stream, ids in pairs(acks) do
  in_chunks('XACK', stream, {ARGV[1]}, ids)
  in_chunks('XDEL', stream, {}, ids)
end
return done
