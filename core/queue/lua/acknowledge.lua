-- Delete reserved jobs of one queue: they finished, or failed and are already in failed_jobs.
-- KEYS[1] reserved zset   queues:{q}:reserved
-- KEYS[2] jobs hash       queues:{q}:jobs
-- KEYS[3] sequence        queues:{q}:seq       (deleted with the queue's last job)
-- KEYS[4] state hash      queues:{q}:state     (<id>:attempts, <id>:token)
-- ARGV[1], ARGV[2], ... pairs of job id, the reservation token the worker holds
-- Returns one flag per pair: 1 if deleted, 0 if that reservation is no longer this worker's.
--
-- Atomic because each token check and its delete must not be split: between them the reservation
-- could expire and pass to another worker, whose job this worker would then delete.
local done = {}
for i = 1, #ARGV, 2 do
    local id = ARGV[i]
    if redis.call('HGET', KEYS[4], id .. ':token') == ARGV[i + 1] then
        redis.call('ZREM', KEYS[1], id)
        redis.call('HDEL', KEYS[2], id, id .. ':seq')
        redis.call('HDEL', KEYS[4], id .. ':attempts', id .. ':token')
        done[#done + 1] = 1
    else
        done[#done + 1] = 0
    end
end
if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('DEL', KEYS[3]) end
return done
