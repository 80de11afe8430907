-- Acknowledge finished jobs that keep a result (SPEC 11) and store each one's record, in one step.
-- KEYS[1] reserved zset   queues:{q}:reserved
-- KEYS[2] jobs hash       queues:{q}:jobs      (<id> = payload, <id>:seq)
-- KEYS[3] sequence        queues:{q}:seq       (deleted with the queue's last job)
-- KEYS[4] state hash      queues:{q}:state     (<id>:attempts, <id>:token, <id>:failing, ...)
-- KEYS[5] finished zset   queues:{q}:done      (ids finished within the replay window)
-- KEYS[6] results hash    queues:{q}:results   (<id> = the record, JSON)
-- KEYS[7] results zset    queues:{q}:results:exp  (id = when its record expires)
-- ARGV[1] the replay window in seconds; ARGV[2] the wake-up key prefix queues:{q}:wake: (a
-- waiter BLPOPs <prefix><id>: one round trip, not a poll); ARGV[3], ... quads of job id, token,
-- record (a JSON object; finished_at is added here, on the server's clock), seconds to keep it
-- Returns one flag per job: 1 if acknowledged and recorded, 0 if the reservation was lost.
--
-- Atomic because the result must appear exactly when the job leaves the queue: a job is never
-- both completed and queued, and a fenced-off worker (its token no longer matches) writes none.
local window, wake = tonumber(ARGV[1]), ARGV[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local done = {}
for i = 3, #ARGV, 4 do
    local id = ARGV[i]
    if redis.call('HGET', KEYS[4], id .. ':token') == ARGV[i + 1] then
        redis.call('ZREM', KEYS[1], id)
        redis.call('HDEL', KEYS[2], id, id .. ':seq')
        redis.call('HDEL', KEYS[4], id .. ':attempts', id .. ':token', id .. ':failing', id .. ':releases',
                   id .. ':error', id .. ':progress', id .. ':cancel')
        redis.call('HSET', KEYS[6], id, '{"finished_at":' .. string.format('%.6f', now) .. ',' .. string.sub(ARGV[i + 2], 2))
        redis.call('ZADD', KEYS[7], now + tonumber(ARGV[i + 3]), id)
        if window > 0 then redis.call('ZADD', KEYS[5], now, id) end
        redis.call('RPUSH', wake .. id, 1)
        redis.call('EXPIRE', wake .. id, 60)
        done[#done + 1] = 1
    else
        done[#done + 1] = 0
    end
end
if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('DEL', KEYS[3]) end
if window > 0 then redis.call('EXPIRE', KEYS[5], math.ceil(window)) end
-- Expired records, at most a few more than this call adds: bounded work, and the hash cannot grow.
local old = redis.call('ZRANGEBYSCORE', KEYS[7], '-inf', now, 'LIMIT', 0, 2 * #done + 10)
for first = 1, #old, 500 do      -- a slice at a time: unpack's limit
    local last = math.min(first + 499, #old)
    redis.call('ZREM', KEYS[7], unpack(old, first, last))
    redis.call('HDEL', KEYS[6], unpack(old, first, last))
end
return done
