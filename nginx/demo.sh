#!/usr/bin/env bash
# make demo: starts the AWS endpoint stub and nginx on 127.0.0.1, proxies a
# request with the token the AWS CLI fetched, rotates it, proxies again.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/ngx_aws_token_demo.XXXXXX)
chmod 755 "$work"
mkdir -p "$work/logs" "$work/conf" "$work/tmp"

. "$root/nginx/nginx-bin.sh"
[ -n "$user" ] && chown nobody "$work/tmp"

stub_pid=
cleanup() {
    "$nginx_bin" -p "$work" -c conf/nginx.conf -s quit 2>/dev/null || true
    [ -n "$stub_pid" ] && kill "$stub_pid" 2>/dev/null || true
    sleep 0.5
    rm -rf "$work"
}
trap cleanup EXIT

node "$root/spec/stubs/aws_stub.js" --port-file "$work/ports.json" \
    >"$work/stub.log" 2>&1 &
stub_pid=$!
for _ in $(seq 50); do [ -s "$work/ports.json" ] && break; sleep 0.1; done
read -r aws upstream < <(node -e '
    const p = require(process.argv[1]);
    console.log(p.aws, p.upstream);' "$work/ports.json")

port=$((20000 + RANDOM % 20000))
sed -e "s|@LOAD_MODULES@|${modules//$'\n'/\\n}|" -e "s|@USER@|$user|" \
    -e "s|@ROOT@|$root|" -e "s|@PORT@|$port|" -e "s|@UPSTREAM@|$upstream|" \
    -e "s|@AWS_ENDPOINT@|http://127.0.0.1:$aws|" \
    "$root/nginx/demo.conf" >"$work/conf/nginx.conf"

stub_set() {
    curl -s -o /dev/null -X POST -d "$1" "http://127.0.0.1:$aws/_stub/config"
}

# the stub's tokens last 8 s, so the demo sees a refresh (at about 6 s)
stub_set '{"password":"first-password","ttl":8}'

# the master's environment: fake credentials for the stub, and no instance
# metadata, so the AWS CLI talks to 127.0.0.1 only
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    AWS_ACCESS_KEY_ID=AKIDEXAMPLE AWS_SECRET_ACCESS_KEY=demo-secret \
    AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true \
    "$nginx_bin" -p "$work" -c conf/nginx.conf


# what the upstream received last: the Authorization header, shortened
last_auth() {
    curl -s "http://127.0.0.1:$upstream/_upstream/requests" | node -e '
        let s = ""; process.stdin.on("data", d => s += d).on("end", () => {
            const r = JSON.parse(s).pop();
            const a = r && r.authorization;
            if (!a) { console.log("(none)"); return; }
            const [scheme, tok] = a.split(" ");
            const pw = Buffer.from(tok, "base64").toString();
            console.log(`${scheme} ${tok.slice(0, 12)}...${tok.slice(-4)}` +
                ` (${tok.length} chars; decodes to ${pw.slice(0, 8)}...)`);
        });'
}

proxy() {
    echo "\$ curl -s http://127.0.0.1:$port/v2/"
    curl -s "http://127.0.0.1:$port/v2/"
    echo "upstream got Authorization: $(last_auth)"
}

echo "waiting for the first token from the AWS CLI..."
for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$port/v2/"
    [ "$(last_auth)" != "(none)" ] && break
    sleep 0.2
done
proxy

echo
echo "the registry now hands out a new token; it lasts 8 s, so it is"
echo "refreshed when 2 s are left..."
stub_set '{"password":"second-password"}'
first=$(last_auth)
for _ in $(seq 60); do
    sleep 0.5
    curl -s -o /dev/null "http://127.0.0.1:$port/v2/"
    [ "$(last_auth)" != "$first" ] && break
done
proxy

echo
echo "error.log (ngx_aws_token lines):"
grep -a 'ngx_aws_token' "$work/logs/error.log" | sed 's/^/  /' || true
