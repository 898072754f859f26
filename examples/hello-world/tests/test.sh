#!/bin/bash
# Verifier: reward 1 when /app/hello.txt holds exactly "Hello, world!" (one trailing
# newline allowed), else 0. A reward is always written, so a wrong answer scores 0
# instead of ending in verifier_reward_missing.
set -u
reward=/logs/verifier/reward.txt
echo 0 > "$reward"

file=/app/hello.txt
if [ ! -f "$file" ]; then
    echo "FAIL: $file does not exist"
    exit 0
fi
expected=$'Hello, world!'
actual=$(cat "$file"; printf x)
actual=${actual%x}
if [ "$actual" = "$expected" ] || [ "$actual" = "$expected"$'\n' ]; then
    echo "PASS: $file has the expected content"
    echo 1 > "$reward"
else
    echo "FAIL: unexpected content in $file:"
    od -c "$file" | head -n 5
fi
