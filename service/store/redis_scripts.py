"""The Lua scripts of the Redis store (:mod:`service.store.redis`): every atomic change.

Each script touches one session's keys (which share the hash tag ``{<session_id>}``), plus, for
``CREATE``, ``TOUCH`` and ``APPEND``, one global zset that lists sessions (``movinet:sessions``,
``movinet:expiry``, ``movinet:ready``), so that a record and its listings never disagree. On a
Redis Cluster (where a script may only touch one slot) ``TOUCH`` and ``APPEND`` are called without
the zset and the caller lists the session in a second call; ``CREATE`` is then ``ADMIT`` (the
session index alone: the limit) followed by ``RECORD`` (see :mod:`service.store.redis_shards`).
"""

from __future__ import annotations

from typing import Any

# KEYS: session, sessions (zset), expiry (zset), the client's sessions (set). ARGV: session_id,
# max_sessions (0: no limit), created_at, expires_at, max_per_client (0: no limit; -1: the record
# has no client, nothing is counted), field, value, ...
# Creates the record unless it exists or the store or the client is full; returns 1, 0 (exists),
# -1 (full) or -2 (the client holds its maximum).
CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local limit = tonumber(ARGV[2])
if limit > 0 and redis.call('ZCARD', KEYS[2]) >= limit then return -1 end
local per_client = tonumber(ARGV[5])
if per_client > 0 and redis.call('SCARD', KEYS[4]) >= per_client then return -2 end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
if per_client >= 0 then redis.call('SADD', KEYS[4], ARGV[1]) end
return 1
"""

# KEYS: sessions (zset). ARGV: session_id, max_sessions (0: no limit), created_at.
# Lists a new session unless the limit is reached; returns 1 (listed), 0 (listed already) or -1 (full).
ADMIT = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
local limit = tonumber(ARGV[2])
if limit > 0 and redis.call('ZCARD', KEYS[1]) >= limit then return -1 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""

# KEYS: the client's sessions (set). ARGV: session_id, max_per_client (0: no limit). Counts a new
# session in the client's quota unless it is full; returns 1 or -2 (the client holds its maximum).
ADMIT_CLIENT = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 1 end
local per_client = tonumber(ARGV[2])
if per_client > 0 and redis.call('SCARD', KEYS[1]) >= per_client then return -2 end
redis.call('SADD', KEYS[1], ARGV[1])
return 1
"""

# KEYS: session. ARGV: field, value, ... Writes the record unless it exists; returns 1 or 0.
RECORD = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""

# KEYS: session. ARGV: field, delta, ... (no-op on a deleted session)
ADD = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 1, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""

# KEYS: session. ARGV: field, value, ...
SET = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""

# KEYS: session, frames, results, checkpoint, events, expiry (zset). ARGV: now, grace_s, session_id,
# split ('1': no expiry key given; the deadline is returned for the caller to list).
# Moves the idle deadline (in the record and the expiry zset, so a deleted session leaves no orphan).
TOUCH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local now = tonumber(ARGV[1])
local last = tonumber(redis.call('HGET', KEYS[1], 'last_active_at') or '0')
if now > last then
  redis.call('HSET', KEYS[1], 'last_active_at', ARGV[1])
  last = now
end
local timeout = tonumber(redis.call('HGET', KEYS[1], 'idle_timeout_s') or '60')
local ttl = math.floor((timeout + tonumber(ARGV[2])) * 1000)
local split = ARGV[4] == '1'
for i = 1, split and #KEYS or #KEYS - 1 do redis.call('PEXPIRE', KEYS[i], ttl) end
local deadline = last + timeout
-- A session that never got a frame expires unused_timeout_s after its creation (SessionRecord.expires_at).
local unused = tonumber(redis.call('HGET', KEYS[1], 'unused_timeout_s') or '0')
if unused > 0 and tonumber(redis.call('HGET', KEYS[1], 'frames_received') or '0') == 0 then
  deadline = math.min(deadline, tonumber(redis.call('HGET', KEYS[1], 'created_at')) + unused)
end
if split then return string.format('%.17g', deadline) end
redis.call('ZADD', KEYS[#KEYS], deadline, ARGV[3])
return 1
"""

# The frames after the committed progress: a counter in the session hash ('pending': an append adds
# its frame, a backlog drop and a commit take theirs off), so no script copies the payloads it counts.
# A record from before the counter gets it counted once from the log. Call it before changing
# processed_seq or the log.
PENDING_LUA = """
local function pending(session, frames)
  local count = redis.call('HGET', session, 'pending')
  if count then return tonumber(count) end
  local processed = redis.call('HGET', session, 'processed_seq') or '0'
  count = #redis.call('XRANGE', frames, '(' .. processed .. '-0', '+')
  redis.call('HSET', session, 'pending', count)
  return count
end
"""

# KEYS: session, frames[, ready (zset): left out on a Cluster]. ARGV: keep, pts, frame_index, received_at, height, width,
# data, next_frame_index (frame_index + 1, as a decimal string), session_id, now_ms, codec ('' = raw uint8).
# Returns {seq, dropped}; {-1, 0} when the session is gone. One round trip: the frame, the backlog
# policy, the record's counters and the ready set. Only over the backlog limit does it read frames:
# those taken but not committed (kept), and the oldest waiting ones it drops.
# The same append again (grid index and arrival time equal to the last one's) is answered with
# that frame's seq and logs nothing: a Cluster client resends a script whose reply it did not get
# (a timeout while a node is busy migrating keys), and the frame must not be logged twice.
APPEND = PENDING_LUA + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 0} end
local this = ARGV[3] .. '@' .. ARGV[4]
if redis.call('HGET', KEYS[1], 'last_append') == this then
  return {tonumber(redis.call('HGET', KEYS[1], 'last_seq')), 0}
end
local waiting = pending(KEYS[1], KEYS[2]) + 1
local seq = redis.call('HINCRBY', KEYS[1], 'last_seq', 1)
-- The session's frame grid goes on after this frame, even if the gateway dies before it says so.
-- (Compared as numbers, stored as the decimal string given: a Lua number would print as 5e+17.)
if tonumber(ARGV[8]) > tonumber(redis.call('HGET', KEYS[1], 'next_frame_index') or '0') then
  redis.call('HSET', KEYS[1], 'next_frame_index', ARGV[8])
end
local entry = {'pts', ARGV[2], 'fi', ARGV[3], 't', ARGV[4], 'h', ARGV[5], 'w', ARGV[6], 'data', ARGV[7]}
if ARGV[11] and ARGV[11] ~= '' then table.insert(entry, 'c'); table.insert(entry, ARGV[11]) end
redis.call('XADD', KEYS[2], seq .. '-0', unpack(entry))
local keep = tonumber(ARGV[1])
local dropped = 0
if waiting > keep then
  local processed = redis.call('HGET', KEYS[1], 'processed_seq') or '0'
  local taken = redis.call('HGET', KEYS[1], 'taken_seq') or '0'
  local floor = processed
  local excess = waiting - keep
  if tonumber(taken) > tonumber(processed) then  -- a frame a worker has taken is never dropped
    floor = taken
    excess = excess - #redis.call('XRANGE', KEYS[2], '(' .. processed .. '-0', taken .. '-0')
  end
  if excess > 0 then
    for _, doomed in ipairs(redis.call('XRANGE', KEYS[2], '(' .. floor .. '-0', '+', 'COUNT', excess)) do
      redis.call('XDEL', KEYS[2], doomed[1])
      dropped = dropped + 1
    end
  end
end
redis.call('HSET', KEYS[1], 'pending', waiting - dropped, 'last_append', this)
redis.call('HINCRBY', KEYS[1], 'frames_received', 1)
if dropped > 0 then redis.call('HINCRBY', KEYS[1], 'frames_dropped', dropped) end
if #KEYS >= 3 then redis.call('ZADD', KEYS[3], 'NX', ARGV[10], ARGV[9]) end
return {seq, dropped}
"""

# KEYS: session, frames. Returns the number of frames after the committed progress.
BACKLOG = PENDING_LUA + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return pending(KEYS[1], KEYS[2])
"""

# KEYS: session, lease, checkpoint, frames. ARGV: worker, ttl_ms, dead holder's lease value ('' = none).
CLAIM = PENDING_LUA + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'gone'} end
local ttl = redis.call('PTTL', KEYS[2])
if ttl > 0 then
  local holder = redis.call('GET', KEYS[2])
  -- ARGV[3]: the lease of a worker whose heartbeat is gone (dead): it may be taken over now.
  if ARGV[3] == '' or holder ~= ARGV[3] then return {'held', ttl, holder} end
end
if pending(KEYS[1], KEYS[4]) == 0 then return {'idle'} end
local token = redis.call('HINCRBY', KEYS[1], 'fence', 1)
redis.call('SET', KEYS[2], ARGV[1] .. ' ' .. token, 'PX', ARGV[2])
local processed = redis.call('HGET', KEYS[1], 'processed_seq') or '0'
local checkpoint = redis.call('HMGET', KEYS[3], 'seq', 'data')
return {'ok', token, processed, checkpoint[1] or '0', checkpoint[2] or ''}
"""

# KEYS: session, lease, frames. ARGV: owner, cursor. The first frame after the cursor, marked taken;
# {} when there is none yet, -1 when the lease is stale.
TAKE = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end
local entries = redis.call('XRANGE', KEYS[3], '(' .. ARGV[2] .. '-0', '+', 'COUNT', 1)
if #entries == 0 then return {} end
local seq = tonumber(string.match(entries[1][1], '^%d+'))
if seq > tonumber(redis.call('HGET', KEYS[1], 'taken_seq') or '0') then
  redis.call('HSET', KEYS[1], 'taken_seq', seq)
end
return entries[1]
"""

# A key a script creates (the first result, event or checkpoint) lives as long as the session's
# record from the start, not only from the next TOUCH (which renews them all).
SAME_TTL_LUA = """
local function same_ttl(session, ...)
  local ttl = redis.call('PTTL', session)
  if ttl <= 0 then return end
  for _, key in ipairs({...}) do
    if redis.call('PTTL', key) == -1 then redis.call('PEXPIRE', key, ttl) end
  end
end
"""

SAVE_CHECKPOINT_LUA = """
local function save_checkpoint(checkpoint, frames, seq, data, owner)
  if tonumber(seq) > 0 then
    redis.call('HSET', checkpoint, 'seq', seq, 'data', data, 'owner', owner)
    redis.call('XTRIM', frames, 'MINID', (tonumber(seq) + 1) .. '-0')
  end
end
"""

# KEYS: session, lease, results, frames, checkpoint, events.
# ARGV: owner, ttl_ms, results_cap, checkpoint_seq (0 = none), checkpoint_data, events_cap, then
# seq, result, events (JSON list, '' = none) for each result.
# Returns the session's backlog after the commit, or -1 (stale lease / session gone: nothing changed).
COMMIT = SAME_TTL_LUA + SAVE_CHECKPOINT_LUA + PENDING_LUA + """
if redis.call('GET', KEYS[2]) ~= ARGV[1] or redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local waiting = pending(KEYS[1], KEYS[4])
local processed = tonumber(redis.call('HGET', KEYS[1], 'processed_seq') or '0')
local dropped = redis.call('HGET', KEYS[1], 'frames_dropped') or '0'
local appended = 0
for i = 7, #ARGV, 3 do
  local seq = tonumber(ARGV[i])
  if seq > processed then
    redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[3], seq .. '-0', 'r', ARGV[i + 1], 'd', dropped)
    if ARGV[i + 2] ~= '' then redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[6], '*', 'e', ARGV[i + 2]) end
    processed = seq
    appended = appended + 1
  end
end
if appended > 0 then
  -- Each result is of a frame this worker took: logged, after the progress, never dropped.
  waiting = math.max(0, waiting - appended)
  redis.call('HSET', KEYS[1], 'processed_seq', processed, 'pending', waiting)
  redis.call('HINCRBY', KEYS[1], 'frames_processed', appended)
end
save_checkpoint(KEYS[5], KEYS[4], ARGV[4], ARGV[5], ARGV[1])
same_ttl(KEYS[1], KEYS[3], KEYS[5], KEYS[6])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return waiting
"""

# KEYS: producer, session. ARGV: owner, ttl_ms. Take or renew the slot; 0 when another owner holds
# it; 2 (and no slot) when the session is gone: a renewal after a delete must not leave a key behind.
PRODUCER = """
if redis.call('EXISTS', KEYS[2]) == 0 then return 2 end
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: producer. ARGV: owner.
UNPRODUCE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""

# KEYS: lease. ARGV: owner, ttl_ms.
RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: session, lease, checkpoint, frames. ARGV: owner, checkpoint_seq, checkpoint_data.
# Returns the frames still waiting, or -1 when the lease was already lost.
RELEASE = SAME_TTL_LUA + SAVE_CHECKPOINT_LUA + PENDING_LUA + """
if redis.call('GET', KEYS[2]) ~= ARGV[1] or redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
-- A checkpoint ahead of the committed progress is no resume point (a tick cut short): not saved.
if tonumber(ARGV[2]) <= tonumber(redis.call('HGET', KEYS[1], 'processed_seq') or '0') then
  save_checkpoint(KEYS[3], KEYS[4], ARGV[2], ARGV[3], ARGV[1])
  same_ttl(KEYS[1], KEYS[3])
end
redis.call('DEL', KEYS[2])
return pending(KEYS[1], KEYS[4])
"""


class Scripts:
    """Every script above, registered on a client (``scripts.append(keys=..., args=...)``)."""

    def __init__(self, client: Any) -> None:
        for name in ("CREATE", "ADMIT", "ADMIT_CLIENT", "RECORD", "ADD", "SET", "TOUCH", "APPEND", "BACKLOG", "CLAIM", "TAKE",
                     "COMMIT", "RENEW", "RELEASE", "PRODUCER", "UNPRODUCE"):
            setattr(self, name.lower(), client.register_script(globals()[name]))
