-- Delete up to a batch of a queue's jobs that no worker holds: ready first, then delayed, then those
-- whose reservation lapsed (a dead worker's; pending again, as size.lua counts them).
-- KEYS[1] ready zset      queues:{q}
-- KEYS[2] delayed zset    queues:{q}:delayed
-- KEYS[3] jobs hash       queues:{q}:jobs
-- KEYS[4] notify list     queues:{q}:notify
-- KEYS[5] sequence        queues:{q}:seq       (deleted with the queue's last job)
-- KEYS[6] state hash      queues:{q}:state     (<id>:attempts, <id>:token, <id>:failing, <id>:releases)
-- KEYS[7] finished zset   queues:{q}:done      (ids finished, or cleared, within the replay window)
-- KEYS[8] reserved zset   queues:{q}:reserved  (score = reservation expiry)
-- ARGV[1] batch size; ARGV[2] the replay window in seconds (0: remember nothing)
-- Returns how many jobs were deleted; the caller repeats until it gets less than a batch.
--
-- Atomic because an id and its payload must go together (no id left pointing at nothing, no
-- payload left behind), and batched so clearing a huge queue never blocks Redis for long.
-- A cleared job pushed within the replay window is remembered in the done zset, as a finished one
-- is: a dispatch whose answer was lost may retry its push after the clear, and must not store the
-- job again. Its push time is the second number of <id>:seq (push.lua).
local batch = tonumber(ARGV[1])
local window = tonumber(ARGV[2] or '0')
local ids = redis.call('ZRANGE', KEYS[1], 0, batch - 1)
if #ids > 0 then redis.call('ZREM', KEYS[1], unpack(ids)) end
if #ids < batch then
    local delayed = redis.call('ZRANGE', KEYS[2], 0, batch - #ids - 1)
    if #delayed > 0 then
        redis.call('ZREM', KEYS[2], unpack(delayed))
        for _, id in ipairs(delayed) do ids[#ids + 1] = id end
    end
end
local t = redis.call('TIME')
local now, remembered = tonumber(t[1]) + tonumber(t[2]) / 1000000, {}
if #ids < batch and KEYS[8] then
    local lapsed = redis.call('ZRANGEBYSCORE', KEYS[8], '-inf', now, 'LIMIT', 0, batch - #ids)
    if #lapsed > 0 then
        redis.call('ZREM', KEYS[8], unpack(lapsed))
        for _, id in ipairs(lapsed) do ids[#ids + 1] = id end
    end
end
for _, id in ipairs(ids) do
    if window > 0 then
        local seq = redis.call('HGET', KEYS[3], id .. ':seq')
        local pushed = seq and tonumber(string.match(seq, '^%S+ (%d+)'))
        if pushed and pushed + window >= now then
            remembered[#remembered + 1] = now
            remembered[#remembered + 1] = id
        end
    end
    redis.call('HDEL', KEYS[3], id, id .. ':seq', id .. ':attempts', id .. ':token')   -- the last two: an older layout
    redis.call('HDEL', KEYS[6], id .. ':attempts', id .. ':token', id .. ':failing', id .. ':releases', id .. ':error',
               id .. ':progress', id .. ':cancel')
end
if #remembered > 0 then
    redis.call('ZADD', KEYS[7], unpack(remembered))
    redis.call('EXPIRE', KEYS[7], math.ceil(window))
end
if redis.call('ZCARD', KEYS[1]) == 0 then redis.call('DEL', KEYS[4]) end
if redis.call('EXISTS', KEYS[3]) == 0 then redis.call('DEL', KEYS[5]) end
return #ids
