-- copy_header_between_protocols.lua: one name for the user id across protocols.
--
-- HTTP services pass the user id in the header `x-user-id`, Dubbo services in the
-- attachment `userId`. This hook makes every request carry both names with the same
-- value, taken from the name native to the request's protocol (`req:protocol()`) when it
-- is there, else from the other one. Routes, hash_policy, rate limits and later hooks can
-- then use `x-user-id` whatever the protocol, and every upstream finds the name it
-- expects. Attribute names compare case-insensitively, so `userId` also finds `userid`.
--
-- Attach it first in the `hooks` of every listener, so everything after it sees both.

local NAMES = {
  http = { "x-user-id", "userId" },
  dubbo = { "userId", "x-user-id" },
  thrift = { "x-user-id", "userId" },
}

function on_request(req)
  local names = NAMES[req:protocol()]
  if names == nil then
    return
  end
  local value
  for _, name in ipairs(names) do
    value = req:get(name)
    if value ~= nil then
      break
    end
  end
  if value == nil then
    return
  end
  for _, name in ipairs(names) do
    if req:get(name) ~= value then
      req:set(name, value)
    end
  end
end
