--[[ submit: idempotency check, conversation policy, run.queued, job XADD - atomically.
KEYS: 1 run state, 2 run stream, 3 idempotency key (or the state key when none), 4 conversation (or the state key)
ARGV: 1 TAG, 2 run_id, 3 owner, 4 agent_key, 5 conv_id, 6 policy, 7 max_attempts, 8 due_ms,
      9 timeout_ms, 10 payload, 11 fingerprint, 12 idem_ttl_s, 13 use_idem (0|1),
      14 vis run.queued, 15 vis run.cancelled, 16 vis run.cancel_requested,
      17 payload of the interrupt's cancel events, 18 cancel channel, 19 retention_s
Replies: {created, run_id, seq} | {existing, run_id} | {idem_conflict, run_id}
       | {no_conversation} | {conversation_deleted} | {busy, active_run_id}
]]
local st, run_id, owner, agent, conv = KEYS[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local policy = ARGV[6]
local now = now_ms()

if ARGV[13] == '1' then
  local existing = redis.call('GET', KEYS[3])
  if existing then
    local sep = string.find(existing, '|', 1, true)
    local other_run = string.sub(existing, 1, sep - 1)
    if string.sub(existing, sep + 1) == ARGV[11] then return { 'existing', other_run } end
    return { 'idem_conflict', other_run }
  end
end

local active = false
if conv ~= '' then
  local c = redis.call('HMGET', KEYS[4], 'owner', 'deleted', 'active')
  if not c[1] or c[1] ~= owner then return { 'no_conversation' } end
  if c[2] == '1' then return { 'conversation_deleted' } end
  if c[3] then
    local s = redis.call('HGET', state_key(c[3]), 'status')
    if s and not TERMINAL[s] then active = c[3] end
  end
  if active and policy == 'reject' then return { 'busy', active } end
end

-- the key first: a SET that Redis refuses (an expiry it does not take) must fail the submit
-- before anything of the run is written, not after its job is queued
if ARGV[13] == '1' then
  redis.call('SET', KEYS[3], run_id .. '|' .. ARGV[11], 'EX', ARGV[12])
end

-- a run that does not wait for another is queued (or delayed) at once: its job entry first, so
-- the state is written once, job included (not a read-back of agent and due, then a second HSET)
local job = ''
if not active then job = enqueue(run_id, agent, tonumber(ARGV[8]) or 0, now, ARGV[10]) or '' end
redis.call('HSET', st, 'status', 'queued', 'seq', '1', 'attempt', '0', 'agent', agent, 'owner', owner,
  'conv', conv, 'max_attempts', ARGV[7], 'due', ARGV[8], 'timeout_ms', ARGV[9], 'cancel', '0',
  'created', now_text(), 'job', job)
write_event(run_id, '1', 'run.queued', ARGV[10], '0', ARGV[14], conv, true)

if not active then
  if conv ~= '' then redis.call('HSET', KEYS[4], 'active', run_id) end
elseif policy == 'interrupt' then
  -- the new run goes first; the active one is cancelled (at once if it has not started)
  redis.call('LPUSH', KEYS[4] .. ':w', run_id)
  local ast = state_key(active)
  if redis.call('HGET', ast, 'status') == 'queued' then
    terminate(active, 'run.cancelled', ARGV[17], ARGV[15], ARGV[19], now)
  elseif redis.call('HGET', ast, 'cancel') ~= '1' then
    redis.call('HSET', ast, 'cancel', 1)
    local f = redis.call('HMGET', ast, 'attempt')
    write_event(active, next_seq(ast), 'run.cancel_requested', ARGV[17], f[1], ARGV[16], conv, true)
    redis.call('PUBLISH', ARGV[18], active)
  end
else
  redis.call('RPUSH', KEYS[4] .. ':w', run_id)
end
return { 'created', run_id, 1 }
