-- When commands run: timers on a virtual clock, commands on a fake
-- ngx.pipe. Times below are counted by hand from the options given.

local fake_ngx = require "support.fake_ngx"


describe("the schedule", function()
    local fake, pipe, m

    -- how many spawned scripts end with `cmd`
    local function runs(cmd)
        local n = 0
        for _, rec in ipairs(pipe.spawned) do
            local script = rec.argv[#rec.argv]
            if script:sub(-#cmd) == cmd then
                n = n + 1
            end
        end
        return n
    end

    before_each(function()
        fake, pipe, m = fake_ngx.worker_with_pipe()
    end)


    it("rotate() runs nothing before the first timer fires", function()
        m.rotate("ecr", "aws ecr get-authorization-token")
        assert.equal(0, #pipe.spawned)
        assert.same({ nil, "not ready" }, { m.token("ecr") })

        fake.advance(0)
        assert.equal(1, #pipe.spawned)
        assert.equal("timer", pipe.spawned[1].phase)
        assert.equal("tok", m.token("ecr"))
    end)


    it("rotate() returns nil, err and runs nothing without a timer",
        function()
            fake.fail_timers = "too many pending timers"
            local ok, err = m.rotate("ecr", "aws x")
            assert.is_nil(ok)
            assert.equal("no timer: too many pending timers", err)

            fake.fail_timers = nil
            m.rotate("other", "aws y")
            fake.advance(3600)
            assert.equal(0, runs("aws x"))
            assert.is_true(runs("aws y") >= 1)
        end)


    it("rotate() fetches again after `interval`, not before", function()
        m.rotate("ecr", "aws x", { interval = 60 })
        fake.advance(0)
        assert.equal(1, #pipe.spawned)
        for k = 1, 3 do
            fake.advance(59.5)
            assert.equal(k, #pipe.spawned)
            fake.advance(0.5)
            assert.equal(k + 1, #pipe.spawned)
        end
    end)


    it("rotate() retries a failure after `retry`, not before", function()
        pipe.push{ status = 1 }
        m.rotate("ecr", "aws x", { interval = 3600, retry = 10 })
        fake.advance(0)
        assert.equal(1, #pipe.spawned)
        assert.same({ nil, "not ready" }, { m.token("ecr") })

        fake.advance(9.5)
        assert.equal(1, #pipe.spawned)
        fake.advance(0.5)
        assert.equal(2, #pipe.spawned)
        assert.equal("tok", m.token("ecr"))

        -- a success puts the next fetch `interval` away again
        fake.advance(3599.5)
        assert.equal(2, #pipe.spawned)
        fake.advance(0.5)
        assert.equal(3, #pipe.spawned)
    end)


    it("rotate() fetches every 6 h and retries after 30 s by default",
        function()
            -- 1.0's fixed schedule (FIELD.md): 6 h, failures after 30 s
            pipe.push{ status = 1 }
            m.rotate("ecr", "aws x")
            fake.advance(0)
            fake.advance(29.5)
            assert.equal(1, #pipe.spawned)
            fake.advance(0.5)
            assert.equal(2, #pipe.spawned)
            fake.advance(6 * 3600 - 0.5)
            assert.equal(2, #pipe.spawned)
            fake.advance(0.5)
            assert.equal(3, #pipe.spawned)
        end)


    it("rotate() keeps one worker timer through 40 failures in a row",
        function()
            pipe.default = { status = 1, stderr = "Could not connect" }
            m.rotate("ecr", "aws x", { retry = 30 })
            fake.advance(0)
            assert.equal(1, #pipe.spawned)
            assert.equal(1, fake.pending())

            -- the time of each try, seen in the worker's 0.5 s steps
            local at, t = { 0 }, 0
            while #pipe.spawned < 41 do
                fake.advance(0.5)
                t = t + 0.5
                assert.equal(1, fake.pending())
                if #pipe.spawned > #at then
                    at[#at + 1] = t
                end
                assert(t < 40 * 600, "tries stopped")
            end
            -- one warning per failed attempt, no more
            assert.equal(41, #fake.logged(ngx.WARN))

            -- the n-th wait: 30 s doubling to the 600 s cap, each but the
            -- first up to a quarter shorter, never below `retry`
            for n = 1, 40 do
                local full = math.min(30 * 2 ^ (n - 1), 600)
                local low = n == 1 and full or math.max(30, 0.75 * full)
                local wait = at[n + 1] - at[n]
                assert(wait >= low and wait <= full + 0.5,
                       ("wait %d was %g, not in [%g, %g]")
                       :format(n, wait, low, full))
            end
        end)


    it("rotate() for several tokens shares one worker timer", function()
        m.rotate("a", "aws a", { interval = 60 })
        m.rotate("b", "aws b", { interval = 60 })
        m.rotate("c", "aws c", { interval = 60 })
        fake.advance(0)
        assert.equal(3, #pipe.spawned)
        assert.equal(1, fake.pending())
        fake.advance(60)
        assert.equal(6, #pipe.spawned)
        assert.equal(1, fake.pending())
    end)


    it("set_interval() and set_retry() apply to later rotate() calls",
        function()
            local flaky = 0
            pipe.respond = function(argv)
                if argv[3]:find("cmd%-flaky$") then
                    flaky = flaky + 1
                    if flaky == 1 then
                        return { status = 1 }
                    end
                end
            end

            m.rotate("early", "cmd-early")
            m.set_interval(100)
            m.set_retry(7)
            m.rotate("late", "cmd-late")
            m.rotate("flaky", "cmd-flaky")
            fake.advance(0)
            assert.same({ 1, 1, 1 },
                { runs("cmd-early"), runs("cmd-late"), runs("cmd-flaky") })

            fake.advance(6.5)
            assert.equal(1, runs("cmd-flaky"))
            fake.advance(0.5)  -- t = 7: the retry
            assert.equal(2, runs("cmd-flaky"))

            fake.advance(92.5)
            assert.equal(1, runs("cmd-late"))
            fake.advance(0.5)  -- t = 100
            assert.equal(2, runs("cmd-late"))
            -- rotated before set_interval(): still every 6 h
            assert.equal(1, runs("cmd-early"))
        end)


    describe("rotate() called again for a name", function()
        before_each(function()
            pipe.respond = function(argv)
                if argv[3]:find("cmd%-new$") then
                    return { stdout = "new-tok\n" }
                end
                return { stdout = "old-tok\n" }
            end
        end)

        it("replaces its schedule", function()
            m.rotate("ecr", "cmd-old", { interval = 60 })
            fake.advance(0)
            assert.equal(1, runs("cmd-old"))

            m.rotate("ecr", "cmd-new", { interval = 60 })
            fake.advance(0)
            assert.equal(1, runs("cmd-new"))
            assert.equal("new-tok", m.token("ecr"))
            for k = 1, 5 do
                fake.advance(60)
                assert.equal(1 + k, runs("cmd-new"))
            end
            assert.equal(1, runs("cmd-old"))
        end)

        it("before the first fetch runs only the new command", function()
            m.rotate("ecr", "cmd-old", { interval = 60 })
            m.rotate("ecr", "cmd-new", { interval = 60 })
            fake.advance(0)
            assert.same({ 0, 1 }, { runs("cmd-old"), runs("cmd-new") })
            fake.advance(60)
            assert.same({ 0, 2 }, { runs("cmd-old"), runs("cmd-new") })
        end)

        it("while its command is about to start runs the new one once",
            function()
                m.rotate("ecr", "cmd-old", { interval = 60 })
                -- the worker's first look starts the command: its
                -- ngx.pipe timer is pending, nothing spawned yet
                fake.fire_next()
                assert.equal(0, #pipe.spawned)

                m.rotate("ecr", "cmd-new", { interval = 60 })
                fake.advance(0)
                assert.equal(1, runs("cmd-new"))
                assert.equal("new-tok", m.token("ecr"))
                fake.advance(60)
                assert.equal(2, runs("cmd-new"))
            end)

        it("while its command runs kills it and runs the new one once",
            function()
                local old
                pipe.respond = function(argv)
                    if argv[3]:find("cmd%-new$") then
                        return { stdout = "new-tok\n" }
                    end
                    -- hangs; rotate() is called while it is read
                    return { hang = true, during = function(proc)
                        old = proc
                        m.rotate("ecr", "cmd-new", { interval = 60 })
                    end }
                end

                m.rotate("ecr", "cmd-old", { interval = 60 })
                fake.advance(0)
                assert.is_false(old:alive())
                assert.same({ 1, 1 }, { runs("cmd-old"), runs("cmd-new") })
                assert.equal("new-tok", m.token("ecr"))
                -- the old command's end is no failure of the new one
                assert.same({}, fake.logged(ngx.WARN))

                fake.advance(60)
                assert.same({ 1, 2 }, { runs("cmd-old"), runs("cmd-new") })
            end)
    end)


    describe("manage()", function()
        it("fetches once and stops after the first success", function()
            m.manage("ecr", "aws x")
            fake.advance(0)
            assert.equal(1, #pipe.spawned)
            assert.equal("tok", m.token("ecr"))
            for _ = 1, 8 do
                fake.advance(6 * 3600)
            end
            assert.equal(1, #pipe.spawned)
            assert.equal("tok", m.token("ecr"))
        end)

        it("retries a failure after `retry` until it succeeds", function()
            pipe.push{ status = 1 }
            pipe.push{ stdout = "\n" }
            m.manage("ecr", "aws x", { retry = 5 })
            fake.advance(0)
            fake.advance(4.5)
            assert.equal(1, #pipe.spawned)
            fake.advance(0.5)
            assert.equal(2, #pipe.spawned)
            -- the second failure in a row waits 10 s, up to a quarter less
            fake.advance(7)
            assert.equal(2, #pipe.spawned)
            fake.advance(3)
            assert.equal(3, #pipe.spawned)
            assert.equal("tok", m.token("ecr"))
            fake.advance(3600)
            assert.equal(3, #pipe.spawned)
        end)
    end)


    describe("a premature timer", function()
        it("runs no command at worker exit", function()
            m.rotate("ecr", "aws x")
            fake.shutdown()
            assert.equal(0, #pipe.spawned)
            assert.equal(0, fake.pending())
            assert.same({ nil, "not ready" }, { m.token("ecr") })
            -- an exit is no failure to report
            assert.same({}, fake.logged(ngx.WARN))
            assert.same({}, fake.logged(ngx.ERR))
        end)

        it("runs no command when the exit comes as it was to start",
            function()
                m.rotate("ecr", "aws x")
                fake.fire_next()  -- the command's timer is now pending
                fake.shutdown()
                assert.equal(0, #pipe.spawned)
                assert.same({ nil, "not ready" }, { m.token("ecr") })
            end)
    end)
end)
