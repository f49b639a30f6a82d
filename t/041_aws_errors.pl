
# AWS provider errors that pg_regress cannot cover: a wrong secret (the
# emulator verifies SigV4 with botocore) gives InvalidSignatureException
# with the request id in DETAIL and no secret anywhere; plain http is
# refused for non-loopback hosts and allowed for loopback ones; TLS
# verification refuses an untrusted CA, an expired certificate, a wrong
# host name and a self-signed certificate, and the system trust store does
# not trust the test CA.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use KmsPgTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $AK = 'AKIAKMSPGTAPTEST0002';
my $SK = 'tap-right-secret/abcdefghijklmnopqrstuvwxyz01';
my $BAD_SK = 'tap-WRONG-secret/abcdefghijklmnopqrstuvwxyz01';

my $emu = start_emulator(args => [ '--cred', "$AK:$SK", '--seed-alias', 'alias/kms-pg-test' ]);

my $node = kms_node('errors', <<"EOF");
kms_pg.endpoint = '$emu->{url}'
kms_pg.region = 'us-east-1'
kms_pg.ca_file = '$emu->{ca}'
kms_pg.credential_sources = 'env'
log_min_messages = debug1
log_min_error_statement = error
EOF

sub describe_err
{
	my ($ret, $stdout, $stderr) = $node->psql('postgres',
		q{SELECT kms_aws_describe_key('alias/kms-pg-test')},
		extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	return ($ret, $stdout, $stderr);
}

# ---- right secret works ----
start_with_env($node, { AWS_ACCESS_KEY_ID => $AK, AWS_SECRET_ACCESS_KEY => $SK });
$node->safe_psql('postgres', 'CREATE EXTENSION kms_pg');
is( $node->safe_psql('postgres',
		q{SELECT kms_aws_describe_key('alias/kms-pg-test')->'KeyMetadata'->>'KeyState'}),
	'Enabled', 'right secret: DescribeKey works');

# ---- wrong secret ----
start_with_env($node, { AWS_ACCESS_KEY_ID => $AK, AWS_SECRET_ACCESS_KEY => $BAD_SK });
my ($ret, $stdout, $stderr) = describe_err();
like($stderr, qr/ERROR:  28000: KMS rejected the credentials of the server \(InvalidSignatureException\)/,
	'wrong secret: 28000 InvalidSignatureException');
like($stderr,
	qr/DETAIL:  AWS KMS error InvalidSignatureException \(request id [0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\): \S/,
	'wrong secret: type, x-amzn-RequestId and message in DETAIL');
like($stderr, qr/HINT:  Check the AWS credentials/, 'wrong secret: hint');
unlike($stderr, qr/\Q$BAD_SK\E|Signature=|AWS4-HMAC/, 'wrong secret: no secret or signature in the error');
is(emu_counters($emu)->{auth_failures}, 1, 'one request reached the emulator (not retried)');

# unknown access key id
start_with_env($node, { AWS_ACCESS_KEY_ID => 'AKIANOTKNOWNTOKMS001', AWS_SECRET_ACCESS_KEY => $SK });
($ret, $stdout, $stderr) = describe_err();
like($stderr, qr/28000: KMS rejected the credentials of the server \(UnrecognizedClientException\)/,
	'unknown access key id: UnrecognizedClientException');

# ---- plain http ----
$node->append_conf('postgresql.conf', "kms_pg.endpoint = 'http://192.0.2.1:8080'\n");
start_with_env($node, { AWS_ACCESS_KEY_ID => $AK, AWS_SECRET_ACCESS_KEY => $SK });
($ret, $stdout, $stderr) = describe_err();
like($stderr, qr/22023: kms_pg: refusing plain http to non-loopback host "192.0.2.1"/,
	'http to a non-loopback host is refused');
$node->append_conf('postgresql.conf', "kms_pg.endpoint = 'http://kms.us-east-1.amazonaws.com'\n");
$node->reload;
($ret, $stdout, $stderr) = describe_err();
like($stderr, qr/refusing plain http to non-loopback host "kms.us-east-1.amazonaws.com"/,
	'http to a public name is refused');

my $plain = start_emulator(plain => 1, args => [ '--cred', "$AK:$SK", '--seed-alias', 'alias/kms-pg-test' ]);
for my $host ('127.0.0.1', 'localhost')
{
	$node->append_conf('postgresql.conf', "kms_pg.endpoint = 'http://$host:$plain->{port}'\n");
	$node->reload;
	is( $node->safe_psql('postgres',
			q{SELECT kms_aws_describe_key('alias/kms-pg-test')->'KeyMetadata'->>'KeyState'}),
		'Enabled', "plain http to loopback $host is allowed");
}
stop_emulator($plain);

# ---- TLS negative cases ----
for my $case (
	[ 'untrusted', 'certificate signed by an untrusted CA' ],
	[ 'expired', 'expired certificate' ],
	[ 'wronghost', 'certificate for another host name' ],
	[ 'selfsigned', 'self-signed certificate' ])
{
	my ($cert, $what) = @$case;
	my $bad = start_emulator(cert => $cert, args => [ '--cred', "$AK:$SK", '--seed-alias', 'alias/kms-pg-test' ]);
	$node->append_conf('postgresql.conf', "kms_pg.endpoint = 'https://127.0.0.1:$bad->{port}'\n");
	$node->reload;
	($ret, $stdout, $stderr) = describe_err();
	like($stderr, qr/39000: TLS verification of the KMS endpoint failed/, "TLS: $what refused");
	is(emu_counters($bad)->{total}, 0, "TLS: $what: no KMS request was sent");
	stop_emulator($bad);
}

# the good certificate without kms_pg.ca_file: the system store does not know the test CA
$node->append_conf('postgresql.conf', "kms_pg.endpoint = '$emu->{url}'\nkms_pg.ca_file = ''\n");
$node->reload;
($ret, $stdout, $stderr) = describe_err();
like($stderr, qr/TLS verification of the KMS endpoint failed/, 'TLS: test CA not trusted by default');
$node->append_conf('postgresql.conf', "kms_pg.ca_file = '$emu->{ca}'\n");
$node->reload;
is( $node->safe_psql('postgres',
		q{SELECT kms_aws_describe_key('alias/kms-pg-test')->'KeyMetadata'->>'KeyState'}),
	'Enabled', 'TLS: trusted again with kms_pg.ca_file');

# ---- ordinary users cannot redirect KMS traffic ----
$node->safe_psql('postgres', 'CREATE ROLE plain_user LOGIN');
($ret, $stdout, $stderr) = $node->psql('postgres', q{SET kms_pg.endpoint = 'https://evil.example.com'},
	extra_params => [ '-U', 'plain_user' ]);
like($stderr, qr/cannot be changed now|permission denied/, 'kms_pg.endpoint cannot be SET by a user');

# ---- no secret in the server log ----
$node->stop;
my $log = slurp_file($node->logfile);
unlike($log, qr/\Q$SK\E/, 'right secret absent from the log');
unlike($log, qr/\Q$BAD_SK\E/, 'wrong secret absent from the log');
unlike($log, qr/Signature=[0-9a-f]{64}/, 'no signature in the log');

stop_emulator($emu);
done_testing();
