package redisproxy

import "strings"

// kind says how the proxy handles a command.
type kind uint8

const (
	kindKeyed       kind = iota // keys at first..last step; all must share a server
	kindSplitSum                // DEL, EXISTS, TOUCH, UNLINK: one batch per server, summed
	kindSplitMGet               // MGET: one batch per server, merged in key order
	kindSplitMSet               // MSET: one batch per server, +OK when all are
	kindEval                    // EVAL/EVALSHA/FCALL: keys after numkeys
	kindLocal                   // answered by the proxy
	kindUnsupported             // cannot be routed over shards
)

// command is one row of the command table; first/last/step are Redis's key
// positions (last < 0 counts from the end), arity < 0 means "at least -arity".
type command struct {
	name              string
	arity             int
	first, last, step int
	kind              kind
	reason            string // for kindUnsupported: why, and what to do instead
	idx               int    // index into stats
}

const (
	whyScan    = "it would have to visit every shard; keep an index of your keys in a set or hash instead"
	whyTx      = "transactions cannot span shards; use EVAL with keys that share a hash tag"
	whyPubSub  = "pub/sub is not carried by the sharding proxy; connect to a Redis server directly for pub/sub"
	whyAdmin   = "it is a server administration command; run it against each Redis server directly"
	whyBlock   = "blocking commands would stall the pipelined server connection; poll with the non-blocking form"
	whyNumkeys = "its key count argument is not supported by the proxy; use a single-destination form or EVAL"
	whyDB      = "the proxy serves database 0 only"
)

var commandList = []command{
	// strings
	{name: "get", arity: 2, first: 1, last: 1, step: 1},
	{name: "set", arity: -3, first: 1, last: 1, step: 1},
	{name: "setnx", arity: 3, first: 1, last: 1, step: 1},
	{name: "setex", arity: 4, first: 1, last: 1, step: 1},
	{name: "psetex", arity: 4, first: 1, last: 1, step: 1},
	{name: "append", arity: 3, first: 1, last: 1, step: 1},
	{name: "strlen", arity: 2, first: 1, last: 1, step: 1},
	{name: "incr", arity: 2, first: 1, last: 1, step: 1},
	{name: "decr", arity: 2, first: 1, last: 1, step: 1},
	{name: "incrby", arity: 3, first: 1, last: 1, step: 1},
	{name: "decrby", arity: 3, first: 1, last: 1, step: 1},
	{name: "incrbyfloat", arity: 3, first: 1, last: 1, step: 1},
	{name: "getset", arity: 3, first: 1, last: 1, step: 1},
	{name: "getdel", arity: 2, first: 1, last: 1, step: 1},
	{name: "getex", arity: -2, first: 1, last: 1, step: 1},
	{name: "getrange", arity: 4, first: 1, last: 1, step: 1},
	{name: "setrange", arity: 4, first: 1, last: 1, step: 1},
	{name: "substr", arity: 4, first: 1, last: 1, step: 1},
	{name: "getbit", arity: 3, first: 1, last: 1, step: 1},
	{name: "setbit", arity: 4, first: 1, last: 1, step: 1},
	{name: "bitcount", arity: -2, first: 1, last: 1, step: 1},
	{name: "bitpos", arity: -3, first: 1, last: 1, step: 1},
	{name: "bitfield", arity: -2, first: 1, last: 1, step: 1},
	{name: "bitfield_ro", arity: -2, first: 1, last: 1, step: 1},
	{name: "bitop", arity: -4, first: 2, last: -1, step: 1}, // op dest src...: all on one server
	{name: "lcs", arity: -3, first: 1, last: 2, step: 1},
	{name: "msetnx", arity: -3, first: 1, last: -1, step: 2},
	{name: "mget", arity: -2, first: 1, last: -1, step: 1, kind: kindSplitMGet},
	{name: "mset", arity: -3, first: 1, last: -1, step: 2, kind: kindSplitMSet},
	// keys
	{name: "del", arity: -2, first: 1, last: -1, step: 1, kind: kindSplitSum},
	{name: "unlink", arity: -2, first: 1, last: -1, step: 1, kind: kindSplitSum},
	{name: "exists", arity: -2, first: 1, last: -1, step: 1, kind: kindSplitSum},
	{name: "touch", arity: -2, first: 1, last: -1, step: 1, kind: kindSplitSum},
	{name: "expire", arity: -3, first: 1, last: 1, step: 1},
	{name: "expireat", arity: -3, first: 1, last: 1, step: 1},
	{name: "pexpire", arity: -3, first: 1, last: 1, step: 1},
	{name: "pexpireat", arity: -3, first: 1, last: 1, step: 1},
	{name: "expiretime", arity: 2, first: 1, last: 1, step: 1},
	{name: "pexpiretime", arity: 2, first: 1, last: 1, step: 1},
	{name: "persist", arity: 2, first: 1, last: 1, step: 1},
	{name: "ttl", arity: 2, first: 1, last: 1, step: 1},
	{name: "pttl", arity: 2, first: 1, last: 1, step: 1},
	{name: "type", arity: 2, first: 1, last: 1, step: 1},
	{name: "dump", arity: 2, first: 1, last: 1, step: 1},
	{name: "restore", arity: -4, first: 1, last: 1, step: 1},
	{name: "rename", arity: 3, first: 1, last: 2, step: 1},
	{name: "renamenx", arity: 3, first: 1, last: 2, step: 1},
	{name: "copy", arity: -3, first: 1, last: 2, step: 1},
	{name: "object", arity: -3, first: 2, last: 2, step: 1},
	{name: "sort_ro", arity: -2, first: 1, last: 1, step: 1},
	// hashes
	{name: "hdel", arity: -3, first: 1, last: 1, step: 1},
	{name: "hexists", arity: 3, first: 1, last: 1, step: 1},
	{name: "hget", arity: 3, first: 1, last: 1, step: 1},
	{name: "hgetall", arity: 2, first: 1, last: 1, step: 1},
	{name: "hincrby", arity: 4, first: 1, last: 1, step: 1},
	{name: "hincrbyfloat", arity: 4, first: 1, last: 1, step: 1},
	{name: "hkeys", arity: 2, first: 1, last: 1, step: 1},
	{name: "hlen", arity: 2, first: 1, last: 1, step: 1},
	{name: "hmget", arity: -3, first: 1, last: 1, step: 1},
	{name: "hmset", arity: -4, first: 1, last: 1, step: 1},
	{name: "hset", arity: -4, first: 1, last: 1, step: 1},
	{name: "hsetnx", arity: 4, first: 1, last: 1, step: 1},
	{name: "hstrlen", arity: 3, first: 1, last: 1, step: 1},
	{name: "hvals", arity: 2, first: 1, last: 1, step: 1},
	{name: "hrandfield", arity: -2, first: 1, last: 1, step: 1},
	{name: "hscan", arity: -3, first: 1, last: 1, step: 1},
	// lists
	{name: "lindex", arity: 3, first: 1, last: 1, step: 1},
	{name: "linsert", arity: 5, first: 1, last: 1, step: 1},
	{name: "llen", arity: 2, first: 1, last: 1, step: 1},
	{name: "lpop", arity: -2, first: 1, last: 1, step: 1},
	{name: "lpos", arity: -3, first: 1, last: 1, step: 1},
	{name: "lpush", arity: -3, first: 1, last: 1, step: 1},
	{name: "lpushx", arity: -3, first: 1, last: 1, step: 1},
	{name: "lrange", arity: 4, first: 1, last: 1, step: 1},
	{name: "lrem", arity: 4, first: 1, last: 1, step: 1},
	{name: "lset", arity: 4, first: 1, last: 1, step: 1},
	{name: "ltrim", arity: 4, first: 1, last: 1, step: 1},
	{name: "rpop", arity: -2, first: 1, last: 1, step: 1},
	{name: "rpush", arity: -3, first: 1, last: 1, step: 1},
	{name: "rpushx", arity: -3, first: 1, last: 1, step: 1},
	{name: "rpoplpush", arity: 3, first: 1, last: 2, step: 1},
	{name: "lmove", arity: 5, first: 1, last: 2, step: 1},
	// sets
	{name: "sadd", arity: -3, first: 1, last: 1, step: 1},
	{name: "scard", arity: 2, first: 1, last: 1, step: 1},
	{name: "sismember", arity: 3, first: 1, last: 1, step: 1},
	{name: "smismember", arity: -3, first: 1, last: 1, step: 1},
	{name: "smembers", arity: 2, first: 1, last: 1, step: 1},
	{name: "spop", arity: -2, first: 1, last: 1, step: 1},
	{name: "srandmember", arity: -2, first: 1, last: 1, step: 1},
	{name: "srem", arity: -3, first: 1, last: 1, step: 1},
	{name: "sscan", arity: -3, first: 1, last: 1, step: 1},
	{name: "sdiff", arity: -2, first: 1, last: -1, step: 1},
	{name: "sinter", arity: -2, first: 1, last: -1, step: 1},
	{name: "sunion", arity: -2, first: 1, last: -1, step: 1},
	{name: "sdiffstore", arity: -3, first: 1, last: -1, step: 1},
	{name: "sinterstore", arity: -3, first: 1, last: -1, step: 1},
	{name: "sunionstore", arity: -3, first: 1, last: -1, step: 1},
	{name: "smove", arity: 4, first: 1, last: 2, step: 1},
	// sorted sets
	{name: "zadd", arity: -4, first: 1, last: 1, step: 1},
	{name: "zcard", arity: 2, first: 1, last: 1, step: 1},
	{name: "zcount", arity: 4, first: 1, last: 1, step: 1},
	{name: "zincrby", arity: 4, first: 1, last: 1, step: 1},
	{name: "zlexcount", arity: 4, first: 1, last: 1, step: 1},
	{name: "zmscore", arity: -3, first: 1, last: 1, step: 1},
	{name: "zpopmax", arity: -2, first: 1, last: 1, step: 1},
	{name: "zpopmin", arity: -2, first: 1, last: 1, step: 1},
	{name: "zrandmember", arity: -2, first: 1, last: 1, step: 1},
	{name: "zrange", arity: -4, first: 1, last: 1, step: 1},
	{name: "zrangebylex", arity: -4, first: 1, last: 1, step: 1},
	{name: "zrangebyscore", arity: -4, first: 1, last: 1, step: 1},
	{name: "zrank", arity: -3, first: 1, last: 1, step: 1},
	{name: "zrem", arity: -3, first: 1, last: 1, step: 1},
	{name: "zremrangebylex", arity: 4, first: 1, last: 1, step: 1},
	{name: "zremrangebyrank", arity: 4, first: 1, last: 1, step: 1},
	{name: "zremrangebyscore", arity: 4, first: 1, last: 1, step: 1},
	{name: "zrevrange", arity: -4, first: 1, last: 1, step: 1},
	{name: "zrevrangebylex", arity: -4, first: 1, last: 1, step: 1},
	{name: "zrevrangebyscore", arity: -4, first: 1, last: 1, step: 1},
	{name: "zrevrank", arity: -3, first: 1, last: 1, step: 1},
	{name: "zscan", arity: -3, first: 1, last: 1, step: 1},
	{name: "zscore", arity: 3, first: 1, last: 1, step: 1},
	{name: "zrangestore", arity: -5, first: 1, last: 2, step: 1},
	// hyperloglog, geo, streams
	{name: "pfadd", arity: -2, first: 1, last: 1, step: 1},
	{name: "pfcount", arity: -2, first: 1, last: -1, step: 1},
	{name: "pfmerge", arity: -2, first: 1, last: -1, step: 1},
	{name: "geoadd", arity: -5, first: 1, last: 1, step: 1},
	{name: "geodist", arity: -4, first: 1, last: 1, step: 1},
	{name: "geohash", arity: -2, first: 1, last: 1, step: 1},
	{name: "geopos", arity: -2, first: 1, last: 1, step: 1},
	{name: "geosearch", arity: -7, first: 1, last: 1, step: 1},
	{name: "geosearchstore", arity: -8, first: 1, last: 2, step: 1},
	{name: "xadd", arity: -5, first: 1, last: 1, step: 1},
	{name: "xlen", arity: 2, first: 1, last: 1, step: 1},
	{name: "xrange", arity: -4, first: 1, last: 1, step: 1},
	{name: "xrevrange", arity: -4, first: 1, last: 1, step: 1},
	{name: "xdel", arity: -3, first: 1, last: 1, step: 1},
	{name: "xtrim", arity: -4, first: 1, last: 1, step: 1},
	{name: "xack", arity: -4, first: 1, last: 1, step: 1},
	{name: "xclaim", arity: -6, first: 1, last: 1, step: 1},
	{name: "xautoclaim", arity: -6, first: 1, last: 1, step: 1},
	{name: "xpending", arity: -3, first: 1, last: 1, step: 1},
	{name: "xsetid", arity: -3, first: 1, last: 1, step: 1},
	// scripting: keys follow numkeys
	{name: "eval", arity: -3, kind: kindEval},
	{name: "evalsha", arity: -3, kind: kindEval},
	{name: "eval_ro", arity: -3, kind: kindEval},
	{name: "evalsha_ro", arity: -3, kind: kindEval},
	{name: "fcall", arity: -3, kind: kindEval},
	{name: "fcall_ro", arity: -3, kind: kindEval},
	// answered locally
	{name: "ping", arity: -1, kind: kindLocal},
	{name: "echo", arity: 2, kind: kindLocal},
	{name: "quit", arity: -1, kind: kindLocal},
	{name: "auth", arity: -2, kind: kindLocal},
	{name: "hello", arity: -1, kind: kindLocal},
	{name: "select", arity: 2, kind: kindLocal},
}

// unsupported lists commands that cannot be routed over shards, by reason.
var unsupported = map[string][]string{
	whyScan:    {"keys", "scan", "randomkey", "dbsize", "flushall", "flushdb"},
	whyTx:      {"multi", "exec", "discard", "watch", "unwatch"},
	whyPubSub:  {"subscribe", "psubscribe", "ssubscribe", "unsubscribe", "punsubscribe", "sunsubscribe", "publish", "spublish", "pubsub"},
	whyAdmin:   {"client", "config", "shutdown", "save", "bgsave", "bgrewriteaof", "lastsave", "slaveof", "replicaof", "monitor", "debug", "sync", "psync", "script", "function", "cluster", "migrate", "wait", "waitaof", "info", "role", "slowlog", "latency", "memory", "acl", "module", "readonly", "readwrite", "reset", "failover", "lolwut", "command", "time", "sort"},
	whyBlock:   {"blpop", "brpop", "brpoplpush", "blmove", "bzpopmin", "bzpopmax", "blmpop", "bzmpop", "xread", "xreadgroup"},
	whyNumkeys: {"zunionstore", "zinterstore", "zdiffstore", "zunion", "zinter", "zdiff", "zintercard", "sintercard", "lmpop", "zmpop", "georadius", "georadiusbymember", "xgroup", "xinfo"},
	whyDB:      {"move", "swapdb"},
}

// commands is the lookup table, keyed by lower-case name.
var commands = func() map[string]*command {
	m := map[string]*command{}
	for why, names := range unsupported {
		for _, n := range names {
			commandList = append(commandList, command{name: n, arity: -1, kind: kindUnsupported, reason: why})
		}
	}
	for i := range commandList {
		c := &commandList[i]
		c.idx = i
		m[c.name] = c
	}
	return m
}()

// unknownIdx is the stats slot for commands not in the table.
var unknownIdx = len(commands)

// lookup finds a command by name case-insensitively without allocating for
// names up to 32 bytes.
func lookup(name []byte) *command {
	var buf [32]byte
	if len(name) > len(buf) {
		return commands[strings.ToLower(string(name))]
	}
	for i, c := range name {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		buf[i] = c
	}
	return commands[string(buf[:len(name)])]
}

// arityOK reports whether n arguments (command name included) fit c.
func (c *command) arityOK(n int) bool {
	if c.arity >= 0 {
		return n == c.arity
	}
	return n >= -c.arity
}

// keyIndexes appends the argument indexes that hold keys.
func (c *command) keyIndexes(dst []int, nargs int) []int {
	if c.first <= 0 {
		return dst
	}
	last := c.last
	if last < 0 {
		last = nargs + last
	}
	for i := c.first; i <= last && i < nargs; i += c.step {
		dst = append(dst, i)
	}
	return dst
}
