-- Small helpers the unit specs share.

local assert = require("luassert")

local _M = {}


--- Calls fn, a one-line function that misuses the API, and checks that
--- the error it raises points at that line of the spec that wrote fn
--- (error level 2); returns the message without the position.
function _M.raises_here(fn)
    local info = debug.getinfo(fn, "S")
    assert.equal(info.linedefined, info.lastlinedefined, "a one-liner")
    local ok, err = pcall(fn)
    assert.is_false(ok, "no error was raised")
    assert.is_string(err)
    local where = info.short_src .. ":" .. info.linedefined .. ": "
    assert.equal(where, err:sub(1, #where))
    return err:sub(#where + 1)
end


--- What a shell command prints, without the trailing newline.
function _M.sh(cmd)
    local f = assert(io.popen(cmd))
    local out = f:read("*a")
    f:close()
    return (out:gsub("\n$", ""))
end


--- A file's content, or nil.
function _M.read(path)
    local f = io.open(path, "rb")
    if not f then
        return nil
    end
    local data = f:read("*a")
    f:close()
    return data
end


return _M
