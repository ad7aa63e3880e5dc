# Sourced by demo.sh and bench.sh: which nginx to run and what its
# configuration must add. OpenResty where it is on PATH; otherwise Debian's
# nginx, which loads the Lua module (and NDK, which it needs) itself.
nginx_bin=/usr/sbin/nginx
modules="load_module /usr/share/nginx/modules/ndk_http_module.so;
load_module /usr/share/nginx/modules/ngx_http_lua_module.so;"
if command -v openresty >/dev/null; then
    nginx_bin=$(command -v openresty)
    modules=
fi
# run as root, the master starts its workers as nobody, as in production
user=
if [ "$(id -u)" = 0 ]; then
    user="user nobody nogroup;"
fi
