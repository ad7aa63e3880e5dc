-- ngx_aws_token in real nginx: the 1.0 README's configuration, the real
-- AWS CLI against the ECR stub, and an upstream that records what it got.

local H = require("support.nginx")

-- the 1.0 README's command line is as long as it was there
-- luacheck: push ignore 631

-- The 1.0 README's second example, as written there, with the CLI aimed at
-- the stub. Worker 0 alone calls set_storage() and rotate().
local function readme_example(endpoint, interval)
    return ([[
    if ngx.worker.id() ~= 0 then
        return
    end

    local ngx_aws_token = require("ngx_aws_token")
    ngx_aws_token.set_storage(ngx.shared.my_aws_tokens)
    %s

    local token_name = "ecr"
    local token_command = "aws ecr get-authorization-token --query 'authorizationData[*].authorizationToken' --output text --endpoint-url %s"

    ngx_aws_token.rotate(token_name, token_command, function (token)
        return "Basic " .. token
    end)
]]):format(interval and ("ngx_aws_token.set_interval(" .. interval .. ")")
           or "", endpoint)
end
-- luacheck: pop


describe("the 1.0 README configuration", function()
    local stub, nginx

    setup(function()
        stub = H.start_stub()
        stub:config({ password = "first-password" })
        nginx = H.start({
            init_worker = readme_example(stub.endpoint, 3),
            upstream = stub.upstream,
            workers = 2,
        })
    end)

    teardown(function()
        if nginx then nginx:stop() end
        if stub then stub:stop() end
    end)

    it("proxies with Authorization: Basic <token from the AWS CLI>",
       function()
        local want = H.basic("first-password")
        local ready = H.wait_for(function()
            local _, body = nginx:get("/_state")
            return body and body:find("^%d+ ready")
        end, 15)
        assert.truthy(ready, nginx:error_log())

        local status, body = nginx:get("/v2/")
        assert.equal(200, status)
        assert.equal("upstream ok\n", body)
        assert.equal(want, stub:last_auth())
    end)

    it("finds the token on the workers that returned before set_storage()",
       function()
        local seen = {}
        for _ = 1, 200 do
            local _, body = nginx:get("/_state")
            local id, state = (body or ""):match("^(%d+) (.-)\n")
            if id then
                seen[id] = state
            end
            if seen["0"] and seen["1"] then
                break
            end
        end
        -- "Basic " plus base64 of "AWS:first-password" (18 bytes -> 24)
        assert.equal("ready 30", seen["0"])
        assert.equal("ready 30", seen["1"])
    end)

    it("follows a new token once the interval has passed", function()
        stub:config({ password = "second-password" })
        local want = H.basic("second-password")
        local got = H.wait_for(function()
            nginx:get("/v2/")
            return stub:last_auth() == want
        end, 15)
        assert.truthy(got, "upstream gets " .. tostring(stub:last_auth()))
    end)

    it("runs its workers as nobody with no AWS_* variable but those kept",
       function()
        if not H.IS_ROOT then
            pending("needs root to start workers as nobody")
            return
        end
        for _, pid in ipairs(nginx:workers()) do
            local user = H.sh("ps -o user= -p " .. pid)
            assert.equal("nobody", user:match("%S+"))
        end
        -- nginx keeps only TZ and what `env` names: no HOME, no PATH
        local _, env = nginx:get("/_env")
        assert.equal(table.concat({
            "HOME unset", "PATH unset", "AWS_ACCESS_KEY_ID set",
            "AWS_SECRET_ACCESS_KEY set", "AWS_DEFAULT_REGION set", "",
        }, "\n"), env)
    end)

    it("logs no warning or error and never the token", function()
        assert.same({}, nginx:problems())
        local log = nginx:error_log()
        assert.falsy(log:find(H.base64("AWS:first-password"), 1, true))
        assert.falsy(log:find(H.base64("AWS:second-password"), 1, true))
    end)
end)
