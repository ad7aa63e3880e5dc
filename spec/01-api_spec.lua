-- The public API: what misuse raises, and what token() answers.

local fake_ngx = require "support.fake_ngx"
local util = require "support.util"

local SRC = debug.getinfo(1, "S").short_src


local raises_here = util.raises_here


-- Calls fn, which must raise; returns the message, without a position.
local function raises(fn)
    local ok, err = pcall(fn)
    assert.is_false(ok, "no error was raised")
    assert.is_string(err)
    return (err:gsub("^[^:]*:%d+: ", ""))
end


describe("the API", function()
    local fake, m

    before_each(function()
        fake = fake_ngx.install{
            dicts = { "other", "tokens", "more" }, pipe = true,
        }
        fake.pipe.default = { stdout = "tok-1\n", status = 0 }
        m = fake.load()
    end)


    it("runs from the file its error positions must name", function()
        assert.truthy(SRC:find("01%-api_spec%.lua$"), SRC)
    end)


    describe("set_storage()", function()
        it("raises at the caller's line for a plain table", function()
            local msg = raises_here(function() m.set_storage({}) end)
            assert.truthy(msg:find("set_storage()", 1, true), msg)
        end)

        it("raises at the caller's line for nil", function()
            raises_here(function() m.set_storage() end)
        end)

        it("raises at the caller's line for a dict's name", function()
            raises_here(function() m.set_storage("tokens") end)
        end)

        it("takes a lua_shared_dict", function()
            m.set_storage(ngx.shared.tokens)
            assert.same({ nil, "not ready" }, { m.token("ecr") })
        end)
    end)


    describe("rotate()", function()
        local bare  -- a worker that never called set_storage()

        before_each(function()
            bare = fake.load()
            m.set_storage(ngx.shared.tokens)
        end)

        it("raises at the caller's line for each misuse", function()
            local opts = { intervall = 60 }
            local neg = { interval = -1 }
            raises_here(function() m.rotate("ecr") end)
            raises_here(function() m.rotate("", "aws x") end)
            raises_here(function() m.rotate("a\nb", "aws x") end)
            raises_here(function() m.rotate("ecr", "aws x", opts) end)
            raises_here(function() m.rotate("ecr", "aws x", neg) end)
            raises_here(function() bare.rotate("ecr", "aws x") end)
        end)

        it("raises without a command", function()
            local msg = raises(function() m.rotate("ecr") end)
            assert.truthy(msg:find("rotate()", 1, true), msg)
            assert.truthy(msg:find("command", 1, true), msg)
        end)

        it("raises for a blank command", function()
            raises(function() m.rotate("ecr", "") end)
            raises(function() m.rotate("ecr", " \n ") end)
        end)

        it("raises for an empty name or one that is not a string",
            function()
                raises(function() m.rotate("", "aws x") end)
                raises(function() m.rotate(nil, "aws x") end)
                raises(function() m.rotate(7, "aws x") end)
            end)

        it("raises for a name with a newline or other control bytes",
            function()
                for _, name in ipairs({ "a\nb", "a\rb", "a\0b", "a\tb",
                    "ecr\n" })
                do
                    raises(function() m.rotate(name, "aws x") end)
                end
            end)

        it("raises naming an unknown option", function()
            local opts = { intervall = 60 }
            local msg = raises(function() m.rotate("e", "x", opts) end)
            assert.truthy(msg:find("intervall", 1, true), msg)
        end)

        it("raises naming a negative, zero, infinite, NaN or string "
            .. "duration", function()
                local bad = { -1, 0, math.huge, 0 / 0, "60" }
                for _, key in ipairs({ "interval", "retry", "timeout" }) do
                    for _, v in ipairs(bad) do
                        local opts = { [key] = v }
                        local call = function() m.rotate("e", "x", opts) end
                        local msg = raises(call)
                        assert.truthy(msg:find(key, 1, true), msg)
                    end
                end
            end)

        it("raises for a third argument that is neither a function nor "
            .. "a table", function()
                raises(function() m.rotate("e", "x", "f") end)
                raises(function() m.rotate("e", "x", 5) end)
            end)

        it("raises for a transform option that is not a function",
            function()
                local opts = { transform = "Basic" }
                raises(function() m.rotate("ecr", "aws x", opts) end)
            end)

        it("raises before set_storage()", function()
            local msg = raises(function() bare.rotate("ecr", "x") end)
            assert.truthy(msg:find("set_storage", 1, true), msg)
        end)

        it("schedules nothing when it raises", function()
            pcall(m.rotate, "", "aws x")
            pcall(m.rotate, "ecr", "aws x", { retry = -1 })
            assert.equal(0, fake.pending())
            fake.advance(60)
            assert.equal(0, #fake.pipe.spawned)
        end)

        it("accepts a transform function or an options table", function()
            local same = function(s) return s end
            assert.is_true((m.rotate("a", "aws x", same)))
            assert.is_true((m.rotate("b", "aws x", {
                interval = 60, retry = 5, timeout = 10, transform = same,
            })))
        end)
    end)


    describe("manage()", function()
        it("raises at the caller's line for each misuse", function()
            raises_here(function() m.manage("ecr", "aws x") end)
            m.set_storage(ngx.shared.tokens)
            local opts = { every = 5 }
            raises_here(function() m.manage("ecr") end)
            raises_here(function() m.manage("", "aws x") end)
            raises_here(function() m.manage("e", "x", opts) end)
        end)

        it("raises before set_storage() and for bad arguments", function()
            raises(function() m.manage("ecr", "aws x") end)
            m.set_storage(ngx.shared.tokens)
            raises(function() m.manage("ecr") end)
            raises(function() m.manage("", "aws x") end)
            raises(function() m.manage("e\n", "aws x") end)
            local opts = { every = 5 }
            local msg = raises(function() m.manage("e", "x", opts) end)
            assert.truthy(msg:find("every", 1, true), msg)
        end)
    end)


    describe("create()", function()
        it("raises at the caller's line without a command", function()
            raises_here(function() m.create() end)
            raises_here(function() m.create("  ") end)
            raises_here(function() m.create(42) end)
        end)

        it("raises at the caller's line for a transform that is not a "
            .. "function", function()
                raises_here(function() m.create("x", "Basic") end)
            end)
    end)


    describe("set_interval() and set_retry()", function()
        it("raise at the caller's line for a bad number of seconds",
            function()
                local bad = { 0, -5, math.huge, 0 / 0, "30" }
                for _, v in ipairs(bad) do
                    raises_here(function() m.set_interval(v) end)
                    raises_here(function() m.set_retry(v) end)
                end
                raises_here(function() m.set_interval() end)
                raises_here(function() m.set_retry() end)
            end)
    end)


    describe("token()", function()
        it("raises at the caller's line for a name that is not a string",
            function()
                raises_here(function() m.token() end)
                raises(function() m.token(42) end)
                raises(function() m.token({}) end)
            end)

        it("returns nil, \"no storage\" when no dict was ever set",
            function()
                assert.same({ nil, "no storage" }, { m.token("ecr") })
            end)

        it("returns nil, \"not ready\" before the first fetch", function()
            m.set_storage(ngx.shared.tokens)
            m.rotate("ecr", "aws ecr get-authorization-token")
            assert.same({ nil, "not ready" }, { m.token("ecr") })
        end)

        it("returns the token once fetched", function()
            m.set_storage(ngx.shared.tokens)
            m.rotate("ecr", "aws ecr get-authorization-token")
            fake.advance(0)
            assert.same({ "tok-1" }, { m.token("ecr") })
        end)

        it("finds the dict another worker passed to set_storage()",
            function()
                local other = fake.load()  -- never calls set_storage()
                -- a user's key of the same name in a dict we do not use
                ngx.shared.other:set("ecr", "decoy")
                assert.same({ nil, "no storage" }, { other.token("ecr") })

                m.set_storage(ngx.shared.tokens)
                -- a worker without storage looks at most once a second
                assert.same({ nil, "no storage" }, { other.token("ecr") })
                fake.advance(1)
                assert.same({ nil, "not ready" }, { other.token("ecr") })

                m.rotate("ecr", "aws ecr get-authorization-token")
                fake.advance(0)
                assert.same({ "tok-1" }, { other.token("ecr") })
            end)

        it("reads the dict once and logs nothing", function()
            m.set_storage(ngx.shared.tokens)
            m.rotate("ecr", "aws ecr get-authorization-token")
            fake.advance(0)
            local zone = fake.zone("tokens")
            local gets, logs = zone.gets, #fake.logs
            for _ = 1, 10 do
                m.token("ecr")
            end
            assert.equal(gets + 10, zone.gets)
            assert.equal(logs, #fake.logs)
        end)
    end)


    describe("the dict", function()
        before_each(function()
            m.set_storage(ngx.shared.tokens)
        end)

        it("holds the token as a plain string under its own name",
            function()
                m.rotate("ecr", "aws ecr get-authorization-token")
                fake.advance(0)
                assert.equal("tok-1", ngx.shared.tokens:get("ecr"))
            end)

        it("holds nothing else under a name a token could have",
            function()
                m.rotate("ecr", "aws ecr get-authorization-token")
                fake.advance(0)
                for _, key in ipairs(ngx.shared.tokens:get_keys(0)) do
                    if key ~= "ecr" then
                        -- token names may not hold control bytes
                        assert.truthy(key:find("%c"), key)
                    end
                end
            end)

        it("keeps a user's own keys beside the tokens", function()
            ngx.shared.tokens:set("mine", "user value")
            m.rotate("ecr", "aws ecr get-authorization-token")
            fake.advance(0)
            assert.equal("user value", ngx.shared.tokens:get("mine"))
            assert.equal("tok-1", m.token("ecr"))
        end)
    end)
end)
