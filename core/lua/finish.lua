--[[ finish: the worker's terminal event, state, job dropped, conversation's next run released.
Optionally preceded by the attempt's last buffered events, so that ending a run costs one call.
KEYS: 1 run state, 2 run stream
ARGV: 1 TAG, 2 run_id, 3 attempt, 4 terminal type, 5 visibility, 6 payload, 7 retention_s,
      8 n (optional; 0), then n x (type, visibility, payload, to_log 0|1), written before it, then
      the first one's number within the attempt (optional; events already written are skipped)
Replies: {ok, seq} | refusals as in append
]]
local st, run_id, attempt = KEYS[1], ARGV[2], ARGV[3]
local refusal, f = refuse_unless_current(st, attempt)
if refusal then return refusal end
if not STATUS_OF[ARGV[4]] then return { 'illegal', ARGV[4] } end
local n = tonumber(ARGV[8] or '0')
for i = 0, n - 1 do
  local etype = ARGV[9 + i * 4]
  if STATUS_OF[etype] or etype == 'run.queued' or etype == 'run.started'
      or etype == 'run.retrying' or etype == 'run.cancel_requested' then
    return { 'illegal', etype }
  end
end
local now = now_ms()
for i = already_written(f, tonumber(ARGV[9 + n * 4] or '0') or 0, n), n - 1 do
  f.seq = f.seq + 1
  local b = 9 + i * 4
  write_event(run_id, f.seq, ARGV[b], ARGV[b + 2], attempt, ARGV[b + 1], f.conv, ARGV[b + 3] == '1')
end
return { 'ok', terminate(run_id, ARGV[4], ARGV[6], ARGV[5], ARGV[7], now, f) }
