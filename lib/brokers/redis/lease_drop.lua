-- Give a concurrency slot back (lib/core/coord.c).
-- KEYS: the set. ARGV: member. Returns 1 when it was held.
return redis.call('ZREM', KEYS[1], ARGV[1])
