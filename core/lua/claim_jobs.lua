--[[ claim_jobs: read new jobs from several queues and begin an attempt of each, in one call (what
one XREADGROUP and then a begin_attempt per job did in two round trips and a script call per job).
A job this script cannot vouch for (no run id, not a run id, no state in this partition) is only
read, as XREADGROUP would: the worker checks it and dead-letters it, or begins it, as it does any
job it read itself.
KEYS: the queues (one slot on a cluster)
ARGV: 1 TAG of KEYS[1], 2 count per queue, 3 worker id (the consumer), 4 vis run.started,
      5 payload run.started, 6 vis run.failed, 7 payload run.failed (attempts exhausted),
      8 retention_s (3-8: begin_job's table b), then the TAG of each queue, in KEYS order
Replies: one table per job read, in order: {queue index (1-based), job id, run id, begin_attempt's
reply...}, or {queue index, job id, run id or '', 'read'} for a job only read
]]
local n = #KEYS
local args = { 'GROUP', GROUP, ARGV[3], 'COUNT', ARGV[2], 'STREAMS' }
local index = {}
for i = 1, n do
  args[#args + 1] = KEYS[i]
  index[KEYS[i]] = i
end
for _ = 1, n do args[#args + 1] = '>' end
local read = redis.call('XREADGROUP', unpack(args))
if not read then return {} end

local b = { unpack(ARGV, 3, 8) }
local UUID = '^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$'
local now = now_ms()
local out = {}
-- {{queue, entries}, ...}; fakeredis (2.x) hands a script the pairs flattened: accept both
local streams = read
if type(read[1]) == 'string' then
  streams = {}
  for i = 1, #read, 2 do streams[#streams + 1] = { read[i], read[i + 1] } end
end
for _, stream in ipairs(streams) do
  local queue = stream[1]
  local qi = index[queue]
  use_tag(ARGV[8 + qi])
  for _, entry in ipairs(stream[2]) do
    local job, fields, run_id = entry[1], entry[2], ''
    for i = 1, #fields, 2 do
      if fields[i] == 'r' then run_id = fields[i + 1] end
    end
    local reply
    if string.find(run_id, UUID) and not string.find(run_id, '%u') then
      local f = read_for_begin(state_key(run_id))
      if f[1] then reply = begin_job(run_id, job, queue, f, b, now) end
    end
    local row = { qi, job, run_id }
    for _, value in ipairs(reply or { 'read' }) do row[#row + 1] = value end
    out[#out + 1] = row
  end
end
return out
