-- Count ended jobs towards their group once each ('add'), or uncount replayed ones ('remove').
-- KEYS = the group's hash, the set of its counted job ids (one hash tag: one cluster slot).
-- ARGV = mode, ttl, then per job: its id, the terminal state it ended in.
-- Idempotent: a job already counted (or not counted) changes nothing, so a caller that died
-- between a job's script and this one is made whole by any later repeat of the job's update.
-- Returns 1 if this call counted the group's last job, else 0.
local group, counted = KEYS[1], KEYS[2]
local mode, ttl = ARGV[1], tonumber(ARGV[2])
local completed = 0
for i = 3, #ARGV, 2 do
  local job, state = ARGV[i], ARGV[i + 1]
  if mode == 'add' then
    if redis.call('SADD', counted, job) == 1 then
      redis.call('HINCRBY', group, state, 1)
      local total = tonumber(redis.call('HGET', group, 'total') or '-1')
      if redis.call('SCARD', counted) == total then completed = 1 end
    end
  elseif redis.call('SREM', counted, job) == 1 then
    redis.call('HINCRBY', group, state, -1)
  end
end
redis.call('EXPIRE', group, ttl)
redis.call('EXPIRE', counted, ttl)
return completed
