-- Without ngx.pipe the background runner hands a preset's command to
-- /bin/sh inside a script that os.execute() runs: two layers of shell.
-- Whatever an option or an env value holds (spaces, quotes, `;`, $(...),
-- backticks, newlines) must reach `aws` as one literal argument and never
-- run. A fake `aws`, found through the `env` option's PATH, records what
-- it got. Real /bin/sh, real clock; each wait is bounded.

local ffi = require "ffi"
local fake_ngx = require "support.fake_ngx"
local util = require "support.util"

pcall(ffi.cdef, "int setenv(const char *, const char *, int);")

-- the PATH this process, the worker, started with
local WORKER_PATH = assert(os.getenv("PATH"))


local sh, read = util.sh, util.read



local function write(path, data)
    local f = assert(io.open(path, "wb"))
    f:write(data)
    f:close()
end


local function exists(path)
    return read(path) ~= nil
end


-- Wraps `s` in single quotes for /bin/sh.
local function sh_quote(s)
    return "'" .. s:gsub("'", "'\\''") .. "'"
end


-- The NUL-terminated strings in `data`.
local function split_nul(data)
    local out, from = {}, 1
    while from <= #data do
        local at = assert(data:find("\0", from, true), "unterminated")
        out[#out + 1] = data:sub(from, at - 1)
        from = at + 1
    end
    return out
end


-- flag -> value for the pairs in `args` from index `first` on; fails
-- on a flag given twice or a flag without a value.
local function flag_pairs(args, first)
    assert.equal(0, (#args - first + 1) % 2, "a flag without a value")
    local out = {}
    for i = first, #args, 2 do
        assert.is_nil(out[args[i]], "twice: " .. args[i])
        out[args[i]] = args[i + 1]
    end
    return out
end


describe("the background runner with a preset", function()
    local fake, m, tmp, sentinel, path

    -- a value for each hazard; each would create `sentinel` if a shell
    -- ran it
    local function hazards()
        local s = sentinel
        return {
            spaces = "eu  west\t1 *",
            single = "it's",
            double = 'say "hi" \\"',
            semicolon = "a; touch " .. s,
            substitution = "$(touch " .. s .. ")",
            backticks = "`touch " .. s .. "`",
            newline = "one\ntwo; touch " .. s .. "\n",
            breakout = "'; touch " .. s .. "; echo '",
            expansion = "$HOME ${PATH} $0 $1 \\$(touch " .. s .. ")",
        }
    end

    -- the arguments the fake aws got, in order
    local function recorded()
        local data = read(tmp .. "/argv")
        assert.is_string(data, "the fake aws never ran")
        return split_nul(data)
    end

    -- the token once fetched, or nil once a fetch failed; never the
    -- worker's own aws, which would ask AWS itself
    local function stored(name)
        fake.run_until(function()
            return m.token(name) or #fake.logged(ngx.WARN) > 0
        end)
        assert.is_false(exists(tmp .. "/guard-ran"),
                        "aws came from the worker's PATH, not env's")
        return (m.token(name))
    end

    before_each(function()
        fake = fake_ngx.install{ real_clock = true }
        assert.is_false((pcall(require, "ngx.pipe")))
        m = fake.load()
        m.set_storage(ngx.shared.tokens)
        tmp = sh("mktemp -d")
        assert.truthy(tmp:find("^/[%w/._-]+$"), tmp)
        sentinel = tmp .. "/ran"
        path = tmp .. ":/usr/bin:/bin"

        -- prints an answer both presets read: ECR's and CodeArtifact's
        write(tmp .. "/aws", table.concat({
            "#!/bin/sh",
            "printf '%s\\000' \"$@\" >'" .. tmp .. "/argv'",
            "printf '%s' \"${ODD-unset}\" >'" .. tmp .. "/env'",
            "echo '{\"authorizationData\":[{\"authorizationToken\":"
                .. "\"QVdTOnB3\"}],\"authorizationToken\":\"ca-tok\"}'",
            "",
        }, "\n"))
        assert.equal(0, os.execute("chmod 755 '" .. tmp .. "/aws'"))

        -- on the worker's own PATH, an aws that only notes it ran
        assert.equal(0, os.execute("mkdir '" .. tmp .. "/guard'"))
        write(tmp .. "/guard/aws", "#!/bin/sh\n: >'" .. tmp
            .. "/guard-ran'\nexit 3\n")
        assert.equal(0, os.execute("chmod 755 '" .. tmp .. "/guard/aws'"))
        ffi.C.setenv("PATH", tmp .. "/guard:" .. WORKER_PATH, 1)
        assert.equal(tmp .. "/guard/aws", sh("command -v aws"))
    end)

    after_each(function()
        ffi.C.setenv("PATH", WORKER_PATH, 1)
        fake.shutdown()
        os.execute("rm -rf '" .. tmp .. "'")
    end)


    it("finds the fake aws through the env option's PATH", function()
        m.rotate("ecr", m.ecr{ env = { PATH = path } })
        assert.equal("Basic QVdTOnB3", stored("ecr"))
        assert.same({ "ecr", "get-authorization-token", "--output",
                      "json" }, recorded())
    end)


    it("ecr() hands each option to aws as one literal argument",
        function()
            local v = hazards()
            m.rotate("ecr", m.ecr{
                region = v.spaces, registry_id = v.semicolon,
                profile = v.single, endpoint_url = v.substitution,
                env = { PATH = path },
            })
            assert.equal("Basic QVdTOnB3", stored("ecr"))
            local args = recorded()
            assert.same({ "ecr", "get-authorization-token", "--output",
                          "json" }, { unpack(args, 1, 4) })
            assert.same({
                ["--region"] = v.spaces, ["--registry-ids"] = v.semicolon,
                ["--profile"] = v.single, ["--endpoint-url"] = v.substitution,
            }, flag_pairs(args, 5))
            assert.is_false(exists(sentinel))
        end)


    it("codeartifact() hands each option to aws as one literal argument",
        function()
            local v = hazards()
            m.rotate("ca", m.codeartifact{
                domain = v.backticks, domain_owner = v.newline,
                region = v.double, profile = v.breakout,
                endpoint_url = v.expansion, duration = 900,
                env = { PATH = path },
            })
            assert.equal("Bearer ca-tok", stored("ca"))
            local args = recorded()
            assert.same({ "codeartifact", "get-authorization-token",
                          "--output", "json" }, { unpack(args, 1, 4) })
            assert.same({
                ["--domain"] = v.backticks, ["--domain-owner"] = v.newline,
                ["--region"] = v.double, ["--profile"] = v.breakout,
                ["--endpoint-url"] = v.expansion,
                ["--duration-seconds"] = "900",
            }, flag_pairs(args, 5))
            assert.is_false(exists(sentinel))
        end)


    describe("an env value with shell syntax", function()
        local function odd()
            local s = sentinel
            return "it's \"$(touch " .. s .. ")\" `touch " .. s .. "`; "
                .. "touch " .. s .. "\n$HOME '\\''"
        end

        it("reaches aws literally from a preset's env", function()
            local value = odd()
            m.rotate("ecr", m.ecr{ env = { PATH = path, ODD = value } })
            assert.equal("Basic QVdTOnB3", stored("ecr"))
            assert.equal(value, read(tmp .. "/env"))
            assert.is_false(exists(sentinel))
        end)

        it("reaches aws literally from rotate()'s env", function()
            local value = odd()
            m.rotate("ecr", m.ecr(), { env = { PATH = path, ODD = value } })
            assert.equal("Basic QVdTOnB3", stored("ecr"))
            assert.equal(value, read(tmp .. "/env"))
            assert.is_false(exists(sentinel))
        end)

        it("reaches a command line literally", function()
            local value = odd()
            local out = tmp .. "/cmd-env"
            m.rotate("cmd", "printf '%s' \"$ODD\" >" .. sh_quote(out)
                .. "; echo tok", { env = { ODD = value } })
            assert.equal("tok", stored("cmd"))
            assert.equal(value, read(out))
            assert.is_false(exists(sentinel))
        end)
    end)
end)
