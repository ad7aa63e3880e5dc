-- A fake `ngx.pipe` (lua-resty-core lib/ngx/pipe.md) on fake_ngx's
-- virtual clock. Specs script what each spawned command does:
--
--   pipe.push{ stdout = "tok\n", stderr = "", status = 0 }
--   pipe.push{ hang = true, stderr = "connecting..." }
--   pipe.push{ signal = 9 }              -- dies by a signal
--   pipe.push{ duration = 3, stdout = "x" }  -- exits after 3 s
--   pipe.push{ spawn_error = "fork failed" }
--   pipe.push{ during = fn }  -- fn runs while a reader first waits
--
-- or set pipe.respond = function(argv, n) return entry end. With neither,
-- pipe.default answers. A command writes its output at once and closes
-- its pipes when it exits (or is killed); a hung one never does.
--
-- As documented: timeouts are in milliseconds, 10000 by default, 0 for
-- none; reads and waits need a phase that can yield; wait() gives
-- `true, "exit", 0`, `false, "exit", status`, `false, "signal", signum`,
-- `nil, "timeout"`, or `nil, "exited"` once waited for; kill() of an
-- exited process gives `nil, "exited"`; a read that times out gives
-- `nil, "timeout", partial`; reading a stream again gives `nil, "closed"`.

local M = {}

local YIELDABLE = {
    timer = true, rewrite = true, access = true, content = true,
    ssl_cert = true, ssl_session_fetch = true,
}

local DEFAULT_TIMEOUT = 10000
local MAX_TIMEOUT = 0xffffffff


--- A new fake pipe module driven by `fake` (from fake_ngx.install).
function M.new(fake)
    local pipe = {
        spawned = {},   -- one record per spawn: .argv, .opts, .proc
        queue = {},
        default = { stdout = "", status = 0 },
    }
    local next_pid = 30000

    --- Queues what the next spawned command does.
    function pipe.push(entry)
        pipe.queue[#pipe.queue + 1] = entry
    end

    local Proc = {}
    Proc.__index = Proc

    local function check_yield()
        local phase = ngx.get_phase()
        if not YIELDABLE[phase] then
            error("API disabled in the context of " .. phase, 3)
        end
    end

    -- time when the process's pipes close: exit, kill, or never
    local function ends(proc)
        if proc.killed_at then
            return proc.killed_at
        end
        local e = proc.entry
        if e.hang then
            return math.huge
        end
        return proc.started + (e.duration or 0)
    end

    -- the first wait of any reader or waiter lets `during` run
    local function must_wait(proc)
        if ends(proc) > fake.now() and proc.entry.during
            and not proc.during_ran
        then
            proc.during_ran = true
            proc.entry.during(proc)
        end
        return ends(proc)
    end

    local function deadline(ms)
        if ms == 0 then
            return math.huge
        end
        return fake.now() + ms / 1000
    end

    function Proc:pid()
        return self._pid
    end

    function Proc:set_timeouts(write, out, err, wait)
        local new = { write, out, err, wait }
        for i = 1, 4 do
            local ms = new[i]
            if ms ~= nil then
                if type(ms) ~= "number" or ms < 0 or ms > MAX_TIMEOUT then
                    error("bad timeout value", 2)
                end
                self.timeouts[i] = ms
            end
        end
        self.timeout_calls[#self.timeout_calls + 1] = new
    end

    local function read_all(proc, stream, slot)
        check_yield()
        if proc.read[stream] then
            return nil, "closed"
        end
        local data = proc.entry[stream] or ""
        if proc.opts.merge_stderr then
            if stream == "stderr" then
                return nil, "merged to stdout"
            end
            data = data .. (proc.entry.stderr or "")
        end
        local close = must_wait(proc)
        local limit = deadline(proc.timeouts[slot])
        if close <= limit then
            fake.clock_at_least(close)
            proc.read[stream] = true
            return data
        end
        if limit == math.huge then
            error("fake ngx.pipe: this read would wait forever", 3)
        end
        fake.clock_at_least(limit)
        return nil, "timeout", data
    end

    function Proc:stdout_read_all()
        return read_all(self, "stdout", 2)
    end

    function Proc:stderr_read_all()
        return read_all(self, "stderr", 3)
    end

    local function not_faked()
        error("fake ngx.pipe: not faked", 2)
    end
    Proc.stdout_read_line = not_faked
    Proc.stderr_read_line = not_faked
    Proc.stdout_read_bytes = not_faked
    Proc.stderr_read_bytes = not_faked
    Proc.stdout_read_any = not_faked
    Proc.stderr_read_any = not_faked

    function Proc:write(data)
        check_yield()
        if ends(self) <= fake.now() then
            return nil, "closed"
        end
        return #tostring(data)
    end

    function Proc.shutdown(_, direction)
        if direction ~= "stdin" and direction ~= "stdout"
            and direction ~= "stderr"
        then
            error("bad shutdown arg: " .. tostring(direction), 2)
        end
        return true
    end

    function Proc:wait()
        check_yield()
        if self.waited then
            return nil, "exited"
        end
        local close = must_wait(self)
        local limit = deadline(self.timeouts[4])
        if close > limit then
            if limit == math.huge then
                error("fake ngx.pipe: this wait would last forever", 2)
            end
            fake.clock_at_least(limit)
            return nil, "timeout"
        end
        fake.clock_at_least(close)
        self.waited = true
        local signal = self.killed_by or self.entry.signal
        if signal then
            return false, "signal", signal
        end
        local status = self.entry.status or 0
        return status == 0, "exit", status
    end

    function Proc:kill(signum)
        if type(signum) ~= "number" then
            error("bad signal arg: number expected, got "
                  .. tostring(signum), 2)
        end
        self.kills[#self.kills + 1] = signum
        if self.waited or ends(self) <= fake.now() then
            return nil, "exited"
        end
        if signum < 0 or signum > 64 then
            return nil, "invalid signal"
        end
        -- 0 only checks; the fake command heeds every other signal
        if signum ~= 0 then
            self.killed_at = fake.now()
            self.killed_by = signum
        end
        return true
    end

    --- Whether the process has not exited by now.
    function Proc:alive()
        return ends(self) > fake.now()
    end

    local function spawn(args, opts)
        if ngx.get_phase() == "init" then
            error("API disabled in the current context", 2)
        end
        if type(args) == "string" then
            args = { "/bin/sh", "-c", args }
        elseif type(args) ~= "table" or #args == 0 then
            error("bad args arg: table or string expected", 2)
        end
        local argv = {}
        for i, a in ipairs(args) do
            if type(a) ~= "string" then
                error("bad args arg: string expected at index " .. i, 2)
            end
            argv[i] = a
        end
        opts = opts or {}

        local n = #pipe.spawned + 1
        local entry
        if pipe.respond then
            entry = pipe.respond(argv, n)
        end
        entry = entry or table.remove(pipe.queue, 1) or pipe.default

        local record = {
            argv = argv, opts = opts, phase = ngx.get_phase(),
            at = fake.now(),
        }
        pipe.spawned[n] = record
        if entry.spawn_error then
            return nil, entry.spawn_error
        end

        next_pid = next_pid + 1
        local proc = setmetatable({
            _pid = next_pid, entry = entry, opts = opts, argv = argv,
            started = fake.now(), read = {}, kills = {},
            timeout_calls = {},
            timeouts = {
                opts.write_timeout or DEFAULT_TIMEOUT,
                opts.stdout_read_timeout or DEFAULT_TIMEOUT,
                opts.stderr_read_timeout or DEFAULT_TIMEOUT,
                opts.wait_timeout or DEFAULT_TIMEOUT,
            },
        }, Proc)
        record.proc = proc
        return proc
    end

    --- The script (last argv item) of spawn number `n`.
    function pipe.script(n)
        local rec = pipe.spawned[n]
        return rec and rec.argv[#rec.argv]
    end

    pipe.module = { version = "fake", spawn = spawn }
    return pipe
end


return M
