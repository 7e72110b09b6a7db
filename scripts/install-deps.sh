#!/usr/bin/env bash
# Install the Debian 12 packages libaiqueue needs.
#   install-deps.sh demo   build + the HTTP server: what the embedded demo needs
#   install-deps.sh [all]  everything the test suites use (drivers, servers,
#                          Celery, Python tools)
# Does nothing when everything is present already; uses sudo when not root.
set -euo pipefail

profile=${1:-all}
packages=(
	build-essential meson ninja-build pkg-config
	libjansson-dev uuid-dev check
	libmicrohttpd-dev python3
)
case "$profile" in
demo) ;;
all)
	packages+=(
		python3-cffi python3-pytest
		libhiredis-dev redis-server
		librabbitmq-dev rabbitmq-server
		libpq-dev postgresql
		libcurl4-openssl-dev
		libespeak-ng-dev espeak-ng-data libutf8proc-dev libstemmer-dev
		python3-celery python3-redis curl
		wrk python3-fastapi python3-uvicorn redis-tools
		clang libclang-rt-14-dev clang-format clang-tidy cppcheck valgrind
		doxygen
		docker.io debootstrap docker-compose python3-yaml
		prometheus
		chromium
	)
	;;
*) echo "usage: $0 [demo|all]" >&2; exit 2 ;;
esac

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
	exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
	sudo="sudo"
fi
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
