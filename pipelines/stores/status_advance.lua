-- Apply status updates to jobs, each atomically: the rule of pipelines.stores.status.moves.
-- KEYS = the jobs' hashes, one per update (on Redis Cluster, all in one slot).
-- ARGV = mode ('set' | 'claim' | 'cancel'), ttl, running rank, terminal rank; then per
--        update 9 values: state, rank, time, reason, group, kind, counter field to bump
--        ('' for none), loc ('' for none: see pipelines.stores.status.records_loc), model
--        version ('' for none; the latest one given is kept).
-- Ranks come from Python (pipelines.stores.status.RANK): the order is defined there only.
-- Returns per update {moved, state, attempts, the job's group if the job has ended (the
-- caller counts it there: status_group.lua) or false, the job's recorded loc or false}.
-- Only declared keys are touched: a group's keys live in another slot.
local mode, ttl = ARGV[1], tonumber(ARGV[2])
local running, terminal = tonumber(ARGV[3]), tonumber(ARGV[4])

local function advance(job, a)
  local state, rank, at, reason = ARGV[a], tonumber(ARGV[a + 1]), ARGV[a + 2], ARGV[a + 3]
  local group, kind, counter, loc = ARGV[a + 4], ARGV[a + 5], ARGV[a + 6], ARGV[a + 7]
  local version = ARGV[a + 8]
  local cur = tonumber(redis.call('HGET', job, 'rank') or '-1')
  local function attempts() return tonumber(redis.call('HGET', job, 'attempts') or '0') end
  local function ended_in()
    if tonumber(redis.call('HGET', job, 'rank') or '-1') < terminal then return false end
    return redis.call('HGET', job, 'group')
  end
  -- a claim is refused once the job ended; a cancel once it runs (or when the job is unknown)
  if (mode == 'claim' and cur >= terminal) or (mode == 'cancel' and (cur < 0 or cur >= running)) then
    return {0, redis.call('HGET', job, 'state'), attempts(), ended_in(), false}
  end
  redis.call('HSETNX', job, 't_' .. state, at)
  if group ~= '' then redis.call('HSETNX', job, 'group', group) end
  if kind ~= '' then redis.call('HSETNX', job, 'kind', kind) end
  if version ~= '' then redis.call('HSET', job, 'version', version) end
  if counter ~= '' then redis.call('HINCRBY', job, counter, 1) end
  local moved = 0
  if rank > cur or (rank == cur and cur < terminal) then
    moved = 1
    redis.call('HSET', job, 'state', state, 'rank', ARGV[a + 1], 'updated_at', at, 'reason', reason)
  end
  -- a job that did not move still has the state it had: its loc only joins a repeat of it
  if loc ~= '' and rank == terminal and (moved == 1 or redis.call('HGET', job, 'state') == state) then
    redis.call('HSETNX', job, 'loc', loc)
  end
  redis.call('EXPIRE', job, ttl)
  local recorded = loc ~= '' and redis.call('HGET', job, 'loc')
  return {moved, redis.call('HGET', job, 'state'), attempts(), ended_in(), recorded}
end

local out = {}
for i, job in ipairs(KEYS) do
  out[i] = advance(job, 5 + (i - 1) * 9)
end
return out
