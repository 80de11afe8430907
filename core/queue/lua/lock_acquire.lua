-- WithoutOverlapping (SPEC 9): take a lock if it is free or already this owner's.
-- KEYS[1] lock string     <prefix>{lim:<key>}:lock   (value = owner; expires with the lock)
-- ARGV[1] owner (job id and reservation token); ARGV[2] ttl in milliseconds
-- Returns 1 if this owner holds the lock now (its expiry set to ttl from now), 0 if another does.
--
-- Atomic because the owner check and the write must not be split: between them another owner
-- could take the lock, and both would run.
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
