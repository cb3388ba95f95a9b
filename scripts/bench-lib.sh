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

# write_bench_certs DIR: a test CA and one ECDSA P-256 server certificate it signs, for
# 127.0.0.1 and localhost, valid two days, with the openssl CLI: DIR/ca.crt, DIR/server.crt,
# DIR/server.key (PKCS#8) and DIR/haproxy.pem (certificate then key, as `ssl crt` wants it).
# Every TLS target serves this same certificate.
write_bench_certs() {
local dir=$1
mkdir -p "$dir"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/ca.key" 2>/dev/null
openssl req -x509 -new -key "$dir/ca.key" -subj "/CN=wscluster bench CA" -days 2 \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out "$dir/ca.crt" 2>/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/server.key" 2>/dev/null
openssl req -new -key "$dir/server.key" -subj "/CN=localhost" -out "$dir/server.csr" 2>/dev/null
printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=CA:FALSE" \
  "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >"$dir/server.ext"
openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -days 2 \
  -set_serial "0x$(openssl rand -hex 8)" -extfile "$dir/server.ext" -out "$dir/server.crt" 2>/dev/null
cat "$dir/server.crt" "$dir/server.key" >"$dir/haproxy.pem"
}

# write_bench_configs WORK BACKEND_PORT NGINX_PORT HAPROXY_PORT [NGINX_TLS_PORT HAPROXY_TLS_PORT CERTS]
# Writes WORK/ring.json, WORK/proxy.yaml, WORK/nginx/nginx.conf and WORK/haproxy.cfg: one echo
# backend at 127.0.0.1:BACKEND_PORT, every proxy hashing ?userId= to it, one worker each. With
# the TLS ports, NGINX and HAProxy also terminate TLS there with CERTS/ (write_bench_certs):
# TLS 1.2 and 1.3, session tickets on (both servers' default, stated), ALPN http/1.1.
write_bench_configs() {
local work=$1 backend=$2 nginx_port=$3 haproxy_port=$4
local nginx_tls=${5:-} haproxy_tls=${6:-} certs=${7:-}
local nginx_tls_server="" haproxy_tls_frontend=""
if [ -n "$nginx_tls" ]; then
  nginx_tls_server="server {
    listen 127.0.0.1:$nginx_tls ssl;
    ssl_certificate $certs/server.crt;
    ssl_certificate_key $certs/server.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_tickets on;
    include $work/nginx/ws-location.conf;
  }"
  haproxy_tls_frontend="frontend fe_tls
  bind 127.0.0.1:$haproxy_tls ssl crt $certs/haproxy.pem alpn http/1.1 ssl-min-ver TLSv1.2
  default_backend be"
fi
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
    include $work/nginx/ws-location.conf;
  }
  $nginx_tls_server
}
EOF
cat >"$work/nginx/ws-location.conf" <<EOF
location / {
  proxy_pass http://echo;
  proxy_http_version 1.1;
  proxy_set_header Upgrade \$http_upgrade;
  proxy_set_header Connection \$connection_upgrade;
  proxy_read_timeout 3600s;
  proxy_send_timeout 3600s;
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
$haproxy_tls_frontend
EOF
}
