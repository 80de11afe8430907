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
-- Each step is one command for many jobs (CHUNK at a time: unpack's limit), not one per job: a
-- command called from a script costs about a microsecond, about what the work in it costs.
local CHUNK = 100
local now
if window > 0 then
    local t = redis.call('TIME')
    now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local done, seen, count = {}, {}, 0
for first = 2, #ARGV, 2 * CHUNK do
    local last = math.min(first + 2 * CHUNK - 2, #ARGV - 1)
    local fields = {}
    for i = first, last, 2 do fields[#fields + 1] = ARGV[i] .. ':token' end
    local tokens = redis.call('HMGET', KEYS[4], unpack(fields))
    local ids, jobs, state, members = {}, {}, {}, {}
    for i = first, last, 2 do
        local id = ARGV[i]
        if tokens[(i - first) / 2 + 1] == ARGV[i + 1] and not seen[id] then
            seen[id] = true
            ids[#ids + 1] = id
            jobs[#jobs + 1], jobs[#jobs + 2] = id, id .. ':seq'
            local at = #state
            state[at + 1], state[at + 2], state[at + 3], state[at + 4] = id .. ':attempts', id .. ':token',
                id .. ':failing', id .. ':releases'
            state[at + 5], state[at + 6], state[at + 7] = id .. ':error', id .. ':progress', id .. ':cancel'
            members[#members + 1], members[#members + 2] = now, id
            done[#done + 1] = 1
        else
            done[#done + 1] = 0
        end
    end
    if #ids > 0 then
        count = count + #ids
        redis.call('ZREM', KEYS[1], unpack(ids))
        redis.call('HDEL', KEYS[2], unpack(jobs))
        redis.call('HDEL', KEYS[4], unpack(state))
        if now then
            -- Trim entries older than the window, at most twice as many as this step adds (plus a
            -- few): the zset never outgrows the window, and no call does unbounded work.
            local old = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now - window, 'LIMIT', 0, 2 * #ids + 10)
            if #old > 0 then redis.call('ZREM', KEYS[5], unpack(old)) end
            redis.call('ZADD', KEYS[5], unpack(members))
        end
    end
end
if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('DEL', KEYS[3]) end
if now and count > 0 then redis.call('EXPIRE', KEYS[5], math.ceil(window)) end
return done
