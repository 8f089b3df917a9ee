--[[ append: events of a worker's attempt; fenced (a zombie attempt writes nothing); assigns seq.
KEYS: 1 run state, 2 run stream
ARGV: 1 TAG, 2 run_id, 3 attempt, 4 n, then n x (type, visibility, payload, to_log 0|1), then the
      first event's number within the attempt (optional; events already written are skipped)
Replies: {ok, first_seq, last_seq, cancel} | {no_run} | {terminal, status} | {fenced, current}
       | {not_running, status} | {illegal, type}
]]
local st, run_id, attempt = KEYS[1], ARGV[2], ARGV[3]
local refusal, f = refuse_unless_current(st, attempt)
if refusal then return refusal end
local n = tonumber(ARGV[4])
for i = 0, n - 1 do
  local etype = ARGV[5 + i * 4]
  if STATUS_OF[etype] or etype == 'run.queued' or etype == 'run.started'
      or etype == 'run.retrying' or etype == 'run.cancel_requested' then
    return { 'illegal', etype }
  end
end
local first_index = tonumber(ARGV[5 + n * 4] or '0') or 0
local seq = f.seq
local first = seq + 1
local now = now_ms()
for i = already_written(f, first_index, n), n - 1 do
  seq = seq + 1
  local b = 5 + i * 4
  write_event(run_id, seq, ARGV[b], ARGV[b + 2], attempt, ARGV[b + 1], f.conv, ARGV[b + 3] == '1')
end
if first_index > 0 then
  redis.call('HSET', st, 'seq', text(seq), 'emitted', text(math.max(f.emitted, first_index + n - 1)))
else
  redis.call('HSET', st, 'seq', text(seq))
end
return { 'ok', first, seq, f.cancel }
