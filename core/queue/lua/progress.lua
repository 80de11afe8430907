-- Record a running job's progress (SPEC 11), if the reservation is still the worker's.
-- KEYS[1] state hash      queues:{q}:state     (<id>:token, <id>:progress)
-- ARGV[1] job id; ARGV[2] the reservation token; ARGV[3] "fraction text"
-- Returns 1 if recorded, 0 if the reservation is no longer this worker's.
-- Atomic because the token check and the write must not be split (a fenced-off worker writes nothing).
if redis.call('HGET', KEYS[1], ARGV[1] .. ':token') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1] .. ':progress', ARGV[3])
return 1
