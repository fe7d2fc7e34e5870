# shellcheck shell=bash
# Shared helpers for cella's host-side setup scripts. Source it; do not run it.
#
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ -n "${_CELLA_LIB_SH:-}" ]]; then return 0; fi
_CELLA_LIB_SH=1

CELLA_SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CELLA_REPO_ROOT="$(cd "$CELLA_SCRIPTS_DIR/.." && pwd)"
CELLA_HOME="${CELLA_HOME:-$HOME/.cella}"
CELLA_CACHE="${CELLA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cella}"
_CELLA_LOG_TAG="$(basename "$0")"

log() { printf '[%s] %s\n' "$_CELLA_LOG_TAG" "$*" >&2; }
warn() { printf '[%s] warning: %s\n' "$_CELLA_LOG_TAG" "$*" >&2; }
die() {
    printf '[%s] error: %s\n' "$_CELLA_LOG_TAG" "$*" >&2
    exit 1
}

# need_cmd CMD [PACKAGE]: fail clearly when a tool is missing.
need_cmd() {
    command -v "$1" >/dev/null 2>&1 ||
        die "'$1' not found on PATH${2:+ (install the Debian package '$2', or run scripts/setup)}"
}

need_root() {
    [[ "$(id -u)" -eq 0 ]] || die "$1 needs root (run as root or with sudo)"
}

# The Debian mirror apt is configured with (deb822 .sources or one-line .list),
# for the 'bookworm' suite. Falls back to deb.debian.org.
debian_mirror() {
    local f uri=""
    if [[ -n "${CELLA_DEBIAN_MIRROR:-}" ]]; then
        echo "$CELLA_DEBIAN_MIRROR"
        return 0
    fi
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -r "$f" ]] || continue
        # Paragraphs separated by blank lines; want one whose Suites has bookworm.
        uri="$(awk '
            BEGIN { RS=""; FS="\n" }
            {
                u=""; s=0
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^URIs:/) { sub(/^URIs:[ \t]*/, "", $i); split($i, a, /[ \t]+/); u=a[1] }
                    if ($i ~ /^Suites:/ && $i ~ /(^|[ \t])bookworm([ \t]|$)/) s=1
                }
                if (s && u != "") { print u; exit }
            }' "$f")"
        [[ -n "$uri" ]] && break
    done
    if [[ -z "$uri" ]]; then
        for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
            [[ -r "$f" ]] || continue
            uri="$(awk '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                        if ($(i+1) == "bookworm") { print $i; exit } }' "$f")"
            [[ -n "$uri" ]] && break
        done
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# Read one string field from a flat JSON object file (our own current.json).
json_field() {
    local file="$1" key="$2"
    [[ -r "$file" ]] || return 1
    sed -n '/"'"$key"'"[[:space:]]*:/{s/.*"'"$key"'"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p;q;}' "$file"
}

# Atomically write stdin to FILE (temp file in the same dir, then rename).
write_atomic() {
    local file="$1" tmp
    tmp="$(mktemp "$file.tmp.XXXXXX")"
    cat >"$tmp"
    chmod 0644 "$tmp"
    mv -f "$tmp" "$file"
}

# Host TSC rate in kHz from /proc/cpuinfo 'cpu MHz', for tsc_early_khz= (see
# ENVIRONMENT.md: without it a TCG guest can hang calibrating the TSC).
host_cpu_khz() {
    awk -F: '/^cpu MHz/ { gsub(/[ \t]/, "", $2); printf "%d\n", $2 * 1000; exit }' /proc/cpuinfo
}

# Kernel cache: the extracted linux-image package lives in
# $CELLA_CACHE/kernel/<package>_<version>/root (with modules.dep generated).
kernel_pkg_cache_dir() { echo "$CELLA_CACHE/kernel/${1}_${2}"; }

# ensure_kernel_pkg_tree PACKAGE VERSION KVER: download (exact version) and
# extract the kernel package into the cache, run depmod. Prints the root dir.
ensure_kernel_pkg_tree() {
    local pkg="$1" ver="$2" kver="$3" dir tmp deb
    dir="$(kernel_pkg_cache_dir "$pkg" "$ver")"
    if [[ -f "$dir/.complete" ]]; then
        echo "$dir/root"
        return 0
    fi
    need_cmd dpkg-deb dpkg
    need_cmd depmod kmod
    need_cmd apt-get apt
    mkdir -p "$(dirname "$dir")"
    rm -rf "$dir"
    tmp="$(mktemp -d "$dir.tmp.XXXXXX")"
    log "downloading $pkg=$ver"
    (cd "$tmp" && apt-get download -q "$pkg=$ver" >&2) ||
        {
            rm -rf "$tmp"
            die "apt-get download $pkg=$ver failed (no apt metadata or mirror unreachable? try 'apt-get update')"
        }
    deb="$(ls "$tmp"/*.deb)"
    log "extracting $(basename "$deb")"
    mkdir "$tmp/root"
    dpkg-deb -x "$deb" "$tmp/root" || {
        rm -rf "$tmp"
        die "dpkg-deb -x $deb failed"
    }
    [[ -d "$tmp/root/lib/modules/$kver" ]] || {
        rm -rf "$tmp"
        die "$pkg has no lib/modules/$kver"
    }
    log "running depmod for $kver"
    depmod -b "$tmp/root" "$kver" || {
        rm -rf "$tmp"
        die "depmod -b $tmp/root $kver failed"
    }
    rm -f "$deb"
    touch "$tmp/.complete"
    mv -T "$tmp" "$dir"
    echo "$dir/root"
}
