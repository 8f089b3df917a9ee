--[[ batch: several script calls in one EVALSHA, each run as its own script would run alone.
Each call is still one transition of one partition; the batch only shares the cost of calling
a script (on a cluster the batcher groups calls by slot, so every key here shares one slot).
KEYS: every call's keys, in call order
ARGV: 1 n, then n x (script name, nkeys, nargs, args...)
Replies: n replies, each the call's own reply; {'agentstream:error', message} for a call that
raised (its error, as EVALSHA would have returned it; the other calls are unaffected)
]]
-- t[from .. from + n - 1] as a table of its own. unpack sizes it once (a copy loop grows it a
-- value at a time, rehashing as it goes), but Lua's C stack takes at most ~8,000 values.
local function slice(t, from, n)
  if n <= 4000 then return { unpack(t, from, from + n - 1) } end
  local out = {}
  for j = 1, n do out[j] = t[from + j - 1] end
  return out
end

local out = {}
local a, k = 2, 1
for c = 1, tonumber(ARGV[1]) do
  local script = SCRIPTS[ARGV[a]]
  local nkeys, nargs = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local keys, args = slice(KEYS, k, nkeys), slice(ARGV, a + 3, nargs)
  k, a = k + nkeys, a + 3 + nargs
  local ok, reply = pcall(script, keys, args)
  if not ok then
    reply = { 'agentstream:error', type(reply) == 'table' and reply.err or tostring(reply) }
  elseif reply == nil then
    reply = false -- a nil would end the reply array here; false is sent as a nil reply
  end
  out[c] = reply
end
return out
