-- Cancel a job (SPEC 11): one pending (a lapsed reservation too) or delayed is removed and recorded cancelled; one reserved
-- is flagged, and the worker running it cancels its task at its next await (the heartbeat reads
-- the flag through extend.lua).
-- KEYS[1] ready zset      queues:{q}
-- KEYS[2] delayed zset    queues:{q}:delayed
-- KEYS[3] reserved zset   queues:{q}:reserved
-- KEYS[4] jobs hash       queues:{q}:jobs      (<id> = payload, <id>:seq)
-- KEYS[5] state hash      queues:{q}:state
-- KEYS[6] results hash    queues:{q}:results
-- KEYS[7] results zset    queues:{q}:results:exp
-- KEYS[8] finished zset   queues:{q}:done
-- ARGV[1] job id; ARGV[2] seconds a cancelled record is kept at least (longer if the job keeps
-- results longer); ARGV[3] the wake-up key prefix; ARGV[4] the replay window
-- Returns 'cancelled', 'reserved' (flagged), or '' (not queued here).
--
-- Atomic because leaving the queue and the cancelled record must go together: seen in between,
-- a job would be unknown; split the other way, a worker could reserve a job already recorded cancelled.
local id = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local held_until = redis.call('ZSCORE', KEYS[3], id)
if held_until and tonumber(held_until) > now then
    redis.call('HSET', KEYS[5], id .. ':cancel', 1)
    return 'reserved'
end
-- A reservation that lapsed (a dead worker's) is pending again (size.lua): removed like one.
if redis.call('ZREM', KEYS[1], id) + redis.call('ZREM', KEYS[2], id) + redis.call('ZREM', KEYS[3], id) == 0 then
    return ''
end
local payload = redis.call('HGET', KEYS[4], id) or '{}'
local attempts = tonumber(redis.call('HGET', KEYS[5], id .. ':attempts') or '0')
redis.call('HDEL', KEYS[4], id, id .. ':seq')
redis.call('HDEL', KEYS[5], id .. ':attempts', id .. ':token', id .. ':failing', id .. ':releases', id .. ':error',
           id .. ':progress', id .. ':cancel')
local ok, body = pcall(cjson.decode, payload)
if not ok or type(body) ~= 'table' then body = {} end
local options = type(body.options) == 'table' and body.options or {}
local keep = math.max(tonumber(ARGV[2]), tonumber(options.keepResult) or 0)
redis.call('HSET', KEYS[6], id, cjson.encode({state = 'cancelled', job = body.job, queue = body.queue,
    attempts = attempts, max_tries = body.maxTries, dispatched_at = body.pushedAt, finished_at = now,
    keep_result = tonumber(options.keepResult) or 0}))
redis.call('ZADD', KEYS[7], now + keep, id)
local window = tonumber(ARGV[4])
if window > 0 then
    redis.call('ZADD', KEYS[8], now, id)
    redis.call('EXPIRE', KEYS[8], math.ceil(window))
end
redis.call('RPUSH', ARGV[3] .. id, 1)
redis.call('EXPIRE', ARGV[3] .. id, 60)
return 'cancelled'
