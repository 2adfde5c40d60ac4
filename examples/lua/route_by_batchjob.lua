-- route_by_batchjob.lua: send Dubbo batch-job calls to the batch providers.
--
-- A Dubbo consumer marks a batch call with the attachment `batchjob=true`. This hook
-- tags such calls `x-tier=batch`; a route matching `x-tier: { exact: batch }` then sends
-- them to the batch cluster, and the providers receive the `x-tier` attachment too.
-- A client cannot choose the tier itself: an `x-tier` it sent on a call that is not a
-- batch job is removed before the route match.
--
-- Attach it to a Dubbo listener (`listeners[].hooks`): listener hooks run before the
-- route match, so the attribute set here picks the route. Calls of other protocols pass
-- untouched.
--
--   routes:
--     - name: batch
--       match: { attributes: { x-tier: { exact: batch } } }
--       route: [{ cluster: demo-batchjob }]
--
-- Without such a route, `req:route_to("demo-batchjob")` in place of the `req:set` line
-- sends the call to that cluster directly.

local TIER = "batch"

function on_request(req)
  if req:protocol() ~= "dubbo" then
    return
  end
  if req:get("batchjob") == "true" then
    req:set("x-tier", TIER)
  elseif req:get("x-tier") ~= nil then
    req:remove("x-tier")
  end
end
