-- grace_done.lua: drop the sweep's hints that are still the ones it read.
--
-- The grace index is a hint: the user's hash (field g) says whether an offline really waits.
-- A hint is removed only if its score is unchanged since the sweeper read it, so a new grace
-- that began meanwhile (same member, new score) keeps its hint.
--
-- KEYS[1]  the grace index: sorted set, member = user tag ("<app>/<escaped user>"),
--          score = when that user's grace ends (ms)
-- ARGV     pairs: member, score as the sweeper read it
--
-- Returns the number of hints removed.

local removed = 0
for i = 1, #ARGV, 2 do
  local score = redis.call("ZSCORE", KEYS[1], ARGV[i])
  if score and tonumber(score) == tonumber(ARGV[i + 1]) then
    removed = removed + redis.call("ZREM", KEYS[1], ARGV[i])
  end
end
return removed
