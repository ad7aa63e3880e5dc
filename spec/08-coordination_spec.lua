-- Several workers of one nginx: the lock that lets one of them run a
-- token's command, reloads, worker exit, refresh() and status(), an
-- evicted token. Virtual clock, fake ngx.pipe; every time and count below
-- is worked out by hand from the README's rules (a worker looks every
-- 0.5 s; the lock lives `timeout` + 15 s; `cooldown`; the schedule).
--
-- How several workers are simulated. Each worker is a module instance of
-- its own (fake.load()) over one fake ngx: one clock, one timer queue, one
-- ngx.shared. The module keeps ngx.timer.at and ngx.timer.every in locals
-- when it loads, so worker() swaps them for wrappers during the load:
-- every timer that instance creates (its tick, its ngx.pipe runs, and the
-- timers those create) then runs as that worker, that is
--   * ngx.worker.pid() answers the worker's own pid (the module reads it
--     at run time for a run's lock id and its random seed), and
--   * the callback runs in a coroutine of its own, so that a command can
--     take virtual time: a scripted command's `during` hook (fake_pipe.lua
--     calls it when the module first waits on the command) yields, the
--     worker's timer stops there while every other timer goes on firing,
--     and it is resumed when the command ends: at its end on the clock
--     (slow()), when the spec says (parked() and finish()), or never, as
--     the worker dies there (dying()): a dead worker's timers never run
--     again, like a process killed with SIGKILL.
-- Calls a spec makes "in" a worker (rotate, refresh, status) go through
-- w.m, which also sets the pid. A reload or `nginx -s quit` is
-- fake.shutdown(), which exits every worker; the workers started after it
-- are new instances with pids of their own.

local fake_ngx = require "support.fake_ngx"
local util = require "support.util"

local EPOCH = fake_ngx.EPOCH

-- what a command's hook yields to its worker's timer
local WAKE, PARK, DIE = {}, {}, {}


local function pack(...)
    return { n = select("#", ...), ... }
end


local raises_here = util.raises_here


-- Everything in `v`, tables walked recursively, as one string.
local function dump(v)
    local out = {}
    local function walk(x)
        if type(x) ~= "table" then
            out[#out + 1] = tostring(x)
            return
        end
        local keys = {}
        for k in pairs(x) do
            keys[#keys + 1] = k
        end
        table.sort(keys, function(a, b)
            return tostring(a) < tostring(b)
        end)
        for _, k in ipairs(keys) do
            out[#out + 1] = tostring(k) .. "="
            walk(x[k])
        end
    end
    walk(v)
    return table.concat(out, "\n")
end


-- The keys of table `t`, sorted.
local function keys_of(t)
    local out = {}
    for k in pairs(t) do
        out[#out + 1] = k
    end
    table.sort(out)
    return out
end


-- A command that runs `secs` of virtual time, then ends as `entry` says.
local function slow(secs, entry)
    entry = entry or { stdout = "tok\n" }
    entry.duration = secs
    entry.during = function(proc)
        coroutine.yield(WAKE, proc)
    end
    return entry
end


-- A command that runs until the spec calls finish() on it, or it is
-- killed; then ends as `entry` says.
local function parked(entry)
    entry = entry or { stdout = "tok\n" }
    entry.hang = true
    entry.during = function(proc)
        coroutine.yield(PARK, proc)
    end
    return entry
end


-- A command during which the worker running it dies.
local function dying()
    return {
        hang = true,
        during = function()
            coroutine.yield(DIE)
        end,
    }
end


describe("several workers of one nginx", function()
    local fake, pipe
    local current   -- the worker whose code runs now
    local waiting   -- proc -> { w, co }: timers stopped on their command
    local ran_by    -- spawn number -> pid of the worker that spawned it
    -- what a command does: plan[spawn number] (an entry), or
    -- plan[end of the command line] (a function that makes one); else
    -- pipe.default
    local plan

    -- Runs coroutine `co` of worker `w` on until it ends, waits for its
    -- command or dies.
    local function resume(w, co, ...)
        local outer = current
        current = w
        local ok, what, proc = coroutine.resume(co, ...)
        current = outer
        if not ok then
            error(debug.traceback(co, tostring(what)), 0)
        end
        if coroutine.status(co) == "dead" then
            return
        end
        if what == DIE then
            w.dead = true
            return
        end
        waiting[proc] = { w = w, co = co }
        if what == WAKE then
            local ends = proc.started + proc.entry.duration
            fake.ngx.timer.at(ends - fake.now(), function()
                if waiting[proc] and not w.dead then
                    waiting[proc] = nil
                    resume(w, co)
                end
            end)
        end
    end

    -- Lets the timer that waits on `proc` go on (in the timer phase).
    local function wake(proc)
        local t = assert(waiting[proc], "nothing waits on this command")
        waiting[proc] = nil
        fake.in_phase("timer", resume, t.w, t.co)
    end

    -- Ends parked command `proc` now, as scripted, and wakes its timer.
    local function finish(proc)
        proc.entry.hang = nil
        proc.entry.duration = fake.now() - proc.started
        wake(proc)
    end

    -- A new worker with pid `pid`: w.m is its module, w.mod the same
    -- without the pid switch (for error positions).
    local function worker(pid)
        local w = { pid = pid, dead = false }
        local function wrap(cb)
            return function(...)
                if not w.dead then
                    resume(w, coroutine.create(cb), ...)
                end
            end
        end
        local timer = fake.ngx.timer
        local at, every = timer.at, timer.every
        timer.at = function(delay, cb, ...)
            return at(delay, wrap(cb), ...)
        end
        timer.every = function(delay, cb, ...)
            return every(delay, wrap(cb), ...)
        end
        local mod = fake.load()
        timer.at, timer.every = at, every

        w.mod = mod
        w.m = setmetatable({}, { __index = function(_, key)
            local f = mod[key]
            if type(f) ~= "function" then
                return f
            end
            return function(...)
                local outer = current
                current = w
                local res = pack(pcall(f, ...))
                current = outer
                if not res[1] then
                    error(res[2], 0)
                end
                return unpack(res, 2, res.n)
            end
        end })
        return w
    end

    -- `n` workers, pids first_pid, first_pid + 1, ..., each with the
    -- dict set as init_worker_by_lua would.
    local function workers(n, first_pid)
        local list = {}
        for i = 1, n do
            list[i] = worker((first_pid or 101) + i - 1)
            list[i].m.set_storage(ngx.shared.tokens)
        end
        return list
    end

    -- every worker of `list` calls rotate(...)
    local function rotate_all(list, ...)
        for _, w in ipairs(list) do
            assert.is_true((w.m.rotate(...)))
        end
    end

    -- seconds from the start at which spawn `i` ran
    local function spawned_at(i)
        return pipe.spawned[i].at - EPOCH
    end

    -- seconds from the start, now
    local function now()
        return fake.now() - EPOCH
    end

    -- advances the clock to `t` seconds from the start
    local function advance_to(t)
        assert(t >= now(), "time runs forward")
        fake.advance(t - now())
    end

    -- how many spawned scripts end with `cmd`
    local function runs(cmd)
        local n = 0
        for i = 1, #pipe.spawned do
            local script = pipe.script(i)
            if script:sub(-#cmd) == cmd then
                n = n + 1
            end
        end
        return n
    end

    before_each(function()
        fake = fake_ngx.install{ pipe = true, pid = 100 }
        pipe = fake.pipe
        current, waiting, ran_by, plan = nil, {}, {}, {}
        fake.ngx.worker.pid = function()
            return assert(current, "ngx.worker.pid() outside a worker").pid
        end
        pipe.respond = function(argv, n)
            -- the pid the module sees as it spawns the command
            ran_by[n] = ngx.worker.pid()
            if plan[n] then
                return plan[n]
            end
            for cmd, make in pairs(plan) do
                if type(cmd) == "string" and argv[3]:sub(-#cmd) == cmd then
                    return make()
                end
            end
        end
        pipe.default = { stdout = "tok\n", status = 0 }
    end)


    describe("found in review", function()
        it("a reload with a changed command fetches it at once, even when "
            .. "an old worker's run of the old command ends meanwhile",
            function()
                -- README: "A changed command ... is fetched at once."
                plan[2] = slow(2, { stdout = "old-tok\n" })
                local old = workers(1)
                rotate_all(old, "ecr", "cmd-old", { interval = 3600 })
                fake.advance(0)
                advance_to(3600)   -- the old worker's 2nd run: 3600-3602
                advance_to(3601)   -- a new worker starts (the reload)
                local new = workers(1, 201)
                rotate_all(new, "ecr", "cmd-new", { interval = 3600 })
                advance_to(3602.5) -- the old run has ended; the old
                old[1].dead = true -- worker exits
                -- the lock is free from 3602: the new command runs by
                -- 3602.5 at the latest
                assert.equal(1, runs("cmd-new"))
                assert.equal("tok", new[1].m.token("ecr"))
            end)

        it("refresh() of a name that only manage() fetched answers nil, "
            .. "\"unknown token\"", function()
                -- README: "unknown token" (no worker has called rotate
                -- for that name)
                local list = workers(2)
                for _, w in ipairs(list) do
                    w.m.manage("ecr", "aws x")
                end
                fake.advance(1)
                assert.same({ nil, "unknown token" },
                            { list[1].m.refresh("ecr") })
            end)

        it("refresh() of a manage()d name leaves a reload fetching nothing",
            function()
                -- README: manage() fetches once; after a reload nothing
                -- is fetched while the token is fresh (it has no expiry)
                local list = workers(2)
                for _, w in ipairs(list) do
                    w.m.manage("ecr", "aws x")
                end
                fake.advance(1)
                list[1].m.refresh("ecr")
                fake.advance(100)
                fake.shutdown()
                fake.exiting = false
                for _, w in ipairs(workers(2, 201)) do
                    w.m.manage("ecr", "aws x")
                end
                fake.advance(100)
                assert.equal(1, #pipe.spawned)
            end)

        it("rotate() raises for a timeout over a day", function()
            -- ngx.pipe's set_timeouts() raises above 4294967 s, and the
            -- token would then never be fetched again
            local list = workers(1)
            assert.has_error(function()
                list[1].m.rotate("ecr", "aws x", { timeout = 5e6 })
            end)
            assert.has_no.errors(function()
                list[1].m.rotate("ecr", "aws x", { timeout = 86400 })
            end)
        end)
    end)

    it("gives each worker's timers the worker's own pid", function()
        local list = workers(3)
        for i, w in ipairs(list) do
            w.m.rotate("t" .. i, "cmd-" .. i, { interval = 60 })
        end
        fake.advance(0)
        assert.equal(3, #pipe.spawned)
        local seen = {}
        for n = 1, 3 do
            seen[pipe.script(n):sub(-5)] = ran_by[n]
        end
        assert.same({ ["cmd-1"] = 101, ["cmd-2"] = 102, ["cmd-3"] = 103 },
                    seen)
    end)


    describe("the lock", function()
        for _, n in ipairs({ 2, 4 }) do
            it(("makes rotate() on %d workers run the command once per "
                .. "refresh, over 5 refreshes"):format(n), function()
                    local list = workers(n)
                    rotate_all(list, "ecr", "aws x", { interval = 60 })
                    fake.advance(0)
                    assert.equal(1, #pipe.spawned)
                    for k = 1, 5 do
                        advance_to(60 * k - 0.5)
                        assert.equal(k, #pipe.spawned)
                        advance_to(60 * k)
                        assert.equal(k + 1, #pipe.spawned)
                    end
                    for i = 1, 6 do
                        assert.equal(60 * (i - 1), spawned_at(i))
                        assert.is_true(ran_by[i] >= 101
                                       and ran_by[i] < 101 + n)
                    end
                    assert.equal("tok", list[n].m.token("ecr"))
                    assert.same({}, fake.logged(ngx.WARN))
                end)
        end

        it("lets no other of 4 workers start a run while a 5 s run is "
            .. "in progress", function()
                plan[1] = slow(5)
                local list = workers(4)
                rotate_all(list, "ecr", "aws x", { interval = 60 })
                fake.advance(0)
                assert.equal(1, #pipe.spawned)
                -- 3 other workers look 10 times each while it runs
                for _ = 1, 9 do
                    fake.advance(0.5)
                    assert.equal(1, #pipe.spawned)
                    assert.is_true(list[2].m.status("ecr").running)
                    assert.same({ nil, "not ready" },
                                { list[3].m.token("ecr") })
                end
                fake.advance(0.5)  -- t = 5: it ends
                assert.equal(1, #pipe.spawned)
                assert.equal("tok", list[4].m.token("ecr"))
                local st = list[3].m.status("ecr")
                assert.is_false(st.running)
                assert.equal(EPOCH + 5, st.fetched_at)

                -- the next run: `interval` after this one, counted from
                -- its start at the soonest, from its end at the latest
                advance_to(59.5)
                assert.equal(1, #pipe.spawned)
                advance_to(65.5)
                assert.equal(2, #pipe.spawned)
            end)

        local cases = {
            { opts = { interval = 3600 }, ttl = 75,
              title = "the default timeout, 60 s" },
            { opts = { interval = 3600, timeout = 20 }, ttl = 35,
              title = "timeout = 20" },
        }
        for _, case in ipairs(cases) do
            it(("of a worker killed mid-run expires %d s later with %s; "
                .. "then another worker runs the command within 0.5 s")
                :format(case.ttl, case.title), function()
                    plan[1] = dying()
                    local list = workers(4)
                    rotate_all(list, "ecr", "aws x", case.opts)
                    fake.advance(0)
                    assert.equal(1, #pipe.spawned)
                    assert.equal(101, ran_by[1])
                    assert.is_true(list[1].dead)

                    advance_to(case.ttl - 0.5)
                    assert.equal(1, #pipe.spawned)
                    assert.is_true(list[2].m.status("ecr").running)
                    assert.same({ nil, "not ready" },
                                { list[2].m.token("ecr") })

                    advance_to(case.ttl + 0.5)
                    assert.equal(2, #pipe.spawned)
                    local at = spawned_at(2)
                    assert(at >= case.ttl and at <= case.ttl + 0.5,
                           "taken over at " .. at)
                    assert.is_true(ran_by[2] >= 102 and ran_by[2] <= 104)
                    assert.equal("tok", list[2].m.token("ecr"))
                    assert.is_false(list[3].m.status("ecr").running)

                    -- and once only: the next is `interval` away
                    advance_to(case.ttl + 600)
                    assert.equal(2, #pipe.spawned)
                end)
        end

        it("lets no run that ended between another worker's look and its "
            .. "lock run twice", function()
                plan[1] = parked({ stdout = "tok-1\n" })
                local a, b = unpack(workers(2))
                rotate_all({ a, b }, "ecr", "aws x", { interval = 60 })
                fake.advance(0)
                assert.equal(1, #pipe.spawned)
                assert.equal(101, ran_by[1])
                local proc = pipe.spawned[1].proc

                fake.advance(2)
                assert.equal(1, #pipe.spawned)

                -- b's next look finds the token due (a's run is going
                -- on); a's run ends after that look, just before b
                -- takes the lock
                local dict = ngx.shared.tokens
                local add = getmetatable(dict).__index.add
                local raced = 0
                dict.add = function(self, ...)
                    if current == b and waiting[proc] then
                        raced = raced + 1
                        finish(proc)
                    end
                    return add(self, ...)
                end

                fake.advance(0.5)  -- t = 2.5
                assert.equal(1, raced)
                assert.equal(1, #pipe.spawned)
                assert.equal("tok-1", b.m.token("ecr"))
                assert.equal(EPOCH + 2.5, b.m.status("ecr").fetched_at)
                assert.is_false(b.m.status("ecr").running)

                -- no second run until `interval` after the first
                advance_to(59.5)
                assert.equal(1, #pipe.spawned)
                advance_to(63)
                assert.equal(2, #pipe.spawned)
            end)
    end)


    describe("a reload", function()
        local old

        -- the old workers exit; the new ones are other processes
        local function reload(first_pid)
            fake.shutdown()
            fake.exiting = false
            return workers(2, first_pid)
        end

        before_each(function()
            old = workers(2)
        end)

        it("leaves a new worker that calls rotate() with the same command "
            .. "fetching nothing until the due time the dict holds",
            function()
                rotate_all(old, "ecr", "aws x", { interval = 600 })
                fake.advance(0)
                assert.equal(1, #pipe.spawned)
                fake.advance(100)

                local new = reload(201)
                rotate_all(new, "ecr", "aws x", { interval = 600 })
                fake.advance(0)
                assert.equal(1, #pipe.spawned)
                advance_to(599.5)
                assert.equal(1, #pipe.spawned)
                assert.equal("tok", new[1].m.token("ecr"))
                advance_to(600)
                assert.equal(2, #pipe.spawned)
                assert.is_true(ran_by[2] == 201 or ran_by[2] == 202)
            end)

        it("makes a new worker run a changed command at once", function()
            rotate_all(old, "ecr", "aws x", { interval = 600 })
            fake.advance(0)
            fake.advance(100)

            local new = reload(201)
            rotate_all(new, "ecr", "aws y", { interval = 600 })
            fake.advance(0)
            assert.equal(2, #pipe.spawned)
            assert.equal(100, spawned_at(2))
            assert.same({ 1, 1 }, { runs("aws x"), runs("aws y") })
            -- then every `interval`, from the new run
            advance_to(699.5)
            assert.equal(2, #pipe.spawned)
            advance_to(700)
            assert.equal(3, #pipe.spawned)
        end)

        it("makes manage() after rotate() of the same command another "
            .. "job, run at once", function()
                rotate_all(old, "ecr", "aws x", { interval = 600 })
                fake.advance(0)
                fake.advance(100)

                local new = reload(201)
                for _, w in ipairs(new) do
                    w.m.manage("ecr", "aws x")
                end
                fake.advance(0)
                assert.equal(2, #pipe.spawned)
                assert.equal(100, spawned_at(2))
                -- manage() fetches once only
                fake.advance(3600)
                assert.equal(2, #pipe.spawned)
            end)

        it("makes rotate() after manage() of the same command run at once, "
            .. "and manage() after manage() run nothing", function()
                for _, w in ipairs(old) do
                    w.m.manage("ecr", "aws x")
                end
                fake.advance(0)
                assert.equal(1, #pipe.spawned)
                fake.advance(100)

                -- manage() again: fetched once, for good
                local again = reload(201)
                for _, w in ipairs(again) do
                    w.m.manage("ecr", "aws x")
                end
                fake.advance(3600)
                assert.equal(1, #pipe.spawned)

                local new = reload(301)
                rotate_all(new, "ecr", "aws x", { interval = 600 })
                fake.advance(0)
                assert.equal(2, #pipe.spawned)
                assert.equal(3700, spawned_at(2))
                advance_to(3700 + 600)
                assert.equal(3, #pipe.spawned)
            end)
    end)


    describe("worker exit", function()
        it("with a run in progress releases the lock, logs nothing at "
            .. "WARN or ERR, and a new worker runs the command at once",
            function()
                plan[1] = parked()
                local list = workers(2)
                rotate_all(list, "ecr", "aws x", { interval = 3600 })
                fake.advance(0)
                assert.equal(1, #pipe.spawned)
                local proc = pipe.spawned[1].proc
                fake.advance(3)
                assert.is_true(list[2].m.status("ecr").running)

                fake.shutdown()
                assert.same({ 9 }, proc.kills)
                assert.is_false(list[2].m.status("ecr").running)
                -- the killed command's end reaches its timer, too late
                wake(proc)
                assert.same({}, fake.logged(ngx.WARN))
                assert.same({}, fake.logged(ngx.ERR))
                local st = list[2].m.status("ecr")
                assert.is_false(st.running)
                assert.equal(0, st.failures)
                assert.is_nil(st.last_error)
                assert.same({ nil, "not ready" }, { list[2].m.token("ecr") })

                -- without the release the lock would hold 75 s
                fake.exiting = false
                local new = workers(1, 201)
                rotate_all(new, "ecr", "aws x", { interval = 3600 })
                fake.advance(0)
                assert.equal(2, #pipe.spawned)
                assert.equal(3, spawned_at(2))
                assert.equal(201, ran_by[2])
                assert.equal("tok", new[1].m.token("ecr"))
            end)
    end)


    describe("refresh()", function()
        it("makes one run of a burst of 100 calls from 4 workers",
            function()
                local list = workers(4)
                rotate_all(list, "ecr", "aws x", { interval = 3600 })
                fake.advance(0)
                fake.advance(100)
                assert.equal(1, #pipe.spawned)

                -- 100 calls 1/256 s apart, from 100.0625 to 100.4492,
                -- between two looks (binary fractions: no rounding)
                fake.advance(0.0625)
                for i = 1, 100 do
                    local ok, err = list[(i - 1) % 4 + 1].m.refresh("ecr")
                    assert.same({ true, nil }, { ok, err })
                    if i < 100 then
                        fake.advance(1 / 256)
                    end
                end
                assert.equal(100 + 0.0625 + 99 / 256, now())
                assert.equal(1, #pipe.spawned)
                advance_to(100.5)  -- the next look
                assert.equal(2, #pipe.spawned)
                assert.equal(100.5, spawned_at(2))
                fake.advance(600)
                assert.equal(2, #pipe.spawned)
            end)

        it("starts the run 10 s after the last run began by default, not "
            .. "sooner", function()
                plan[1] = slow(4)
                local list = workers(2)
                rotate_all(list, "ecr", "aws x", { interval = 3600 })
                fake.advance(0)
                fake.advance(5)  -- the run began at 0 and ended at 4
                assert.is_true((list[2].m.refresh("ecr")))
                advance_to(9.5)
                assert.equal(1, #pipe.spawned)
                advance_to(10)
                assert.equal(2, #pipe.spawned)
                assert.equal(10, spawned_at(2))
            end)

        it("starts the run 3 s after the last run began with cooldown = 3",
            function()
                plan[1] = slow(2)
                local list = workers(2)
                rotate_all(list, "ecr", "aws x",
                           { interval = 3600, cooldown = 3 })
                fake.advance(0)
                fake.advance(2.25)
                assert.is_true((list[1].m.refresh("ecr")))
                advance_to(2.5)
                assert.equal(1, #pipe.spawned)
                advance_to(3)
                assert.equal(2, #pipe.spawned)
                assert.equal(3, spawned_at(2))
            end)

        it("starts the run at the next look when the last run began "
            .. "longer ago than the cooldown", function()
                local list = workers(2)
                rotate_all(list, "ecr", "aws x", { interval = 3600 })
                fake.advance(0)
                fake.advance(20.25)
                assert.is_true((list[2].m.refresh("ecr")))
                fake.advance(0.25)
                assert.equal(2, #pipe.spawned)
                assert.equal(20.5, spawned_at(2))
            end)

        it("never puts off a fetch due sooner than its cooldown allows",
            function()
                local list = workers(2)
                rotate_all(list, "ecr", "aws x", { interval = 5 })
                fake.advance(0)
                fake.advance(1.25)
                -- the cooldown would allow a run at 10; one is due at 5
                assert.is_true((list[2].m.refresh("ecr")))
                assert.equal(EPOCH + 5, list[1].m.status("ecr")
                             .next_refresh)
                advance_to(4.5)
                assert.equal(1, #pipe.spawned)
                advance_to(5)
                assert.equal(2, #pipe.spawned)
                assert.equal(5, spawned_at(2))
            end)

        it("during a failure backoff leaves the next try to the backoff",
            function()
                -- README: while fetches fail, the backoff decides; a
                -- stream of 401s must not make a CLI run every cooldown
                plan[1] = { status = 1 }
                local list = workers(2)
                rotate_all(list, "ecr", "aws x",
                           { interval = 3600, retry = 100 })
                fake.advance(0)
                assert.equal(1, list[1].m.status("ecr").failures)
                assert.equal(EPOCH + 100, list[1].m.status("ecr")
                             .next_refresh)

                fake.advance(4.25)
                assert.is_true((list[2].m.refresh("ecr")))
                assert.equal(EPOCH + 100, list[1].m.status("ecr")
                             .next_refresh)
                advance_to(99.5)
                assert.equal(1, #pipe.spawned)
                advance_to(100)
                assert.equal(2, #pipe.spawned)
                assert.equal("tok", list[1].m.token("ecr"))
                assert.equal(0, list[1].m.status("ecr").failures)
            end)

        it("returns nil, \"unknown token\" for a name no worker rotates",
            function()
                local list = workers(2)
                rotate_all(list, "ecr", "aws x")
                fake.advance(0)
                assert.same({ nil, "unknown token" },
                            { list[2].m.refresh("other") })
                assert.same({ nil, "unknown token" },
                            { list[1].m.refresh("ECR") })
            end)

        it("returns nil, \"no storage\" when no worker set the storage",
            function()
                local w = worker(101)
                assert.same({ nil, "no storage" }, { w.m.refresh("ecr") })
            end)

        it("raises at the caller's line for a name that is not a string",
            function()
                local w = workers(1)[1]
                w.m.rotate("ecr", "aws x")
                local m = w.mod
                local msg = raises_here(function() m.refresh(42) end)
                assert.truthy(msg:find("refresh()", 1, true), msg)
                raises_here(function() m.refresh() end)
                raises_here(function() m.refresh({ "ecr" }) end)
            end)
    end)


    describe("status()", function()
        local list
        local SECRET_A, SECRET_B = "SECRET-A-7f1c", "SECRET-B-39d2"

        before_each(function()
            list = workers(2)
        end)

        -- rotates "a" and "b" on both workers; each command runs 2 s
        -- and gives a token that expires at EPOCH + 1000
        local function two_tokens()
            plan["cmd-a"] = function()
                return slow(2, { stdout = SECRET_A .. "\n" })
            end
            plan["cmd-b"] = function()
                return slow(2, { stdout = SECRET_B .. "\n" })
            end
            local function until_1000(output)
                return output, EPOCH + 1000
            end
            rotate_all(list, "a", "cmd-a", until_1000)
            rotate_all(list, "b", "cmd-b", {
                interval = 100,
                transform = function(output)
                    return "Basic " .. output, EPOCH + 1000
                end,
            })
        end

        it("tells running = true while a run is in progress", function()
            two_tokens()
            fake.advance(1)
            local st = list[2].m.status("a")
            assert.is_true(st.running)
            assert.is_nil(st.fetched_at)
            assert.equal(0, st.failures)
            assert.equal("ngx.pipe", st.runner)
        end)

        it("after a success tells fetched_at, expires_at, next_refresh, "
            .. "failures 0, the runner and running false", function()
                two_tokens()
                fake.advance(3)
                assert.equal(2, #pipe.spawned)

                local a = list[2].m.status("a")
                assert.equal(EPOCH + 2, a.fetched_at)
                assert.equal(EPOCH + 1000, a.expires_at)
                -- 998 s left at 2: refresh with a quarter left (at 2 +
                -- 748.5), up to 5% of 998 s (49.9 s) earlier
                local next_a = a.next_refresh - EPOCH
                assert(next_a >= 2 + 748.5 - 49.9 and next_a <= 2 + 748.5,
                       "next refresh at " .. next_a)
                assert.equal(0, a.failures)
                assert.equal("ngx.pipe", a.runner)
                assert.is_false(a.running)
                assert.is_nil(a.last_error)
                assert.is_nil(a.last_error_at)

                -- `interval` caps the wait: 100 s after 2
                local b = list[1].m.status("b")
                assert.equal(EPOCH + 2, b.fetched_at)
                assert.equal(EPOCH + 1000, b.expires_at)
                assert.equal(EPOCH + 102, b.next_refresh)
                assert.equal(0, b.failures)
                assert.equal("ngx.pipe", b.runner)
                assert.is_false(b.running)
            end)

        it("after 3 failures tells failures = 3, last_error and "
            .. "last_error_at", function()
                pipe.default = { status = 7, stdout = SECRET_A .. "\n" }
                rotate_all(list, "c", "cmd-c",
                           { retry = 10, retry_max = 600 })
                fake.advance(0)
                -- tries at 0, 10, then 20 s up to a quarter less later
                advance_to(30.5)
                assert.equal(3, #pipe.spawned)
                assert.equal(10, spawned_at(2))
                local third = spawned_at(3)
                assert(third >= 25 and third <= 30.5, "third at " .. third)

                local c = list[1].m.status("c")
                assert.equal(3, c.failures)
                assert.equal("exit status 7", c.last_error)
                assert.equal(EPOCH + third, c.last_error_at)
                assert.is_nil(c.fetched_at)
                assert.is_false(c.running)
                -- then 40 s up to a quarter less
                local next_c = c.next_refresh - EPOCH
                assert(next_c >= third + 30 and next_c <= third + 40,
                       "next try at " .. next_c)
            end)

        it("without a name returns every rotated token by name", function()
            two_tokens()
            fake.advance(3)
            local all = list[1].m.status()
            assert.same({ "a", "b" }, keys_of(all))
            assert.equal(EPOCH + 102, all.b.next_refresh)
            assert.equal(EPOCH + 2, all.a.fetched_at)
        end)

        it("returns nil, \"unknown token\" for a name no worker rotates",
            function()
                two_tokens()
                fake.advance(3)
                assert.same({ nil, "unknown token" },
                            { list[1].m.status("nonesuch") })
            end)

        it("never holds the token value in any field", function()
            two_tokens()
            local SECRET_C = "SECRET-C-a90e"
            plan["cmd-c"] = function()
                return { stdout = SECRET_C .. "\n" }
            end
            rotate_all(list, "c", "cmd-c", function(output)
                error("no expiry in " .. output)
            end)
            fake.advance(3)
            assert.equal(3, #pipe.spawned)
            assert.equal("Basic " .. SECRET_B, list[1].m.token("b"))

            local text = dump({ list[1].m.status(), list[2].m.status("a"),
                                list[2].m.status("b"),
                                list[1].m.status("c") })
            for _, secret in ipairs({ SECRET_A, SECRET_B, SECRET_C }) do
                assert.is_nil(text:find(secret, 1, true), text)
            end
            local c = list[1].m.status("c")
            assert.truthy(c.last_error:find("transform failed", 1, true))
            assert.truthy(c.last_error:find("<redacted>", 1, true))
        end)
    end)


    describe("an evicted token", function()
        it("is fetched again within 0.5 s, not at the far due time",
            function()
                local list = workers(2)
                rotate_all(list, "ecr", "aws x", { interval = 3600 })
                fake.advance(0)
                fake.advance(100.25)
                ngx.shared.tokens:delete("ecr")
                assert.same({ nil, "expired" }, { list[1].m.token("ecr") })

                fake.advance(0.5)
                assert.equal(2, #pipe.spawned)
                local at = spawned_at(2)
                assert(at >= 100.25 and at <= 100.75, "fetched at " .. at)
                assert.equal("tok", list[2].m.token("ecr"))
                -- and `interval` after that
                advance_to(at + 3599.5)
                assert.equal(2, #pipe.spawned)
                advance_to(at + 3600)
                assert.equal(3, #pipe.spawned)
            end)

        it("with a failure pending waits for its retry", function()
            plan[2] = { status = 1 }
            local list = workers(2)
            rotate_all(list, "ecr", "aws x",
                       { interval = 3600, retry = 100 })
            fake.advance(0)
            advance_to(3600)
            assert.equal(2, #pipe.spawned)
            assert.equal(1, list[1].m.status("ecr").failures)

            advance_to(3610.25)
            ngx.shared.tokens:delete("ecr")
            advance_to(3699.5)
            assert.equal(2, #pipe.spawned)
            advance_to(3700)
            assert.equal(3, #pipe.spawned)
            assert.equal("tok", list[2].m.token("ecr"))
        end)
    end)
end)
