-- One job submission's every check, in one round trip and atomically:
-- the request bucket, the jobs bucket, the owners of the ids and the cap on open jobs.
-- KEYS: [1] request bucket, [2] jobs bucket, [3] the key's open set,
--       [4..n+3] owner records, [n+4..2n+3] status hashes (left out when the status store
--       is another Redis: then ARGV ends with a flag per id, '1' if the store knows the job).
-- ARGV: request rate, request burst, jobs rate, jobs burst, cap, ttl, tenant, job ids.
-- A rate of 0 leaves that bucket out (admission alone: the owners and the cap).
-- Returns {0, requests left, jobs left}, or a refusal:
--   {-3, requests left, seconds to wait}  the request bucket is empty (nothing taken)
--   {-4, jobs left, seconds to wait}      the jobs bucket lacks n jobs (one request taken)
--   {-2, i, ''}                           job i belongs to someone else (one request taken)
--   {-1, open, ''}                        the jobs would pass the cap (one request taken)
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000

local function level(key, rate, burst)
  local b = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens = tonumber(b[1]) or burst
  local ts = tonumber(b[2]) or now
  return math.min(burst, tokens + math.max(0, now - ts) * rate)
end

local function store(key, tokens, rate, burst)
  redis.call('HSET', key, 'tokens', tokens, 'ts', now)
  redis.call('PEXPIRE', key, math.ceil(burst / rate * 1000) + 1000)
end

local rrate, rburst = tonumber(ARGV[1]), tonumber(ARGV[2])
local jrate, jburst = tonumber(ARGV[3]), tonumber(ARGV[4])
local cap, ttl, tenant = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local n = #ARGV - 7
local inline = #KEYS == 3 + 2 * n
if not inline then n = (#ARGV - 7) / 2 end

local function known(i)
  if inline then return redis.call('EXISTS', KEYS[3 + n + i]) == 1 end
  return ARGV[7 + n + i] == '1'
end

local req, jobs = 1, n
if rrate > 0 then
  req = level(KEYS[1], rrate, rburst)
  if req < 1 then return {-3, tostring(req), tostring((1 - req) / rrate)} end
  store(KEYS[1], req - 1, rrate, rburst)
end
if jrate > 0 then
  jobs = level(KEYS[2], jrate, jburst)
  if jobs < n then return {-4, tostring(jobs), tostring((n - jobs) / jrate)} end
end

for i = 1, n do
  local owner = redis.call('GET', KEYS[3 + i])
  if owner then
    if owner ~= tenant then return {-2, i, ''} end
  elseif known(i) then
    return {-2, i, ''}
  end
end
local fresh = 0
for i = 1, n do
  if redis.call('SISMEMBER', KEYS[3], ARGV[7 + i]) == 0 then fresh = fresh + 1 end
end
local open = redis.call('SCARD', KEYS[3])
if open + fresh > cap then return {-1, open, ''} end
for i = 1, n do
  redis.call('SET', KEYS[3 + i], tenant, 'EX', ttl)
  redis.call('SADD', KEYS[3], ARGV[7 + i])
end
redis.call('EXPIRE', KEYS[3], ttl)
if jrate > 0 then store(KEYS[2], jobs - n, jrate, jburst) end
return {0, tostring(req - 1), tostring(jobs - n)}
