#!/bin/bash
# Reward 1 when /app/error_count.txt holds the number of ERROR lines (5), else 0.
# The expected count is fixed here: the agent can edit /app/server.log, not this file.
set -u
reward=/logs/verifier/reward.txt
echo 0 > "$reward"
expected=5
actual=$(tr -d '[:space:]' 2>/dev/null < /app/error_count.txt) || actual="(missing)"
if [ "$actual" = "$expected" ]; then
    echo "PASS: count is $expected"
    echo 1 > "$reward"
else
    echo "FAIL: count is '$actual', expected $expected"
fi
exit 0
