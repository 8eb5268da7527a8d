-- Takes over entries left idle at least ARGV[3] ms (their consumer stopped heartbeating),
-- going on from a cursor, with how often each was handed out.
-- KEYS[1] stream, KEYS[2] solo stream of a job queue (absent for other queues)
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] min idle (ms), ARGV[4] cursor ('<KEYS[1]>|<KEYS[2]>'),
-- ARGV[5] count
-- Returns {entries (flat: id, payload, deliveries * 2 + redriven for each; a solo entry's id
-- is `s:<id>`), next cursor ('' = done)}.
local group, consumer, count = ARGV[1], ARGV[2], tonumber(ARGV[5])
local cursors = {}
for c in string.gmatch(ARGV[4] .. '|', '([^|]*)|') do
  cursors[#cursors + 1] = (c == '') and '0-0' or c
end
local out, next_cursors, done = {}, {}, true
for k, stream in ipairs(KEYS) do
  local from = cursors[k] or '0-0'
  local left = count - #out / 3
  if left > 0 then
    local r = redis.pcall('XAUTOCLAIM', stream, group, consumer, ARGV[3], from, 'COUNT', left)
    if type(r) == 'table' and not r.err then
      from = r[1]
      for _, e in ipairs(r[2]) do
        local payload, redriven = '', '0'
        for i = 1, #e[2], 2 do
          if e[2][i] == 'redriven' then
            redriven = '1'
          elseif payload == '' then
            payload = e[2][i + 1]
          end
        end
        local p = redis.call('XPENDING', stream, group, e[1], e[1], 1)
        local deliveries = 1
        if p[1] then
          deliveries = p[1][4]
        end
        local id = e[1]
        if k == 2 then
          id = 's:' .. e[1]
        end
        out[#out + 1] = id
        out[#out + 1] = payload
        out[#out + 1] = tonumber(deliveries) * 2 + tonumber(redriven)
      end
    else
      redis.pcall('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
      from = '0-0'
    end
  end
  if from ~= '0-0' then
    done = false
  end
  next_cursors[#next_cursors + 1] = from
end
if done then
  return {out, ''}
end
return {out, table.concat(next_cursors, '|')}
