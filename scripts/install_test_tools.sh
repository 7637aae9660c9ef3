#!/usr/bin/env bash
# System tools some tests need, installed from Debian's packages where we can (root and apt-get):
# OpenSSH's sshd for the SSH-remote test; chromium and its driver for the page tests (Selenium).
# Where they cannot be installed, those tests are skipped and say which package they need; nothing here
# ever fails `make test`.
set -u
missing=()
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || missing+=(openssh-server openssh-client)
{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } || missing+=(chromium chromium-driver)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "note: ${missing[*]} not installed and this user cannot install them: the tests that need them will be skipped" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
install() { timeout 600 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; }
install || { timeout 300 apt-get update -qq >/dev/null 2>&1 && install; } ||
    echo "note: ${missing[*]} could not be installed: the tests that need them will be skipped" >&2
exit 0
