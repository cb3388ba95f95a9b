//! The mailbox's two Lua scripts, append and read, and the one rule they share: which epoch a
//! stream is in.
//!
//! A stream's epoch is kept in its meta hash under a field named after the Redis replication
//! history that wrote it: `e` and the first 16 hex digits of the master's `master_replid` (from
//! `INFO replication`). A Redis master makes a new replication id whenever its history may
//! lack writes it acknowledged: a replica promoted to master (its copy may lack the old
//! master's last writes, replication is asynchronous) and a restarted master (its AOF may lack
//! the last second, or the restart lost everything). So a stream whose meta hash has no epoch
//! under the current history's field — none at all, or one another history wrote — is made
//! anew: a fresh epoch, offsets from 1, both keys emptied first. Without that rule a promoted
//! replica would hand out the lost offsets again in the same epoch, and a client that had
//! received a lost message would resume "after" its replacement and miss it without being
//! told; with it, every client resuming from before the new history is told
//! `recovered: false`. Naming the field after the history keeps the check one `HGET`, as the
//! epoch's read was before: the cost is one `INFO replication` per script call. Replicas never
//! run these scripts (they are writes), and a stream's two keys share one slot, so on a Redis
//! Cluster the id is that of the slot's master.
//!
//! Both scripts are built from [`stream_epoch_lua!`], so the rule is written once.

/// The shared prelude: `field`, the current history's epoch field, and `epoch_of(stream, meta,
/// fresh)`, which returns the stream's epoch and whether it was made anew (with epoch `fresh`,
/// offset 0) because the meta hash had none under `field`. A Redis whose `INFO replication`
/// names no `master_replid` fails the call (every append of it answers 503), never skips the
/// check.
macro_rules! stream_epoch_lua {
    () => {
        r#"
local info = redis.call('INFO', 'replication')
local at = string.find(info, 'master_replid:', 1, true)
if not at then
  return redis.error_reply('INFO replication names no master_replid')
end
local field = 'e' .. string.sub(info, at + 14, at + 29)
local function epoch_of(stream, meta, fresh)
  local epoch = redis.call('HGET', meta, field)
  if epoch then
    return epoch, false
  end
  redis.call('DEL', stream, meta)
  redis.call('HSET', meta, field, fresh, 's', 0)
  return fresh, true
end
"#
    };
}

/// Epoch, offset allocation and append for each of a batch of messages, in order, in one
/// atomic call. KEYS: stream and meta of each message, in pairs. ARGV: max length, ttl seconds,
/// a fresh epoch (given to every stream of the batch that is made anew: an epoch tells one
/// user's streams apart, so users may share one), then three per message: content, timestamp,
/// the chat sender or "" (stored as field `f` when set). Returns one string, `epoch:offset` per
/// message joined by `,` (`batch::parse_reply`): a client parses one bulk string far faster
/// than two arrays of a value per message (redis-rs's parser was a fifth of the node's
/// instructions per send).
pub(super) const APPEND: &str = concat!(
    stream_epoch_lua!(),
    r#"
local out = {}
for i = 1, #KEYS / 2 do
  local stream, meta, a = KEYS[2 * i - 1], KEYS[2 * i], 3 + 3 * (i - 1)
  local epoch = epoch_of(stream, meta, ARGV[3])
  local seq = redis.call('HINCRBY', meta, 's', 1)
  if ARGV[a + 3] == '' then
    redis.call('XADD', stream, 'MAXLEN', ARGV[1], '0-' .. seq, 'c', ARGV[a + 1], 't', ARGV[a + 2])
  else
    redis.call('XADD', stream, 'MAXLEN', ARGV[1], '0-' .. seq, 'c', ARGV[a + 1], 't', ARGV[a + 2],
      'f', ARGV[a + 3])
  end
  redis.call('EXPIRE', stream, ARGV[2])
  redis.call('EXPIRE', meta, ARGV[2])
  out[i] = epoch .. ':' .. seq
end
return table.concat(out, ',')
"#
);

/// The epoch, the bounds and one page of a stream. KEYS: stream, meta. ARGV: after, limit, ttl
/// seconds, a fresh epoch (the stream's epoch if it is made anew, with an empty stream, so the
/// ready frame names the epoch the next message will carry). Returns `{epoch, latest, first
/// entry (0 or 1), page}`.
pub(super) const READ: &str = concat!(
    stream_epoch_lua!(),
    r#"
local epoch, made = epoch_of(KEYS[1], KEYS[2], ARGV[4])
if made then
  redis.call('EXPIRE', KEYS[2], ARGV[3])
  return {epoch, 0, {}, {}}
end
local latest = tonumber(redis.call('HGET', KEYS[2], 's') or '0')
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local page = redis.call('XRANGE', KEYS[1], '(0-' .. ARGV[1], '+', 'COUNT', ARGV[2])
return {epoch, latest, first, page}
"#
);
