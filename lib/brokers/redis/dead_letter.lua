-- KEYS: unacked, unacked_index, dead list. ARGV: tag, dead record.
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[3], ARGV[2])
return 1
