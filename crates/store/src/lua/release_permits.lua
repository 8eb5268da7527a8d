-- Gives permits back; with ARGV[3] = '1' the consumer also stops contending for a share.
-- KEYS[1] permits, KEYS[2] holders, KEYS[3] contenders
-- ARGV[1] consumer, ARGV[2] unused, ARGV[3] leave ('1'/'0'), ARGV[4..] permits
local n = 0
for i = 4, #ARGV do
  if drop_permit(KEYS[1], KEYS[2], ARGV[i]) then
    n = n + 1
  end
end
if ARGV[3] == '1' then
  redis.call('ZREM', KEYS[3], ARGV[1])
end
return n
