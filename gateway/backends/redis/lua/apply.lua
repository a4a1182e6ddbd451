-- apply.lua: merge the presence events of one or more users and publish each new state that
-- watchers would see change; or (mode "sweep") end the users' offline grace. One atomic call for
-- all its users: the caller sends one call per hash slot on Redis Cluster (a call's keys must
-- share a slot there) and any mix of users on standalone Redis. The rules are gateway/model.py's
-- and MemoryStore's, exactly: per-device merge (last-writer-wins on (time, online, platform) plus
-- the online and offline times seen), the freshness window, eviction beyond max_devices,
-- tombstone pruning, compaction (trim and the anchor), aggregate (the since of the continuous
-- online period), next_version and the offline grace. The store contract tests check that
-- this and the memory store agree.
--
-- KEYS[1]     the grace index of the call: sorted set, member = user tag (the hash tag of the
--            user's key, "<app>/<escaped user>"), score = when its grace ends (ms). One key on
--            standalone Redis; on Cluster the index of the call's hash slot. apply and sweep
--            keep it equal to the users' g fields in the same atomic step.
-- KEYS[2i]    user i's hash. Fields:
--            d:<device>  one device record (model.DeviceRecord):
--                        "<time>,<+|->,<base>,<on1>;<on2>;...,<off1>;<off2>;...,<platform>"
--                        time, online (+), platform: the last-writer-wins winner; the online
--                        and the offline times kept, sorted ("" if none); base: the start of
--                        the online interval in progress at the horizon ("" if none). The
--                        platform is last, so nothing in it can break the parse. The older
--                        forms "<time>,<0|1>,<off>,<ons>,<platform>" (the latest offline and
--                        the onlines since it) and "<time>,<0|1>,<platform>" are read too.
--            a           the user's anchor of its compacted history, "<start>,<end>"
--            a:<platform> that platform's (model.compact)
--            s           the last published state, JSON, exactly as published
--            v           its version
--            p           its online platforms, JSON strings joined by ","
--            g           while an offline waits out the grace: when the grace ends (ms)
--            c           the user's custom status (model.CustomRecord): "<time>,<text as JSON>",
--                        the winner by (time, text in byte order); the text "" once cleared
-- KEYS[2i+1]  user i's shard channel. Not a key: declared because it carries the same hash
--            tag, so cluster routing and the script's slot check cover the SPUBLISH too.
-- KEYS[2n+2..] after the n users' pairs, per app of the call with webhooks out (SPEC 9): its
--            stream in the call's slot (gateway/outbound/keys.py) and the set of the
--            consumer groups made on that stream.
-- ARGV[1]  mode: "apply" (merge the events) or "sweep" (publish the offline if the grace ended)
-- ARGV[2]  max_event_age_ms: events older than now - max_event_age_ms are ignored
-- ARGV[3]  session_retention_ms: offline records older than now - retention are pruned
-- ARGV[4]  last_seen_retention_ms: once every device is offline the key expires this long
--          after the user's last-seen time (its latest offline record)
-- ARGV[5]  offline_grace_ms (0: publish offlines at once)
-- ARGV[6]  max_marks: the most online and offline times a record keeps (model.MAX_MARKS)
-- ARGV[7]  future_skew_ms: events stamped later than now + future_skew_ms are ignored
-- ARGV[8]  max_devices_per_user: the most device records a user keeps (model.evict)
-- ARGV[9..] per user, in KEYS order: the user id as a JSON string literal (encoded by the
--           caller, byte-equal to msgspec); now_ms, the caller's clock for this user (a call
--           may carry users of several webhooks); hook: "" (no webhooks out) or
--           "<k>,<maxlen>,<types>,<group>;<group>...": KEYS[k] the app's stream, KEYS[k+1]
--           its group set, types the letters of the wanted types (n online, f offline,
--           u updated); n, its number of events (0 to sweep); then
--           its n events, 4 values each, in arrival order: device, time, online (1|0), platform;
--           or, for a custom status event (model.custom_event): text, time, "c", the text as a
--           JSON string literal (msgspec's bytes; "" clears). The state shows it as "custom"
--           (null when cleared) after "v", as msgspec orders model.UserState.
--
-- Returns 4 values per user, in KEYS order: applied, ignored, state, grace_end. state is the
-- published JSON or nil; grace_end is set while the user's offline waits out the grace (its
-- entry in KEYS[1] is written here; on Cluster the caller also hints the slot to the sweep).

local mode = ARGV[1]
local now -- per user: see the loop at the end
local hook -- per user: its app's webhooks out, see enqueue
local max_age = tonumber(ARGV[2])
local retention = tonumber(ARGV[3])
local last_seen_retention = tonumber(ARGV[4])
local index = KEYS[1]
local grace = tonumber(ARGV[5])
local cap = tonumber(ARGV[6])
local future_skew = tonumber(ARGV[7])
local max_devices = tonumber(ARGV[8])
local join = math.max(grace, 1) -- model._chains: a gap of 1 ms breaks a chain without a grace

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

-- Times joined by ";" ("" for none).
local function join_times(list)
  if #list == 0 then
    return ""
  elseif #list == 1 then
    return fmt(list[1])
  end
  local texts = {}
  for i, t in ipairs(list) do
    texts[i] = fmt(t)
  end
  return table.concat(texts, ";")
end

local function encode_record(rec)
  -- The platform is appended, never formatted: "%s" would cut it at a NUL byte.
  return string.format("%d,%s,%s,%s,%s,", rec.t, rec.on and "+" or "-",
    rec.base and fmt(rec.base) or "", join_times(rec.ons), join_times(rec.offs)) .. rec.p
end

local function parse_times(text)
  local list = {}
  if string.find(text, ";", 1, true) == nil then
    list[1] = tonumber(text) -- stays empty for ""
  else
    for time in string.gmatch(text, "%d+") do
      list[#list + 1] = tonumber(time)
    end
  end
  return list
end

-- A record: { t, on, p, ons, offs (sorted arrays), base (nil if none) }.
local function decode_record(raw)
  -- The form this script writes, in one match; the older forms take the general path below.
  local t, on, base, ons, offs = string.match(raw, "^(%d+),([%+%-]),(%d*),([%d;]*),([%d;]*),")
  if t ~= nil then
    return {
      t = tonumber(t),
      on = on == "+",
      p = string.sub(raw, #t + #base + #ons + #offs + 7),
      base = tonumber(base), -- nil for ""
      ons = parse_times(ons),
      offs = parse_times(offs),
    }
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
  local rec = { t = tonumber(f[1]), on = f[2] == "1", p = string.sub(raw, from) }
  if #f == 2 then -- "<time>,<0|1>,<platform>": the record of that one event
    rec.ons = rec.on and { rec.t } or {}
    rec.offs = rec.on and {} or { rec.t }
  else -- "<time>,<0|1>,<off>,<ons>,<platform>": the latest offline, the onlines since it
    local off = tonumber(f[3])
    rec.offs = off and { off } or {}
    rec.ons = parse_times(f[4])
  end
  return rec
end

-- Insert t into the sorted list, in place; false if it is there already. From the end: a new
-- latest time (the usual case) costs one comparison.
local function insert(list, t)
  local pos = #list + 1
  while pos > 1 and list[pos - 1] >= t do
    if list[pos - 1] == t then
      return false
    end
    pos = pos - 1
  end
  table.insert(list, pos, t)
  return true
end

-- model.merge(current, model.record_of(event)), in place: the record, and whether it changed.
local function merge(cur, t, on, p)
  if cur == nil then
    return { t = t, on = on, p = p, ons = on and { t } or {}, offs = on and {} or { t } }, true
  end
  local changed = insert(on and cur.ons or cur.offs, t)
  if beats({ t = t, on = on, p = p }, cur) then
    cur.t, cur.on, cur.p = t, on, p
    changed = true
  end
  return cur, changed
end

-- model._walk: walk rec's marks in rank order (an offline before an online of the same ms) from
-- its base, while fewer than skip are walked or the next is older than floor; append the
-- intervals they end ({start, end}) to spans. Returns the start of the interval still open
-- (nil if none) and the indexes of the first marks not walked in ons and offs.
local function walk(rec, floor, skip, spans)
  local ons, offs = rec.ons, rec.offs
  local i, j, walked, start = 1, 1, 0, rec.base
  local last_end = nil -- the end of the interval this walk appended last
  while true do
    local on_t, off_t = ons[i], offs[j]
    local t, online
    if off_t ~= nil and (on_t == nil or off_t <= on_t) then
      t, online = off_t, false
    elseif on_t ~= nil then
      t, online = on_t, true
    else
      break
    end
    if walked >= skip and t >= floor then
      break
    end
    walked = walked + 1
    if online then
      i = i + 1
      if start == nil then
        if last_end == t then -- back online in the ms it went offline: never was offline
          start = table.remove(spans)[1]
        else
          start = t
        end
      end
    else
      j = j + 1
      if start ~= nil then
        spans[#spans + 1] = { start, t }
        start, last_end = nil, t
      end
    end
  end
  return start, i, j
end

local function tail(list, from)
  local out = {}
  for k = from, #list do
    out[#out + 1] = list[k]
  end
  return out
end

-- model.trim, in place: fold the marks older than floor, and beyond cap marks the oldest, into
-- base; append the intervals they ended to ended. Returns whether the record changed.
local function trim(rec, floor, ended)
  local skip = math.max(#rec.ons + #rec.offs - cap, 0)
  local on_t, off_t = rec.ons[1], rec.offs[1]
  if skip == 0 and (on_t == nil or on_t >= floor) and (off_t == nil or off_t >= floor) then
    return false
  end
  local start, i, j = walk(rec, floor, skip, ended)
  rec.ons, rec.offs, rec.base = tail(rec.ons, i), tail(rec.offs, j), start
  return true
end

-- model._chains: the last chain of spans ({start, end}, end math.huge while open), an interval
-- joining when it starts less than join ms after the chain's end. Returns its start and end.
local function chain(spans)
  table.sort(spans, function(x, y)
    return x[1] < y[1]
  end)
  local cs, ce = nil, nil
  for _, span in ipairs(spans) do
    if cs == nil or span[1] >= ce + join then
      cs, ce = span[1], span[2]
    elseif span[2] > ce then
      ce = span[2]
    end
  end
  return cs, ce
end

-- The last chain of spans as an anchor ({start, end}), or nil where nothing from below the
-- floor can join anything any more (see model.compact).
local function settle(spans, crossing, floor)
  local cs, ce = chain(spans)
  if cs == nil or ce == math.huge or (not crossing and ce + join <= floor) then
    return nil
  end
  return { cs, ce }
end

-- model.compact: trim every record at floor (marking the changed ones dirty) and fold what they
-- drop (and ended, {start, end, platform} folded while merging) into the anchors: { all = the
-- user's ({start, end} or nil), by = { [platform] = {start, end} } }. Returns the new anchors
-- and whether they may have changed.
local function compact(records, anchors, floor, ended, dirty)
  local changed = #ended > 0
  for device, rec in pairs(records) do
    local from = #ended
    if trim(rec, floor, ended) then
      dirty[device] = true
      changed = true
      for k = from + 1, #ended do
        ended[k][3] = rec.p
      end
    end
  end
  if not changed then
    return anchors, false
  end
  local all, by, crossing = {}, {}, {}
  local function add(p, span)
    all[#all + 1] = span
    local list = by[p]
    if list == nil then
      list = {}
      by[p] = list
    end
    list[#list + 1] = span
  end
  for _, span in ipairs(ended) do
    add(span[3], { span[1], span[2] })
  end
  all[#all + 1] = anchors.all
  for p, anchor in pairs(anchors.by) do
    local list = by[p]
    if list == nil then
      list = {}
      by[p] = list
    end
    list[#list + 1] = anchor
  end
  local any = false
  for _, rec in pairs(records) do
    if rec.base ~= nil then
      any, crossing[rec.p] = true, true
      if rec.base < floor then
        add(rec.p, { rec.base, floor })
      end
    end
  end
  local out = { all = settle(all, any, floor), by = {} }
  for p, list in pairs(by) do
    out.by[p] = settle(list, crossing[p], floor)
  end
  return out, true
end

-- model.evict: drop records beyond keep, the oldest offline first, then the online with the
-- oldest time (ties: the smaller device key); a stored one is deleted. Returns the count left.
local function evict(records, keep, dirty, stored, gone)
  local order = {}
  for device in pairs(records) do
    order[#order + 1] = device
  end
  if #order <= keep then
    return #order
  end
  table.sort(order, function(x, y)
    local a, b = records[x], records[y]
    if a.on ~= b.on then
      return b.on
    end
    if a.t ~= b.t then
      return a.t < b.t
    end
    return str_lt(x, y)
  end)
  for k = 1, #order - keep do
    local device = order[k]
    records[device], dirty[device] = nil, nil
    if stored[device] then
      gone[#gone + 1] = "d:" .. device
    end
  end
  return keep
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
  local old = { s = nil, v = 0, p = "", g = nil, by = {} }
  local flat = redis.call("HGETALL", key)
  for i = 1, #flat, 2 do
    local field, value = flat[i], flat[i + 1]
    local kind = string.sub(field, 1, 2)
    if kind == "d:" then
      records[string.sub(field, 3)] = decode_record(value)
    elseif kind == "a:" then
      old.by[string.sub(field, 3)] = value -- a platform's anchor
    elseif field == "v" or field == "g" then
      old[field] = tonumber(value)
    else
      old[field] = value
    end
  end
  return records, old
end

-- model.aggregate: the online platforms, sorted, each with the start of the last chain of its
-- devices' intervals and its anchor; since = the start of the last chain of every device's
-- intervals and the user's anchor (see chain), else the latest offline time. Returns the
-- state's JSON up to "v" and its platform list.
local function aggregate(records, user_json, anchors)
  local online, platforms, by = {}, {}, {}
  local last_seen = nil
  local all = { anchors.all }
  for p, anchor in pairs(anchors.by) do
    by[p] = { anchor }
  end
  for _, rec in pairs(records) do
    local list = by[rec.p]
    if list == nil then
      list = {}
      by[rec.p] = list
    end
    local from = #list
    local start = walk(rec, math.huge, 0, list)
    if start ~= nil then
      list[#list + 1] = { start, math.huge }
    end
    for k = from + 1, #list do
      all[#all + 1] = list[k]
    end
    if rec.on then
      if not online[rec.p] then
        online[rec.p] = true
        platforms[#platforms + 1] = rec.p
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
  local devices, names = {}, {}
  for i, p in ipairs(platforms) do
    names[i] = json_string(p)
    devices[i] = '{"platform":' .. names[i] .. ',"since":' .. fmt((chain(by[p]))) .. "}"
  end
  local since = chain(all)
  return '{"user":' .. user_json .. ',"status":"online","since":' .. fmt(since)
    .. ',"devices":[' .. table.concat(devices, ",") .. '],"v":', table.concat(names, ",")
end

-- An anchor as stored ("<start>,<end>"), or nil.
local function parse_anchor(text)
  local cs, ce = string.match(text or "", "^(%d+),(%d+)$")
  if cs == nil then
    return nil
  end
  return { tonumber(cs), tonumber(ce) }
end

-- The anchors stored in fields a (the user's) and a:<platform>.
local function parse_anchors(old)
  local anchors = { all = parse_anchor(old.a), by = {} }
  for p, text in pairs(old.by) do
    anchors.by[p] = parse_anchor(text)
  end
  return anchors
end

-- The fields that store anchors in place of old's: set (into fields) and deleted (into gone).
local function store_anchors(old, anchors, fields, gone)
  if anchors.all ~= nil then
    fields[#fields + 1] = "a"
    fields[#fields + 1] = fmt(anchors.all[1]) .. "," .. fmt(anchors.all[2])
  elseif old.a ~= nil then
    gone[#gone + 1] = "a"
  end
  for p, anchor in pairs(anchors.by) do
    fields[#fields + 1] = "a:" .. p
    fields[#fields + 1] = fmt(anchor[1]) .. "," .. fmt(anchor[2])
  end
  for p in pairs(old.by) do
    if anchors.by[p] == nil then
      gone[#gone + 1] = "a:" .. p
    end
  end
end

-- The custom record stored in field c: { t, json }, or nil.
local function parse_custom(raw)
  local t, json = string.match(raw or "", "^(%d+),(.*)$")
  if t == nil then
    return nil
  end
  return { t = tonumber(t), json = json }
end

-- How the state shows a custom record: its JSON, or null (none, or cleared).
local function shown_custom(c)
  if c == nil or c.json == '""' then
    return "null"
  end
  return c.json
end

-- The state to publish from ``head`` (a state up to "v"; nil: the devices part as published)
-- and ``custom`` (as shown_custom gives it), if it differs from the published one: the JSON
-- and the fields that store it, else false. ",\"v\":" occurs once in a state: inside a JSON
-- string every quote follows a backslash.
local function next_state(old, user_json, head, platforms, custom)
  local previous = old.s
  if previous == nil then
    previous = '{"user":' .. user_json .. ',"status":"offline","since":null,"devices":[],"v":0}'
  end
  local at = string.find(previous, ',"v":', 1, true)
  local shown = string.sub(previous, 1, at + 4)
  head = head or shown
  if head == shown
    and custom == (string.match(previous, '^%d+,"custom":(.*)}$', at + 5) or "null") then
    return false
  end
  local v = string.format("%d", math.max(old.v + 1, now)) -- model.next_version
  local state = head .. v .. ',"custom":' .. custom .. "}"
  return state, { "s", state, "v", v, "p", platforms }
end

-- Webhooks out: queue the state just published, in the same atomic step (SPEC 9). A status
-- change is user.online / user.offline, any other change user.updated; only types some
-- endpoint of the app wants are queued. Groups an endpoint needs are made at "$" just before
-- the XADD, so a new endpoint gets every change queued since a node knew it.
local function enqueue(was, platforms, state)
  if hook == "" then
    return
  end
  local k, maxlen, types, groups = string.match(hook, "^(%d+),(%d+),(%a*),(.*)$")
  local kind, letter = "user.updated", "u"
  if (was == "") ~= (platforms == "") then
    if platforms == "" then
      kind, letter = "user.offline", "f"
    else
      kind, letter = "user.online", "n"
    end
  end
  if k == nil or not string.find(types, letter, 1, true) then
    return
  end
  local stream, known = KEYS[tonumber(k)], KEYS[tonumber(k) + 1]
  if redis.call("EXISTS", stream) == 0 then
    redis.call("DEL", known)
  end
  local names = {}
  for name in string.gmatch(groups, "[^;]+") do
    names[#names + 1] = name
  end
  if #names > 0 then
    local have = redis.call("SMISMEMBER", known, unpack(names))
    for i, name in ipairs(names) do
      if have[i] == 0 then
        redis.pcall("XGROUP", "CREATE", stream, name, "$", "MKSTREAM")
        redis.call("SADD", known, name)
      end
    end
  end
  redis.call("XADD", stream, "MAXLEN", "~", maxlen, "*", "t", kind, "s", state, "at", fmt(now))
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
  local head, platforms = aggregate(records, user_json, parse_anchors(old))
  local state, fields = next_state(old, user_json, head, platforms,
    shown_custom(parse_custom(old.c)))
  if state then
    hset(key, fields)
    redis.call("SPUBLISH", channel, state)
    enqueue(old.p, platforms, state)
  end
  return 0, 0, state, false
end

-- Apply one user's events, ARGV[first..last]. Returns applied, ignored, state, grace_end.
local function apply(key, channel, user_json, first, last, tag)
  local records, old = load(key)
  -- Merge the events in order (model.is_fresh, model.merge); an event that leaves its record as
  -- it was is ignored. Bounded as MemoryStore.apply does it: a record past twice the marks cap
  -- is trimmed at once, and past twice max_devices records the oldest are evicted at once.
  local applied, ignored = 0, 0
  local dirty, stored, gone, ended = {}, {}, {}, {}
  local count = 0
  for device in pairs(records) do
    stored[device] = true
    count = count + 1
  end
  local floor = now - max_age
  local custom, custom_text = parse_custom(old.c), nil -- custom_text: custom's, once decoded
  local device_applied = 0
  for i = first, last, 4 do
    local device, t = ARGV[i], tonumber(ARGV[i + 1])
    if t < floor or t > now + future_skew then
      ignored = ignored + 1
    elseif ARGV[i + 2] == "c" then -- model.merge_custom: the later time, then the larger text
      if custom ~= nil and custom_text == nil then
        custom_text = cjson.decode(custom.json)
      end
      if custom == nil or t > custom.t or (t == custom.t and str_lt(custom_text, device)) then
        custom, custom_text = { t = t, json = ARGV[i + 3], new = true }, device
        applied = applied + 1
      else
        ignored = ignored + 1
      end
    else
      local current = records[device]
      local rec, changed = merge(current, t, ARGV[i + 2] == "1", ARGV[i + 3])
      if not changed then
        ignored = ignored + 1
      else
        applied = applied + 1
        device_applied = device_applied + 1
        dirty[device] = true
        if #rec.ons + #rec.offs > 2 * cap then
          local from = #ended
          trim(rec, floor, ended)
          for k = from + 1, #ended do
            ended[k][3] = rec.p
          end
        end
        if current == nil then
          records[device] = rec
          count = count + 1
          if count > 2 * max_devices then
            count = evict(records, max_devices, dirty, stored, gone)
          end
        end
      end
    end
  end
  if applied == 0 then
    if old.g ~= nil then
      redis.call("ZADD", index, old.g, tag) -- a retried webhook restores a lost entry
    end
    return 0, ignored, false, old.g or false
  end
  local fields = {}
  if custom ~= nil and custom.new then
    fields[1], fields[2] = "c", fmt(custom.t) .. "," .. custom.json
  end
  local shown = shown_custom(custom)
  if device_applied == 0 then
    -- Only the custom changed: the devices part stays as published (an offline waiting out
    -- the grace included), the records and the key's lifetime as they are (a key without
    -- records, new or not, lives last_seen_retention from now, as MemoryStore's user does).
    local state, published = next_state(old, user_json, nil, old.p, shown)
    for _, value in ipairs(published or {}) do
      fields[#fields + 1] = value
    end
    hset(key, fields)
    if next(records) == nil then
      redis.call("PEXPIRE", key, fmt(math.max(1, last_seen_retention)))
    end
    if old.g ~= nil then
      redis.call("ZADD", index, old.g, tag)
    end
    if state then
      redis.call("SPUBLISH", channel, state)
      enqueue(old.p, old.p, state)
    end
    return applied, ignored, state, old.g or false
  end

  evict(records, max_devices, dirty, stored, gone) -- model.evict

  -- Prune tombstones (model.prune).
  local cutoff = now - retention
  for device, rec in pairs(records) do
    if not rec.on and rec.t < cutoff then
      records[device] = nil
      dirty[device] = nil
      if stored[device] then
        gone[#gone + 1] = "d:" .. device
      end
    end
  end
  -- Compact the history below the floor (model.compact); fields a and a:<platform> hold the
  -- anchors.
  local anchors, moved = compact(records, parse_anchors(old), floor, ended, dirty)
  if moved then
    store_anchors(old, anchors, fields, gone)
  end
  for device in pairs(dirty) do
    fields[#fields + 1] = "d:" .. device
    fields[#fields + 1] = encode_record(records[device])
  end

  -- What to publish. Offline grace: the last device going offline is published only when the
  -- sweep finds the user still offline after the grace; a return on the same platforms before
  -- then shows nothing.
  local head, platforms = aggregate(records, user_json, anchors)
  local state, grace_end, published = false, false, nil
  if grace > 0 and platforms == "" and old.p ~= "" then
    grace_end = old.g
    if grace_end == nil then
      grace_end = now + grace
      fields[#fields + 1] = "g"
      fields[#fields + 1] = fmt(grace_end)
    end
    redis.call("ZADD", index, grace_end, tag) -- the mark and its entry, in one atomic step
    state, published = next_state(old, user_json, nil, old.p, shown) -- a custom shows at once
  else
    if old.g ~= nil then
      gone[#gone + 1] = "g"
      redis.call("ZREM", index, tag)
    end
    if old.g == nil or platforms ~= old.p then
      state, published = next_state(old, user_json, head, platforms, shown)
    else -- back on the same platforms within the grace: only a custom change shows
      state, published = next_state(old, user_json, nil, old.p, shown)
    end
  end
  for _, value in ipairs(published or {}) do
    fields[#fields + 1] = value
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
    enqueue(old.p, published[6], state) -- published[6]: the platforms of the state published
  end
  return applied, ignored, state, grace_end
end

local out, o = {}, 0
local a = 9
local k = 2
while a <= #ARGV do
  local user_json, n = ARGV[a], tonumber(ARGV[a + 3])
  now = tonumber(ARGV[a + 1])
  hook = ARGV[a + 2]
  local first = a + 4
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
  k = k + 2
end
return out
