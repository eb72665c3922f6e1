-- wrk script: POST /cgi-bin/stable_token (the same token while valid).
-- Env: WX_APPID, WX_SECRET.
wrk.method = "POST"
wrk.path = "/cgi-bin/stable_token"
wrk.headers["Content-Type"] = "application/json"
wrk.body = string.format(
  '{"grant_type":"client_credential","appid":"%s","secret":"%s","force_refresh":false}',
  os.getenv("WX_APPID") or "wxbench", os.getenv("WX_SECRET") or "benchsecret")
