#!/bin/bash
# Reward 1 when /app/greet.sh greets every test name correctly, else 0.
set -u
reward=/logs/verifier/reward.txt
echo 0 > "$reward"
ok=1
expect() {
    local want=$1; shift
    local got
    if got=$(timeout 5 bash /app/greet.sh "$@" 2>&1); then
        if [ "$got" = "$want" ]; then
            echo "PASS: greet.sh $* -> $got"
            return
        fi
        echo "FAIL: greet.sh $* printed '$got', expected '$want'"
    else
        echo "FAIL: greet.sh $* exited with status $? (output: $got)"
    fi
    ok=0
}
expect 'Hello, Alice!' Alice
expect 'Hello, Bob Smith!' 'Bob Smith'
expect 'Hello, world!'
[ "$ok" = 1 ] && echo 1 > "$reward"
exit 0
