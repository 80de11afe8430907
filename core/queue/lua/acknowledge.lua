-- Delete a reserved job: it finished, or it failed and is already recorded in failed_jobs.
-- KEYS[1] reserved zset   queues:{q}:reserved
-- KEYS[2] jobs hash       queues:{q}:jobs
-- KEYS[3] sequence        queues:{q}:seq       (deleted with the queue's last job)
-- ARGV[1] job id; ARGV[2] the reservation token the worker holds
-- Returns 1 if deleted, 0 if the reservation is no longer this worker's.
--
-- Atomic because the token check and the delete must not be split: between them the reservation
-- could expire and pass to another worker, whose job this worker would then delete.
if redis.call('HGET', KEYS[2], ARGV[1] .. ':token') ~= ARGV[2] then
    return 0
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1], ARGV[1] .. ':seq', ARGV[1] .. ':attempts', ARGV[1] .. ':token')
if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('DEL', KEYS[3]) end
return 1
