
# kms_pg resolves the shared AWS config/credentials files and the AWS_*
# environment as botocore does: test/clients/aws_config_table.py runs each
# configuration of its table through botocore and through kms_aws_config()
# on this server, and compares the credential source, region and STS/KMS
# endpoints (or that both reject the configuration).

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use KmsPgTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

# botocore asks this plain-http emulator for instance-metadata and container
# credentials (credential_source Ec2InstanceMetadata / EcsContainer).
my $emu = start_emulator(plain => 1);

my $node = kms_node('awsconfig', "log_min_messages = debug5\n");
start_with_env($node, {});
$node->safe_psql('postgres', 'CREATE EXTENSION kms_pg');

my $work = PostgreSQL::Test::Utils::tempdir('table');
my $python = $ENV{KMS_PYTHON} // '/usr/bin/python3';
my ($stdout, $stderr);
{
	local $ENV{PGHOST} = $node->host;
	local $ENV{PGPORT} = $node->port;
	IPC::Run::run([ $python, kms_root() . '/test/clients/aws_config_table.py', $work, $emu->{url} ],
		'>', \$stdout, '2>', \$stderr);
}
my $count = 0;
for my $line (split /\n/, $stdout)
{
	if ($line =~ /^(not ok|ok) \d+ - (.*)$/)
	{
		ok($1 eq 'ok', "same as botocore: $2");
		$count++;
	}
	elsif ($line =~ /^#/)
	{
		diag($line);
	}
}
diag($stderr) if $stderr;
cmp_ok($count, '>=', 25, "at least 25 configurations compared ($count)");

# the resolution function is superuser-only with an environment argument,
# and never returns a secret
$node->safe_psql('postgres', 'CREATE ROLE mon LOGIN; GRANT EXECUTE ON FUNCTION kms_aws_config(text[]) TO mon');
my ($ret, $out, $err) = $node->psql('postgres', q{SELECT * FROM kms_aws_config(ARRAY['HOME=/tmp'])},
	extra_params => [ '-U', 'mon' ]);
like($err, qr/only a superuser may resolve the AWS configuration for another environment/,
	'an environment argument needs superuser');
($ret, $out, $err) = $node->psql('postgres', q{SELECT * FROM kms_aws_config()}, extra_params => [ '-U', 'mon' ]);
is($ret, 0, 'the server configuration itself can be resolved by a granted role');

$node->stop;
my $log = slurp_file($node->logfile);
# (the environment argument itself is SQL text, logged as such at debug5;
# the secrets in the files and of the process must not be)
unlike($log, qr/s3cr3t\/kms-pg-table|proc-secret/, 'no secret of the files in the debug5 log');

stop_emulator($emu);
done_testing();
