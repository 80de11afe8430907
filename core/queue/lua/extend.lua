-- Renew the reservations of jobs a live worker is still running.
-- KEYS[1] reserved zset   queues:{q}:reserved
-- KEYS[2] state hash      queues:{q}:state     (<id>:attempts, <id>:token, <id>:failing)
-- ARGV[1] visibility timeout in seconds; ARGV[2], ARGV[3], ... pairs of job id, token
-- Returns {renewed, id...}: how many reservations were renewed (those whose token still matches),
-- then the ids among them someone cancelled (SPEC 11: cancel.lua's flag), so the heartbeat learns
-- it with the renewal it makes anyway, not with a call of its own.
--
-- Atomic because the token check and the new expiry must not be split: between them the
-- reservation could pass to another worker, and this one would extend a job it no longer holds.
local t = redis.call('TIME')
local expiry = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[1])
local answer = {0}
for i = 2, #ARGV, 2 do
    if redis.call('HGET', KEYS[2], ARGV[i] .. ':token') == ARGV[i + 1] then
        redis.call('ZADD', KEYS[1], 'XX', expiry, ARGV[i])
        answer[1] = answer[1] + 1
        if redis.call('HEXISTS', KEYS[2], ARGV[i] .. ':cancel') == 1 then answer[#answer + 1] = ARGV[i] end
    end
end
return answer
