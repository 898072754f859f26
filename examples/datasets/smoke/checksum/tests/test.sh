#!/bin/bash
# Reward 1 when /srv/data/payload.sha256 names the digest of the original payload, else 0.
# The digest is fixed here, so changing payload.bin does not help.
set -u
reward=/logs/verifier/reward.txt
echo 0 > "$reward"
expected="2f6c3a96ff9c2e45b5d67abca3773f4dfd3edc3602106dc940b71f4990bd52e3  payload.bin"
actual=$(head -n 1 /srv/data/payload.sha256 2>/dev/null) || actual="(missing)"
if [ "$actual" = "$expected" ]; then
    echo "PASS: digest line is correct"
    echo 1 > "$reward"
else
    echo "FAIL: got '$actual', expected '$expected'"
fi
exit 0
