-- RateLimited (SPEC 9): one start under a sliding window of `every` seconds.
-- KEYS[1] hits zset       <prefix>{lim:<key>}:hits   (member = a start's random id, score = its time;
--                                                     expires a window after the last start)
-- ARGV[1] allow: starts admitted in any window; ARGV[2] every: the window in seconds;
-- ARGV[3] a random id for this start (members must differ)
-- Returns '0' if the start is admitted and counted, else the seconds until one may be admitted
-- (as text: a number reply would lose its fraction); that start is not counted.
--
-- Atomic because forgetting old starts, counting those left and adding this one must be one
-- step: split, two workers could both count allow - 1 and both start.
local allow, every = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - every)
if redis.call('ZCARD', KEYS[1]) < allow then
    redis.call('ZADD', KEYS[1], now, ARGV[3])
    redis.call('PEXPIRE', KEYS[1], math.ceil(every * 1000))
    return '0'
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return tostring(math.max(tonumber(oldest[2]) + every - now, 0.000001))
