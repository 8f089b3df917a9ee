--[[ heartbeat: renew the leases (PEL idle time) of a worker's jobs in one queue, but only for
attempts that are still current; report the ones that were fenced out or asked to cancel.
KEYS: 1 the queue
ARGV: 1 TAG, 2 worker id, 3 n, then n x (run_id, attempt, job id)
Replies: n statuses: 'ok' | 'cancel' | 'fenced' | 'gone'
]]
local out = {}
local n = tonumber(ARGV[3])
for i = 0, n - 1 do
  local run_id, attempt, job = ARGV[4 + i * 3], ARGV[5 + i * 3], ARGV[6 + i * 3]
  local f = redis.call('HMGET', state_key(run_id), 'status', 'attempt', 'cancel', 'job')
  if not f[1] or TERMINAL[f[1]] then
    out[#out + 1] = 'gone'
  elseif f[1] ~= 'running' or f[2] ~= attempt or f[4] ~= job then
    out[#out + 1] = 'fenced'
  else
    redis.call('XCLAIM', KEYS[1], GROUP, ARGV[2], 0, job, 'JUSTID')
    if f[3] == '1' then out[#out + 1] = 'cancel' else out[#out + 1] = 'ok' end
  end
end
return out
