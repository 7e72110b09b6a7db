-- Acknowledge deliveries: drop each from unacked and unacked_index.
-- KEYS: unacked, unacked_index. ARGV: tags. Returns, per tag, 1 when it
-- was still in unacked, else 0 (restored meanwhile: it may run again).
redis.call('ZREM', KEYS[2], unpack(ARGV))
local out = {}
for i = 1, #ARGV do out[i] = redis.call('HDEL', KEYS[1], ARGV[i]) end
return out
