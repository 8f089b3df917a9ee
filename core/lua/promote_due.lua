--[[ promote_due: move runs whose due time has come from the delayed zset to their job queue.
KEYS: 1 the delayed zset
ARGV: 1 TAG, 2 limit
Replies: number of runs dispatched
]]
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local n = 0
for _, run_id in ipairs(due) do
  redis.call('ZREM', KEYS[1], run_id)
  if redis.call('HGET', state_key(run_id), 'status') == 'queued' then
    redis.call('HSET', state_key(run_id), 'due', 0)
    dispatch(run_id, now)
    n = n + 1
  end
end
return n
