-- luacheck's settings: the shipped Lua and the specs keep to 80 columns
max_line_length = 80
std = "ngx_lua"
files["spec/"] = { std = "ngx_lua+busted" }
