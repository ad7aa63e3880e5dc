-- What a production trial of the module turned up: commands that read the
-- same in every worker, the lock kept until the schedule is written, no
-- part of a token in a log, a full dict that must not cause fetch storms,
-- and the runner's sweep of leftover directories.

local fake_ngx = require "support.fake_ngx"

local EPOCH = fake_ngx.EPOCH


describe("on a virtual clock", function()
    local fake, pipe, m

    before_each(function()
        fake, pipe, m = fake_ngx.worker_with_pipe()
    end)


    it("a preset's options and env come out in the order of their names",
        function()
            -- pairs() order differs from one LuaJIT VM (worker) to the
            -- next; what a job runs must not, or a reload refetches
            local opts = {}
            opts.region = "eu-west-1"
            opts.registry_id = "123456789012"
            opts.profile = "p"
            opts.endpoint_url = "http://127.0.0.1:1"
            opts.env = {}
            opts.env.CCC, opts.env.AAA, opts.env.BBB = "3", "1", "2"
            m.rotate("ecr", m.ecr(opts))
            fake.advance(0)

            local argv = pipe.spawned[1].argv
            assert.same({ "sh", "aws", "ecr", "get-authorization-token",
                          "--output", "json",
                          "--endpoint-url", "http://127.0.0.1:1",
                          "--profile", "p",
                          "--region", "eu-west-1",
                          "--registry-ids", "123456789012" },
                        { unpack(argv, 4) })
            local script = argv[3]
            local a = script:find("AAA=", 1, true)
            local b = script:find("BBB=", 1, true)
            local c = script:find("CCC=", 1, true)
            assert.truthy(a and b and c and a < b and b < c, script)
        end)


    it("rotate() lets go of the lock only once the next fetch is written",
        function()
            local dict = ngx.shared.tokens
            local methods = getmetatable(dict).__index
            local real_delete = methods.delete
            local due_then
            methods.delete = function(self, key)
                if key == "\0lock:ecr" then
                    due_then = self:get("\0due:ecr")
                end
                return real_delete(self, key)
            end
            local ok, err = pcall(function()
                m.rotate("ecr", "aws x", { interval = 60 })
                fake.advance(0)
            end)
            methods.delete = real_delete
            assert(ok, err)
            -- another worker that takes the lock at once finds 60 s away
            assert.equal(EPOCH + 60, due_then)
        end)


    describe("keeps out of the log and the status", function()
        it("a part of the token that a transform's error quotes",
            function()
                pipe.push{ stdout = "GOOD-TOKEN-AAAAAAAAAAAA\n" }
                pipe.push{ stdout = "SECRET-TOKEN-0123456789abcdef\n" }
                m.rotate("ecr", "aws x", {
                    interval = 10,
                    transform = function(t)
                        if t:find("SECRET", 1, true) then
                            error("bad token: " .. t:sub(8))
                        end
                        return t
                    end,
                })
                fake.advance(0)
                fake.advance(10)
                local text = fake.log_text()
                -- t:sub(8) is "TOKEN-0123456789abcdef"
                assert.falsy(text:find("0123456789abcdef", 1, true), text)
                assert.truthy(text:find("<redacted>", 1, true), text)
                local err = m.status("ecr").last_error
                assert.falsy(err:find("0123456789abcdef", 1, true), err)
            end)

        it("one line of a two-line output that stderr repeats", function()
            pipe.push{
                status = 1,
                stdout = "first-line-AAAAAAAAAAAA\nsecond-line-BBBBBBBBBBBB\n",
                stderr = "unexpected: second-line-BBBBBBBBBBBB\n",
            }
            m.rotate("ecr", "aws x", { retry = 10 })
            fake.advance(0)
            local text = fake.log_text()
            assert.falsy(text:find("BBBBBBBBBBBB", 1, true), text)
            assert.truthy(text:find("unexpected: <redacted>", 1, true), text)
        end)

        it("a dotted (JWT-like) token's parts", function()
            local jwt = "eyJhbGciOi.eyJzdWIiOiIx.SflKxwRJSM"
            pipe.push{ status = 1, stdout = jwt .. "\n",
                       stderr = "rejected " .. jwt:sub(3) .. "\n" }
            m.rotate("ecr", "aws x", { retry = 10 })
            fake.advance(0)
            local text = fake.log_text()
            assert.falsy(text:find("hbGciOi", 1, true), text)
            assert.truthy(text:find("rejected <redacted>", 1, true), text)
        end)

        it("nothing that only looks like a token", function()
            -- words of the stderr that the output does not hold stay
            pipe.push{
                status = 254,
                stdout = "SOMETOKEN-ZZZZZZZZZZZZ\n",
                stderr = "An error occurred (AccessDeniedException)\n",
            }
            m.rotate("ecr", "aws x", { retry = 10 })
            fake.advance(0)
            assert.truthy(fake.log_text():find("AccessDeniedException", 1,
                                               true))
        end)
    end)


    it("refetches a token the dict lost no more often than every `retry`",
        function()
            m.rotate("ecr", "aws x", { interval = 3600, retry = 30 })
            fake.advance(0)
            -- a dict too small keeps losing it: every 0.5 s for 60 s
            for _ = 1, 120 do
                ngx.shared.tokens:delete("ecr")
                fake.advance(0.5)
            end
            -- fetched at 0, then at 30 and 60, not at every look
            assert.equal(3, #pipe.spawned)
        end)


    it("manage(): a worker started after the token expired fetches again",
        function()
            local function transform(t)
                return t, ngx.now() + 100
            end
            m.manage("ecr", "aws x", transform)
            fake.advance(0)
            fake.advance(150)
            assert.equal(1, #pipe.spawned)
            assert.same({ nil, "expired" }, { m.token("ecr") })

            local w2 = fake.load()
            w2.set_storage(ngx.shared.tokens)
            w2.manage("ecr", "aws x", transform)
            fake.advance(0.5)
            assert.equal(2, #pipe.spawned)
            assert.equal("tok", w2.token("ecr"))
        end)


    it("a preset option that must be a string raises for a number",
        function()
            -- 012345678910 as a number would lose its leading zero
            assert.has_error(function()
                m.ecr({ registry_id = 12345678910 })
            end)
            local ok, err = pcall(m.codeartifact,
                                  { domain = "d", duration = "900" })
            assert.is_false(ok)
            assert.truthy(err:find("is not a number", 1, true), err)
        end)
end)


describe("the background runner's sweep", function()
    local fake, m, base
    local WORKDIR = os.execute("test -d /dev/shm -a -w /dev/shm") == 0
        and "/dev/shm" or "/tmp"

    local function exists(path)
        return os.execute("test -e '" .. path .. "'") == 0
    end

    before_each(function()
        fake = fake_ngx.install{ real_clock = true }
        m = fake.load()
        m.set_storage(ngx.shared.tokens)
        base = WORKDIR .. "/ngx_aws_token.sweep-spec-" .. ngx.worker.pid()
    end)

    after_each(function()
        fake.shutdown()
        os.execute("rm -rf " .. base .. "-*")
    end)

    it("removes what runs left 10 minutes after they ended, and no run "
        .. "still going on", function()
            local ended_old = base .. "-ended-old"
            local ended_new = base .. "-ended-new"
            local running = base .. "-running-old"
            os.execute("mkdir -p " .. ended_old .. " " .. ended_new .. " "
                       .. running)
            os.execute("touch " .. ended_new .. "/done")
            os.execute("touch -d '20 minutes ago' " .. ended_old .. "/done")
            os.execute("touch -d '20 minutes ago' " .. running .. "/out "
                       .. running)

            m.rotate("ecr", "printf tok")
            assert.truthy(fake.run_until(function()
                return m.token("ecr")
            end))
            -- the sweep runs in the background; give it a moment
            fake_ngx.sleep(0.5)
            assert.is_false(exists(ended_old))
            assert.is_true(exists(ended_new))
            assert.is_true(exists(running))
        end)
end)
