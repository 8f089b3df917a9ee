--[[ agentstream: helpers shared by every script (prepended to each one).

Key layout (mirrors core/keys.py; TAG = "<prefix>:{<partition>}:"):

  TAG run:<id>            stream  the run's events, entry id 0-<seq>
  TAG run:<id>:s          hash    folded run state
  TAG conv:<id>           hash    conversation state (owner, active, seq, deleted; title, meta, updated)
  TAG conv:<id>:w         list    runs waiting for the conversation's active run
  TAG log                 stream  partition log of state events
  TAG q:<agent_key>       stream  job queue, consumer group "workers"
  TAG delayed             zset    run id scored by due time (ms); <prefix>:due (channel) hears
                                  of a new earliest one
  TAG dead                stream  dead letters
  TAG agents              set     agent keys with a queue in this partition
  TAG stats               hash    deployment-wide counters: retries, reclaims, dead_letters,
                                  finished:<status> (HINCRBY in the transition's own script)
  TAG owner:<id>          string  seq counter of an owner's own stream

Every key a script touches shares TAG, hence one Cluster slot. Replies are tables whose first
element is a status word; scripts never raise for an expected refusal.
]]

local GROUP = 'workers'

-- The partition's key names. Every script starts with use_tag(ARGV[1]); a batch (batch.lua) runs
-- calls of several partitions in turn, so the tag is set per call, not once per EVALSHA. Keys are
-- built when first used and kept while the tag stays: a concatenation costs ~0.35 µs in Redis's
-- Lua, and a finish needs two of the four (a claim, one per queue for all its jobs).
local TAG, LOG, STATS, DUE
local KEYS_OF, STREAM_KEY, STATE_KEY -- the run keys last built (stream_key below)
local function use_tag(tag)
  if tag ~= TAG then TAG, LOG, STATS, DUE, STREAM_KEY = tag, nil, nil, nil, nil end
end
local function log_key()
  LOG = LOG or TAG .. 'log'
  return LOG
end
local function stats_key()
  STATS = STATS or TAG .. 'stats'
  return STATS
end
local function delayed_key() return TAG .. 'delayed' end
-- The promoters' pub/sub channel, <prefix>:due (core/keys.py due_channel; a prefix has no ':').
local function due_channel()
  DUE = DUE or string.match(TAG, '^[^:]*') .. ':due'
  return DUE
end
local function dead_key() return TAG .. 'dead' end

local TERMINAL = { succeeded = true, failed = true, cancelled = true, timed_out = true }
local STATUS_OF = {
  ['run.succeeded'] = 'succeeded', ['run.failed'] = 'failed',
  ['run.cancelled'] = 'cancelled', ['run.timed_out'] = 'timed_out',
}

-- Read once per EVALSHA: the calls of a batch all happen at one instant of Redis's clock anyway
-- (a script runs to its end before anything else), and TIME costs a redis.call each.
local NOW, NOW_TEXT
local function now_ms()
  if not NOW then
    local t = redis.call('TIME')
    NOW = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    NOW_TEXT = string.format('%d', NOW)
  end
  return NOW
end

-- A number as redis.call's argument. Lua numbers are doubles: redis.call formats one with
-- "%.17g" (and '..' with "%.14g"), ~0.35 µs each; a run's scripts wrote some 25 of them.
-- '%d' once per value is half that, and a text stays as it is.
local function text(v)
  if type(v) == 'number' then return string.format('%d', v) end
  return v
end

-- This script's time as text (what events and state fields store).
local function now_text()
  now_ms()
  return NOW_TEXT
end

-- The run keys, kept for the run last named: a transition names its run's keys up to four times.
local function stream_key(run_id)
  if run_id ~= KEYS_OF or not STREAM_KEY then
    KEYS_OF, STREAM_KEY = run_id, TAG .. 'run:' .. run_id
    STATE_KEY = STREAM_KEY .. ':s'
  end
  return STREAM_KEY
end
local function state_key(run_id)
  stream_key(run_id)
  return STATE_KEY
end
local function conv_key(conv_id) return TAG .. 'conv:' .. conv_id end

-- One event at this script's time: the run stream always; the partition log unless the event
-- is ephemeral. `seq` and `attempt`: numbers or their text. The run stream's entry has no run id
-- field: its key names the run (36 bytes less per event; see core/codec.py).
local function write_event(run_id, seq, etype, payload, attempt, vis, conv, to_log)
  local s, a, ts = text(seq), text(attempt), now_text()
  redis.call('XADD', stream_key(run_id), '0-' .. s,
    's', s, 't', etype, 'p', payload, 'ts', ts, 'a', a, 'vis', vis, 'c', conv)
  if to_log then
    redis.call('XADD', log_key(), '*',
      'r', run_id, 's', s, 't', etype, 'p', payload, 'ts', ts, 'a', a, 'vis', vis, 'c', conv)
  end
end

-- Next seq of a run, stored back at once (lifecycle scripts write one event at a time).
local function next_seq(st)
  return redis.call('HINCRBY', st, 'seq', 1)
end

-- The run's input: the payload of its first event, run.queued.
local function run_input(run_id)
  local first = redis.call('XRANGE', stream_key(run_id), '0-1', '0-1')
  if first[1] then
    local fields = first[1][2]
    for i = 1, #fields, 2 do
      if fields[i] == 'p' then return fields[i + 1] end
    end
  end
  return ''
end

-- An input up to this size rides in the job entry too (claiming it then reads no run stream);
-- a larger one is read from the run stream when the job is begun, not kept twice while queued.
local INLINE_INPUT_BYTES = 4096

-- A queued run waits in the delayed zset until `due`. Each worker's promoter sleeps until the
-- earliest due time it knows of; a run due before this partition's earliest tells them all (the
-- wait in ms, PUBLISHed). A later one moves nobody's wake-up, so a stream of retries each due
-- after the last publishes nothing.
local function delay(run_id, due, now)
  local key = delayed_key()
  local head = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  redis.call('ZADD', key, due, run_id)
  if not head[2] or due < tonumber(head[2]) then
    redis.call('PUBLISH', due_channel(), text(math.max(0, due - now)))
  end
end

-- Put a queued run where a worker finds it: the job queue, or the delayed zset if not yet due.
-- `input`: the run's input if the caller has it (else read here). Returns the job entry's id
-- (nil: delayed), which the caller records as the state's `job`.
local function enqueue(run_id, agent, due, now, input)
  if due > now then
    delay(run_id, due, now)
    return nil
  end
  local queue = TAG .. 'q:' .. agent
  if redis.call('SADD', TAG .. 'agents', agent) == 1 then
    redis.pcall('XGROUP', 'CREATE', queue, GROUP, '0', 'MKSTREAM')
  end
  input = input or run_input(run_id)
  if #input <= INLINE_INPUT_BYTES then
    return redis.call('XADD', queue, '*', 'r', run_id, 'p', input)
  end
  return redis.call('XADD', queue, '*', 'r', run_id)
end

-- enqueue a run whose state holds its agent and due time (a retry, a scheduled or waiting run).
local function dispatch(run_id, now)
  local st = state_key(run_id)
  local f = redis.call('HMGET', st, 'agent', 'due')
  local job = enqueue(run_id, f[1], tonumber(f[2]) or 0, now)
  if job then redis.call('HSET', st, 'job', job) end
end

-- The conversation's active run ended: hand the conversation to the next waiting run.
local function release_conversation(conv_id, run_id, now)
  local ck = conv_key(conv_id)
  redis.call('LREM', ck .. ':w', 0, run_id)
  if redis.call('HGET', ck, 'active') ~= run_id then return end
  while true do
    local next_id = redis.call('LPOP', ck .. ':w')
    if not next_id then
      redis.call('HDEL', ck, 'active')
      return
    end
    if redis.call('HGET', state_key(next_id), 'status') == 'queued' then
      redis.call('HSET', ck, 'active', next_id)
      dispatch(next_id, now)
      return
    end
  end
end

-- A job entry done with: acknowledged and deleted, so XLEN is the backlog.
local function remove_job(queue, job)
  redis.call('XACK', queue, GROUP, job)
  redis.call('XDEL', queue, job)
end

-- Drop the run's job entry from its queue (and forget it in the state).
local function drop_job(st)
  local f = redis.call('HMGET', st, 'job', 'agent')
  if f[1] and f[1] ~= '' then
    remove_job(TAG .. 'q:' .. f[2], f[1])
    redis.call('HSET', st, 'job', '')
  end
end

-- The state fields the transitions read, in ONE call (each redis.call costs more than the
-- command itself: fewer calls is what keeps a run's Redis CPU low).
local function read_run(st)
  local f = redis.call('HMGET', st, 'status', 'attempt', 'seq', 'conv', 'job', 'agent', 'cancel', 'emitted')
  return {
    status = f[1], attempt = f[2] or '0', seq = tonumber(f[3]) or 0, conv = f[4] or '',
    job = f[5] or '', agent = f[6] or '', cancel = f[7] or '0', emitted = tonumber(f[8]) or 0,
  }
end

-- Any terminal transition: event, status, job dropped, conversation released, keys expire.
-- `f`: the run's fields as read_run returns them, seq = the last event written (nil: read here).
local function terminate(run_id, etype, payload, vis, retention_s, now, f)
  local st = state_key(run_id)
  f = f or read_run(st)
  local seq = f.seq + 1
  local status = STATUS_OF[etype]
  local s = text(seq)
  write_event(run_id, s, etype, payload, f.attempt, vis, f.conv, true)
  redis.call('HSET', st, 'seq', s, 'status', status, 'finished', now_text(), 'job', '')
  redis.call('HINCRBY', stats_key(), 'finished:' .. status, '1')
  if f.job ~= '' then remove_job(TAG .. 'q:' .. f.agent, f.job) end
  -- only a queued run can wait in the delayed zset (a retry, a scheduled run)
  if f.status ~= 'running' then redis.call('ZREM', delayed_key(), run_id) end
  if f.conv ~= '' then release_conversation(f.conv, run_id, now) end
  if tonumber(retention_s) > 0 then
    redis.call('EXPIRE', st, retention_s)
    redis.call('EXPIRE', stream_key(run_id), retention_s)
  end
  return seq
end

-- How many of a worker's n events, numbered from `first_index` within its attempt, were written
-- already: a batch sent again after its reply was lost (Redis died after writing it) must not
-- write its events twice. 0 without numbers (first_index 0).
local function already_written(f, first_index, n)
  if first_index <= 0 then return 0 end
  return math.max(0, math.min(n, f.emitted - first_index + 1))
end

-- (nil, fields) when `attempt` is the run's current, running attempt; otherwise a refusal reply.
local function refuse_unless_current(st, attempt)
  local f = read_run(st)
  if not f.status then return { 'no_run' } end
  if TERMINAL[f.status] then return { 'terminal', f.status } end
  if tonumber(f.attempt) ~= tonumber(attempt) then return { 'fenced', f.attempt } end
  if f.status ~= 'running' then return { 'not_running', f.status } end
  return nil, f
end

-- The attempts that count against max_attempts: all begun but those handed back at a worker's
-- shutdown (hand_back), which were no failure of the run. Read only when the cap is reached.
local function attempts_spent(st, attempt)
  return attempt - (tonumber(redis.call('HGET', st, 'given')) or 0)
end

-- The fields begin_job needs, in one HMGET (nil status: no such run here).
local function read_for_begin(st)
  return redis.call('HMGET', st, 'status', 'attempt', 'max_attempts', 'job', 'timeout_ms', 'conv', 'cancel',
    'seq', 'agent')
end

-- Start the next attempt of the run a worker claimed `job` for (f: read_for_begin, status set).
-- `b`: {worker, vis run.started, payload run.started, vis run.failed, payload run.failed
-- (attempts exhausted), retention_s}; `input`: the job's copy of the run's input (nil: none,
-- read it from the run stream).
-- Replies as begin_attempt's.
local function begin_job(run_id, job, queue, f, b, now, input)
  if TERMINAL[f[1]] or f[4] ~= job then
    remove_job(queue, job)
    return { 'dropped', TERMINAL[f[1]] and f[1] or 'stale job entry' }
  end
  local attempt = tonumber(f[2])
  local st = state_key(run_id)
  -- still 'running': its worker's lease expired (crash, stall), or it handed the attempt back at
  -- shutdown (hand_back: not a reclaim)
  if f[1] == 'running' and redis.call('HGET', st, 'given_at') ~= f[2] then
    redis.call('HINCRBY', stats_key(), 'reclaims', 1)
  end
  if attempt >= tonumber(f[3]) and attempts_spent(st, attempt) >= tonumber(f[3]) then
    -- every allowed attempt started and none finished: the job keeps killing its workers
    local seq = terminate(run_id, 'run.failed', b[5], b[4], b[6], now, {
      status = f[1], attempt = f[2], seq = tonumber(f[8]) or 0, conv = f[6] or '', job = job, agent = f[9] or '',
    })
    redis.call('XADD', dead_key(), '*', 'r', run_id, 'job', job, 'reason', 'max attempts exceeded', 'attempts', attempt, 'ts', now_text())
    redis.call('HINCRBY', stats_key(), 'dead_letters', 1)
    return { 'dead', seq }
  end
  attempt = attempt + 1
  local seq = (tonumber(f[8]) or 0) + 1
  local a, s = text(attempt), text(seq)
  if attempt == 1 then
    redis.call('HSET', st, 'status', 'running', 'attempt', a, 'worker', b[1], 'seq', s, 'emitted', '0',
      'started', now_text())
  else
    redis.call('HSET', st, 'status', 'running', 'attempt', a, 'worker', b[1], 'seq', s, 'emitted', '0')
  end
  write_event(run_id, s, 'run.started', b[3], a, b[2], f[6] or '', true)
  return { 'started', attempt, seq, input or run_input(run_id), f[7] or '0', f[5] or '0', f[6] or '' }
end
