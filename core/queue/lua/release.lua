-- Put a reserved job back, to run again now or after a delay; its attempt count is kept, a
-- failing mark is cleared (it runs again as a fresh try).
-- KEYS[1] ready zset      queues:{q}           (score = dispatch sequence)
-- KEYS[2] delayed zset    queues:{q}:delayed
-- KEYS[3] reserved zset   queues:{q}:reserved
-- KEYS[4] jobs hash       queues:{q}:jobs      (<id> = payload, <id>:seq = "seq sec usec[ due]")
-- KEYS[5] notify list     queues:{q}:notify
-- KEYS[6] state hash      queues:{q}:state     (<id>:attempts, <id>:token, <id>:failing, <id>:releases)
-- ARGV[1] job id; ARGV[2] the reservation token the worker holds; ARGV[3] delay in seconds;
-- ARGV[4] '1' for a release that is not a failed try (SPEC 9): <id>:releases goes up by one;
-- '-1' for a job the worker reserved but never started (it was stopping): <id>:attempts goes back
-- down by one, as if it had not been reserved;
-- ARGV[5], optional: the failed try's exception, first line (SPEC 11: <id>:error, status's last_error)
-- Returns 1 if released, 0 if the reservation is no longer this worker's.
--
-- Atomic because the token check, leaving the reserved set and joining the ready set or the
-- delayed set are one move: split, the job could be in two places (run twice) or in none (lost);
-- and the release count goes with them, so a crash cannot count a release that did not happen.
if redis.call('HGET', KEYS[6], ARGV[1] .. ':token') ~= ARGV[2] then
    return 0
end
local delay = tonumber(ARGV[3])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[6], ARGV[1] .. ':token', ARGV[1] .. ':failing')
if ARGV[4] == '1' then redis.call('HINCRBY', KEYS[6], ARGV[1] .. ':releases', 1) end
if ARGV[4] == '-1' then redis.call('HINCRBY', KEYS[6], ARGV[1] .. ':attempts', -1) end
if ARGV[5] then redis.call('HSET', KEYS[6], ARGV[1] .. ':error', ARGV[5]) end
if delay > 0 then
    local t = redis.call('TIME')
    redis.call('ZADD', KEYS[2], tonumber(t[1]) + tonumber(t[2]) / 1000000 + delay, ARGV[1])
else
    local seq = tonumber(string.match(redis.call('HGET', KEYS[4], ARGV[1] .. ':seq') or '0', '^-?%d+')) or 0
    redis.call('ZADD', KEYS[1], seq, ARGV[1])
    redis.call('RPUSH', KEYS[5], 1)
end
return 1
