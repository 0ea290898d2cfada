#!/bin/bash
# Runs INSIDE a container (as any user): prints what a `doctor` can see about the
# container's relaxations, then tries the operations snapkernel needs, one line each:
#   status      CapBnd/CapEff/CapPrm/CapAmb/NoNewPrivs/Seccomp/Seccomp_filters of this shell
#   masked      mounts below /proc: masks are tmpfs//dev/null binds (/proc/keys, /proc/acpi ...),
#               read-only paths are proc binds (/proc/sys, /proc/bus ...); paths absent on
#               the kernel (here /proc/kcore, /proc/sched_debug ...) are not masked at all
#   unshare     unshare --user --map-current-user --pid --mount --fork --mount-proc true
#   check       $CRIU_CAP check --unprivileged
#   dump-*      criu dump --unprivileged of a setsid'd python3 sleeper (plain, then capped binary)
#   restore     two concurrent restores (unshare + setpriv + $CRIU_PLAIN), each in its
#               own user/pid/mount namespace
# Env: CRIU_CAP (criu with cap_checkpoint_restore+eip), CRIU_PLAIN (same binary, no caps).
set -u
CRIU_CAP=${CRIU_CAP:-/ctest/criu-cap}
CRIU_PLAIN=${CRIU_PLAIN:-/ctest/criu-plain}
W=$(mktemp -d /tmp/probe.XXXXXX)
export XDG_RUNTIME_DIR=$W   # silences criu's kerndat warning
T="timeout -s KILL 20"

say() { printf '%-10s %s\n' "$1:" "$2"; }
# first "Error (...)" lines of a criu log, else the first lines of the fallback output
errof() {
    local e=""
    [ -f "$1" ] && e=$(grep -E 'Error \(' "$1" | sed -E 's/^\([0-9. ]+\) //' | head -n "${2:-2}")
    [ -z "$e" ] && [ -n "${3:-}" ] && [ -f "$3" ] && e=$(grep -v kerndat "$3" | head -n 2)
    printf '%s' "$e" | tr '\n' '|'
}

say id "$(id)"
for k in CapPrm CapEff CapBnd CapAmb NoNewPrivs Seccomp Seccomp_filters; do
    say "$k" "$(awk -v k="$k:" '$1==k{print $2}' /proc/self/status)"
done
say masked "$(awk '$5 ~ "^/proc/." { for (i = 7; $i != "-"; i++) ; printf "%s(%s) ", $5, $(i+1) }' /proc/self/mountinfo)"
say sysctl "max_user_namespaces=$(cat /proc/sys/user/max_user_namespaces 2>&1) uid_map=$(tr -s ' ' </proc/self/uid_map)"

if $T unshare --user --map-current-user --pid --mount --fork --mount-proc true >"$W/u.log" 2>&1; then
    say unshare OK
else
    say unshare "FAIL rc=$? $(head -n2 "$W/u.log" | tr '\n' '|')"
fi
# the user namespace alone, to tell a seccomp/userns block from the /proc mount check
if $T unshare --user --map-current-user true >"$W/u2.log" 2>&1; then
    say userns OK
else
    say userns "FAIL $(head -n1 "$W/u2.log")"
fi

for c in cap plain; do
    b=$CRIU_CAP; [ $c = plain ] && b=$CRIU_PLAIN
    if $T "$b" check --unprivileged >"$W/c.log" 2>&1; then
        say "check-$c" "$(tail -n1 "$W/c.log")"
    else
        say "check-$c" "FAIL rc=$? $(grep -v kerndat "$W/c.log" | tail -n 3 | tr '\n' '|')"
    fi
done

# the process to dump: session leader, stdio on /dev/null, no pdeathsig.
# Dumped once with the plain binary (which works when the container hands the user
# CAP_CHECKPOINT_RESTORE as an ambient capability), then with the file-capped one.
DUMPED=0
for c in plain cap; do
    b=$CRIU_CAP; [ $c = plain ] && b=$CRIU_PLAIN
    setsid python3 -c 'import time; time.sleep(600)' </dev/null >/dev/null 2>&1 &
    PID=$!
    sleep 0.3
    rm -rf "$W/img"; mkdir -p "$W/img"
    if $T "$b" dump --unprivileged -t "$PID" -D "$W/img" -o dump.log -v4 >"$W/d.out" 2>&1; then
        say "dump-$c" "OK pid=$PID ($(du -sh "$W/img" | cut -f1))"
        DUMPED=1
    else
        say "dump-$c" "FAIL rc=$? $(errof "$W/img/dump.log" 2 "$W/d.out")"
    fi
    kill -9 "$PID" 2>/dev/null; wait "$PID" 2>/dev/null
done

if [ "$DUMPED" = 1 ]; then
    for i in 1 2; do
        mkdir -p "$W/wd$i"
        # criu stays as PID 1 of the new pid namespace (no -d): it reaps the restored tree
        $T unshare --user --map-current-user --keep-caps --pid --mount --fork --mount-proc \
            setpriv --inh-caps=-all,+checkpoint_restore,+setpcap \
                    --ambient-caps=-all,+checkpoint_restore,+setpcap \
            "$CRIU_PLAIN" restore --unprivileged -D "$W/img" -W "$W/wd$i" \
                -o restore.log -v4 >"$W/r$i.out" 2>&1 &
    done
    sleep 1.5
    n=0; pids=""; outer=""
    for p in $(pgrep -f 'time.sleep\(600\)'); do
        ns=$(awk '$1=="NSpid:"{print $2"->"$NF}' /proc/"$p"/status 2>/dev/null)
        pids="$pids $ns"; outer="$outer $p"; n=$((n + 1))
    done
    if [ "$n" = 2 ]; then
        say restore "OK 2 restored (outer->inner pid):$pids"
    else
        say restore "FAIL $n running; $(errof "$W/wd1/restore.log" 2 "$W/r1.out")"
    fi
    # the restored sleepers by PID; criu (PID 1 of each namespace) then exits.
    # Anything left dies with the container's PID namespace.
    [ -n "$outer" ] && kill -KILL $outer 2>/dev/null
    for j in $(jobs -p); do kill -KILL "$j" 2>/dev/null; done
    wait 2>/dev/null
fi
rm -rf "$W"
