-- Claim a unique-job key (lib/core/unique.c) in one step: set it to the
-- task id with a TTL unless it exists.
-- KEYS: the key. ARGV: task id, TTL in ms.
-- Returns the id that holds the key when it existed, else nil (claimed).
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
