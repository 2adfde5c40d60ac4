-- add_response_attribute.lua: tell the client who answered and how it was routed.
--
-- Every upstream answer gets two attributes on its way back:
--   x-served-by  the name of this proxy (SERVED_BY);
--   x-tier       the tier the request was routed with: its `x-tier` attribute as it left
--                the proxy (set by a route's request_mutation or by a hook such as
--                route_by_batchjob.lua), `standard` when it had none.
-- On HTTP these are response headers. Dubbo clients see them as response attachments
-- when they can read those (Dubbo version 2.0.2 to 2.0.99, as with response_mutation).
-- Local replies (no route, rejected, timeout, ...) do not pass through on_response.
--
-- `req` is the request as it went upstream, read-only here. Attach it to a listener or a
-- route; response hooks run after the route's response_mutation.

local SERVED_BY = "metamesh"

function on_response(resp, req)
  resp:set("x-served-by", SERVED_BY)
  resp:set("x-tier", req:get("x-tier") or "standard")
end
