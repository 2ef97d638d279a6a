#!lua name=wsgate
-- The gateway's Redis functions (FUNCTION LOAD REPLACE on every connect; see
-- src/cluster/mod.rs, "Keys and functions"). Every function works on the keys of one
-- user or one room, all under one hash tag, and runs atomically: a sequence number is
-- taken, the message stored and published in one step, so every node sees a key's
-- messages in sequence order.
--
-- An inbox is `wsg:{u:<user>}` + suffix, a room `wsg:{r:<room>}` + suffix:
--   :i  hash   e = epoch, s = last sequence number (rooms: c = member connections)
--   :h  list   history, oldest first: "<ms> <frame>", the last entry has seq s
--   :s  hash   inbox only: seq -> "<sender>\n<client id JSON>" (for receipts)
--   :k  hash   inbox only: seq -> 1 once acknowledged (a second ack sends no receipt)
--   :o  list   inbox only: offline queue, "<ms> <frame>"
--   :c  hash   inbox only: registry, "<node>/<shard>" -> connections there
--   :m  hash   room only: member user -> nodes where the user is a member
-- A node's channel is `wsg:n:<node>/<shard>`; a room's channel is its key prefix.
-- Pushed payloads start with one letter: u (inbox message: requeue if nobody took
-- it), U (receipt: dropped if nobody takes it), D (the backend's disconnect), each
-- followed by "<len>:<user>" and the entry, frame or origin node; r (room message: the exclude token, '\n', the frame) and p
-- (presence event: the frame).

-- Appends `list` to the reply `out`.
local function extend(out, list)
  for _, v in ipairs(list) do
    out[#out + 1] = v
  end
  return out
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The log's epoch and last sequence number; a new log takes the caller's epoch.
local function position(k, candidate)
  local p = redis.call('HMGET', k .. ':i', 'e', 's')
  if not p[1] then
    redis.call('HSET', k .. ':i', 'e', candidate, 's', 0)
    return candidate, 0
  end
  return p[1], tonumber(p[2])
end

-- Takes the log's next sequence number; returns the epoch, the seq and the frame with
-- it (head .. seq .. tail).
local function sequence(k, candidate, head, tail)
  local epoch, seq = position(k, candidate)
  seq = seq + 1
  redis.call('HSET', k .. ':i', 's', seq)
  return epoch, seq, head .. seq .. tail
end

-- Appends to the history and trims it to `max` entries; returns how many went.
local function append(k, seq, entry, max, receipts)
  local len = redis.call('RPUSH', k .. ':h', entry)
  local trimmed = 0
  if len > max then
    trimmed = len - max
    redis.call('LTRIM', k .. ':h', trimmed, -1)
    if receipts then
      -- The trimmed entries held seqs (seq - len + 1) .. (seq - len + trimmed).
      local first = seq - len + 1
      local gone = {}
      for s = first, first + trimmed - 1 do
        gone[#gone + 1] = s
      end
      redis.call('HDEL', k .. ':s', unpack(gone))
      redis.call('HDEL', k .. ':k', unpack(gone))
    end
  end
  return trimmed
end

local function expire(k, ttl, suffixes)
  for _, suffix in ipairs(suffixes) do
    redis.call('PEXPIRE', k .. suffix, ttl)
  end
end

-- Pushes onto the offline queue, oldest dropped beyond `max`; returns how many went.
local function offline_push(k, entry, max, ttl)
  local len = redis.call('RPUSH', k .. ':o', entry)
  redis.call('PEXPIRE', k .. ':o', ttl)
  if len > max then
    redis.call('LTRIM', k .. ':o', len - max, -1)
    return len - max
  end
  return 0
end

-- Publishes `payload` on the channel of every registry entry; returns the receivers
-- and the entries.
local function to_registry(k, payload)
  local fields = redis.call('HKEYS', k .. ':c')
  local receivers = 0
  for _, field in ipairs(fields) do
    receivers = receivers + redis.call('PUBLISH', 'wsg:n:' .. field, payload)
  end
  return receivers, fields
end

-- send: KEYS[1] inbox; ARGV: epoch candidate, frame head, frame tail (the frame is
-- head .. seq .. tail), sender ('' for the API), client id JSON, user, history max,
-- offline max, ttl ms (history and offline age), cluster ('1' on a Redis Cluster,
-- where PUBLISH counts only the receivers on the master it ran on).
-- Queued offline if nobody received it (one Redis) or nobody is registered (a
-- cluster: the gateway queues it with wsg_offline_seq if every entry is of a dead
-- node). Returns {epoch, seq, receivers, queued 0|1, history trimmed, offline
-- dropped, registry entries...}.
redis.register_function('wsg_send', function(keys, args)
  local k = keys[1]
  local epoch, seq, frame = sequence(k, args[1], args[2], args[3])
  local now = now_ms()
  local entry = now .. ' ' .. frame
  local trimmed = append(k, seq, entry, tonumber(args[7]), true)
  if args[4] ~= '' then
    redis.call('HSET', k .. ':s', seq, args[4] .. '\n' .. args[5])
  end
  local ttl = tonumber(args[9])
  expire(k, ttl, {':h', ':s', ':k'})
  if redis.call('HLEN', k .. ':c') == 0 then
    -- The position lives while the user is connected somewhere, and `ttl` after.
    redis.call('PEXPIRE', k .. ':i', ttl)
  end
  local receivers, fields = to_registry(k, 'u' .. args[6] .. entry)
  local queued, dropped = 0, 0
  local nobody = receivers == 0
  if args[10] == '1' then
    nobody = #fields == 0
  end
  if nobody then
    queued = 1
    dropped = offline_push(k, entry, tonumber(args[8]), ttl)
  end
  return extend({epoch, seq, receivers, queued, trimmed, dropped}, fields)
end)

-- offline_seq: on a Redis Cluster, a message whose registry entries are all of dead
-- nodes. KEYS[1] inbox; ARGV: seq, offline max, ttl ms, the dead entries. They are
-- removed and the message (from the history) queued. Returns 1 if queued.
redis.register_function('wsg_offline_seq', function(keys, args)
  local k = keys[1]
  local seq = tonumber(args[1])
  for i = 4, #args do
    redis.call('HDEL', k .. ':c', args[i])
  end
  local last = tonumber(redis.call('HGET', k .. ':i', 's') or 0)
  local e = redis.call('LINDEX', k .. ':h', seq - last - 1)
  if not e then
    return 0
  end
  offline_push(k, e, tonumber(args[2]), tonumber(args[3]))
  return 1
end)

-- requeue: a node got an inbox message for a user who had no connection there any
-- more. KEYS[1] inbox; ARGV: entry, offline max, ttl ms. Queued only if no node has
-- the user now (a node that has them delivered it). Returns 1 if queued.
redis.register_function('wsg_requeue', function(keys, args)
  local k = keys[1]
  if redis.call('HLEN', k .. ':c') > 0 then
    return 0
  end
  offline_push(k, args[1], tonumber(args[2]), tonumber(args[3]))
  return 1
end)

-- connect: KEYS[1] inbox; ARGV: registry field, epoch candidate, live nodes joined by
-- '\n'. Entries of nodes not alive are removed; the first live connection takes the
-- offline queue; the position does not expire while the user is connected. Returns
-- {epoch, seq, now ms, offline entries...}.
redis.register_function('wsg_connect', function(keys, args)
  local k = keys[1]
  local field = args[1]
  local live = {}
  for node in string.gmatch(args[3], '[^\n]+') do
    live[node] = true
  end
  redis.call('HINCRBY', k .. ':c', field, 1)
  local others = 0
  for _, f in ipairs(redis.call('HKEYS', k .. ':c')) do
    if f ~= field then
      local node = string.match(f, '^(.*)/[^/]*$')
      if node and live[node] then
        others = others + 1
      else
        redis.call('HDEL', k .. ':c', f)
      end
    end
  end
  local epoch, seq = position(k, args[2])
  redis.call('PERSIST', k .. ':i')
  local out = {epoch, seq, now_ms()}
  if others == 0 then
    extend(out, redis.call('LRANGE', k .. ':o', 0, -1))
    redis.call('DEL', k .. ':o')
  end
  return out
end)

-- disconnect: KEYS[1] inbox; ARGV: registry field, connections that closed there,
-- ttl ms. The user's last connection anywhere starts the position's time to live.
redis.register_function('wsg_disconnect', function(keys, args)
  local k = keys[1]
  local left = redis.call('HINCRBY', k .. ':c', args[1], -tonumber(args[2]))
  if left <= 0 then
    redis.call('HDEL', k .. ':c', args[1])
  end
  if redis.call('HLEN', k .. ':c') == 0 then
    redis.call('PEXPIRE', k .. ':i', tonumber(args[3]))
  end
  return left
end)

-- register: a node's registry entries set again after Redis came back (it may have
-- lost them). KEYS[1] inbox; ARGV: field, connections.
redis.register_function('wsg_register', function(keys, args)
  redis.call('HSET', keys[1] .. ':c', args[1], args[2])
  return 1
end)

-- read: KEYS[1] inbox or room; ARGV: epoch candidate, since seq (-1: no replay), ttl ms.
-- Returns {epoch, seq, first seq returned, now ms, entries after since...}.
redis.register_function('wsg_read', function(keys, args)
  local k = keys[1]
  local epoch, seq = position(k, args[1])
  if redis.call('PTTL', k .. ':i') == -1 and redis.call('EXISTS', k .. ':c') == 0 then
    -- A room (or an offline inbox) read before any write: it lives `ttl` from now.
    redis.call('PEXPIRE', k .. ':i', tonumber(args[3]))
  end
  local since = tonumber(args[2])
  local out = {epoch, seq, 0, now_ms()}
  if since < 0 or since >= seq then
    return out
  end
  local len = redis.call('LLEN', k .. ':h')
  local first = seq - len + 1
  local from = since + 1 - first
  if from < 0 then
    from = 0
  end
  out[3] = first + from
  return extend(out, redis.call('LRANGE', k .. ':h', from, -1))
end)

-- ack: KEYS[1] inbox; ARGV: seq, ttl ms. Returns {0} (not in history), {1} (acknowledged
-- before, or no sender to tell) or {2, "<sender>\n<id>"} (the first ack).
redis.register_function('wsg_ack', function(keys, args)
  local k = keys[1]
  local seq = tonumber(args[1])
  local p = redis.call('HMGET', k .. ':i', 's')
  local last = tonumber(p[1] or 0)
  local len = redis.call('LLEN', k .. ':h')
  if seq < 1 or seq > last or seq <= last - len then
    return {0}
  end
  if redis.call('HSETNX', k .. ':k', seq, 1) == 0 then
    return {1}
  end
  redis.call('PEXPIRE', k .. ':k', tonumber(args[2]))
  local sender = redis.call('HGET', k .. ':s', seq)
  if not sender then
    return {1}
  end
  return {2, sender}
end)

-- deliver: a receipt (never queued). KEYS[1] inbox of the original sender; ARGV:
-- "<len>:<user>", frame. Returns the receivers.
redis.register_function('wsg_deliver', function(keys, args)
  local receivers = to_registry(keys[1], 'U' .. args[1] .. args[2])
  return receivers
end)

-- notify: KEYS[1] inbox; ARGV: payload. Published on every registry entry's channel
-- as is (the backend's disconnect: "D<len>:<user><origin node>"). Returns receivers.
redis.register_function('wsg_notify', function(keys, args)
  local receivers = to_registry(keys[1], args[1])
  return receivers
end)

-- publish: KEYS[1] room; ARGV: epoch candidate, frame head, frame tail, history max,
-- ttl ms, exclude token ('' or "<node>/<shard>/<conn>"). The message goes to the
-- room's channel once: each node with members is subscribed once.
-- Returns {epoch, seq, receivers (nodes), history trimmed}.
redis.register_function('wsg_publish', function(keys, args)
  local k = keys[1]
  local epoch, seq, frame = sequence(k, args[1], args[2], args[3])
  local trimmed = append(k, seq, now_ms() .. ' ' .. frame, tonumber(args[4]), false)
  expire(k, tonumber(args[5]), {':i', ':h'})
  local receivers = redis.call('PUBLISH', k, 'r' .. args[6] .. '\n' .. frame)
  return {epoch, seq, receivers, trimmed}
end)

-- member: a user became (delta 1) or stopped being (-1) a member on one node.
-- KEYS[1] room; ARGV: user, delta, connections delta. Returns {nodes where the user
-- is a member now, members, member connections}.
redis.register_function('wsg_member', function(keys, args)
  local k = keys[1]
  local n = 0
  if tonumber(args[2]) ~= 0 then
    n = redis.call('HINCRBY', k .. ':m', args[1], tonumber(args[2]))
    if n <= 0 then
      redis.call('HDEL', k .. ':m', args[1])
    end
  else
    n = tonumber(redis.call('HGET', k .. ':m', args[1]) or 0)
  end
  local c = redis.call('HINCRBY', k .. ':i', 'c', tonumber(args[3]))
  return {n, redis.call('HLEN', k .. ':m'), c}
end)

-- room presence: KEYS[1] room; ARGV: most users listed. Returns {members, member
-- connections, listed 0|1, users...}.
redis.register_function('wsg_room_presence', function(keys, args)
  local k = keys[1]
  local members = redis.call('HLEN', k .. ':m')
  local conns = tonumber(redis.call('HGET', k .. ':i', 'c') or 0)
  if members > tonumber(args[1]) then
    return {members, conns, 0}
  end
  return extend({members, conns, 1}, redis.call('HKEYS', k .. ':m'))
end)

-- alive: KEYS[1] the node set; ARGV: node, ttl ms. The node's liveness is renewed,
-- expired nodes are removed. Returns the live nodes.
redis.register_function('wsg_alive', function(keys, args)
  local now = now_ms()
  redis.call('ZADD', keys[1], now + tonumber(args[2]), args[1])
  redis.call('ZREMRANGEBYSCORE', keys[1], '-inf', now)
  return redis.call('ZRANGE', keys[1], 0, -1)
end)
