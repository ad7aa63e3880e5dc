-- Starts the AWS endpoint stub and real nginx for the integration specs,
-- each on 127.0.0.1 in a temporary prefix, and talks to them with curl.

local cjson = require("cjson.safe")

local _M = {}

--- JSON null, to clear a stub setting.
_M.null = cjson.null

local ROOT = assert(io.popen("pwd")):read("*l")
_M.ROOT = ROOT

math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)"), 16))

local IS_ROOT = assert(io.popen("id -u")):read("*l") == "0"
_M.IS_ROOT = IS_ROOT


local function quote(s)
    return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
_M.quote = quote


--- Runs a shell command; returns its stdout and whether it exited 0.
local function sh(cmd)
    local f = assert(io.popen(cmd .. "; echo \"rc=$?\""))
    local out = f:read("*a")
    f:close()
    local body, rc = out:match("^(.*)rc=(%d+)\n$")
    return body, rc == "0"
end
_M.sh = sh


local function sleep(s)
    os.execute("sleep " .. s)
end
_M.sleep = sleep


local function read(path)
    local f = io.open(path, "rb")
    if not f then
        return nil
    end
    local data = f:read("*a")
    f:close()
    return data
end
_M.read = read


local function write(path, data)
    local f = assert(io.open(path, "wb"))
    f:write(data)
    f:close()
end


--- Polls `fn` every 0.1 s until it returns a true value or `timeout`
--- seconds pass; returns what it returned last.
function _M.wait_for(fn, timeout)
    local deadline = os.time() + (timeout or 10)
    local res
    repeat
        res = fn()
        if res then
            return res
        end
        sleep(0.1)
    until os.time() > deadline
    return res
end


--- An HTTP request with curl: returns status, body.
local function http(method, url, body)
    local cmd = "curl -s -m 20 -o - -w '\\n%{http_code}' -X " .. method
    if body then
        cmd = cmd .. " -H 'Content-Type: application/json' --data-binary "
              .. quote(body)
    end
    local out = sh(cmd .. " " .. quote(url))
    local text, status = (out or ""):match("^(.*)\n(%d+)$")
    return tonumber(status), text
end
_M.http = http


--- "Basic " and base64("AWS:" .. password): what ECR's token is.
function _M.basic(password)
    return "Basic " .. _M.base64("AWS:" .. password)
end


--- base64, written out here so the specs don't trust the stub's encoder.
function _M.base64(s)
    local chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                  .. "0123456789+/"
    local out = {}
    for i = 1, #s, 3 do
        local a, b, c = s:byte(i, i + 2)
        local n = a * 65536 + (b or 0) * 256 + (c or 0)
        local d1 = math.floor(n / 262144) % 64
        local d2 = math.floor(n / 4096) % 64
        local d3 = math.floor(n / 64) % 64
        local d4 = n % 64
        out[#out + 1] = chars:sub(d1 + 1, d1 + 1) .. chars:sub(d2 + 1, d2 + 1)
            .. (b and chars:sub(d3 + 1, d3 + 1) or "=")
            .. (c and chars:sub(d4 + 1, d4 + 1) or "=")
    end
    return table.concat(out)
end


------------------------------------------------------------------------
-- the AWS endpoint stub and the recording upstream (spec/stubs)

local Stub = {}
Stub.__index = Stub


function _M.start_stub()
    local dir = assert(sh("mktemp -d /tmp/ngx_aws_token_stub.XXXXXX"))
    dir = dir:gsub("%s+$", "")
    local port_file = dir .. "/ports.json"
    os.execute("node " .. quote(ROOT .. "/spec/stubs/aws_stub.js")
               .. " --port-file " .. quote(port_file)
               .. " >" .. quote(dir .. "/stub.log") .. " 2>&1 &")
    local ports = _M.wait_for(function()
        return cjson.decode(read(port_file) or "")
    end, 10)
    assert(ports, "the AWS stub did not start: " .. (read(dir .. "/stub.log")
                                                    or ""))
    return setmetatable({
        dir = dir,
        aws = ports.aws,
        upstream = ports.upstream,
        pid = ports.pid,
        endpoint = "http://127.0.0.1:" .. ports.aws,
    }, Stub)
end


function Stub:config(conf)
    local status, body = http("POST", self.endpoint .. "/_stub/config",
                              cjson.encode(conf))
    assert(status == 200, "stub config refused: " .. tostring(body))
    return cjson.decode(body)
end


function Stub:reset()
    http("POST", self.endpoint .. "/_stub/reset", "{}")
    http("POST", "http://127.0.0.1:" .. self.upstream .. "/_upstream/reset",
         "{}")
end


function Stub:calls()
    local _, body = http("GET", self.endpoint .. "/_stub/calls")
    return cjson.decode(body)
end


--- The requests the upstream received, oldest first.
function Stub:requests()
    local _, body = http("GET", "http://127.0.0.1:" .. self.upstream
                                .. "/_upstream/requests")
    local reqs = cjson.decode(body) or {}
    for _, req in ipairs(reqs) do
        if req.authorization == cjson.null then
            req.authorization = nil
        end
    end
    return reqs
end


--- The Authorization header of the last request the upstream got.
function Stub:last_auth()
    local reqs = self:requests()
    return reqs[#reqs] and reqs[#reqs].authorization
end


function Stub:stop()
    os.execute("kill " .. self.pid .. " 2>/dev/null")
    os.execute("rm -rf " .. quote(self.dir))
end


------------------------------------------------------------------------
-- nginx

local Nginx = {}
Nginx.__index = Nginx

local function find_nginx()
    local openresty = sh("command -v openresty")
    if openresty and openresty ~= "" then
        return openresty:gsub("%s+$", ""), ""
    end
    return "/usr/sbin/nginx", table.concat({
        "load_module /usr/share/nginx/modules/ndk_http_module.so;",
        "load_module /usr/share/nginx/modules/ngx_http_lua_module.so;",
    }, "\n")
end


-- What the workers need to reach the stub with fake credentials. The
-- master gets these; the config's `env` directives decide what workers
-- keep. Instance metadata is switched off so the CLI never leaves
-- 127.0.0.1.
_M.AWS_ENV = {
    AWS_ACCESS_KEY_ID = "AKIDEXAMPLE",
    AWS_SECRET_ACCESS_KEY = "stub-secret",
    AWS_DEFAULT_REGION = "us-east-1",
    AWS_EC2_METADATA_DISABLED = "true",
    AWS_CONFIG_FILE = "/dev/null",
    AWS_SHARED_CREDENTIALS_FILE = "/dev/null",
}

_M.KEEP_ALL_ENV = {
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
    "AWS_EC2_METADATA_DISABLED", "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
}


--- Starts nginx from nginx/<conf> with `opts`:
---   init_worker (Lua code), locations (nginx text), workers (default 2),
---   upstream (port), log_level (default "info"), keep_env (names of
---   variables for `env` directives; default KEEP_ALL_ENV).
function _M.start(opts)
    local bin, modules = find_nginx()
    local prefix = assert(sh("mktemp -d /tmp/ngx_aws_token_spec.XXXXXX"))
    prefix = prefix:gsub("%s+$", "")
    os.execute("chmod 755 " .. prefix .. " && mkdir -p " .. prefix
               .. "/logs " .. prefix .. "/conf " .. prefix .. "/tmp")
    if IS_ROOT then
        os.execute("chown nobody " .. prefix .. "/tmp")
    end

    local env = {}
    for _, name in ipairs(opts.keep_env or _M.KEEP_ALL_ENV) do
        env[#env + 1] = "env " .. name .. ";"
    end

    local self = setmetatable({
        bin = bin,
        prefix = prefix,
        log = prefix .. "/logs/error.log",
    }, Nginx)

    for _ = 1, 5 do
        self.port = math.random(20000, 60000)
        local vars = {
            LOAD_MODULES = modules,
            USER = IS_ROOT and "user nobody nogroup;" or "",
            WORKERS = tostring(opts.workers or 2),
            LOG_LEVEL = opts.log_level or "info",
            ENV = table.concat(env, "\n"),
            ROOT = ROOT,
            INIT_WORKER = opts.init_worker or "",
            LOCATIONS = opts.locations or "",
            PORT = tostring(self.port),
            UPSTREAM = tostring(opts.upstream or 9),
        }
        local conf = read(ROOT .. "/nginx/" .. (opts.conf or "test.conf"))
        conf = conf:gsub("%${([%u_]+)}", function(k)
            return assert(vars[k], "no value for ${" .. k .. "}")
        end)
        write(prefix .. "/conf/nginx.conf", conf)

        local envs = {}
        for k, v in pairs(opts.master_env or _M.AWS_ENV) do
            envs[#envs + 1] = k .. "=" .. quote(v)
        end
        self.start_cmd = "cd " .. prefix
            .. " && env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "
            .. table.concat(envs, " ") .. " " .. bin .. " -p " .. prefix
            .. " -c conf/nginx.conf 2>&1"
        local out, ok = sh(self.start_cmd)
        if ok then
            _M.wait_for(function()
                return http("GET", self:url("/_state")) ~= nil
            end, 5)
            return self
        end
        if not (out or ""):find("Address already in use", 1, true) then
            error("nginx did not start: " .. tostring(out)
                  .. (read(self.log) or ""))
        end
        -- another port; the failed try's lines are no part of this run
        os.remove(self.log)
    end
    error("no free port for nginx")
end


function Nginx:url(path)
    return "http://127.0.0.1:" .. self.port .. path
end


function Nginx:get(path)
    return http("GET", self:url(path))
end


function Nginx:signal(sig)
    return sh(self.bin .. " -p " .. self.prefix .. " -c conf/nginx.conf -s "
              .. sig .. " 2>&1")
end


function Nginx:error_log()
    return read(self.log) or ""
end


--- error.log lines at `level` ("warn", "error", ...).
function Nginx:lines(level)
    local out = {}
    for line in self:error_log():gmatch("[^\n]+") do
        if line:find("[" .. level .. "]", 1, true) then
            out[#out + 1] = line
        end
    end
    return out
end


--- error.log lines at warn that contain `text`.
function Nginx:warnings(text)
    local out = {}
    for _, line in ipairs(self:lines("warn")) do
        if line:find(text, 1, true) then
            out[#out + 1] = line
        end
    end
    return out
end


--- What /_state says of token `name` (default "ecr") in the worker that
--- answers: "ready <length>", or token()'s error.
function Nginx:state(name)
    local _, body = self:get("/_state?name=" .. (name or "ecr"))
    return (body or ""):match("^%d+ (.-)\n")
end


--- Every error.log line at warn or above.
function Nginx:problems()
    local out = {}
    for _, level in ipairs({ "warn", "error", "crit", "alert", "emerg" }) do
        for _, line in ipairs(self:lines(level)) do
            out[#out + 1] = line
        end
    end
    return out
end


--- PIDs of the worker processes.
function Nginx:workers()
    local master = (read(self.prefix .. "/logs/nginx.pid") or ""):match("%d+")
    local out = sh("pgrep -P " .. tostring(master)) or ""
    local pids = {}
    for pid in out:gmatch("%d+") do
        pids[#pids + 1] = tonumber(pid)
    end
    return pids
end


--- Stops nginx with `how` ("stop" or "quit") and starts it again with the
--- same configuration and port; returns what starting printed, and ok.
function Nginx:restart(how)
    self:signal(how)
    _M.wait_for(function()
        return not read(self.prefix .. "/logs/nginx.pid")
    end, 10)
    return sh(self.start_cmd)
end


function Nginx:stop()
    self:signal("quit")
    _M.wait_for(function()
        return not read(self.prefix .. "/logs/nginx.pid")
    end, 10)
    os.execute("rm -rf " .. quote(self.prefix))
end


return _M
