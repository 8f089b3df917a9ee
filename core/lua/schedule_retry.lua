--[[ schedule_retry: running -> queued with a due time in the delayed zset; or, when the run
has used every attempt, run.failed and a dead letter instead; or, when a cancel was requested
meanwhile (the state's cancel flag: its worker had not heard of it yet), run.cancelled, as
cancel.lua ends a queued run: the retry would only be cancelled as it began, a backoff later.
KEYS: 1 run state, 2 run stream
ARGV: 1 TAG, 2 run_id, 3 attempt, 4 delay_ms, 5 vis run.retrying, 6 payload run.retrying,
      7 vis run.failed, 8 payload run.failed, 9 retention_s, 10 vis run.cancelled,
      11 payload run.cancelled
Replies: {retrying, seq, due_ms} | {failed, seq} | {cancelled, seq} | refusals as in append
]]
local st, run_id = KEYS[1], ARGV[2]
local refusal, r = refuse_unless_current(st, ARGV[3])
if refusal then return refusal end
local now = now_ms()
if r.cancel == '1' then
  return { 'cancelled', terminate(run_id, 'run.cancelled', ARGV[11], ARGV[10], ARGV[9], now, r) }
end
local f = redis.call('HMGET', st, 'attempt', 'max_attempts', 'conv', 'job')
if tonumber(f[1]) >= tonumber(f[2]) and attempts_spent(st, tonumber(f[1])) >= tonumber(f[2]) then
  local seq = terminate(run_id, 'run.failed', ARGV[8], ARGV[7], ARGV[9], now)
  redis.call('XADD', dead_key(), '*', 'r', run_id, 'job', f[4] or '', 'reason', 'retries exhausted', 'attempts', f[1], 'ts', now_text())
  redis.call('HINCRBY', stats_key(), 'dead_letters', 1)
  return { 'failed', seq }
end
local seq = next_seq(st)
write_event(run_id, seq, 'run.retrying', ARGV[6], f[1], ARGV[5], f[3] or '', true)
drop_job(st)
local due = now + tonumber(ARGV[4])
redis.call('HSET', st, 'status', 'queued', 'due', due)
delay(run_id, due, now)
redis.call('HINCRBY', stats_key(), 'retries', 1)
return { 'retrying', seq, due }
