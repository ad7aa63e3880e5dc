-- The expiry-aware schedule: a token is fetched again once a quarter of
-- its lifetime is left, and the dict holds it only until it expires; the
-- presets ecr() and codeartifact() and the `env` option. Virtual clock,
-- fake ngx.pipe. Every time below is counted by hand from the options;
-- timestamps are written by os.date, never by the module's parser.

local fake_ngx = require "support.fake_ngx"
local util = require "support.util"

local EPOCH = fake_ngx.EPOCH
-- stands for a token in a bad answer: it must never be logged
local SECRET = "SECRET-TOKEN-123"
-- base64 of "AWS:pw", the form of ECR's authorizationToken
local ECR_TOKEN = "QVdTOnB3"
local UTC = "!%Y-%m-%dT%H:%M:%S"


-- ISO 8601 for the wall clock `t` (epoch seconds read as UTC) + `zone`.
local function iso(t, zone)
    return os.date(UTC, t) .. zone
end


-- Wraps `s` in single quotes for /bin/sh.
local function sh_quote(s)
    return "'" .. s:gsub("'", "'\\''") .. "'"
end


-- What a shell command prints.
local function sh(cmd)
    local f = assert(io.popen(cmd))
    local out = f:read("*a")
    f:close()
    return out
end


local function exists(path)
    local f = io.open(path, "rb")
    if f then
        f:close()
    end
    return f ~= nil
end


local raises_here = util.raises_here


local function ecr_json(token, expires_at)
    return '{"authorizationData":[{"authorizationToken":"' .. token
        .. '","expiresAt":"' .. expires_at .. '","proxyEndpoint":'
        .. '"https://123456789012.dkr.ecr.eu-west-1.amazonaws.com"}]}\n'
end


-- The script and the arguments of spawn `rec`: argv is
-- /bin/sh -c <script> sh <args...>.
local function split_argv(rec)
    local argv = rec.argv
    assert.equal("/bin/sh", argv[1])
    assert.equal("-c", argv[2])
    assert.equal("sh", argv[4])
    return argv[3], { unpack(argv, 5) }
end


-- Checks that `spawned` ran `aws <service> get-authorization-token
-- --output json` through `exec "$@"`, then exactly the flag/value pairs
-- of `flags`, in any order.
local function assert_spawned(spawned, service, flags)
    local script, args = split_argv(spawned)
    assert.same({ "aws", service, "get-authorization-token",
                  "--output", "json" }, { unpack(args, 1, 5) })
    local seen, n = {}, 0
    for i = 6, #args, 2 do
        seen[args[i]] = args[i + 1]
        n = n + 1
    end
    for _ in pairs(flags) do
        n = n - 1
    end
    assert.equal(0, n, "another number of flags")
    assert.same(flags, seen)
    assert.equal('exec "$@"', script:sub(-#'exec "$@"'))
end


-- The lines of `text`.
local function lines(text)
    local out = {}
    for line in (text .. "\n"):gmatch("([^\n]*)\n") do
        out[#out + 1] = line
    end
    return out
end


describe("the expiry-aware schedule", function()
    local fake, pipe, m

    -- seconds since the start at which spawn `i` ran
    local function spawned_at(i)
        return pipe.spawned[i].at - EPOCH
    end

    -- the WARN messages logged from message `from` on
    local function warns_from(from)
        return { unpack(fake.logged(ngx.WARN), from) }
    end

    before_each(function()
        fake, pipe, m = fake_ngx.worker_with_pipe()
    end)


    describe("rotate() with a transform that returns an expiry", function()
        local function in_100_s(output)
            return output, ngx.now() + 100
        end

        it("refreshes a 100 s token at 75 s, at most 5 s early", function()
            m.rotate("ecr", "aws x", in_100_s)
            fake.advance(0)
            assert.equal(1, #pipe.spawned)
            local next_at = m.status("ecr").next_refresh - EPOCH
            assert(next_at > 70 and next_at <= 75, "planned at " .. next_at)
            for k = 1, 3 do
                local last = spawned_at(k)
                fake.advance(last + 70 - (fake.now() - EPOCH))
                assert.equal(k, #pipe.spawned)
                fake.advance(5.5)
                assert.equal(k + 1, #pipe.spawned)
                local wait = spawned_at(k + 1) - last
                assert(wait > 70 and wait <= 75.5, "waited " .. wait)
            end
        end)

        it("refreshes a 100 s token at 50 s with refresh_before = 0.5",
            function()
                m.rotate("ecr", "aws x", {
                    transform = in_100_s, refresh_before = 0.5,
                })
                fake.advance(0)
                fake.advance(45)
                assert.equal(1, #pipe.spawned)
                fake.advance(5.5)
                assert.equal(2, #pipe.spawned)
                assert.is_true(spawned_at(2) > 45)
            end)

        it("refreshes a 100 s token at 30 s with interval = 30", function()
            m.rotate("ecr", "aws x", { transform = in_100_s, interval = 30 })
            fake.advance(0)
            fake.advance(29.5)
            assert.equal(1, #pipe.spawned)
            fake.advance(0.5)
            assert.equal(2, #pipe.spawned)
            fake.advance(29.5)
            assert.equal(2, #pipe.spawned)
            fake.advance(0.5)
            assert.equal(3, #pipe.spawned)
        end)

        it("refreshes a 100 s token at 75 s despite interval = 3600",
            function()
                m.rotate("ecr", "aws x", {
                    transform = in_100_s, interval = 3600,
                })
                fake.advance(0)
                fake.advance(70)
                assert.equal(1, #pipe.spawned)
                fake.advance(5.5)
                assert.equal(2, #pipe.spawned)
            end)

        it("refreshes a token without an expiry every `interval`",
            function()
                m.rotate("ecr", "aws x", {
                    transform = function(s) return s end, interval = 200,
                })
                fake.advance(0)
                fake.advance(199.5)
                assert.equal(1, #pipe.spawned)
                fake.advance(0.5)
                assert.equal(2, #pipe.spawned)
            end)
    end)


    describe("an expiry 100 s away", function()
        -- the expiry in seconds after the start, and the last half
        -- second at which the token is still there
        local T = EPOCH + 100
        local cases = {
            { "as a number", T, 100, 99.5 },
            { "as a number with a fraction", T + 0.25, 100.25, 100 },
            { "as a numeric string", "1700000100.5", 100.5, 100 },
            { "as ISO 8601 with Z", iso(T, "Z"), 100, 99.5 },
            { "as ISO 8601 with +00:00", iso(T, "+00:00"), 100, 99.5 },
            { "as ISO 8601 with a fraction and +00:00",
                iso(T, ".438000+00:00"), 100.438, 100 },
            { "as ISO 8601 at UTC+05:30",
                iso(T + 19800, "+05:30"), 100, 99.5 },
            { "as ISO 8601 at UTC+0530 (basic format)",
                iso(T + 19800, "+0530"), 100, 99.5 },
            { "as ISO 8601 at UTC-05:00",
                iso(T - 18000, "-05:00"), 100, 99.5 },
        }

        it("is written as the fake clock's start + 100 s", function()
            assert.equal(1700000000, EPOCH)
            assert.equal("2023-11-14T22:15:00Z", iso(T, "Z"))
            assert.equal("2023-11-15T03:45:00+05:30",
                         iso(T + 19800, "+05:30"))
            assert.equal("2023-11-14T17:15:00-05:00",
                         iso(T - 18000, "-05:00"))
        end)

        for _, case in ipairs(cases) do
            local title, expires = case[1], case[2]
            local at, last = case[3], case[4]

            it(title .. " gives a refresh at 75 s and keeps the token "
                .. "until then", function()
                    -- the first fetch succeeds, every later one fails
                    pipe.push{ stdout = "tok\n" }
                    pipe.default = { status = 1 }
                    m.rotate("ecr", "aws x", function(output)
                        return output, expires
                    end)
                    fake.advance(0)
                    assert.equal("tok", m.token("ecr"))
                    assert.near(EPOCH + at, m.status("ecr").expires_at,
                                1e-6)

                    fake.advance(70)
                    assert.equal(1, #pipe.spawned)
                    fake.advance(5.5)
                    assert.equal(2, #pipe.spawned)

                    fake.advance(last - 75.5)
                    assert.same({ "tok" }, { m.token("ecr") })
                    assert.equal("tok", ngx.shared.tokens:get("ecr"))
                    fake.advance(0.5)
                    assert.same({ nil, "expired" }, { m.token("ecr") })
                    assert.is_nil(ngx.shared.tokens:get("ecr"))
                end)
        end
    end)


    describe("token()", function()
        it("returns nil, \"expired\" once the failing refreshes outlast "
            .. "the token, and the token again after a success", function()
                local n = 0
                pipe.respond = function()
                    n = n + 1
                    -- the 1st and the 6th fetch succeed
                    if n ~= 1 and n ~= 6 then
                        return { status = 1 }
                    end
                end
                m.rotate("ecr", "aws x", {
                    retry = 10, retry_max = 10,
                    transform = function(output)
                        return output, ngx.now() + 100
                    end,
                })
                fake.advance(0)
                fake.advance(99.5)
                assert.equal("tok", m.token("ecr"))
                fake.advance(0.5)
                assert.same({ nil, "expired" }, { m.token("ecr") })
                -- fails at ~75, 85, 95, 105; the 6th, ~115, succeeds
                fake.advance(30)
                assert.equal(6, #pipe.spawned)
                assert.same({ "tok" }, { m.token("ecr") })
            end)

        it("returns nil, \"not ready\" for a token never fetched",
            function()
                pipe.default = { status = 1 }
                m.rotate("ecr", "aws x", { retry = 5 })
                fake.advance(0)
                fake.advance(1000)
                assert.is_true(#pipe.spawned > 2)
                assert.same({ nil, "not ready" }, { m.token("ecr") })
                assert.same({ nil, "not ready" }, { m.token("other") })
            end)

        it("returns nil, \"expired\" after the expiry of a token from "
            .. "manage(), which does not fetch it again", function()
                m.manage("ecr", "aws x", function(output)
                    return output, ngx.now() + 100
                end)
                fake.advance(0)
                fake.advance(99.5)
                assert.same({ "tok" }, { m.token("ecr") })
                fake.advance(0.5)
                assert.same({ nil, "expired" }, { m.token("ecr") })
                fake.advance(3600)
                assert.equal(1, #pipe.spawned)
                assert.same({ nil, "expired" }, { m.token("ecr") })
            end)

        it("returns nil, \"expired\" after the expiry of a token from "
            .. "manage() on two workers, which fetch it once as one does",
            function()
                -- two workers of one nginx: one dict, one clock
                local other = fake.load()
                other.set_storage(ngx.shared.tokens)
                local function in_100_s(output)
                    return output, ngx.now() + 100
                end
                m.manage("ecr", "aws x", in_100_s)
                other.manage("ecr", "aws x", in_100_s)
                fake.advance(0)
                assert.equal(1, #pipe.spawned)
                fake.advance(99.5)
                assert.same({ "tok" }, { m.token("ecr") })
                fake.advance(0.5)
                fake.advance(3600)
                assert.equal(1, #pipe.spawned)
                assert.same({ nil, "expired" }, { other.token("ecr") })
            end)

        it("status() tells a token never fetched from an expired one",
            function()
                pipe.default = { status = 1 }
                m.rotate("never", "aws x", { retry = 5 })
                pipe.respond = function(argv)
                    if argv[3]:find("aws y$") then
                        return { stdout = "tok\n" }
                    end
                end
                m.manage("once", "aws y", function(output)
                    return output, ngx.now() + 100
                end)
                fake.advance(0)
                fake.advance(100)

                local never = m.status("never")
                assert.is_nil(never.fetched_at)
                assert.is_nil(never.expires_at)
                local tries = #pipe.spawned - 1
                assert.is_true(tries > 2)
                assert.equal(tries, never.failures)
                assert.same({ nil, "not ready" }, { m.token("never") })

                local once = m.status("once")
                assert.equal(EPOCH, once.fetched_at)
                assert.equal(EPOCH + 100, once.expires_at)
                assert.equal(0, once.failures)
                assert.same({ nil, "expired" }, { m.token("once") })
            end)

        it("returns nil, \"not ready\" while manage() has not fetched",
            function()
                pipe.push{ status = 1 }
                m.manage("ecr", "aws x", { retry = 10 })
                fake.advance(0)
                assert.same({ nil, "not ready" }, { m.token("ecr") })
                fake.advance(10)
                assert.same({ "tok" }, { m.token("ecr") })
            end)
    end)


    describe("rotate() keeps the old token and warns", function()
        local now = function() return ngx.now() end
        local cases = {
            { "for an expiry 1 s in the past",
                function() return now() - 1 end },
            { "for an expiry of now", now },
            { "for an ISO 8601 expiry an hour ago",
                function() return iso(now() - 3600, "Z") end },
            { "for an expiry of \"tomorrow\"",
                function() return "tomorrow" end },
            { "for an expiry that is a table",
                function() return {} end },
            { "for an expiry that is a boolean",
                function() return true end },
            { "for an ISO 8601 expiry without a zone",
                function() return iso(now() + 3600, "") end },
            { "for an expiry that is NaN",
                function() return 0 / 0 end },
            { "for an expiry of \"nan\"",
                function() return "nan" end },
            -- epoch milliseconds by mistake: 1000 times too far
            { "for an expiry in milliseconds",
                function() return (now() + 3600) * 1000 end },
        }

        for _, case in ipairs(cases) do
            local title, expiry = case[1], case[2]
            it(title, function()
                local calls = 0
                m.rotate("ecr", "aws x", {
                    interval = 10, retry = 5,
                    transform = function()
                        calls = calls + 1
                        if calls == 1 then
                            return "old"
                        end
                        return "new", expiry()
                    end,
                })
                fake.advance(0)
                assert.equal("old", m.token("ecr"))
                fake.advance(10)
                assert.equal(2, #pipe.spawned)
                assert.same({ "old" }, { m.token("ecr") })
                local warns = warns_from(1)
                assert.equal(1, #warns)
                assert.truthy(warns[1]:find('"ecr"', 1, true), warns[1])
                -- and tries again after `retry`
                fake.advance(5)
                assert.equal(3, #pipe.spawned)
            end)
        end

        it("with a message that names the expiry, in plain words",
            function()
                local calls = 0
                m.rotate("ecr", "aws x", {
                    interval = 10,
                    transform = function()
                        calls = calls + 1
                        return "v", calls > 1 and "tomorrow" or nil
                    end,
                })
                fake.advance(0)
                fake.advance(10)
                local warns = warns_from(1)
                assert.equal(1, #warns)
                assert.truthy(warns[1]:find("expir", 1, true), warns[1])
                assert.falsy(warns[1]:find("the the", 1, true), warns[1])
            end)
    end)


    describe("when a new token does not fit in the dict", function()
        -- 40 keys of the user's, older than anything of the module's:
        -- nginx evicts at most 30 entries for a set(), the least
        -- recently used first, so the module's own keys stay
        before_each(function()
            for i = 1, 40 do
                ngx.shared.tokens:set(("k%02d"):format(i), "v")
            end
        end)

        -- stores "tok" from `first(output)`, then fetches a token bigger
        -- than the whole dict
        local function rotate_twice(first)
            local zone = fake.zone("tokens")
            local calls = 0
            m.rotate("ecr", "aws x", {
                interval = 10, retry = 5000,
                transform = function(output)
                    calls = calls + 1
                    if calls == 1 then
                        return first(output)
                    end
                    return ("N"):rep(zone.capacity)
                end,
            })
            fake.advance(0)
            assert.equal("tok", m.token("ecr"))
            -- room for what is there and a little more, whatever the
            -- module keeps beside the token
            zone.capacity = zone.used + 200
            fake.advance(10)
            assert.equal(2, #pipe.spawned)
            assert.equal(1, #fake.logged(ngx.ERR))
        end

        it("rotate() keeps an old token that has an expiry, until it",
            function()
                rotate_twice(function(output)
                    return output, ngx.now() + 3600
                end)
                assert.same({ "tok" }, { m.token("ecr") })
                fake.advance(3600 - 10.5)
                assert.same({ "tok" }, { m.token("ecr") })
                fake.advance(0.5)
                assert.same({ nil, "expired" }, { m.token("ecr") })
            end)

        it("rotate() keeps an old token that has no expiry", function()
            rotate_twice(function(output)
                return output
            end)
            assert.same({ "tok" }, { m.token("ecr") })
            fake.advance(3600)
            assert.same({ "tok" }, { m.token("ecr") })
        end)
    end)


    describe("jitter", function()
        it("spreads the refresh of a 12 h token by five proxies over the "
            .. "5 min before 9 h", function()
                -- five nginx instances started together, one worker
                -- each: a fake of its own per pid, so a dict of its own
                local waits, distinct = {}, {}
                for pid = 101, 105 do
                    fake = fake_ngx.install{ pipe = true, pid = pid }
                    fake.pipe.default = { stdout = "tok\n" }
                    local w = fake.load()
                    w.set_storage(ngx.shared.tokens)
                    w.rotate("ecr", "aws x", function(output)
                        return output, ngx.now() + 43200
                    end)
                    fake.advance(0)
                    assert.equal(1, #fake.pipe.spawned)
                    fake.advance(32400 - 300)
                    assert.equal(1, #fake.pipe.spawned)
                    fake.advance(300)
                    assert.equal(2, #fake.pipe.spawned)
                    local wait = fake.pipe.spawned[2].at
                        - fake.pipe.spawned[1].at
                    assert(wait > 32400 - 300 and wait <= 32400,
                           "worker " .. pid .. " waited " .. wait)
                    waits[#waits + 1] = wait
                    distinct[wait] = true
                end
                local n = 0
                for _ in pairs(distinct) do
                    n = n + 1
                end
                assert(n > 1, "all five waited " .. waits[1])
            end)
    end)


    describe("backoff with retry = 2, retry_max = 20", function()
        it("waits 2, then 4, 8, 16 up to a quarter less, then at most 20 "
            .. "s; a success starts again at 2", function()
                local ok_at = { [10] = true }
                pipe.respond = function(_, n)
                    if not ok_at[n] then
                        return { status = 1 }
                    end
                end
                m.rotate("ecr", "aws x", {
                    retry = 2, retry_max = 20, interval = 3600,
                })
                fake.advance(0)
                fake.advance(4000)
                assert.is_true(#pipe.spawned >= 14)

                -- the wait before spawn i + 1, and its bounds
                local bounds = {
                    { 2, 2 }, { 3, 4 }, { 6, 8 }, { 12, 16 },
                    { 15, 20 }, { 15, 20 }, { 15, 20 }, { 15, 20 },
                    { 15, 20 },
                    -- spawn 10 succeeds: `interval` later, then afresh
                    { 3600, 3600 }, { 2, 2 }, { 3, 4 }, { 6, 8 },
                }
                for i, b in ipairs(bounds) do
                    local wait = spawned_at(i + 1) - spawned_at(i)
                    assert(wait >= b[1] and wait <= b[2],
                           ("wait %d was %g, not in [%g, %g]")
                           :format(i, wait, b[1], b[2]))
                end
            end)
    end)


    describe("ecr()", function()
        local opts = {
            region = "eu-west-1", registry_id = "123456789012",
            profile = "prod", endpoint_url = "http://127.0.0.1:1",
        }
        -- the AWS CLI's own flags (aws ecr get-authorization-token help)
        local flags = {
            ["--region"] = "eu-west-1", ["--registry-ids"] = "123456789012",
            ["--profile"] = "prod", ["--endpoint-url"] = "http://127.0.0.1:1",
        }

        it("spawns aws ecr get-authorization-token with a flag per option",
            function()
                m.rotate("ecr", m.ecr(opts))
                fake.advance(0)
                assert_spawned(pipe.spawned[1], "ecr", flags)
            end)

        it("spawns only the command and --output json without options",
            function()
                m.rotate("ecr", m.ecr())
                fake.advance(0)
                local _, args = split_argv(pipe.spawned[1])
                assert.same({ "aws", "ecr", "get-authorization-token",
                              "--output", "json" }, args)
            end)

        it("runs its arguments from a script that empties AWS_PAGER",
            function()
                m.rotate("ecr", m.ecr(opts))
                fake.advance(0)
                local script = split_argv(pipe.spawned[1])
                -- the script for real, with a probe in place of aws
                local probe = [[printf '[%s]' "${AWS_PAGER-unset}"]]
                local out = sh("AWS_PAGER=less /bin/sh -c " .. sh_quote(script)
                    .. " sh /bin/sh -c " .. sh_quote(probe))
                assert.equal("[]", out)
            end)

        it("stores Basic and the token until its expiresAt", function()
            local expires = iso(EPOCH + 43200, "Z")
            pipe.push{ stdout = ecr_json(ECR_TOKEN, expires) }
            pipe.default = { status = 1 }
            m.rotate("ecr", m.ecr(opts))
            fake.advance(0)
            assert.same({ "Basic QVdTOnB3" }, { m.token("ecr") })
            fake.advance(43199.5)
            assert.same({ "Basic QVdTOnB3" }, { m.token("ecr") })
            fake.advance(0.5)
            assert.same({ nil, "expired" }, { m.token("ecr") })
        end)

        it("refreshes a 12 h token between 8 h 55 min and 9 h", function()
            pipe.default = {
                stdout = ecr_json(ECR_TOKEN,
                                  iso(EPOCH + 43200, ".438000+00:00")),
            }
            m.rotate("ecr", m.ecr(opts))
            fake.advance(0)
            fake.advance(32100)
            assert.equal(1, #pipe.spawned)
            fake.advance(300.5)
            assert.equal(2, #pipe.spawned)
        end)

        describe("keeps the old token, logging no output,", function()
            local future = iso(EPOCH + 43200, "Z")
            local cases = {
                { "for output that is not JSON", SECRET .. " not JSON\n" },
                { "for JSON without authorizationData",
                    '{"authorizationToken":"' .. SECRET .. '"}' },
                { "for an empty authorizationData",
                    '{"authorizationData":[]}' },
                { "for authorizationData without authorizationToken",
                    '{"authorizationData":[{"expiresAt":"' .. future
                    .. '","proxyEndpoint":"' .. SECRET .. '"}]}' },
                { "for an authorizationToken that is a number",
                    '{"authorizationData":[{"authorizationToken":12345}],'
                    .. '"x":"' .. SECRET .. '"}' },
                { "for an empty authorizationToken",
                    ecr_json("", future) },
                { "for an expiresAt that is not a time",
                    ecr_json(SECRET, "soon") },
                { "for an expiresAt in the past",
                    ecr_json(SECRET, iso(EPOCH - 60, "Z")) },
            }

            for _, case in ipairs(cases) do
                local title, output = case[1], case[2]
                it(title, function()
                    pipe.push{ stdout = ecr_json(ECR_TOKEN, future) }
                    pipe.push{ stdout = output }
                    m.rotate("ecr", m.ecr(opts), { interval = 10 })
                    fake.advance(0)
                    fake.advance(10)
                    assert.equal(2, #pipe.spawned)
                    assert.same({ "Basic " .. ECR_TOKEN }, { m.token("ecr") })
                    local warns = warns_from(1)
                    assert.equal(1, #warns)
                    assert.truthy(warns[1]:find('"ecr"', 1, true), warns[1])
                    local log = fake.log_text()
                    local body = output:gsub("%s+$", "")
                    assert.falsy(log:find(body, 1, true), log)
                    assert.falsy(log:find(SECRET, 1, true), log)
                    assert.falsy(log:find(ECR_TOKEN, 1, true), log)
                end)
            end
        end)
    end)


    describe("codeartifact()", function()
        local opts = {
            domain = "my-domain", domain_owner = "111122223333",
            duration = 900,
        }
        local flags = {
            ["--domain"] = "my-domain", ["--domain-owner"] = "111122223333",
            ["--duration-seconds"] = "900",
        }

        local function answer(token, expiration)
            return '{"authorizationToken":"' .. token .. '","expiration":"'
                .. expiration .. '"}\n'
        end

        it("spawns aws codeartifact get-authorization-token with a flag "
            .. "per option", function()
                m.rotate("ca", m.codeartifact(opts))
                fake.advance(0)
                assert_spawned(pipe.spawned[1], "codeartifact", flags)
            end)

        it("stores Bearer and the token until its expiration", function()
            pipe.push{ stdout = answer("ca-tok", iso(EPOCH + 900, "Z")) }
            pipe.default = { status = 1 }
            m.rotate("ca", m.codeartifact(opts))
            fake.advance(0)
            assert.same({ "Bearer ca-tok" }, { m.token("ca") })
            -- refreshed once 225 s are left, at most 45 s earlier
            fake.advance(630)
            assert.equal(1, #pipe.spawned)
            fake.advance(45.5)
            assert.is_true(#pipe.spawned >= 2)
            local at = spawned_at(2)
            assert(at > 630 and at <= 675.5, "refreshed at " .. at)
            fake.advance(899.5 - 675.5)
            assert.same({ "Bearer ca-tok" }, { m.token("ca") })
            fake.advance(0.5)
            assert.same({ nil, "expired" }, { m.token("ca") })
        end)

        describe("keeps the old token, logging no output,", function()
            local future = iso(EPOCH + 900, "Z")
            local cases = {
                { "for output that is not JSON", SECRET .. " not JSON\n" },
                { "for JSON without authorizationToken",
                    '{"token":"' .. SECRET .. '","expiration":"'
                    .. future .. '"}' },
                { "for an authorizationToken that is a number",
                    '{"authorizationToken":12345,"x":"' .. SECRET .. '"}' },
                { "for an empty authorizationToken", answer("", future) },
                { "for an expiration that is not a time",
                    answer(SECRET, "later") },
            }

            for _, case in ipairs(cases) do
                local title, output = case[1], case[2]
                it(title, function()
                    pipe.push{ stdout = answer("ca-tok", future) }
                    pipe.push{ stdout = output }
                    m.rotate("ca", m.codeartifact(opts), { interval = 10 })
                    fake.advance(0)
                    fake.advance(10)
                    assert.equal(2, #pipe.spawned)
                    assert.same({ "Bearer ca-tok" }, { m.token("ca") })
                    local warns = warns_from(1)
                    assert.equal(1, #warns)
                    assert.truthy(warns[1]:find('"ca"', 1, true), warns[1])
                    local log = fake.log_text()
                    local body = output:gsub("%s+$", "")
                    assert.falsy(log:find(body, 1, true), log)
                    assert.falsy(log:find(SECRET, 1, true), log)
                    assert.falsy(log:find("ca-tok", 1, true), log)
                end)
            end
        end)
    end)


    describe("a preset used wrongly", function()
        it("raises at the caller's line for an unknown option", function()
            local msg = raises_here(function() m.ecr{ regoin = "x" } end)
            assert.truthy(msg:find("regoin", 1, true), msg)
            local bad = { domain = "d", domian_owner = "1" }
            msg = raises_here(function() m.codeartifact(bad) end)
            assert.truthy(msg:find("domian_owner", 1, true), msg)
        end)

        it("raises at the caller's line for options that are no table",
            function()
                raises_here(function() m.ecr("eu-west-1") end)
                raises_here(function() m.ecr{ region = {} } end)
                raises_here(function() m.codeartifact("my-domain") end)
            end)

        it("raises at the caller's line for codeartifact{} without domain",
            function()
                raises_here(function() m.codeartifact{} end)
                raises_here(function() m.codeartifact{ domain = "" } end)
                local o = { domain_owner = "111122223333" }
                raises_here(function() m.codeartifact(o) end)
            end)

        it("raises at the caller's line for codeartifact() without options",
            function()
                raises_here(function() m.codeartifact() end)
            end)

        it("raises at the caller's line for a duration the CLI refuses",
            function()
                -- aws codeartifact get-authorization-token help:
                -- --duration-seconds is 0 or 900 to 43200
                for _, d in ipairs({ 100, 50000, 899, 43201, -1, 1 }) do
                    local o = { domain = "d", duration = d }
                    raises_here(function() m.codeartifact(o) end)
                end
            end)

        it("accepts a duration of 0 or 900 to 43200 s", function()
            for _, d in ipairs({ 0, 900, 3600, 43200 }) do
                assert.is_table(m.codeartifact{ domain = "d", duration = d })
            end
        end)

        it("raises at the caller's line for an env name /bin/sh refuses",
            function()
                local e1, e2 = { ["1X"] = "v" }, { ["A-B"] = "v" }
                local e3, e4 = { [1] = "v" }, { A = {} }
                raises_here(function() m.ecr{ env = e1 } end)
                raises_here(function() m.ecr{ env = e2 } end)
                raises_here(function() m.ecr{ env = e3 } end)
                raises_here(function() m.ecr{ env = e4 } end)
                local o = { domain = "d", env = e2 }
                raises_here(function() m.codeartifact(o) end)
                raises_here(function() m.ecr{ env = "A=1" } end)
                -- /bin/sh gets the script as a C string: NUL would end it
                raises_here(function() m.ecr{ env = { A = "x\0y" } } end)
            end)

        it("raises at the caller's line for rotate() and manage() with "
            .. "an env name /bin/sh refuses", function()
                local o1 = { env = { ["1X"] = "v" } }
                local o2 = { env = { ["A-B"] = "v" } }
                raises_here(function() m.rotate("e", "aws x", o1) end)
                raises_here(function() m.rotate("e", "aws x", o2) end)
                raises_here(function() m.manage("e", "aws x", o1) end)
                raises_here(function() m.manage("e", "aws x", o2) end)
                assert.equal(0, fake.pending())
            end)

        it("raises at the caller's line for a transform beside a preset",
            function()
                local src = m.ecr()
                local f = function(s) return s end
                local o = { transform = f }
                raises_here(function() m.rotate("ecr", src, f) end)
                raises_here(function() m.rotate("ecr", src, o) end)
                raises_here(function() m.manage("ecr", src, f) end)
                assert.equal(0, fake.pending())
            end)
    end)


    describe("the env option", function()
        local tmp, sentinel

        before_each(function()
            tmp = sh("mktemp -d"):gsub("\n$", "")
            assert.truthy(tmp:find("^/"))
            sentinel = tmp .. "/ran"
        end)

        after_each(function()
            os.execute("rm -rf " .. sh_quote(tmp))
        end)

        -- a value /bin/sh would act on if it were not quoted right
        local function odd_value()
            return "it's \"quoted\" $(touch " .. sentinel .. ") `touch "
                .. sentinel .. "`; touch " .. sentinel .. " $HOME \\n \\'"
                .. "\n line two '"
        end

        it("rotate() exports each variable as NAME='value' in the script",
            function()
                m.rotate("ecr", "aws x", {
                    env = { AWS_DEFAULT_REGION = "eu-west-1", N = 5 },
                })
                fake.advance(0)
                local script = pipe.spawned[1].argv[3]
                local have = {}
                for _, line in ipairs(lines(script)) do
                    have[line] = true
                end
                local want = {
                    "AWS_DEFAULT_REGION='eu-west-1'; "
                        .. "export AWS_DEFAULT_REGION",
                    "N='5'; export N",
                }
                for _, line in ipairs(want) do
                    assert.is_true(have[line], line)
                end
                assert.equal("aws x", script:sub(-#"aws x"))
            end)

        it("rotate() quotes a value so /bin/sh reads it back literally",
            function()
                local value = odd_value()
                m.rotate("ecr", "aws x", { env = { ODD = value } })
                fake.advance(0)
                local script = pipe.spawned[1].argv[3]
                assert.equal("aws x", script:sub(-#"aws x"))
                -- the script for real, a child shell in place of aws x
                local probe = script:sub(1, -#"aws x" - 1)
                    .. [[/bin/sh -c 'printf %s "$ODD"']]
                local out = sh("/bin/sh -c " .. sh_quote(probe))
                assert.equal(value, out)
                assert.is_false(exists(sentinel))
            end)

        it("ecr() quotes a value so /bin/sh reads it back literally",
            function()
                local value = odd_value()
                m.rotate("ecr", m.ecr{ env = { ODD = value } })
                fake.advance(0)
                local script = split_argv(pipe.spawned[1])
                local out = sh("/bin/sh -c " .. sh_quote(script)
                    .. [[ sh /bin/sh -c 'printf %s "$ODD"']])
                assert.equal(value, out)
                assert.is_false(exists(sentinel))
            end)

        it("rotate()'s env reaches a preset that has no env of its own",
            function()
                m.rotate("ecr", m.ecr{ region = "eu-west-1" }, {
                    env = { AWS_PROFILE = "ecr" },
                })
                fake.advance(0)
                local script = split_argv(pipe.spawned[1])
                local have = {}
                for _, line in ipairs(lines(script)) do
                    have[line] = true
                end
                local want = "AWS_PROFILE='ecr'; export AWS_PROFILE"
                assert.is_true(have[want], script)
            end)

        it("rotate()'s env overrides a preset's, variable by variable",
            function()
                local src = m.ecr{ env = { A = "preset-a", B = "preset-b" } }
                m.rotate("ecr", src, { env = { A = "rotate-a", C = "c" } })
                fake.advance(0)
                local script = split_argv(pipe.spawned[1])
                local probe = [[printf '%s,%s,%s' "$A" "$B" "$C"]]
                local out = sh("/bin/sh -c " .. sh_quote(script)
                    .. " sh /bin/sh -c " .. sh_quote(probe))
                assert.equal("rotate-a,preset-b,c", out)
            end)
    end)
end)
