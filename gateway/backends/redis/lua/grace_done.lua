-- grace_done.lua: drop the entries of a sorted set that are still the ones the sweeper read.
--
-- Used on Cluster for the two sets whose entries are only hints: the primaries' hint sets
-- (member = hash slot, score = the earliest grace end in that slot's index) and the single
-- grace index of older versions (member = user tag, score = when its grace ends), which the
-- sweep drains for rolling upgrades. The user's hash (field g) and its slot's own index, which
-- apply.lua keeps in step, decide. An entry is removed only if its score is unchanged since
-- the sweeper read it, so one rewritten meanwhile (same member, new score) stays.
--
-- KEYS[1]  the sorted set
-- ARGV     pairs: member, score as the sweeper read it
--
-- Returns the number of entries removed.

local removed = 0
for i = 1, #ARGV, 2 do
  local score = redis.call("ZSCORE", KEYS[1], ARGV[i])
  if score and tonumber(score) == tonumber(ARGV[i + 1]) then
    removed = removed + redis.call("ZREM", KEYS[1], ARGV[i])
  end
end
return removed
