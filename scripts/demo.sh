#!/usr/bin/env bash
# The README's main command: set up if needed, then run the main job.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$LOOKAT_ROOT/scripts/setup.sh"
exec "$LOOKAT_VENV/bin/python" "$LOOKAT_ROOT/scripts/demo.py"
