-- KEYS: binding set, target list or delayed zset.
-- ARGV: binding member, payload, score ("" = LPUSH now).
redis.call('SADD', KEYS[1], ARGV[1])
if ARGV[3] == '' then return redis.call('LPUSH', KEYS[2], ARGV[2]) end
return redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
