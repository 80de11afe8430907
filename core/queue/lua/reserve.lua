-- Reserve the oldest ready jobs of one queue (up to a limit).
-- KEYS[1] ready zset      queues:{q}           (score = dispatch sequence: FIFO)
-- KEYS[2] delayed zset    queues:{q}:delayed   (score = due time)
-- KEYS[3] reserved zset   queues:{q}:reserved  (score = reservation expiry)
-- KEYS[4] jobs hash       queues:{q}:jobs      (<id> = payload, <id>:seq = "seq sec usec[ due]")
-- KEYS[5] notify list     queues:{q}:notify
-- KEYS[6] state hash      queues:{q}:state     (<id>:attempts, <id>:token, <id>:failing, <id>:releases)
-- KEYS[7] finished zset   queues:{q}:done      (ids finished within the replay window)
-- KEYS[8] claim, optional queues:{q}:claim:<claim>  (the ids this call took, in order; cmsgpack)
-- ARGV[1] visibility timeout in seconds; ARGV[2] the reservation token's stem: the claim when
-- KEYS[8] is given, else random from the client (job n of this call gets token stem..':'..n);
-- ARGV[3] how many due or expired jobs to move per call (bounds the script's run time);
-- ARGV[4] how many jobs to reserve at most (0 with a claim: recover only)
-- Returns {count, now, id1, payload1, attempts1, failing1, n1, seq1, releases1, id2, ...}
-- (now: the server's time of this call, "sec usec"; failing: the mark mark_failing.lua left, else
-- nil; n: the job's place in its call, its token is stem..':'..n; seq: <id>:seq; releases:
-- releases that were not failed tries, else nil) or {false, wake}: seconds until a delayed job
-- comes due or a reservation expires ('' if neither), so an idle worker knows how long to block.
-- Either is followed by the ids of jobs dropped because they finished within the window.
--
-- A claim already recorded means this call ran before and its answer was lost (the client
-- retried it, or the worker calls recover): the jobs it took that still carry its tokens are
-- handed back, renewed, no attempt counted, and nothing else is reserved. Only if none is still
-- held does the call reserve afresh.
--
-- Atomic because moving due and expired jobs back, popping, counting the attempt and recording
-- the reservation must be one step: done in several, two workers could both move the same job,
-- or a popped job not yet in the reserved set would look lost and be handed out twice.
local vt, token, batch, limit = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4] or '1')
local t = redis.call('TIME')
local clock = t[1] .. ' ' .. t[2]
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000

-- A job's <id>:seq with its push time; one pushed by an older release has none (only the
-- sequence): it counts from its first reserve on.
local function pushed_at(id, seq)
    if seq and string.find(seq, ' ', 1, true) then return seq end
    seq = (seq or '0') .. ' ' .. clock
    redis.call('HSET', KEYS[4], id .. ':seq', seq)
    return seq
end

-- The jobs a call with this claim took before and still holds, renewed ({count, now, rows...}).
local function still_held(packed)
    local rows, count = {0, clock}, 0
    for n, id in ipairs(cmsgpack.unpack(packed)) do
        local state = redis.call('HMGET', KEYS[6], id .. ':token', id .. ':attempts', id .. ':failing',
                                 id .. ':releases')
        local job = state[1] == token .. ':' .. n and redis.call('HMGET', KEYS[4], id, id .. ':seq')
        if job and job[1] then
            redis.call('ZADD', KEYS[3], 'XX', now + vt, id)
            count = count + 1
            local at = #rows
            rows[at + 1], rows[at + 2], rows[at + 3], rows[at + 4] = id, job[1], state[2], state[3]
            rows[at + 5], rows[at + 6], rows[at + 7] = n, pushed_at(id, job[2]), state[4]
        end
    end
    rows[1] = count
    return rows, count
end
local claimed = KEYS[8] and redis.call('GET', KEYS[8])     -- set only if this call ran before
if claimed then
    local rows, count = still_held(claimed)
    if count > 0 then return rows end
end

-- Due delayed jobs and expired reservations (their worker died) go back to the ready set at
-- their dispatch position, so due jobs run in the order they were dispatched, as on the database.
-- Clearing the token fences off the dead worker's late acknowledge or release; a failing mark
-- stays, so the next worker finishes the failure instead of running the job again.
local function make_ready(ids)
    for _, id in ipairs(ids) do
        local seq = tonumber(string.match(redis.call('HGET', KEYS[4], id .. ':seq') or '0', '^-?%d+')) or 0
        redis.call('ZADD', KEYS[1], seq, id)
    end
end
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, batch)
if #due > 0 then
    redis.call('ZREM', KEYS[2], unpack(due))
    make_ready(due)
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, batch)
if #expired > 0 then
    redis.call('ZREM', KEYS[3], unpack(expired))
    make_ready(expired)
    for _, id in ipairs(expired) do redis.call('HDEL', KEYS[6], id .. ':token') end
end

-- Pop, count the attempt and record the reservation. An id whose payload is gone (cleared while
-- it waited) is skipped; one that finished within the window (written back behind push's back: a
-- replay) is deleted unrun and reported. The pop, the payloads, the tokens and the reservations
-- are one command each for all the jobs of a round (a command called from a script costs about a
-- microsecond, about what the work in it costs); only the attempt count and the replay check are
-- one per job. A round takes at most CHUNK jobs (unpack's limit).
local function drop_finished(id)
    redis.call('HDEL', KEYS[4], id, id .. ':seq')
    redis.call('HDEL', KEYS[6], id .. ':attempts', id .. ':token', id .. ':failing', id .. ':releases')
end
local CHUNK = 200
local taken, ids, dropped, count = {}, {}, {}, 0
while count < limit do
    local popped = redis.call('ZPOPMIN', KEYS[1], math.min(limit - count, CHUNK))
    if #popped == 0 then break end
    local fields = {}
    for i = 1, #popped, 2 do fields[#fields + 1], fields[#fields + 2] = popped[i], popped[i] .. ':seq' end
    local jobs = redis.call('HMGET', KEYS[4], unpack(fields))
    local tokens, members = {}, {}
    for i = 1, #popped, 2 do
        local id, payload, seq = popped[i], jobs[i], jobs[i + 1]
        if payload and redis.call('ZSCORE', KEYS[7], id) then
            drop_finished(id)
            dropped[#dropped + 1] = id
        elseif payload then
            count = count + 1
            local attempts = redis.call('HINCRBY', KEYS[6], id .. ':attempts', 1)
            tokens[#tokens + 1], tokens[#tokens + 2] = id .. ':token', token .. ':' .. count
            members[#members + 1], members[#members + 2] = now + vt, id
            -- Only a job tried before can carry a failing mark (release and requeue clear it) or releases.
            local before = attempts > 1 and redis.call('HMGET', KEYS[6], id .. ':failing', id .. ':releases')
            before = before or {false, false}
            local at = #taken
            taken[at + 1], taken[at + 2], taken[at + 3], taken[at + 4] = id, payload, attempts, before[1]
            taken[at + 5], taken[at + 6], taken[at + 7] = count, pushed_at(id, seq), before[2]
            ids[count] = id
        end
    end
    if #tokens > 0 then
        redis.call('HSET', KEYS[6], unpack(tokens))
        redis.call('ZADD', KEYS[3], unpack(members))
    end
end
if KEYS[8] and count > 0 then
    -- Two visibility timeouts: a worker whose loop was blocked while this answer waited unread
    -- asks with the claim which jobs are still its own, possibly after the reservations lapsed.
    redis.call('SET', KEYS[8], cmsgpack.pack(ids), 'PX', math.max(1, math.ceil(2 * vt * 1000)))
end

-- Keep one wake-up entry per ready job: never more (the list stays bounded), never fewer
-- (a blocked worker must wake while jobs wait).
local ready, signals = redis.call('ZCARD', KEYS[1]), redis.call('LLEN', KEYS[5])
if signals > ready then
    if ready == 0 then redis.call('DEL', KEYS[5]) else redis.call('LTRIM', KEYS[5], 0, ready - 1) end
elseif signals < ready then
    local missing = {}
    for i = 1, math.min(ready - signals, 1000) do missing[i] = 1 end
    redis.call('RPUSH', KEYS[5], unpack(missing))
end

local reply
if count == 0 then
    local wake = nil
    local d = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    local r = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
    if d[2] then wake = tonumber(d[2]) end
    if r[2] and (not wake or tonumber(r[2]) < wake) then wake = tonumber(r[2]) end
    reply = {false, wake and tostring(wake - now) or ''}
else
    table.insert(taken, 1, clock)
    table.insert(taken, 1, count)
    reply = taken
end
for _, id in ipairs(dropped) do reply[#reply + 1] = id end
return reply
