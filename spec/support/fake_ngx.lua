-- A fake `ngx` for unit specs, installed as the global `ngx`.
--
-- The clock is virtual: ngx.now() moves only when a spec calls
-- fake.advance(), which fires due timers in time order, or when a fake
-- light thread "waits" (see fake_pipe.lua). With `real_clock = true` the
-- clock is the system's and fake.run_until() fires timers as they fall due.
--
-- Shared dicts follow lua-nginx-module's ngx_http_lua_shdict.c: a set()
-- whose value has another size than the old one frees the old entry first,
-- then allocates, evicting least recently used entries when the zone is
-- full (forcible = true), and fails with "no memory" when that is not
-- enough. Zones are unbounded unless a spec sets fake.zone(name).capacity.

local ffi = require "ffi"

pcall(ffi.cdef, [[
    typedef struct {
        long tv_sec;
        long tv_nsec;
    } fake_ngx_timespec_t;
]])
pcall(ffi.cdef, "int clock_gettime(int clk_id, fake_ngx_timespec_t *tp);")
pcall(ffi.cdef, "int poll(void *fds, unsigned long nfds, int timeout);")
pcall(ffi.cdef, "int getpid(void);")

local C = ffi.C
local M = {}

-- nginx's levels (src/core/ngx_log.h), which ngx_lua exports as ngx.*
M.levels = {
    STDERR = 0, EMERG = 1, ALERT = 2, CRIT = 3, ERR = 4,
    WARN = 5, NOTICE = 6, INFO = 7, DEBUG = 8,
}

-- where the clock starts, in seconds since the epoch
M.EPOCH = 1700000000

-- bytes a shared dict entry takes besides its key and value
local ENTRY_OVERHEAD = 64

-- ngx_lua's default lua_max_pending_timers
local MAX_PENDING = 1024

local YIELDABLE = {
    timer = true, rewrite = true, access = true, content = true,
    ssl_cert = true, ssl_session_fetch = true,
}


local function real_time()
    local ts = ffi.new("fake_ngx_timespec_t")
    C.clock_gettime(0, ts)  -- CLOCK_REALTIME
    return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) / 1e9
end


--- Sleeps `seconds` of real time.
function M.sleep(seconds)
    C.poll(nil, 0, math.floor(seconds * 1000))
end


local function pack(...)
    return { n = select("#", ...), ... }
end


-- Shared dicts ----------------------------------------------------------

local Dict = {}
Dict.__index = Dict

local zones = setmetatable({}, { __mode = "k" })


local function value_size(v)
    if type(v) == "string" then
        return #v
    elseif type(v) == "number" then
        return 8
    end
    return 1
end


local function check_zone(self)
    local z = type(self) == "table" and zones[self]
    if not z then
        error('bad "zone" argument', 3)
    end
    return z
end


local function check_key(key)
    if key == nil then
        return nil, "nil key"
    end
    if type(key) == "number" then
        key = tostring(key)
    end
    if type(key) ~= "string" then
        error("bad argument #1 to 'set' (string expected, got "
              .. type(key) .. ")", 3)
    end
    if #key == 0 then
        return nil, "empty key"
    end
    if #key > 65535 then
        return nil, "key too long"
    end
    return key
end


-- the live entry under `key`, touched as most recently used
local function lookup(z, key)
    local e = z.data[key]
    if e == nil then
        return nil
    end
    z.serial = z.serial + 1
    e.used = z.serial
    if e.expires and e.expires <= z.clock() then
        return nil, e
    end
    return e
end


local function remove(z, key)
    local e = z.data[key]
    if e then
        z.used = z.used - e.size
        z.data[key] = nil
    end
end


-- evicts the least recently used entry; false when there is none
local function evict_oldest(z)
    local oldest_key, oldest
    for k, e in pairs(z.data) do
        if oldest == nil or e.used < oldest.used then
            oldest_key, oldest = k, e
        end
    end
    if oldest_key == nil then
        return false
    end
    remove(z, oldest_key)
    z.evicted[#z.evicted + 1] = oldest_key
    return true
end


local function store(self, op, key, value, exptime, flags)
    local z = check_zone(self)
    local k, kerr = check_key(key)
    if not k then
        return nil, kerr
    end
    local vt = type(value)
    if vt == "nil" and (op == "add" or op == "replace") then
        return nil, "attempt to add or replace nil values"
    end
    if vt ~= "nil" and vt ~= "string" and vt ~= "number"
        and vt ~= "boolean"
    then
        return nil, "bad value type"
    end
    if exptime ~= nil and (type(exptime) ~= "number" or exptime < 0) then
        error('bad "exptime" argument', 3)
    end
    z.sets = z.sets + 1

    local live, stale = lookup(z, k)
    if op == "replace" and not live then
        return false, "not found", false
    end
    if op == "add" and live then
        return false, "exists", false
    end
    local old = live or stale
    local expires = (exptime or 0) > 0 and z.clock() + exptime or nil
    if vt == "nil" then
        remove(z, k)
        return true, nil, false
    end

    local size = ENTRY_OVERHEAD + #k + value_size(value)
    if old and old.size == size then
        old.value, old.flags, old.expires = value, flags, expires
        return true, nil, false
    end
    remove(z, k)

    local forcible = false
    if z.used + size > z.capacity then
        if op == "safe_set" or op == "safe_add" then
            return false, "no memory"
        end
        for _ = 1, 30 do
            if not evict_oldest(z) then
                break
            end
            forcible = true
            if z.used + size <= z.capacity then
                break
            end
        end
        if z.used + size > z.capacity then
            return false, "no memory", forcible
        end
    end

    z.serial = z.serial + 1
    z.data[k] = {
        value = value, flags = flags, expires = expires,
        size = size, used = z.serial,
    }
    z.used = z.used + size
    return true, nil, forcible
end


function Dict:get(key)
    local z = check_zone(self)
    local k, kerr = check_key(key)
    if not k then
        return nil, kerr
    end
    z.gets = z.gets + 1
    local e = lookup(z, k)
    if not e then
        return nil
    end
    if e.flags and e.flags ~= 0 then
        return e.value, e.flags
    end
    return e.value
end


--- ngx.shared.DICT:ttl(): seconds left, 0 for a key that never expires,
-- nil, "not found" for a missing or expired one (lua-resty-core).
function Dict:ttl(key)
    local z = check_zone(self)
    local k, kerr = check_key(key)
    if not k then
        return nil, kerr
    end
    local e = lookup(z, k)
    if not e then
        return nil, "not found"
    end
    if not e.expires then
        return 0
    end
    return e.expires - z.clock()
end


function Dict:set(key, value, exptime, flags)
    return store(self, "set", key, value, exptime, flags)
end


function Dict:safe_set(key, value, exptime, flags)
    return store(self, "safe_set", key, value, exptime, flags)
end


function Dict:add(key, value, exptime, flags)
    return store(self, "add", key, value, exptime, flags)
end


function Dict:safe_add(key, value, exptime, flags)
    return store(self, "safe_add", key, value, exptime, flags)
end


function Dict:replace(key, value, exptime, flags)
    return store(self, "replace", key, value, exptime, flags)
end


function Dict:delete(key)
    return self:set(key, nil)
end


function Dict:flush_all()
    local z = check_zone(self)
    for k in pairs(z.data) do
        remove(z, k)
    end
end


--- Unexpired keys, at most `max` (default 1024, 0 for all).
function Dict:get_keys(max)
    local z = check_zone(self)
    max = max or 1024
    local keys = {}
    for k, e in pairs(z.data) do
        if not (e.expires and e.expires <= z.clock()) then
            keys[#keys + 1] = k
            if max > 0 and #keys >= max then
                break
            end
        end
    end
    table.sort(keys)
    return keys
end


local function new_dict(name, clock)
    local dict = setmetatable({}, Dict)
    zones[dict] = {
        name = name, clock = clock, data = {}, used = 0,
        capacity = math.huge, serial = 0, gets = 0, sets = 0,
        evicted = {},
    }
    return dict
end


-- The fake ------------------------------------------------------------

--- Installs a fresh fake as the global `ngx` and returns its controls.
-- opts.dicts: names of the lua_shared_dict zones (default {"tokens"});
-- opts.pipe: true for a fake_pipe (then fake.pipe), another value for
-- `require "ngx.pipe"` to return, or nil to make that require raise as it
-- does without OpenResty's nginx patch;
-- opts.real_clock: use the system clock instead of the virtual one;
-- opts.log_errors: log errors thrown in timers as nginx does, instead of
-- raising them out of fake.advance() (the default, so none go unseen).
function M.install(opts)
    opts = opts or {}
    local fake = {
        logs = {},
        timers = {},
        fired = 0,
        exiting = false,
    }
    local seq = 0
    local phases = { "init_worker" }
    local clock = M.EPOCH
    local cached

    if opts.real_clock then
        cached = math.floor(real_time() * 1000) / 1000
    end

    local function now()
        if opts.real_clock then
            return cached
        end
        return clock
    end

    --- The virtual time, in seconds.
    function fake.now()
        return now()
    end

    --- Moves the virtual clock forward to `t` (never back): the time a
    -- light thread spends waiting.
    function fake.clock_at_least(t)
        assert(not opts.real_clock, "the clock is real")
        if t > clock then
            clock = t
        end
    end

    --- Sets the virtual clock, for a fake light thread that ran ahead.
    function fake.set_clock(t)
        assert(not opts.real_clock, "the clock is real")
        clock = t
    end

    local ngx = {
        OK = 0, ERROR = -1, AGAIN = -2, DONE = -4, DECLINED = -5,
        HTTP_OK = 200,
        null = setmetatable({}, { __tostring = function() return "null" end }),
        config = { subsystem = "http", ngx_lua_version = 10026 },
    }
    for name, level in pairs(M.levels) do
        ngx[name] = level
    end

    -- ngx.log --------------------------------------------------------

    function ngx.log(level, ...)
        if type(level) ~= "number" or level < 0 or level > 8 then
            error("bad log level", 2)
        end
        local parts = {}
        for i = 1, select("#", ...) do
            local v = select(i, ...)
            local t = type(v)
            if t == "string" or t == "number" then
                parts[i] = tostring(v)
            elseif t == "nil" then
                parts[i] = "nil"
            elseif t == "boolean" then
                parts[i] = v and "true" or "false"
            elseif v == ngx.null then
                parts[i] = "null"
            elseif t == "table" and getmetatable(v)
                and getmetatable(v).__tostring
            then
                parts[i] = tostring(v)
            else
                error("bad argument #" .. i .. " to 'log' (expected "
                      .. "table to have __tostring metamethod)", 2)
            end
        end
        fake.logs[#fake.logs + 1] = {
            level = level, msg = table.concat(parts),
        }
    end

    --- The messages logged at `level` exactly, in order.
    function fake.logged(level)
        local out = {}
        for _, entry in ipairs(fake.logs) do
            if entry.level == level then
                out[#out + 1] = entry.msg
            end
        end
        return out
    end

    --- Every message logged, one per line.
    function fake.log_text()
        local out = {}
        for i, entry in ipairs(fake.logs) do
            out[i] = entry.msg
        end
        return table.concat(out, "\n")
    end

    -- time -----------------------------------------------------------

    function ngx.now()
        return now()
    end

    function ngx.time()
        return math.floor(now())
    end

    function ngx.update_time()
        if opts.real_clock then
            cached = math.floor(real_time() * 1000) / 1000
        end
    end

    function ngx.get_phase()
        return phases[#phases]
    end

    --- Runs fn(...) as if in `phase`.
    function fake.in_phase(phase, fn, ...)
        phases[#phases + 1] = phase
        local res = pack(pcall(fn, ...))
        phases[#phases] = nil
        if not res[1] then
            error(res[2], 0)
        end
        return unpack(res, 2, res.n)
    end

    function ngx.sleep(seconds)
        if not YIELDABLE[ngx.get_phase()] then
            error("API disabled in the context of "
                  .. ngx.get_phase(), 2)
        end
        if opts.real_clock then
            M.sleep(seconds)
            ngx.update_time()
        else
            fake.clock_at_least(clock + seconds)
        end
    end

    -- timers ---------------------------------------------------------

    local function add_timer(every, delay, cb, ...)
        if type(delay) ~= "number" or delay < 0 then
            error("bad argument #1 (delay must be a number >= 0)", 3)
        end
        if every and delay == 0 then
            error("delay cannot be zero", 3)
        end
        if type(cb) ~= "function" then
            error("bad argument #2 (Lua function expected)", 3)
        end
        if fake.exiting then
            return nil, "process exiting"
        end
        if fake.fail_timers then
            return nil, fake.fail_timers
        end
        if #fake.timers >= MAX_PENDING then
            return nil, "too many pending timers"
        end
        seq = seq + 1
        fake.timers[#fake.timers + 1] = {
            due = now() + delay, delay = delay, every = every,
            cb = cb, args = pack(...), seq = seq,
        }
        return true
    end

    ngx.timer = {}

    function ngx.timer.at(delay, cb, ...)
        return add_timer(false, delay, cb, ...)
    end

    function ngx.timer.every(delay, cb, ...)
        return add_timer(true, delay, cb, ...)
    end

    function ngx.timer.pending_count()
        return #fake.timers
    end

    function ngx.timer.running_count()
        local n = 0
        for _, phase in ipairs(phases) do
            if phase == "timer" then
                n = n + 1
            end
        end
        return n
    end

    --- Timers created and not yet fired (an every-timer always is).
    function fake.pending()
        return #fake.timers
    end

    -- the pending timer due first (ties: created first), if due by `by`
    local function next_timer(by)
        local best, at
        for i, t in ipairs(fake.timers) do
            if (by == nil or t.due <= by) and (best == nil
                or t.due < best.due
                or (t.due == best.due and t.seq < best.seq))
            then
                best, at = t, i
            end
        end
        return best, at
    end

    local function fire(t, at, premature)
        table.remove(fake.timers, at)
        if t.every and not premature then
            seq = seq + 1
            fake.timers[#fake.timers + 1] = {
                due = now() + t.delay, delay = t.delay, every = true,
                cb = t.cb, args = t.args, seq = seq,
            }
        end
        fake.fired = fake.fired + 1
        phases[#phases + 1] = "timer"
        local ok, err = xpcall(function()
            t.cb(premature, unpack(t.args, 1, t.args.n))
        end, debug.traceback)
        phases[#phases] = nil
        if not ok then
            if not opts.log_errors then
                error(err, 0)
            end
            ngx.log(ngx.ERR, "lua entry thread aborted: runtime error: ",
                    err)
        end
    end

    --- Moves the virtual clock `seconds` on, firing due timers in order;
    -- timers made by a callback fire too when they fall due in time.
    function fake.advance(seconds)
        assert(not opts.real_clock, "the clock is real")
        assert(seconds >= 0, "time runs forward")
        local target = clock + seconds
        while true do
            local t, at = next_timer(target)
            if t == nil then
                break
            end
            if t.due > clock then
                clock = t.due
            end
            fire(t, at, false)
        end
        if target > clock then
            clock = target
        end
    end

    --- Fires only the next pending timer, moving the clock to its time.
    function fake.fire_next()
        assert(not opts.real_clock, "the clock is real")
        local t, at = next_timer(nil)
        if t == nil then
            return false
        end
        if t.due > clock then
            clock = t.due
        end
        fire(t, at, false)
        return true
    end

    --- Real clock: fires timers as they fall due until cond() is true or
    -- `limit` seconds (default 10) have passed; returns cond()'s result.
    function fake.run_until(cond, limit)
        assert(opts.real_clock, "the clock is virtual")
        local stop = real_time() + (limit or 10)
        while true do
            ngx.update_time()
            local t, at = next_timer(now())
            while t do
                fire(t, at, false)
                ngx.update_time()
                t, at = next_timer(now())
            end
            local res = cond()
            if res or real_time() > stop then
                return res
            end
            M.sleep(0.02)
        end
    end

    --- Worker exit: every pending timer fires with premature = true.
    function fake.shutdown()
        fake.exiting = true
        while #fake.timers > 0 do
            local t, at = next_timer(nil)
            fire(t, at, true)
        end
    end

    -- light threads: run at once, on a clock of their own --------------

    ngx.thread = {}

    function ngx.thread.spawn(fn, ...)
        if type(fn) ~= "function" then
            error("bad argument #1 to 'spawn' (function expected)", 2)
        end
        local start = now()
        local res = pack(pcall(fn, ...))
        local thread = { res = res, ended = now() }
        if not opts.real_clock then
            -- it ran beside the spawner, which has not waited yet
            clock = start
        end
        return thread
    end

    function ngx.thread.wait(thread)
        if type(thread) ~= "table" or thread.res == nil then
            error("bad argument #1 to 'wait' (thread expected)", 2)
        end
        if thread.waited then
            return false, "already waited or killed"
        end
        thread.waited = true
        if not opts.real_clock then
            fake.clock_at_least(thread.ended)
        end
        local res = thread.res
        if not res[1] then
            return false, res[2]
        end
        return true, unpack(res, 2, res.n)
    end

    function ngx.thread.kill(thread)
        if thread.waited then
            return nil, "already waited or killed"
        end
        thread.waited = true
        return true
    end

    -- the worker -------------------------------------------------------

    local pid = opts.pid or tonumber(C.getpid())
    ngx.worker = {
        pid = function() return pid end,
        id = function() return opts.worker_id or 0 end,
        count = function() return opts.worker_count or 1 end,
        exiting = function() return fake.exiting end,
    }

    -- shared dicts ---------------------------------------------------

    ngx.shared = {}
    for _, name in ipairs(opts.dicts or { "tokens" }) do
        ngx.shared[name] = new_dict(name, now)
    end

    --- The state behind ngx.shared[name]: .capacity (bytes), .gets,
    -- .sets, .evicted (keys, in order), .data.
    function fake.zone(name)
        return zones[ngx.shared[name]]
    end

    -- ngx.pipe ---------------------------------------------------------

    package.loaded["ngx.pipe"] = nil
    if opts.pipe then
        local pipe_module = opts.pipe
        if opts.pipe == true then
            fake.pipe = require("support.fake_pipe").new(fake)
            pipe_module = fake.pipe.module
        end
        package.preload["ngx.pipe"] = function()
            return pipe_module
        end
    else
        -- what lua-resty-core's ngx/pipe.lua raises on a stock nginx
        package.preload["ngx.pipe"] = function()
            error("pipe API is not supported due to either a platform "
                  .. "issue or lack of the HAVE_SOCKET_CLOEXEC_PATCH "
                  .. "patch", 2)
        end
    end

    --- A fresh instance of module `name` (default "ngx_aws_token"), as a
    -- new worker would load it, against this fake.
    function fake.load(name)
        name = name or "ngx_aws_token"
        package.loaded[name] = nil
        local mod = require(name)
        package.loaded[name] = nil
        return mod
    end

    fake.ngx = ngx
    _G.ngx = ngx
    return fake
end


--- The usual start of a unit spec: a fake with the fake ngx.pipe, whose
-- commands print "tok" and exit 0 unless told otherwise, and a worker's
-- module with ngx.shared.tokens as its storage. Returns fake, pipe, m.
function M.worker_with_pipe()
    local fake = M.install{ pipe = true }
    fake.pipe.default = { stdout = "tok\n", status = 0 }
    local m = fake.load()
    m.set_storage(ngx.shared.tokens)
    return fake, fake.pipe, m
end


return M
