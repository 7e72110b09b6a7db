#!/bin/sh
# AMQP over TLS against ONE private RabbitMQ node with a TLS listener.
#   run.sh RABBITMQ_SH TEST_PROGRAM [args...]
# In a temp dir: a test CA and a server certificate it signs (CN and SAN
# localhost only, so 127.0.0.1 fails the name check), a second CA that signed nothing of the
# server's, then a node on free loopback ports with a TCP listener (the
# readiness check logs in there) and a TLS listener. The program reads
#   AIQ_TEST_AMQPS_PORT  the TLS port
#   AIQ_TEST_TLS_CA      the CA that signed the server certificate
#   AIQ_TEST_TLS_WRONG_CA  a CA that did not
# The node is always stopped and the dir removed afterwards.
set -eu
rabbitmq_sh=$1
shift
dir=$(mktemp -d "${TMPDIR:-/tmp}/aiq-tls-test.XXXXXX")
cleanup() {
	"$rabbitmq_sh" stop "$dir/node" >/dev/null 2>&1 || true
	rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pki=$dir/pki
mkdir -p "$pki" "$dir/node"
ssl() { openssl "$@" >>"$pki/openssl.log" 2>&1; }
# The CA, and a second one the server has nothing to do with.
for ca in ca wrong_ca; do
	ssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=aiqueue test $ca" \
		-keyout "$pki/$ca.key" -out "$pki/$ca.pem" \
		-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
done
ssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$pki/server.key" \
	-out "$pki/server.csr"
printf 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$pki/server.ext"
ssl x509 -req -in "$pki/server.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" -CAcreateserial \
	-days 2 -extfile "$pki/server.ext" -out "$pki/server.pem"
chmod 644 "$pki"/*.pem "$pki"/*.key

tls_port=$(/usr/bin/python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()')
"$rabbitmq_sh" start "$dir/node" \
	"listeners.ssl.local = 127.0.0.1:$tls_port" \
	"ssl_options.cacertfile = $pki/ca.pem" \
	"ssl_options.certfile = $pki/server.pem" \
	"ssl_options.keyfile = $pki/server.key" \
	"ssl_options.verify = verify_none" \
	"ssl_options.fail_if_no_peer_cert = false"

# The TLS listener opens with the node; wait until it completes a handshake.
i=0
until openssl s_client -connect "127.0.0.1:$tls_port" -CAfile "$pki/ca.pem" \
	-verify_return_error </dev/null >/dev/null 2>&1; do
	i=$((i + 1))
	[ $i -lt 100 ] || {
		echo "run.sh: the TLS listener on $tls_port never completed a handshake" >&2
		exit 1
	}
	sleep 0.1
done

export AIQ_TEST_AMQPS_PORT="$tls_port"
export AIQ_TEST_TLS_CA="$pki/ca.pem"
export AIQ_TEST_TLS_WRONG_CA="$pki/wrong_ca.pem"
status=0
"$@" || status=$?
exit $status
