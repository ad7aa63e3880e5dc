-- What a failed, empty or malformed fetch does in real nginx: the token in
-- the dict stays, error.log says why, and never shows a token.

local H = require("support.nginx")

local QUERY = "--query 'authorizationData[*].authorizationToken' --output text"

local function rotate_block(endpoint, extra)
    return ([[
    local ngx_aws_token = require("ngx_aws_token")
    ngx_aws_token.set_storage(ngx.shared.my_aws_tokens)
    if ngx.worker.id() == 0 then
        ngx_aws_token.rotate("ecr",
            "aws ecr get-authorization-token %s --endpoint-url %s %s",
            { interval = 2, retry = 1, transform = function(t)
                return "Basic " .. t
            end })
    end
]]):format(QUERY, endpoint, extra or "")
end


describe("a failed refresh in nginx", function()
    local stub, nginx

    setup(function()
        stub = H.start_stub()
        stub:config({ password = "good-password" })
        nginx = H.start({
            init_worker = rotate_block(stub.endpoint),
            upstream = stub.upstream,
        })
        assert(H.wait_for(function()
            nginx:get("/v2/")
            return stub:last_auth() == H.basic("good-password")
        end, 15), "no first token: " .. nginx:error_log())
    end)

    teardown(function()
        if nginx then nginx:stop() end
        if stub then stub:stop() end
    end)

    it("keeps the token when the CLI exits 254 on a service error",
       function()
        stub:config({ password = "never-served", fail = {
            status = 500, code = "ServerException",
            message = "stub outage" } })
        -- botocore's error line, and the CLI's exit status for it (254)
        local lines = H.wait_for(function()
            local l = nginx:warnings("exit status 254")
            return #l > 0 and l
        end, 20)
        assert.truthy(lines, nginx:error_log())
        assert.truthy(lines[1]:find('token "ecr"', 1, true))
        assert.truthy(lines[1]:find("ServerException", 1, true))
        assert.truthy(lines[1]:find("retrying in 1 s", 1, true))

        nginx:get("/v2/")
        assert.equal(H.basic("good-password"), stub:last_auth())
    end)

    it("keeps the token when the CLI prints nothing and exits 0", function()
        -- ECR answering with no authorizationData: the text query prints
        -- an empty line, exit status 0
        stub:config({ fail = H.null, empty = true })
        local lines = H.wait_for(function()
            local l = nginx:warnings("empty output")
            return #l > 0 and l
        end, 20)
        assert.truthy(lines, nginx:error_log())
        nginx:get("/v2/")
        assert.equal(H.basic("good-password"), stub:last_auth())
    end)

    it("recovers with the next good answer", function()
        stub:config({ empty = false, fail = H.null,
                      password = "new-password" })
        assert.truthy(H.wait_for(function()
            nginx:get("/v2/")
            return stub:last_auth() == H.basic("new-password")
        end, 20))
    end)

    it("never writes a token into error.log", function()
        local log = nginx:error_log()
        for _, pw in ipairs({ "good-password", "never-served",
                              "new-password" }) do
            assert.falsy(log:find(H.base64("AWS:" .. pw), 1, true))
        end
    end)
end)


describe("output that would break the header", function()
    local stub, nginx

    teardown(function()
        if nginx then nginx:stop() end
        if stub then stub:stop() end
    end)

    it("is refused: two registries print two tokens with a TAB between",
       function()
        stub = H.start_stub()
        nginx = H.start({
            init_worker = rotate_block(stub.endpoint,
                "--registry-ids 111111111111 222222222222"),
            upstream = stub.upstream,
        })
        local lines = H.wait_for(function()
            local l = nginx:warnings("control characters")
            return #l > 0 and l
        end, 20)
        assert.truthy(lines, nginx:error_log())
        local _, state = nginx:get("/_state")
        assert.truthy(state:find("not ready", 1, true))
        assert.falsy(nginx:error_log():find(H.base64("AWS:stub-password-1"),
                                           1, true))
    end)
end)


describe("a worker without credentials", function()
    local stub, nginx

    teardown(function()
        if nginx then nginx:stop() end
        if stub then stub:stop() end
    end)

    it("logs the CLI's 253 and names the env directive to add", function()
        stub = H.start_stub()
        -- the master has credentials, but no `env` keeps them for workers
        nginx = H.start({
            init_worker = rotate_block(stub.endpoint),
            upstream = stub.upstream,
            keep_env = { "AWS_DEFAULT_REGION", "AWS_EC2_METADATA_DISABLED" },
        })
        local lines = H.wait_for(function()
            local l = nginx:warnings("exit status 253")
            return #l > 0 and l
        end, 20)
        assert.truthy(lines, nginx:error_log())
        assert.truthy(lines[1]:find("Unable to locate credentials", 1, true))
        assert.truthy(lines[1]:find("`env HOME;`", 1, true))
        assert.equal(0, stub:calls().ecr)
    end)
end)


describe("a 6,000-character ECR token", function()
    local stub, nginx

    teardown(function()
        if nginx then nginx:stop() end
        if stub then stub:stop() end
    end)

    it("reaches the upstream intact", function()
        stub = H.start_stub()
        -- the stub pads the password so its base64 is 6000 characters
        stub:config({ token_length = 6000 })
        nginx = H.start({
            init_worker = rotate_block(stub.endpoint),
            upstream = stub.upstream,
        })
        local auth = H.wait_for(function()
            nginx:get("/v2/")
            return stub:last_auth()
        end, 20)
        assert.truthy(auth, nginx:error_log())
        assert.equal(6 + 6000, #auth)
        assert.equal("Basic ", auth:sub(1, 6))
        -- base64 of "AWS:" is "QVdTO" followed by the password's bits
        assert.equal("QVdTO", auth:sub(7, 11))
        assert.same({}, nginx:problems())
    end)
end)


describe("a command running when nginx stops", function()
    local nginx
    local pid_file = os.tmpname()

    teardown(function()
        local pid = H.read(pid_file)
        if pid and pid:match("%d+") then
            -- the command leads its own process group (setsid)
            os.execute("kill -9 -" .. pid:match("%d+") .. " 2>/dev/null")
        end
        os.remove(pid_file)
        if nginx then nginx:stop() end
    end)

    it("holds none of nginx's sockets, so nginx starts again at once",
       function()
        os.execute("chmod 666 " .. pid_file)
        nginx = H.start({
            workers = 1,
            init_worker = ([[
                local ngx_aws_token = require("ngx_aws_token")
                ngx_aws_token.set_storage(ngx.shared.my_aws_tokens)
                ngx_aws_token.rotate("slow",
                    "echo $$ > %s; sleep 30; echo late")
            ]]):format(pid_file),
        })
        local pid = H.wait_for(function()
            return (H.read(pid_file) or ""):match("%d+")
        end, 10)
        assert.truthy(pid, nginx:error_log())

        local fds = H.sh("ls -l /proc/" .. pid .. "/fd 2>&1")
        assert.falsy(fds:find("socket:", 1, true), fds)

        -- `stop` leaves the command running; it must not keep the port
        local out, ok = nginx:restart("stop")
        assert.is_true(ok, out)
        assert.equal(200, (nginx:get("/_state")))
        assert.equal("0", H.sh("kill -0 " .. pid .. " 2>/dev/null; echo $?")
                          :match("%d"))
    end)
end)
