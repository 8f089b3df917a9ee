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
local f = read_for_begin(st)
if not f[1] then
  redis.call('XADD', dead_key(), '*', 'r', run_id, 'job', job, 'reason', 'no state for this run (expired or never submitted)', 'ts', now_text())
  redis.call('HINCRBY', stats_key(), 'dead_letters', 1)
  remove_job(KEYS[3], job)
  return { 'dropped', 'no_run' }
end
return begin_job(run_id, job, KEYS[3], f, { unpack(ARGV, 4, 9) }, now)
