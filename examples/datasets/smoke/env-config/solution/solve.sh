#!/bin/bash
set -euo pipefail
printf '%s\n' "$APP_MODE" > /app/mode.txt
printf '%s\n' "$APP_REGION" > /app/region.txt
