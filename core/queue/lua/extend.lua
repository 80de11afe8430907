-- Renew the reservations of jobs a live worker is still running.
-- KEYS[1] reserved zset   queues:{q}:reserved
-- KEYS[2] state hash      queues:{q}:state     (<id>:attempts, <id>:token, <id>:failing)
-- ARGV[1] visibility timeout in seconds; ARGV[2], ARGV[3], ... pairs of job id, token
-- Returns how many reservations were renewed (those whose token still matches).
--
-- Atomic because the token check and the new expiry must not be split: between them the
-- reservation could pass to another worker, and this one would extend a job it no longer holds.
local t = redis.call('TIME')
local expiry = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[1])
local renewed = 0
for i = 2, #ARGV, 2 do
    if redis.call('HGET', KEYS[2], ARGV[i] .. ':token') == ARGV[i + 1] then
        redis.call('ZADD', KEYS[1], 'XX', expiry, ARGV[i])
        renewed = renewed + 1
    end
end
return renewed
