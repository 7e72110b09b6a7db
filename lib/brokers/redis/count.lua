-- KEYS: 4 priority lists, delayed zset. ARGV: now (ms), purge ("1"/"0").
local n = 0
for i = 1, 4 do n = n + redis.call('LLEN', KEYS[i]) end
if ARGV[2] == '1' then
  n = n + redis.call('ZCARD', KEYS[5])
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
else
  n = n + redis.call('ZCOUNT', KEYS[5], '-inf', ARGV[1])
end
return n
