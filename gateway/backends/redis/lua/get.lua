-- get.lua: the last published state of several users, in one call. The caller sends one call
-- per hash slot on Redis Cluster (a call's keys must share a slot there) and any mix of users
-- on standalone Redis.
--
-- KEYS  the users' hashes (see apply.lua); field s is the last published state, JSON
--
-- Returns one value per key, in order: the state, or nil for a user never published.

local out = {}
for i = 1, #KEYS do
  out[i] = redis.call("HGET", KEYS[i], "s")
end
return out
