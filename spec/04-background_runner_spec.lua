-- Without ngx.pipe (stock nginx, Debian's lua-resty-core) commands run in
-- the background through the real /bin/sh and are collected by polling.
-- The clock here is the real one: each wait is bounded (10 s at most).

local fake_ngx = require "support.fake_ngx"
local util = require "support.util"


local sh, read = util.sh, util.read



-- Whether process `pid` still runs (a zombie has ended: it only waits
-- for a parent to reap it, and PID 1 in a container may never do so).
local function alive(pid)
    if os.execute("kill -0 " .. pid .. " 2>/dev/null") ~= 0 then
        return false
    end
    local stat = read("/proc/" .. pid .. "/stat")
    return stat ~= nil and stat:match("^%d+ %b() (%a)") ~= "Z"
end


local function exists(path)
    return os.execute("test -e '" .. path .. "'") == 0
end


-- tmpfs when there is one, so a token never reaches a disk
local WORKDIR = os.execute("test -d /dev/shm -a -w /dev/shm") == 0
    and "/dev/shm" or "/tmp"


describe("the background runner", function()
    local fake, m, tmp, pid

    -- the module's directories for this worker, now
    local function run_dirs()
        local out = sh("ls -d " .. WORKDIR .. "/ngx_aws_token." .. pid
            .. ".* 2>/dev/null")
        local dirs = {}
        for dir in out:gmatch("[^\n]+") do
            dirs[#dirs + 1] = dir
        end
        return dirs
    end

    local function warned()
        return #fake.logged(ngx.WARN) > 0
    end

    before_each(function()
        fake = fake_ngx.install{ real_clock = true }
        pid = ngx.worker.pid()
        m = fake.load()
        m.set_storage(ngx.shared.tokens)
        tmp = sh("mktemp -d")
        assert.truthy(tmp:find("^/"))
    end)

    after_each(function()
        fake.shutdown()
        -- a test that failed may leave its own command's processes
        for _, name in ipairs({ "shell", "child" }) do
            local p = (read(tmp .. "/" .. name) or ""):match("%d+")
            if p and alive(p) then
                os.execute("kill -9 " .. p)
            end
        end
        os.execute("rm -rf '" .. tmp .. "'")
    end)


    it("runs when ngx.pipe cannot be loaded", function()
        assert.is_false((pcall(require, "ngx.pipe")))
        m.rotate("ecr", "printf tok")
        assert.truthy(fake.run_until(function() return m.token("ecr") end))
    end)


    it("starts no command before the first timer fires", function()
        local shell = tmp .. "/shell"
        m.rotate("ecr", "echo $$ >" .. shell)
        fake_ngx.sleep(0.3)
        assert.is_nil(read(shell))
        assert.truthy(fake.run_until(function() return read(shell) end))
    end)


    it("captures the exit status", function()
        m.rotate("ecr", "exit 7", { retry = 30 })
        assert.truthy(fake.run_until(warned))
        local msg = fake.logged(ngx.WARN)[1]
        assert.truthy(msg:find('"ecr"', 1, true), msg)
        assert.truthy(msg:find("exit status 7", 1, true), msg)
        assert.same({ nil, "not ready" }, { m.token("ecr") })
    end)


    it("captures stdout, trimmed", function()
        m.rotate("ecr", [[printf '  tok-123 \n\n']])
        assert.truthy(fake.run_until(function() return m.token("ecr") end))
        assert.equal("tok-123", m.token("ecr"))
    end)


    it("logs an excerpt of stderr", function()
        m.rotate("ecr", "echo 'AccessDenied: not allowed' >&2; exit 3")
        assert.truthy(fake.run_until(warned))
        local msg = fake.logged(ngx.WARN)[1]
        assert.truthy(msg:find("AccessDenied: not allowed", 1, true), msg)
        assert.truthy(msg:find("exit status 3", 1, true), msg)
    end)


    it("kills a command that runs past `timeout`, children too",
        function()
            local shell, child = tmp .. "/shell", tmp .. "/child"
            local cmd = "echo $$ >" .. shell .. "; sleep 30 & echo $! >"
                .. child .. "; wait"
            local t0 = ngx.now()
            m.rotate("ecr", cmd, { timeout = 1, retry = 30 })
            assert.truthy(fake.run_until(warned))
            assert.is_true(ngx.now() - t0 >= 1)
            local msg = fake.logged(ngx.WARN)[1]
            assert.truthy(msg:find("timed out", 1, true), msg)

            local pids = { read(shell):match("%d+"), read(child):match("%d+") }
            assert.equal(2, #pids)
            local gone = fake.run_until(function()
                return not alive(pids[1]) and not alive(pids[2])
            end, 3)
            assert.is_false(alive(pids[1]), "the command's shell")
            assert.is_false(alive(pids[2]), "its child")
            assert.truthy(gone)
        end)


    it("runs the command in a 0700 directory it removes afterwards",
        function()
            assert.same({}, run_dirs())
            m.rotate("ecr", "sleep 1; echo tok-dir")
            local dirs
            assert.truthy(fake.run_until(function()
                dirs = run_dirs()
                return #dirs == 1 and exists(dirs[1] .. "/out")
            end, 5))
            local uid = sh("id -u")
            assert.equal("700 " .. uid, sh("stat -c '%a %u' " .. dirs[1]))
            assert.equal("600", sh("stat -c %a " .. dirs[1] .. "/out"))

            assert.truthy(fake.run_until(function()
                return m.token("ecr")
            end))
            assert.equal("tok-dir", m.token("ecr"))
            assert.is_false(exists(dirs[1]))
        end)


    it("kills running commands, children too, and removes their files "
        .. "at worker exit", function()
            local shell, child = tmp .. "/shell", tmp .. "/child"
            local cmd = "echo $$ >" .. shell .. "; sleep 30 & echo $! >"
                .. child .. "; wait"
            m.rotate("ecr", cmd)
            assert.truthy(fake.run_until(function()
                return (read(child) or ""):match("%d+")
            end, 5))
            local dirs = run_dirs()
            assert.equal(1, #dirs)

            fake.shutdown()
            local pids = { read(shell):match("%d+"), read(child):match("%d+") }
            fake_ngx.sleep(0.5)
            assert.is_false(alive(pids[1]), "the command's shell")
            assert.is_false(alive(pids[2]), "its child")
            assert.is_false(exists(dirs[1]))
        end)


    describe("create()", function()
        it("returns the trimmed output", function()
            assert.same({ "v1" }, { m.create("printf 'v1\\n'") })
        end)

        it("applies the transform", function()
            local function basic(s) return "Basic " .. s end
            assert.same({ "Basic abc" }, { m.create("echo abc", basic) })
        end)

        it("returns nil and the exit status for a failure", function()
            local value, err = m.create("exit 3")
            assert.is_nil(value)
            assert.truthy(err:find("exit status 3", 1, true), err)
        end)

        it("returns nil and a reason for empty output", function()
            local value, err = m.create("true")
            assert.is_nil(value)
            assert.truthy(err:find("empty", 1, true), err)
        end)

        it("leaves no directory behind", function()
            m.create("echo x")
            m.create("exit 3")
            assert.same({}, run_dirs())
        end)
    end)
end)
