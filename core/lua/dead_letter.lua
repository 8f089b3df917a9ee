--[[ dead_letter: a job that cannot run (undecodable entry, unknown agent, poison): acked,
deleted, recorded in the dead stream; its run, if any and not yet ended, becomes run.failed.
KEYS: 1 the queue, 2 the dead stream
ARGV: 1 TAG, 2 job id, 3 reason, 4 deliveries, 5 run_id or '', 6 vis run.failed,
      7 payload run.failed, 8 retention_s, 9 the raw entry, for the record
Replies: {dead, seq or 0}
]]
local now = now_ms()
remove_job(KEYS[1], ARGV[2])
redis.call('XADD', KEYS[2], '*', 'r', ARGV[5], 'job', ARGV[2], 'queue', KEYS[1],
  'reason', ARGV[3], 'deliveries', ARGV[4], 'entry', ARGV[9], 'ts', now_text())
redis.call('HINCRBY', stats_key(), 'dead_letters', 1)
local seq = 0
if ARGV[5] ~= '' then
  local st = state_key(ARGV[5])
  local s = redis.call('HGET', st, 'status')
  if s and not TERMINAL[s] then
    redis.call('HSET', st, 'job', '')
    seq = terminate(ARGV[5], 'run.failed', ARGV[7], ARGV[6], ARGV[8], now)
  end
end
return { 'dead', seq }
