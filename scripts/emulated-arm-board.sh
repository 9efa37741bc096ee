#!/usr/bin/env bash
# An emulated 64-bit ARM board for development and CI: a Debian arm64 userland run by
# QEMU user-mode emulation, with the aarch64 wheels of onnxruntime and numpy, running
# the board agent (python3 -m search.board.agent) on loopback.
#
# Its timings are NOT an ARM board's (emulation even inverts int8 vs fp32); the agent
# runs with EDGENAS_EMULATED=1, so every latency it gives is labelled emulated. Its
# worth is functional: models really load and run on ARM's ONNX Runtime kernels.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/emulated-arm-board.sh [start|stop|status] [--port PORT] [--token TOKEN]

  start   prepare the emulated board (first time only) and start its agent (default)
  stop    stop the agent
  status  say whether the agent runs, and how to use it

Options:
  --port PORT    loopback port of the agent (default: 8471)
  --token TOKEN  the agent's token (default: the last one used, else a new random one)

Then search against it, e.g.:
  python nas.py --budget 3 --target arm --device 127.0.0.1:PORT --token TOKEN

Needs root (debootstrap, chroot, mounts) and reaches Debian's mirror and PyPI the
first time. Environment:
  EDGENAS_ARM_BOARD     where the board lives (default: studies/.cache/arm-board)
  EDGENAS_DEBIAN_MIRROR Debian mirror (default: http://deb.debian.org/debian)
  QEMU_CPU              core QEMU emulates (default: cortex-a76, as in a Raspberry Pi 5)
EOF
}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BOARD=${EDGENAS_ARM_BOARD:-$REPO/studies/.cache/arm-board}
ROOT=$BOARD/rootfs
MIRROR=${EDGENAS_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
export QEMU_CPU=${QEMU_CPU:-cortex-a76}
PID_FILE=$BOARD/agent.pid
LOG=$BOARD/agent.log
START_TIMEOUT_S=180  # the agent imports ONNX Runtime under emulation: seconds, not minutes

action=start
port=
token=
while (($#)); do
    case $1 in
        start | stop | status) action=$1 ;;
        --port) port=${2:?--port needs a value}; shift ;;
        --token) token=${2:?--token needs a value}; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "emulated-arm-board.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

say() { echo "[arm-board] $*" >&2; }
die() { echo "emulated-arm-board.sh: error: $*" >&2; exit 1; }

running_pid() {
    local pid
    pid=$(cat "$PID_FILE" 2>/dev/null) || return 1
    kill -0 "$pid" 2>/dev/null && echo "$pid"
}

usage_line() {
    echo "--device 127.0.0.1:$(cat "$BOARD/agent.port") --token $(cat "$BOARD/agent.token")"
}

# Debian's qemu-user-static and debootstrap.
install_tools() {
    command -v debootstrap >/dev/null && [[ -x /usr/bin/qemu-aarch64-static ]] && return
    say "installing qemu-user-static and debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static debootstrap >/dev/null
}

# Let the kernel run aarch64 programs through QEMU. The F flag opens the interpreter
# now, so it also works inside the chroot, where no QEMU binary exists.
register_binfmt() {
    local dir=/proc/sys/fs/binfmt_misc
    [[ -e $dir/register ]] || mount -t binfmt_misc binfmt_misc "$dir"
    [[ -e $dir/qemu-aarch64 ]] || grep -v '^#' /usr/lib/binfmt.d/qemu-aarch64.conf >"$dir/register"
}

# The host's pip installs the aarch64 wheels straight into the root (no emulated pip),
# in the host project's versions of onnxruntime and numpy where it has a venv.
wanted_wheels() {
    local python=$REPO/.venv/bin/python
    if [[ -x $python ]] && "$python" -c 'import onnxruntime, numpy' 2>/dev/null; then
        "$python" -c 'import onnxruntime, numpy; print(f"onnxruntime=={onnxruntime.__version__} numpy=={numpy.__version__}")'
    else
        echo "onnxruntime numpy"
    fi
}

install_wheels() {
    local root=$1 wheels=$2 platforms=() minor
    local stdlib=("$root"/usr/lib/python3.[0-9]*)  # .../usr/lib/python3.11
    local pyver=${stdlib[0]##*/python}
    # Wheels are tagged with the oldest glibc they need; accept any up to Debian's 2.36.
    for minor in $(seq 36 -1 17); do platforms+=(--platform "manylinux_2_${minor}_aarch64"); done
    local pip=(python3 -m pip)
    [[ -x $REPO/.venv/bin/python ]] && pip=("$REPO/.venv/bin/python" -m pip)
    local site=$root/usr/local/lib/python$pyver/dist-packages
    rm -rf "$site"
    # shellcheck disable=SC2086  # $wheels is a list of requirements
    "${pip[@]}" install --quiet --no-warn-script-location --target "$site" "${platforms[@]}" \
        --python-version "$pyver" --implementation cp --abi "cp${pyver/./}" --only-binary=:all: $wheels
    echo "$wheels" >"$root/.edgenas-wheels"
}

# debootstrap's first stage only, with the included packages unpacked by hand: the
# second stage configures every package under emulation (3.5 min here against 30 s)
# and gives nothing python3 and the agent need.
prepare_root() {
    local tmp=$BOARD/rootfs.partial
    rm -rf "$tmp"
    mkdir -p "$BOARD"
    say "debootstrap: Debian $SUITE arm64 from $MIRROR"
    debootstrap --foreign --arch=arm64 --variant=minbase --include=python3 "$SUITE" "$tmp" "$MIRROR" >"$BOARD/debootstrap.log"
    local pkg deb packages
    read -ra packages <"$tmp/debootstrap/base"
    for pkg in "${packages[@]}"; do
        deb=$(awk -v p="$pkg" '$1 == p { print $2 }' "$tmp/debootstrap/debpaths")
        dpkg-deb --fsys-tarfile "$tmp$deb" | tar -x -C "$tmp" --keep-directory-symlink
    done
    cp "$tmp/usr/share/base-passwd/passwd.master" "$tmp/etc/passwd"
    cp "$tmp/usr/share/base-passwd/group.master" "$tmp/etc/group"
    rm -rf "$tmp/debootstrap" "$tmp"/var/cache/apt/archives/*.deb
    rm -f "$tmp/proc" && mkdir "$tmp/proc"  # the first stage links it to the host's /proc
    say "installing the aarch64 wheels: $(wanted_wheels)"
    install_wheels "$tmp" "$(wanted_wheels)"
    mv "$tmp" "$ROOT"
}

# What a Cortex-A76 board's kernel shows, one entry per core QEMU can use: ONNX
# Runtime's cpuinfo reads it, and so does the agent's provenance ("Model").
write_cpuinfo() {
    local cpu
    for cpu in $(seq 0 $(($(nproc) - 1))); do
        printf 'processor\t: %d\nBogoMIPS\t: 108.00\n' "$cpu"
        printf 'Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\n'
        printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: 0xd0b\nCPU revision\t: 1\n\n'
    done
    printf 'Model\t\t: %s under QEMU user-mode emulation\n' "$QEMU_CPU"
}

start() {
    local pid
    [[ $(id -u) == 0 ]] || die "needs root: debootstrap, chroot and mounts"
    if pid=$(running_pid); then
        say "already running (pid $pid); 'stop' first to change the port or token"
        usage_line
        return
    fi
    local began=$SECONDS
    install_tools
    register_binfmt
    if [[ ! -d $ROOT ]]; then
        prepare_root
        say "prepared $ROOT in $((SECONDS - began)) s, $(du -sh "$ROOT" | cut -f1)"
    elif [[ $(cat "$ROOT/.edgenas-wheels" 2>/dev/null) != "$(wanted_wheels)" ]]; then
        say "updating the aarch64 wheels to: $(wanted_wheels)"
        install_wheels "$ROOT" "$(wanted_wheels)"
    fi

    # The agent's code, fresh each start: what a real board gets (README), no more.
    rm -rf "$ROOT/opt/edgenas"
    mkdir -p "$ROOT/opt/edgenas"
    tar c -C "$REPO" --exclude=__pycache__ search/__init__.py search/board | tar x -C "$ROOT/opt/edgenas"
    write_cpuinfo >"$BOARD/cpuinfo"

    port=${port:-8471}
    token=${token:-$(cat "$BOARD/agent.token" 2>/dev/null || od -An -N16 -tx1 /dev/urandom | tr -d ' \n')}
    echo "$port" >"$BOARD/agent.port"
    (umask 077 && echo "$token" >"$BOARD/agent.token")

    # A private mount namespace: the mounts vanish with the agent. The token goes in
    # the environment, not on a command line that ps shows.
    : >"$LOG"
    # shellcheck disable=SC2016  # the inner script expands its own arguments
    EDGENAS_TOKEN=$token nohup unshare --mount --propagation private sh -c '
        set -e
        root=$1 cpuinfo=$2; shift 2
        mount -t proc proc "$root/proc"
        mount --bind "$cpuinfo" "$root/proc/cpuinfo"
        mount --bind -o ro /sys "$root/sys"
        mount -t tmpfs tmpfs "$root/dev/shm"
        exec chroot "$root" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root \
            QEMU_CPU="$QEMU_CPU" EDGENAS_EMULATED=1 EDGENAS_TOKEN="$EDGENAS_TOKEN" PYTHONPATH=/opt/edgenas "$@"
    ' sh "$ROOT" "$BOARD/cpuinfo" \
        python3 -m search.board.agent --host 127.0.0.1 --port "$port" >"$LOG" 2>&1 &
    echo $! >"$PID_FILE"

    local deadline=$((SECONDS + START_TIMEOUT_S))
    until grep -q "listening on" "$LOG"; do
        running_pid >/dev/null || die "the agent stopped; its log ($LOG):"$'\n'"$(cat "$LOG")"
        ((SECONDS < deadline)) || { stop; die "the agent did not start in $START_TIMEOUT_S s; log: $LOG"; }
        sleep 0.5
    done
    say "$(grep "listening on" "$LOG" | sed 's/.*agent: //')"
    say "started in $((SECONDS - began)) s; log: $LOG; stop with: $0 stop"
    usage_line
}

stop() {
    local pid
    if ! pid=$(running_pid); then
        say "not running"
        return
    fi
    kill -TERM "$pid"
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    rm -f "$PID_FILE"
    say "stopped (pid $pid)"
}

status() {
    local pid
    if pid=$(running_pid); then
        say "running (pid $pid), log: $LOG"
        usage_line
    else
        say "not running; prepared: $([[ -d $ROOT ]] && echo "yes, $ROOT" || echo no)"
        return 1
    fi
}

"$action"
