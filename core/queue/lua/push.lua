-- Push one or more jobs onto a queue.
-- KEYS[1] ready zset      queues:{q}           (score = dispatch sequence: FIFO)
-- KEYS[2] delayed zset    queues:{q}:delayed   (score = due time)
-- KEYS[3] jobs hash       queues:{q}:jobs      (<id> = payload, <id>:seq)
-- KEYS[4] notify list     queues:{q}:notify    (one entry per ready job, for blocked workers)
-- KEYS[5] sequence        queues:{q}:seq       (counter: each job's place in dispatch order)
-- KEYS[6] finished zset   queues:{q}:done      (ids finished within the replay window)
-- ARGV[1] delay in seconds (0 = ready now); ARGV[2], ARGV[3], ... pairs of job id, payload
-- (at most ~2,000 pairs per call: the batched commands below unpack one argument per job or two)
-- Returns how many jobs were added.
--
-- Atomic because the payload, the job's place in the ready or delayed set and the wake-up
-- signal must appear together: a worker must never pop an id whose payload is not stored yet.
-- A second push of an id that is stored (HSETNX) or finished within the window (the done zset)
-- is a no-op: a retried dispatch or a replayed payload never stores the job twice.
local delay = tonumber(ARGV[1])
local due
if delay > 0 then
    local now = redis.call('TIME')
    due = tonumber(now[1]) + tonumber(now[2]) / 1000000 + delay
end
if #ARGV == 3 then      -- one job (a dispatch): the same steps, without the batch's tables
    local id = ARGV[2]
    if redis.call('ZSCORE', KEYS[6], id) then return 0 end
    if redis.call('HSETNX', KEYS[3], id, ARGV[3]) == 0 then return 0 end
    local seq = redis.call('INCR', KEYS[5])
    redis.call('HSET', KEYS[3], id .. ':seq', seq)
    if due then
        redis.call('ZADD', KEYS[2], due, id)
    else
        redis.call('ZADD', KEYS[1], seq, id)
        redis.call('RPUSH', KEYS[4], 1)
    end
    return 1
end
local pairs_ = (#ARGV - 1) / 2
-- One sequence number per job of this call, taken at once (a skipped duplicate leaves a gap).
local seq = redis.call('INCRBY', KEYS[5], pairs_) - pairs_
local seqs, members, signals = {}, {}, {}
for i = 2, #ARGV, 2 do
    local id = ARGV[i]
    seq = seq + 1
    if not redis.call('ZSCORE', KEYS[6], id) and redis.call('HSETNX', KEYS[3], id, ARGV[i + 1]) == 1 then
        seqs[#seqs + 1] = id .. ':seq'
        seqs[#seqs + 1] = seq
        members[#members + 1] = due or seq
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
