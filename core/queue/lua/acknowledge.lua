-- Delete reserved jobs of one queue: they finished, or failed and are already in failed_jobs;
-- remember their ids for the replay window.
-- KEYS[1] reserved zset   queues:{q}:reserved
-- KEYS[2] jobs hash       queues:{q}:jobs      (<id> = payload, <id>:seq)
-- KEYS[3] sequence        queues:{q}:seq       (deleted with the queue's last job)
-- KEYS[4] state hash      queues:{q}:state     (<id>:attempts, <id>:token, <id>:failing, <id>:releases)
-- KEYS[5] finished zset   queues:{q}:done      (id = when it finished; expires a window after the last)
-- ARGV[1] the replay window in seconds (0: remember nothing); ARGV[2], ARGV[3], ... pairs of
-- job id, the reservation token the worker holds
-- Returns one flag per pair: 1 if deleted, 0 if that reservation is no longer this worker's.
--
-- Atomic because each token check and its delete must not be split: between them the reservation
-- could expire and pass to another worker, whose job this worker would then delete; and the
-- delete and the finished record must go together, or a push in between would store it again.
local window = tonumber(ARGV[1])
local done, finished = {}, {}
for i = 2, #ARGV, 2 do
    local id = ARGV[i]
    if redis.call('HGET', KEYS[4], id .. ':token') == ARGV[i + 1] then
        redis.call('ZREM', KEYS[1], id)
        redis.call('HDEL', KEYS[2], id, id .. ':seq')
        redis.call('HDEL', KEYS[4], id .. ':attempts', id .. ':token', id .. ':failing', id .. ':releases', id .. ':error',
                   id .. ':progress', id .. ':cancel')
        finished[#finished + 1] = id
        done[#done + 1] = 1
    else
        done[#done + 1] = 0
    end
end
if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('DEL', KEYS[3]) end
if window > 0 and #finished > 0 then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
    -- Trim entries older than the window, at most twice as many as this call adds (plus a few):
    -- the zset never outgrows the window, and no call does unbounded work.
    local old = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now - window, 'LIMIT', 0, 2 * #finished + 10)
    if #old > 0 then redis.call('ZREM', KEYS[5], unpack(old)) end
    local members = {}
    for _, id in ipairs(finished) do
        members[#members + 1] = now
        members[#members + 1] = id
    end
    redis.call('ZADD', KEYS[5], unpack(members))
    redis.call('EXPIRE', KEYS[5], math.ceil(window))
end
return done
