# Shared by the proxy benchmarks (scripts/bench-proxy.sh, scripts/count-instructions.sh): the
# same ring, proxy config, NGINX and HAProxy settings, so both measure the same set-up, and the
# process bookkeeping. Sourced, not run; the caller defines log().

# Background processes started by the caller (append their pids); killed on exit.
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

# wait_port PORT [SECONDS]: until something listens on 127.0.0.1:PORT (default 10 s).
wait_port() {
  local port=$1 tries=$(( ${2:-10} * 20 ))
  for _ in $(seq 1 "$tries"); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.05
  done
  log "port $port never opened"; return 1
}

# wait_announced FILE [SECONDS] [NAME]: until FILE, the stdout of a wscluster process, starts
# with its `listening on <addr> [name=<addr>...]` line (wscluster_runtime::announce; default
# 10 s); prints the main address, or the one announced as NAME (e.g. admin).
wait_announced() {
  local file=$1 tries=$(( ${2:-10} * 20 )) name=${3:-} line
  for _ in $(seq 1 "$tries"); do
    line=$(head -n 1 "$file" 2>/dev/null || true)
    case $line in
      "listening on "*)
        if [ -z "$name" ]; then
          line=${line#listening on }
          echo "${line%% *}"
          return 0
        fi
        line=$(echo "$line" | grep -o " $name=[^ ]*" | cut -d= -f2)
        [ -n "$line" ] && echo "$line" && return 0
        log "$file announces no listener named $name"; return 1 ;;
    esac
    sleep 0.05
  done
  log "no 'listening on' line in $file"; return 1
}

# write_bench_configs WORK BACKEND_PORT NGINX_PORT HAPROXY_PORT
# Writes WORK/ring.json, WORK/proxy.yaml, WORK/nginx/nginx.conf and WORK/haproxy.cfg: one echo
# backend at 127.0.0.1:BACKEND_PORT, every proxy hashing ?userId= to it, one worker each.
write_bench_configs() {
local work=$1 backend=$2 nginx_port=$3 haproxy_port=$4
mkdir -p "$work"
cat >"$work/ring.json" <<EOF
{"clusterId":"bench/echo","version":1,"members":[{"id":"echo-0","address":"127.0.0.1:$backend"}]}
EOF
cat >"$work/proxy.yaml" <<EOF
keySources:
  - query: userId
limits:
  maxConnections: 20000
EOF
mkdir -p "$work/nginx"
cat >"$work/nginx/nginx.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 20000; }
http {
  access_log off;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }
  upstream echo {
    hash \$arg_userId consistent;
    server 127.0.0.1:$backend;
  }
  server {
    listen 127.0.0.1:$nginx_port;
    location / {
      proxy_pass http://echo;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
      proxy_read_timeout 3600s;
      proxy_send_timeout 3600s;
    }
  }
}
EOF
cat >"$work/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 9600
defaults
  mode http
  timeout connect 2s
  timeout client 1h
  timeout server 1h
  timeout tunnel 1h
frontend fe
  bind 127.0.0.1:$haproxy_port
  default_backend be
backend be
  balance url_param userId
  hash-type consistent
  server s0 127.0.0.1:$backend id 1
EOF
}
