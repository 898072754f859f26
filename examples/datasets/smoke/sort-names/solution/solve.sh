#!/bin/bash
set -euo pipefail
LC_ALL=C sort -u /app/names.txt > /app/sorted.txt
