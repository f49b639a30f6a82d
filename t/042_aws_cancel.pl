
# Cancellation during KMS calls: statement_timeout and pg_cancel_backend
# while the emulator stalls a request, and while the client sleeps in its
# retry backoff, return promptly with SQLSTATE 57014; pg_terminate_backend
# ends the session just as fast.  The backend stays usable after a cancel.
#
# The time bounds prove that the call was interrupted (the stall is 20 s,
# the request timeout 60 s): each allows $SLACK seconds beyond the timeout
# or the cancel, for psql start-up on a loaded machine.  They are not a
# latency target; the measured times are in each test's name.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use KmsPgTest;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $AK = 'AKIAKMSPGTAPTEST0003';
my $SK = 'tap-cancel-secret/abcdefghijklmnopqrstuvwxyz0';

my $emu = start_emulator(args => [ '--cred', "$AK:$SK", '--seed-alias', 'alias/kms-pg-test' ]);
my $node = kms_node('cancel', <<"EOF");
kms_pg.endpoint = '$emu->{url}'
kms_pg.region = 'us-east-1'
kms_pg.ca_file = '$emu->{ca}'
kms_pg.credential_sources = 'env'
kms_pg.request_timeout = '60s'
EOF
start_with_env($node, { AWS_ACCESS_KEY_ID => $AK, AWS_SECRET_ACCESS_KEY => $SK });
$node->safe_psql('postgres', 'CREATE EXTENSION kms_pg');
# warm up: credentials resolved, connection open
$node->safe_psql('postgres', q{SELECT kms_aws_describe_key('alias/kms-pg-test')});

my $stall = q{SELECT kms_aws_describe_key('alias/kms-pg-test')};
my $SLACK = 2.5;

# ---- statement_timeout during a stalled call ----
emu_control($emu, 'POST', '/__emulator/faults', '{"stall_ms": 20000}');
my $t0 = time();
my ($ret, $stdout, $stderr) = $node->psql('postgres',
	"SET statement_timeout = '1s'; $stall",
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
my $elapsed = time() - $t0;
like($stderr, qr/ERROR:  57014: canceling statement due to statement timeout/,
	'statement_timeout during a stall: 57014');
cmp_ok($elapsed, '<', 1.0 + $SLACK, sprintf('statement_timeout honoured (%.3f s)', $elapsed));
cmp_ok($elapsed, '>=', 0.95, 'and not before the timeout');

# ---- statement_timeout shorter than kms_pg.request_timeout with a transaction open ----
$t0 = time();
($ret, $stdout, $stderr) = $node->psql('postgres',
	"BEGIN; SET LOCAL statement_timeout = '300ms'; $stall; COMMIT;",
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
$elapsed = time() - $t0;
like($stderr, qr/57014/, 'statement_timeout inside a transaction: 57014');
cmp_ok($elapsed, '<', 0.3 + $SLACK, sprintf('a 300 ms timeout honoured (%.3f s)', $elapsed));

# Start a psql session that runs $sql in the background; returns (harness, \stderr).
sub start_bg
{
	my ($sql) = @_;
	my ($in, $out, $err) = ('', '', '');
	my $h = IPC::Run::start(
		[ 'psql', '-XAtq', '-v', 'VERBOSITY=verbose', '-d', $node->connstr('postgres'), '-c', $sql ],
		'<', \$in, '>', \$out, '2>', \$err);
	return ($h, \$err);
}

# Wait until the session with application_name psql runs a kms call.
sub wait_active
{
	my ($pattern) = @_;
	my $pid;
	for (1 .. 200)
	{
		$pid = $node->safe_psql('postgres',
			"SELECT pid FROM pg_stat_activity WHERE state = 'active' AND query LIKE '$pattern' AND pid <> pg_backend_pid()");
		last if $pid ne '';
		usleep(25_000);
	}
	return $pid;
}

# Pump until the harness exits; returns seconds waited.
sub wait_done
{
	my ($h) = @_;
	my $start = time();
	while ($h->pumpable && time() - $start < 30)
	{
		$h->pump_nb;
		usleep(5_000);
	}
	$h->finish;
	return time() - $start;
}

# ---- pg_cancel_backend during a stalled call ----
my ($h, $err) = start_bg($stall);
my $pid = wait_active('%kms_aws_describe_key%');
ok($pid, 'stalled call is running');
usleep(500_000);    # well inside the stall
$t0 = time();
$node->safe_psql('postgres', "SELECT pg_cancel_backend($pid)");
wait_done($h);
like($$err, qr/ERROR:  57014: canceling statement due to user request/, 'pg_cancel_backend during a stall: 57014');
cmp_ok(time() - $t0, '<', $SLACK, sprintf('cancel honoured (%.3f s)', time() - $t0));

# ---- pg_cancel_backend during retry backoff ----
emu_control($emu, 'POST', '/__emulator/faults/reset');
emu_control($emu, 'POST', '/__emulator/faults', '{"throttle_rate": 1.0}');
($h, $err) = start_bg("SET kms_pg.max_retries = 10; $stall");
$pid = wait_active('%kms_aws_describe_key%');
usleep(1_200_000);    # a few attempts and backoff sleeps in
$t0 = time();
$node->safe_psql('postgres', "SELECT pg_cancel_backend($pid)");
wait_done($h);
$elapsed = time() - $t0;
like($$err, qr/57014: canceling statement due to user request/, 'cancel during backoff: 57014');
cmp_ok($elapsed, '<', $SLACK, sprintf('cancel during backoff honoured (%.3f s)', $elapsed));

# ---- statement_timeout during retry backoff ----
$t0 = time();
($ret, $stdout, $stderr) = $node->psql('postgres',
	"SET kms_pg.max_retries = 10; SET statement_timeout = '700ms'; $stall",
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
$elapsed = time() - $t0;
like($stderr, qr/57014: canceling statement due to statement timeout/, 'statement_timeout during backoff: 57014');
cmp_ok($elapsed, '<', 0.7 + $SLACK, sprintf('statement_timeout during backoff honoured (%.3f s)', $elapsed));
emu_control($emu, 'POST', '/__emulator/faults/reset');

# ---- pg_terminate_backend during a stalled call ----
emu_control($emu, 'POST', '/__emulator/faults', '{"stall_ms": 20000}');
($h, $err) = start_bg($stall);
$pid = wait_active('%kms_aws_describe_key%');
usleep(300_000);
$t0 = time();
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
wait_done($h);
$elapsed = time() - $t0;
like($$err, qr/57P01: terminating connection due to administrator command/, 'terminate during a stall: 57P01');
cmp_ok($elapsed, '<', $SLACK, sprintf('terminate honoured (%.3f s)', $elapsed));
emu_control($emu, 'POST', '/__emulator/faults/reset');

# ---- the same session keeps working after a cancelled call ----
emu_control($emu, 'POST', '/__emulator/faults', '{"stall_ms": 5000, "stall_count": 1}');
my $out = $node->safe_psql('postgres', qq{
	SET statement_timeout = '500ms';
	DO \$\$ BEGIN PERFORM kms_aws_describe_key('alias/kms-pg-test');
	EXCEPTION WHEN query_canceled THEN RAISE NOTICE 'cancelled'; END \$\$;
	RESET statement_timeout;
	SELECT kms_aws_describe_key('alias/kms-pg-test')->'KeyMetadata'->>'KeyState';
});
is($out, 'Enabled', 'session usable after a cancelled KMS call');

# the server is healthy and nothing crashed
$node->stop;
unlike(slurp_file($node->logfile), qr/server process .* was terminated by signal|PANIC/, 'no crash');

stop_emulator($emu);
done_testing();
