#!/bin/sh
# What one token-file check costs through the real lxc-attach (C): `lxc-attach -n NAME --clear-env -- test -s
# /etc/pveguard/pve-token` in a running container (a private lxcpath, no network; removed on exit), against a
# bare process start, and 100 of them 8 at a time as has_files runs them. Root, LXC and the test template cache
# (tests/infra/rootfs.py CACHE) needed; run under `flock /tmp/pveguard-slow.lock` (docs/benchmarks.md, "RBAC on").
set -u
P=${LXC_ATTACH_BENCH_DIR:-/tmp/pveguard-attach-bench}; N=pveguard-attach-bench
TPL=${PVEGUARD_TEST_CACHE:-/var/cache/pveguard-tests}/lxc-templates/debian-12-standard_12-pveguard1_amd64.tar.zst
cleanup() { lxc-stop -P $P -n $N -k >/dev/null 2>&1; rm -rf $P; }
trap cleanup EXIT INT TERM
mkdir -p $P/$N/rootfs
zstd -dc "$TPL" | tar -x -C $P/$N/rootfs
mkdir -p $P/$N/rootfs/etc/pveguard && echo x > $P/$N/rootfs/etc/pveguard/pve-token
AA=unconfined; [ "$(cat /sys/module/apparmor/parameters/enabled 2>/dev/null)" = Y ] && AA=generated
cat > $P/$N/config <<CFG
lxc.include = /usr/share/lxc/config/debian.common.conf
lxc.arch = amd64
lxc.uts.name = $N
lxc.rootfs.path = dir:$P/$N/rootfs
lxc.net.0.type = empty
lxc.apparmor.profile = $AA
CFG
lxc-start -P $P -n $N || { echo "start failed"; lxc-start -P $P -n $N -F -l DEBUG -o /dev/stdout | tail -20; exit 1; }
lxc-wait -P $P -n $N -s RUNNING -t 20
sleep 2
for f in /etc/pveguard/pve-token /etc/pveguard/none; do
  lxc-attach -P $P -n $N --clear-env -- test -s $f; echo "$f rc=$?"
done
python3 - <<PY
import subprocess, time, statistics
def t(argv, n=100):
    xs=[]
    for _ in range(n):
        a=time.perf_counter(); subprocess.run(argv, check=False); xs.append(time.perf_counter()-a)
    return statistics.median(xs)*1000, min(xs)*1000
print("lxc-attach test -s: median %.1f ms, best %.1f ms" % t(["lxc-attach","-P","$P","-n","$N","--clear-env","--","test","-s","/etc/pveguard/pve-token"]))
print("sh -c true (process floor): median %.1f ms, best %.1f ms" % t(["sh","-c","true"]))
a=time.perf_counter()
subprocess.run("printf '%s\\\\n' \$(seq 100) | xargs -n 1 -P 8 sh -c 'lxc-attach -P $P -n $N --clear-env -- test -s /etc/pveguard/pve-token' x", shell=True)
print("100 checks 8 at a time: %.2f s" % (time.perf_counter()-a))
PY
