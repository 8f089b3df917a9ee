--[[ promote_due: move runs whose due time has come from the delayed zset to their job queue.
KEYS: 1 the delayed zset
ARGV: 1 TAG, 2 limit
Replies: {runs dispatched, ms until the earliest run left is due (-1: none left)}; the time is
Redis's, so the caller's clock, however skewed, is not asked
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
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if not head[2] then return { n, -1 } end
return { n, math.max(0, tonumber(head[2]) - now) }
