#!/usr/bin/env bash
# Checks the systemd files in packaging/systemd against a built tinyci binary, without
# touching the host:
#   1. every unit (templates as an instance), with its drop-ins, passes
#      `systemd-analyze verify` with no output at all, the binary installed where the units
#      expect it (/usr/local/bin/tinyci) inside a scratch root;
#   2. every ExecStart= command line parses with that binary (flags renamed or removed in
#      the CLI are caught: it is run with the same arguments plus --help);
#   3. every *.sysusers file passes `systemd-sysusers --dry-run` in a scratch root.
#
# Usage: packaging/verify-units.sh PATH/TO/tinyci      (e.g. target/release/tinyci)
# Needs systemd-analyze and systemd-sysusers from systemd >= 250 (Debian: apt-get install
# systemd); systemd need not be running (it is not, in a container).
# Exit status: 0 all good, 1 a check failed, 2 bad usage or missing tools.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
units=$here/systemd
# Where the units' ExecStart= expects the binary: `cargo install --root /usr/local`.
install_path=usr/local/bin/tinyci
# A template unit is verified as this instance.
instance=verify

usage() {
    echo "usage: $0 PATH/TO/tinyci" >&2
    exit 2
}
fail() {
    echo "FAIL: $*" >&2
    exit 1
}

[[ $# -eq 1 ]] || usage
binary=$1
[[ -f $binary && -x $binary ]] || { echo "error: $binary is not an executable file" >&2; exit 2; }
binary=$(cd "$(dirname "$binary")" && pwd)/$(basename "$binary")
for tool in systemd-analyze systemd-sysusers; do
    command -v "$tool" >/dev/null || { echo "error: $tool not found (Debian: apt-get install systemd)" >&2; exit 2; }
done
# `systemd-analyze verify --root=` is new in systemd 250.
version=$(systemd-analyze --version | awk 'NR == 1 { print $2 }')
[[ $version =~ ^[0-9]+$ ]] && ((version >= 250)) \
    || { echo "error: systemd $version is too old: verify --root needs 250 or newer" >&2; exit 2; }

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# Sort packaging/systemd into units, drop-in directories and sysusers files; anything else is
# an error, so that a unit with a mistyped suffix cannot go unchecked.
unit_files=() dropin_dirs=() sysusers_files=()
for path in "$units"/*; do
    name=$(basename "$path")
    case $name in
        *.service | *.socket | *.timer | *.path | *.target | *.mount)
            [[ -f $path ]] || fail "$name is not a file"
            unit_files+=("$path") ;;
        *.d)
            [[ -d $path && -f $units/${name%.d} ]] \
                || fail "$name is not a drop-in directory of a unit in $units"
            for conf in "$path"/*; do
                [[ $conf == *.conf && -f $conf ]] || fail "$name/$(basename "$conf") is not a *.conf drop-in"
            done
            dropin_dirs+=("$path") ;;
        *.sysusers) sysusers_files+=("$path") ;;
        *) fail "unexpected file $path (not a unit, drop-in directory or sysusers file)" ;;
    esac
done
((${#unit_files[@]} > 0)) || fail "no units in $units"

# 1. systemd-analyze verify in a scratch root: the units as they will be installed
#    (/etc/systemd/system, drop-ins included), the binary where ExecStart= names it, and the
#    distribution's own units (targets, sysinit.target, ...) that every service depends on.
root=$scratch/root
mkdir -p "$root/etc/systemd/system" "$root/usr/lib/systemd" "$root/$(dirname "$install_path")"
copied=()
for dir in /usr/lib/systemd/system /lib/systemd/system; do
    # The same directory with merged /usr (copied once); two without it (each copied).
    [[ -d $dir ]] || continue
    real=$(realpath "$dir")
    [[ " ${copied[*]} " != *" $real "* ]] || continue
    copied+=("$real")
    mkdir -p "$root$(dirname "$dir")"
    cp -a "$real" "$root$dir"
done
cp "${unit_files[@]}" "$root/etc/systemd/system/"
((${#dropin_dirs[@]} == 0)) || cp -R "${dropin_dirs[@]}" "$root/etc/systemd/system/"
cp "$binary" "$root/$install_path"
names=()
for path in "${unit_files[@]}"; do
    name=$(basename "$path")
    [[ $name == *@.* ]] && name=${name/@./@$instance.}
    names+=("$name")
done
echo "verifying ${names[*]} (systemd $version)"
set +e
output=$(systemd-analyze verify --root="$root" "${names[@]}" 2>&1)
status=$?
set -e
# systemd-analyze exits 0 on warnings such as an unknown or misspelled directive or a bad
# value ("Unknown key 'KillMod' in section [Service], ignoring."), which would make systemd
# silently ignore that line: any output at all is a failure. Nothing is filtered: on systemd
# 252 in a container without systemd as PID 1, verify --root prints nothing about the host.
# If another systemd prints host-only lines, filter exactly those here and say why.
if ((status != 0)) || [[ -n $output ]]; then
    [[ -z $output ]] || printf '%s\n' "$output" >&2
    fail "systemd-analyze verify exited $status${output:+ and printed the above}"
fi

# 2. The ExecStart= command lines parse with this binary. %i is the instance above;
#    $VARIABLE words expand to nothing, as they do with the units' Environment= defaults.
for path in "${unit_files[@]}" "${dropin_dirs[@]}"; do
    while IFS= read -r line; do
        command=${line#ExecStart=}
        [[ -n $command ]] || continue
        while [[ $command == [-@:+!]* ]]; do command=${command:1}; done
        command=${command//%i/$instance}
        [[ $command != *[\"\'\\%]* ]] \
            || fail "$(basename "$path"): this check does not handle quotes, escapes or specifiers other than %i: $line"
        read -ra words <<<"$command"
        [[ ${words[0]} == "/$install_path" ]] \
            || fail "$(basename "$path"): ExecStart= runs ${words[0]}, not /$install_path"
        args=()
        for word in "${words[@]:1}"; do
            [[ $word =~ ^\$\{?[A-Za-z_][A-Za-z0-9_]*\}?$ ]] || args+=("$word")
        done
        echo "checking: tinyci ${args[*]} --help"
        "$binary" "${args[@]}" --help </dev/null >/dev/null 2>"$scratch/help.err" \
            || { cat "$scratch/help.err" >&2; fail "$(basename "$path"): tinyci rejects its ExecStart= arguments"; }
    done < <(if [[ -d $path ]]; then cat "$path"/*.conf; else cat "$path"; fi | grep '^ExecStart=' || true)
done

# 3. sysusers files, applied to an empty scratch root. systemd-sysusers logs what it would
#    do on stderr; problems with the file are the lines naming it ("FILE:LINE: ...").
for path in "${sysusers_files[@]}"; do
    echo "checking $(basename "$path") with systemd-sysusers --dry-run"
    mkdir -p "$scratch/sysusers"
    set +e
    output=$(systemd-sysusers --root="$scratch/sysusers" --dry-run "$path" 2>&1)
    status=$?
    set -e
    if ((status != 0)) || grep -qF "$path" <<<"$output"; then
        printf '%s\n' "$output" >&2
        fail "systemd-sysusers rejects $(basename "$path")"
    fi
done

echo "OK: ${#unit_files[@]} unit(s), ${#dropin_dirs[@]} drop-in dir(s), ${#sysusers_files[@]} sysusers file(s)"
