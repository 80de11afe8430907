-- Count a queue's jobs: {pending, delayed, reserved}. Read-only.
-- KEYS[1] ready zset      queues:{q}
-- KEYS[2] delayed zset    queues:{q}:delayed
-- KEYS[3] reserved zset   queues:{q}:reserved
--
-- One script so the three counts and the clock that splits due from delayed jobs are read at one
-- instant: a delayed job that is due but not moved yet counts as pending, as it is; so does a
-- reserved one whose reservation lapsed (a dead worker's): no one holds it, and it is due again.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local due = redis.call('ZCOUNT', KEYS[2], '-inf', now)
local lapsed = redis.call('ZCOUNT', KEYS[3], '-inf', now)
return {redis.call('ZCARD', KEYS[1]) + due + lapsed, redis.call('ZCARD', KEYS[2]) - due,
        redis.call('ZCARD', KEYS[3]) - lapsed}
