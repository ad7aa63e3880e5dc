/** @noSelfInFile */

/**
 * The parts of the ngx_lua API that ngx_aws_token uses, declared exactly.
 * Reference: https://github.com/openresty/lua-nginx-module#nginx-api-for-lua
 */

/**
 * A `lua_shared_dict` zone, called with a colon.
 * https://github.com/openresty/lua-nginx-module#ngxshareddict
 */
interface NgxSharedDict {
    /** https://github.com/openresty/lua-nginx-module#ngxshareddictget */
    get(
        key: string
    ): LuaMultiReturn<
        [string | number | boolean | undefined, number | undefined]
    >;

    /**
     * Returns `ok, err, forcible`; `err` is `"no memory"` when the zone is
     * full even after evicting.
     * https://github.com/openresty/lua-nginx-module#ngxshareddictset
     */
    set(
        key: string,
        value: string | number | boolean,
        exptime?: number,
        flags?: number
    ): LuaMultiReturn<[boolean, string | undefined, boolean]>;

    /**
     * Like `set`, but fails with `"no memory"` rather than evict other
     * keys.
     * https://github.com/openresty/lua-nginx-module#ngxshareddictsafe_set
     */
    safe_set(
        key: string,
        value: string | number | boolean,
        exptime?: number,
        flags?: number
    ): LuaMultiReturn<[boolean, string | undefined]>;

    /**
     * Like `set`, but fails with `"exists"` when the key is there.
     * https://github.com/openresty/lua-nginx-module#ngxshareddictadd
     */
    add(
        key: string,
        value: string | number | boolean,
        exptime?: number,
        flags?: number
    ): LuaMultiReturn<[boolean, string | undefined, boolean]>;

    /**
     * Seconds `key` has left; 0 when it never expires.
     * https://github.com/openresty/lua-nginx-module#ngxshareddictttl
     */
    ttl(key: string): LuaMultiReturn<[number, undefined] | [undefined, string]>;

    /** https://github.com/openresty/lua-nginx-module#ngxshareddictdelete */
    delete(key: string): void;

    /**
     * Up to `max_count` keys (0: all); locks the zone while it looks.
     * https://github.com/openresty/lua-nginx-module#ngxshareddictget_keys
     */
    get_keys(max_count?: number): string[];
}

/**
 * A child process spawned by `ngx.pipe.spawn`.
 * https://github.com/openresty/lua-resty-core/blob/master/lib/ngx/pipe.md
 */
interface NgxPipeProc {
    /** Timeouts in milliseconds; `undefined` leaves one unchanged. */
    set_timeouts(
        write_timeout?: number,
        stdout_read_timeout?: number,
        stderr_read_timeout?: number,
        wait_timeout?: number
    ): void;

    /** Reads to EOF: `data` or `nil, err, partial`. */
    stdout_read_all(): LuaMultiReturn<
        [string, undefined, undefined] | [undefined, string, string | undefined]
    >;

    /** Reads to EOF: `data` or `nil, err, partial`. */
    stderr_read_all(): LuaMultiReturn<
        [string, undefined, undefined] | [undefined, string, string | undefined]
    >;

    /**
     * Waits for the child: `ok, reason, status` where reason is `"exit"` or
     * `"signal"`; `nil, err` on a timeout or error.
     */
    wait(): LuaMultiReturn<
        [boolean, "exit" | "signal", number] | [undefined, string, undefined]
    >;

    /** Sends a signal; `ok` or `nil, err`. */
    kill(signum: number): LuaMultiReturn<[true, undefined] | [undefined, string]>;

    pid(): number | undefined;
}

/** https://github.com/openresty/lua-resty-core/blob/master/lib/ngx/pipe.md */
interface NgxPipeModule {
    spawn(
        this: void,
        args: string[],
        opts?: {
            merge_stderr?: boolean;
            buffer_size?: number;
            environ?: string[];
        }
    ): LuaMultiReturn<[NgxPipeProc, undefined] | [undefined, string]>;
}

/** A light thread from `ngx.thread.spawn`, returning `R`. */
interface NgxThread<R extends unknown[]> {
    readonly __ngxThreadResult: R;
}

/** https://github.com/openresty/lua-nginx-module#ngxtimerat */
type NgxTimerCallback<A extends unknown[]> = (
    this: void,
    premature: boolean,
    ...args: A
) => void;

declare namespace ngx {
    /** Log levels: https://github.com/openresty/lua-nginx-module#nginx-log-level-constants */
    const STDERR: number;
    const EMERG: number;
    const ALERT: number;
    const CRIT: number;
    const ERR: number;
    const WARN: number;
    const NOTICE: number;
    const INFO: number;
    const DEBUG: number;

    /** https://github.com/openresty/lua-nginx-module#ngxlog */
    function log(level: number, ...args: (string | number)[]): void;

    /** Cached time in seconds, with milliseconds. */
    function now(): number;

    /** Refreshes the cached time. */
    function update_time(): void;

    /** Returns the name of the running phase. */
    function get_phase(): string;

    /** https://github.com/openresty/lua-nginx-module#ngxshared */
    const shared: LuaTable<string, NgxSharedDict>;

    namespace timer {
        /** https://github.com/openresty/lua-nginx-module#ngxtimerat */
        function at<A extends unknown[]>(
            delay: number,
            callback: NgxTimerCallback<A>,
            ...args: A
        ): LuaMultiReturn<[true, undefined] | [undefined, string]>;

        /** https://github.com/openresty/lua-nginx-module#ngxtimerevery */
        function every<A extends unknown[]>(
            delay: number,
            callback: NgxTimerCallback<A>,
            ...args: A
        ): LuaMultiReturn<[true, undefined] | [undefined, string]>;
    }

    namespace worker {
        /** https://github.com/openresty/lua-nginx-module#ngxworkerid */
        function id(): number | undefined;

        /** https://github.com/openresty/lua-nginx-module#ngxworkerpid */
        function pid(): number;

        /** https://github.com/openresty/lua-nginx-module#ngxworkerexiting */
        function exiting(): boolean;
    }

    namespace thread {
        /** https://github.com/openresty/lua-nginx-module#ngxthreadspawn */
        function spawn<A extends unknown[], R extends unknown[]>(
            this: void,
            fn: (this: void, ...args: A) => LuaMultiReturn<R>,
            ...args: A
        ): NgxThread<R>;

        /**
         * `true, ...` what the thread returned, or `false, err`.
         * https://github.com/openresty/lua-nginx-module#ngxthreadwait
         */
        function wait<R extends unknown[]>(
            thread: NgxThread<R>
        ): LuaMultiReturn<[true, ...R] | [false, string]>;
    }
}

/**
 * lua-cjson's `cjson.safe`, which OpenResty ships: errors come back as
 * `nil, err` instead of being raised.
 * https://github.com/openresty/lua-cjson
 */
interface JsonModule {
    decode(
        this: void,
        text: string
    ): LuaMultiReturn<[unknown, undefined] | [undefined, string]>;
}
