#!/bin/bash
# Reward 1 when both files hold the expected values (given to the verifier through
# [verifier] env, so an agent cannot change them), else 0.
set -u
reward=/logs/verifier/reward.txt
echo 0 > "$reward"
ok=1
check() {
    local file=$1 expected=$2 actual
    actual=$(cat "$file" 2>/dev/null) || { echo "FAIL: $file missing"; ok=0; return; }
    if [ "$actual" = "$expected" ]; then
        echo "PASS: $file = $expected"
    else
        echo "FAIL: $file = '$actual', expected '$expected'"
        ok=0
    fi
}
check /app/mode.txt "${EXPECTED_MODE:?EXPECTED_MODE not set}"
check /app/region.txt "${EXPECTED_REGION:?EXPECTED_REGION not set}"
[ "$ok" = 1 ] && echo 1 > "$reward"
exit 0
