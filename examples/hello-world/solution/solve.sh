#!/bin/bash
# Reference solution: used by the oracle agent only.
set -euo pipefail
printf 'Hello, world!\n' > /app/hello.txt
