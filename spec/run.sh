#!/usr/bin/env bash
# Runs every check and every busted spec, then prints "N passed, N failed".
# Each check (fresh build, type check, luacheck) counts as one test.
set -uo pipefail
cd "$(dirname "$0")/.."

passed=0
failed=0
log=$(mktemp -d)
trap 'rm -rf "$log"' EXIT

check() {
    local name=$1; shift
    if "$@" >"$log/check.out" 2>&1; then
        echo "ok - $name"
        passed=$((passed + 1))
    else
        echo "not ok - $name"
        sed 's/^/    /' "$log/check.out"
        failed=$((failed + 1))
    fi
}

check "the committed Lua matches a fresh build of src/" make -s check-built
check "src/ and types/ type-check" make -s typecheck
check "luacheck passes on the shipped Lua (std ngx_lua) and the specs" make -s lint

# busted prints TAP; count its verdicts
busted "$@" | tee "$log/tap"
busted_rc=${PIPESTATUS[0]}
ok=$(grep -c '^ok ' "$log/tap")
bad=$(grep -c '^not ok ' "$log/tap")
passed=$((passed + ok))
failed=$((failed + bad))
if [ "$busted_rc" -ne 0 ] && [ "$bad" -eq 0 ]; then
    echo "busted exited with $busted_rc without a failed test"
    failed=$((failed + 1))
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
