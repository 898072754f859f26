#!/bin/bash
# Print a greeting for the name given as the first argument (default: world).
set -eu
name=${2:-world}
if [ "$name" = "" ] then
    name=world
fi
echo "Hello, $name"
