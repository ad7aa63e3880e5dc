-- One rotator across workers, reloads and crashes; commands that never
-- block a worker; refresh() on demand; the status pages. Real nginx.

local cjson = require("cjson.safe")
local H = require("support.nginx")


-- a command that notes each of its runs (start time) in `log`, then
-- prints a token that tells the runs apart
local function noted(log, body)
    return ("echo $(date +%%s.%%N) >> %s; %s; echo tok-$(date +%%s%%N)")
        :format(log, body or "true")
end


local function runs(log)
    local out = {}
    for line in (H.read(log) or ""):gmatch("[^\n]+") do
        out[#out + 1] = tonumber(line)
    end
    return out
end


local function run_log()
    local log = os.tmpname()
    os.execute("chmod 666 " .. log)
    return log
end


local function every_worker(rotate_args)
    return ([[
        local ngx_aws_token = require("ngx_aws_token")
        ngx_aws_token.set_storage(ngx.shared.my_aws_tokens)
        ngx_aws_token.rotate(%s)
    ]]):format(rotate_args)
end


describe("rotate() on every one of 4 workers", function()
    local nginx
    local log = run_log()

    teardown(function()
        if nginx then nginx:stop() end
        os.remove(log)
    end)

    it("runs the command once per refresh, never two at a time", function()
        nginx = H.start({
            workers = 4,
            init_worker = every_worker(('"ecr", "%s", { interval = 2 }')
                :format(noted(log, "sleep 0.3"))),
        })
        H.sleep(9)
        local at = runs(log)
        -- one run, then one every 2 s (+ up to a 0.5 s tick + the run):
        -- 4 or 5 in 9 s; four workers each running would make 4 times so
        assert.is_true(#at >= 3 and #at <= 5, #at .. " runs")
        for i = 2, #at do
            assert.is_true(at[i] - at[i - 1] >= 1.9,
                           ("runs %d and %d %.2f s apart")
                           :format(i - 1, i, at[i] - at[i - 1]))
        end
        assert.same({}, nginx:problems())
    end)
end)


describe("a rotating worker killed with SIGKILL mid-run", function()
    local nginx
    local log = run_log()

    teardown(function()
        if nginx then nginx:stop() end
        os.remove(log)
    end)

    it("leaves the lock to expire; another worker goes on rotating",
       function()
        nginx = H.start({
            workers = 2,
            -- a timeout with room to spare on a busy machine: a run that
            -- timed out would wait out a 30 s retry
            init_worker = every_worker(('"ecr", "%s", { interval = 1, '
                .. 'timeout = 6 }'):format(noted(log, "sleep 1.5"))),
            locations = [[
        location = /_lock {
            content_by_lua_block {
                local holder = ngx.shared.my_aws_tokens:get("\0lock:ecr")
                ngx.say(holder or "")
            }
        }
            ]],
        })
        -- catch a run and the worker that holds its lock
        local pid = H.wait_for(function()
            local _, body = nginx:get("/_lock")
            return (body or ""):match("^(%d+):")
        end, 10)
        assert.truthy(pid, nginx:error_log())
        local before = #runs(log)
        os.execute("kill -9 " .. pid)
        local t0 = os.time()

        -- the lock lasts timeout + 15 s = 21 s; then a worker runs again
        assert.truthy(H.wait_for(function()
            return #runs(log) > before
        end, 30), nginx:error_log())
        assert.is_true(os.time() - t0 <= 23)
        -- and the token keeps coming
        assert.truthy(H.wait_for(function()
            return nginx:state() and nginx:state():match("^ready")
        end, 10), nginx:error_log())
    end)
end)


describe("20 reloads in a row while requests flow", function()
    local stub, nginx
    local log = run_log()

    teardown(function()
        if nginx then nginx:stop() end
        if stub then stub:stop() end
        os.remove(log)
    end)

    it("keep the token for every request and fetch no fresh one again",
       function()
        stub = H.start_stub()
        nginx = H.start({
            workers = 2,
            upstream = stub.upstream,
            init_worker = every_worker(('"ecr", "%s", { interval = 3600 }')
                :format(noted(log))),
        })
        assert.truthy(H.wait_for(function()
            return nginx:state() and nginx:state():match("^ready")
        end, 10))
        stub:reset()

        -- requests every 50 ms in the background while nginx reloads
        local done = os.tmpname()
        os.execute(("(for i in $(seq 160); do curl -s -o /dev/null %s; "
                    .. "sleep 0.05; done; touch %s) >/dev/null 2>&1 &")
                   :format(H.quote(nginx:url("/v2/")), done))
        os.remove(done)
        for _ = 1, 20 do
            local out, ok = nginx:signal("reload")
            assert(ok, out)
            H.sleep(0.3)
        end
        H.wait_for(function() return H.read(done) end, 20)
        os.remove(done)

        local reqs = stub:requests()
        assert.is_true(#reqs >= 100, #reqs .. " requests reached upstream")
        for i, req in ipairs(reqs) do
            assert.truthy(req.authorization, "request " .. i .. " had none")
            assert.equal("tok-", req.authorization:sub(1, 4))
        end
        assert.equal(1, #runs(log))
        -- the old workers' timers ended without a word above notice
        assert.same({}, nginx:problems())
    end)
end)


describe("a 2 s command on a worker of its own", function()
    local nginx

    teardown(function()
        if nginx then nginx:stop() end
    end)

    it("keeps requests waiting no longer than they would anyway",
       function()
        nginx = H.start({
            workers = 1,
            init_worker = every_worker(
                '"ecr", "sleep 2; echo tok", { interval = 0.5 }'),
        })
        -- requests every 50 ms for 5 s, each timed by curl; the command
        -- runs nearly all the time (2 s, then again 0.5 s later)
        local out = H.sh(("for i in $(seq 100); do curl -s -o /dev/null "
                          .. "-w '%%{time_total}\\n' %s; sleep 0.05; done")
                         :format(H.quote(nginx:url("/_state"))))
        local worst, n = 0, 0
        for t in out:gmatch("[%d.]+") do
            n = n + 1
            worst = math.max(worst, tonumber(t))
        end
        print(("\n# slowest of %d requests while the command ran: "
               .. "%.1f ms"):format(n, worst * 1000))
        assert.equal(100, n)
        -- a command run inline would stall a request for up to 2 s
        assert.is_true(worst < 0.5, "slowest " .. worst .. " s")
    end)
end)


describe("refresh()", function()
    local nginx
    local log = run_log()

    teardown(function()
        if nginx then nginx:stop() end
        os.remove(log)
    end)

    it("makes one run out of a burst of 100 calls", function()
        nginx = H.start({
            workers = 2,
            init_worker = every_worker(('"ecr", "%s", { interval = 3600, '
                .. 'cooldown = 1 }'):format(noted(log))),
            locations = [[
        location = /_refresh {
            content_by_lua_block {
                local ngx_aws_token = require("ngx_aws_token")
                for _ = 1, tonumber(ngx.var.arg_n) do
                    assert(ngx_aws_token.refresh("ecr"))
                end
                ngx.say(ngx_aws_token.refresh("nonesuch"))
            }
        }

        location = /_denied {
            return 401;
            log_by_lua_block {
                if ngx.status == 401 or ngx.status == 403 then
                    require("ngx_aws_token").refresh("ecr")
                end
            }
        }
            ]],
        })
        assert.truthy(H.wait_for(function()
            return #runs(log) == 1
        end, 10))
        H.sleep(1.5)

        -- 100 calls over two workers: 50 requests of 2
        for _ = 1, 50 do
            local status, body = nginx:get("/_refresh?n=2")
            assert.equal(200, status)
            assert.equal("nilunknown token\n", body)
        end
        assert.truthy(H.wait_for(function()
            return #runs(log) == 2
        end, 5))
        H.sleep(2)
        assert.equal(2, #runs(log))
    end)

    it("runs again after a 401, as log_by_lua in nginx/ecr-proxy.conf asks",
       function()
        local before = #runs(log)
        for _ = 1, 10 do
            assert.equal(401, (nginx:get("/_denied")))
        end
        assert.truthy(H.wait_for(function()
            return #runs(log) == before + 1
        end, 5))
        H.sleep(1.5)
        assert.equal(before + 1, #runs(log))
    end)
end)


describe("the status pages of nginx/status.conf", function()
    local stub, nginx

    teardown(function()
        if nginx then nginx:stop() end
        if stub then stub:stop() end
    end)

    it("tell the schedule and never the token", function()
        stub = H.start_stub()
        stub:config({ password = "status-password", ttl = 3600 })
        nginx = H.start({
            workers = 2,
            upstream = stub.upstream,
            init_worker = every_worker(('"ecr", ngx_aws_token.ecr({ '
                .. 'endpoint_url = "%s" })'):format(stub.endpoint)),
        })
        assert.truthy(H.wait_for(function()
            return nginx:state() and nginx:state():match("^ready")
        end, 15))
        local now = os.time()
        local token = H.base64("AWS:status-password")

        local status, body = nginx:get("/ngx_aws_token/status")
        assert.equal(200, status)
        assert.falsy(body:find(token, 1, true))
        local st = assert(cjson.decode(body)).ecr
        assert.truthy(math.abs(st.fetched_at - now) < 10)
        -- the stub's ttl: 3600 s after it answered
        assert.truthy(math.abs(st.expires_at - (st.fetched_at + 3600)) < 5)
        -- a quarter of the lifetime before expiry, up to 180 s earlier
        local due = st.fetched_at + 2700
        assert.truthy(st.next_refresh <= due + 2
                      and st.next_refresh >= due - 180 - 2, body)
        assert.equal(0, st.failures)
        assert.equal("background", st.runner)
        assert.equal(false, st.running)

        local _, metrics = nginx:get("/ngx_aws_token/metrics")
        assert.falsy(metrics:find(token, 1, true))
        local exp = metrics:match('ngx_aws_token_expires_at_seconds'
                                  .. '{token="ecr"} ([%d.]+)')
        assert.truthy(math.abs(tonumber(exp) - st.expires_at) < 0.01)
        assert.truthy(metrics:find(
            '# TYPE ngx_aws_token_failures gauge\n'
            .. 'ngx_aws_token_failures{token="ecr"} 0.000', 1, true))

        -- from another loopback address, 127.0.0.2: 403
        local denied = H.sh("curl -s -o /dev/null -w '%{http_code}' "
                            .. "--interface 127.0.0.2 "
                            .. H.quote(nginx:url("/ngx_aws_token/status")))
        assert.equal("403", denied)
    end)
end)
