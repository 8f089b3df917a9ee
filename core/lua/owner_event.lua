--[[ owner_event: a change an owner made outside any run (the API editing its agents' stores);
one event in the partition log, on the owner's own stream (archived like a conversation's).
KEYS: 1 the owner stream's seq counter, 2 the partition log
ARGV: 1 TAG, 2 owner stream id, 3 event type, 4 payload, 5 visibility
Replies: {ok, seq}
]]
local seq = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], '*', 'r', '', 's', seq, 't', ARGV[3], 'p', ARGV[4], 'ts', now_ms(),
  'a', 0, 'vis', ARGV[5], 'c', ARGV[2])
return { 'ok', seq }
