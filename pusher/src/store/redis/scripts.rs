//! The Lua scripts of the Redis store. Each runs atomically on the node that owns the
//! channel's hash slot, so one request's idempotency keys, records and stream entries are
//! written all or nothing, and two pods never move the same retry or claim the same entry.
//!
//! Every script gets the channel's stream as `KEYS[1]` (which routes it to the right node) and
//! the key base `{<prefix>:<channel>}:` as `ARGV[1]`; the other keys share the hash tag.
//! Key layout (after the base): `q` stream of ready work (field `id`), `m:<id>` record JSON
//! (with `first_attempt_at` once its first attempt started, see [`start_attempt`]),
//! `i:<key>` idempotency key → id, `n` pending count, `d` retry schedule (zset by due ms),
//! `lease` id → stream entry id of leased messages, `dead` dead letters (zset, lexical by id),
//! `deadt` dead letters by finish time, `x:<msgid>` WeChat msgid → id, `a:<openid>` delivered
//! messages awaiting an event (zset by delivery ms), `s:<openid>:<CreateTime>:<MsgID>` events
//! seen, `cb` pending callbacks (zset by due ms) and `cbd` their JSON.

/// `is_pending(record JSON)`: whether the message is not final (read from the record's
/// leading `id` and `status` fields, which serde writes first; decoded in full otherwise).
const PENDING_FN: &str = r#"
local function is_pending(rec)
  local st = string.match(rec, '^{"id":"[^"]*","status":"([a-z_]+)"')
  if st == nil then st = cjson.decode(rec)['status'] end
  return st == 'queued' or st == 'retrying' or st == 'sending'
end
"#;

/// Accept: ARGV base, max, n, then (idempotency key or '', request digest or '', id, record
/// JSON) per item. A key seen before whose record holds another `request_digest` refuses the
/// whole request before anything is written (a record without one matches). Returns
/// `{'full', pending}`, `{'reused', key}` or `{'ok', id, status, dup, ...}`.
pub(crate) fn accept() -> String {
    format!(
        "{PENDING_FN}{}",
        r"
local base = ARGV[1]
local max = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local out = {'ok'}
local fresh = {}
local batch = {}
for i = 0, n - 1 do
  local key, dg, id, js = ARGV[4 + i * 4], ARGV[5 + i * 4], ARGV[6 + i * 4], ARGV[7 + i * 4]
  local first = false
  local st = 'queued'
  if key ~= '' then
    first = redis.call('GET', base .. 'i:' .. key)
    if first then
      local rec = redis.call('GET', base .. 'm:' .. first)
      if rec then
        local r = cjson.decode(rec)
        st = r['status']
        local had = r['request_digest']
        if dg ~= '' and type(had) == 'string' and had ~= dg then return {'reused', key} end
      end
    elseif batch[key] then
      first = batch[key][1]
      if dg ~= '' and batch[key][2] ~= '' and batch[key][2] ~= dg then return {'reused', key} end
    end
  end
  if first then
    out[#out + 1] = first; out[#out + 1] = st; out[#out + 1] = '1'
  else
    if key ~= '' then batch[key] = {id, dg} end
    fresh[#fresh + 1] = {key, id, js}
    out[#out + 1] = id; out[#out + 1] = 'queued'; out[#out + 1] = '0'
  end
end
local pending = tonumber(redis.call('GET', base .. 'n') or '0')
if pending + #fresh > max then return {'full', tostring(pending)} end
local added = 0
for _, f in ipairs(fresh) do
  -- NX: a client that re-sends this very script (after a lost answer) adds nothing twice.
  if redis.call('SET', base .. 'm:' .. f[2], f[3], 'NX') then
    if f[1] ~= '' then redis.call('SET', base .. 'i:' .. f[1], f[2]) end
    redis.call('XADD', KEYS[1], '*', 'id', f[2])
    added = added + 1
  end
end
if added > 0 then redis.call('INCRBY', base .. 'n', added) end
return out
"
    )
}

/// Lease: ARGV base, group, consumer, count, now ms, claim idle ms (0: do not claim),
/// retention ms, `XAUTOCLAIM` cursor (`0-0` to start; the scan goes on from where the last one
/// stopped, so idle entries deep in a long pending list are reached too). Moves due retries to the stream (atomic: one mover at a time across pods),
/// drops dead letters past the retention, claims entries idle past claimIdle (a dead pod's),
/// reads new entries, and returns `{next cursor, entry id, record JSON, ...}` of pending messages (entries
/// of messages that are final or gone are acknowledged and deleted).
pub(crate) fn lease() -> String {
    format!(
        "{PENDING_FN}{}",
        r"
local base, group, consumer = ARGV[1], ARGV[2], ARGV[3]
local count, now, idle, retention = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local due = redis.call('ZRANGEBYSCORE', base .. 'd', '-inf', now, 'LIMIT', 0, 1000)
for _, id in ipairs(due) do
  redis.call('ZREM', base .. 'd', id)
  redis.call('XADD', KEYS[1], '*', 'id', id)
end
local old = redis.call('ZRANGEBYSCORE', base .. 'deadt', '-inf', now - retention, 'LIMIT', 0, 100)
for _, id in ipairs(old) do
  redis.call('ZREM', base .. 'deadt', id)
  redis.call('ZREM', base .. 'dead', id)
end
local entries = {}
local cursor = ARGV[8]
if idle > 0 then
  local r = redis.call('XAUTOCLAIM', KEYS[1], group, consumer, idle, cursor, 'COUNT', count)
  cursor = r[1]
  for _, e in ipairs(r[2]) do
    if e and e[2] then entries[#entries + 1] = e end
  end
end
if #entries < count then
  local r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count - #entries, 'STREAMS', KEYS[1], '>')
  if r then
    for _, e in ipairs(r[1][2]) do entries[#entries + 1] = e end
  end
end
local out = {cursor}
for _, e in ipairs(entries) do
  local eid, fields, id = e[1], e[2], nil
  for j = 1, #fields, 2 do
    if fields[j] == 'id' then id = fields[j + 1] end
  end
  local rec = id and redis.call('GET', base .. 'm:' .. id)
  if rec and is_pending(rec) then
    redis.call('HSET', base .. 'lease', id, eid)
    out[#out + 1] = eid; out[#out + 1] = rec
  else
    redis.call('XACK', KEYS[1], group, eid)
    redis.call('XDEL', KEYS[1], eid)
  end
end
return out
"
    )
}

/// Complete: ARGV base, group, id, record JSON, final (0/1), due ms, dead (0/1), delivered
/// (0/1), msgid or '', openid, finished ms, idempotency key or '', retention ms, callback id
/// or '', callback due ms, callback JSON, now ms. Writes the new state first, then ends the
/// lease (`XACK` + `XDEL`): a crash in between cannot happen inside a script, and a copy of the
/// message claimed by another pod finds the record final and only ends its own lease. The
/// record is stored as given, `first_attempt_at` included: kept after an attempt that sent,
/// cleared (the "attempt started" record voided) by the dispatcher after one that did not.
/// Returns 1, or 0 when the message was already final.
pub(crate) fn complete() -> String {
    format!(
        "{PENDING_FN}{}",
        r"
local base, group, id, js = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local final, due, dead, delivered = ARGV[5] == '1', tonumber(ARGV[6]), ARGV[7] == '1', ARGV[8] == '1'
local msgid, openid, finished, idem = ARGV[9], ARGV[10], tonumber(ARGV[11]), ARGV[12]
local retention, cbid, cbdue, cbjs, now = tonumber(ARGV[13]), ARGV[14], tonumber(ARGV[15]), ARGV[16], tonumber(ARGV[17])
local mkey = base .. 'm:' .. id
local eid = redis.call('HGET', base .. 'lease', id)
local function unlease()
  if eid then
    redis.call('XACK', KEYS[1], group, eid)
    redis.call('XDEL', KEYS[1], eid)
  end
  redis.call('HDEL', base .. 'lease', id)
end
local cur = redis.call('GET', mkey)
if not cur or not is_pending(cur) then
  unlease()
  return 0
end
if final then
  redis.call('SET', mkey, js, 'PX', retention)
  local left = redis.call('DECR', base .. 'n')
  if left < 0 then redis.call('SET', base .. 'n', 0) end
  if idem ~= '' then redis.call('PEXPIRE', base .. 'i:' .. idem, retention) end
  if dead then
    redis.call('ZADD', base .. 'dead', 0, id)
    redis.call('ZADD', base .. 'deadt', finished, id)
  end
  if delivered then
    local akey = base .. 'a:' .. openid
    redis.call('ZADD', akey, finished, id)
    redis.call('ZREMRANGEBYSCORE', akey, '-inf', now - retention)
    redis.call('PEXPIRE', akey, retention)
    if msgid ~= '' then redis.call('SET', base .. 'x:' .. msgid, id, 'PX', retention) end
  end
  if cbid ~= '' then
    redis.call('ZADD', base .. 'cb', cbdue, cbid)
    redis.call('HSET', base .. 'cbd', cbid, cbjs)
  end
  unlease()
else
  redis.call('SET', mkey, js)
  -- End the old lease before queueing again, so the entry read next is the new one.
  unlease()
  if due <= now then
    redis.call('XADD', KEYS[1], '*', 'id', id)
  else
    redis.call('ZADD', base .. 'd', due, id)
  end
end
return 1
"
    )
}

/// Attempt started: ARGV base, group, consumer, id, stream entry id of this consumer's lease,
/// record JSON with `first_attempt_at` set. Writes the "attempt started" record into `m:<id>`
/// before the first send, only while the lease is still this consumer's (the entry is in its
/// pending entries list: no other pod claimed it, and nobody completed it) and the message is
/// pending; a record that already has `first_attempt_at` keeps it. The lease is kept. Returns
/// 'ok' (written), 'kept' (an earlier start was recorded), 'lost' (the lease is no longer this
/// consumer's), 'gone' (no record) or 'final' (the message is final).
pub(crate) fn start_attempt() -> String {
    format!(
        "{PENDING_FN}{}",
        r"
local base, group, consumer, id, eid, js = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if #redis.call('XPENDING', KEYS[1], group, eid, eid, 1, consumer) == 0 then return 'lost' end
local mkey = base .. 'm:' .. id
local cur = redis.call('GET', mkey)
if not cur then return 'gone' end
if not is_pending(cur) then return 'final' end
local started = cjson.decode(cur)['first_attempt_at']
if started and started ~= cjson.null then return 'kept' end
redis.call('SET', mkey, js)
return 'ok'
"
    )
}

/// Keep-alive of this consumer's leases: ARGV group, consumer, entry ids. Resets the idle time
/// of each entry this consumer still holds (`XCLAIM ... JUSTID` to itself), so that a pod
/// that is slow with a message (waiting for a rate permit, say) does not see it claimed by
/// another pod; entries another pod already claimed are left alone.
pub(crate) const KEEP_LEASES: &str = r"
local group, consumer = ARGV[1], ARGV[2]
local kept = 0
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], group, ARGV[i], ARGV[i], 1, consumer)
  if #p == 1 then
    redis.call('XCLAIM', KEYS[1], group, consumer, 0, ARGV[i], 'JUSTID')
    kept = kept + 1
  end
end
return kept
";

/// Replay: ARGV base, id, record JSON (reset for the replay: a fresh budget, no
/// `first_attempt_at`), max, idempotency key or ''. Returns `{'ok'}`,
/// `{'full', pending}` or `{'not_dead'}`.
pub(crate) const REPLAY: &str = r"
local base, id, js, max, idem = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local pending = tonumber(redis.call('GET', base .. 'n') or '0')
if pending + 1 > max then return {'full', tostring(pending)} end
if redis.call('ZREM', base .. 'dead', id) == 0 then return {'not_dead'} end
redis.call('ZREM', base .. 'deadt', id)
redis.call('SET', base .. 'm:' .. id, js)
if idem ~= '' then redis.call('PERSIST', base .. 'i:' .. idem) end
redis.call('INCR', base .. 'n')
redis.call('XADD', KEYS[1], '*', 'id', id)
return {'ok'}
";

/// Event: ARGV base, seen key (after the base), id, old record JSON, new record JSON, remove
/// from awaiting (0/1), openid, retention ms, callback id or '', callback due, callback JSON.
/// Returns 'dup' (seen before), 'conflict' (the record changed since it was read: read again)
/// or 'ok'.
pub(crate) const EVENT: &str = r"
local base, seen, id, old, new = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local unawait, openid, retention = ARGV[6] == '1', ARGV[7], tonumber(ARGV[8])
local cbid, cbdue, cbjs = ARGV[9], tonumber(ARGV[10]), ARGV[11]
if redis.call('EXISTS', base .. seen) == 1 then return 'dup' end
local mkey = base .. 'm:' .. id
if redis.call('GET', mkey) ~= old then return 'conflict' end
redis.call('SET', mkey, new, 'KEEPTTL')
redis.call('SET', base .. seen, id, 'PX', retention)
if unawait then redis.call('ZREM', base .. 'a:' .. openid, id) end
if cbid ~= '' then
  redis.call('ZADD', base .. 'cb', cbdue, cbid)
  redis.call('HSET', base .. 'cbd', cbid, cbjs)
end
return 'ok'
";

/// Callback lease: ARGV base, now ms, max, visibility ms. Takes due callbacks, moves each to
/// `now + visibility` (so no other pod takes it while it is being sent; a pod that dies leaves
/// it due again then) and returns `{id, due ms as it was, JSON, ...}`.
pub(crate) const LEASE_CALLBACKS: &str = r"
local base, now, max, vis = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local due = redis.call('ZRANGEBYSCORE', base .. 'cb', '-inf', now, 'WITHSCORES', 'LIMIT', 0, max)
local out = {}
for i = 1, #due, 2 do
  local id, score = due[i], due[i + 1]
  local js = redis.call('HGET', base .. 'cbd', id)
  if js then
    redis.call('ZADD', base .. 'cb', now + vis, id)
    out[#out + 1] = id; out[#out + 1] = score; out[#out + 1] = js
  else
    redis.call('ZREM', base .. 'cb', id)
  end
end
return out
";

/// Callback finish: ARGV base, id, next due ms or '' (done), new JSON.
pub(crate) const FINISH_CALLBACK: &str = r"
local base, id, due, js = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if due == '' then
  redis.call('ZREM', base .. 'cb', id)
  redis.call('HDEL', base .. 'cbd', id)
elseif redis.call('HEXISTS', base .. 'cbd', id) == 1 then
  redis.call('ZADD', base .. 'cb', tonumber(due), id)
  redis.call('HSET', base .. 'cbd', id, js)
end
return 1
";
