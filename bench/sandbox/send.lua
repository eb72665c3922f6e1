-- wrk script: POST template sends to the sandbox.
-- Env: WX_TOKEN (access_token), WX_DEDUP=1 to add a unique client_msg_id per request
-- (exercises the de-duplication table), WX_USERS (distinct openids, default 1000).
local token = os.getenv("WX_TOKEN") or "missing"
local dedup = os.getenv("WX_DEDUP") == "1"
local users = tonumber(os.getenv("WX_USERS") or "1000")
local counter = 0
local thread_id = 0
local next_id = 0

function setup(thread)
  next_id = next_id + 1
  thread:set("thread_id", next_id)
end

wrk.method = "POST"
wrk.path = "/cgi-bin/message/template/send?access_token=" .. token
wrk.headers["Content-Type"] = "application/json"

request = function()
  counter = counter + 1
  local touser = "openid-" .. (counter % users)
  local cmid = ""
  if dedup then
    cmid = string.format(',"client_msg_id":"t%d-%d"', thread_id, counter)
  end
  local body = string.format(
    '{"touser":"%s","template_id":"TPL","url":"https://example.com/o/%d"%s,' ..
    '"data":{"keyword1":{"value":"Shipped"},"keyword2":{"value":"2026-11-28 12:00"}}}',
    touser, counter, cmid)
  return wrk.format(nil, nil, nil, body)
end

local errors = 0
response = function(status, headers, body)
  if status ~= 200 or not string.find(body, '"errcode":0', 1, true) then
    errors = errors + 1
    if errors <= 3 then print("unexpected answer: " .. status .. " " .. body) end
  end
end
