#!/bin/bash
# Reward 1 when /app/sorted.txt equals tests/expected.txt, else 0.
set -u
reward=/logs/verifier/reward.txt
echo 0 > "$reward"
here=$(dirname "$0")
if [ ! -f /app/sorted.txt ]; then
    echo "FAIL: /app/sorted.txt does not exist"
elif diff -u "$here/expected.txt" /app/sorted.txt; then
    echo "PASS: /app/sorted.txt is correct"
    echo 1 > "$reward"
else
    echo "FAIL: /app/sorted.txt differs from the expected list (diff above)"
fi
exit 0
