-- KEYS: unacked, unacked_index. ARGV: tag.
redis.call('ZREM', KEYS[2], ARGV[1])
return redis.call('HDEL', KEYS[1], ARGV[1])
