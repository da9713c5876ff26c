#!/usr/bin/env bash
# A throwaway single-node Ceph cluster (one mon, one memstore OSD, one radosgw) on loopback, for
# the S3 bucket-notification tests (tests/e2e/ceph_rgw.rs). Everything lives in DIR; nothing is
# written elsewhere and no fixed port is used, so several can run side by side.
#
#   scripts/ceph-rgw.sh start DIR RGW_PORT MON_PORT   # S3 on 127.0.0.1:RGW_PORT, user testkey/testsecret,
#                                                     # ready when it returns (~2 s)
#   scripts/ceph-rgw.sh stop DIR                      # kills the daemons by their pid files (also
#                                                     # after a failed start)
#
# Needs: apt-get install --no-install-recommends radosgw ceph-mon ceph-osd uuid-runtime
# (scripts/test.sh installs them). No cephx (auth none), pool size 1, objects in memory: a test
# fixture, never a deployment.
set -euo pipefail
# A step that fails under `set -e` says which one, instead of ending the script silently.
trap 'echo "ceph-rgw.sh: line $LINENO: \`$BASH_COMMAND\` failed (exit $?)" >&2' ERR

usage() { echo "usage: $0 start DIR RGW_PORT MON_PORT | stop DIR" >&2; exit 2; }

stop() {
    local d=$1 pid
    for f in "$d"/run/*.pid; do
        [ -e "$f" ] || continue
        pid=$(cat "$f" 2>/dev/null || true)
        [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    done
    # Give them a moment to exit cleanly, then make sure.
    for _ in $(seq 20); do
        local alive=0
        for f in "$d"/run/*.pid; do
            [ -e "$f" ] || continue
            pid=$(cat "$f" 2>/dev/null || true)
            [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && alive=1
        done
        [ $alive = 0 ] && return 0
        sleep 0.1
    done
    for f in "$d"/run/*.pid; do
        [ -e "$f" ] || continue
        pid=$(cat "$f" 2>/dev/null || true)
        [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
    done
}

start() {
    local d=$1 rgw_port=$2 mon_port=$3
    mkdir -p "$d"/{run,log,mon.a,osd.0}
    d=$(cd "$d" && pwd)
    local fsid; fsid=$(uuidgen)
    # Notification topics may carry the webhook's credentials in their push-endpoint URL; RGW
    # only accepts that from a client on HTTPS. This cluster speaks plain HTTP, so it trusts
    # `X-Forwarded-Proto: https` (what a TLS-terminating proxy in front of RGW would send; the
    # test's S3 client sends it) and, from Ceph 17 on, is told outright.
    cat > "$d/ceph.conf" <<CONF
[global]
fsid = $fsid
mon host = v1:127.0.0.1:$mon_port
public network = 127.0.0.0/8
auth cluster required = none
auth service required = none
auth client required = none
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon max pg per osd = 1000
# Commit map changes at once instead of batching them for a second: radosgw creates its pools one
# after another at first start, each waiting for a commit (9 s of the start without this).
paxos propose interval = 0.01
osd crush chooseleaf type = 0
# The OSD is placed in the CRUSH map below; at start it would otherwise send mon commands that
# Ceph 16 now and then sends with an empty fsid ("wrong fsid"), failing the OSD's start.
osd crush update on start = false
osd class update on start = false
run dir = $d/run
log file = $d/log/\$name.log
admin socket = $d/run/\$name.asok
pid file = $d/run/\$name.pid
keyring = $d/keyring
mon data = $d/mon.\$id
osd data = $d/osd.\$id
osd objectstore = memstore
memstore device bytes = 1073741824
ms bind ipv6 = false
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:$rgw_port
rgw trust forwarded https = true
rgw allow notification secrets in cleartext = true
CONF
    local c=(-c "$d/ceph.conf")
    ceph-authtool --create-keyring "$d/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
    monmaptool --create --add a "v1:127.0.0.1:$mon_port" --fsid "$fsid" "$d/monmap" >/dev/null
    ceph-mon "${c[@]}" --mkfs -i a --monmap "$d/monmap" --keyring "$d/keyring"
    ceph-mon "${c[@]}" -i a
    local uuid id; uuid=$(uuidgen); id=$(ceph "${c[@]}" osd new "$uuid")
    ceph-osd "${c[@]}" -i "$id" --mkfs --osd-uuid "$uuid" 2>/dev/null
    # Creates the host bucket under the default root as well.
    ceph "${c[@]}" osd crush add "osd.$id" 1.0 root=default host=localhost >/dev/null 2>&1
    # A start that fails anyway is retried (a fresh memstore OSD starts in well under a second).
    local tries=0
    until ceph-osd "${c[@]}" -i "$id"; do
        tries=$((tries + 1))
        [ $tries -lt 3 ] || { echo "ceph-osd did not start; see $d/log/osd.$id.log" >&2; exit 1; }
        sleep 0.2
    done
    radosgw "${c[@]}" -n client.rgw.a
    local up=0
    for _ in $(seq 600); do
        if curl -sf -o /dev/null "http://127.0.0.1:$rgw_port/"; then up=1; break; fi
        sleep 0.1
    done
    if [ $up = 0 ]; then
        echo "radosgw did not answer on 127.0.0.1:$rgw_port; see $d/log" >&2
        exit 1
    fi
    radosgw-admin "${c[@]}" user create --uid=test --display-name=test \
        --access-key=testkey --secret-key=testsecret >/dev/null
    echo "rgw ready on 127.0.0.1:$rgw_port"
}

case "${1:-}" in
    start) [ $# = 4 ] || usage; start "$2" "$3" "$4" ;;
    stop) [ $# = 2 ] || usage; stop "$2" ;;
    *) usage ;;
esac
