-- How long a circuit stays open, on the server's clock. Read-only.
-- KEYS[1] circuit hash    <prefix>{lim:<key>}:throttle   (failures, open_until)
-- Returns the seconds it is open from now, as text ('0': closed).
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
local t = redis.call('TIME')
return tostring(math.max(0, open_until - (tonumber(t[1]) + tonumber(t[2]) / 1000000)))
