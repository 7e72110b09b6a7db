-- A token bucket shared by every worker (lib/worker/ratelimit.c).
-- KEYS: the bucket (a hash: tokens, ts in µs of the server's clock).
-- ARGV: rate (tokens per second), burst (bucket size), cost (tokens taken,
-- may exceed what is there: the bucket goes into debt), and "1" to take
-- them or "0" to only read.
-- Returns {wait in µs until the debt is paid (0 = had enough), tokens left
-- as a string}. The server's clock (TIME), never a worker's, decides.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local h = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(h[1])
local ts = tonumber(h[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if now > ts then
  tokens = tokens + (now - ts) * rate / 1000000
  ts = now
end
if tokens > burst then tokens = burst end
if ARGV[4] == '1' then
  tokens = tokens - cost
  redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'ts', string.format('%d', ts))
  -- Gone once full again: an idle bucket costs nothing.
  redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) * 1000 / rate) + 1000)
end
local wait = 0
if tokens < 0 then wait = math.ceil(-tokens * 1000000 / rate) end
return {wait, string.format('%.6f', tokens)}
