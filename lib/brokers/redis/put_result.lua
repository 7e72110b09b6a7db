-- The Redis result store's put, for one result or a group of them (one
-- call per group: a script call costs the server more than its commands).
-- KEYS: meta keys. ARGV: one meta JSON per key, then the ttl in seconds
-- ("0" = none). Returns, per key, 1 when written (or already identical), or
-- the status of the final state stored there (never replaced).
local n = #KEYS
local ttl = ARGV[n + 1]
local out = {}
for i = 1, n do
  local key, meta = KEYS[i], ARGV[i]
  local cur = redis.call('GET', key)
  local final = nil
  if cur and cur ~= meta then
    local ok, d = pcall(cjson.decode, cur)
    if ok and type(d) == 'table' then
      local s = d['status']
      if s == 'SUCCESS' or s == 'FAILURE' or s == 'REVOKED' then final = s end
    end
  end
  if final then
    out[i] = final
  elseif cur == meta then
    out[i] = 1
  else
    if ttl ~= '0' then redis.call('SET', key, meta, 'EX', ttl)
    else redis.call('SET', key, meta) end
    redis.call('PUBLISH', key, meta)
    out[i] = 1
  end
end
return out
