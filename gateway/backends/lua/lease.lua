-- lease.lua: take or renew a lease (webhooks out: the node delivering one stream to one
-- endpoint, so a user's messages go out in order).
-- KEYS[1]  the lease key (gateway/outbound/keys.py)
-- ARGV[1]  the holder (a node's consumer name)
-- ARGV[2]  its time to live, ms
-- Returns 1 when ARGV[1] holds it now (taken, or renewed), else 0.
local holder = redis.call("GET", KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2])
  return 1
end
return 0
