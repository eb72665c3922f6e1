-- wrk script: the raw template-send request the pusher makes, without client_msg_id (so the
-- sandbox counts every request as a delivery and skips de-duplication bookkeeping).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"touser":"bench-user","template_id":"TPL_BENCH","url":"https://example.com/o/1",'
  .. '"data":{"keyword1":{"value":"Shipped"},"keyword2":{"value":"2026-11-28"}}}'
