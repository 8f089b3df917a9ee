--[[ claim_jobs: read up to `count` new jobs from several queues, in the order given, and begin an
attempt of each, in one call (what one XREADGROUP and then a begin_attempt per job did in two round
trips and a script call per job). Asking each queue for what is still missing never reads more jobs
than the worker can start, and one call covers every queue (nothing found means all are empty).
A job this script cannot vouch for (no run id, no state under that id in this partition) is only
read, as XREADGROUP would: the worker checks it and dead-letters it, or begins it, as it does any
job it read itself.
KEYS: the queues (one slot on a cluster)
ARGV: 1 TAG of KEYS[1], 2 count (in all), 3 worker id (the consumer), 4 vis run.started,
      5 payload run.started, 6 vis run.failed, 7 payload run.failed (attempts exhausted),
      8 retention_s (3-8: begin_job's table b), then the TAG of each queue, in KEYS order
Replies: one table per job read, in order: {queue index (1-based), job id, run id, begin_attempt's
reply...}, or {queue index, job id, run id or '', 'read'} for a job only read
]]
local b = { unpack(ARGV, 3, 8) }
local now = now_ms()
local out = {}
local left = tonumber(ARGV[2])
for qi = 1, #KEYS do
  if left <= 0 then break end
  local queue = KEYS[qi]
  local read = redis.call('XREADGROUP', 'GROUP', GROUP, ARGV[3], 'COUNT', left, 'STREAMS', queue, '>')
  -- {{queue, entries}}, or nil; fakeredis (2.x) hands a script the pair flattened, or {}
  local entries = {}
  if read and read[1] then entries = type(read[1]) == 'string' and read[2] or read[1][2] end
  left = left - #entries
  use_tag(ARGV[8 + qi])
  for _, entry in ipairs(entries) do
    local job, fields, run_id, input = entry[1], entry[2], '', nil
    for i = 1, #fields, 2 do
      if fields[i] == 'r' then run_id = fields[i + 1] elseif fields[i] == 'p' then input = fields[i + 1] end
    end
    local reply
    -- Begun only if this partition holds a state for exactly this id: only a run's own id names
    -- an existing `run:<id>:s` key (no pattern match: ~2.4 µs a job in Redis's Lua).
    if #run_id == 36 then
      local f = read_for_begin(state_key(run_id))
      if f[1] then reply = begin_job(run_id, job, queue, f, b, now, input) end
    end
    out[#out + 1] = { qi, job, run_id, unpack(reply or { 'read' }) }
  end
end
return out
