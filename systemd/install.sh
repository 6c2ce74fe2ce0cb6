#!/usr/bin/env bash
# Install or upgrade edged on an industrial PC: system user, venv under /opt/edged, systemd unit,
# config. Idempotent: run it again to upgrade. Never overwrites an existing /etc/edged/edged.toml.
# Guide: systemd/README.md.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: install.sh [options]        (as root; --dry-run prints the steps and changes nothing)

  --source PATH      what to install: a source tree, a wheel or an sdist
                     (default: the source tree this script is in)
  --wheelhouse DIR   install offline from DIR, made on a connected machine with
                     pip wheel --wheel-dir DIR './[all,systemd]'
  --extras LIST      optional features (default: all,systemd; e.g. mqtt,modbus)
  --prefix DIR       where the venv and docs go (default: /opt/edged)
  --python PATH      Python >= 3.11 for the venv (default: python3)
  --dry-run          print what would be done, change nothing
  -h, --help         this text
EOF
}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SOURCE=$(dirname "$HERE")
SOURCE_GIVEN=0
WHEELHOUSE=""
EXTRAS="all,systemd"
PREFIX=/opt/edged
PYTHON=python3
DRY_RUN=0
CONFIG_DIR=/etc/edged
CONFIG=$CONFIG_DIR/edged.toml
UNIT_DIR=/etc/systemd/system

die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }
warn() { printf 'install.sh: warning: %s\n' "$*" >&2; }
step() { printf '\n==> %s\n' "$*"; }
# Every change goes through run(), so --dry-run shows exactly the commands a real run executes.
run() {
    printf '+'
    printf ' %q' "$@"
    printf '\n'
    if [[ $DRY_RUN -eq 0 ]]; then "$@"; fi
}

while [[ $# -gt 0 ]]; do
    case $1 in
        --source) SOURCE=${2:?--source needs a path}; SOURCE_GIVEN=1; shift 2 ;;
        --wheelhouse) WHEELHOUSE=${2:?--wheelhouse needs a directory}; shift 2 ;;
        --extras) EXTRAS=${2?--extras needs a list}; shift 2 ;;
        --prefix) PREFIX=${2:?--prefix needs a directory}; shift 2 ;;
        --python) PYTHON=${2:?--python needs a path}; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done
PREFIX=${PREFIX%/}
VENV=$PREFIX/venv

# ------------------------------------------------------------------------------------ checks
step "Checking prerequisites"
if [[ $EUID -ne 0 && $DRY_RUN -eq 0 ]]; then
    die "run as root (sudo $0 ...), or with --dry-run to see the steps"
fi
[[ $PREFIX == /* ]] || die "--prefix must be an absolute path: $PREFIX"
if [[ $EXTRAS =~ [^A-Za-z0-9_,-] ]]; then die "--extras is a comma-separated list of names: $EXTRAS"; fi
command -v "$PYTHON" >/dev/null || die "$PYTHON not found: apt-get install python3 python3-venv"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "edged needs Python >= 3.11; $PYTHON is $("$PYTHON" -V 2>&1). Use --python /usr/bin/python3.11 or newer"
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null \
    || die "$PYTHON cannot create venvs: apt-get install python3-venv"

if [[ -n $WHEELHOUSE ]]; then
    [[ -d $WHEELHOUSE ]] || die "--wheelhouse $WHEELHOUSE is not a directory"
    [[ $SOURCE_GIVEN -eq 1 ]] || SOURCE=edged
elif [[ -d $SOURCE ]]; then
    [[ -f $SOURCE/pyproject.toml ]] || die "$SOURCE is not an edged source tree (no pyproject.toml)"
elif [[ ! -f $SOURCE ]]; then
    die "--source $SOURCE: no such file or directory"
fi
if [[ -d $SOURCE || -f $SOURCE ]]; then SOURCE=$(realpath "$SOURCE"); fi

# systemd-python (journald fields) has no wheels on PyPI: it compiles against libsystemd.
if [[ ,$EXTRAS, == *,systemd,* ]] && [[ -z $WHEELHOUSE ]]; then
    if ! { command -v cc >/dev/null && pkg-config --exists libsystemd 2>/dev/null \
        && "$PYTHON" -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))'; }; then
        warn "the systemd extra (structured journald fields) needs a compiler and headers:"
        warn "    apt-get install gcc pkg-config libsystemd-dev python3-dev"
        warn "installing without it: logs still reach the journal, as plain text lines"
        EXTRAS=$(printf '%s' ",$EXTRAS," | sed 's/,systemd,/,/g; s/^,//; s/,$//')
    fi
fi
SPEC=$SOURCE
if [[ -n $EXTRAS ]]; then SPEC="${SOURCE}[${EXTRAS}]"; fi
echo "installing $SPEC into $VENV"

# ------------------------------------------------------------------------------------ user
step "System user edged (member of dialout for the serial ports)"
if command -v systemd-sysusers >/dev/null; then
    run install -D -m 0644 "$HERE/sysusers-edged.conf" /etc/sysusers.d/edged.conf
    run systemd-sysusers /etc/sysusers.d/edged.conf
else
    if ! getent passwd edged >/dev/null; then
        run useradd --system --user-group --home-dir /var/lib/edged --no-create-home \
            --shell /usr/sbin/nologin --comment "edged gateway daemon" edged
    fi
    if getent group dialout >/dev/null; then run usermod --append --groups dialout edged; fi
fi

# ------------------------------------------------------------------------------------ directories
step "Directories: $CONFIG_DIR, /var/lib/edged, /var/log/edged"
if command -v systemd-tmpfiles >/dev/null; then
    run install -D -m 0644 "$HERE/tmpfiles-edged.conf" /etc/tmpfiles.d/edged.conf
    run systemd-tmpfiles --create /etc/tmpfiles.d/edged.conf
else
    run install -d -m 0750 -o root -g edged "$CONFIG_DIR"
    run install -d -m 0700 -o root -g root "$CONFIG_DIR/credentials"
    run install -d -m 0750 -o edged -g edged /var/lib/edged /var/log/edged
fi

# ------------------------------------------------------------------------------------ venv
step "Python environment in $VENV"
if [[ -x $VENV/bin/python ]]; then
    echo "reusing $VENV (upgrading edged in it)"
else
    run install -d -m 0755 "$PREFIX"
    run "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/pip" install --upgrade --no-cache-dir --disable-pip-version-check)
if [[ -n $WHEELHOUSE ]]; then PIP+=(--no-index --find-links "$(realpath "$WHEELHOUSE")"); fi
run "${PIP[@]}" "$SPEC"
# The venv is read-only at run time (ProtectSystem=strict): compile once here.
run "$VENV/bin/python" -m compileall -q "$VENV/lib"

# ------------------------------------------------------------------------------------ docs, examples
step "Guide and examples in $PREFIX/share"
run install -D -m 0644 "$HERE/README.md" "$PREFIX/share/README.md"
run install -d -m 0755 "$PREFIX/share/examples"
# Each plugin's sample.toml, taken from the installed packages so a wheel install has them too.
COPY_SAMPLES='
import pathlib, shutil, sys
import drivers, uplink
out = pathlib.Path(sys.argv[1])
for pkg in (drivers, uplink):
    kind = pkg.__name__
    for sample in sorted(pathlib.Path(pkg.__path__[0]).glob("*/sample.toml")):
        dest = out / f"{kind}-{sample.parent.name}.toml"
        shutil.copyfile(sample, dest)
        print(f"  {dest}")
'
if [[ $DRY_RUN -eq 0 ]]; then
    "$VENV/bin/python" -c "$COPY_SAMPLES" "$PREFIX/share/examples"
else
    echo "+ copy drivers/*/sample.toml and uplink/*/sample.toml from $VENV to $PREFIX/share/examples/"
fi

# ------------------------------------------------------------------------------------ unit
step "systemd unit $UNIT_DIR/edged.service"
UNIT_SRC=$HERE/edged.service
if [[ $PREFIX != /opt/edged ]]; then
    UNIT_SRC=$(mktemp)
    trap 'rm -f "$UNIT_SRC"' EXIT
    sed "s#/opt/edged/#$PREFIX/#g" "$HERE/edged.service" >"$UNIT_SRC"
    echo "(ExecStart= and ExecReload= point at $VENV)"
fi
# The unit is ours and replaced on upgrade: local changes go in `systemctl edit edged` drop-ins.
run install -D -m 0644 "$UNIT_SRC" "$UNIT_DIR/edged.service"

# ------------------------------------------------------------------------------------ config
step "Config $CONFIG"
if [[ -e $CONFIG ]]; then
    echo "keeping the existing $CONFIG (never overwritten); the current example is $HERE/edged.toml"
else
    run install -m 0640 -o root -g edged "$HERE/edged.toml" "$CONFIG"
fi
if [[ $DRY_RUN -eq 0 ]]; then
    # As edged, to catch a config it cannot read as well as one that does not validate.
    if command -v runuser >/dev/null; then AS_EDGED=(runuser -u edged --); else AS_EDGED=(); fi
    if ! "${AS_EDGED[@]}" "$VENV/bin/edged" check-config "$CONFIG"; then
        warn "$CONFIG does not validate: fix it before starting edged"
    fi
else
    echo "+ runuser -u edged -- $VENV/bin/edged check-config $CONFIG"
fi

# ------------------------------------------------------------------------------------ systemd
step "systemd"
if [[ -d /run/systemd/system ]]; then
    run systemctl daemon-reload
    if systemctl is-active --quiet edged; then
        echo "edged is running the previous version: restart it with  systemctl restart edged"
    fi
else
    echo "systemd is not running here (a chroot or container?): skipped systemctl daemon-reload"
fi

cat <<EOF

Done$([[ $DRY_RUN -eq 1 ]] && echo " (dry run: nothing was changed)"). Next steps:
  1. Edit $CONFIG (examples: $PREFIX/share/examples/), then check it:
       $VENV/bin/edged check-config $CONFIG
  2. Secrets go in credentials, not in the config: see $PREFIX/share/README.md, "Secrets".
  3. Start it now and at every boot:    systemctl enable --now edged
  4. Follow it:                         journalctl -u edged -f
     Buffer and uplink backlog:         $VENV/bin/edged status --config $CONFIG
  5. Check the sandbox:                 systemd-analyze security edged.service
EOF
