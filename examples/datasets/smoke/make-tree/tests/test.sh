#!/bin/bash
# Runs seven checks and writes /logs/verifier/reward.json:
#   {"reward": 1 if every check passed else 0, "checks_passed": N, "checks_total": 7}
set -u
out=/logs/verifier/reward.json
passed=0
total=0
check() {
    local what=$1; shift
    total=$((total + 1))
    if "$@"; then
        passed=$((passed + 1))
        echo "PASS: $what"
    else
        echo "FAIL: $what"
    fi
}
mode_is() { [ -e "$2" ] && [ "$(stat -c %a "$2")" = "$1" ]; }
dir_with_mode() { [ -d "$2" ] && mode_is "$1" "$2"; }
check "/app/project is a directory with mode 755" dir_with_mode 755 /app/project
check "src is a directory with mode 755" dir_with_mode 755 /app/project/src
check "bin is a directory with mode 755" dir_with_mode 755 /app/project/bin
check "secrets is a directory with mode 700" dir_with_mode 700 /app/project/secrets
check "README.md is a non-empty file with mode 644" \
    bash -c '[ -f /app/project/README.md ] && [ -s /app/project/README.md ] && [ "$(stat -c %a /app/project/README.md)" = 644 ]'
check "bin/run is a file with mode 755" \
    bash -c '[ -f /app/project/bin/run ] && [ "$(stat -c %a /app/project/bin/run)" = 755 ]'
check "bin/run prints 'running'" \
    bash -c '[ "$(timeout 5 /app/project/bin/run 2>/dev/null)" = running ]'
reward=0
[ "$passed" = "$total" ] && reward=1
printf '{"reward": %s, "checks_passed": %s, "checks_total": %s}\n' "$reward" "$passed" "$total" > "$out"
cat "$out"
exit 0
