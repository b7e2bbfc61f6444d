-- Forget a job; if it had counted towards its group, uncount it.
-- KEYS[1] = the job's hash, ARGV[1] = group key prefix.
local group = redis.call('HGET', KEYS[1], 'group')
local state = redis.call('HGET', KEYS[1], 'state')
if group and redis.call('SREM', ARGV[1] .. group .. ':done', KEYS[1]) == 1 then
  redis.call('HINCRBY', ARGV[1] .. group, state, -1)
end
return redis.call('DEL', KEYS[1])
