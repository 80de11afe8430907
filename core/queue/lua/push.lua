-- Push one or more jobs onto a queue.
-- KEYS[1] ready zset      queues:{q}           (score = dispatch sequence: FIFO)
-- KEYS[2] delayed zset    queues:{q}:delayed   (score = due time)
-- KEYS[3] jobs hash       queues:{q}:jobs      (<id> = payload, <id>:seq = "seq sec usec[ due]")
-- KEYS[4] notify list     queues:{q}:notify    (one entry per ready job, for blocked workers)
-- KEYS[5] sequence        queues:{q}:seq       (counter: each job's place in dispatch order)
-- KEYS[6] finished zset   queues:{q}:done      (ids finished within the replay window)
-- ARGV[1] delay in seconds (0 = ready now); ARGV[2], ARGV[3], ... pairs of job id, payload
-- (at most ~2,000 pairs per call: the batched commands below unpack one argument per job or two);
-- or, for one job with a priority (SPEC 11), ARGV[2] id, ARGV[3] payload, ARGV[4] priority; or, for
-- a batch with priorities, ARGV[1] "r" .. delay and triples of job id, payload, priority.
-- Returns how many jobs were added.
--
-- <id>:seq holds the job's place in dispatch order, then the server's time of the push as TIME
-- gives it (seconds, microseconds), then for a delayed job its due time ("17 1700000000 250000
-- 1700000060.25"): retry_until and expires_after (SPEC 9) count from them on one clock, whoever
-- dispatched. One field, not three: a field costs about 90 bytes per job in a deep queue, this
-- value about 24 more. TIME's own text is kept, not formatted (tostring costs as much as TIME):
-- a push costs about 1 microsecond more on the server (docs/middleware.md).
--
-- Atomic because the payload, the job's place in the ready or delayed set and the wake-up
-- signal must appear together: a worker must never pop an id whose payload is not stored yet.
-- A job with a priority p ranks at seq - p * 2^44 instead of seq (exact in a double: 201 bands of
-- 2^44 jobs each); the rank is <id>:seq's first number, so a job coming due, a retry or an expired
-- reservation goes back to its (priority, dispatch order) place. Priority 0 ranks at seq, as before.
-- A second push of an id that is stored (HSETNX) or finished within the window (the done zset)
-- is a no-op: a retried dispatch or a replayed payload never stores the job twice.
local delay = tonumber(ARGV[1])
local ranked = not delay      -- "r<delay>": a batch of (id, payload, priority) triples
if ranked then delay = tonumber(string.sub(ARGV[1], 2)) end
local t = redis.call('TIME')
local stamp = ' ' .. t[1] .. ' ' .. t[2]
local due
if delay > 0 then
    due = tonumber(t[1]) + tonumber(t[2]) / 1000000 + delay
    stamp = stamp .. ' ' .. tostring(due)
end
if #ARGV <= 4 then      -- one job (a dispatch): the same steps, without the batch's tables
    local id = ARGV[2]
    if redis.call('ZSCORE', KEYS[6], id) then return 0 end
    if redis.call('HSETNX', KEYS[3], id, ARGV[3]) == 0 then return 0 end
    local seq = redis.call('INCR', KEYS[5])
    if ARGV[4] then seq = string.format('%.0f', seq - tonumber(ARGV[4]) * 17592186044416) end
    redis.call('HSET', KEYS[3], id .. ':seq', seq .. stamp)
    if due then
        redis.call('ZADD', KEYS[2], due, id)
    else
        redis.call('ZADD', KEYS[1], seq, id)
        redis.call('RPUSH', KEYS[4], 1)
    end
    return 1
end
local step = ranked and 3 or 2
local count = (#ARGV - 1) / step
-- One sequence number per job of this call, taken at once (a skipped duplicate leaves a gap).
local seq = redis.call('INCRBY', KEYS[5], count) - count
local seqs, members, signals = {}, {}, {}
for i = 2, #ARGV, step do
    local id = ARGV[i]
    seq = seq + 1
    local rank = ranked and string.format('%.0f', seq - tonumber(ARGV[i + 2]) * 17592186044416) or seq
    if not redis.call('ZSCORE', KEYS[6], id) and redis.call('HSETNX', KEYS[3], id, ARGV[i + 1]) == 1 then
        seqs[#seqs + 1] = id .. ':seq'
        seqs[#seqs + 1] = rank .. stamp
        members[#members + 1] = due or rank
        members[#members + 1] = id
        signals[#signals + 1] = 1
    end
end
if #signals == 0 then return 0 end
redis.call('HSET', KEYS[3], unpack(seqs))
if due then
    redis.call('ZADD', KEYS[2], unpack(members))
else
    redis.call('ZADD', KEYS[1], unpack(members))
    redis.call('RPUSH', KEYS[4], unpack(signals))
end
return #signals
