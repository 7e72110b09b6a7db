-- Take up to `max` messages and record each unacknowledged, in one call.
-- KEYS: unacked, unacked_index, then per queue: 4 priority lists, delayed
-- zset, dead list. ARGV: now (s), now (ms), nqueues, first queue (0-based),
-- max, queue names.
-- Order (kombu's): priority step 0 first; within a step the queues take
-- turns from `first`, one element each, until the step is empty.
-- Returns a flat array of entries: 1, queue index, step slot, element, tag
-- (a delivery, now in unacked + unacked_index as kombu records it) or
-- 2, queue index, reason (an element that is no envelope, moved to the
-- queue's dead list). Empty when nothing was ready.
local nq = tonumber(ARGV[3])
local start = tonumber(ARGV[4])
local max = tonumber(ARGV[5])
for i = 0, nq - 1 do
  local base = 2 + i * 6
  local dkey = KEYS[base + 5]
  local due = redis.call('ZRANGEBYSCORE', dkey, '-inf', ARGV[2], 'LIMIT', 0, 100)
  for _, m in ipairs(due) do
    redis.call('ZREM', dkey, m)
    local step = tonumber(string.sub(m, 1, 1)) or 0
    local slot = 1
    if step >= 9 then slot = 4 elseif step >= 6 then slot = 3
    elseif step >= 3 then slot = 2 end
    redis.call('LPUSH', KEYS[base + slot], string.sub(m, 3))
  end
end
local out = {}
local n = 0
local hset, zadd = {KEYS[1]}, {KEYS[2]}
local qjson = {}
for s = 1, 4 do
  local more = true
  while more and n < max do
    more = false
    for j = 0, nq - 1 do
      if n >= max then break end
      local i = (start + j) % nq
      local base = 2 + i * 6
      local el = redis.call('RPOP', KEYS[base + s])
      if el then
        more = true
        n = n + 1
        local qname = ARGV[6 + i]
        local ok, env = pcall(cjson.decode, el)
        local why = nil
        if not ok then why = 'element is not JSON: ' .. tostring(env)
        elseif type(env) ~= 'table' or env[1] ~= nil then
          why = 'element is not a JSON object'
        elseif type(env['body']) ~= 'string' then why = 'envelope has no string body'
        elseif type(env['properties']) ~= 'table' then
          why = 'envelope has no properties object'
        elseif type(env['properties']['delivery_tag']) ~= 'string' then
          why = 'envelope has no string properties.delivery_tag'
        elseif string.find(env['properties']['delivery_tag'], '\0', 1, true) then
          why = 'envelope properties.delivery_tag contains a NUL byte'
        end
        if why then
          redis.call('LPUSH', KEYS[base + 6], cjson.encode({['x-aiq-dead-reason'] = why,
            queue = qname, raw = el, time = tonumber(ARGV[1])}))
          out[#out + 1] = 2
          out[#out + 1] = i
          out[#out + 1] = why
        else
          local tag = env['properties']['delivery_tag']
          if not qjson[i] then qjson[i] = cjson.encode(qname) end
          hset[#hset + 1] = tag
          hset[#hset + 1] = '[' .. el .. ', "", ' .. qjson[i] .. ']'
          zadd[#zadd + 1] = ARGV[1]
          zadd[#zadd + 1] = tag
          out[#out + 1] = 1
          out[#out + 1] = i
          out[#out + 1] = s
          out[#out + 1] = el
          out[#out + 1] = tag
        end
      end
    end
  end
end
-- One HSET and one ZADD for the whole batch (a tag seen twice keeps the
-- last value, as two HSETs would).
if #hset > 1 then
  redis.call('HSET', unpack(hset))
  redis.call('ZADD', unpack(zadd))
end
return out
