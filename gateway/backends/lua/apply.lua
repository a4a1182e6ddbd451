-- apply.lua: merge one user's presence events and publish the new state if watchers would see
-- a change; or (mode "sweep") end the user's offline grace. One atomic call per user. The rules
-- are gateway/model.py's and MemoryStore's, exactly: per-device last-writer-wins on (time,
-- online, platform), the freshness window, tombstone pruning, aggregate, next_version and the
-- offline grace. The store contract tests check that this and the memory store agree.
--
-- KEYS[1]  the user's hash. Fields:
--            d:<device>  "<time>,<0|1>,<platform>"   one device record
--            s           the last published state, JSON, exactly as published
--            v           its version
--            p           its online platforms, JSON strings joined by ","
--            g           while an offline waits out the grace: when the grace ends (ms)
-- KEYS[2]  the user's shard channel. Not a key: declared because it carries the same hash
--          tag, so cluster routing and the script's slot check cover the SPUBLISH too.
-- ARGV[1]  mode: "apply" (merge the events) or "sweep" (publish the offline if the grace ended)
-- ARGV[2]  now_ms (the caller's clock)
-- ARGV[3]  max_event_age_ms: events with |now - time| above it are ignored
-- ARGV[4]  session_retention_ms: offline records older than now - retention are pruned
-- ARGV[5]  expire_ms: the key's TTL once every device is offline
-- ARGV[6]  offline_grace_ms (0: publish offlines at once)
-- ARGV[7]  the user id as a JSON string literal (encoded by the caller, byte-equal to msgspec)
-- ARGV[8..] apply: the events, 4 values each, in arrival order: device, time, online (1|0),
--           platform
--
-- Returns {applied, ignored, state, grace_end}: state is the published JSON or nil; grace_end
-- is set while the user's offline waits out the grace (the caller indexes it for the sweep).

local key, channel = KEYS[1], KEYS[2]
local mode = ARGV[1]
local now = tonumber(ARGV[2])
local max_age = tonumber(ARGV[3])
local retention = tonumber(ARGV[4])
local expire_ms = ARGV[5]
local grace = tonumber(ARGV[6])
local user_json = ARGV[7]

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

local function decode_record(raw)
  local c1 = string.find(raw, ",", 1, true)
  local ts = string.sub(raw, 1, c1 - 1)
  return { ts = ts, t = tonumber(ts), on = string.sub(raw, c1 + 1, c1 + 1) == "1", p = string.sub(raw, c1 + 3) }
end

local function encode_record(rec)
  return rec.ts .. "," .. (rec.on and "1" or "0") .. "," .. rec.p
end

-- cjson escapes "/" as "\/"; msgspec does not. Both decode alike; keep the bytes identical.
local function json_string(s)
  return (string.gsub(cjson.encode(s), "\\/", "/"))
end

-- Load the device records and what was published.
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

-- model.aggregate: online platforms with their earliest online time, sorted by platform;
-- since = the earliest online time, else the latest offline time. Returns the state's JSON up
-- to "v" and its platform list.
local function aggregate()
  local online, platforms = {}, {}
  local last_seen = nil
  for _, rec in pairs(records) do
    if rec.on then
      local prev = online[rec.p]
      if prev == nil then
        online[rec.p] = rec
        platforms[#platforms + 1] = rec.p
      elseif rec.t < prev.t then
        online[rec.p] = rec
      end
    elseif last_seen == nil or rec.t > last_seen.t then
      last_seen = rec
    end
  end
  if #platforms == 0 then
    return '{"user":' .. user_json .. ',"status":"offline","since":'
      .. (last_seen and last_seen.ts or "null") .. ',"devices":[],"v":', ""
  end
  table.sort(platforms, str_lt)
  local devices, names, since = {}, {}, nil
  for i, p in ipairs(platforms) do
    local rec = online[p]
    names[i] = json_string(p)
    devices[i] = '{"platform":' .. names[i] .. ',"since":' .. rec.ts .. "}"
    if since == nil or rec.t < since.t then
      since = rec
    end
  end
  return '{"user":' .. user_json .. ',"status":"online","since":' .. since.ts
    .. ',"devices":[' .. table.concat(devices, ",") .. '],"v":', table.concat(names, ",")
end

-- Publish ``head`` (a state up to "v") if it differs from the published state; the JSON or false.
local function publish(head, platforms)
  local previous = old.s
  if previous == nil then
    previous = '{"user":' .. user_json .. ',"status":"offline","since":null,"devices":[],"v":0}'
  end
  if string.sub(previous, 1, #head) == head then
    return false
  end
  local v = string.format("%d", math.max(old.v + 1, now)) -- model.next_version
  local state = head .. v .. "}"
  redis.call("HSET", key, "s", state, "v", v, "p", platforms)
  redis.call("SPUBLISH", channel, state)
  return state
end

if mode == "sweep" then
  if old.g == nil then
    return { 0, 0, false, false }
  elseif old.g > now then
    return { 0, 0, false, old.g }
  end
  redis.call("HDEL", key, "g")
  local head, platforms = aggregate()
  return { 0, 0, publish(head, platforms), false }
end

-- Merge the events in order (model.merge, model.is_fresh).
local applied, ignored = 0, 0
local dirty = {}
for i = 8, #ARGV, 4 do
  local ts = ARGV[i + 1]
  local incoming = { ts = ts, t = tonumber(ts), on = ARGV[i + 2] == "1", p = ARGV[i + 3] }
  local device = ARGV[i]
  local current = records[device]
  if math.abs(now - incoming.t) > max_age then
    ignored = ignored + 1
  elseif current ~= nil and not beats(incoming, current) then
    ignored = ignored + 1
  else
    records[device] = incoming
    dirty[device] = true
    applied = applied + 1
  end
end
if applied == 0 then
  return { 0, ignored, false, old.g or false }
end

-- Prune tombstones (model.prune), then write what changed.
local cutoff = now - retention
for device, rec in pairs(records) do
  if not rec.on and rec.t < cutoff then
    records[device] = nil
    dirty[device] = nil
    redis.call("HDEL", key, "d:" .. device)
  end
end
for device in pairs(dirty) do
  redis.call("HSET", key, "d:" .. device, encode_record(records[device]))
end

local head, platforms = aggregate()
-- Keep the key while a device is online; once all are offline, let it expire.
if platforms ~= "" then
  redis.call("PERSIST", key)
else
  redis.call("PEXPIRE", key, expire_ms)
end

-- Offline grace: the last device going offline is published only when the sweep finds the
-- user still offline after the grace; a return on the same platforms before then shows nothing.
if grace > 0 and platforms == "" and old.p ~= "" then
  if old.g == nil then
    old.g = now + grace
    redis.call("HSET", key, "g", string.format("%d", old.g))
  end
  return { applied, ignored, false, old.g }
end
if old.g ~= nil then
  redis.call("HDEL", key, "g")
  if platforms == old.p then
    return { applied, ignored, false, false }
  end
end
return { applied, ignored, publish(head, platforms), false }
