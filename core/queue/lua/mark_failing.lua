-- Record with a reserved job that its tries are over and why, and renew its reservation.
-- KEYS[1] reserved zset   queues:{q}:reserved  (score = reservation expiry)
-- KEYS[2] state hash      queues:{q}:state     (<id>:attempts, <id>:token, <id>:failing)
-- ARGV[1] visibility timeout in seconds; ARGV[2] job id; ARGV[3] the reservation token the
-- worker holds; ARGV[4] '1' if the job's failed() already returned, else '0'; ARGV[5] the
-- exception text
-- Returns 1 if recorded, 0 if the reservation is no longer this worker's.
--
-- The mark is one field, <id>:failing = ARGV[4] .. ARGV[5], so reserve reads it with one HGET.
-- Atomic because the token check, the renewal and the mark must not be split: between them the
-- reservation could pass to another worker, whose try this worker would then mark.
if redis.call('HGET', KEYS[2], ARGV[2] .. ':token') ~= ARGV[3] then
    return 0
end
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], 'XX', tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[1]), ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2] .. ':failing', ARGV[4] .. ARGV[5])
return 1
