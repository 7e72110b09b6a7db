-- kombu's envelope text inside an unacked value `[env, exchange, rk]`: the
-- raw object when it parses, else the re-encoded one.
local function envelope_of(v)
  local a = string.find(v, '{', 1, true)
  local p = string.match(v, '^.*()}')
  if a and p and p > a then
    local s = string.sub(v, a, p)
    if pcall(cjson.decode, s) then return s end
  end
  local ok, d = pcall(cjson.decode, v)
  if ok and type(d) == 'table' and type(d[1]) == 'table' then
    return cjson.encode(d[1])
  end
  return nil
end
