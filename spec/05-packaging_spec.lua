-- The three ways users get the module: luarocks with the rockspec, opm,
-- and ADD of the one file. Each must give the same standalone file.

local function read(path)
    local f = assert(io.open(path, "rb"))
    local data = f:read("*a")
    f:close()
    return data
end


local function sh(cmd)
    local f = assert(io.popen(cmd .. " 2>&1; echo \"rc=$?\""))
    local out = f:read("*a")
    f:close()
    local body, rc = out:match("^(.*)rc=(%d+)\n$")
    return body, rc == "0"
end


describe("the shipped file lua/ngx_aws_token.lua", function()
    local source = read("lua/ngx_aws_token.lua")

    it("requires only ngx.pipe, LuaJIT's ffi and cjson, each under pcall",
       function()
        local required = {}
        for call in source:gmatch("[%w_.(]*require[%s(,][^\n]*") do
            required[#required + 1] = call
        end
        assert.same({ 'pcall(require, "ngx.pipe")',
                      'pcall(require, "ffi")',
                      'pcall(require, "cjson.safe")' }, required)
    end)

    it("needs no TypeScriptToLua helper", function()
        assert.falsy(source:find("lualib_bundle", 1, true))
        assert.falsy(source:find("__TS__", 1, true))
        -- nor its temporaries (`local ____temp_0`, `local ____x_0`),
        -- which a ternary over a value that may be false or nil makes
        for name in source:gmatch("local (____[%w_]+)") do
            assert.equal("____exports", name)
        end
    end)

    it("never packs a multi-return into a table to unpack it", function()
        -- what TypeScriptToLua emits for a LuaMultiReturn used in an
        -- expression (a ternary, `?.`); the first value is then wrong
        assert.falsy(source:find("unpack(", 1, true))
    end)

    it("opens with its header comment: no function used before it is "
       .. "defined", function()
        -- TypeScriptToLua hoists such functions above everything else,
        -- and the header with them
        assert.equal("--- ngx_aws_token: ", source:sub(1, 19))
        assert.falsy(source:find("\nlocal ____exports = {}\nlocal [%w_]+, "))
    end)

    it("keeps within 80 columns", function()
        local n = 0
        for line in source:gmatch("[^\n]*") do
            n = n + 1
            assert(#line <= 80, "line " .. n .. " is " .. #line .. " long")
        end
    end)
end)


describe("the rockspec", function()
    it("installs exactly lua/ngx_aws_token.lua as module ngx_aws_token",
       function()
        local tree = assert(sh("mktemp -d")):gsub("%s+$", "")
        local out, ok = sh("luarocks make --tree " .. tree
                           .. " ngx_aws_token-2.0.0-1.rockspec")
        assert(ok, out)
        local files = sh("cd " .. tree .. "/share/lua && find . -type f")
        os.execute("cp " .. tree .. "/share/lua/5.1/ngx_aws_token.lua "
                   .. tree .. "/installed.lua")
        local installed = read(tree .. "/installed.lua")
        os.execute("rm -rf " .. tree)
        assert.equal("./5.1/ngx_aws_token.lua\n", files)
        assert.equal(read("lua/ngx_aws_token.lua"), installed)
    end)
end)


describe("dist.ini for opm", function()
    it("names the shipped file as its main module", function()
        local ini = read("dist.ini")
        assert.truthy(ini:find("\nmain_module = lua/ngx_aws_token.lua\n",
                               1, true))
        assert.truthy(ini:find("\nlib_dir = lua\n", 1, true))
    end)
end)
