#!/usr/bin/env bash
# A real, throw-away Slurm cluster on this one machine, for the project's tests (tests/slurm, `pytest -m slurm`).
#
#   bash scripts/slurm-cluster.sh start    # install slurm + munge if missing, write the config, start the daemons,
#                                          # wait until every node is idle (a no-op when already up and healthy)
#   bash scripts/slurm-cluster.sh stop     # cancel the jobs, stop the daemons (by their pid files)
#   bash scripts/slurm-cluster.sh status   # sinfo + squeue
#
# Needs root and Debian/Ubuntu (Debian's slurm 22.05 packages). No systemd needed: the daemons are started by hand.
# What it runs: one munged of its own (own key and socket, the system's munge is left alone), slurmctld, and one
# `slurmd -N nodeI` per virtual node. The nodes node1..nodeN all live on 127.0.0.1 with distinct slurmd ports; their
# names are added to /etc/hosts so that MASTER_ADDR=$(scontrol show hostnames ...) resolves. Clients (sbatch, srun,
# squeue, scontrol, sinfo) find the cluster through /etc/slurm/slurm.conf, a link to the generated config.
#
# `start` wipes the cluster's folder (state, spool, logs) unless the cluster is already running: job ids then start
# again at 1, so a test must never reuse an output path named only after a job id across cluster restarts.
#
# Settings (environment):
#   TUNELAUNCH_SLURM_NODES=2            virtual nodes node1..nodeN (each has 1/N of 90% of the machine's memory)
#   TUNELAUNCH_SLURM_CPUS=2             CPUs each node advertises (may overcommit the real cores; cons_tres, 1 CPU per
#                                       task by default, so each node runs up to this many 1-CPU jobs at once; a
#                                       task is bound to its CPUs, a job gets 1/CPUS of its node's memory per CPU
#                                       unless it asks with --mem, and is killed when its processes use more)
#   TUNELAUNCH_SLURM_ROOT=/tmp/tunelaunch-slurm   config, state, spool, logs, pid files, munge key and socket
#   TUNELAUNCH_SLURM_PORT=6817          slurmctld port; node I's slurmd listens on PORT+I
#   TUNELAUNCH_SLURM_PARTITION=debug    the one (default) partition, holding every node
#   TUNELAUNCH_SLURM_CRED_EXPIRE=10     AuthInfo cred_expire; also the delay before a requeued job runs again
#   TUNELAUNCH_SLURM_TIMEOUT=60         seconds to wait for every node to be idle
set -euo pipefail
trap '' PIPE   # a closed stdout (`... | head`) must not kill a start half-way

NODES=${TUNELAUNCH_SLURM_NODES:-2}
CPUS=${TUNELAUNCH_SLURM_CPUS:-2}
ROOT=${TUNELAUNCH_SLURM_ROOT:-/tmp/tunelaunch-slurm}
PORT=${TUNELAUNCH_SLURM_PORT:-6817}
PARTITION=${TUNELAUNCH_SLURM_PARTITION:-debug}
CRED_EXPIRE=${TUNELAUNCH_SLURM_CRED_EXPIRE:-10}
TIMEOUT=${TUNELAUNCH_SLURM_TIMEOUT:-60}

MARKER="$ROOT/.tunelaunch-slurm"          # says the folder is ours to wipe
CONF="$ROOT/etc/slurm.conf"
MUNGE_SOCKET="$ROOT/munge/munge.socket"
MUNGE_PID="$ROOT/run/munged.pid"
CTLD_PID="$ROOT/run/slurmctld.pid"
SYS_CONF=/etc/slurm/slurm.conf
HOSTS_TAG="# tunelaunch-slurm"
export SLURM_CONF="$CONF"   # this script's own client calls talk to this cluster, whatever /etc/slurm points at

log() { echo "[slurm-cluster $(date +%T)] $*" || true; }
die() { echo "slurm-cluster: error: $*" >&2; exit 1; }

check_settings() {
  [[ "$NODES" =~ ^[1-9][0-9]*$ ]] || die "TUNELAUNCH_SLURM_NODES must be a positive integer, not '$NODES'"
  [[ "$CPUS" =~ ^[1-9][0-9]*$ ]] || die "TUNELAUNCH_SLURM_CPUS must be a positive integer, not '$CPUS'"
  [[ "$PORT" =~ ^[1-9][0-9]*$ ]] || die "TUNELAUNCH_SLURM_PORT must be a port number, not '$PORT'"
  [[ "$CRED_EXPIRE" =~ ^[1-9][0-9]*$ ]] || die "TUNELAUNCH_SLURM_CRED_EXPIRE must be a positive integer"
  [[ "$TIMEOUT" =~ ^[1-9][0-9]*$ ]] || die "TUNELAUNCH_SLURM_TIMEOUT must be a positive integer"
  [[ "$ROOT" = /* && "$ROOT" != / && "$ROOT" != *" "* ]] || die "TUNELAUNCH_SLURM_ROOT must be an absolute path without spaces, not '$ROOT'"
}

node_names() { local i; for ((i = 1; i <= NODES; i++)); do echo "node$i"; done; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1" 2>/dev/null)" 2>/dev/null; }

# ---- packages ---------------------------------------------------------------------------------------------------
install_packages() {
  local missing=0 c
  for c in slurmctld slurmd sbatch srun sinfo squeue scontrol scancel munged mungekey; do
    command -v "$c" >/dev/null 2>&1 || missing=1
  done
  [ "$missing" = 0 ] && return 0
  command -v apt-get >/dev/null 2>&1 || die "slurm or munge is missing and there is no apt-get to install them"
  log "installing slurm + munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  # keep the packages' maintainer scripts from starting daemons with the distribution's config
  local added_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; added_policy=1
  fi
  local pkgs=(slurmctld slurmd slurm-client munge) ok=0
  if apt-cache show slurmctld >/dev/null 2>&1 && \
     apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confold "${pkgs[@]}"; then
    ok=1
  else
    log "apt-get update"
    if apt-get update -q && \
       apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confold "${pkgs[@]}"; then
      ok=1
    fi
  fi
  [ "$added_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  [ "$ok" = 1 ] || die "could not install ${pkgs[*]} with apt-get (see its output above)"
  for c in slurmctld slurmd sbatch munged mungekey; do
    command -v "$c" >/dev/null 2>&1 || die "'$c' still missing after installing ${pkgs[*]}"
  done
}

# ---- config -------------------------------------------------------------------------------------------------------
real_memory_mb() {  # each node's share of 90% of the machine's memory: the nodes together never promise more than
  local kb; kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)   # there is (memory is a consumable resource)
  echo $(( kb * 9 / 10 / 1024 / NODES ))
}

write_config() {  # $1 = file
  local mem host n i
  mem=$(real_memory_mb); host=$(hostname -s)
  {
    echo "# generated by scripts/slurm-cluster.sh ($NODES nodes x $CPUS CPUs) -- rewritten on every fresh start"
    echo "ClusterName=tunelaunch"
    echo "SlurmctldHost=localhost"
    echo "SlurmctldPort=$PORT"
    echo "SlurmUser=root"
    echo "SlurmdUser=root"
    echo "AuthType=auth/munge"
    echo "CredType=cred/munge"
    # cred_expire: also how long a requeued job waits before it may run again (default 120 s)
    echo "AuthInfo=cred_expire=$CRED_EXPIRE,socket=$MUNGE_SOCKET"
    echo "StateSaveLocation=$ROOT/state"
    echo "SlurmdSpoolDir=$ROOT/spool/slurmd-%n"
    echo "SlurmctldPidFile=$CTLD_PID"
    echo "SlurmdPidFile=$ROOT/run/slurmd-%n.pid"
    echo "SlurmctldLogFile=$ROOT/log/slurmctld.log"
    echo "SlurmdLogFile=$ROOT/log/slurmd-%n.log"
    echo "SlurmctldDebug=info"
    echo "SlurmdDebug=info"
    # no cgroups (no systemd): plain process tracking. Tasks are bound to their CPUs (sched_setaffinity) as on a
    # real cluster, so a job sees only the CPUs it asked for (1 per task by default); each node's CPU ids are
    # spread over the real cores by its own topology file (write_topology)
    echo "ProctrackType=proctrack/linuxproc"
    echo "TaskPlugin=task/affinity"
    # memory without cgroups: every step's processes are polled (/proc, each second) and a step whose tasks
    # together use more than the job's memory on that node is killed with SIGKILL, "exceeded memory limit" in the
    # job's output. Slurm then reports no OUT_OF_MEMORY (that needs cgroups): the batch step killed = FAILED,
    # ExitCode 0:9; an srun step killed = srun exits 137 and the batch script goes on
    echo "JobAcctGatherType=jobacct_gather/linux"
    echo "JobAcctGatherParams=OverMemoryKill"
    echo "JobAcctGatherFrequency=task=1"
    echo "AccountingStorageType=accounting_storage/none"
    echo "JobCompType=jobcomp/none"
    echo "MpiDefault=none"
    echo "MailProg=/bin/true"
    # nodes advertise what is configured here, not the real hardware (lets 2 virtual nodes share 2 real cores)
    echo "SlurmdParameters=config_overrides"
    # consumable cores and memory: a 1-CPU job takes one CPU of a node and, unless it asks (--mem), that CPU's
    # share of the node's memory, so small jobs (and array tasks) share nodes
    echo "SelectType=select/cons_tres"
    echo "SelectTypeParameters=CR_Core_Memory"
    echo "DefMemPerCPU=$(( mem / CPUS ))"
    echo "SchedulerType=sched/backfill"
    echo "SchedulerParameters=bf_interval=1,sched_interval=2,sched_min_interval=100000"
    echo "JobRequeue=1"
    echo "ReturnToService=2"
    echo "SlurmdTimeout=60"
    echo "InactiveLimit=0"
    echo "KillWait=5"
    echo "MessageTimeout=20"
    # no accounting database (sacct fails): finished jobs stay in `scontrol show job` for 5 minutes
    echo "MinJobAge=300"
    for ((i = 1; i <= NODES; i++)); do
      echo "# node$i: CPU ids 0.. are bound to real CPUs $(cpu_map "$i" | tr ' ' ',') (its topology-node$i.xml)"
      echo "NodeName=node$i NodeHostname=$host NodeAddr=127.0.0.1 Port=$((PORT + i)) CPUs=$CPUS Sockets=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$mem State=UNKNOWN"
    done
    # LLN: a job goes to the least loaded node, so two 1-CPU jobs take one CPU of each node and a 2-node job
    # (1 task per node) still runs beside them
    echo "PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO LLN=YES"
  } > "$1"
}

config_checksum() { sha1sum "$1" | cut -d' ' -f1; }

# ---- CPU topology of each node ------------------------------------------------------------------------------------
# task/affinity binds a task to the machine CPUs behind its node's CPU ids 0..CPUS-1, read from the node's hwloc
# topology. All nodes share this machine's cores, so with the real topology the first 1-CPU job of every node (or
# both ranks of a 2-node job) would land on core 0 while core 1 idles. Each slurmd instead loads a topology of its
# own (HWLOC_XMLFILE): one package of max(CPUS, real cores) cores of one PU each, whose PU k is real CPU
# (k + rotation) mod cores: with 2 cores, node1's CPUs 0,1 are cores 0,1 and node2's are cores 1,0. Slurm binds to
# the PUs' os_index; the cpusets are just 0..N-1 in order (hwloc reorders an XML whose cpusets are not, and more
# CPUs than cores, TUNELAUNCH_SLURM_CPUS overcommitting, need more PUs than there are real ones).
real_cpus() {  # the CPUs this process may run on, one id a line (Cpus_allowed_list, e.g. "0-3,8-11")
  local r
  for r in $(awk '/^Cpus_allowed_list:/ {print $2}' /proc/self/status | tr ',' ' '); do seq "${r%-*}" "${r#*-}"; done
}

hwloc_bitmap() {  # cpu ids -> an hwloc bitmap: 32-bit hex words, most significant first ("0x00000001,0x00000003")
  local -a words=(); local c i top=0 out=""
  for c in "$@"; do i=$((c / 32)); words[i]=$(( ${words[i]:-0} | (1 << (c % 32)) )); ((i > top)) && top=$i; done
  for ((i = top; i >= 0; i--)); do out+=$(printf '0x%08x' "${words[i]:-0}"); ((i > 0)) && out+=","; done
  echo "$out"
}

cpu_map() {  # $1 = node number: the real CPU behind each of the node's PUs, space-separated
  local -a cpus; mapfile -t cpus < <(real_cpus)
  local n=${#cpus[@]} k pus rot map=()
  [ "$n" -gt 0 ] || die "cannot read this process's CPUs (Cpus_allowed_list in /proc/self/status)"
  if [ "$CPUS" -ge "$n" ]; then
    rot=$(( ($1 - 1) % n ))   # every node spans all cores: start each on the next one
  else  # node I's CPUs follow node I-1's, shifted by one more core each time they wrap around the real ones
    rot=$(( (($1 - 1) * CPUS + ($1 - 1) * CPUS / n) % n ))
  fi
  pus=$(( CPUS > n ? CPUS : n ))
  for ((k = 0; k < pus; k++)); do map+=("${cpus[(k + rot) % n]}"); done
  echo "${map[*]}"
}

write_topology() {  # $1 = file, $2 = node number (1..NODES)
  local -a map; read -r -a map <<< "$(cpu_map "$2")"
  local k set all node='nodeset="0x00000001" complete_nodeset="0x00000001"'
  all=$(hwloc_bitmap $(seq 0 $((${#map[@]} - 1))))
  {
    echo '<?xml version="1.0" encoding="UTF-8"?>'
    echo '<!DOCTYPE topology SYSTEM "hwloc2.dtd">'
    echo '<topology version="2.0">'   # (no XML comments: hwloc's own parser rejects them)
    echo "  <object type=\"Machine\" os_index=\"0\" cpuset=\"$all\" complete_cpuset=\"$all\" allowed_cpuset=\"$all\" $node allowed_nodeset=\"0x00000001\" gp_index=\"1\">"
    echo "    <object type=\"Package\" os_index=\"0\" cpuset=\"$all\" complete_cpuset=\"$all\" $node gp_index=\"2\">"
    echo "      <object type=\"NUMANode\" os_index=\"0\" cpuset=\"$all\" complete_cpuset=\"$all\" $node gp_index=\"3\"/>"
    for ((k = 0; k < ${#map[@]}; k++)); do
      set=$(hwloc_bitmap "$k")
      echo "      <object type=\"Core\" os_index=\"$k\" cpuset=\"$set\" complete_cpuset=\"$set\" $node gp_index=\"$((4 + 2 * k))\">"
      echo "        <object type=\"PU\" os_index=\"${map[k]}\" cpuset=\"$set\" complete_cpuset=\"$set\" $node gp_index=\"$((5 + 2 * k))\"/>"
      echo "      </object>"
    done
    echo "    </object>"
    echo "  </object>"
    echo "</topology>"
  } > "$1"
}

add_hosts() {  # node names must resolve (to loopback): torch's rendezvous on MASTER_ADDR=node1
  local n addr missing=""
  for n in $(node_names); do
    addr=$(getent hosts "$n" | awk '{print $1; exit}' || true)
    if [ -z "$addr" ]; then
      missing+=" $n"
    elif [[ "$addr" != 127.* ]]; then
      die "host name '$n' already resolves to $addr, not loopback; the virtual nodes need it (fix /etc/hosts)"
    fi
  done
  if [ -n "$missing" ]; then
    log "adding to /etc/hosts: 127.0.0.1$missing"
    # append in place (no sed -i / mv: /etc/hosts may be a bind mount)
    echo "127.0.0.1$missing $HOSTS_TAG" >> /etc/hosts
  fi
}

link_system_conf() {
  mkdir -p /etc/slurm
  if [ -e "$SYS_CONF" ] && [ ! -L "$SYS_CONF" ] && ! grep -q 'generated by scripts/slurm-cluster.sh' "$SYS_CONF"; then
    log "moving the existing $SYS_CONF aside to $SYS_CONF.before-tunelaunch"
    mv "$SYS_CONF" "$SYS_CONF.before-tunelaunch"
  fi
  ln -sfn "$CONF" "$SYS_CONF"
}

# ---- daemons --------------------------------------------------------------------------------------------------------
stop_pidfiles() {  # pid files: SIGTERM every live one at once, wait up to 10 s, SIGKILL what is left
  local f pid pids=()
  for f in "$@"; do
    [ -s "$f" ] || { rm -f "$f"; continue; }
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
      log "stopping $(basename "$f" .pid) (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
  done
  for _ in $(seq 1 100); do
    local left=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && left=1; done
    [ "$left" = 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then log "pid $pid still alive after 10 s: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
  done
  rm -f "$@"
}

do_stop() {
  [ -d "$ROOT" ] || { log "nothing to stop ($ROOT does not exist)"; return 0; }
  if alive "$CTLD_PID" && [ -e "$CONF" ]; then
    # cancel the jobs first: a job's slurmstepd and its processes would outlive the slurmd that started them
    local jobs
    jobs=$(timeout 10 squeue -h -o %A 2>/dev/null | sort -u | paste -sd' ' || true)
    if [ -n "$jobs" ]; then
      log "cancelling jobs: $jobs"
      # shellcheck disable=SC2086
      timeout 10 scancel $jobs 2>/dev/null || true
      for _ in $(seq 1 60); do
        [ -z "$(timeout 10 squeue -h -t running,completing,configuring,suspended -o %A 2>/dev/null || true)" ] && break
        sleep 0.5
      done
    fi
  fi
  local slurmds=("$ROOT"/run/slurmd-*.pid)
  [ -e "${slurmds[0]}" ] || slurmds=()
  stop_pidfiles "${slurmds[@]}" "$CTLD_PID"
  stop_pidfiles "$MUNGE_PID"   # last: the slurm daemons talk to it while they shut down
  return 0
}

healthy() {  # every daemon alive, config unchanged, every node up (idle/mixed/allocated, responding)
  [ -e "$CONF" ] && alive "$MUNGE_PID" && alive "$CTLD_PID" || return 1
  local n
  for n in $(node_names); do alive "$ROOT/run/slurmd-$n.pid" || return 1; done
  local want; want=$(mktemp); write_config "$want"
  if [ "$(config_checksum "$want")" != "$(cat "$ROOT/run/config.sha1" 2>/dev/null)" ]; then rm -f "$want"; return 1; fi
  rm -f "$want"
  local up
  up=$(timeout 10 sinfo -h -N -o '%N %T' 2>/dev/null | awk '$2 ~ /^(idle|mixed|allocated|completing)$/ {print $1}' | sort -u | wc -l || true)
  [ "${up:-0}" -ge "$NODES" ]
}

show_logs() {
  local f
  for f in "$ROOT"/log/*.log; do
    [ -e "$f" ] || continue
    echo "---- $f (last 25 lines)" >&2
    tail -n 25 "$f" >&2 || true
  done
}

fail_start() {  # message; prints sinfo and the daemons' logs, stops what was started (logs stay in $ROOT/log)
  echo "slurm-cluster: error: $*" >&2
  timeout 10 sinfo -N -l >&2 2>/dev/null || true
  show_logs
  do_stop >&2 || true
  echo "slurm-cluster: error: $* (logs above, in $ROOT/log)" >&2
  exit 1
}

start_daemons() {
  local n
  # munge: our own daemon, key and socket (the socket is named in slurm.conf's AuthInfo)
  install -d -m 0711 "$ROOT/munge"   # clients need to reach the socket; the key itself is 0400
  mungekey --create --keyfile="$ROOT/munge/munge.key" --bits=1024 >/dev/null 2>&1 || \
    dd if=/dev/urandom of="$ROOT/munge/munge.key" bs=128 count=1 status=none
  chmod 0400 "$ROOT/munge/munge.key"
  log "starting munged"
  munged --force --key-file="$ROOT/munge/munge.key" --socket="$MUNGE_SOCKET" --pid-file="$MUNGE_PID" \
    --log-file="$ROOT/log/munged.log" --seed-file="$ROOT/munge/munged.seed" \
    || fail_start "munged did not start"
  for _ in $(seq 1 100); do
    munge --socket="$MUNGE_SOCKET" -n </dev/null 2>/dev/null | unmunge --socket="$MUNGE_SOCKET" >/dev/null 2>&1 && break
    sleep 0.1
  done
  munge --socket="$MUNGE_SOCKET" -n </dev/null 2>/dev/null | unmunge --socket="$MUNGE_SOCKET" >/dev/null 2>&1 \
    || fail_start "munged does not answer on $MUNGE_SOCKET"

  log "starting slurmctld"
  slurmctld -f "$CONF" || fail_start "slurmctld did not start"
  for n in $(node_names); do
    log "starting slurmd -N $n"
    write_topology "$ROOT/etc/topology-$n.xml" "${n#node}"
    # THISSYSTEM: hwloc takes the XML for this machine's topology, not a remote one
    HWLOC_XMLFILE="$ROOT/etc/topology-$n.xml" HWLOC_THISSYSTEM=1 slurmd -f "$CONF" -N "$n" \
      || fail_start "slurmd -N $n did not start"
  done
}

wait_idle() {
  local deadline=$(( $(date +%s) + TIMEOUT )) nidle n
  while :; do
    # exactly "idle" (not "idle*" = not responding, not idle+drain)
    nidle=$(timeout 10 sinfo -h -N -o '%N %T' 2>/dev/null | awk '$2 == "idle" {print $1}' | sort -u | wc -l || true)
    [ "${nidle:-0}" -ge "$NODES" ] && return 0
    alive "$CTLD_PID" || fail_start "slurmctld exited while the nodes came up"
    for n in $(node_names); do alive "$ROOT/run/slurmd-$n.pid" || fail_start "slurmd -N $n exited while the nodes came up"; done
    [ "$(date +%s)" -ge "$deadline" ] && fail_start "the nodes are not all idle after ${TIMEOUT}s (TUNELAUNCH_SLURM_TIMEOUT)"
    sleep 0.25
  done
}

do_start() {
  [ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts the slurm daemons)"
  install_packages
  if healthy; then
    log "already running and healthy ($NODES nodes, $ROOT): nothing to do"
    sinfo -N -o '%N %P %T %c' || true
    return 0
  fi
  if [ -d "$ROOT" ] && [ -n "$(ls -A "$ROOT")" ] && [ ! -e "$MARKER" ]; then
    die "$ROOT exists, is not empty and was not made by this script; set TUNELAUNCH_SLURM_ROOT to another folder"
  fi
  local t0; t0=$(date +%s%N)
  if alive "$CTLD_PID" || alive "$MUNGE_PID"; then log "running but not healthy (a daemon died, a node is down or the settings changed): restarting fresh"; fi
  do_stop >/dev/null
  local p i
  for ((i = 0; i <= NODES; i++)); do
    p=$((PORT + i))
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      die "port $p (slurm$([ "$i" = 0 ] && echo ctld || echo "d of node$i")) is already in use on 127.0.0.1: another cluster" \
          "(another TUNELAUNCH_SLURM_ROOT?) or program holds it; stop it or set TUNELAUNCH_SLURM_PORT"
    fi
  done
  rm -rf "$ROOT"
  mkdir -p "$ROOT"/{etc,state,spool,log,run}
  touch "$MARKER"
  local n
  for n in $(node_names); do mkdir -p "$ROOT/spool/slurmd-$n"; done
  write_config "$CONF"
  chmod 644 "$CONF"
  config_checksum "$CONF" > "$ROOT/run/config.sha1"
  link_system_conf
  add_hosts
  start_daemons
  wait_idle
  log "cluster up: $NODES node(s) x $CPUS CPUs idle in $(( ($(date +%s%N) - t0) / 1000000 )) ms (job ids start at 1)"
  sinfo -N -o '%N %P %T %c' || true
}

do_status() {
  if ! alive "$CTLD_PID"; then echo "slurm-cluster: not running (no live slurmctld in $ROOT)"; return 3; fi
  local rc=0
  timeout 10 sinfo -N -o '%N %P %T %c %m' || rc=$?
  timeout 10 squeue || true
  [ "$rc" = 0 ] || { echo "slurm-cluster: slurmctld runs but sinfo failed" >&2; return 1; }
  healthy || { echo "slurm-cluster: not healthy (a daemon is down or a node is not up)" >&2; return 1; }
}

check_settings
case "${1:-}" in
  start) do_start ;;
  stop) do_stop; log "stopped" ;;
  status) do_status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
