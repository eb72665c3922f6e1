//! The Lua scripts of the Redis store. Each runs atomically on the node that owns the
//! channel's hash slot, so one request's idempotency keys, records and stream entries are
//! written all or nothing, and two pods never move the same retry or claim the same entry.
//!
//! **Every key a script touches is declared in `KEYS`** (all under the channel's hash tag). In a
//! Redis Cluster whose slot is being moved, Redis checks the declared keys before the script
//! runs: it answers `ASK` or `TRYAGAIN` and runs nothing, rather than failing in the middle
//! with "non local key" after some writes. The store retries such an answer as a whole
//! operation (`super::conn::retrying`). A key a script does not need this time (no
//! idempotency key, no msgid) is passed as the bare prefix (`i:`, `x:`), which it never
//! touches. ARGV never names a key, with one exception: `lease_one`, used only on a single
//! server (no slot moves there), builds the records' keys from the key base it is given.
//!
//! Key layout (after the base `{<prefix>:<channel>}:`): `q` stream of ready work (field `id`;
//! acknowledged entries stay until `TRIM` drops them),
//! `m:<id>` record JSON, `i:<key>` idempotency key → id, `n` pending count, `d` retry schedule
//! (zset by due ms), `lease` hash of leased messages (field `<id>` → stream entry id) and of
//! attempt-started marks (field `s:<id>` → the time the first attempt started, until its
//! outcome is written; see `START_ATTEMPT`), `dead` dead letters (zset, lexical by id),
//! `deadt` dead letters by finish time, `x:<msgid>` WeChat msgid → id and `a:<openid>`
//! delivered messages awaiting an event (zset by delivery ms; both only when the channel takes
//! events),
//! `s:<openid>:<CreateTime>:<MsgID>` events seen, `cb` pending callbacks (zset by due ms) and
//! `cbd` their JSON, `hb:<consumer>` a pusher's heartbeat (short TTL).

/// `is_pending(record JSON)`: whether the message is not final (read from the record's
/// leading `id` and `status` fields, which serde writes first; decoded in full otherwise).
const PENDING_FN: &str = r#"
local function is_pending(rec)
  local st = string.match(rec, '^{"id":"[^"]*","status":"([a-z_]+)"')
  if st == nil then st = cjson.decode(rec)['status'] end
  return st == 'queued' or st == 'retrying' or st == 'sending'
end
"#;

/// Takes one read entry (both lease scripts): a pending record is leased (`lease` field `<id>`
/// → entry id) and appended to `out` as entry id, record JSON and its attempt-started mark (the
/// `lease` field `s:<id>`, looked for only when `look`, else ''); the entry of a message that
/// is final or gone is acknowledged and deleted.
const TAKE_FN: &str = r"
local function take(q, lease, group, eid, id, rec, look, out)
  if rec and is_pending(rec) then
    redis.call('HSET', lease, id, eid)
    out[#out + 1] = eid; out[#out + 1] = rec
    out[#out + 1] = look and redis.call('HGET', lease, 's:' .. id) or ''
  else
    redis.call('XACK', q, group, eid)
    redis.call('XDEL', q, eid)
  end
end
";

/// Accept: KEYS `q`, `n`, then (`i:<key>`, `m:<id>`) per item; ARGV max, n, then (idempotency
/// key or '', request digest or '', id, record JSON) per item. A key seen before whose record
/// holds another `request_digest` refuses the whole request before anything is written (a
/// record without one matches). Returns `{'full', pending}`, `{'reused', key}` or
/// `{'ok', id, status, dup, ...}`. The record of a key seen before is read through the key
/// base of `KEYS[2]` (`m:` of the first id, which the client cannot know in advance), so
/// such a request is declared with that record's key too: see [`super::RedisStore::accept`].
pub(crate) fn accept() -> String {
    format!(
        "{PENDING_FN}{}",
        r"
local max = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local firsts = {}
for j = 3 + 2 * n, #KEYS do firsts[KEYS[j]] = true end
local out = {'ok'}
local fresh = {}
local batch = {}
local unknown = {}
for i = 0, n - 1 do
  local ikey, mkey = KEYS[3 + i * 2], KEYS[4 + i * 2]
  local key, dg, id, js = ARGV[3 + i * 4], ARGV[4 + i * 4], ARGV[5 + i * 4], ARGV[6 + i * 4]
  local first = false
  local st = 'queued'
  if key ~= '' then
    first = redis.call('GET', ikey)
    if first then
      local fkey = string.sub(mkey, 1, #mkey - #id) .. first
      if not firsts[fkey] then
        unknown[#unknown + 1] = first
      else
        local rec = redis.call('GET', fkey)
        if rec then
          local r = cjson.decode(rec)
          st = r['status']
          local had = r['request_digest']
          if dg ~= '' and type(had) == 'string' and had ~= dg then return {'reused', key} end
        end
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
    fresh[#fresh + 1] = {ikey, mkey, id, js, key}
    out[#out + 1] = id; out[#out + 1] = 'queued'; out[#out + 1] = '0'
  end
end
if #unknown > 0 then
  local r = {'declare'}
  for _, u in ipairs(unknown) do r[#r + 1] = u end
  return r
end
local pending = tonumber(redis.call('GET', KEYS[2]) or '0')
if pending + #fresh > max then return {'full', tostring(pending)} end
local added = 0
for _, f in ipairs(fresh) do
  -- NX: a client that re-sends this very script (after a lost answer) adds nothing twice.
  if redis.call('SET', f[2], f[4], 'NX') then
    if f[5] ~= '' then redis.call('SET', f[1], f[3]) end
    redis.call('XADD', KEYS[1], '*', 'id', f[3])
    added = added + 1
  end
end
if added > 0 then redis.call('INCRBY', KEYS[2], added) end
return out
"
    )
}

/// Lease, first half: KEYS `q`, `d`, `deadt`, `dead`; ARGV group, consumer, count, now ms,
/// claim idle ms (0: do not claim), retention ms, `XAUTOCLAIM` cursor (`0-0` to start; the
/// scan goes on from where the last one stopped, so idle entries deep in a long pending list
/// are reached too). Moves due retries to the stream (atomic: one mover at a time across pods),
/// drops dead letters past the retention, claims entries idle past claimIdle (a stuck pod's),
/// reads new entries, and returns `{next cursor, entry id, message id, look, ...}`: look is '1'
/// when the message may hold an attempt-started mark (a claimed entry, or one handed back with
/// the field `s`), '0' for an entry read for the first time (an outcome deletes the mark, so a
/// message queued again has none), which spares [`lease_take`] a look. The entries are
/// now in this consumer's pending list; [`lease_take`] reads their records (keys this script
/// could not declare before it knew the ids). A pod that dies between the two leaves them in
/// its pending list, where they are claimed like any other lease of a dead pod.
pub(crate) fn lease_read() -> String {
    format!("{READ_BODY}return out\n")
}

/// The body of [`lease_read`] and `lease_one`, up to the answer `out`. Numbers Redis only
/// compares go as strings: each number passed to `redis.call` is formatted again.
const READ_BODY: &str = r"
local group, consumer = ARGV[1], ARGV[2]
local count, now, idle, retention = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[4], 'LIMIT', '0', '1000')
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[2], id)
  redis.call('XADD', KEYS[1], '*', 'id', id)
end
local old = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - retention, 'LIMIT', '0', '100')
for _, id in ipairs(old) do
  redis.call('ZREM', KEYS[3], id)
  redis.call('ZREM', KEYS[4], id)
end
local entries = {}
local cursor = ARGV[7]
if idle > 0 then
  local r = redis.call('XAUTOCLAIM', KEYS[1], group, consumer, ARGV[5], cursor, 'COUNT', ARGV[3])
  cursor = r[1]
  for _, e in ipairs(r[2]) do
    if e and e[2] then entries[#entries + 1] = e end
  end
end
local claimed = #entries
if #entries < count then
  local r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count - #entries, 'STREAMS', KEYS[1], '>')
  if r then
    for _, e in ipairs(r[1][2]) do entries[#entries + 1] = e end
  end
end
local out = {cursor}
for k, e in ipairs(entries) do
  local eid, fields, id, look = e[1], e[2], nil, '0'
  if k <= claimed then look = '1' end
  for j = 1, #fields, 2 do
    if fields[j] == 'id' then id = fields[j + 1] end
    if fields[j] == 's' then look = '1' end
  end
  if id then
    out[#out + 1] = eid; out[#out + 1] = id; out[#out + 1] = look
  else
    redis.call('XACK', KEYS[1], group, eid)
    redis.call('XDEL', KEYS[1], eid)
  end
end
";

/// Lease in one step, on a single Redis server (not a cluster, where a script must declare
/// every key it touches): [`lease_read`] and [`lease_take`] in one script, one round trip
/// less per lease. KEYS `q`, `d`, `deadt`, `dead`, `lease`; ARGV as [`lease_read`], then the
/// channel's key base (`{<prefix>:<channel>}:`), from which the records' keys are made. Returns
/// `{next cursor, entry id, record JSON, attempt-started mark or '', ...}`.
pub(crate) fn lease_one() -> String {
    format!(
        "{PENDING_FN}{TAKE_FN}{READ_BODY}{}",
        r"
local base = ARGV[8]
local res = {out[1]}
for i = 2, #out, 3 do
  local eid, id = out[i], out[i + 1]
  take(KEYS[1], KEYS[5], group, eid, id, redis.call('GET', base .. 'm:' .. id), out[i + 2] == '1', res)
end
return res
"
    )
}

/// Lease, second half: KEYS `q`, `lease`, then `m:<id>` per entry; ARGV group, then (entry id,
/// message id, look) per entry. Records each pending message's lease (`lease` field `<id>` →
/// entry id) and returns `{entry id, record JSON, attempt-started mark or '', ...}`: the mark
/// is the `lease` field `s:<id>` that [`START_ATTEMPT`] wrote (the time of the first attempt's
/// start), which the record does not hold; it is looked for only when look is '1'. The entries of messages
/// that are final or gone are acknowledged and deleted.
pub(crate) fn lease_take() -> String {
    format!(
        "{PENDING_FN}{TAKE_FN}{}",
        r"
local group = ARGV[1]
local out = {}
for i = 3, #KEYS do
  local a = 2 + (i - 3) * 3
  take(KEYS[1], KEYS[2], group, ARGV[a], ARGV[a + 1], redis.call('GET', KEYS[i]), ARGV[a + 2] == '1', out)
end
return out
"
    )
}

/// A dead consumer's leases: KEYS `q`, `lease`, `hb:<dead>`; ARGV group, this consumer, the
/// dead consumer, count. When the dead consumer's heartbeat has expired, moves up to `count`
/// of its pending entries to this consumer at once (whatever their idle time) and returns
/// `{'claimed', entry id, message id, ...}` for [`lease_take`]; once it has none left, deletes
/// it from the group (`XGROUP DELCONSUMER`) and returns `{'deleted'}`. Returns `{'alive'}` while
/// its heartbeat lives.
pub(crate) const CLAIM_DEAD: &str = r"
local group, me, dead, count = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
if redis.call('EXISTS', KEYS[3]) == 1 then return {'alive'} end
local pend = redis.call('XPENDING', KEYS[1], group, '-', '+', count, dead)
if #pend == 0 then
  redis.call('XGROUP', 'DELCONSUMER', KEYS[1], group, dead)
  return {'deleted'}
end
local ids = {}
for _, p in ipairs(pend) do ids[#ids + 1] = p[1] end
local claimed = redis.call('XCLAIM', KEYS[1], group, me, 0, unpack(ids))
local out = {'claimed'}
for _, e in ipairs(claimed) do
  if e and e[2] then
    local id = nil
    for j = 1, #e[2], 2 do
      if e[2][j] == 'id' then id = e[2][j + 1] end
    end
    if id then
      out[#out + 1] = e[1]; out[#out + 1] = id
    else
      redis.call('XACK', KEYS[1], group, e[1])
      redis.call('XDEL', KEYS[1], e[1])
    end
  end
end
return out
";

/// Hand back: KEYS `q`, `lease`, `hb:<consumer>`; ARGV group, consumer. On shutdown: every entry
/// still pending for this consumer is queued again as a new entry (the message is sent by
/// another pod, with its record as it is; with the field `s` when it has an attempt-started
/// mark, which stays), the old entry is acknowledged and deleted, its lease forgotten, then the
/// consumer and its heartbeat are deleted. Returns the entries handed back.
pub(crate) const HAND_BACK: &str = r"
local group, me = ARGV[1], ARGV[2]
local n = 0
while true do
  local pend = redis.call('XPENDING', KEYS[1], group, '-', '+', 100, me)
  if #pend == 0 then break end
  for _, p in ipairs(pend) do
    local e = redis.call('XRANGE', KEYS[1], p[1], p[1])
    if e[1] then
      local f = e[1][2]
      for j = 1, #f, 2 do
        if f[j] == 'id' then
          local id = f[j + 1]
          if redis.call('HEXISTS', KEYS[2], 's:' .. id) == 1 then
            redis.call('XADD', KEYS[1], '*', 'id', id, 's', '1')
          else
            redis.call('XADD', KEYS[1], '*', 'id', id)
          end
          redis.call('HDEL', KEYS[2], id)
        end
      end
    end
    redis.call('XACK', KEYS[1], group, p[1])
    redis.call('XDEL', KEYS[1], p[1])
    n = n + 1
  end
end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], group, me)
redis.call('DEL', KEYS[3])
return n
";

/// Complete, for one or more leased messages at once (the outcomes of attempts that ended
/// together): KEYS `q`, `lease`, `n`, `dead`, `deadt`, `cb`, `cbd`, `d`, then per message
/// `m:<id>`, `i:<key>` (or `i:`), `a:<openid>`, `x:<msgid>` (or `x:`); ARGV group, now ms,
/// retention ms, events indexes (0/1), then per message the stream entry id of this process's
/// lease (or '': read from `lease`), id, record JSON, final (0/1), due ms, dead (0/1), delivered
/// (0/1), msgid or '', idempotency key or '', callback id or '', callback due ms, callback JSON,
/// finished ms. Per message: acknowledges the entry; when it was still pending the message is
/// not final (a final write always acknowledges the message's entry in the same script), so
/// the record is not read; else the record says whether it is final. Then writes the new state
/// and ends the lease (`HDEL` of the `lease` fields `<id>` and `s:<id>`), all in one script.
/// The acknowledged entry is not deleted here: `TRIM` drops such entries once a second. A copy of the message claimed by another pod finds its entry acknowledged and
/// the record final, and only ends its own lease. The record is stored as given, `first_attempt_at` included:
/// kept after an attempt that sent, cleared (the attempt-started mark voided) by the dispatcher
/// after one that did not. The events receiver's indexes of a delivered message (`a:<openid>`,
/// `x:<msgid>`) are written only when the channel takes events. Returns per message, in order,
/// 1, or 0 when the message was already final.
pub(crate) fn complete() -> String {
    format!(
        "{PENDING_FN}{}",
        r"
local group, now, retention, indexes = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4] == '1'
local q, lease, nkey, deadk, deadt, cb, cbd, dkey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local out = {}
local finals = 0
-- Ends a lease: acknowledges its entry unless done already (entries are trimmed later, see
-- TRIM), and deletes the lease and the start mark. Numbers stay strings when Redis only
-- stores them: each number passed to redis.call is formatted again.
local function unlease(eid, acked, id)
  if eid == '' then eid = redis.call('HGET', lease, id) end
  if eid and not acked then redis.call('XACK', q, group, eid) end
  redis.call('HDEL', lease, id, 's:' .. id)
end
for i = 0, (#KEYS - 8) / 4 - 1 do
  local k, a = 9 + i * 4, 5 + i * 13
  local mkey, eid, id, js = KEYS[k], ARGV[a], ARGV[a + 1], ARGV[a + 2]
  -- The entry still pending means the message is not final: every final write acknowledges
  -- the message's entry in the same script. Otherwise (another pod ended the lease, or the
  -- entry is not known here) the record itself says.
  local acked = eid ~= '' and redis.call('XACK', q, group, eid) == 1
  local cur = acked or redis.call('GET', mkey)
  if not cur or (not acked and not is_pending(cur)) then
    unlease(eid, acked, id)
    out[#out + 1] = 0
  elseif ARGV[a + 3] == '1' then
    redis.call('SET', mkey, js, 'PX', retention)
    finals = finals + 1
    if ARGV[a + 8] ~= '' then redis.call('PEXPIRE', KEYS[k + 1], retention) end
    if ARGV[a + 5] == '1' then
      redis.call('ZADD', deadk, '0', id)
      redis.call('ZADD', deadt, ARGV[a + 12], id)
    end
    if indexes and ARGV[a + 6] == '1' then
      local akey = KEYS[k + 2]
      redis.call('ZADD', akey, ARGV[a + 12], id)
      redis.call('ZREMRANGEBYSCORE', akey, '-inf', now - tonumber(retention))
      redis.call('PEXPIRE', akey, retention)
      if ARGV[a + 7] ~= '' then redis.call('SET', KEYS[k + 3], id, 'PX', retention) end
    end
    local cbid = ARGV[a + 9]
    if cbid ~= '' then
      redis.call('ZADD', cb, ARGV[a + 10], cbid)
      redis.call('HSET', cbd, cbid, ARGV[a + 11])
    end
    unlease(eid, acked, id)
    out[#out + 1] = 1
  else
    redis.call('SET', mkey, js)
    -- End the old lease before queueing again, so the entry read next is the new one.
    unlease(eid, acked, id)
    local due = ARGV[a + 4]
    if tonumber(due) <= now then
      redis.call('XADD', q, '*', 'id', id)
    else
      redis.call('ZADD', dkey, due, id)
    end
    out[#out + 1] = 1
  end
end
if finals > 0 then
  local left = redis.call('DECRBY', nkey, finals)
  if left < 0 then redis.call('SET', nkey, 0) end
end
return out
"
    )
}

/// Trim and count: KEYS `q`; ARGV group. Outcomes acknowledge their entries but do not delete
/// them (one command less per message); this script drops, once a second per pod (the counts'
/// refresh), every entry below the oldest one any group still needs: the oldest pending entry
/// of each group, or, when a group holds none, the entries up to the last one it read. Entries
/// not read yet are above each group's last read entry, so they stay. Returns `{length of the
/// stream, entries pending in the group}`, read in the same step, so that the ready count
/// (length − pending) holds no acknowledged entry.
pub(crate) const TRIM: &str = r"
local function parse(eid)
  local ms, seq = string.match(eid, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
local low_ms, low_seq = nil, nil
local mine = 0
for _, g in ipairs(groups) do
  local name, pending, last = nil, 0, nil
  for j = 1, #g, 2 do
    if g[j] == 'name' then name = g[j + 1]
    elseif g[j] == 'pending' then pending = g[j + 1]
    elseif g[j] == 'last-delivered-id' then last = g[j + 1] end
  end
  if name == ARGV[1] then mine = pending end
  local ms, seq = nil, nil
  if pending > 0 then
    ms, seq = parse(redis.call('XPENDING', KEYS[1], name)[2])
  elseif last then
    ms, seq = parse(last)
    if ms then seq = seq + 1 end
  end
  if not ms then
    low_ms = -1
  elseif low_ms == nil or ms < low_ms or (ms == low_ms and seq < low_seq) then
    low_ms, low_seq = ms, seq
  end
end
if low_ms and low_ms >= 0 then
  redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d-%d', low_ms, low_seq))
end
return {redis.call('XLEN', KEYS[1]), mine}
";

/// Attempt started, for one or more leased messages at once: KEYS `q`, `lease`; ARGV group,
/// consumer, then per message the stream entry id of this consumer's lease, the message id and
/// the start's time (as the record's JSON writes `first_attempt_at`). Before the first send,
/// writes the mark `s:<id>` → time into `lease` (a few bytes, not the record), only while the
/// lease is still this consumer's: the entry is in its pending entries list, so no other pod
/// claimed it and nobody completed it (an outcome acknowledges the entry in the same script
/// that makes the record final). A mark already there is kept. The leases are kept. Returns per
/// message, in order, 'ok' (written), 'kept' (an earlier start was recorded) or 'lost' (the
/// lease is no longer this consumer's). The next lease of the message returns the mark with the
/// record ([`lease_take`]); the outcome's record carries the time itself and deletes the mark.
pub(crate) const START_ATTEMPT: &str = r"
local group, consumer = ARGV[1], ARGV[2]
local out = {}
for i = 3, #ARGV, 3 do
  local eid, id, at = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if #redis.call('XPENDING', KEYS[1], group, eid, eid, '1', consumer) == 0 then
    out[#out + 1] = 'lost'
  elseif redis.call('HSETNX', KEYS[2], 's:' .. id, at) == 1 then
    out[#out + 1] = 'ok'
  else
    out[#out + 1] = 'kept'
  end
end
return out
";

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

/// Replay: KEYS `q`, `n`, `dead`, `deadt`, `m:<id>`, `i:<key>` (or `i:`); ARGV id, record JSON
/// (reset for the replay: a fresh budget, no `first_attempt_at`), max, idempotency key or ''.
/// Returns `{'ok'}`, `{'full', pending}` or `{'not_dead'}`.
pub(crate) const REPLAY: &str = r"
local id, js, max, idem = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local pending = tonumber(redis.call('GET', KEYS[2]) or '0')
if pending + 1 > max then return {'full', tostring(pending)} end
if redis.call('ZREM', KEYS[3], id) == 0 then return {'not_dead'} end
redis.call('ZREM', KEYS[4], id)
redis.call('SET', KEYS[5], js)
if idem ~= '' then redis.call('PERSIST', KEYS[6]) end
redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[1], '*', 'id', id)
return {'ok'}
";

/// Recall: KEYS `m:<id>`; ARGV the record JSON as read, the record JSON with the recall's time.
/// Returns 'conflict' (the record changed since it was read: read again) or 'ok'.
pub(crate) const RECALL: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'conflict' end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
return 'ok'
";

/// Event: KEYS `s:<openid>:<CreateTime>:<MsgID>`, `m:<id>`, `a:<openid>`, `cb`, `cbd`; ARGV id,
/// old record JSON, new record JSON, remove from awaiting (0/1), retention ms, callback id or
/// '', callback due, callback JSON. Returns 'dup' (seen before), 'conflict' (the record changed
/// since it was read: read again) or 'ok'.
pub(crate) const EVENT: &str = r"
local id, old, new = ARGV[1], ARGV[2], ARGV[3]
local unawait, retention = ARGV[4] == '1', tonumber(ARGV[5])
local cbid, cbdue, cbjs = ARGV[6], tonumber(ARGV[7]), ARGV[8]
if redis.call('EXISTS', KEYS[1]) == 1 then return 'dup' end
if redis.call('GET', KEYS[2]) ~= old then return 'conflict' end
redis.call('SET', KEYS[2], new, 'KEEPTTL')
redis.call('SET', KEYS[1], id, 'PX', retention)
if unawait then redis.call('ZREM', KEYS[3], id) end
if cbid ~= '' then
  redis.call('ZADD', KEYS[4], cbdue, cbid)
  redis.call('HSET', KEYS[5], cbid, cbjs)
end
return 'ok'
";

/// Callback lease: KEYS `cb`, `cbd`; ARGV now ms, max, visibility ms. Takes due callbacks,
/// moves each to `now + visibility` (so no other pod takes it while it is being sent; a pod
/// that dies leaves it due again then) and returns `{id, due ms as it was, JSON, ...}`.
pub(crate) const LEASE_CALLBACKS: &str = r"
local now, max, vis = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, max)
local out = {}
for i = 1, #due, 2 do
  local id, score = due[i], due[i + 1]
  local js = redis.call('HGET', KEYS[2], id)
  if js then
    redis.call('ZADD', KEYS[1], now + vis, id)
    out[#out + 1] = id; out[#out + 1] = score; out[#out + 1] = js
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
";

/// Callback finish: KEYS `cb`, `cbd`; ARGV id, next due ms or '' (done), new JSON.
pub(crate) const FINISH_CALLBACK: &str = r"
local id, due, js = ARGV[1], ARGV[2], ARGV[3]
if due == '' then
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
elseif redis.call('HEXISTS', KEYS[2], id) == 1 then
  redis.call('ZADD', KEYS[1], tonumber(due), id)
  redis.call('HSET', KEYS[2], id, js)
end
return 1
";

/// Takes one credit if there is one. KEYS: the credits hash. ARGV: the field. Returns 1 or 0.
pub const TAKE_CREDIT: &str = r"
local n = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if n > 0 then
  if n == 1 then redis.call('HDEL', KEYS[1], ARGV[1]) else redis.call('HINCRBY', KEYS[1], ARGV[1], -1) end
  return 1
end
return 0
";
