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
  -- one read and one write per update: each redis.call costs more than the Lua around it
  local f = redis.call('HMGET', job, 'rank', 'state', 'attempts', 'group', 'kind', 'loc', 't_' .. state)
  local cur, now, attempts = tonumber(f[1] or '-1'), f[2], tonumber(f[3] or '0')
  local ended_group, has_kind, recorded, marked = f[4], f[5], f[6], f[7]
  -- a claim is refused once the job ended; a cancel once it runs (or when the job is unknown)
  if (mode == 'claim' and cur >= terminal) or (mode == 'cancel' and (cur < 0 or cur >= running)) then
    return {0, now, attempts, cur >= terminal and ended_group, false}
  end
  local sets = {}
  local function set(field, value)
    sets[#sets + 1] = field
    sets[#sets + 1] = value
  end
  if not marked then set('t_' .. state, at) end
  if group ~= '' and not ended_group then
    set('group', group)
    ended_group = group
  end
  if kind ~= '' and not has_kind then set('kind', kind) end
  if version ~= '' then set('version', version) end
  local moved = 0
  if rank > cur or (rank == cur and cur < terminal) then
    moved = 1
    set('state', state)
    set('rank', ARGV[a + 1])
    set('updated_at', at)
    set('reason', reason)
    cur, now = rank, state
  end
  -- a job that did not move still has the state it had: its loc only joins a repeat of it
  if loc ~= '' and rank == terminal and now == state and not recorded then
    set('loc', loc)
    recorded = loc
  end
  if #sets > 0 then redis.call('HSET', job, unpack(sets)) end
  if counter ~= '' then
    local n = redis.call('HINCRBY', job, counter, 1)
    if counter == 'attempts' then attempts = n end
  end
  redis.call('EXPIRE', job, ttl)
  return {moved, now, attempts, cur >= terminal and ended_group, loc ~= '' and recorded}
end

local out = {}
for i, job in ipairs(KEYS) do
  out[i] = advance(job, 5 + (i - 1) * 9)
end
return out
