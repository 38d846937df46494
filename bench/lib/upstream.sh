# Shared by the bench scripts (sourced, not run): a local HTTPS upstream.
#
# start_upstream DIR PORT: makes a throwaway CA and a leaf for bench.test,
# bench2.test and 127.0.0.1 in DIR (DIR/up-ca.pem is the CA to trust),
# starts nginx on 127.0.0.1:PORT (HTTP/1.1 only) and 127.0.0.1:PORT+1
# (offering HTTP/2 too, as most API servers do) answering "ok" to
# everything, appends its pid to PIDS and waits until it listens. Needs openssl and nginx (apt-get install
# nginx-light openssl).

wait_port() { for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

start_upstream() {
    local dir=$1 port=$2
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj "/CN=bench upstream CA" -keyout "$dir/up-ca.key" -out "$dir/up-ca.pem" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -subj "/CN=bench.test" -keyout "$dir/up.key" -out "$dir/up.csr" 2>/dev/null
    printf 'subjectAltName=DNS:bench.test,DNS:bench2.test,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > "$dir/ext"
    openssl x509 -req -in "$dir/up.csr" -CA "$dir/up-ca.pem" -CAkey "$dir/up-ca.key" -CAcreateserial \
        -days 2 -extfile "$dir/ext" -out "$dir/up.pem" 2>/dev/null
    mkdir -p "$dir/nginx"
    cat > "$dir/nginx.conf" <<CONF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/nginx-error.log;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/nginx;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$port ssl;
        listen 127.0.0.1:$((port + 1)) ssl http2;
        ssl_certificate $dir/up.pem;
        ssl_certificate_key $dir/up.key;
        location / { return 200 "ok\n"; }
    }
}
CONF
    nginx -c "$dir/nginx.conf" -g 'daemon off;' &
    PIDS+=($!)
    wait_port "$port"
}
