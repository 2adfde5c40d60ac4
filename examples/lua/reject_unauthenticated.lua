-- reject_unauthenticated.lua: answer calls without a valid token locally.
--
-- A call must carry either `authorization: Bearer <token>` (an HTTP header, or a Dubbo
-- attachment or Thrift header of that name) or `token: <token>` (the attachment Dubbo's
-- own token check uses), with a token listed in TOKENS. Anything else is rejected: the
-- client gets its protocol's "rejected" reply (Dubbo status 70 with the text below,
-- HTTP 403, Thrift TApplicationException) and nothing goes upstream. An accepted call
-- carries `x-auth-principal` (the token's owner) upstream, replacing any the client sent.
--
-- Attach it to a listener to guard everything, or to the routes of the services to
-- protect. To rotate a token, edit TOKENS and reload the configuration (SIGHUP);
-- requests already under way finish under the old list.

local TOKENS = {
  ["s3cr3t-reporting"] = "reporting",
  ["s3cr3t-billing"] = "billing",
}

local function token_of(req)
  local authorization = req:get("authorization")
  if authorization ~= nil then
    return authorization:match("^[Bb]earer%s+(%S+)%s*$"), "authorization"
  end
  return req:get("token"), "token"
end

function on_request(req)
  local token, source = token_of(req)
  if token == nil then
    if source == "authorization" then
      return req:reject("unauthenticated: authorization is not a bearer token")
    end
    return req:reject("unauthenticated: no authorization or token")
  end
  local principal = TOKENS[token]
  if principal == nil then
    return req:reject("unauthenticated: unknown token")
  end
  req:set("x-auth-principal", principal)
end
