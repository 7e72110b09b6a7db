-- KEYS: unacked, unacked_index, unacked_mutex. ARGV: token, cutoff (s),
-- limit. Restores entries whose lease is older than the cutoff, as kombu's
-- restore_visible does, but atomically, each marked redelivered as kombu's
-- _do_restore_message marks it. -1 when another process holds the
-- mutex.
--@include _envelope_of.lua
--@include _redeliver.lua
if not redis.call('SET', KEYS[3], ARGV[1], 'PX', 300000, 'NX') then return -1 end
local sep = '\6\22'
local tags = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2], 'LIMIT', 0,
  tonumber(ARGV[3]))
local n = 0
for _, tag in ipairs(tags) do
  local v = redis.call('HGET', KEYS[1], tag)
  redis.call('ZREM', KEYS[2], tag)
  if v then
    redis.call('HDEL', KEYS[1], tag)
    local env = envelope_of(v)
    local ok, d = pcall(cjson.decode, v)
    if env and ok and type(d) == 'table' and type(d[3]) == 'string' then
      local q = d[3]
      if type(d[2]) == 'string' and d[2] ~= '' then
        for _, m in ipairs(redis.call('SMEMBERS', '_kombu.binding.' .. d[2])) do
          local a = string.find(m, sep, 1, true)
          if a and string.sub(m, 1, a - 1) == d[3] then
            local b = string.find(m, sep, a + 2, true)
            if b then q = string.sub(m, b + 2) end
            break
          end
        end
      end
      local pri = 0
      local props = type(d[1]) == 'table' and d[1]['properties']
      if type(props) == 'table' and type(props['priority']) == 'number' then
        pri = props['priority']
      end
      local dest = q
      if pri >= 9 then dest = q .. sep .. '9' elseif pri >= 6 then dest = q .. sep .. '6'
      elseif pri >= 3 then dest = q .. sep .. '3' end
      redis.call('RPUSH', dest, mark_redelivered(env))
      n = n + 1
    else
      redis.call('LPUSH', '_aiq.unrestorable', v)
    end
  end
end
if redis.call('GET', KEYS[3]) == ARGV[1] then redis.call('DEL', KEYS[3]) end
return n
