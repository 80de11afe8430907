-- ThrottlesExceptions (SPEC 9): one more consecutive failure of a circuit.
-- KEYS[1] circuit hash    <prefix>{lim:<key>}:throttle   (failures, open_until; expires when
--                                                         forgotten: decay after it would close)
-- ARGV[1] max_exceptions; ARGV[2] decay in seconds
-- Returns the seconds the circuit is open from now, as text ('0': closed).
--
-- From the max_exceptions-th failure on, each opens the circuit for decay seconds: once it has
-- closed, the next failure reopens it (half-open); a success (DEL) resets it.
-- Atomic because reading the count and writing it back must not be split: two failures at once
-- would count as one.
local max_exceptions, decay = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'failures', 'open_until')
local failures = tonumber(state[1] or '0') + 1
local open_until = tonumber(state[2] or '0')
if failures >= max_exceptions then open_until = now + decay end
redis.call('HSET', KEYS[1], 'failures', failures, 'open_until', tostring(open_until))
redis.call('PEXPIREAT', KEYS[1], math.ceil((math.max(now, open_until) + decay) * 1000))
return tostring(math.max(0, open_until - now))
