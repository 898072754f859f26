#!/bin/bash
set -euo pipefail
umask 022
mkdir -p /app/project/src /app/project/bin /app/project/secrets
chmod 755 /app/project /app/project/src /app/project/bin
chmod 700 /app/project/secrets
printf '#!/bin/sh\necho running\n' > /app/project/bin/run
chmod 755 /app/project/bin/run
printf '# project\n\nA small example project.\n' > /app/project/README.md
chmod 644 /app/project/README.md
