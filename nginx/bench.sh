#!/usr/bin/env bash
# make bench: request latency on a worker while a 1 s token command runs
# again and again, ngx_aws_token's background runner beside the 1.0 way
# (io.popen read inline in a timer), measured in one run with wrk on
# 127.0.0.1. Reports each variant and the ratio; asserts nothing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rounds=${ROUNDS:-2}
seconds=${SECONDS_PER_ROUND:-6}

. "$root/nginx/nginx-bin.sh"

ours='
        local ngx_aws_token = require("ngx_aws_token")
        ngx_aws_token.set_storage(ngx.shared.my_aws_tokens)
        ngx_aws_token.rotate("bench", "sleep 1; echo tok", { interval = 1 })'
# what 1.0 did: the command read to its end inside the timer
old='
        local ngx_aws_token = require("ngx_aws_token")
        ngx_aws_token.set_storage(ngx.shared.my_aws_tokens)
        ngx.timer.every(1, function()
            local f = io.popen("sleep 1; echo tok")
            local out = f:read("*a")
            f:close()
            ngx.shared.my_aws_tokens:set("bench", out)
        end)'

work=$(mktemp -d /tmp/ngx_aws_token_bench.XXXXXX)
chmod 755 "$work"
trap 'for d in "$work"/*/; do
        "$nginx_bin" -p "$d" -c conf/nginx.conf -s stop 2>/dev/null || true
      done; sleep 0.3; rm -rf "$work"' EXIT

# one round: starts nginx with INIT, loads it with wrk, prints p50 p99 max
round() {
    local name=$1 init=$2 dir="$work/$1.$3" port=$((20000 + RANDOM % 20000))
    mkdir -p "$dir/conf" "$dir/logs" "$dir/tmp"
    [ -n "$user" ] && chown nobody "$dir/tmp"
    INIT="$init" awk -v m="$modules" -v u="$user" -v r="$root" -v p="$port" '
        { gsub("@LOAD_MODULES@", m); gsub("@USER@", u); gsub("@ROOT@", r);
          gsub("@PORT@", p);
          if ($0 ~ /@INIT@/) { print ENVIRON["INIT"]; next } print }' \
        "$root/nginx/bench.conf" >"$dir/conf/nginx.conf"
    "$nginx_bin" -p "$dir" -c conf/nginx.conf
    sleep 1.5
    wrk -t1 -c4 -d"${seconds}s" --latency "http://127.0.0.1:$port/" \
        >"$dir/wrk.txt"
    "$nginx_bin" -p "$dir" -c conf/nginx.conf -s stop 2>/dev/null
    awk '
        function ms(v) {
            if (v ~ /us$/) return v / 1000
            if (v ~ /ms$/) return v + 0
            if (v ~ /s$/) return v * 1000
            return v
        }
        $1 == "50%" { p50 = ms($2) }
        $1 == "99%" { p99 = ms($2) }
        $1 == "Latency" && !max { max = ms($4) }
        $1 == "Requests/sec:" { rps = $2 }
        END { printf "%.2f %.2f %.2f %.0f\n", p50, p99, max, rps }' \
        "$dir/wrk.txt"
}

printf '%-28s %9s %9s %9s %9s\n' variant "p50 ms" "p99 ms" "max ms" "req/s"
declare -A p99s
for i in $(seq "$rounds"); do
    for v in ours old; do
        init=$ours; label="ngx_aws_token (background)"
        [ "$v" = old ] && { init=$old; label="1.0 way (popen in timer)"; }
        read -r p50 p99 max rps < <(round "$v" "$init" "$i")
        printf '%-28s %9s %9s %9s %9s\n' "$label" "$p50" "$p99" "$max" "$rps"
        p99s[$v]="${p99s[$v]:-} $p99"
    done
done

# the median round of each, and their ratio
median() { tr ' ' '\n' | grep . | sort -g | awk '{ a[NR] = $1 }
    END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
ours_p99=$(echo "${p99s[ours]}" | median)
old_p99=$(echo "${p99s[old]}" | median)
awk -v a="$old_p99" -v b="$ours_p99" 'BEGIN {
    printf "\np99 latency, 1.0 way / ngx_aws_token: %.1f ms / %.2f ms = %.0fx\n",
        a, b, (b > 0 ? a / b : 0) }'
