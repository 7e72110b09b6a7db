-- Extend a held concurrency slot (lib/core/coord.c) by its lease from now;
-- one that ended stays ended.
-- KEYS: the set. ARGV: member, lease in ms. Returns 1 when extended.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[2]), ARGV[1])
if n > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return n
