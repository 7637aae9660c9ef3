#!/usr/bin/env bash
# System tools some tests need, installed from Debian's packages where we can (root and apt-get):
# OpenSSH's sshd for the SSH-remote test. Where they cannot be installed, that test is skipped and
# says which package it needs; nothing here ever fails `make test`.
set -u
if command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "note: openssh-server is not installed and this user cannot install it: the SSH remote test will be skipped" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
install() { timeout 300 apt-get install -y -qq --no-install-recommends openssh-server openssh-client >/dev/null 2>&1; }
install || { timeout 300 apt-get update -qq >/dev/null 2>&1 && install; } ||
    echo "note: openssh-server could not be installed: the SSH remote test will be skipped" >&2
exit 0
