-- KEYS: unacked, unacked_index, list. ARGV: tag. Back onto the served end,
-- marked redelivered as kombu marks a restored message.
--@include _envelope_of.lua
--@include _redeliver.lua
local v = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if not v then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
local env = envelope_of(v)
if env then redis.call('RPUSH', KEYS[3], mark_redelivered(env))
else redis.call('LPUSH', '_aiq.unrestorable', v) end
return 1
