-- mark_redelivered(env): kombu's envelope text marked as kombu's
-- _do_restore_message marks a restored message: headers.redelivered and
-- properties.delivery_info.redelivered set to true (delivery_info is added
-- when missing, so every reader sees the mark). Only those members are
-- edited; the rest of the text stays byte for byte (a cjson round trip
-- would rewrite numbers beyond 14 digits, empty arrays and slashes).
-- Text that does not parse as an object comes back unchanged.

local find, sub, NB = string.find, string.sub, '[^ \t\r\n]'

-- Start and past-the-end of the JSON value at or after i (whitespace
-- skipped), on text known to be valid JSON; nil when the text ends first.
local function json_value(s, i)
  i = find(s, NB, i)
  if not i then return nil end
  local c = sub(s, i, i)
  if c == '"' then
    local j = i + 1
    while true do
      local k = find(s, '["\\]', j)
      if not k then return nil end
      if sub(s, k, k) == '"' then return i, k + 1 end
      j = k + 2
    end
  elseif c == '{' or c == '[' then
    local depth, j = 0, i
    while true do
      local k = find(s, '["{}%[%]]', j)
      if not k then return nil end
      local ch = sub(s, k, k)
      if ch == '"' then
        local _, e = json_value(s, k)
        if not e then return nil end
        j = e
      else
        if ch == '{' or ch == '[' then depth = depth + 1 else depth = depth - 1 end
        j = k + 1
        if depth == 0 then return i, j end
      end
    end
  end
  local k = find(s, '[,}%] \t\r\n]', i)
  return i, k or #s + 1
end

-- Start and past-the-end of member `key`'s value in the object whose '{'
-- is at o; nil when it has no such member.
local function json_member(s, o, key)
  local j = o + 1
  while true do
    local ks = find(s, NB, j)
    if not ks or sub(s, ks, ks) ~= '"' then return nil end
    local _, ke = json_value(s, ks)
    local colon = ke and find(s, ':', ke, true)
    if not colon then return nil end
    local vs, ve = json_value(s, colon + 1)
    if not vs then return nil end
    if cjson.decode(sub(s, ks, ke - 1)) == key then return vs, ve end
    local sep = find(s, NB, ve)
    if not sep or sub(s, sep, sep) ~= ',' then return nil end
    j = sep + 1
  end
end

-- s with member `key` of the object at o set to `value` (JSON text),
-- replacing its value or adding the member first.
local function json_set(s, o, key, value)
  local vs, ve = json_member(s, o, key)
  if vs then return sub(s, 1, vs - 1) .. value .. sub(s, ve) end
  local first = find(s, NB, o + 1)
  local member = cjson.encode(key) .. ':' .. value
  if sub(s, first, first) ~= '}' then member = member .. ',' end
  return sub(s, 1, o) .. member .. sub(s, o + 1)
end

local function mark_redelivered(env)
  if not pcall(cjson.decode, env) then return env end
  local o = find(env, NB)
  if not o or sub(env, o, o) ~= '{' then return env end
  local hs = json_member(env, o, 'headers')
  if hs and sub(env, hs, hs) == '{' then
    env = json_set(env, hs, 'redelivered', 'true')
  end
  local ps = json_member(env, o, 'properties')
  if ps and sub(env, ps, ps) == '{' then
    local ds = json_member(env, ps, 'delivery_info')
    if ds and sub(env, ds, ds) == '{' then
      env = json_set(env, ds, 'redelivered', 'true')
    elseif not ds then
      env = json_set(env, ps, 'delivery_info', '{"redelivered":true}')
    end
  end
  return env
end
