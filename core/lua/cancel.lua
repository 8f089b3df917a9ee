--[[ cancel: a queued run is cancelled at once (it never starts); a running one gets
run.cancel_requested and a broadcast to the workers; a terminal one is refused.
KEYS: 1 run state, 2 run stream
ARGV: 1 TAG, 2 run_id, 3 owner ('' = any), 4 vis run.cancelled, 5 vis run.cancel_requested,
      6 payload, 7 cancel channel, 8 retention_s
Replies: {cancelled, seq} | {requested, seq} | {terminal, status} | {no_run}
]]
local st, run_id = KEYS[1], ARGV[2]
local f = redis.call('HMGET', st, 'status', 'owner', 'cancel', 'attempt', 'conv', 'seq')
if not f[1] or (ARGV[3] ~= '' and f[2] ~= ARGV[3]) then return { 'no_run' } end
if TERMINAL[f[1]] then return { 'terminal', f[1] } end
local now = now_ms()
if f[1] == 'queued' then
  return { 'cancelled', terminate(run_id, 'run.cancelled', ARGV[6], ARGV[4], ARGV[8], now) }
end
if f[3] == '1' then return { 'requested', tonumber(f[6]) } end
redis.call('HSET', st, 'cancel', 1)
local seq = next_seq(st)
write_event(run_id, seq, 'run.cancel_requested', ARGV[6], f[4], ARGV[5], f[5] or '', true)
redis.call('PUBLISH', ARGV[7], run_id)
return { 'requested', seq }
