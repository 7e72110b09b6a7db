-- Take a concurrency slot (lib/core/coord.c): a sorted set per key whose
-- members are acquisitions and whose scores are when their leases end (ms
-- of the server's clock). Ended leases go first, so a worker killed with
-- kill -9 frees its slots; a member that holds one already is extended.
-- KEYS: the set. ARGV: member, limit, lease in ms.
-- Returns 1 when the member holds a slot, 0 when every slot is taken.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and
   redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
