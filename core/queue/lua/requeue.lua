-- queue:retry: put a failed job back under its own id, attempts and releases reset, its push time
-- restarted (retry_until and expires_after count from now, SPEC 9), whatever state it is in.
-- KEYS[1] ready zset      queues:{q}           (score = dispatch sequence)
-- KEYS[2] delayed zset    queues:{q}:delayed
-- KEYS[3] reserved zset   queues:{q}:reserved
-- KEYS[4] jobs hash       queues:{q}:jobs      (<id> = payload, <id>:seq = "seq sec usec[ due]")
-- KEYS[5] notify list     queues:{q}:notify
-- KEYS[6] sequence        queues:{q}:seq
-- KEYS[7] state hash      queues:{q}:state     (<id>:attempts, <id>:token, <id>:failing, <id>:releases)
-- KEYS[8] finished zset   queues:{q}:done
-- ARGV[1] job id; ARGV[2] its payload (stored only if the job is not stored any more); ARGV[3]
-- its priority (SPEC 11; push.lua explains the rank); ARGV[4] seconds before it is due (queue:retry --delay)
-- Returns 1 if the job was stored again, 0 if it was still stored and was taken over.
--
-- A job still stored is one a worker is still failing (it wrote the failed row, not yet the
-- delete): clearing its token fences that worker off, so its late acknowledge, fail, release or
-- extend does nothing and the job is not deleted after its row is forgotten. Atomic because the
-- take-over and the return to the ready set must be one step, or the job could be in two sets.
local id = ARGV[1]
redis.call('ZREM', KEYS[8], id)
redis.call('HDEL', KEYS[7], id .. ':attempts', id .. ':token', id .. ':failing', id .. ':releases')
local stored = redis.call('HSETNX', KEYS[4], id, ARGV[2]) == 0
local seq = string.match(redis.call('HGET', KEYS[4], id .. ':seq') or '', '^-?%d+')
if not seq then seq = string.format('%.0f', redis.call('INCR', KEYS[6]) - tonumber(ARGV[3] or '0') * 17592186044416) end
local t = redis.call('TIME')
local delay = tonumber(ARGV[4] or '0')
redis.call('ZREM', KEYS[3], id)
if delay > 0 then
    local due = tonumber(t[1]) + tonumber(t[2]) / 1000000 + delay
    redis.call('HSET', KEYS[4], id .. ':seq', seq .. ' ' .. t[1] .. ' ' .. t[2] .. ' ' .. tostring(due))
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZADD', KEYS[2], due, id)
else
    redis.call('HSET', KEYS[4], id .. ':seq', seq .. ' ' .. t[1] .. ' ' .. t[2])
    redis.call('ZREM', KEYS[2], id)
    if redis.call('ZADD', KEYS[1], seq, id) == 1 then redis.call('RPUSH', KEYS[5], 1) end
end
if stored then return 0 end
return 1
