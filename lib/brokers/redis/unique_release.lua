-- Release a unique-job key (lib/core/unique.c), only if it still names the
-- task: a key that expired and was taken by a newer task stays.
-- KEYS: the key. ARGV: the task id. Returns 1 when deleted.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
