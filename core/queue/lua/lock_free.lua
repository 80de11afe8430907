-- Free a lock, only by its owner.
-- KEYS[1] lock string     <prefix>{lim:<key>}:lock   (value = owner)
-- ARGV[1] owner
-- Returns 1 if freed, 0 if the lock lapsed or has another owner (nothing changes).
--
-- Atomic because the owner check and the delete must not be split: between them the lock could
-- lapse and pass to another owner, whose lock this one would then delete.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
