-- The Redis result store's put. KEYS: meta key. ARGV: meta JSON, ttl
-- seconds ("0" = none). Returns {1} when written (or already identical),
-- {0, status} when a final state is stored (never replaced).
local cur = redis.call('GET', KEYS[1])
if cur then
  if cur == ARGV[1] then return {1} end
  local ok, d = pcall(cjson.decode, cur)
  if ok and type(d) == 'table' then
    local s = d['status']
    if s == 'SUCCESS' or s == 'FAILURE' or s == 'REVOKED' then return {0, s} end
  end
end
if ARGV[2] ~= '0' then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
else redis.call('SET', KEYS[1], ARGV[1]) end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return {1}
