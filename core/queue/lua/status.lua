-- A job's state (SPEC 11), read in one step: the queue, then the results. Read-only.
-- KEYS[1] ready zset      queues:{q}
-- KEYS[2] delayed zset    queues:{q}:delayed   (score = due time)
-- KEYS[3] reserved zset   queues:{q}:reserved
-- KEYS[4] jobs hash       queues:{q}:jobs      (<id> = payload, <id>:seq = "rank sec usec[ due]")
-- KEYS[5] state hash      queues:{q}:state     (<id>:attempts, <id>:releases, <id>:error, <id>:progress)
-- KEYS[6] results hash    queues:{q}:results
-- KEYS[7] results zset    queues:{q}:results:exp
-- ARGV[1] job id
-- Returns {state, payload, attempts, available_at, error, progress, now} for a queued job;
-- {'record', record, expires_at} for a finished one whose record is kept; {} for neither.
--
-- One script because a job moves from the queue to the results in one step (complete.lua): read
-- in two, it could be seen in neither.
local id = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local payload = redis.call('HGET', KEYS[4], id)
if payload then
    local state, at = 'pending', nil
    local score = redis.call('ZSCORE', KEYS[3], id)
    if score then
        -- held until its reservation lapses (score = expiry); after that no worker holds it: it is
        -- due again, taken back by the next reserve (a dead worker's job)
        if tonumber(score) > now then state = 'reserved' end
    else
        score = redis.call('ZSCORE', KEYS[2], id)
        if score then
            at = score
            if tonumber(score) > now then state = 'delayed' end
        end
    end
    local s = redis.call('HMGET', KEYS[5], id .. ':attempts', id .. ':error', id .. ':progress')
    return {state, payload, s[1] or '0', at or '', s[2] or '', s[3] or '', tostring(now)}
end
local record = redis.call('HGET', KEYS[6], id)
if record then
    local expires = redis.call('ZSCORE', KEYS[7], id)
    if not expires or tonumber(expires) > now then return {'record', record} end
end
return {}
