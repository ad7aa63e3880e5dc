-- The API in real nginx: misuse raised at the caller's line, the 1.0
-- create() and manage(), and what error.log holds at debug level.

local H = require("support.nginx")

local QUERY = "--query 'authorizationData[0].authorizationToken' --output text"


local function ecr_command(stub)
    return "aws ecr get-authorization-token " .. QUERY .. " --endpoint-url "
           .. stub.endpoint
end


describe("misuse in init_worker_by_lua", function()
    local nginx

    teardown(function()
        if nginx then nginx:stop() end
    end)

    it("is an error in error.log at the caller's line", function()
        nginx = H.start({
            workers = 1,
            init_worker = table.concat({
                'local ngx_aws_token = require("ngx_aws_token")',
                "ngx_aws_token.set_storage({})",
            }, "\n"),
        })
        local lines = H.wait_for(function()
            local l = nginx:lines("error")
            return #l > 0 and l
        end, 5)
        assert.truthy(lines, nginx:error_log())
        -- the chunk starts after `init_worker_by_lua_block {`, on that
        -- line: its line 1 is empty, the require is 2, the call is 3
        assert.truthy(lines[1]:find("init_worker_by_lua%(nginx%.conf:%d+%):3:"
                                    .. " set_storage%(%) wants a"
                                    .. " lua_shared_dict"), lines[1])
    end)
end)


describe("create() and manage() from 1.0", function()
    local stub, nginx

    setup(function()
        stub = H.start_stub()
        stub:config({ password = "manage-password" })
        nginx = H.start({
            workers = 1,
            upstream = stub.upstream,
            init_worker = ([[
                local ngx_aws_token = require("ngx_aws_token")
                ngx_aws_token.set_storage(ngx.shared.my_aws_tokens)
                ngx_aws_token.manage("ecr", "%s", function(t)
                    return "Basic " .. t
                end)
            ]]):format(ecr_command(stub)),
            locations = ([[
        location = /_create {
            content_by_lua_block {
                local value, err = require("ngx_aws_token").create(
                    "%s", function(t) return "Bearer " .. t end)
                ngx.say(value or "", "|", err or "")
            }
        }
            ]]):format(ecr_command(stub)),
        })
    end)

    teardown(function()
        if nginx then nginx:stop() end
        if stub then stub:stop() end
    end)

    it("manage() stores one token and runs the command no more", function()
        local want = H.basic("manage-password")
        assert.truthy(H.wait_for(function()
            nginx:get("/v2/")
            local reqs = stub:requests()
            return reqs[#reqs] and reqs[#reqs].authorization == want
        end, 15), nginx:error_log())
        local calls = stub:calls().ecr
        H.sleep(2)
        assert.equal(1, calls)
        assert.equal(1, stub:calls().ecr)
    end)

    it("create() returns the transformed token", function()
        stub:config({ password = "create-password" })
        local status, body = nginx:get("/_create")
        assert.equal(200, status)
        assert.equal("Bearer " .. H.base64("AWS:create-password") .. "|\n",
                     body)
    end)

    it("create() returns nil and the exit status when the CLI fails",
       function()
        stub:config({ fail = { status = 400, code = "InvalidParameter",
                               message = "no" } })
        local _, body = nginx:get("/_create")
        -- botocore's exit status for a service error
        assert.equal("|exit status 254\n", body)
        stub:config({ fail = H.null })
    end)
end)


describe("error.log at debug level", function()
    local stub, nginx

    teardown(function()
        if nginx then nginx:stop() end
        if stub then stub:stop() end
    end)

    it("holds no token in any line of ngx_aws_token's", function()
        stub = H.start_stub()
        stub:config({ password = "debug-password" })
        nginx = H.start({
            workers = 1,
            log_level = "debug",
            upstream = stub.upstream,
            init_worker = ([[
                local ngx_aws_token = require("ngx_aws_token")
                ngx_aws_token.set_storage(ngx.shared.my_aws_tokens)
                ngx_aws_token.rotate("ecr", "%s", { interval = 1,
                    transform = function(t) return "Basic " .. t end })
                ngx_aws_token.rotate("broken",
                    "echo debug-secret-output; echo oops >&2; exit 9",
                    { retry = 1 })
            ]]):format(ecr_command(stub)),
        })
        local token = H.base64("AWS:debug-password")
        assert.truthy(H.wait_for(function()
            nginx:get("/v2/")
            local reqs = stub:requests()
            return reqs[#reqs] and reqs[#reqs].authorization
        end, 15))
        H.sleep(2)

        local ours, failures = 0, 0
        for line in nginx:error_log():gmatch("[^\n]+") do
            if line:find("[lua]", 1, true) then
                ours = ours + 1
                assert.falsy(line:find(token, 1, true), line)
                assert.falsy(line:find("debug-secret-output", 1, true), line)
                if line:find('"broken": exit status 9: oops', 1, true) then
                    failures = failures + 1
                end
            end
        end
        assert.is_true(ours > 0)
        assert.is_true(failures > 0)
    end)
end)


describe("the access_by_lua pattern of nginx/ecr-proxy.conf", function()
    local nginx

    teardown(function()
        if nginx then nginx:stop() end
    end)

    it("answers 503 while there is no token", function()
        nginx = H.start({
            workers = 1,
            init_worker = [[
                local ngx_aws_token = require("ngx_aws_token")
                ngx_aws_token.set_storage(ngx.shared.my_aws_tokens)
                ngx_aws_token.rotate("ecr", "exit 1")
            ]],
            locations = [[
        location = /guarded {
            set $ecr_token "";
            access_by_lua_block {
                local token, err = require("ngx_aws_token").token("ecr")
                if not token then
                    ngx.log(ngx.INFO, "no ECR token: ", err)
                    return ngx.exit(503)
                end
                ngx.var.ecr_token = token
            }
            content_by_lua_block {
                ngx.say("authorized")
            }
        }
            ]],
        })
        local status = nginx:get("/guarded")
        assert.equal(503, status)
        assert.truthy(nginx:error_log():find("no ECR token: not ready", 1,
                                             true))
    end)
end)
