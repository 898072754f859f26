#!/bin/bash
set -euo pipefail
cd /srv/data
sha256sum payload.bin > payload.sha256
