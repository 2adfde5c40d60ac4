-- canary_by_user_hash.lua: send a fixed share of users to the canary cluster.
--
-- A request carrying `user-id` goes to the cluster CANARY_CLUSTER when
-- `hash(user-id) % 100 < CANARY_PERCENT`. `hash` is the proxy's own xxh64 of the value,
-- the same on every worker, every proxy and after restarts, so a user stays on the same
-- side for as long as the percentage stays the same; raising it only moves more users
-- to the canary. Requests without `user-id` stay where the routes send them. Canary
-- requests also carry `x-canary=true` upstream.
--
-- Attach it to a listener (or a route). `route_to` overrides the destination of the
-- route the request matches; its timeout, retries and mutations still apply. Edit
-- CANARY_PERCENT and reload the configuration (SIGHUP) to move the split.

local CANARY_CLUSTER = "canary"
local CANARY_PERCENT = 10
local USER_ATTRIBUTE = "user-id"

function on_request(req)
  local user = req:get(USER_ATTRIBUTE)
  if user == nil or user == "" then
    return
  end
  if hash(user) % 100 < CANARY_PERCENT then
    req:route_to(CANARY_CLUSTER)
    req:set("x-canary", "true")
  end
end
