-- What a command's result does to the token and to the log, with
-- commands scripted on a fake ngx.pipe.

local fake_ngx = require "support.fake_ngx"

-- stands for a token a failed command printed: it must never be logged
local SECRET = "SECRET-TOKEN-123"
local GOOD = "GOOD-TOKEN"


-- Wraps `s` in single quotes for /bin/sh.
local function sh_quote(s)
    return "'" .. s:gsub("'", "'\\''") .. "'"
end


describe("a command's outcome", function()
    local fake, pipe, m

    before_each(function()
        fake, pipe, m = fake_ngx.worker_with_pipe()
    end)

    -- Stores GOOD, then runs one refresh that does `entry`; returns the
    -- messages that refresh logged at WARN.
    local function refresh_after_good(entry, transform)
        pipe.push{ stdout = GOOD .. "\n" }
        pipe.push(entry)
        local opts = { interval = 10, retry = 10 }
        if transform then
            opts.transform = function(output)
                if output == GOOD then
                    return output
                end
                return transform(output)
            end
        end
        m.rotate("ecr", "aws ecr get-authorization-token", opts)
        fake.advance(0)
        assert.equal(GOOD, m.token("ecr"))
        local before = #fake.logged(ngx.WARN)
        fake.advance(10)
        assert.equal(2, #pipe.spawned)
        local warns = fake.logged(ngx.WARN)
        return { unpack(warns, before + 1) }
    end


    it("rotate() stores the output trimmed", function()
        pipe.push{ stdout = " \t tok-1 \r\n\n" }
        m.rotate("ecr", "aws x")
        fake.advance(0)
        assert.equal("tok-1", m.token("ecr"))
    end)


    it("rotate() hands the transform the trimmed output", function()
        local got
        pipe.push{ stdout = "  tok-1 \n" }
        m.rotate("ecr", "aws x", function(output)
            got = output
            return "Basic " .. output
        end)
        fake.advance(0)
        assert.equal("tok-1", got)
        assert.equal("Basic tok-1", m.token("ecr"))
    end)


    it("rotate() stores a 6000-character token intact", function()
        local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
            .. "abcdefghijklmnopqrstuvwxyz0123456789+/="
        local chars = {}
        for i = 1, 6000 do
            local at = (i * 7) % #alphabet + 1
            chars[i] = alphabet:sub(at, at)
        end
        local token = table.concat(chars)
        assert.equal(6000, #token)

        pipe.push{ stdout = token .. "\n" }
        m.rotate("ecr", "aws x")
        fake.advance(0)
        assert.equal(token, m.token("ecr"))
    end)


    describe("rotate() keeps the old token", function()
        local cases = {
            { "when the command exits non-zero",
                { status = 1, stdout = SECRET .. "\n" }, "exit status 1" },
            { "when the command exits 0 with empty stdout",
                { stdout = "" }, "empty" },
            { "when stdout is only whitespace",
                { stdout = " \n\t \r\n" }, "empty" },
            { "when the output has an inner LF",
                { stdout = SECRET .. "\nMORE\n" }, "control" },
            { "when the output has an inner CR",
                { stdout = SECRET .. "\rMORE" }, "control" },
            { "when the output has an inner NUL",
                { stdout = SECRET .. "\0MORE" }, "control" },
            { "when the output has an inner TAB",
                { stdout = SECRET .. "\tMORE" }, "control" },
            { "when the command dies by a signal",
                { signal = 9, stdout = SECRET }, "signal" },
            { "when the AWS CLI prints None (a --query for nothing)",
                { stdout = "None\n" }, "matched nothing" },
            { "when stdout is over 64 KB",
                { stdout = ("A"):rep(65537) }, "output over 65536 bytes" },
            { "when the command cannot start",
                { spawn_error = "fork failed" }, "fork failed" },
        }

        for _, case in ipairs(cases) do
            local title, entry, reason = case[1], case[2], case[3]
            it(title, function()
                local warns = refresh_after_good(entry)
                assert.equal(GOOD, m.token("ecr"))
                assert.equal(1, #warns)
                local msg = warns[1]
                assert.truthy(msg:find('"ecr"', 1, true), msg)
                assert.truthy(msg:find(reason, 1, true), msg)
                assert.falsy(msg:find("[\r\n]"), msg)
                assert.falsy(fake.log_text():find(SECRET, 1, true))
                assert.falsy(fake.log_text():find("MORE", 1, true))
            end)
        end

        local transforms = {
            { "when the transform throws",
                function(output) error("bad " .. output) end },
            { "when the transform returns nil",
                function() return nil end },
            { "when the transform returns a number",
                function() return 42 end },
            { "when the transform returns an empty string",
                function() return "" end },
            { "when the transform returns a value with CR LF",
                function(output) return "Basic " .. output .. "\r\nX: 1" end },
        }

        for _, case in ipairs(transforms) do
            local title, transform = case[1], case[2]
            it(title, function()
                local entry = { stdout = SECRET .. "\n" }
                local warns = refresh_after_good(entry, transform)
                assert.equal(GOOD, m.token("ecr"))
                assert.equal(1, #warns)
                local msg = warns[1]
                assert.truthy(msg:find('"ecr"', 1, true), msg)
                assert.truthy(msg:find("transform", 1, true), msg)
                assert.falsy(msg:find("[\r\n]"), msg)
                assert.falsy(fake.log_text():find(SECRET, 1, true))
            end)
        end

        it("when the transform throws (output without a newline)",
            function()
                local entry = { stdout = SECRET }
                local warns = refresh_after_good(entry, function(output)
                    error("bad " .. output)
                end)
                assert.equal(GOOD, m.token("ecr"))
                assert.equal(1, #warns)
                assert.falsy(fake.log_text():find(SECRET, 1, true))
            end)
    end)


    it("rotate() keeps the token out of the stderr excerpt", function()
        local warns = refresh_after_good{
            status = 1, stdout = SECRET .. "\n",
            stderr = "debug: response token " .. SECRET .. " rejected",
        }
        assert.equal(1, #warns)
        assert.truthy(warns[1]:find("debug: response token", 1, true))
        assert.falsy(fake.log_text():find(SECRET, 1, true))
    end)


    it("rotate() logs a capped, single-line excerpt of stderr", function()
        local head = "An error occurred (ExpiredTokenException)"
        local warns = refresh_after_good{
            status = 254, stderr = head .. "\n" .. ("E"):rep(5000) .. "\n",
        }
        assert.equal(1, #warns)
        local msg = warns[1]
        assert.truthy(msg:find(head, 1, true), msg)
        assert.truthy(msg:find("EEEEEEEEEE", 1, true), msg)
        assert.falsy(msg:find("[\r\n]"), msg)
        -- an excerpt, not the 5000 bytes: at most 512 of them, in a
        -- message well inside nginx's 2048-byte log line
        local longest = 0
        for run in msg:gmatch("E+") do
            longest = math.max(longest, #run)
        end
        assert.is_true(longest <= 512, "excerpt of " .. longest)
        assert.is_true(#msg <= 1024, "message of " .. #msg)
    end)


    describe("rotate() in a worker without AWS credentials in its env",
        function()
            local real_getenv = os.getenv

            after_each(function()
                os.getenv = real_getenv  -- luacheck: ignore 122
            end)

            it("names the `env` directive when a command fails", function()
                -- nginx workers drop the environment without `env NAME;`
                os.getenv = function() return nil end  -- luacheck: ignore 122
                local warns = refresh_after_good{
                    status = 253, stderr = "Unable to locate credentials",
                }
                assert.equal(1, #warns)
                assert.truthy(warns[1]:find("env ", 1, true), warns[1])
            end)

            it("gives no such hint for a service error (exit 254)",
                function()
                    -- e.g. throttling on EC2 with an instance role, where
                    -- the environment rightly holds no credentials
                    -- luacheck: ignore 122
                    os.getenv = function() return nil end
                    local warns = refresh_after_good{
                        status = 254, stderr = "An error occurred "
                            .. "(ThrottlingException): Rate exceeded",
                    }
                    assert.equal(1, #warns)
                    assert.falsy(warns[1]:find("env ", 1, true), warns[1])
                end)

            it("names `env AWS_DEFAULT_REGION` when the CLI wants a region",
                function()
                    os.getenv = function(name)  -- luacheck: ignore 122
                        if name == "AWS_ACCESS_KEY_ID" then
                            return "AKIDEXAMPLE"
                        end
                    end
                    -- the AWS CLI v2's words, exit status 253
                    local warns = refresh_after_good{
                        status = 253,
                        stderr = "You must specify a region. You can also "
                            .. "configure your region by running "
                            .. "\"aws configure\".",
                    }
                    assert.equal(1, #warns)
                    assert.truthy(warns[1]:find("env AWS_DEFAULT_REGION;", 1,
                                                true), warns[1])
                end)

            it("gives no such hint once HOME is kept", function()
                os.getenv = function(name)  -- luacheck: ignore 122
                    if name == "HOME" then
                        return "/var/lib/nginx"
                    end
                end
                local warns = refresh_after_good{
                    status = 253, stderr = "Unable to locate credentials",
                }
                assert.equal(1, #warns)
                assert.falsy(warns[1]:find("env ", 1, true), warns[1])
            end)
        end)


    describe("when the dict is full", function()
        local NEW = ("N"):rep(5000)

        -- after the first fetch: room for what is there (the token and
        -- the module's own keys), never for a 5000-byte token
        local function fill_up()
            local zone = fake.zone("tokens")
            zone.capacity = zone.used + 200
        end

        it("rotate() logs at ERR naming the dict and its size", function()
            pipe.push{ stdout = GOOD .. "\n" }
            pipe.push{ stdout = NEW .. "\n" }
            m.rotate("ecr", "aws x", { interval = 60, retry = 10 })
            fake.advance(0)
            fill_up()
            assert.equal(GOOD, m.token("ecr"))
            fake.advance(60)
            local errs = fake.logged(ngx.ERR)
            assert.equal(1, #errs)
            assert.truthy(errs[1]:find('"ecr"', 1, true), errs[1])
            assert.truthy(errs[1]:find("lua_shared_dict", 1, true))
            assert.truthy(errs[1]:find("tokens", 1, true), errs[1])
            assert.truthy(errs[1]:find("size", 1, true), errs[1])
            assert.falsy(fake.log_text():find(NEW, 1, true))

            -- and tries again after `retry`
            fake.advance(9.5)
            assert.equal(2, #pipe.spawned)
            fake.advance(0.5)
            assert.equal(3, #pipe.spawned)
        end)

        it("rotate() keeps the old token when a new one does not fit",
            function()
                pipe.push{ stdout = GOOD .. "\n" }
                pipe.push{ stdout = NEW .. "\n" }
                m.rotate("ecr", "aws x", { interval = 60, retry = 10 })
                fake.advance(0)
                fill_up()
                assert.equal(GOOD, m.token("ecr"))
                fake.advance(60)
                assert.equal(2, #pipe.spawned)
                -- nginx frees the old entry before it finds no room for
                -- the new one (ngx_http_lua_shdict.c, "removing it
                -- first"): the module must put it back
                assert.equal(GOOD, m.token("ecr"))
            end)
    end)


    it("rotate() logs at ERR when storing evicted other keys", function()
        local user_value = ("u"):rep(100)
        ngx.shared.tokens:set("mine", user_value)
        local new = ("T"):rep(200)
        pipe.push{ stdout = GOOD .. "\n" }
        pipe.push{ stdout = new .. "\n" }
        m.rotate("ecr", "aws x", { interval = 60 })
        fake.advance(0)
        -- room for everything but a 200-byte token beside the user's key
        local zone = fake.zone("tokens")
        zone.capacity = zone.used + 150
        assert.same({}, fake.logged(ngx.ERR))
        fake.advance(60)

        assert.equal(new, m.token("ecr"))
        assert.is_nil(ngx.shared.tokens:get("mine"))
        local errs = fake.logged(ngx.ERR)
        assert.equal(1, #errs)
        assert.truthy(errs[1]:find("lua_shared_dict", 1, true), errs[1])
        assert.truthy(errs[1]:find("tokens", 1, true), errs[1])
        assert.falsy(fake.log_text():find(new, 1, true))
    end)


    describe("a hung command", function()
        local proc

        before_each(function()
            pipe.push{ hang = true, stderr = "Connecting to 169.254.169.254" }
            m.rotate("ecr", "aws x", { timeout = 2, retry = 10 })
            fake.advance(0)
            assert.equal(1, #pipe.spawned)
            proc = pipe.spawned[1].proc
        end)

        it("is read with the `timeout` option, in milliseconds", function()
            assert.equal(2000, proc.timeouts[2])  -- stdout
            assert.equal(2000, proc.timeouts[3])  -- stderr
            assert.is_true(proc.timeouts[4] > 0)  -- wait: 0 is forever
        end)

        it("times out after `timeout` seconds and is killed", function()
            assert.equal(fake_ngx.EPOCH + 2, fake.now())
            assert.is_false(proc:alive())
            assert.is_true(proc.kills[1] == 9 or proc.kills[1] == 15)
        end)

        it("is logged as timed out, with its stderr", function()
            local warns = fake.logged(ngx.WARN)
            assert.equal(1, #warns)
            assert.truthy(warns[1]:find('"ecr"', 1, true), warns[1])
            assert.truthy(warns[1]:find("timed out", 1, true), warns[1])
            assert.truthy(warns[1]:find("169.254.169.254", 1, true))
        end)

        it("is logged naming the `timeout` option to raise", function()
            local warns = fake.logged(ngx.WARN)
            assert.equal(1, #warns)
            assert.truthy(warns[1]:find("timeout", 1, true), warns[1])
        end)

        it("is retried `retry` seconds after it timed out", function()
            fake.advance(9.5)
            assert.equal(1, #pipe.spawned)
            fake.advance(0.5)
            assert.equal(2, #pipe.spawned)
            assert.equal("tok", m.token("ecr"))
        end)
    end)


    describe("the spawned command", function()
        local argv

        before_each(function()
            m.rotate("ecr", "aws ecr get-authorization-token")
            fake.advance(0)
            argv = pipe.spawned[1].argv
        end)

        it("is an argv vector for /bin/sh -c", function()
            assert.equal(3, #argv)
            assert.equal("/bin/sh", argv[1])
            assert.equal("-c", argv[2])
        end)

        it("ends with the user's command", function()
            local cmd = "aws ecr get-authorization-token"
            assert.equal(cmd, argv[3]:sub(-#cmd))
        end)

        it("sets AWS_PAGER to the empty string for the command",
            function()
                local probe = [[printf '[%s]' "${AWS_PAGER-unset}"; ]]
                    .. [[sh -c 'printf "[%s]" "${AWS_PAGER-unset}"']]
                m.rotate("probe", probe)
                fake.advance(0)
                local script = pipe.spawned[2].argv[3]
                assert.equal(probe, script:sub(-#probe))
                -- run it for real, from an environment with a pager set
                local f = io.popen("AWS_PAGER=less /bin/sh -c "
                    .. sh_quote(script))
                local out = f:read("*a")
                f:close()
                assert.equal("[][]", out)
            end)
    end)


    describe("create()", function()
        it("runs through ngx.pipe in a timer", function()
            pipe.push{ stdout = "made\n" }
            local value = fake.in_phase("timer", m.create, "aws x")
            assert.equal("made", value)
            assert.equal(1, #pipe.spawned)
        end)

        it("leaves ngx.pipe alone where it cannot yield", function()
            local value = m.create("echo blocking-ok")
            assert.equal("blocking-ok", value)
            assert.equal(0, #pipe.spawned)
        end)

        it("returns nil and a reason without the output", function()
            pipe.push{ stdout = SECRET .. "\n" }
            local value, err = fake.in_phase("timer", m.create, "aws x",
                function(output) error("bad " .. output) end)
            assert.is_nil(value)
            assert.is_string(err)
            assert.falsy(err:find(SECRET, 1, true), err)
        end)
    end)
end)
