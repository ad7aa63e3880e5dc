/**
 * ngx_aws_token: keeps short-lived AWS tokens (ECR, CodeArtifact, ...)
 * fresh in a lua_shared_dict, so any nginx worker can read them per request.
 *
 * Generated from src/ngx_aws_token.ts by TypeScriptToLua: edit that file,
 * then run `make build`.
 *
 * Copyright (c) the ngx_aws_token authors. MIT licensed.
 */

const ngx_log = ngx.log;
const ngx_now = ngx.now;
const ngx_update_time = ngx.update_time;
const ngx_timer_at = ngx.timer.at;
const ngx_timer_every = ngx.timer.every;
const WARN = ngx.WARN;
const ERR = ngx.ERR;
const INFO = ngx.INFO;
const NOTICE = ngx.NOTICE;
const str_find = string.find;
const str_format = string.format;
const str_gsub = string.gsub;
const str_lower = string.lower;
const str_match = string.match;
const str_sub = string.sub;

const VERSION = "2.0.0";

/** Seconds between two fetches of a token, as in 1.0: 6 hours. */
const DEFAULT_INTERVAL = 6 * 60 * 60;

/** Seconds before a failed fetch is tried again. */
const DEFAULT_RETRY = 30;

/** Seconds a command may run before it is killed. */
const DEFAULT_TIMEOUT = 60;

/** The longest `timeout`: a day (ngx.pipe takes no more than 49 days). */
const MAX_TIMEOUT = 86400;

/** Seconds between two looks at the schedule and at running commands. */
const TICK = 0.5;

/** Seconds a killed command may take to report before it is abandoned. */
const KILL_GRACE = 10;

/**
 * Seconds a run's lock outlives its longest possible run, so that a
 * worker killed while it runs a command leaves the lock to expire and
 * another worker takes over: `timeout` + KILL_GRACE + LOCK_GRACE.
 */
const LOCK_GRACE = 5;

/** Seconds a token may live; a later expiry is a mistake (milliseconds). */
const MAX_LIFETIME = 366 * 24 * 3600;

/** Seconds between two runs that refresh() asked for. */
const DEFAULT_COOLDOWN = 10;

/**
 * Minutes after its end that a run no worker collected (its worker was
 * killed, or nginx stopped with `-s stop`) is removed by a later run.
 */
const ORPHAN_MINUTES = 10;

/** Bytes of a command's stderr kept for the log. */
const EXCERPT = 200;

/**
 * Keys of our own in the user's dict start with a NUL byte; token names
 * may not contain control characters, so the two never collide.
 */
const MARK = "\0ngx_aws_token:storage";

/**
 * Runs before every command. The AWS CLI v2 pipes output through `less`
 * unless AWS_PAGER is set to the empty string; slim images lack `less`.
 */
const PRELUDE = "AWS_PAGER=''; export AWS_PAGER\n";

/** Where the AWS CLI looks for credentials, besides instance metadata. */
const CREDENTIAL_VARS = [
    "HOME",
    "AWS_ACCESS_KEY_ID",
    "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
];

const REGION_VARS = ["AWS_REGION", "AWS_DEFAULT_REGION"];

const REGION_HINT = " (keep the region with `env AWS_DEFAULT_REGION;` in "
    + "nginx.conf, or pass --region)";

const ENV_HINT = table.concat(
    [
        " (nginx workers have an empty environment: no HOME and no AWS_*",
        "credentials; keep them with `env` directives in nginx.conf,",
        "e.g. `env HOME;` or `env AWS_ACCESS_KEY_ID;`)",
    ],
    " "
);

/** The reason for a killed command; names the option that allows more. */
const TIMED_OUT = "timed out after %s s (raise the `timeout` option if the "
    + "command needs longer)";

const FD_CDEF = table.concat(
    [
        "int ngx_aws_token_syscall(long n, unsigned int a, unsigned int b,",
        'unsigned int c) __asm__("syscall");',
        "int ngx_aws_token_fcntl(int fd, int cmd, int arg)",
        '__asm__("fcntl");',
    ],
    " "
);

/** Descriptors marked one by one where close_range(2) is missing. */
const FD_SCAN = 1024;

/** Bytes of stdout read at most; a token is a few kilobytes. */
const MAX_OUTPUT = 65536;

/** A name /bin/sh takes for a variable. */
const ENV_NAME = "^[%a_][%w_]*$";

/** ecr()'s options and the AWS CLI's flags for them. */
const ECR_OPTIONS: LuaTable<string, string> = new LuaTable();
ECR_OPTIONS.set("region", "--region");
ECR_OPTIONS.set("registry_id", "--registry-ids");
ECR_OPTIONS.set("profile", "--profile");
ECR_OPTIONS.set("endpoint_url", "--endpoint-url");
ECR_OPTIONS.set("env", "");

/** codeartifact()'s options and the AWS CLI's flags for them. */
const CA_OPTIONS: LuaTable<string, string> = new LuaTable();
CA_OPTIONS.set("domain", "--domain");
CA_OPTIONS.set("domain_owner", "--domain-owner");
CA_OPTIONS.set("duration", "--duration-seconds");
CA_OPTIONS.set("region", "--region");
CA_OPTIONS.set("profile", "--profile");
CA_OPTIONS.set("endpoint_url", "--endpoint-url");
CA_OPTIONS.set("env", "");

/** A timestamp as the AWS CLI prints it in ISO 8601. */
const ISO_8601 = "^(%d%d%d%d)%-(%d%d)%-(%d%d)[T ](%d%d):(%d%d):(%d%d)"
    + "(%.?%d*)(.*)$";

/** Phases in which a light thread may yield (and ngx.pipe may wait). */
const YIELDABLE: LuaTable<string, boolean> = new LuaTable();
YIELDABLE.set("timer", true);
YIELDABLE.set("rewrite", true);
YIELDABLE.set("access", true);
YIELDABLE.set("content", true);

/** Seconds a failed fetch waits at most before the next try. */
const DEFAULT_RETRY_MAX = 600;

/** The share of a token's lifetime left when it is refreshed. */
const DEFAULT_REFRESH_BEFORE = 0.25;

/**
 * A refresh comes up to this share of the lifetime early (at most
 * MAX_JITTER seconds), so proxies started together do not refresh in step.
 */
const JITTER = 0.05;
const MAX_JITTER = 300;

/** Options that rotate() and manage() accept, and their kind. */
const OPTIONS: LuaTable<string, string> = new LuaTable();
OPTIONS.set("transform", "function");
OPTIONS.set("interval", "number");
OPTIONS.set("retry", "number");
OPTIONS.set("retry_max", "number");
OPTIONS.set("timeout", "number");
OPTIONS.set("refresh_before", "number");
OPTIONS.set("cooldown", "number");
OPTIONS.set("env", "table");

/** Turns a command's output into the value, and optionally its expiry. */
type Transform = (this: void, output: string) => unknown;

/** Variables set for one command only: name -> value. */
type Env = LuaTable<string, string | number>;

interface RotateOptions {
    transform?: Transform;
    interval?: number;
    retry?: number;
    retry_max?: number;
    timeout?: number;
    refresh_before?: number;
    cooldown?: number;
    env?: Env;
}

/** What a preset's parser found in the output. */
interface Parsed {
    value?: string;
    expires?: unknown;
    err?: string;
}

type Parse = (this: void, output: string) => Parsed;

/**
 * A command built by a preset (ecr(), codeartifact()): an argument vector
 * run without a shell, and the parser for its JSON output.
 */
interface Source {
    args: string[];
    env?: Env;
    parse: Parse;
}

/** What /bin/sh runs: a script and its positional parameters. */
interface Command {
    script: string;
    args: string[];
}

/** What a command did: its exit status and output, or why it did not run. */
interface Outcome {
    status?: number;
    stdout?: string;
    stderr?: string;
    /** The runner's own failure: could not start, timed out. */
    failure?: string;
}

/** One run of a command, as long as it is in progress. */
interface Run {
    /** This run's lock in the dict: worker pid and run count. */
    id: string;
    /** The background runner's private directory; none with ngx.pipe. */
    dir?: string;
    deadline: number;
    proc?: NgxPipeProc;
    killed: boolean;
    /** Set when rotate() replaced the job: the outcome is dropped. */
    discard: boolean;
}

interface Job {
    name: string;
    command: Command;
    parse?: Parse;
    transform?: Transform;
    interval: number;
    /** The user chose `interval`: it caps a schedule from the expiry. */
    interval_set: boolean;
    retry: number;
    retry_max: number;
    refresh_before: number;
    cooldown: number;
    timeout: number;
    /** manage(): stop once a token is stored. */
    once: boolean;
    /** What makes the job itself: a new one reschedules at once. */
    key: string;
    /**
     * The next fetch and the failures in a row as this worker last knew
     * them; the dict's word wins, these serve when the dict lost it.
     */
    due: number;
    failures: number;
    /** When this worker last started the command. */
    started: number;
    run?: Run;
}

type Result<T> = LuaMultiReturn<[T, undefined] | [undefined, string]>;

let storage: NgxSharedDict | undefined;
let storage_name: string | undefined;
let default_interval = DEFAULT_INTERVAL;
let default_retry = DEFAULT_RETRY;
const jobs: LuaTable<string, Job> = new LuaTable();
let ticking = false;
let run_count = 0;
let workdir: string | undefined;
let last_scan = -1;
let fd_lib: FdLib | undefined;
let fd_lib_tried = false;
let seed = 0;
let last_full_log = -60;
let json: JsonModule | undefined;

/** Tags the tables that ecr() and codeartifact() return. */
const SOURCE_MT = { __name: "ngx_aws_token.source" };

/** The libc calls that keep nginx's descriptors out of our commands. */
interface FdLib {
    ngx_aws_token_syscall(
        this: void,
        n: number,
        a: number,
        b: number,
        c: number
    ): number;
    ngx_aws_token_fcntl(this: void, fd: number, cmd: number, arg: number): number;
}

/** LuaJIT's FFI, as far as we use it. */
interface Ffi {
    cdef(this: void, defs: string): void;
    C: FdLib;
}

const [has_pipe, pipe_or_err] = pcall(require, "ngx.pipe");
const ngx_pipe: NgxPipeModule | undefined = has_pipe
    ? (pipe_or_err as NgxPipeModule)
    : undefined;

/** How this worker runs commands, as status() tells it. */
const RUNNER = ngx_pipe !== undefined ? "ngx.pipe" : "background";


/**
 * Binds close_range(2) and fcntl(2) under names of our own, so the
 * declarations cannot clash with another module's.
 */
function load_fd_lib(): FdLib | undefined {
    const [ok, ffi] = pcall(require, "ffi");
    if (!ok) {
        return undefined;
    }
    const [bound] = pcall((ffi as Ffi).cdef, FD_CDEF);
    return bound ? (ffi as Ffi).C : undefined;
}


/**
 * Marks every descriptor of this worker above stderr close-on-exec.
 * nginx leaves its listening sockets inheritable: a command started with
 * them would hold nginx's ports for as long as it runs.
 */
function cloexec_all() {
    if (!fd_lib_tried) {
        fd_lib_tried = true;
        fd_lib = load_fd_lib();
    }
    if (fd_lib === undefined) {
        return;
    }
    // close_range(3, ~0U, CLOSE_RANGE_CLOEXEC): one call on Linux 5.11+
    if (fd_lib.ngx_aws_token_syscall(436, 3, 0xffffffff, 4) === 0) {
        return;
    }
    for (let fd = 3; fd < FD_SCAN; fd++) {
        const flags = fd_lib.ngx_aws_token_fcntl(fd, 1, 0); // F_GETFD
        if (flags >= 0) {
            fd_lib.ngx_aws_token_fcntl(fd, 2, flags | 1); // FD_CLOEXEC
        }
    }
}


/** Strips leading and trailing whitespace. */
function trim(s: string): string {
    const [out] = str_gsub(s, "^%s+", "");
    const [res] = str_gsub(out, "%s+$", "");
    return res;
}


/** True when `s` holds a control character (CR, LF, NUL, TAB, ...). */
function has_control(s: string): boolean {
    const [at] = str_find(s, "%c");
    return at !== undefined;
}


/**
 * The keys of `t`, sorted: pairs() order differs from one LuaJIT VM to
 * the next, and what a job runs must read the same in every worker.
 */
function sorted_keys<V>(t: LuaTable<string, V>): string[] {
    const keys: string[] = [];
    for (const [key] of t) {
        keys[keys.length] = tostring(key);
    }
    table.sort(keys);
    return keys;
}


/** Wraps `s` in single quotes for /bin/sh. */
function shell_quote(s: string): string {
    const [quoted] = str_gsub(s, "'", "'\\''");
    return "'" + quoted + "'";
}


/**
 * Replaces every occurrence of `secret` in `text`, so a message that
 * echoes a command's output cannot carry a token into the log.
 */
function redact(text: string, secret: string | undefined): string {
    if (secret === undefined || secret.length < 4) {
        return text;
    }

    let out = "";
    let from = 1;
    for (;;) {
        const [s, e] = str_find(text, secret, from, true);
        if (s === undefined || e === undefined) {
            return out + str_sub(text, from);
        }
        out = out + str_sub(text, from, s - 1) + "<redacted>";
        from = e + 1;
    }
}


/**
 * Hides what a message quotes of a command's output: the output itself,
 * and any token-like run of 12 or more characters found in it (a part of
 * a token, one line of several).
 */
function hide(text: string, stdout: string | undefined): string {
    if (stdout === undefined) {
        return text;
    }
    const plain = redact(text, trim(stdout));
    // dots too: JWT-like tokens (CodeArtifact's) are dotted
    const [out] = str_gsub(plain, "[%w%+/=_%-%.]+", (run: string) => {
        if (run.length < 12) {
            return run;
        }
        const [at] = str_find(stdout, run, 1, true);
        return at !== undefined ? "<redacted>" : run;
    });
    return out;
}


/** A short, single-line excerpt of a command's stderr for the log. */
function excerpt(stderr: string | undefined, stdout: string | undefined) {
    if (stderr === undefined) {
        return "";
    }

    const [flat] = str_gsub(hide(trim(stderr), stdout), "%c+", " ");
    if (flat === "") {
        return "";
    }
    if (flat.length > EXCERPT) {
        return ": " + str_sub(flat, 1, EXCERPT) + "...";
    }
    return ": " + flat;
}


/** The name under which `dict` is declared, if it is a lua_shared_dict. */
function dict_name(dict: unknown): string | undefined {
    for (const [name, zone] of ngx.shared) {
        if (zone === dict) {
            return name;
        }
    }
    return undefined;
}


/**
 * Finds the dict another worker passed to set_storage(): the 1.0 README
 * calls it on worker 0 only, yet reads tokens on every worker.
 */
function find_storage(): NgxSharedDict | undefined {
    for (const [name, zone] of ngx.shared) {
        const [mark] = zone.get(MARK);
        if (mark !== undefined) {
            storage = zone;
            storage_name = name;
            return zone;
        }
    }
    return undefined;
}


function read_file(path: string, limit?: number): string | undefined {
    const [f] = io.open(path, "rb");
    if (f === undefined) {
        return undefined;
    }

    const data = f.read(limit !== undefined ? limit : "*a");
    f.close();
    return data !== undefined ? data : "";
}


/** A number in [0, 1), from a generator of our own (Park-Miller). */
function rand(): number {
    if (seed === 0) {
        // math.randomseed() would change the sequence for everyone else
        const now = Math.floor(ngx_now() * 1000);
        seed = ((ngx.worker.pid() * 7919 + now) % 2147483646) + 1;
    }
    seed = (seed * 16807) % 2147483647;
    return seed / 2147483647;
}


/**
 * The directory for command output: tmpfs where there is one, so a token
 * never reaches a disk.
 */
function get_workdir(): string {
    if (workdir === undefined) {
        const [shm] = io.open("/dev/shm", "rb");
        if (shm !== undefined) {
            shm.close();
            workdir = "/dev/shm";
        } else {
            workdir = "/tmp";
        }
    }
    return workdir;
}


/**
 * Removes, in the background, the directories of runs that ended over
 * ORPHAN_MINUTES ago and that no worker collected; a run still going on
 * has no `done` file and is left alone, however long its timeout.
 */
function sweep_script(): string {
    return str_format(
        "find %s -maxdepth 2 -path '*/ngx_aws_token.*/done' -user " +
            "\"$(id -u)\" -mmin +%d -exec sh -c " +
            "'for f; do rm -rf \"${f%%/done}\"; done' sh {} + " +
            "</dev/null >/dev/null 2>&1 &",
        get_workdir(),
        ORPHAN_MINUTES
    );
}


/**
 * The shell script that runs `command` with its stdout, stderr and exit
 * status going to files in `dir`, a directory only this user can read.
 * io.popen():close() cannot be trusted with the exit status under nginx:
 * without Lua 5.2 compatibility it returns true for any command, and
 * nginx's SIGCHLD handler may reap the child first.
 *
 * In the background the script returns at once; `done` appears when the
 * command has ended. The command gets a session of its own (setsid), so a
 * timeout can kill it together with its children. Directories that a dead
 * worker never collected are swept by the next run.
 */
function runner_script(dir: string, command: Command, background: boolean) {
    let argv = "/bin/sh -c " + shell_quote(command.script);
    if (command.args.length > 0) {
        argv = argv + " sh";
        for (const arg of command.args) {
            argv = argv + " " + shell_quote(arg);
        }
    }
    const run = str_format("$S %s >%s/out 2>%s/err </dev/null", argv, dir, dir);
    const setsid = "S=; command -v setsid >/dev/null 2>&1 && S=setsid";
    // the files holding output are the user's alone; the command itself
    // runs with the worker's own umask
    const head = str_format(
        "u=$(umask); umask 077; mkdir %s || exit 1; : >%s/out; : >%s/err; " +
            'umask "$u"',
        dir,
        dir,
        dir
    );
    const rc = str_format("echo $? >%s/rc", dir);
    const done = str_format(": >%s/done", dir);
    if (!background) {
        return table.concat([head, setsid, run, rc, done], "\n");
    }

    const pid = str_format("echo $! >%s/pid", dir);
    const lines = [head, setsid, "(", run + " &", pid, "wait $!", rc, done];
    return table.concat(lines, "\n") + "\n) </dev/null >/dev/null 2>&1 &\n"
        + sweep_script();
}


/** Starts `command` through /bin/sh; returns its private directory. */
function launch(command: Command, background: boolean): Result<string> {
    cloexec_all();
    for (;;) {
        run_count = run_count + 1;
        const base = get_workdir();
        // not to be guessed: a directory made first would stop the run
        const dir = str_format(
            "%s/ngx_aws_token.%d.%d.%d.%d",
            base,
            ngx.worker.pid(),
            run_count,
            Math.floor(ngx_now() * 1000),
            Math.floor(rand() * 1e9)
        );

        const script = runner_script(dir, command, background);
        const rc: unknown = os.execute(script);
        // LuaJIT gives the raw status; with 5.2 compatibility, true
        if (rc === 0 || rc === true) {
            return $multi(dir, undefined);
        }
        if (base === "/tmp") {
            return $multi(undefined, "could not create " + dir);
        }
        // /dev/shm is there but not writable for this user
        workdir = "/tmp";
    }
}


/** Removes a run's private directory and what is in it. */
function remove_dir(dir: string) {
    os.remove(dir + "/out");
    os.remove(dir + "/err");
    os.remove(dir + "/rc");
    os.remove(dir + "/pid");
    os.remove(dir + "/done");
    os.remove(dir);
}


/** Reads what the command left in `dir` and removes it; nil while busy. */
function collect(dir: string): Outcome | undefined {
    const [done] = io.open(dir + "/done", "rb");
    if (done === undefined) {
        return undefined;
    }
    done.close();

    const rc = read_file(dir + "/rc");
    const outcome: Outcome = {
        status: tonumber(trim(rc !== undefined ? rc : "")),
        stdout: read_file(dir + "/out", MAX_OUTPUT + 1),
        stderr: read_file(dir + "/err", 4096),
    };
    remove_dir(dir);
    if (outcome.status === undefined) {
        outcome.failure = "the command's exit status is missing";
    }
    return outcome;
}


/** Kills a background command and its children. */
function kill_run(run: Run) {
    run.killed = true;
    if (run.proc !== undefined) {
        run.proc.kill(9);
        return;
    }
    if (run.dir === undefined) {
        return;
    }

    const [done] = io.open(run.dir + "/done", "rb");
    if (done !== undefined) {
        // it has ended: its pid may be another process's by now
        done.close();
        return;
    }
    const pid = read_file(run.dir + "/pid");
    const [num] = str_match(pid !== undefined ? pid : "", "^%d+");
    if (num !== undefined) {
        // dash's kill takes no `--`; -PID is the command's process group
        const cmd = "kill -9 -%s 2>/dev/null || kill -9 %s 2>/dev/null";
        os.execute(str_format(cmd, num, num));
    }
}


/** Runs a command to its end, blocking this worker while it runs. */
function run_blocking(command: Command): Outcome {
    const [dir, err] = launch(command, false);
    if (dir === undefined) {
        return { failure: err };
    }

    const outcome = collect(dir);
    if (outcome === undefined) {
        remove_dir(dir);
        return { failure: "the command did not finish" };
    }
    return outcome;
}


/** Reads all of one of a process's streams; for a light thread. */
function read_stream(
    this: void,
    proc: NgxPipeProc,
    stream: "stdout" | "stderr"
): LuaMultiReturn<[string | undefined, string | undefined]> {
    let data, err, partial;
    if (stream === "stdout") {
        [data, err, partial] = proc.stdout_read_all();
    } else {
        [data, err, partial] = proc.stderr_read_all();
    }
    if (data !== undefined) {
        return $multi(data, undefined);
    }
    return $multi(partial, err);
}


/**
 * Runs a command through ngx.pipe; yields instead of blocking, so it needs
 * a phase that can yield (a timer).
 */
function run_pipe(pipe: NgxPipeModule, command: Command, run: Run): Outcome {
    const argv = ["/bin/sh", "-c", command.script];
    if (command.args.length > 0) {
        // $0, then the positional parameters
        argv[argv.length] = "sh";
        for (const arg of command.args) {
            argv[argv.length] = arg;
        }
    }
    const [proc, err] = pipe.spawn(argv);
    if (proc === undefined) {
        return { failure: "could not start the command: " + err };
    }
    run.proc = proc;

    ngx_update_time();
    const ms = Math.max(1, Math.floor((run.deadline - ngx_now()) * 1000));
    proc.set_timeouts(ms, ms, ms, ms);

    // stderr is drained beside stdout: a full stderr pipe would stall both
    const reader = ngx.thread.spawn(read_stream, proc, "stderr");
    const [stdout, read_err] = read_stream(proc, "stdout");
    const [read, text] = ngx.thread.wait(reader);
    let stderr: string | undefined = undefined;
    if (read) {
        stderr = text;
    }

    if (read_err !== undefined) {
        kill_run(run);
        proc.wait();
        if (read_err === "timeout") {
            return { failure: "timed out", stderr: stderr };
        }
        const failure = "could not read its output: " + read_err;
        return { failure: failure, stderr: stderr };
    }

    ngx_update_time();
    const left = Math.max(1, Math.floor((run.deadline - ngx_now()) * 1000));
    proc.set_timeouts(undefined, undefined, undefined, left);
    const [ok, reason, status] = proc.wait();
    if (ok === undefined) {
        kill_run(run);
        return { failure: "could not wait for it: " + reason };
    }
    if (reason === "signal") {
        return { failure: "killed by signal " + status, stderr: stderr };
    }
    return { status: status, stdout: stdout, stderr: stderr };
}


/** Days from 1970-01-01 to a date of the proleptic Gregorian calendar. */
function days_from_civil(y: number, m: number, d: number): number {
    // years start in March, so the leap day ends a year
    const year = m <= 2 ? y - 1 : y;
    const era = Math.floor(year / 400);
    const yoe = year - era * 400;
    const doy = Math.floor((153 * ((m + 9) % 12) + 2) / 5) + d - 1;
    const doe = yoe * 365 + Math.floor(yoe / 4) - Math.floor(yoe / 100) + doy;
    return era * 146097 + doe - 719468;
}


/** `n` unless it is NaN or infinite. */
function finite(n: number): number | undefined {
    return n === n && n > -Infinity && n < Infinity ? n : undefined;
}


/**
 * Epoch seconds from what the AWS CLI prints for a timestamp: a number
 * (`cli_timestamp_format = wire`), or ISO 8601 with a zone offset or `Z`
 * and optional fractional seconds (the default, `iso8601`).
 */
function parse_time(v: unknown): number | undefined {
    if (typeof v === "number") {
        return finite(v);
    }
    if (typeof v !== "string") {
        return undefined;
    }
    const num = tonumber(v);
    if (num !== undefined) {
        return finite(num);
    }

    const [y, mo, d, h, mi, sec, frac, zone] = str_match(v, ISO_8601);
    if (y === undefined || zone === undefined) {
        return undefined;
    }
    let offset = 0;
    if (zone !== "Z" && zone !== "z") {
        const [sign, zh, zm] = str_match(zone, "^([+-])(%d%d):?(%d%d)$");
        if (sign === undefined) {
            return undefined;
        }
        offset = (tonumber(zh)! * 3600 + tonumber(zm)! * 60)
            * (sign === "-" ? -1 : 1);
    }

    const days = days_from_civil(tonumber(y)!, tonumber(mo)!, tonumber(d)!);
    const fraction = frac !== undefined && frac !== "" ? tonumber(frac)! : 0;
    return days * 86400 + tonumber(h)! * 3600 + tonumber(mi)! * 60
        + tonumber(sec)! + fraction - offset;
}


/** Calls a transform for pcall(): its value and expiry, in a table. */
function call_transform(this: void, transform: Transform, output: string) {
    const f = transform as unknown as (
        this: void,
        output: string
    ) => LuaMultiReturn<[unknown, unknown]>;
    const [value, expires] = f(output);
    return { value: value, expires: expires };
}


/**
 * Turns what a command printed into the value to store and its expiry (if
 * known), or says why it must not replace the token. A header value must
 * be one line.
 */
function evaluate(
    outcome: Outcome,
    parse: Parse | undefined,
    transform: Transform | undefined
): LuaMultiReturn<
    [string, number | undefined, undefined] | [undefined, undefined, string]
> {
    if (outcome.failure !== undefined) {
        return $multi(undefined, undefined, outcome.failure);
    }
    if (outcome.status !== 0) {
        return $multi(undefined, undefined, "exit status " + outcome.status);
    }

    const stdout = outcome.stdout !== undefined ? outcome.stdout : "";
    if (stdout.length > MAX_OUTPUT) {
        const reason = "output over " + MAX_OUTPUT + " bytes";
        return $multi(undefined, undefined, reason);
    }
    const output = trim(stdout);
    if (output === "") {
        return $multi(undefined, undefined, "empty output");
    }
    if (output === "None") {
        // what the AWS CLI prints when a --query matches nothing
        const reason = "the CLI printed its null: a --query that matched "
            + "nothing?";
        return $multi(undefined, undefined, reason);
    }

    let value: unknown = output;
    let expires: unknown = undefined;
    let by = "output";
    let from = "the output";
    if (parse !== undefined) {
        const parsed = parse(output);
        if (parsed.err !== undefined) {
            return $multi(undefined, undefined, parsed.err);
        }
        value = parsed.value;
        expires = parsed.expires;
        by = "the token";
        from = "the CLI";
    } else if (transform !== undefined) {
        const [ok, res] = pcall(call_transform, transform, output);
        if (!ok) {
            const reason = "transform failed: " + tostring(res);
            return $multi(undefined, undefined, reason);
        }
        const got = res as { value: unknown; expires: unknown };
        const v = got.value;
        const e = got.expires;
        if (typeof v !== "string") {
            const reason = "transform returned a " + type(v);
            return $multi(undefined, undefined, reason);
        }
        value = v;
        expires = e;
        by = "the transform's value";
        from = "the transform";
    }

    if (typeof value !== "string" || value === "") {
        return $multi(undefined, undefined, by + " is empty");
    }
    if (has_control(value)) {
        return $multi(undefined, undefined, "control characters in " + by);
    }
    if (expires === undefined) {
        return $multi(value, undefined, undefined);
    }
    const at = parse_time(expires);
    if (at === undefined) {
        const reason = "an expiry that is not a time, from " + from;
        return $multi(undefined, undefined, reason);
    }
    return $multi(value, at, undefined);
}


/** True when the worker has any of the variables `names`. */
function has_any(names: string[]): boolean {
    for (const name of names) {
        if (os.getenv(name) !== undefined) {
            return true;
        }
    }
    return false;
}


/**
 * What to tell the user when the AWS CLI failed for want of credentials
 * or a region that nginx's emptied environment took away.
 */
function env_hint(outcome: Outcome): string {
    const stderr = str_lower(outcome.stderr !== undefined ? outcome.stderr : "");
    const [creds] = str_find(stderr, "credentials", 1, true);
    if ((outcome.status === 253 || creds !== undefined)
        && !has_any(CREDENTIAL_VARS)) {
        return ENV_HINT;
    }
    const [region] = str_find(stderr, "region", 1, true);
    if (region !== undefined && !has_any(REGION_VARS)) {
        return REGION_HINT;
    }
    return "";
}


/** Logs at ERR that the dict is too small, with what happened. */
function log_full(name: string, what: string, err?: string) {
    // keep() then need not say the same about the module's own keys
    last_full_log = ngx_now();
    ngx_log(
        ERR,
        'ngx_aws_token: token "',
        name,
        '" ',
        what,
        " lua_shared_dict ",
        storage_name !== undefined ? storage_name : "?",
        err !== undefined ? " (" + err + ")" : "",
        "; raise the size in its lua_shared_dict directive"
    );
}


/** The key of one of our facts about token `name` in the user's dict. */
function meta(kind: string, name: string): string {
    return "\0" + kind + ":" + name;
}


/**
 * Stores a fresh value that lives `ttl` seconds (0: for ever); false when
 * the dict refused it. nginx frees the old value before it finds there is
 * no room for a bigger one, so the old one is put back into its space.
 */
function store(dict: NgxSharedDict, name: string, value: string, ttl: number) {
    const [old] = dict.get(name);
    let left: number | undefined = undefined;
    if (old !== undefined) {
        [left] = dict.ttl(name);
    }
    const [ok, err, forcible] = dict.set(name, value, ttl);
    if (!ok) {
        if (old !== undefined && left !== undefined) {
            dict.set(name, old, left);
        }
        log_full(name, "could not be stored in", err);
        return false;
    }
    if (forcible) {
        log_full(name, "evicted other keys from");
    }

    // eviction may have taken the mark that other workers look for; our
    // own keys never push out a token
    dict.safe_set(MARK, true);
    return true;
}


/** The warning for a failed fetch: name, reason, stderr, what happens. */
function log_failure(
    dict: NgxSharedDict,
    job: Job,
    outcome: Outcome,
    reason: string,
    wait: number
) {
    const failed = outcome.status !== undefined && outcome.status !== 0;
    const [current] = dict.get(job.name);

    ngx_log(
        WARN,
        'ngx_aws_token: could not refresh token "',
        job.name,
        '": ',
        hide(reason, outcome.stdout),
        excerpt(outcome.stderr, outcome.stdout),
        failed ? env_hint(outcome) : "",
        current !== undefined ? "; keeping the current token" : "",
        "; retrying in ",
        str_format("%g", wait),
        " s"
    );
}


/**
 * Seconds before the next try after `failures` failures in a row: `retry`,
 * doubling up to `retry_max`, each but the first up to a quarter shorter
 * so that many proxies spread out.
 */
function backoff(job: Job, failures: number): number {
    const cap = Math.max(job.retry, job.retry_max);
    const delay = Math.min(job.retry * 2 ** (failures - 1), cap);
    if (failures <= 1) {
        return delay;
    }
    return Math.max(job.retry, delay * (1 - 0.25 * rand()));
}


/**
 * Seconds until a token fetched now should be fetched again: once
 * `refresh_before` of its lifetime is left, a little earlier at random;
 * every `interval` when its expiry is not known.
 */
function refresh_in(job: Job, lifetime: number | undefined): number {
    if (lifetime === undefined) {
        return job.interval;
    }
    const jitter = rand() * Math.min(lifetime * JITTER, MAX_JITTER);
    const wait = lifetime * (1 - job.refresh_before) - jitter;
    return job.interval_set ? Math.min(wait, job.interval) : wait;
}


/**
 * Writes one of the module's own keys without pushing out anything else;
 * says at ERR (once a minute) when the dict has no room even for that.
 */
function keep(dict: NgxSharedDict, key: string, value: string | number) {
    const [ok] = dict.safe_set(key, value);
    if (ok) {
        return;
    }
    const now = ngx_now();
    if (now - last_full_log >= 60) {
        last_full_log = now;
        const name = storage_name !== undefined ? storage_name : "?";
        ngx_log(ERR, "ngx_aws_token: lua_shared_dict ", name, " is full: ",
            "no room for the schedule of its tokens, so workers may fetch ",
            "more often than needed; raise the size in its ",
            "lua_shared_dict directive");
    }
}


/** The dict; rotate() made sure there is one before any job exists. */
function the_dict(): NgxSharedDict {
    return (storage !== undefined ? storage : find_storage()) as NgxSharedDict;
}


/** Sets the next fetch for every worker, and this worker's own copy. */
function set_due(dict: NgxSharedDict, job: Job, at: number) {
    job.due = at;
    keep(dict, meta("due", job.name), at);
}


/**
 * False when a later rotate() or manage(), here or in another worker (a
 * reload's new ones), gave the token another command: this job is stale.
 */
function owns(dict: NgxSharedDict, job: Job): boolean {
    const [key] = dict.get(meta("command", job.name));
    return key === undefined || key === job.key;
}


/** Lets go of a run's lock, unless it expired and is another's now. */
function unlock(dict: NgxSharedDict, name: string, run: Run) {
    const key = meta("lock", name);
    const [holder] = dict.get(key);
    if (holder === run.id) {
        dict.delete(key);
    }
}


/** Records a failure, logs it, and schedules the next try. */
function fail(job: Job, outcome: Outcome, reason: string, now: number) {
    const dict = the_dict();
    const [count] = dict.get(meta("failures", job.name));
    // this worker's own count, should the dict have lost the shared one
    const known = typeof count === "number" ? count : 0;
    const failures = Math.max(known, job.failures) + 1;
    const wait = backoff(job, failures);

    job.failures = failures;
    keep(dict, meta("failures", job.name), failures);
    keep(dict, meta("error", job.name), hide(reason, outcome.stdout));
    keep(dict, meta("error_at", job.name), now);
    log_failure(dict, job, outcome, reason, wait);
    set_due(dict, job, now + wait);
}


/** Stores a run's token and its schedule, or records the failure. */
function settle(dict: NgxSharedDict, job: Job, run: Run, outcome: Outcome) {
    const name = job.name;
    if (run.killed && outcome.failure === undefined) {
        outcome = { failure: "timed out", stderr: outcome.stderr };
    }
    if (outcome.failure === "timed out") {
        outcome.failure = str_format(TIMED_OUT, job.timeout);
    }

    ngx_update_time();
    const now = ngx_now();
    const [value, expires, reason] = evaluate(outcome, job.parse, job.transform);
    if (value === undefined) {
        fail(job, outcome, reason, now);
        return;
    }
    const lifetime = expires !== undefined ? expires - now : undefined;
    if (lifetime !== undefined && lifetime <= 0) {
        fail(job, outcome, "the token has expired already (clock?)", now);
        return;
    }
    if (lifetime !== undefined && lifetime > MAX_LIFETIME) {
        const far = "an expiry over a year away (milliseconds?)";
        fail(job, outcome, far, now);
        return;
    }
    if (!store(dict, name, value, lifetime || 0)) {
        fail(job, outcome, "the dict refused the token", now);
        return;
    }

    job.failures = 0;
    keep(dict, meta("fetched", name), now);
    keep(dict, meta("expires", name), expires !== undefined ? expires : 0);
    keep(dict, meta("failures", name), 0);
    ngx_log(INFO, 'ngx_aws_token: refreshed token "', name, '"');
    if (job.once) {
        // manage(): no worker fetches this one again
        set_due(dict, job, Infinity);
        jobs.delete(name);
        return;
    }
    set_due(dict, job, now + refresh_in(job, lifetime));
}


/** Acts on what a run of a job's command gave. */
function complete(name: string, run: Run, outcome: Outcome) {
    const dict = the_dict();
    const job = jobs.get(name);
    if (job !== undefined && job.run === run) {
        // what the old command gave must not stand in for the new one's
        if (!run.discard && owns(dict, job)) {
            settle(dict, job, run, outcome);
        }
        job.run = undefined;
    }
    // only now: another worker must find the new schedule with the lock
    unlock(dict, name, run);
}


/** A timer that runs one command through ngx.pipe. */
function pipe_timer(this: void, premature: boolean, name: string, run: Run) {
    const job = jobs.get(name);
    if (premature || ngx_pipe === undefined || job === undefined) {
        return;
    }
    if (run.discard) {
        // rotate() replaced the job before this timer ran
        complete(name, run, { failure: "replaced" });
        return;
    }
    complete(name, run, run_pipe(ngx_pipe, job.command, run));
}


/**
 * True when the job's next fetch has come: the time the dict says has
 * passed, or the dict lost the token it had (evicted) with no failure
 * pending.
 */
function is_due(dict: NgxSharedDict, job: Job, now: number): boolean {
    if (!owns(dict, job)) {
        return false;
    }
    const [at] = dict.get(meta("due", job.name));
    const due = typeof at === "number" ? at : job.due;
    if (now >= due) {
        return true;
    }
    if (due === Infinity) {
        // manage(): some worker has fetched it once, for good
        return false;
    }
    const [value] = dict.get(job.name);
    const [failures] = dict.get(meta("failures", job.name));
    const [fetched] = dict.get(meta("fetched", job.name));
    if (value !== undefined || fetched === undefined || failures !== 0) {
        return false;
    }
    // a dict too full to keep the token must not make every look a fetch
    const [started] = dict.get(meta("started", job.name));
    const last = Math.max(typeof started === "number" ? started : 0,
        job.started);
    return now - last >= job.retry;
}


/**
 * Takes the token's lock for a run, so that one worker at a time runs its
 * command; false when another worker has it, or has just finished a run.
 */
function try_lock(dict: NgxSharedDict, job: Job, id: string, now: number) {
    const ttl = job.timeout + KILL_GRACE + LOCK_GRACE;
    const [ok] = dict.add(meta("lock", job.name), id, ttl);
    if (!ok) {
        return false;
    }
    // a run may have ended between our look and the lock
    if (!is_due(dict, job, now)) {
        dict.delete(meta("lock", job.name));
        return false;
    }
    return true;
}


/** Starts a job's command without waiting for it, if it can have the lock. */
function start(job: Job, now: number) {
    const dict = the_dict();
    run_count = run_count + 1;
    const id = ngx.worker.pid() + ":" + run_count;
    if (!try_lock(dict, job, id, now)) {
        return;
    }

    const run: Run = {
        id: id,
        deadline: now + job.timeout,
        killed: false,
        discard: false,
    };
    job.run = run;
    job.started = now;
    keep(dict, meta("started", job.name), now);
    keep(dict, meta("runner", job.name), RUNNER);

    if (ngx_pipe !== undefined) {
        const [ok, err] = ngx_timer_at(0, pipe_timer, job.name, run);
        if (!ok) {
            complete(job.name, run, { failure: "no timer: " + err });
        }
        return;
    }

    const [dir, err] = launch(job.command, true);
    if (dir === undefined) {
        complete(job.name, run, { failure: err });
        return;
    }
    run.dir = dir;
}


/** Looks whether a background command has ended; kills it when late. */
function poll(job: Job, run: Run, now: number) {
    const dir = run.dir;
    if (dir === undefined) {
        // ngx.pipe: its own timer waits for the command and its timeouts
        return;
    }

    const outcome = collect(dir);
    if (outcome !== undefined) {
        complete(job.name, run, outcome);
        return;
    }
    if (now < run.deadline) {
        return;
    }
    if (!run.killed) {
        kill_run(run);
        return;
    }
    if (now >= run.deadline + KILL_GRACE) {
        // it ignored SIGKILL's aftermath; give up on it and its files
        os.execute("rm -rf " + dir);
        complete(job.name, run, { failure: "timed out" });
    }
}


/**
 * On worker exit (a reload, `nginx -s quit`): kills this worker's running
 * commands, removes their files and gives up their locks, so that the new
 * workers take over.
 */
function abandon_all() {
    const dict = the_dict();
    for (const [name, job] of jobs) {
        const run = job.run;
        if (run !== undefined) {
            kill_run(run);
            if (run.dir !== undefined) {
                os.execute("rm -rf " + run.dir);
            }
            unlock(dict, name, run);
            job.run = undefined;
        }
    }
}


/** The worker's one timer: starts due jobs and watches running ones. */
function tick(this: void, premature: boolean) {
    if (premature) {
        abandon_all();
        return;
    }

    ngx_update_time();
    const now = ngx_now();
    const dict = the_dict();
    for (const [name, job] of jobs) {
        const run = job.run;
        if (run !== undefined) {
            poll(job, run, now);
        } else if (is_due(dict, job, now)) {
            start(job, now);
        } else if (job.once && dict.get(meta("due", name))[0] === Infinity) {
            // manage(): another worker fetched it
            jobs.delete(name);
        }
    }
}


/** Starts the worker's timer once, and a first look right away. */
function ensure_ticking(): Result<true> {
    if (!ticking) {
        const [ok, err] = ngx_timer_every(TICK, tick);
        if (!ok) {
            return $multi(undefined, err);
        }
        ticking = true;
        const how = ngx_pipe !== undefined ? "through ngx.pipe" : "in the "
            + "background through /bin/sh (no ngx.pipe in this build)";
        ngx_log(NOTICE, "ngx_aws_token: running commands ", how);
    }

    // a first look now; without it, the next tick does the same
    ngx_timer_at(0, tick);
    return $multi(true, undefined);
}


function seconds_ok(value: unknown): boolean {
    return typeof value === "number" && value > 0 && value < Infinity;
}


/** Why `env` is not a table of variable names to values, if it is not. */
function check_env(fn: string, env: unknown): string | undefined {
    for (const [name, value] of env as LuaTable<AnyNotNil, unknown>) {
        let ok: number | undefined = undefined;
        if (typeof name === "string") {
            [ok] = str_find(name, ENV_NAME);
        }
        if (ok === undefined) {
            return `${fn}() env: "${tostring(name)}" is not a variable name`;
        }
        if (typeof value !== "string" && typeof value !== "number") {
            return `${fn}() env: ${name} must be a string`;
        }
        const [nul] = str_find(tostring(value), "\0", 1, true);
        if (nul !== undefined) {
            // a C string, as /bin/sh gets it, would end there
            return `${fn}() env: ${name} holds a NUL byte`;
        }
    }
    return undefined;
}


/** Why the options table of rotate() or manage() is wrong, if it is. */
function check_options(fn: string, opts: LuaTable<string, unknown>) {
    for (const [key, value] of opts) {
        const kind = OPTIONS.get(key);
        if (kind === undefined) {
            return `${fn}() has no option "${tostring(key)}"`;
        }
        if (type(value) !== kind) {
            return str_format('%s() option "%s" is not a %s', fn, key, kind);
        }
        if (kind === "number" && !seconds_ok(value)) {
            return `${fn}() option "${key}" must be > 0`;
        }
    }
    const timeout = opts.get("timeout");
    if (timeout !== undefined && (timeout as number) > MAX_TIMEOUT) {
        return `${fn}() option "timeout" must be at most ${MAX_TIMEOUT} s`;
    }
    const before = opts.get("refresh_before");
    if (before !== undefined && (before as number) >= 1) {
        return `${fn}() option "refresh_before" must be below 1`;
    }
    const env = opts.get("env");
    if (env === undefined) {
        return undefined;
    }
    return check_env(fn, env);
}


/** True for what ecr() and codeartifact() return. */
function is_source(x: unknown): x is Source {
    return typeof x === "object" && getmetatable(x) === SOURCE_MT;
}


/** Why the arguments of rotate() or manage() are wrong, if they are. */
function check_args(
    fn: string,
    name: unknown,
    command: unknown,
    arg: unknown
): Result<RotateOptions> {
    if (typeof name !== "string" || name === "") {
        return $multi(undefined, `${fn}() wants a token name (a string)`);
    }
    if (has_control(name)) {
        return $multi(undefined, `${fn}() wants a name without control bytes`);
    }
    const preset = is_source(command);
    if (!preset && (typeof command !== "string" || trim(command) === "")) {
        const what = "a command (a string) or a preset such as ecr()";
        return $multi(undefined, `${fn}() wants ${what}`);
    }
    if (storage === undefined) {
        return $multi(undefined, `call set_storage() before ${fn}()`);
    }

    let opts: RotateOptions = {};
    if (typeof arg === "function") {
        opts = { transform: arg as Transform };
    } else if (typeof arg === "object") {
        const bad = check_options(fn, arg as LuaTable<string, unknown>);
        if (bad !== undefined) {
            return $multi(undefined, bad);
        }
        opts = arg as RotateOptions;
    } else if (arg !== undefined) {
        const what = "a transform function or an options table";
        return $multi(undefined, `${fn}() wants ${what}`);
    }
    if (preset && opts.transform !== undefined) {
        const why = "a preset makes its own value; drop the transform";
        return $multi(undefined, `${fn}(): ${why}`);
    }
    return $multi(opts, undefined);
}


/** The script for /bin/sh: AWS_PAGER, the variables of `env`, `body`. */
function shell_command(body: string, args: string[], env?: Env): Command {
    let script = PRELUDE;
    if (env !== undefined) {
        for (const name of sorted_keys(env)) {
            const quoted = shell_quote(tostring(env.get(name)));
            script = script + str_format("%s=%s; export %s\n", name, quoted, name);
        }
    }
    return { script: script + body, args: args };
}


/** What /bin/sh runs for a command string or a preset, with `env`. */
function to_command(command: string | Source, env?: Env): Command {
    if (!is_source(command)) {
        return shell_command(command, [], env);
    }
    // the preset's variables first; rotate()'s own override them (two
    // loops: a list holding nil would end at it)
    const merged: Env = new LuaTable();
    if (command.env !== undefined) {
        for (const [name, value] of command.env) {
            merged.set(name, value);
        }
    }
    if (env !== undefined) {
        for (const [name, value] of env) {
            merged.set(name, value);
        }
    }
    return shell_command('exec "$@"', command.args, merged);
}


/** What identifies a job across workers and reloads: what it runs. */
function job_key(job: Job): string {
    const parts = [job.once ? "manage" : "rotate", job.command.script];
    for (const arg of job.command.args) {
        parts[parts.length] = arg;
    }
    return table.concat(parts, "\0");
}


/**
 * Joins the schedule that other workers (or the workers before a reload)
 * keep in the dict: a token fetched by the same job is not fetched again
 * before it is due; a new or changed job fetches at once.
 */
function adopt(dict: NgxSharedDict, job: Job) {
    const [key] = dict.get(meta("command", job.name));
    const [due] = dict.get(meta("due", job.name));
    keep(dict, meta("cooldown", job.name), job.cooldown);
    const [value] = dict.get(job.name);
    const finished = due === Infinity && value === undefined;
    if (key === job.key && typeof due === "number" && !finished) {
        // the same job: its schedule goes on where the dict has it
        job.due = due;
        return;
    }
    keep(dict, meta("command", job.name), job.key);
    keep(dict, meta("failures", job.name), 0);
    set_due(dict, job, job.due);
}


function schedule(
    name: string,
    command: string | Source,
    opts: RotateOptions,
    once: boolean
): Result<true> {
    ngx_update_time();
    const job: Job = {
        name: name,
        command: to_command(command, opts.env),
        parse: is_source(command) ? command.parse : undefined,
        transform: opts.transform,
        interval: default_interval,
        interval_set: opts.interval !== undefined,
        retry: default_retry,
        retry_max: DEFAULT_RETRY_MAX,
        refresh_before: DEFAULT_REFRESH_BEFORE,
        cooldown: DEFAULT_COOLDOWN,
        timeout: DEFAULT_TIMEOUT,
        once: once,
        key: "",
        due: ngx_now(),
        failures: 0,
        started: -Infinity,
    };
    // the options given replace the defaults
    for (const [key, value] of opts as LuaTable<string, unknown>) {
        if (OPTIONS.get(key) === "number") {
            (job as unknown as LuaTable<string, unknown>).set(key, value);
        }
    }
    job.key = job_key(job);
    adopt(the_dict(), job);

    // a command still running for the old schedule is stopped; the new
    // one starts when it has gone
    const old = jobs.get(name);
    if (old !== undefined && old.run !== undefined) {
        old.run.discard = true;
        kill_run(old.run);
        job.run = old.run;
    }
    jobs.set(name, job);

    const [ok, err] = ensure_ticking();
    if (!ok) {
        jobs.delete(name);
        ngx_log(ERR, 'ngx_aws_token: cannot schedule "', name, '": ', err);
        return $multi(undefined, "no timer: " + err);
    }
    return $multi(true, undefined);
}


function non_empty(s: unknown): s is string {
    return typeof s === "string" && s !== "";
}


/** cjson.safe, loaded when a preset first needs it. */
function json_decode(text: string): unknown {
    if (json === undefined) {
        const [ok, mod] = pcall(require, "cjson.safe");
        if (!ok) {
            return undefined;
        }
        json = mod as JsonModule;
    }
    const [doc] = json.decode(text);
    return doc;
}


/** ECR's answer: {"authorizationData": [{"authorizationToken", "expiresAt"}]} */
function parse_ecr(this: void, output: string): Parsed {
    const doc = json_decode(output) as
        | { authorizationData?: { authorizationToken?: unknown;
                                  expiresAt?: unknown }[] }
        | undefined;
    if (typeof doc !== "object") {
        return { err: "the output is not JSON (is cjson installed?)" };
    }
    const missing = "no authorizationData[0].authorizationToken in output";
    const list = doc.authorizationData;
    if (typeof list !== "object") {
        return { err: missing };
    }
    const data = list[0];
    if (typeof data !== "object" || !non_empty(data.authorizationToken)) {
        return { err: missing };
    }
    return { value: "Basic " + data.authorizationToken, expires: data.expiresAt };
}


/** CodeArtifact's answer: {"authorizationToken", "expiration"} */
function parse_codeartifact(this: void, output: string): Parsed {
    const doc = json_decode(output) as
        | { authorizationToken?: unknown; expiration?: unknown }
        | undefined;
    if (typeof doc !== "object") {
        return { err: "the output is not JSON (is cjson installed?)" };
    }
    if (!non_empty(doc.authorizationToken)) {
        return { err: "no authorizationToken in output" };
    }
    return { value: "Bearer " + doc.authorizationToken, expires: doc.expiration };
}


/**
 * Checks a preset's options against `known` (name -> kind) and appends
 * the AWS CLI's options they stand for to `args`; an error message when
 * they are wrong.
 */
function preset_args(
    fn: string,
    options: unknown,
    known: LuaTable<string, string>,
    args: string[]
): string | undefined {
    if (options === undefined) {
        return undefined;
    }
    if (typeof options !== "object") {
        return `${fn}() wants an options table`;
    }
    const opts = options as LuaTable<string, unknown>;
    for (const key of sorted_keys(opts)) {
        const value = opts.get(key);
        const flag = known.get(key);
        if (flag === undefined) {
            return `${fn}() has no option "${key}"`;
        }
        // numbers only where the CLI wants one: an account id written as
        // a number would lose its leading zeros
        const kind = key === "duration" ? "number" : "string";
        if (key === "env") {
            if (typeof value !== "object") {
                return `${fn}() option "env" is not a table`;
            }
            const bad = check_env(fn, value);
            if (bad !== undefined) {
                return bad;
            }
        } else if (type(value) !== kind) {
            return `${fn}() option "${key}" is not a ${kind}`;
        } else {
            args[args.length] = flag;
            args[args.length] = tostring(value);
        }
    }
    return undefined;
}


function make_source(args: string[], options: unknown, parse: Parse): Source {
    const source: Source = { args: args, parse: parse };
    if (typeof options === "object") {
        source.env = (options as { env?: Env }).env;
    }
    return setmetatable(source, SOURCE_MT as LuaMetatable<Source>);
}


/**
 * Sets the lua_shared_dict that holds the tokens. Workers that never call
 * it find the dict too, once any worker has.
 */
export function set_storage(dict: NgxSharedDict): void {
    const name = dict_name(dict);
    if (name === undefined) {
        const msg = "set_storage() wants a lua_shared_dict (%s), got a %s";
        error(str_format(msg, "e.g. ngx.shared.my_aws_tokens", type(dict)), 2);
    }
    storage = dict;
    storage_name = name;
    dict.set(MARK, true);
}


/**
 * Fetches the token `name` now, from a timer, and again every `interval`
 * seconds; a failure is retried after `retry` seconds.
 */
export function rotate(
    name: string,
    command: string | Source,
    options?: Transform | RotateOptions
): Result<true> {
    const [opts, bad] = check_args("rotate", name, command, options);
    if (opts === undefined) {
        // not `return error()`: a tail call would lose the caller's line
        error(bad, 2);
    }
    return schedule(name, command, opts, false);
}


/**
 * Fetches the token `name` once, from a timer, retrying until it is
 * stored. (1.0 API.)
 */
export function manage(
    name: string,
    command: string | Source,
    options?: Transform | RotateOptions
): Result<true> {
    const [opts, bad] = check_args("manage", name, command, options);
    if (opts === undefined) {
        // not `return error()`: a tail call would lose the caller's line
        error(bad, 2);
    }
    return schedule(name, command, opts, true);
}


/**
 * Runs `command` now and returns the value it gives, or `nil, err`.
 * Blocks the worker unless ngx.pipe is there and the phase can yield.
 * (1.0 API.)
 */
export function create(
    command: string | Source,
    transform?: Transform
): Result<string> {
    const preset = is_source(command);
    if (!preset && (typeof command !== "string" || trim(command) === "")) {
        error("create() wants a command (a string) or a preset", 2);
    }
    if (transform !== undefined && typeof transform !== "function") {
        error("create() wants a transform function", 2);
    }

    const cmd = to_command(command);
    let outcome: Outcome;
    if (ngx_pipe !== undefined && YIELDABLE.get(ngx.get_phase()) === true) {
        ngx_update_time();
        const run: Run = {
            id: "create",
            deadline: ngx_now() + DEFAULT_TIMEOUT,
            killed: false,
            discard: false,
        };
        outcome = run_pipe(ngx_pipe, cmd, run);
    } else {
        outcome = run_blocking(cmd);
    }

    const parse = is_source(command) ? command.parse : undefined;
    const [value, , reason] = evaluate(outcome, parse, transform);
    if (value === undefined) {
        return $multi(undefined, hide(reason, outcome.stdout));
    }
    return $multi(value, undefined);
}


/**
 * A source for rotate() that runs `aws ecr get-authorization-token` and
 * stores `Basic <token>` until the token's own `expiresAt`. Options (all
 * strings): region, registry_id, profile, endpoint_url; env (a table).
 */
export function ecr(options?: {
    region?: string;
    registry_id?: string;
    profile?: string;
    endpoint_url?: string;
    env?: Env;
}): Source {
    const args = ["aws", "ecr", "get-authorization-token", "--output", "json"];
    const bad = preset_args("ecr", options, ECR_OPTIONS, args);
    if (bad !== undefined) {
        error(bad, 2);
    }
    return make_source(args, options, parse_ecr);
}


/**
 * A source for rotate() that runs `aws codeartifact get-authorization-token`
 * and stores `Bearer <token>` until its `expiration`. Options: domain
 * (required), domain_owner, duration (seconds), region, profile,
 * endpoint_url; env (a table).
 */
export function codeartifact(options: {
    domain: string;
    domain_owner?: string;
    duration?: number;
    region?: string;
    profile?: string;
    endpoint_url?: string;
    env?: Env;
}): Source {
    const args = ["aws", "codeartifact", "get-authorization-token"];
    args[args.length] = "--output";
    args[args.length] = "json";
    const bad = preset_args("codeartifact", options, CA_OPTIONS, args);
    if (bad !== undefined) {
        error(bad, 2);
    }
    if (typeof options !== "object" || !non_empty(options.domain)) {
        error("codeartifact() wants a domain", 2);
    }
    const duration = options.duration;
    if (
        duration !== undefined &&
        (typeof duration !== "number" ||
            (duration !== 0 && (duration < 900 || duration > 43200)))
    ) {
        // the CLI's own rule: 0 (the role's session), or 15 min to 12 h
        error("codeartifact() duration must be 0 or 900 to 43200 s", 2);
    }
    return make_source(args, options, parse_codeartifact);
}


/**
 * The current value of token `name`, or `nil, err`. Called per request:
 * one dict read and nothing else.
 */
export function token(name: string): Result<string> {
    if (typeof name !== "string") {
        error("token() wants a token name (a string)", 2);
    }

    let dict = storage;
    if (dict === undefined) {
        // until some worker calls set_storage(), look once a second
        const now = ngx_now();
        if (now - last_scan < 1) {
            return $multi(undefined, "no storage");
        }
        last_scan = now;
        dict = find_storage();
        if (dict === undefined) {
            return $multi(undefined, "no storage");
        }
    }
    const [value] = dict.get(name);
    if (value !== undefined) {
        return $multi(value as string, undefined);
    }
    const [fetched] = dict.get(meta("fetched", name));
    return $multi(undefined, fetched !== undefined ? "expired" : "not ready");
}


/**
 * Asks for a new token `name` now, e.g. after the upstream answered 401
 * or 403, from any worker and any phase. One run at a time, and none
 * sooner than `cooldown` seconds after the last one began: a burst of
 * calls makes one run.
 */
export function refresh(name: string): Result<true> {
    if (typeof name !== "string") {
        error("refresh() wants a token name (a string)", 2);
    }
    const dict = storage !== undefined ? storage : find_storage();
    if (dict === undefined) {
        return $multi(undefined, "no storage");
    }
    // manage() fetches once for good: there is nothing to refresh
    const [key] = dict.get(meta("command", name));
    if (typeof key !== "string" || str_sub(key, 1, 7) !== "rotate\0") {
        return $multi(undefined, "unknown token");
    }

    // during failures the backoff decides: refresh() must not undo it
    const [failures] = dict.get(meta("failures", name));
    if (typeof failures === "number" && failures > 0) {
        return $multi(true, undefined);
    }

    let at = ngx_now();
    const [started] = dict.get(meta("started", name));
    const [cooldown] = dict.get(meta("cooldown", name));
    if (typeof started === "number") {
        const gap = typeof cooldown === "number" ? cooldown : DEFAULT_COOLDOWN;
        at = Math.max(at, started + gap);
    }
    const [due] = dict.get(meta("due", name));
    if (typeof due !== "number" || at < due) {
        keep(dict, meta("due", name), at);
    }
    return $multi(true, undefined);
}


/** What status() tells of one token; never its value. */
interface TokenStatus {
    fetched_at?: number;
    expires_at?: number;
    next_refresh?: number;
    last_error?: string;
    last_error_at?: number;
    failures: number;
    runner?: string;
    running: boolean;
}


function number_or_nil(dict: NgxSharedDict, key: string): number | undefined {
    const [v] = dict.get(key);
    return typeof v === "number" && v > 0 && v < Infinity ? v : undefined;
}


function status_of(dict: NgxSharedDict, name: string): TokenStatus {
    const [failures] = dict.get(meta("failures", name));
    const [err] = dict.get(meta("error", name));
    const [runner] = dict.get(meta("runner", name));
    const [lock] = dict.get(meta("lock", name));
    return {
        fetched_at: number_or_nil(dict, meta("fetched", name)),
        expires_at: number_or_nil(dict, meta("expires", name)),
        next_refresh: number_or_nil(dict, meta("due", name)),
        last_error: typeof err === "string" ? err : undefined,
        last_error_at: number_or_nil(dict, meta("error_at", name)),
        failures: typeof failures === "number" ? failures : 0,
        runner: typeof runner === "string" ? runner : undefined,
        running: lock !== undefined,
    };
}


/**
 * What is known of token `name`, or of every token (a table by name):
 * when it was fetched, when it expires, the next refresh, the last error
 * and when, failures in a row, the runner, whether a run is going on.
 * Never the token. For a status page, not for every request.
 */
export function status(
    name?: string
): Result<TokenStatus | LuaTable<string, TokenStatus>> {
    if (name !== undefined && typeof name !== "string") {
        error("status() wants a token name (a string) or nothing", 2);
    }
    const dict = storage !== undefined ? storage : find_storage();
    if (dict === undefined) {
        return $multi(undefined, "no storage");
    }
    if (name !== undefined) {
        const [key] = dict.get(meta("command", name));
        if (key === undefined) {
            return $multi(undefined, "unknown token");
        }
        return $multi(status_of(dict, name), undefined);
    }

    const all: LuaTable<string, TokenStatus> = new LuaTable();
    const prefix = meta("command", "");
    for (const key of dict.get_keys(0)) {
        if (str_sub(key, 1, prefix.length) === prefix) {
            const token_name = str_sub(key, prefix.length + 1);
            all.set(token_name, status_of(dict, token_name));
        }
    }
    return $multi(all, undefined);
}


/** Seconds between fetches for rotate() calls made after it. (1.0 API.) */
export function set_interval(seconds: number): void {
    if (!seconds_ok(seconds)) {
        error("set_interval() wants a positive number of seconds", 2);
    }
    default_interval = seconds;
}


/** Seconds before a failed fetch is retried, for later calls. (1.0 API.) */
export function set_retry(seconds: number): void {
    if (!seconds_ok(seconds)) {
        error("set_retry() wants a positive number of seconds", 2);
    }
    default_retry = seconds;
}


export const _VERSION = VERSION;
