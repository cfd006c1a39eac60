"""The Lua scripts of the Redis limiter (``redis.py``), and the Redis keys they work on.

Per limited key, under one hash tag (so that a script's keys share a cluster slot):
``state``, a hash of the token buckets (``rl``/``rt``, ``tl``/``tt``: level and when) and the day
count (``day``, ``used``); ``leases``, a sorted set of concurrency leases scored by their expiry;
``grants``, a hash of what each unsettled grant reserved (``"<minute tokens> <day tokens> <day>"``)
and ``#day``, the day its stale records were last dropped. Every script reads Redis's clock
(``TIME``), never the caller's. This module knows Redis's commands and nothing of the gateway.
"""

from __future__ import annotations

_COMMON = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function num(v) if v == '' then return nil end return tonumber(v) end
local function fmt(v) if v == nil then return '' end return string.format('%.17g', v) end
-- A missing bucket is a full one; refill continuously at capacity per minute.
local function refill(level, updated, cap)
  if not level then return cap end
  return math.min(cap, tonumber(level) + math.max(now - tonumber(updated), 0) * cap / 60)
end
-- Keep the hash while a bucket is below capacity or today's count matters.
local function keep(state, fields)
  local secs = 1
  if fields.rl then secs = math.max(secs, (fields.rpm - fields.rl) * 60 / math.max(fields.rpm, 1)) end
  if fields.tl then secs = math.max(secs, (fields.tpm - fields.tl) * 60 / math.max(fields.tpm, 1)) end
  if fields.used > 0 then secs = math.max(secs, 86400 - now % 86400) end
  secs = math.ceil(secs) + 1
  if redis.call('TTL', state) < secs then redis.call('EXPIRE', state, secs) end
end
-- A grant's record: "<tokens from the minute bucket> <tokens from the day> <day>".
local function grant(record)
  local minute, daily, day = string.match(record, '^(%d+) (%d+) (%d+)$')
  return tonumber(minute), tonumber(daily), tonumber(day)
end
"""

# KEYS: state hash, lease set, grants hash. ARGV: rpm, tpm, tpd, concurrency ('' = none), tokens,
# lease, ttl, deadline (Redis time after which the caller no longer waits for the answer).
# Reply: {code, wait, requests level, tokens level, day number, Redis time}; code 0 = admitted and
# charged, 1..4 = refused by concurrency, requests/min, tokens/min, tokens/day (nothing charged),
# EXPIRED = the caller's deadline had passed (nothing charged).
EXPIRED = 5
ACQUIRE = (
    _COMMON
    + """
local rpm, tpm, tpd, conc = num(ARGV[1]), num(ARGV[2]), num(ARGV[3]), num(ARGV[4])
local tokens, lease, ttl = tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
local s = redis.call('HMGET', KEYS[1], 'rl', 'rt', 'tl', 'tt', 'day', 'used')
local rl, tl
if rpm then rl = refill(s[1], s[2], rpm) end
if tpm then tl = refill(s[3], s[4], tpm) end
local minute, daily = tokens, tokens
if tpm then minute = math.min(tokens, tpm) end
if tpd then daily = math.min(tokens, tpd) end
local day = math.floor(now / 86400)
local used = 0
if s[5] and tonumber(s[5]) == day then used = tonumber(s[6]) end
local function reply(code, wait) return {code, fmt(wait), fmt(rl), fmt(tl), day, fmt(now)} end
-- The same call once more (redis-py sends it again when a connection breaks): admitted, charged once.
local granted = redis.call('HGET', KEYS[3], lease)
if granted then
  local _, _, on = grant(granted)
  day = on
  return reply(0, 0)
end
-- Its caller stopped waiting (the call sat in a socket while Redis was stalled): take nothing.
if now > tonumber(ARGV[8]) then return reply(5, 0) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if conc and redis.call('ZCARD', KEYS[2]) >= conc then return reply(1, 1) end
if rpm and rl < 1 then return reply(2, (1 - rl) * 60 / math.max(rpm, 1)) end
if tpm and tl < minute then return reply(3, (minute - tl) * 60 / math.max(tpm, 1)) end
if tpd and used + daily > tpd then return reply(4, 86400 - now % 86400) end
local reserved = 0
if rpm then
  rl = rl - 1
  redis.call('HSET', KEYS[1], 'rl', fmt(rl), 'rt', fmt(now))
end
if tpm then
  tl = tl - minute
  reserved = minute
  redis.call('HSET', KEYS[1], 'tl', fmt(tl), 'tt', fmt(now))
end
used = used + daily
redis.call('HSET', KEYS[1], 'day', day, 'used', used)
redis.call('ZADD', KEYS[2], fmt(now + ttl), lease)
redis.call('PEXPIRE', KEYS[2], math.ceil(ttl * 1000))
-- The first grant of a day drops the records of earlier days whose lease is gone (a gateway died).
if redis.call('HGET', KEYS[3], '#day') ~= tostring(day) then
  local records = redis.call('HGETALL', KEYS[3])
  for i = 1, #records, 2 do
    local field = records[i]
    if field ~= '#day' then
      local _, _, on = grant(records[i + 1])
      if on < day and not redis.call('ZSCORE', KEYS[2], field) then redis.call('HDEL', KEYS[3], field) end
    end
  end
end
redis.call('HSET', KEYS[3], lease, reserved .. ' ' .. daily .. ' ' .. day, '#day', day)
-- A record must outlive an outage: kept until its day is over, or while its lease is renewed.
local record_ms = math.ceil((86400 - now % 86400 + ttl) * 1000)
if redis.call('PTTL', KEYS[3]) < record_ms then redis.call('PEXPIRE', KEYS[3], record_ms) end
keep(KEYS[1], {rpm = rpm, rl = rl, tpm = tpm, tl = tl, used = used})
return reply(0, 0)
"""
)

# KEYS: state hash, lease set, grants hash. ARGV: tpm ('' = none), then pairs of lease, tokens used.
# A grant is settled once, by whichever settlement reaches Redis first (its record is what is owed;
# its lease may have expired meanwhile); a grant that is not there (never made, or settled) changes
# nothing. Reply: how many grants were settled.
SETTLE = (
    _COMMON
    + """
local tpm = num(ARGV[1])
local s = redis.call('HMGET', KEYS[1], 'tl', 'tt', 'day', 'used')
local tl
if tpm then tl = refill(s[1], s[2], tpm) end
local today, day_used = nil, 0
if s[3] then today, day_used = tonumber(s[3]), tonumber(s[4]) end
local settled = 0
for i = 2, #ARGV, 2 do
  local lease, used = ARGV[i], tonumber(ARGV[i + 1])
  redis.call('ZREM', KEYS[2], lease)
  local record = redis.call('HGET', KEYS[3], lease)
  if record then
    redis.call('HDEL', KEYS[3], lease)
    settled = settled + 1
    local minute, daily, day = grant(record)
    -- Refund what was reserved but not used, or charge what went over (may go negative).
    if tpm then tl = math.min(tpm, tl + minute - used) end
    if today == day then day_used = math.max(day_used + used - daily, 0) end
  end
end
if settled == 0 then return 0 end
if tpm then redis.call('HSET', KEYS[1], 'tl', fmt(tl), 'tt', fmt(now)) end
if today then redis.call('HSET', KEYS[1], 'used', day_used) end
keep(KEYS[1], {tpm = tpm, tl = tl, used = day_used})
-- Only the day mark left: an idle key keeps nothing.
if redis.call('HLEN', KEYS[3]) == 1 then redis.call('DEL', KEYS[3]) end
return settled
"""
)

# KEYS: lease set, grants hash. ARGV: ttl, deadline, the leases still running at the caller.
# Only an unsettled grant keeps (or gets back, after an outage longer than the ttl) its lease; a
# renewal that comes after its caller stopped waiting does nothing. Reply: 1, or 0 when too late.
RENEW = (
    _COMMON
    + """
local ttl = tonumber(ARGV[1])
if now > tonumber(ARGV[2]) then return 0 end
for i = 3, #ARGV do
  if redis.call('HEXISTS', KEYS[2], ARGV[i]) == 1 then redis.call('ZADD', KEYS[1], fmt(now + ttl), ARGV[i]) end
end
redis.call('PEXPIRE', KEYS[1], math.ceil(ttl * 1000))
if redis.call('PTTL', KEYS[2]) < ttl * 1000 then redis.call('PEXPIRE', KEYS[2], math.ceil(ttl * 1000)) end
return 1
"""
)


def key_names(key: str) -> tuple[str, str, str]:
    # One hash tag per key: the keys of a script live in the same cluster slot.
    prefix = f"gateway:limits:{{{key}}}"
    return f"{prefix}:state", f"{prefix}:leases", f"{prefix}:grants"
