--[[ conversation: create, update or delete a conversation; one event in the partition log.
The hash keeps what a read needs before the projector has caught up (the event's time as
`updated`, the current title and metadata as `title` / `meta`), so a conversation reads back as
written at once; a deleted conversation drops its copies.
KEYS: 1 conversation hash, 2 the partition log
ARGV: 1 TAG, 2 conv_id, 3 owner, 4 event type, 5 payload, 6 visibility, 7 agent_key, then
      field / value pairs the event sets: 'title' (text), 'meta' (the metadata as JSON)
Replies: {ok, seq} | {exists} | {no_conversation} | {conversation_deleted}
]]
local ck, conv, owner, etype = KEYS[1], ARGV[2], ARGV[3], ARGV[4]
-- what this event sets, written in one HSET with the rest
local set = { 'updated', now_text() }
for i = 8, #ARGV - 1, 2 do
  if ARGV[i] == 'title' or ARGV[i] == 'meta' then
    set[#set + 1], set[#set + 2] = ARGV[i], ARGV[i + 1]
  end
end
local seq
if etype == 'conversation.created' then
  if redis.call('EXISTS', ck) == 1 then return { 'exists' } end
  redis.call('HSET', ck, 'owner', owner, 'agent', ARGV[7], 'seq', 1, 'deleted', 0, 'created', now_text(),
    unpack(set))
  seq = 1
else
  local f = redis.call('HMGET', ck, 'owner', 'deleted')
  if not f[1] or f[1] ~= owner then return { 'no_conversation' } end
  if f[2] == '1' then return { 'conversation_deleted' } end
  seq = redis.call('HINCRBY', ck, 'seq', 1)
  if etype == 'conversation.deleted' then
    redis.call('HSET', ck, 'deleted', 1, 'updated', now_text())
    redis.call('HDEL', ck, 'title', 'meta')
  else
    redis.call('HSET', ck, unpack(set))
  end
end
redis.call('XADD', KEYS[2], '*', 'r', '', 's', seq, 't', etype, 'p', ARGV[5], 'ts', now_text(),
  'a', 0, 'vis', ARGV[6], 'c', conv)
return { 'ok', seq }
