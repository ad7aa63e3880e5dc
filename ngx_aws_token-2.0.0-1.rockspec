package = "ngx_aws_token"
version = "2.0.0-1"
source = {
    url = "git+https://github.com/whitfin/ngx_aws_token.git",
    tag = "2.0.0",
}
description = {
    summary = "Keeps short-lived AWS tokens (ECR, CodeArtifact) fresh "
        .. "in an OpenResty lua_shared_dict",
    detailed = [[
        Runs an AWS CLI command on an ngx.timer, stores the token it prints
        in a lua_shared_dict, and hands it to any worker per request, e.g.
        for proxy_set_header Authorization in front of Amazon ECR.
    ]],
    homepage = "https://github.com/whitfin/ngx_aws_token",
    license = "MIT",
}
dependencies = {
    "lua >= 5.1",
}
build = {
    type = "builtin",
    modules = {
        ngx_aws_token = "lua/ngx_aws_token.lua",
    },
}
