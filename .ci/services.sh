#!/usr/bin/env bash
# Install what the tests need beyond Python packages, only when missing (idempotent; a second run
# does nothing and needs no network):
#   chromium    headless browser: the report is rendered and screenshotted (tests/search/test_views_browser.py)
#   postgresql  server programs (initdb, pg_ctl): a throwaway cluster per test (tests/search/conftest.py
#               postgres_url); no system service is started or enabled
#   runuser     (util-linux) runs the server as the `postgres` user when the tests run as root
# Run as root (CI) or with sudo available. Exits non-zero if anything is still missing afterwards.
set -euo pipefail

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if ! command -v initdb >/dev/null 2>&1 && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    need+=(postgresql)
fi
command -v runuser >/dev/null 2>&1 || need+=(util-linux)

if ((${#need[@]})); then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    echo "services.sh: installing ${need[*]}" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Debian's postgresql package starts a cluster service on install in some images: the tests start
# their own clusters and never use it, so it is left as it is.
command -v chromium >/dev/null 2>&1 || { echo "services.sh: chromium still missing" >&2; exit 1; }
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null 2>&1 \
    || { echo "services.sh: PostgreSQL initdb still missing" >&2; exit 1; }
id postgres >/dev/null 2>&1 || { echo "services.sh: no postgres user (the postgresql package creates it)" >&2; exit 1; }
echo "services.sh: chromium $(chromium --version 2>/dev/null | awk '{print $2}'), PostgreSQL $(ls /usr/lib/postgresql | sort -n | tail -1) ready" >&2
