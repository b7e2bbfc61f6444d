-- Apply one status update to a job, atomically: the rule of pipelines.stores.status.moves.
-- KEYS[1] = the job's hash.
-- ARGV = state, rank, time, reason, ttl, mode ('set' | 'claim' | 'cancel'), group, kind,
--        group key prefix, counter field to bump ('' for none), running rank, terminal rank.
-- Ranks come from Python (pipelines.stores.status.RANK): the order is defined there only.
-- Returns {moved, state, attempts, the group this update completed or false}. Group keys are
-- derived here (fine on one Redis/Valkey node, not on Redis Cluster).
local job = KEYS[1]
local state, rank, at, reason = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local mode, group_prefix, counter = ARGV[6], ARGV[9], ARGV[10]
local running, terminal = tonumber(ARGV[11]), tonumber(ARGV[12])
local cur = tonumber(redis.call('HGET', job, 'rank') or '-1')
local function attempts() return tonumber(redis.call('HGET', job, 'attempts') or '0') end
-- a claim is refused once the job ended; a cancel once it runs (or when the job is unknown)
if (mode == 'claim' and cur >= terminal) or (mode == 'cancel' and (cur < 0 or cur >= running)) then
  return {0, redis.call('HGET', job, 'state'), attempts(), false}
end
redis.call('HSETNX', job, 't_' .. state, at)
if ARGV[7] ~= '' then redis.call('HSETNX', job, 'group', ARGV[7]) end
if ARGV[8] ~= '' then redis.call('HSETNX', job, 'kind', ARGV[8]) end
if counter ~= '' then redis.call('HINCRBY', job, counter, 1) end
local moved, done = 0, false
if rank > cur or (rank == cur and cur < terminal) then
  moved = 1
  redis.call('HSET', job, 'state', state, 'rank', ARGV[2], 'updated_at', at, 'reason', reason)
  local group = redis.call('HGET', job, 'group')
  if rank == terminal and group then
    local gk = group_prefix .. group
    if redis.call('SADD', gk .. ':done', job) == 1 then
      redis.call('HINCRBY', gk, state, 1)
      local total = tonumber(redis.call('HGET', gk, 'total') or '-1')
      if redis.call('SCARD', gk .. ':done') == total then done = group end
    end
  end
end
redis.call('EXPIRE', job, tonumber(ARGV[5]))
return {moved, redis.call('HGET', job, 'state'), attempts(), done}
