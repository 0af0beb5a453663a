#!/bin/sh
# Writes the Secret's values for `kubectl apply -k deploy/kubernetes`: random ones,
# into deploy/kubernetes/secrets/ (mode 0600, git-ignored). Never overwrites: delete
# a file to rotate it. Give the receiver the authorization value printed below and the
# signing secret (the file), or replace them with the receiver's own before applying.
set -eu
dir="$(cd "$(dirname "$0")" && pwd)/secrets"
umask 077
mkdir -p "$dir"

random_hex() { od -An -tx1 -N32 /dev/urandom | tr -d ' \n'; }
random_base64() { head -c 32 /dev/urandom | base64 | tr -d '\n'; }

write() {
    if [ -e "$dir/$1" ]; then
        echo "kept    $dir/$1 (exists; delete it to make a new one)"
    else
        printf '%s\n' "$2" >"$dir/$1"
        echo "wrote   $dir/$1"
    fi
}

write api-token "$(random_hex)"
write portal-authorization "Bearer $(random_hex)"
write portal-signing-secret "whsec_$(random_base64)"
echo "now: kubectl apply -k $(dirname "$dir")"
