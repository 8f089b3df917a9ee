--[[ finish: the worker's terminal event, state, job dropped, conversation's next run released.
KEYS: 1 run state, 2 run stream
ARGV: 1 TAG, 2 run_id, 3 attempt, 4 terminal type, 5 visibility, 6 payload, 7 retention_s
Replies: {ok, seq} | refusals as in append
]]
local refusal = refuse_unless_current(KEYS[1], ARGV[3])
if refusal then return refusal end
if not STATUS_OF[ARGV[4]] then return { 'illegal', ARGV[4] } end
return { 'ok', terminate(ARGV[2], ARGV[4], ARGV[6], ARGV[5], ARGV[7], now_ms()) }
