--[[ begin_attempt: a worker claimed a job; start a new attempt (the fencing token).
KEYS: 1 run state, 2 run stream, 3 the job's queue
ARGV: 1 TAG, 2 run_id, 3 job entry id, 4 worker id, 5 vis run.started, 6 payload run.started,
      7 vis run.failed, 8 payload run.failed (attempts exhausted), 9 retention_s,
      10 the call's token ('' : none): the same call sent again, its reply lost, begins nothing new
Replies: {started, attempt, seq, input payload, cancel, timeout_ms, conv_id}
       | {dropped, why}   the job was acked and deleted; nothing to run
       | {dead, seq}      the previous attempt was the last one: run.failed, dead-lettered
]]
local st, run_id, job, token = KEYS[1], ARGV[2], ARGV[3], ARGV[10] or ''
local now = now_ms()
local f = read_for_begin(st)
if not f[1] then
  redis.call('XADD', dead_key(), '*', 'r', run_id, 'job', job, 'reason', 'no state for this run (expired or never submitted)', 'ts', now_text())
  redis.call('HINCRBY', stats_key(), 'dead_letters', 1)
  remove_job(KEYS[3], job)
  return { 'dropped', 'no_run' }
end
if token ~= '' and f[1] == 'running' and f[4] == job then
  local begun = redis.call('HGET', st, 'begun')
  local sep = begun and string.find(begun, '|', 1, true)
  if sep and string.sub(begun, 1, sep - 1) == token then
    return { 'started', tonumber(f[2]), tonumber(string.sub(begun, sep + 1)), run_input(run_id), f[7] or '0',
             f[5] or '0', f[6] or '' }
  end
end
local reply = begin_job(run_id, job, KEYS[3], f, { unpack(ARGV, 4, 9) }, now)
if token ~= '' and reply[1] == 'started' then redis.call('HSET', st, 'begun', token .. '|' .. reply[3]) end
return reply
