--[[ begin_attempt: a worker claimed a job; start a new attempt (the fencing token).
KEYS: 1 run state, 2 run stream, 3 the job's queue
ARGV: 1 TAG, 2 run_id, 3 job entry id, 4 worker id, 5 vis run.started, 6 payload run.started,
      7 vis run.failed, 8 payload run.failed (attempts exhausted), 9 retention_s
Replies: {started, attempt, seq, input payload, cancel, timeout_ms, conv_id}
       | {dropped, why}   the job was acked and deleted; nothing to run
       | {dead, seq}      the previous attempt was the last one: run.failed, dead-lettered
]]
local st, run_id, job = KEYS[1], ARGV[2], ARGV[3]
local now = now_ms()

local function drop(why)
  redis.call('XACK', KEYS[3], GROUP, job)
  redis.call('XDEL', KEYS[3], job)
  return { 'dropped', why }
end

local f = redis.call('HMGET', st, 'status', 'attempt', 'max_attempts', 'job', 'timeout_ms', 'conv', 'cancel',
  'seq', 'agent')
if not f[1] then
  redis.call('XADD', DEAD, '*', 'r', run_id, 'job', job, 'reason', 'no state for this run (expired or never submitted)', 'ts', now)
  redis.call('HINCRBY', STATS, 'dead_letters', 1)
  return drop('no_run')
end
if TERMINAL[f[1]] then return drop(f[1]) end
if f[4] ~= job then return drop('stale job entry') end

local attempt = tonumber(f[2])
-- still 'running': its worker's lease expired (crash, stall, or handed back at shutdown)
if f[1] == 'running' then redis.call('HINCRBY', STATS, 'reclaims', 1) end
if attempt >= tonumber(f[3]) then
  -- every allowed attempt started and none finished: the job keeps killing its workers
  local seq = terminate(run_id, 'run.failed', ARGV[8], ARGV[7], ARGV[9], now, {
    status = f[1], attempt = f[2], seq = tonumber(f[8]) or 0, conv = f[6] or '', job = job, agent = f[9] or '',
  })
  redis.call('XADD', DEAD, '*', 'r', run_id, 'job', job, 'reason', 'max attempts exceeded', 'attempts', attempt, 'ts', now)
  redis.call('HINCRBY', STATS, 'dead_letters', 1)
  return { 'dead', seq }
end

attempt = attempt + 1
local seq = (tonumber(f[8]) or 0) + 1
if attempt == 1 then
  redis.call('HSET', st, 'status', 'running', 'attempt', attempt, 'worker', ARGV[4], 'seq', seq, 'started', now)
else
  redis.call('HSET', st, 'status', 'running', 'attempt', attempt, 'worker', ARGV[4], 'seq', seq)
end
write_event(run_id, seq, 'run.started', ARGV[6], now, attempt, ARGV[5], f[6] or '', true)
local input = redis.call('XRANGE', KEYS[2], '0-1', '0-1')
local payload = ''
if input[1] then
  local fields = input[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'p' then payload = fields[i + 1] end
  end
end
return { 'started', attempt, seq, payload, f[7] or '0', f[5] or '0', f[6] or '' }
