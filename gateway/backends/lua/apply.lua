-- apply.lua: merge the presence events of one or more users and publish each new state that
-- watchers would see change; or (mode "sweep") end the users' offline grace. One atomic call for
-- all its users: the caller sends one call per hash slot on Redis Cluster (a call's keys must
-- share a slot there) and any mix of users on standalone Redis. The rules are gateway/model.py's
-- and MemoryStore's, exactly: per-device merge (last-writer-wins on (time, online, platform) plus
-- the latest offline and the online times since it), trim, the freshness window, tombstone
-- pruning, aggregate, next_version and the offline grace. The store contract tests check that
-- this and the memory store agree.
--
-- KEYS[1]     the grace index of the call: sorted set, member = user tag (the hash tag of the
--            user's key, "<app>/<escaped user>"), score = when its grace ends (ms). One key on
--            standalone Redis; on Cluster the index of the call's hash slot. apply and sweep
--            keep it equal to the users' g fields in the same atomic step.
-- KEYS[2i]    user i's hash. Fields:
--            d:<device>  one device record (model.DeviceRecord):
--                        "<time>,<0|1>,<off>,<on1>;<on2>;...,<platform>"
--                        time, online, platform: the last-writer-wins winner; off: the latest
--                        offline time ("" if none); the online times at or after off, sorted
--                        ("" if none). The platform is last, so nothing in it can break the
--                        parse. Records of the older form "<time>,<0|1>,<platform>" are read
--                        too (as the record of that one event).
--            s           the last published state, JSON, exactly as published
--            v           its version
--            p           its online platforms, JSON strings joined by ","
--            g           while an offline waits out the grace: when the grace ends (ms)
-- KEYS[2i+1]  user i's shard channel. Not a key: declared because it carries the same hash
--            tag, so cluster routing and the script's slot check cover the SPUBLISH too.
-- ARGV[1]  mode: "apply" (merge the events) or "sweep" (publish the offline if the grace ended)
-- ARGV[2]  max_event_age_ms: events with |now - time| above it are ignored
-- ARGV[3]  session_retention_ms: offline records older than now - retention are pruned
-- ARGV[4]  last_seen_retention_ms: once every device is offline the key expires this long
--          after the user's last-seen time (its latest offline record)
-- ARGV[5]  offline_grace_ms (0: publish offlines at once)
-- ARGV[6]  max_online_times: the most online times a record keeps (model.MAX_ONLINE_TIMES)
-- ARGV[7..] per user, in KEYS order: the user id as a JSON string literal (encoded by the
--           caller, byte-equal to msgspec); now_ms, the caller's clock for this user (a call
--           may carry users of several webhooks); n, its number of events (0 to sweep); then
--           its n events, 4 values each, in arrival order: device, time, online (1|0), platform
--
-- Returns 4 values per user, in KEYS order: applied, ignored, state, grace_end. state is the
-- published JSON or nil; grace_end is set while the user's offline waits out the grace (its
-- entry in KEYS[1] is written here; on Cluster the caller also hints the slot to the sweep).

local mode = ARGV[1]
local now -- per user: see the loop at the end
local max_age = tonumber(ARGV[2])
local retention = tonumber(ARGV[3])
local last_seen_retention = tonumber(ARGV[4])
local index = KEYS[1]
local grace = tonumber(ARGV[5])
local cap = tonumber(ARGV[6])

-- Byte order of two strings: Python's str order for UTF-8. Lua's "<" on strings uses the
-- server's collation locale, which may differ.
local function str_lt(a, b)
  if a == b then
    return false
  end
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then
      return x < y
    end
  end
  return #a < #b
end

-- model.DeviceRecord.rank: later time wins, then online, then the larger platform name.
local function beats(new, old)
  if new.t ~= old.t then
    return new.t > old.t
  end
  if new.on ~= old.on then
    return new.on
  end
  return str_lt(old.p, new.p)
end

-- Integers (ms times stay far below 2^53, exact in Lua's doubles) as Python prints them.
local function fmt(n)
  return string.format("%d", n)
end

local function encode_record(rec)
  local ons, list = rec.ons, ""
  if #ons == 1 then
    list = fmt(ons[1])
  elseif #ons > 1 then
    local texts = {}
    for i, t in ipairs(ons) do
      texts[i] = fmt(t)
    end
    list = table.concat(texts, ";")
  end
  -- The platform is appended, never formatted: "%s" would cut it at a NUL byte.
  return string.format("%d,%s,%s,%s,", rec.t, rec.on and "1" or "0",
    rec.off and fmt(rec.off) or "", list) .. rec.p
end

-- A record: { t, on, p, off (nil if none), ons (sorted array), raw (its encoding) }.
local function decode_record(raw)
  -- The form this script writes, in one match; anything else takes the general path below.
  local t, on, off, ons = string.match(raw, "^(%d+),([01]),(%d*),([%d;]*),")
  if t ~= nil then
    local rec = {
      t = tonumber(t),
      on = on == "1",
      p = string.sub(raw, #t + #off + #ons + 6),
      raw = raw,
      off = tonumber(off), -- nil for ""
      ons = {},
    }
    if string.find(ons, ";", 1, true) == nil then
      rec.ons[1] = tonumber(ons) -- stays empty for ""
    else
      for time in string.gmatch(ons, "%d+") do
        rec.ons[#rec.ons + 1] = tonumber(time)
      end
    end
    return rec
  end
  local f, from = {}, 1
  for _ = 1, 4 do
    local comma = string.find(raw, ",", from, true)
    if comma == nil then
      break
    end
    f[#f + 1] = string.sub(raw, from, comma - 1)
    from = comma + 1
  end
  local rec = { t = tonumber(f[1]), on = f[2] == "1", p = string.sub(raw, from), raw = raw }
  if #f == 2 then
    -- The older form, the record of one event: re-encoded so a duplicate of it compares equal.
    rec.off = (not rec.on) and rec.t or nil
    rec.ons = rec.on and { rec.t } or {}
    rec.raw = encode_record(rec)
  else
    rec.off = tonumber(f[3]) -- nil for ""
    rec.ons = {}
    for t in string.gmatch(f[4], "[^;]+") do
      rec.ons[#rec.ons + 1] = tonumber(t)
    end
  end
  return rec
end

-- model.merge(current, model.record_of(event)): a new record.
local function merge(cur, t, on, p)
  if cur == nil then
    return { t = t, on = on, p = p, off = (not on) and t or nil, ons = on and { t } or {} }
  end
  local new = { t = cur.t, on = cur.on, p = cur.p, off = cur.off, ons = cur.ons }
  if beats({ t = t, on = on, p = p }, cur) then
    new.t, new.on, new.p = t, on, p
  end
  if on then
    if cur.off == nil or t >= cur.off then -- insert t, keeping ons sorted and unique
      local ons, placed = {}, false
      for _, x in ipairs(cur.ons) do
        if not placed and t <= x then
          if t < x then
            ons[#ons + 1] = t
          end
          placed = true
        end
        ons[#ons + 1] = x
      end
      if not placed then
        ons[#ons + 1] = t
      end
      new.ons = ons
    end
  elseif cur.off == nil or t > cur.off then -- a later offline cuts the online times before it
    new.off = t
    local ons = {}
    for _, x in ipairs(cur.ons) do
      if x >= t then
        ons[#ons + 1] = x
      end
    end
    new.ons = ons
  end
  return new
end

-- model.trim: keep the first online time; drop later ones older than floor; then keep at
-- most cap, the first and the newest.
local function trim(rec, floor)
  local ons = rec.ons
  if #ons <= 1 then
    return rec
  end
  local kept = { ons[1] }
  for i = 2, #ons do
    if ons[i] >= floor then
      kept[#kept + 1] = ons[i]
    end
  end
  if #kept > cap then
    local newest = { kept[1] }
    for i = #kept - cap + 2, #kept do
      newest[#newest + 1] = kept[i]
    end
    kept = newest
  end
  rec.ons = kept
  return rec
end

-- cjson escapes "/" as "\/"; msgspec does not. Both decode alike; keep the bytes identical.
-- Platform names repeat across the users of a call: each is encoded once per call.
local json_strings = {}
local function json_string(s)
  local encoded = json_strings[s]
  if encoded == nil then
    encoded = string.gsub(cjson.encode(s), "\\/", "/")
    json_strings[s] = encoded
  end
  return encoded
end

-- One user's device records and what was published for it.
local function load(key)
  local records = {}
  local old = { s = nil, v = 0, p = "", g = nil }
  local flat = redis.call("HGETALL", key)
  for i = 1, #flat, 2 do
    local field, value = flat[i], flat[i + 1]
    if string.sub(field, 1, 2) == "d:" then
      records[string.sub(field, 3)] = decode_record(value)
    elseif field == "v" or field == "g" then
      old[field] = tonumber(value)
    else
      old[field] = value
    end
  end
  return records, old
end

-- model.aggregate: online platforms with their earliest device since (the first online time
-- of the device's streak), sorted by platform; since = the earliest of those, else the latest
-- offline time. Returns the state's JSON up to "v" and its platform list.
local function aggregate(records, user_json)
  local online, platforms = {}, {}
  local last_seen = nil
  for _, rec in pairs(records) do
    if rec.on then
      local since = rec.ons[1] or rec.t
      local prev = online[rec.p]
      if prev == nil then
        online[rec.p] = since
        platforms[#platforms + 1] = rec.p
      elseif since < prev then
        online[rec.p] = since
      end
    elseif last_seen == nil or rec.t > last_seen then
      last_seen = rec.t
    end
  end
  if #platforms == 0 then
    return '{"user":' .. user_json .. ',"status":"offline","since":'
      .. (last_seen and fmt(last_seen) or "null") .. ',"devices":[],"v":', ""
  end
  table.sort(platforms, str_lt)
  local devices, names, since = {}, {}, nil
  for i, p in ipairs(platforms) do
    names[i] = json_string(p)
    devices[i] = '{"platform":' .. names[i] .. ',"since":' .. fmt(online[p]) .. "}"
    if since == nil or online[p] < since then
      since = online[p]
    end
  end
  return '{"user":' .. user_json .. ',"status":"online","since":' .. fmt(since)
    .. ',"devices":[' .. table.concat(devices, ",") .. '],"v":', table.concat(names, ",")
end

-- The state to publish from ``head`` (a state up to "v"), if it differs from the published
-- one: the JSON and the fields that store it, else false.
local function next_state(old, user_json, head, platforms)
  local previous = old.s
  if previous == nil then
    previous = '{"user":' .. user_json .. ',"status":"offline","since":null,"devices":[],"v":0}'
  end
  if string.sub(previous, 1, #head) == head then
    return false
  end
  local v = string.format("%d", math.max(old.v + 1, now)) -- model.next_version
  local state = head .. v .. "}"
  return state, { "s", state, "v", v, "p", platforms }
end

-- Write the fields in ``fields`` (name, value, name, value...): one HSET, or a few for many.
local function hset(key, fields)
  for i = 1, #fields, 256 do
    redis.call("HSET", key, unpack(fields, i, math.min(i + 255, #fields)))
  end
end

-- Sweep one user: publish its offline if its grace ended. Returns applied, ignored, state,
-- grace_end.
local function sweep(key, channel, user_json, tag)
  local records, old = load(key)
  if old.g == nil then
    redis.call("ZREM", index, tag) -- a stale entry (cancelled, expired, or swept elsewhere)
    return 0, 0, false, false
  elseif old.g > now then
    redis.call("ZADD", index, old.g, tag) -- the entry is the hash's g again
    return 0, 0, false, old.g
  end
  redis.call("HDEL", key, "g")
  redis.call("ZREM", index, tag)
  local head, platforms = aggregate(records, user_json)
  local state, fields = next_state(old, user_json, head, platforms)
  if state then
    hset(key, fields)
    redis.call("SPUBLISH", channel, state)
  end
  return 0, 0, state, false
end

-- Apply one user's events, ARGV[first..last]. Returns applied, ignored, state, grace_end.
local function apply(key, channel, user_json, first, last, tag)
  local records, old = load(key)
  -- Merge the events in order (model.is_fresh, model.merge, model.trim); an event that leaves
  -- its record as it was is ignored.
  local applied, ignored = 0, 0
  local dirty = {}
  for i = first, last, 4 do
    local device, t = ARGV[i], tonumber(ARGV[i + 1])
    if math.abs(now - t) > max_age then
      ignored = ignored + 1
    else
      local current = records[device]
      local new = trim(merge(current, t, ARGV[i + 2] == "1", ARGV[i + 3]), now - max_age)
      new.raw = encode_record(new)
      if current ~= nil and new.raw == current.raw then
        ignored = ignored + 1
      else
        records[device] = new
        dirty[device] = true
        applied = applied + 1
      end
    end
  end
  if applied == 0 then
    if old.g ~= nil then
      redis.call("ZADD", index, old.g, tag) -- a retried webhook restores a lost entry
    end
    return 0, ignored, false, old.g or false
  end

  -- Prune tombstones (model.prune).
  local cutoff = now - retention
  local gone = {}
  for device, rec in pairs(records) do
    if not rec.on and rec.t < cutoff then
      records[device] = nil
      dirty[device] = nil
      gone[#gone + 1] = "d:" .. device
    end
  end
  local fields = {}
  for device in pairs(dirty) do
    fields[#fields + 1] = "d:" .. device
    fields[#fields + 1] = records[device].raw
  end

  -- What to publish. Offline grace: the last device going offline is published only when the
  -- sweep finds the user still offline after the grace; a return on the same platforms before
  -- then shows nothing.
  local head, platforms = aggregate(records, user_json)
  local state, grace_end, published = false, false, nil
  if grace > 0 and platforms == "" and old.p ~= "" then
    grace_end = old.g
    if grace_end == nil then
      grace_end = now + grace
      fields[#fields + 1] = "g"
      fields[#fields + 1] = fmt(grace_end)
    end
    redis.call("ZADD", index, grace_end, tag) -- the mark and its entry, in one atomic step
  else
    if old.g ~= nil then
      gone[#gone + 1] = "g"
      redis.call("ZREM", index, tag)
    end
    if old.g == nil or platforms ~= old.p then
      state, published = next_state(old, user_json, head, platforms)
      for _, value in ipairs(published or {}) do
        fields[#fields + 1] = value
      end
    end
  end

  -- Write it all, then the key's lifetime: kept while a device is online; once all are
  -- offline, it expires last_seen_retention after the last-seen time (the latest offline
  -- record; MemoryStore forgets the user at that same time). Tombstones go before that, at
  -- the next apply past session_retention (model.prune).
  for i = 1, #gone, 256 do
    redis.call("HDEL", key, unpack(gone, i, math.min(i + 255, #gone)))
  end
  hset(key, fields)
  if platforms ~= "" then
    redis.call("PERSIST", key)
  else
    local seen = nil
    for _, rec in pairs(records) do
      if not rec.on and (seen == nil or rec.t > seen) then
        seen = rec.t
      end
    end
    redis.call("PEXPIRE", key, fmt(math.max(1, (seen or now) + last_seen_retention - now)))
  end
  if state then
    redis.call("SPUBLISH", channel, state)
  end
  return applied, ignored, state, grace_end
end

local out, o = {}, 0
local a = 7
for k = 2, #KEYS, 2 do
  local user_json, n = ARGV[a], tonumber(ARGV[a + 2])
  now = tonumber(ARGV[a + 1])
  local first = a + 3
  local last = first + 4 * n - 1
  local tag = string.match(KEYS[k], "{(.*)}$") -- the grace index member
  local applied, ignored, state, grace_end
  if mode == "sweep" then
    applied, ignored, state, grace_end = sweep(KEYS[k], KEYS[k + 1], user_json, tag)
  else
    applied, ignored, state, grace_end = apply(KEYS[k], KEYS[k + 1], user_json, first, last, tag)
  end
  out[o + 1], out[o + 2], out[o + 3], out[o + 4] = applied, ignored, state, grace_end
  o = o + 4
  a = last + 1
end
return out
