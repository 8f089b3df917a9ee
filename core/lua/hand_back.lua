--[[ hand_back: a stopping worker gives its begun attempt back unfinished; the next worker to claim
the job begins a new attempt, which neither counts this one against max_attempts nor as a reclaim
(a deploy is no failure of the run).
KEYS: 1 run state
ARGV: 1 TAG, 2 run_id, 3 attempt
Replies: {given} | refusals as in append (the attempt already ended, or was fenced out)
]]
local st = KEYS[1]
local refusal = refuse_unless_current(st, ARGV[3])
if refusal then return refusal end
redis.call('HINCRBY', st, 'given', 1)
redis.call('HSET', st, 'given_at', ARGV[3])
return { 'given' }
