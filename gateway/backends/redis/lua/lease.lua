-- lease.lua: take, renew or give back a lease (webhooks out: the node delivering one stream,
-- or one bucket of slot streams, to one endpoint, so a user's messages go out in order).
-- KEYS[1]  the lease key (gateway/outbound/keys.py)
-- ARGV[1]  the holder (a node's consumer name)
-- ARGV[2]  its time to live, ms; "0" gives it back (if held by ARGV[1])
-- Returns 1 when ARGV[1] holds it now (taken, or renewed), else 0.
local holder = redis.call("GET", KEYS[1])
if ARGV[2] == "0" then
  if holder == ARGV[1] then
    redis.call("DEL", KEYS[1])
  end
  return 0
end
if holder == false or holder == ARGV[1] then
  redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2])
  return 1
end
return 0
