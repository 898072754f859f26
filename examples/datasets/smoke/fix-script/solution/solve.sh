#!/bin/bash
set -euo pipefail
cat > /app/greet.sh <<'SCRIPT'
#!/bin/bash
# Print a greeting for the name given as the first argument (default: world).
set -eu
name=${1:-world}
if [ "$name" = "" ]; then
    name=world
fi
echo "Hello, $name!"
SCRIPT
chmod +x /app/greet.sh
