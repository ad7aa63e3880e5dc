-- The presets and the expiry-aware schedule in real nginx, with the real
-- AWS CLI against the ECR / CodeArtifact stub.

local H = require("support.nginx")


local function start(stub, rotate_args, opts)
    opts = opts or {}
    return H.start({
        workers = 1,
        upstream = stub.upstream,
        keep_env = opts.keep_env,
        init_worker = ([[
            local ngx_aws_token = require("ngx_aws_token")
            ngx_aws_token.set_storage(ngx.shared.my_aws_tokens)
            ngx_aws_token.rotate(%s)
        ]]):format(rotate_args),
    })
end


describe("ecr()", function()
    local stub, nginx

    after_each(function()
        if nginx then nginx:stop() end
        if stub then stub:stop() end
        nginx, stub = nil, nil
    end)

    it("proxies Basic <token> from the CLI's JSON, asking the region given",
       function()
        stub = H.start_stub()
        stub:config({ password = "preset-password" })
        nginx = start(stub, ([["ecr", ngx_aws_token.ecr({
                endpoint_url = "%s", region = "eu-west-1" })]])
            :format(stub.endpoint))
        local want = H.basic("preset-password")
        assert.truthy(H.wait_for(function()
            nginx:get("/v2/")
            return stub:last_auth() == want
        end, 15), nginx:error_log())
        -- the region reached the CLI: it signs for it (SigV4 scope)
        assert.equal("eu-west-1", stub:calls().last_region)
        assert.same({}, nginx:problems())
    end)

    it("refreshes a 6 s token before it expires, and lets it expire when "
       .. "every refresh fails", function()
        stub = H.start_stub()
        stub:config({ password = "short-lived", ttl = 6 })
        nginx = start(stub, ([["ecr", ngx_aws_token.ecr({
                endpoint_url = "%s" }), { retry = 1, retry_max = 1 }]])
            :format(stub.endpoint))
        -- "Basic " and base64 of the 15 bytes "AWS:short-lived": 6 + 20
        local ready = "ready 26"
        assert.truthy(H.wait_for(function()
            return nginx:state() == ready
        end, 15), nginx:error_log())
        -- the stub's clock: the token it handed out expires 6 s after
        local first = stub:calls().ecr
        -- a 4xx answer: the CLI does not retry it itself
        stub:config({ fail = { status = 400, code = "AccessDeniedException",
                               message = "denied" } })
        local t0 = os.time()

        -- 1/4 of 6 s left: a refresh is tried about 4.5 s after the fetch
        assert.truthy(H.wait_for(function()
            return stub:calls().ecr > first
        end, 6))
        assert.equal(ready, nginx:state())

        assert.truthy(H.wait_for(function()
            return nginx:state() == "expired"
        end, 10))
        assert.is_true(os.time() - t0 >= 3)
        nginx:get("/v2/")
        assert.is_nil(stub:last_auth())
        assert.truthy(H.wait_for(function()
            return #nginx:warnings("AccessDeniedException") > 0
        end, 5))
    end)

    it("follows a new token within the refresh window", function()
        stub = H.start_stub()
        stub:config({ password = "window-one", ttl = 4 })
        nginx = start(stub, ([["ecr", ngx_aws_token.ecr({
                endpoint_url = "%s" })]]):format(stub.endpoint))
        assert.truthy(H.wait_for(function()
            nginx:get("/v2/")
            return stub:last_auth() == H.basic("window-one")
        end, 15))
        stub:config({ password = "window-two" })
        -- refreshed 3 s after each fetch, plus the CLI's own second
        assert.truthy(H.wait_for(function()
            nginx:get("/v2/")
            return stub:last_auth() == H.basic("window-two")
        end, 8))
    end)

    it("reads cli_timestamp_format = wire (epoch numbers) the same way",
       function()
        stub = H.start_stub()
        stub:config({ ttl = 4 })
        local conf = os.tmpname()
        local f = assert(io.open(conf, "w"))
        f:write("[default]\ncli_timestamp_format = wire\n")
        f:close()
        os.execute("chmod 644 " .. conf)
        nginx = start(stub, ([["ecr", ngx_aws_token.ecr({
                endpoint_url = "%s", env = { AWS_CONFIG_FILE = "%s" } })]])
            :format(stub.endpoint, conf))
        -- a 4 s token is fetched again after about 3 s; were the expiry
        -- not understood, the next fetch would be 6 h away
        assert.truthy(H.wait_for(function()
            return stub:calls().ecr >= 3
        end, 15), nginx:error_log())
        os.remove(conf)
        assert.same({}, nginx:problems())
    end)
end)


describe("codeartifact()", function()
    local stub, nginx

    teardown(function()
        if nginx then nginx:stop() end
        if stub then stub:stop() end
    end)

    it("proxies Bearer <token> for the domain, owner and duration given",
       function()
        stub = H.start_stub()
        stub:config({ codeartifact_token = "ca-token-value" })
        nginx = start(stub, ([["ecr", ngx_aws_token.codeartifact({
                domain = "my-domain", domain_owner = "111122223333",
                duration = 900, endpoint_url = "%s" })]])
            :format(stub.endpoint))
        assert.truthy(H.wait_for(function()
            nginx:get("/v2/")
            return stub:last_auth() == "Bearer ca-token-value"
        end, 15), nginx:error_log())
        local q = stub:calls().last_query
        assert.equal("my-domain", q.domain)
        assert.equal("111122223333", q["domain-owner"])
        assert.equal("900", q.duration)
    end)
end)


describe("a command that fails the way the AWS CLI v2 does", function()
    local stub, nginx

    after_each(function()
        if nginx then nginx:stop() end
        if stub then stub:stop() end
        nginx, stub = nil, nil
    end)

    it("logs 252 and the usage text for `aws ecr get-login`", function()
        stub = H.start_stub()
        nginx = start(stub, ([["ecr",
            "aws ecr get-login --endpoint-url %s", { retry = 60 }]])
            :format(stub.endpoint))
        local lines = H.wait_for(function()
            local l = nginx:warnings("exit status 252")
            return #l > 0 and l
        end, 15)
        assert.truthy(lines, nginx:error_log())
        -- get-login is gone from v2: the CLI prints its usage
        assert.truthy(lines[1]:find("usage: aws", 1, true), lines[1])
        assert.equal("not ready", nginx:state())
    end)

    it("kills a CLI call that hangs past `timeout` and retries", function()
        stub = H.start_stub()
        stub:config({ delay_ms = 20000 })
        nginx = start(stub, ([["ecr", ngx_aws_token.ecr({
                endpoint_url = "%s" }), { timeout = 2, retry = 60 }]])
            :format(stub.endpoint))
        local lines = H.wait_for(function()
            local l = nginx:warnings("timed out after 2 s")
            return #l > 0 and l
        end, 15)
        assert.truthy(lines, nginx:error_log())
        assert.truthy(lines[1]:find("`timeout`", 1, true))
        -- the CLI and its shell are gone, not left to finish
        -- ([e] keeps pgrep from finding its own shell's command line)
        local left = H.sh("pgrep -f '[e]ndpoint-url " .. stub.endpoint
                          .. "' || true")
        assert.equal("", left)
    end)
end)
