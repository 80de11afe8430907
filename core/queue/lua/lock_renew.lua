-- Renew a lock its owner still holds (the worker's heartbeat, with the job's reservation).
-- KEYS[1] lock string     <prefix>{lim:<key>}:lock   (value = owner)
-- ARGV[1] owner; ARGV[2] ttl in milliseconds
-- Returns 1 if renewed, 0 if the lock lapsed or has another owner (nothing changes).
--
-- Atomic because the owner check and the new expiry must not be split: between them the lock
-- could lapse and pass to another owner, whose lock this one would then stretch.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
