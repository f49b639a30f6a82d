# A KMS endpoint that answers with far more than any KMS response: kms_pg
# stops reading at its 1 MB cap and fails the statement with a clear error,
# without buffering the body (the backend's peak memory stays small) and
# without waiting for the rest of it.
#
# The KMS emulator cannot be told to send a huge body, so a small stand-in
# server (plain http on 127.0.0.1, which the URL policy allows for loopback)
# answers every request: /declared sends "Content-Length: 256 MB" and
# streams zeros, /chunked streams an endless chunked body.
use strict;
use warnings;

use File::Basename qw(dirname);
use File::Spec;
use Time::HiRes qw(time usleep);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $python = $ENV{KMS_PYTHON} // '/usr/bin/python3';
my $dir = PostgreSQL::Test::Utils::tempdir('huge');
my $portfile = "$dir/port";

my $server = <<'EOF';
import http.server, os, sys, socketserver

class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(n)
        chunk = b"0" * 65536
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("x-amzn-RequestId", "huge-body")
            if os.environ["HUGE_MODE"] == "declared":
                self.send_header("Content-Length", str(256 * 1024 * 1024))
                self.end_headers()
                for _ in range(256 * 16):
                    self.wfile.write(chunk)
            else:
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                while True:
                    self.wfile.write(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass

class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

s = S(("127.0.0.1", 0), H)
tmp = sys.argv[1] + ".tmp"
open(tmp, "w").write(str(s.server_address[1]))
os.rename(tmp, sys.argv[1])
s.serve_forever()
EOF

sub start_server
{
	my ($mode) = @_;
	unlink $portfile;
	my $pid = fork();
	die "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		$ENV{HUGE_MODE} = $mode;
		exec($python, '-c', $server, $portfile) or die "exec: $!";
	}
	for (1 .. 200)
	{
		last if -s $portfile;
		usleep(50_000);
	}
	die 'stand-in server did not start' unless -s $portfile;
	return ($pid, slurp_file($portfile));
}

my $node = PostgreSQL::Test::Cluster->new('huge_response');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'kms_pg'
kms_pg.region = 'us-east-1'
kms_pg.credential_sources = 'env'
kms_pg.max_retries = 0
});

for my $mode ('declared', 'chunked')
{
	my ($pid, $port) = start_server($mode);
	$node->append_conf('postgresql.conf', "kms_pg.endpoint = 'http://127.0.0.1:$port'");
	{
		local $ENV{AWS_ACCESS_KEY_ID} = 'AKIAHUGEBODYTEST0001';
		local $ENV{AWS_SECRET_ACCESS_KEY} = 'huge-body-test-secret';
		delete local $ENV{AWS_SESSION_TOKEN};
		$node->{_pid} ? $node->restart : $node->start;
	}
	$node->safe_psql('postgres', 'CREATE EXTENSION IF NOT EXISTS kms_pg');

	my $bg = $node->background_psql('postgres', on_error_stop => 0);
	# (BackgroundPsql of older minor releases keeps a trailing newline)
	(my $bpid = $bg->query_safe('SELECT pg_backend_pid()')) =~ s/\s+\z//;
	my $t0 = time;
	my ($out, $err) = ('', '');
	$bg->{stderr} = '';
	$out = $bg->query(
		q{SET kms_pg.provider = aws; SELECT kms_encrypt('x'::bytea, '{}', 'alias/huge')});
	my $elapsed = time - $t0;
	$err = $bg->{stderr};
	like($err, qr/response larger than 1048576 bytes/, "$mode body: clear error naming the 1 MB cap");
	note("$mode body: $err");
	note(sprintf('%s body: failed after %.2f s', $mode, $elapsed));
	ok($elapsed < 10, "$mode body: the statement fails promptly");

	# The backend never held the body: its peak RSS stays far below it.
	my $status = slurp_file("/proc/$bpid/status");
	my ($hwm) = $status =~ /VmHWM:\s+(\d+) kB/;
	note("$mode body: backend peak RSS $hwm kB");
	ok($hwm < 128 * 1024, "$mode body: backend peak RSS stays under 128 MB");

	$bg->{stderr} = '';
	like($bg->query_safe('SELECT 1'), qr/\A1\s*\z/, "$mode body: the session is still usable");
	$bg->quit;
	kill 'TERM', $pid;
	waitpid($pid, 0);
}

$node->stop;
done_testing();
