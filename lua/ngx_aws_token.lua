--- ngx_aws_token: keeps short-lived AWS tokens (ECR, CodeArtifact, ...)
-- fresh in a lua_shared_dict, so any nginx worker can read them per request.
--
-- Generated from src/ngx_aws_token.ts by TypeScriptToLua: edit that file,
-- then run `make build`.
--
-- Copyright (c) the ngx_aws_token authors. MIT licensed.

local ____exports = {}
local ngx_log = ngx.log
local ngx_now = ngx.now
local ngx_update_time = ngx.update_time
local ngx_timer_at = ngx.timer.at
local ngx_timer_every = ngx.timer.every
local WARN = ngx.WARN
local ERR = ngx.ERR
local INFO = ngx.INFO
local NOTICE = ngx.NOTICE
local str_find = string.find
local str_format = string.format
local str_gsub = string.gsub
local str_lower = string.lower
local str_match = string.match
local str_sub = string.sub
local VERSION = "2.0.0"

--- Seconds between two fetches of a token, as in 1.0: 6 hours.
local DEFAULT_INTERVAL = 6 * 60 * 60

--- Seconds before a failed fetch is tried again.
local DEFAULT_RETRY = 30

--- Seconds a command may run before it is killed.
local DEFAULT_TIMEOUT = 60

--- The longest `timeout`: a day (ngx.pipe takes no more than 49 days).
local MAX_TIMEOUT = 86400

--- Seconds between two looks at the schedule and at running commands.
local TICK = 0.5

--- Seconds a killed command may take to report before it is abandoned.
local KILL_GRACE = 10

--- Seconds a run's lock outlives its longest possible run, so that a
-- worker killed while it runs a command leaves the lock to expire and
-- another worker takes over: `timeout` + KILL_GRACE + LOCK_GRACE.
local LOCK_GRACE = 5

--- Seconds a token may live; a later expiry is a mistake (milliseconds).
local MAX_LIFETIME = 366 * 24 * 3600

--- Seconds between two runs that refresh() asked for.
local DEFAULT_COOLDOWN = 10

--- Minutes after its end that a run no worker collected (its worker was
-- killed, or nginx stopped with `-s stop`) is removed by a later run.
local ORPHAN_MINUTES = 10

--- Bytes of a command's stderr kept for the log.
local EXCERPT = 200

--- Keys of our own in the user's dict start with a NUL byte; token names
-- may not contain control characters, so the two never collide.
local MARK = "\0ngx_aws_token:storage"

--- Runs before every command. The AWS CLI v2 pipes output through `less`
-- unless AWS_PAGER is set to the empty string; slim images lack `less`.
local PRELUDE = "AWS_PAGER=''; export AWS_PAGER\n"

--- Where the AWS CLI looks for credentials, besides instance metadata.
local CREDENTIAL_VARS = {
    "HOME",
    "AWS_ACCESS_KEY_ID",
    "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE"
}
local REGION_VARS = {"AWS_REGION", "AWS_DEFAULT_REGION"}
local REGION_HINT = " (keep the region with `env AWS_DEFAULT_REGION;` in "
    .. "nginx.conf, or pass --region)"
local ENV_HINT = table.concat({
    " (nginx workers have an empty environment: no HOME and no AWS_*",
    "credentials; keep them with `env` directives in nginx.conf,",
    "e.g. `env HOME;` or `env AWS_ACCESS_KEY_ID;`)"}, " ")

--- The reason for a killed command; names the option that allows more.
local TIMED_OUT = "timed out after %s s (raise the `timeout` option if the "
    .. "command needs longer)"
local FD_CDEF = table.concat({
    "int ngx_aws_token_syscall(long n, unsigned int a, unsigned int b,",
    "unsigned int c) __asm__(\"syscall\");",
    "int ngx_aws_token_fcntl(int fd, int cmd, int arg)", "__asm__(\"fcntl\");"},
    " ")

--- Descriptors marked one by one where close_range(2) is missing.
local FD_SCAN = 1024

--- Bytes of stdout read at most; a token is a few kilobytes.
local MAX_OUTPUT = 65536

--- A name /bin/sh takes for a variable.
local ENV_NAME = "^[%a_][%w_]*$"

--- ecr()'s options and the AWS CLI's flags for them.
local ECR_OPTIONS = {}
ECR_OPTIONS.region = "--region"
ECR_OPTIONS.registry_id = "--registry-ids"
ECR_OPTIONS.profile = "--profile"
ECR_OPTIONS.endpoint_url = "--endpoint-url"
ECR_OPTIONS.env = ""

--- codeartifact()'s options and the AWS CLI's flags for them.
local CA_OPTIONS = {}
CA_OPTIONS.domain = "--domain"
CA_OPTIONS.domain_owner = "--domain-owner"
CA_OPTIONS.duration = "--duration-seconds"
CA_OPTIONS.region = "--region"
CA_OPTIONS.profile = "--profile"
CA_OPTIONS.endpoint_url = "--endpoint-url"
CA_OPTIONS.env = ""

--- A timestamp as the AWS CLI prints it in ISO 8601.
local ISO_8601 = "^(%d%d%d%d)%-(%d%d)%-(%d%d)[T ](%d%d):(%d%d):(%d%d)"
    .. "(%.?%d*)(.*)$"

--- Phases in which a light thread may yield (and ngx.pipe may wait).
local YIELDABLE = {}
YIELDABLE.timer = true
YIELDABLE.rewrite = true
YIELDABLE.access = true
YIELDABLE.content = true

--- Seconds a failed fetch waits at most before the next try.
local DEFAULT_RETRY_MAX = 600

--- The share of a token's lifetime left when it is refreshed.
local DEFAULT_REFRESH_BEFORE = 0.25

--- A refresh comes up to this share of the lifetime early (at most
-- MAX_JITTER seconds), so proxies started together do not refresh in step.
local JITTER = 0.05
local MAX_JITTER = 300

--- Options that rotate() and manage() accept, and their kind.
local OPTIONS = {}
OPTIONS.transform = "function"
OPTIONS.interval = "number"
OPTIONS.retry = "number"
OPTIONS.retry_max = "number"
OPTIONS.timeout = "number"
OPTIONS.refresh_before = "number"
OPTIONS.cooldown = "number"
OPTIONS.env = "table"
local storage
local storage_name
local default_interval = DEFAULT_INTERVAL
local default_retry = DEFAULT_RETRY
local jobs = {}
local ticking = false
local run_count = 0
local workdir
local last_scan = -1
local fd_lib
local fd_lib_tried = false
local seed = 0
local last_full_log = -60
local json

--- Tags the tables that ecr() and codeartifact() return.
local SOURCE_MT = {__name = "ngx_aws_token.source"}
local has_pipe, pipe_or_err = pcall(require, "ngx.pipe")
local ngx_pipe = has_pipe and pipe_or_err or nil

--- How this worker runs commands, as status() tells it.
local RUNNER = ngx_pipe ~= nil and "ngx.pipe" or "background"


--- Binds close_range(2) and fcntl(2) under names of our own, so the
-- declarations cannot clash with another module's.
local function load_fd_lib()
    local ok, ffi = pcall(require, "ffi")
    if not ok then
        return nil
    end
    local bound = pcall(ffi.cdef, FD_CDEF)
    return bound and ffi.C or nil
end


--- Marks every descriptor of this worker above stderr close-on-exec.
-- nginx leaves its listening sockets inheritable: a command started with
-- them would hold nginx's ports for as long as it runs.
local function cloexec_all()
    if not fd_lib_tried then
        fd_lib_tried = true
        fd_lib = load_fd_lib()
    end
    if fd_lib == nil then
        return
    end
    if fd_lib.ngx_aws_token_syscall(436, 3, 4294967295, 4) == 0 then
        return
    end
    do
        local fd = 3
        while fd < FD_SCAN do
            local flags = fd_lib.ngx_aws_token_fcntl(fd, 1, 0)
            if flags >= 0 then
                fd_lib.ngx_aws_token_fcntl(
                    fd,
                    2,
                    bit.bor(flags, 1)
                )
            end
            fd = fd + 1
        end
    end
end


--- Strips leading and trailing whitespace.
local function trim(s)
    local out = str_gsub(s, "^%s+", "")
    local res = str_gsub(out, "%s+$", "")
    return res
end


--- True when `s` holds a control character (CR, LF, NUL, TAB, ...).
local function has_control(s)
    local at = str_find(s, "%c")
    return at ~= nil
end


--- The keys of `t`, sorted: pairs() order differs from one LuaJIT VM to
-- the next, and what a job runs must read the same in every worker.
local function sorted_keys(t)
    local keys = {}
    for key in pairs(t) do
        keys[#keys + 1] = tostring(key)
    end
    table.sort(keys)
    return keys
end


--- Wraps `s` in single quotes for /bin/sh.
local function shell_quote(s)
    local quoted = str_gsub(s, "'", "'\\''")
    return ("'" .. quoted) .. "'"
end


--- Replaces every occurrence of `secret` in `text`, so a message that
-- echoes a command's output cannot carry a token into the log.
local function redact(text, secret)
    if secret == nil or #secret < 4 then
        return text
    end
    local out = ""
    local from = 1
    do
        while true do
            local s, e = str_find(text, secret, from, true)
            if s == nil or e == nil then
                return out .. str_sub(text, from)
            end
            out = (out .. str_sub(text, from, s - 1)) .. "<redacted>"
            from = e + 1
        end
    end
end


--- Hides what a message quotes of a command's output: the output itself,
-- and any token-like run of 12 or more characters found in it (a part of
-- a token, one line of several).
local function hide(text, stdout)
    if stdout == nil then
        return text
    end
    local plain = redact(
        text,
        trim(stdout)
    )
    local out = str_gsub(
        plain,
        "[%w%+/=_%-%.]+",
        function(run)
            if #run < 12 then
                return run
            end
            local at = str_find(stdout, run, 1, true)
            return at ~= nil and "<redacted>" or run
        end
    )
    return out
end


--- A short, single-line excerpt of a command's stderr for the log.
local function excerpt(stderr, stdout)
    if stderr == nil then
        return ""
    end
    local flat = str_gsub(
        hide(
            trim(stderr),
            stdout
        ),
        "%c+",
        " "
    )
    if flat == "" then
        return ""
    end
    if #flat > EXCERPT then
        return (": " .. str_sub(flat, 1, EXCERPT)) .. "..."
    end
    return ": " .. flat
end


--- The name under which `dict` is declared, if it is a lua_shared_dict.
local function dict_name(dict)
    for name, zone in pairs(ngx.shared) do
        if zone == dict then
            return name
        end
    end
    return nil
end


--- Finds the dict another worker passed to set_storage(): the 1.0 README
-- calls it on worker 0 only, yet reads tokens on every worker.
local function find_storage()
    for name, zone in pairs(ngx.shared) do
        local mark = zone:get(MARK)
        if mark ~= nil then
            storage = zone
            storage_name = name
            return zone
        end
    end
    return nil
end


local function read_file(path, limit)
    local f = io.open(path, "rb")
    if f == nil then
        return nil
    end
    local data = f:read(limit ~= nil and limit or "*a")
    f:close()
    return data ~= nil and data or ""
end


--- A number in [0, 1), from a generator of our own (Park-Miller).
local function rand()
    if seed == 0 then
        local now = math.floor(ngx_now() * 1000)
        seed = (ngx.worker.pid() * 7919 + now) % 2147483646 + 1
    end
    seed = seed * 16807 % 2147483647
    return seed / 2147483647
end


--- The directory for command output: tmpfs where there is one, so a token
-- never reaches a disk.
local function get_workdir()
    if workdir == nil then
        local shm = io.open("/dev/shm", "rb")
        if shm ~= nil then
            shm:close()
            workdir = "/dev/shm"
        else
            workdir = "/tmp"
        end
    end
    return workdir
end


--- Removes, in the background, the directories of runs that ended over
-- ORPHAN_MINUTES ago and that no worker collected; a run still going on
-- has no `done` file and is left alone, however long its timeout.
local function sweep_script()
    return str_format(
        (("find %s -maxdepth 2 -path '*/ngx_aws_token.*/done' -user "
            .. "\"$(id -u)\" -mmin +%d -exec sh -c ")
            .. "'for f; do rm -rf \"${f%%/done}\"; done' sh {} + ")
            .. "</dev/null >/dev/null 2>&1 &",
        get_workdir(),
        ORPHAN_MINUTES
    )
end


--- The shell script that runs `command` with its stdout, stderr and exit
-- status going to files in `dir`, a directory only this user can read.
-- io.popen():close() cannot be trusted with the exit status under nginx:
-- without Lua 5.2 compatibility it returns true for any command, and
-- nginx's SIGCHLD handler may reap the child first.
--
-- In the background the script returns at once; `done` appears when the
-- command has ended. The command gets a session of its own (setsid), so a
-- timeout can kill it together with its children. Directories that a dead
-- worker never collected are swept by the next run.
local function runner_script(dir, command, background)
    local argv = "/bin/sh -c " .. shell_quote(command.script)
    if #command.args > 0 then
        argv = argv .. " sh"
        for _, arg in ipairs(command.args) do
            argv = (argv .. " ") .. shell_quote(arg)
        end
    end
    local run = str_format("$S %s >%s/out 2>%s/err </dev/null", argv, dir, dir)
    local setsid = "S=; command -v setsid >/dev/null 2>&1 && S=setsid"
    local head = str_format(
        "u=$(umask); umask 077; mkdir %s || exit 1; : >%s/out; : >%s/err; "
        .. "umask \"$u\"", dir, dir, dir)
    local rc = str_format("echo $? >%s/rc", dir)
    local done = str_format(": >%s/done", dir)
    if not background then
        return table.concat({
            head,
            setsid,
            run,
            rc,
            done
        }, "\n")
    end
    local pid = str_format("echo $! >%s/pid", dir)
    local lines = {
        head,
        setsid,
        "(",
        run .. " &",
        pid,
        "wait $!",
        rc,
        done
    }
    return (table.concat(lines, "\n") .. "\n) </dev/null >/dev/null 2>&1 &\n")
        .. sweep_script()
end


--- Starts `command` through /bin/sh; returns its private directory.
local function launch(command, background)
    cloexec_all()
    do
        while true do
            run_count = run_count + 1
            local base = get_workdir()
            local dir = str_format(
                "%s/ngx_aws_token.%d.%d.%d.%d",
                base,
                ngx.worker.pid(),
                run_count,
                math.floor(ngx_now() * 1000),
                math.floor(rand() * 1000000000)
            )
            local script = runner_script(dir, command, background)
            local rc = os.execute(script)
            if rc == 0 or rc == true then
                return dir, nil
            end
            if base == "/tmp" then
                return nil, "could not create " .. dir
            end
            workdir = "/tmp"
        end
    end
end


--- Removes a run's private directory and what is in it.
local function remove_dir(dir)
    os.remove(dir .. "/out")
    os.remove(dir .. "/err")
    os.remove(dir .. "/rc")
    os.remove(dir .. "/pid")
    os.remove(dir .. "/done")
    os.remove(dir)
end


--- Reads what the command left in `dir` and removes it; nil while busy.
local function collect(dir)
    local done = io.open(dir .. "/done", "rb")
    if done == nil then
        return nil
    end
    done:close()
    local rc = read_file(dir .. "/rc")
    local outcome = {
        status = tonumber(trim(rc ~= nil and rc or "")),
        stdout = read_file(dir .. "/out", MAX_OUTPUT + 1),
        stderr = read_file(dir .. "/err", 4096)
    }
    remove_dir(dir)
    if outcome.status == nil then
        outcome.failure = "the command's exit status is missing"
    end
    return outcome
end


--- Kills a background command and its children.
local function kill_run(run)
    run.killed = true
    if run.proc ~= nil then
        run.proc:kill(9)
        return
    end
    if run.dir == nil then
        return
    end
    local done = io.open(run.dir .. "/done", "rb")
    if done ~= nil then
        done:close()
        return
    end
    local pid = read_file(run.dir .. "/pid")
    local num = str_match(pid ~= nil and pid or "", "^%d+")
    if num ~= nil then
        local cmd = "kill -9 -%s 2>/dev/null || kill -9 %s 2>/dev/null"
        os.execute(str_format(cmd, num, num))
    end
end


--- Runs a command to its end, blocking this worker while it runs.
local function run_blocking(command)
    local dir, err = launch(command, false)
    if dir == nil then
        return {failure = err}
    end
    local outcome = collect(dir)
    if outcome == nil then
        remove_dir(dir)
        return {failure = "the command did not finish"}
    end
    return outcome
end


--- Reads all of one of a process's streams; for a light thread.
local function read_stream(proc, stream)
    local data
    local err
    local partial
    if stream == "stdout" then
        data, err, partial = proc:stdout_read_all()
    else
        data, err, partial = proc:stderr_read_all()
    end
    if data ~= nil then
        return data, nil
    end
    return partial, err
end


--- Runs a command through ngx.pipe; yields instead of blocking, so it needs
-- a phase that can yield (a timer).
local function run_pipe(pipe, command, run)
    local argv = {"/bin/sh", "-c", command.script}
    if #command.args > 0 then
        argv[#argv + 1] = "sh"
        for _, arg in ipairs(command.args) do
            argv[#argv + 1] = arg
        end
    end
    local proc, err = pipe.spawn(argv)
    if proc == nil then
        return {failure = "could not start the command: " .. err}
    end
    run.proc = proc
    ngx_update_time()
    local ms = math.max(
        1,
        math.floor((run.deadline - ngx_now()) * 1000)
    )
    proc:set_timeouts(ms, ms, ms, ms)
    local reader = ngx.thread.spawn(read_stream, proc, "stderr")
    local stdout, read_err = read_stream(proc, "stdout")
    local read, text = ngx.thread.wait(reader)
    local stderr = nil
    if read then
        stderr = text
    end
    if read_err ~= nil then
        kill_run(run)
        proc:wait()
        if read_err == "timeout" then
            return {failure = "timed out", stderr = stderr}
        end
        local failure = "could not read its output: " .. read_err
        return {failure = failure, stderr = stderr}
    end
    ngx_update_time()
    local left = math.max(
        1,
        math.floor((run.deadline - ngx_now()) * 1000)
    )
    proc:set_timeouts(nil, nil, nil, left)
    local ok, reason, status = proc:wait()
    if ok == nil then
        kill_run(run)
        return {failure = "could not wait for it: " .. reason}
    end
    if reason == "signal" then
        return {
            failure = "killed by signal " .. tostring(status),
            stderr = stderr
        }
    end
    return {status = status, stdout = stdout, stderr = stderr}
end


--- Days from 1970-01-01 to a date of the proleptic Gregorian calendar.
local function days_from_civil(y, m, d)
    local year = m <= 2 and y - 1 or y
    local era = math.floor(year / 400)
    local yoe = year - era * 400
    local doy = math.floor((153 * ((m + 9) % 12) + 2) / 5) + d - 1
    local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
    return era * 146097 + doe - 719468
end


--- `n` unless it is NaN or infinite.
local function finite(n)
    return n == n and n > -math.huge and n < math.huge and n or nil
end


--- Epoch seconds from what the AWS CLI prints for a timestamp: a number
-- (`cli_timestamp_format = wire`), or ISO 8601 with a zone offset or `Z`
-- and optional fractional seconds (the default, `iso8601`).
local function parse_time(v)
    if type(v) == "number" then
        return finite(v)
    end
    if type(v) ~= "string" then
        return nil
    end
    local num = tonumber(v)
    if num ~= nil then
        return finite(num)
    end
    local y, mo, d, h, mi, sec, frac, zone = str_match(v, ISO_8601)
    if y == nil or zone == nil then
        return nil
    end
    local offset = 0
    if zone ~= "Z" and zone ~= "z" then
        local sign, zh, zm = str_match(zone, "^([+-])(%d%d):?(%d%d)$")
        if sign == nil then
            return nil
        end
        offset = (tonumber(zh) * 3600 + tonumber(zm) * 60) * (
            sign == "-" and -1 or 1)
    end
    local days = days_from_civil(
        tonumber(y),
        tonumber(mo),
        tonumber(d)
    )
    local fraction = frac ~= nil and frac ~= "" and tonumber(frac) or 0
    return days * 86400 + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(
        sec) + fraction - offset
end


--- Calls a transform for pcall(): its value and expiry, in a table.
local function call_transform(transform, output)
    local f = transform
    local value, expires = f(output)
    return {value = value, expires = expires}
end


--- Turns what a command printed into the value to store and its expiry (if
-- known), or says why it must not replace the token. A header value must
-- be one line.
local function evaluate(outcome, parse, transform)
    if outcome.failure ~= nil then
        return nil, nil, outcome.failure
    end
    if outcome.status ~= 0 then
        return nil, nil, "exit status " .. tostring(outcome.status)
    end
    local stdout = outcome.stdout ~= nil and outcome.stdout or ""
    if #stdout > MAX_OUTPUT then
        local reason = ("output over " .. tostring(MAX_OUTPUT)) .. " bytes"
        return nil, nil, reason
    end
    local output = trim(stdout)
    if output == "" then
        return nil, nil, "empty output"
    end
    if output == "None" then
        local reason = "the CLI printed its null: a --query that matched "
            .. "nothing?"
        return nil, nil, reason
    end
    local value = output
    local expires = nil
    local by = "output"
    local from = "the output"
    if parse ~= nil then
        local parsed = parse(output)
        if parsed.err ~= nil then
            return nil, nil, parsed.err
        end
        value = parsed.value
        expires = parsed.expires
        by = "the token"
        from = "the CLI"
    elseif transform ~= nil then
        local ok, res = pcall(call_transform, transform, output)
        if not ok then
            local reason = "transform failed: " .. tostring(res)
            return nil, nil, reason
        end
        local got = res
        local v = got.value
        local e = got.expires
        if type(v) ~= "string" then
            local reason = "transform returned a " .. type(v)
            return nil, nil, reason
        end
        value = v
        expires = e
        by = "the transform's value"
        from = "the transform"
    end
    if type(value) ~= "string" or value == "" then
        return nil, nil, by .. " is empty"
    end
    if has_control(value) then
        return nil, nil, "control characters in " .. by
    end
    if expires == nil then
        return value, nil, nil
    end
    local at = parse_time(expires)
    if at == nil then
        local reason = "an expiry that is not a time, from " .. from
        return nil, nil, reason
    end
    return value, at, nil
end


--- True when the worker has any of the variables `names`.
local function has_any(names)
    for _, name in ipairs(names) do
        if os.getenv(name) ~= nil then
            return true
        end
    end
    return false
end


--- What to tell the user when the AWS CLI failed for want of credentials
-- or a region that nginx's emptied environment took away.
local function env_hint(outcome)
    local stderr = str_lower(outcome.stderr ~= nil and outcome.stderr or "")
    local creds = str_find(stderr, "credentials", 1, true)
    if (outcome.status == 253 or creds ~= nil) and not has_any(
        CREDENTIAL_VARS) then
        return ENV_HINT
    end
    local region = str_find(stderr, "region", 1, true)
    if region ~= nil and not has_any(REGION_VARS) then
        return REGION_HINT
    end
    return ""
end


--- Logs at ERR that the dict is too small, with what happened.
local function log_full(name, what, err)
    last_full_log = ngx_now()
    ngx_log(
        ERR,
        "ngx_aws_token: token \"",
        name,
        "\" ",
        what,
        " lua_shared_dict ",
        storage_name ~= nil and storage_name or "?",
        err ~= nil and (" (" .. err) .. ")" or "",
        "; raise the size in its lua_shared_dict directive"
    )
end


--- The key of one of our facts about token `name` in the user's dict.
local function meta(kind, name)
    return (("\0" .. kind) .. ":") .. name
end


--- Stores a fresh value that lives `ttl` seconds (0: for ever); false when
-- the dict refused it. nginx frees the old value before it finds there is
-- no room for a bigger one, so the old one is put back into its space.
local function store(dict, name, value, ttl)
    local old = dict:get(name)
    local left = nil
    if old ~= nil then
        left = dict:ttl(name)
    end
    local ok, err, forcible = dict:set(name, value, ttl)
    if not ok then
        if old ~= nil and left ~= nil then
            dict:set(name, old, left)
        end
        log_full(name, "could not be stored in", err)
        return false
    end
    if forcible then
        log_full(name, "evicted other keys from")
    end
    dict:safe_set(MARK, true)
    return true
end


--- The warning for a failed fetch: name, reason, stderr, what happens.
local function log_failure(dict, job, outcome, reason, wait)
    local failed = outcome.status ~= nil and outcome.status ~= 0
    local current = dict:get(job.name)
    ngx_log(
        WARN,
        "ngx_aws_token: could not refresh token \"",
        job.name,
        "\": ",
        hide(reason, outcome.stdout),
        excerpt(outcome.stderr, outcome.stdout),
        failed and env_hint(outcome) or "",
        current ~= nil and "; keeping the current token" or "",
        "; retrying in ",
        str_format("%g", wait),
        " s"
    )
end


--- Seconds before the next try after `failures` failures in a row: `retry`,
-- doubling up to `retry_max`, each but the first up to a quarter shorter
-- so that many proxies spread out.
local function backoff(job, failures)
    local cap = math.max(job.retry, job.retry_max)
    local delay = math.min(job.retry * 2 ^ (failures - 1), cap)
    if failures <= 1 then
        return delay
    end
    return math.max(
        job.retry,
        delay * (1 - 0.25 * rand())
    )
end


--- Seconds until a token fetched now should be fetched again: once
-- `refresh_before` of its lifetime is left, a little earlier at random;
-- every `interval` when its expiry is not known.
local function refresh_in(job, lifetime)
    if lifetime == nil then
        return job.interval
    end
    local jitter = rand() * math.min(lifetime * JITTER, MAX_JITTER)
    local wait = lifetime * (1 - job.refresh_before) - jitter
    return job.interval_set and math.min(wait, job.interval) or wait
end


--- Writes one of the module's own keys without pushing out anything else;
-- says at ERR (once a minute) when the dict has no room even for that.
local function keep(dict, key, value)
    local ok = dict:safe_set(key, value)
    if ok then
        return
    end
    local now = ngx_now()
    if now - last_full_log >= 60 then
        last_full_log = now
        local name = storage_name ~= nil and storage_name or "?"
        ngx_log(
            ERR,
            "ngx_aws_token: lua_shared_dict ",
            name,
            " is full: ",
            "no room for the schedule of its tokens, so workers may fetch ",
            "more often than needed; raise the size in its ",
            "lua_shared_dict directive"
        )
    end
end


--- The dict; rotate() made sure there is one before any job exists.
local function the_dict()
    return storage ~= nil and storage or find_storage()
end


--- Sets the next fetch for every worker, and this worker's own copy.
local function set_due(dict, job, at)
    job.due = at
    keep(
        dict,
        meta("due", job.name),
        at
    )
end


--- False when a later rotate() or manage(), here or in another worker (a
-- reload's new ones), gave the token another command: this job is stale.
local function owns(dict, job)
    local key = dict:get(meta("command", job.name))
    return key == nil or key == job.key
end


--- Lets go of a run's lock, unless it expired and is another's now.
local function unlock(dict, name, run)
    local key = meta("lock", name)
    local holder = dict:get(key)
    if holder == run.id then
        dict:delete(key)
    end
end


--- Records a failure, logs it, and schedules the next try.
local function fail(job, outcome, reason, now)
    local dict = the_dict()
    local count = dict:get(meta("failures", job.name))
    local known = type(count) == "number" and count or 0
    local failures = math.max(known, job.failures) + 1
    local wait = backoff(job, failures)
    job.failures = failures
    keep(
        dict,
        meta("failures", job.name),
        failures
    )
    keep(
        dict,
        meta("error", job.name),
        hide(reason, outcome.stdout)
    )
    keep(
        dict,
        meta("error_at", job.name),
        now
    )
    log_failure(
        dict,
        job,
        outcome,
        reason,
        wait
    )
    set_due(dict, job, now + wait)
end


--- Stores a run's token and its schedule, or records the failure.
local function settle(dict, job, run, outcome)
    local name = job.name
    if run.killed and outcome.failure == nil then
        outcome = {failure = "timed out", stderr = outcome.stderr}
    end
    if outcome.failure == "timed out" then
        outcome.failure = str_format(TIMED_OUT, job.timeout)
    end
    ngx_update_time()
    local now = ngx_now()
    local value, expires, reason = evaluate(outcome, job.parse, job.transform)
    if value == nil then
        fail(job, outcome, reason, now)
        return
    end
    local lifetime = expires ~= nil and expires - now or nil
    if lifetime ~= nil and lifetime <= 0 then
        fail(job, outcome, "the token has expired already (clock?)", now)
        return
    end
    if lifetime ~= nil and lifetime > MAX_LIFETIME then
        local far = "an expiry over a year away (milliseconds?)"
        fail(job, outcome, far, now)
        return
    end
    if not store(dict, name, value, lifetime or 0) then
        fail(job, outcome, "the dict refused the token", now)
        return
    end
    job.failures = 0
    keep(
        dict,
        meta("fetched", name),
        now
    )
    keep(
        dict,
        meta("expires", name),
        expires ~= nil and expires or 0
    )
    keep(
        dict,
        meta("failures", name),
        0
    )
    ngx_log(INFO, "ngx_aws_token: refreshed token \"", name, "\"")
    if job.once then
        set_due(dict, job, math.huge)
        jobs[name] = nil
        return
    end
    set_due(
        dict,
        job,
        now + refresh_in(job, lifetime)
    )
end


--- Acts on what a run of a job's command gave.
local function complete(name, run, outcome)
    local dict = the_dict()
    local job = jobs[name]
    if job ~= nil and job.run == run then
        if not run.discard and owns(dict, job) then
            settle(dict, job, run, outcome)
        end
        job.run = nil
    end
    unlock(dict, name, run)
end


--- A timer that runs one command through ngx.pipe.
local function pipe_timer(premature, name, run)
    local job = jobs[name]
    if premature or ngx_pipe == nil or job == nil then
        return
    end
    if run.discard then
        complete(name, run, {failure = "replaced"})
        return
    end
    complete(
        name,
        run,
        run_pipe(ngx_pipe, job.command, run)
    )
end


--- True when the job's next fetch has come: the time the dict says has
-- passed, or the dict lost the token it had (evicted) with no failure
-- pending.
local function is_due(dict, job, now)
    if not owns(dict, job) then
        return false
    end
    local at = dict:get(meta("due", job.name))
    local due = type(at) == "number" and at or job.due
    if now >= due then
        return true
    end
    if due == math.huge then
        return false
    end
    local value = dict:get(job.name)
    local failures = dict:get(meta("failures", job.name))
    local fetched = dict:get(meta("fetched", job.name))
    if value ~= nil or fetched == nil or failures ~= 0 then
        return false
    end
    local started = dict:get(meta("started", job.name))
    local last = math.max(
        type(started) == "number" and started or 0,
        job.started
    )
    return now - last >= job.retry
end


--- Takes the token's lock for a run, so that one worker at a time runs its
-- command; false when another worker has it, or has just finished a run.
local function try_lock(dict, job, id, now)
    local ttl = job.timeout + KILL_GRACE + LOCK_GRACE
    local ok = dict:add(
        meta("lock", job.name),
        id,
        ttl
    )
    if not ok then
        return false
    end
    if not is_due(dict, job, now) then
        dict:delete(meta("lock", job.name))
        return false
    end
    return true
end


--- Starts a job's command without waiting for it, if it can have the lock.
local function start(job, now)
    local dict = the_dict()
    run_count = run_count + 1
    local id = (tostring(ngx.worker.pid()) .. ":") .. tostring(run_count)
    if not try_lock(dict, job, id, now) then
        return
    end
    local run = {id = id, deadline = now + job.timeout, killed = false,
        discard = false}
    job.run = run
    job.started = now
    keep(
        dict,
        meta("started", job.name),
        now
    )
    keep(
        dict,
        meta("runner", job.name),
        RUNNER
    )
    if ngx_pipe ~= nil then
        local ok, err = ngx_timer_at(0, pipe_timer, job.name, run)
        if not ok then
            complete(job.name, run, {failure = "no timer: " .. err})
        end
        return
    end
    local dir, err = launch(job.command, true)
    if dir == nil then
        complete(job.name, run, {failure = err})
        return
    end
    run.dir = dir
end


--- Looks whether a background command has ended; kills it when late.
local function poll(job, run, now)
    local dir = run.dir
    if dir == nil then
        return
    end
    local outcome = collect(dir)
    if outcome ~= nil then
        complete(job.name, run, outcome)
        return
    end
    if now < run.deadline then
        return
    end
    if not run.killed then
        kill_run(run)
        return
    end
    if now >= run.deadline + KILL_GRACE then
        os.execute("rm -rf " .. dir)
        complete(job.name, run, {failure = "timed out"})
    end
end


--- On worker exit (a reload, `nginx -s quit`): kills this worker's running
-- commands, removes their files and gives up their locks, so that the new
-- workers take over.
local function abandon_all()
    local dict = the_dict()
    for name, job in pairs(jobs) do
        local run = job.run
        if run ~= nil then
            kill_run(run)
            if run.dir ~= nil then
                os.execute("rm -rf " .. run.dir)
            end
            unlock(dict, name, run)
            job.run = nil
        end
    end
end


--- The worker's one timer: starts due jobs and watches running ones.
local function tick(premature)
    if premature then
        abandon_all()
        return
    end
    ngx_update_time()
    local now = ngx_now()
    local dict = the_dict()
    for name, job in pairs(jobs) do
        local run = job.run
        if run ~= nil then
            poll(job, run, now)
        elseif is_due(dict, job, now) then
            start(job, now)
        elseif job.once and (dict:get(meta("due", name))) == math.huge then
            jobs[name] = nil
        end
    end
end


--- Starts the worker's timer once, and a first look right away.
local function ensure_ticking()
    if not ticking then
        local ok, err = ngx_timer_every(TICK, tick)
        if not ok then
            return nil, err
        end
        ticking = true
        local how = ngx_pipe ~= nil and "through ngx.pipe" or "in the "
            .. "background through /bin/sh (no ngx.pipe in this build)"
        ngx_log(NOTICE, "ngx_aws_token: running commands ", how)
    end
    ngx_timer_at(0, tick)
    return true, nil
end


local function seconds_ok(value)
    return type(value) == "number" and value > 0 and value < math.huge
end


--- Why `env` is not a table of variable names to values, if it is not.
local function check_env(fn, env)
    for name, value in pairs(env) do
        local ok = nil
        if type(name) == "string" then
            ok = str_find(name, ENV_NAME)
        end
        if ok == nil then
            return ((fn .. "() env: \"") .. tostring(name))
                .. "\" is not a variable name"
        end
        if type(value) ~= "string" and type(value) ~= "number" then
            return ((fn .. "() env: ") .. tostring(name)) .. " must be a string"
        end
        local nul = str_find(
            tostring(value),
            "\0",
            1,
            true
        )
        if nul ~= nil then
            return ((fn .. "() env: ") .. tostring(name)) .. " holds a NUL byte"
        end
    end
    return nil
end


--- Why the options table of rotate() or manage() is wrong, if it is.
local function check_options(fn, opts)
    for key, value in pairs(opts) do
        local kind = OPTIONS[key]
        if kind == nil then
            return ((fn .. "() has no option \"") .. tostring(key)) .. "\""
        end
        if type(value) ~= kind then
            return str_format("%s() option \"%s\" is not a %s", fn, key, kind)
        end
        if kind == "number" and not seconds_ok(value) then
            return ((fn .. "() option \"") .. key) .. "\" must be > 0"
        end
    end
    local timeout = opts.timeout
    if timeout ~= nil and timeout > MAX_TIMEOUT then
        return ((fn .. "() option \"timeout\" must be at most ") .. tostring(
            MAX_TIMEOUT)) .. " s"
    end
    local before = opts.refresh_before
    if before ~= nil and before >= 1 then
        return fn .. "() option \"refresh_before\" must be below 1"
    end
    local env = opts.env
    if env == nil then
        return nil
    end
    return check_env(fn, env)
end


--- True for what ecr() and codeartifact() return.
local function is_source(x)
    return type(x) == "table" and getmetatable(x) == SOURCE_MT
end


--- Why the arguments of rotate() or manage() are wrong, if they are.
local function check_args(fn, name, command, arg)
    if type(name) ~= "string" or name == "" then
        return nil, fn .. "() wants a token name (a string)"
    end
    if has_control(name) then
        return nil, fn .. "() wants a name without control bytes"
    end
    local preset = is_source(command)
    if not preset and (type(command) ~= "string" or trim(command) == "") then
        local what = "a command (a string) or a preset such as ecr()"
        return nil, (fn .. "() wants ") .. what
    end
    if storage == nil then
        return nil, ("call set_storage() before " .. fn) .. "()"
    end
    local opts = {}
    if type(arg) == "function" then
        opts = {transform = arg}
    elseif type(arg) == "table" then
        local bad = check_options(fn, arg)
        if bad ~= nil then
            return nil, bad
        end
        opts = arg
    elseif arg ~= nil then
        local what = "a transform function or an options table"
        return nil, (fn .. "() wants ") .. what
    end
    if preset and opts.transform ~= nil then
        local why = "a preset makes its own value; drop the transform"
        return nil, (fn .. "(): ") .. why
    end
    return opts, nil
end


--- The script for /bin/sh: AWS_PAGER, the variables of `env`, `body`.
local function shell_command(body, args, env)
    local script = PRELUDE
    if env ~= nil then
        for _, name in ipairs(sorted_keys(env)) do
            local quoted = shell_quote(tostring(env[name]))
            script = script .. str_format("%s=%s; export %s\n", name, quoted,
                name)
        end
    end
    return {script = script .. body, args = args}
end


--- What /bin/sh runs for a command string or a preset, with `env`.
local function to_command(command, env)
    if not is_source(command) then
        return shell_command(command, {}, env)
    end
    local merged = {}
    if command.env ~= nil then
        for name, value in pairs(command.env) do
            merged[name] = value
        end
    end
    if env ~= nil then
        for name, value in pairs(env) do
            merged[name] = value
        end
    end
    return shell_command("exec \"$@\"", command.args, merged)
end


--- What identifies a job across workers and reloads: what it runs.
local function job_key(job)
    local parts = {job.once and "manage" or "rotate", job.command.script}
    for _, arg in ipairs(job.command.args) do
        parts[#parts + 1] = arg
    end
    return table.concat(parts, "\0")
end


--- Joins the schedule that other workers (or the workers before a reload)
-- keep in the dict: a token fetched by the same job is not fetched again
-- before it is due; a new or changed job fetches at once.
local function adopt(dict, job)
    local key = dict:get(meta("command", job.name))
    local due = dict:get(meta("due", job.name))
    keep(
        dict,
        meta("cooldown", job.name),
        job.cooldown
    )
    local value = dict:get(job.name)
    local finished = due == math.huge and value == nil
    if key == job.key and type(due) == "number" and not finished then
        job.due = due
        return
    end
    keep(
        dict,
        meta("command", job.name),
        job.key
    )
    keep(
        dict,
        meta("failures", job.name),
        0
    )
    set_due(dict, job, job.due)
end


local function schedule(name, command, opts, once)
    ngx_update_time()
    local job = {
        name = name,
        command = to_command(command, opts.env),
        parse = is_source(command) and command.parse or nil,
        transform = opts.transform,
        interval = default_interval,
        interval_set = opts.interval ~= nil,
        retry = default_retry,
        retry_max = DEFAULT_RETRY_MAX,
        refresh_before = DEFAULT_REFRESH_BEFORE,
        cooldown = DEFAULT_COOLDOWN,
        timeout = DEFAULT_TIMEOUT,
        once = once,
        key = "",
        due = ngx_now(),
        failures = 0,
        started = -math.huge
    }
    for key, value in pairs(opts) do
        if OPTIONS[key] == "number" then
            job[key] = value
        end
    end
    job.key = job_key(job)
    adopt(
        the_dict(),
        job
    )
    local old = jobs[name]
    if old ~= nil and old.run ~= nil then
        old.run.discard = true
        kill_run(old.run)
        job.run = old.run
    end
    jobs[name] = job
    local ok, err = ensure_ticking()
    if not ok then
        jobs[name] = nil
        ngx_log(
            ERR,
            "ngx_aws_token: cannot schedule \"",
            name,
            "\": ",
            err
        )
        return nil, "no timer: " .. err
    end
    return true, nil
end


local function non_empty(s)
    return type(s) == "string" and s ~= ""
end


--- cjson.safe, loaded when a preset first needs it.
local function json_decode(text)
    if json == nil then
        local ok, mod = pcall(require, "cjson.safe")
        if not ok then
            return nil
        end
        json = mod
    end
    local doc = json.decode(text)
    return doc
end


--- ECR's answer: {"authorizationData": [{"authorizationToken", "expiresAt"}]}
local function parse_ecr(output)
    local doc = json_decode(output)
    if type(doc) ~= "table" then
        return {err = "the output is not JSON (is cjson installed?)"}
    end
    local missing = "no authorizationData[0].authorizationToken in output"
    local list = doc.authorizationData
    if type(list) ~= "table" then
        return {err = missing}
    end
    local data = list[1]
    if type(data) ~= "table" or not non_empty(data.authorizationToken) then
        return {err = missing}
    end
    return {value = "Basic " .. data.authorizationToken,
        expires = data.expiresAt}
end


--- CodeArtifact's answer: {"authorizationToken", "expiration"}
local function parse_codeartifact(output)
    local doc = json_decode(output)
    if type(doc) ~= "table" then
        return {err = "the output is not JSON (is cjson installed?)"}
    end
    if not non_empty(doc.authorizationToken) then
        return {err = "no authorizationToken in output"}
    end
    return {value = "Bearer " .. doc.authorizationToken,
        expires = doc.expiration}
end


--- Checks a preset's options against `known` (name -> kind) and appends
-- the AWS CLI's options they stand for to `args`; an error message when
-- they are wrong.
local function preset_args(fn, options, known, args)
    if options == nil then
        return nil
    end
    if type(options) ~= "table" then
        return fn .. "() wants an options table"
    end
    local opts = options
    for _, key in ipairs(sorted_keys(opts)) do
        local value = opts[key]
        local flag = known[key]
        if flag == nil then
            return ((fn .. "() has no option \"") .. key) .. "\""
        end
        local kind = key == "duration" and "number" or "string"
        if key == "env" then
            if type(value) ~= "table" then
                return fn .. "() option \"env\" is not a table"
            end
            local bad = check_env(fn, value)
            if bad ~= nil then
                return bad
            end
        elseif type(value) ~= kind then
            return (((fn .. "() option \"") .. key) .. "\" is not a ") .. kind
        else
            args[#args + 1] = flag
            args[#args + 1] = tostring(value)
        end
    end
    return nil
end


local function make_source(args, options, parse)
    local source = {args = args, parse = parse}
    if type(options) == "table" then
        source.env = options.env
    end
    return setmetatable(source, SOURCE_MT)
end


--- Sets the lua_shared_dict that holds the tokens. Workers that never call
-- it find the dict too, once any worker has.
function ____exports.set_storage(dict)
    local name = dict_name(dict)
    if name == nil then
        local msg = "set_storage() wants a lua_shared_dict (%s), got a %s"
        error(
            str_format(
                msg,
                "e.g. ngx.shared.my_aws_tokens",
                type(dict)
            ),
            2
        )
    end
    storage = dict
    storage_name = name
    dict:set(MARK, true)
end


--- Fetches the token `name` now, from a timer, and again every `interval`
-- seconds; a failure is retried after `retry` seconds.
function ____exports.rotate(name, command, options)
    local opts, bad = check_args("rotate", name, command, options)
    if opts == nil then
        error(bad, 2)
    end
    return schedule(name, command, opts, false)
end


--- Fetches the token `name` once, from a timer, retrying until it is
-- stored. (1.0 API.)
function ____exports.manage(name, command, options)
    local opts, bad = check_args("manage", name, command, options)
    if opts == nil then
        error(bad, 2)
    end
    return schedule(name, command, opts, true)
end


--- Runs `command` now and returns the value it gives, or `nil, err`.
-- Blocks the worker unless ngx.pipe is there and the phase can yield.
-- (1.0 API.)
function ____exports.create(command, transform)
    local preset = is_source(command)
    if not preset and (type(command) ~= "string" or trim(command) == "") then
        error("create() wants a command (a string) or a preset", 2)
    end
    if transform ~= nil and type(transform) ~= "function" then
        error("create() wants a transform function", 2)
    end
    local cmd = to_command(command)
    local outcome
    if ngx_pipe ~= nil and YIELDABLE[ngx.get_phase()] == true then
        ngx_update_time()
        local run = {
            id = "create",
            deadline = ngx_now() + DEFAULT_TIMEOUT,
            killed = false,
            discard = false
        }
        outcome = run_pipe(ngx_pipe, cmd, run)
    else
        outcome = run_blocking(cmd)
    end
    local parse = is_source(command) and command.parse or nil
    local value, _, reason = evaluate(outcome, parse, transform)
    if value == nil then
        return nil, hide(reason, outcome.stdout)
    end
    return value, nil
end


--- A source for rotate() that runs `aws ecr get-authorization-token` and
-- stores `Basic <token>` until the token's own `expiresAt`. Options (all
-- strings): region, registry_id, profile, endpoint_url; env (a table).
function ____exports.ecr(options)
    local args = {
        "aws",
        "ecr",
        "get-authorization-token",
        "--output",
        "json"
    }
    local bad = preset_args("ecr", options, ECR_OPTIONS, args)
    if bad ~= nil then
        error(bad, 2)
    end
    return make_source(args, options, parse_ecr)
end


--- A source for rotate() that runs `aws codeartifact get-authorization-token`
-- and stores `Bearer <token>` until its `expiration`. Options: domain
-- (required), domain_owner, duration (seconds), region, profile,
-- endpoint_url; env (a table).
function ____exports.codeartifact(options)
    local args = {"aws", "codeartifact", "get-authorization-token"}
    args[#args + 1] = "--output"
    args[#args + 1] = "json"
    local bad = preset_args("codeartifact", options, CA_OPTIONS, args)
    if bad ~= nil then
        error(bad, 2)
    end
    if type(options) ~= "table" or not non_empty(options.domain) then
        error("codeartifact() wants a domain", 2)
    end
    local duration = options.duration
    if duration ~= nil and (type(duration) ~= "number" or duration ~= 0 and (
        duration < 900 or duration > 43200)) then
        error("codeartifact() duration must be 0 or 900 to 43200 s", 2)
    end
    return make_source(args, options, parse_codeartifact)
end


--- The current value of token `name`, or `nil, err`. Called per request:
-- one dict read and nothing else.
function ____exports.token(name)
    if type(name) ~= "string" then
        error("token() wants a token name (a string)", 2)
    end
    local dict = storage
    if dict == nil then
        local now = ngx_now()
        if now - last_scan < 1 then
            return nil, "no storage"
        end
        last_scan = now
        dict = find_storage()
        if dict == nil then
            return nil, "no storage"
        end
    end
    local value = dict:get(name)
    if value ~= nil then
        return value, nil
    end
    local fetched = dict:get(meta("fetched", name))
    return nil, fetched ~= nil and "expired" or "not ready"
end


--- Asks for a new token `name` now, e.g. after the upstream answered 401
-- or 403, from any worker and any phase. One run at a time, and none
-- sooner than `cooldown` seconds after the last one began: a burst of
-- calls makes one run.
function ____exports.refresh(name)
    if type(name) ~= "string" then
        error("refresh() wants a token name (a string)", 2)
    end
    local dict = storage ~= nil and storage or find_storage()
    if dict == nil then
        return nil, "no storage"
    end
    local key = dict:get(meta("command", name))
    if type(key) ~= "string" or str_sub(key, 1, 7) ~= "rotate\0" then
        return nil, "unknown token"
    end
    local failures = dict:get(meta("failures", name))
    if type(failures) == "number" and failures > 0 then
        return true, nil
    end
    local at = ngx_now()
    local started = dict:get(meta("started", name))
    local cooldown = dict:get(meta("cooldown", name))
    if type(started) == "number" then
        local gap = type(cooldown) == "number" and cooldown or DEFAULT_COOLDOWN
        at = math.max(at, started + gap)
    end
    local due = dict:get(meta("due", name))
    if type(due) ~= "number" or at < due then
        keep(
            dict,
            meta("due", name),
            at
        )
    end
    return true, nil
end


local function number_or_nil(dict, key)
    local v = dict:get(key)
    return type(v) == "number" and v > 0 and v < math.huge and v or nil
end


local function status_of(dict, name)
    local failures = dict:get(meta("failures", name))
    local err = dict:get(meta("error", name))
    local runner = dict:get(meta("runner", name))
    local lock = dict:get(meta("lock", name))
    return {
        fetched_at = number_or_nil(
            dict,
            meta("fetched", name)
        ),
        expires_at = number_or_nil(
            dict,
            meta("expires", name)
        ),
        next_refresh = number_or_nil(
            dict,
            meta("due", name)
        ),
        last_error = type(err) == "string" and err or nil,
        last_error_at = number_or_nil(
            dict,
            meta("error_at", name)
        ),
        failures = type(failures) == "number" and failures or 0,
        runner = type(runner) == "string" and runner or nil,
        running = lock ~= nil
    }
end


--- What is known of token `name`, or of every token (a table by name):
-- when it was fetched, when it expires, the next refresh, the last error
-- and when, failures in a row, the runner, whether a run is going on.
-- Never the token. For a status page, not for every request.
function ____exports.status(name)
    if name ~= nil and type(name) ~= "string" then
        error("status() wants a token name (a string) or nothing", 2)
    end
    local dict = storage ~= nil and storage or find_storage()
    if dict == nil then
        return nil, "no storage"
    end
    if name ~= nil then
        local key = dict:get(meta("command", name))
        if key == nil then
            return nil, "unknown token"
        end
        return status_of(dict, name), nil
    end
    local all = {}
    local prefix = meta("command", "")
    for _, key in ipairs(dict:get_keys(0)) do
        if str_sub(key, 1, #prefix) == prefix then
            local token_name = str_sub(key, #prefix + 1)
            all[token_name] = status_of(dict, token_name)
        end
    end
    return all, nil
end


--- Seconds between fetches for rotate() calls made after it. (1.0 API.)
function ____exports.set_interval(seconds)
    if not seconds_ok(seconds) then
        error("set_interval() wants a positive number of seconds", 2)
    end
    default_interval = seconds
end


--- Seconds before a failed fetch is retried, for later calls. (1.0 API.)
function ____exports.set_retry(seconds)
    if not seconds_ok(seconds) then
        error("set_retry() wants a positive number of seconds", 2)
    end
    default_retry = seconds
end
____exports._VERSION = VERSION
return ____exports
