-- The jobs a reserve call with a claim took and still holds, when its answer was lost.
-- KEYS[1] reserved zset   queues:{q}:reserved  (score = reservation expiry)
-- KEYS[2] jobs hash       queues:{q}:jobs
-- KEYS[3] state hash      queues:{q}:state     (<id>:attempts, <id>:token, <id>:failing)
-- KEYS[4] claim           queues:{q}:claim:<claim>  (the ids that call took, in order; cmsgpack)
-- ARGV[1] visibility timeout in seconds; ARGV[2] the claim (job n of that call got token claim:n)
-- Returns {count, id1, payload1, attempts1, failing1, n1, id2, ...} like reserve.lua, for the
-- jobs whose token is still the claim's; their reservations are renewed, no attempt is counted.
--
-- Atomic because each token check and its renewal must not be split: between them the
-- reservation could pass to another worker.
local packed = redis.call('GET', KEYS[4])
if not packed then return {0} end
local t = redis.call('TIME')
local expiry = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[1])
local rows, count = {0}, 0
for n, id in ipairs(cmsgpack.unpack(packed)) do
    local state = redis.call('HMGET', KEYS[3], id .. ':token', id .. ':attempts', id .. ':failing')
    local payload = redis.call('HGET', KEYS[2], id)
    if state[1] == ARGV[2] .. ':' .. n and payload then
        redis.call('ZADD', KEYS[1], 'XX', expiry, id)
        count = count + 1
        local at = #rows
        rows[at + 1], rows[at + 2], rows[at + 3], rows[at + 4], rows[at + 5] = id, payload, state[2], state[3], n
    end
end
rows[1] = count
return rows
