
# Multi-Region keys: a value wrapped under an mrk- key in us-east-1 still
# decrypts when us-east-1 is down, through the replica regions listed in
# kms_pg.mrk_replica_regions (an unreachable one is skipped), with the key
# ARN rewritten to the replica's region.  Single-Region keys do not fall
# back.  Two emulator instances share the multi-Region key material.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use KmsPgTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $AK = 'AKIAKMSPGTAPTEST0004';
my $SK = 'tap-mrk-secret/abcdefghijklmnopqrstuvwxyz0123';
my $MRK = 'mrk-0123456789abcdef0123456789abcdef';
my $SEED = '5eed' x 16;
my @common = ('--cred', "$AK:$SK", '--seed-mrk', "$MRK=alias/kms-pg-mrk", '--mrk-seed', $SEED,
	'--mrk-primary-region', 'us-east-1');

my $east = start_emulator(region => 'us-east-1',
	args => [ @common, '--seed-alias', 'alias/kms-pg-test' ]);
my $west = start_emulator(region => 'us-west-2', args => [@common]);
my $dead = PostgreSQL::Test::Cluster::get_free_port();
my ($ret, $stdout, $stderr);

my $node = kms_node('mrk', <<"EOF");
kms_pg.endpoint = '$east->{url}'
kms_pg.region = 'us-east-1'
kms_pg.ca_file = '$east->{ca}'
kms_pg.credential_sources = 'env'
kms_pg.max_retries = 2
kms_pg.mrk_replica_regions = 'eu-west-1=https://127.0.0.1:$dead, us-west-2=$west->{url}'
EOF
start_with_env($node, { AWS_ACCESS_KEY_ID => $AK, AWS_SECRET_ACCESS_KEY => $SK });
$node->safe_psql('postgres', 'CREATE EXTENSION kms_pg');

$node->safe_psql('postgres', q{
	SET kms_pg.provider = 'aws';
	CREATE TABLE v AS
	  SELECT kms_encrypt_text('multi-region secret', '{"c": 1}', 'alias/kms-pg-mrk') AS mrk,
	         kms_encrypt_text('single-region secret', '{"c": 1}', 'alias/kms-pg-test') AS single;
	SET kms_pg.kms_context_keys = 'c';
	ALTER TABLE v ADD COLUMN mrk_ctx bytea;
	UPDATE v SET mrk_ctx = kms_encrypt_text('kms-bound', '{"c": 1}', 'alias/kms-pg-mrk');
});
is( $node->safe_psql('postgres', 'SELECT (kms_ciphertext_info(mrk)).key_id FROM v'),
	"arn:aws:kms:us-east-1:111122223333:key/$MRK",
	'the ciphertext records the us-east-1 ARN of the multi-Region key');
is( $node->safe_psql('postgres',
		q{SELECT kms_cache_flush() >= 0; SELECT kms_decrypt_text(mrk, '{"c": 1}') FROM v}),
	"t\nmulti-region secret", 'decrypts in its own region');
is(emu_counters($west)->{Decrypt}, 0, 'replica not used while the primary works');

# us-east-1 goes away
stop_emulator($east);

is( $node->safe_psql('postgres',
		q{SELECT kms_cache_flush() >= 0; SELECT kms_decrypt_text(mrk, '{"c": 1}') FROM v}),
	"t\nmulti-region secret", 'decrypts through the us-west-2 replica');
is(emu_counters($west)->{Decrypt}, 1, 'one Decrypt in us-west-2');
my $req = emu_control($west, 'GET', '/__emulator/requests');
is($req->[-1]{status}, 200, 'the replica accepted the request signed for us-west-2');

is( $node->safe_psql('postgres', q{
		SELECT kms_cache_flush() >= 0;
		SELECT kms_decrypt_text(mrk, '{"c": 1}') FROM v;
		SELECT mrk_fallbacks FROM kms_aws_backend_stats()}),
	"t\nmulti-region secret\n2", 'each fallback region tried is counted (dead eu-west-1, then us-west-2)');

# the replica enforces the encryption context like the primary
($ret, $stdout, $stderr) = $node->psql('postgres',
	q{SELECT kms_cache_flush(); SELECT kms_decrypt_text(mrk_ctx, '{"c": 1}') FROM v});
is($stdout, "1\nkms-bound", 'provider-context value decrypts via the replica')
  or diag($stderr);
($ret, $stdout, $stderr) = $node->psql('postgres',
	q{SELECT kms_cache_flush(); SELECT kms_decrypt_text(mrk_ctx, '{"c": 2}') FROM v});
like($stderr, qr/KMS could not decrypt the data key: wrong encryption context/,
	'wrong context refused by the replica');

# a single-Region key does not fall back
($ret, $stdout, $stderr) = $node->psql('postgres',
	q{SELECT kms_cache_flush(); SELECT kms_decrypt_text(single, '{"c": 1}') FROM v},
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($stderr, qr/39000: could not reach KMS for Decrypt after 3 attempts/,
	'single-Region key: transport error after 3 attempts, no fallback');

$node->stop;
like(slurp_file($node->logfile),
	qr/KMS Decrypt in region us-east-1 failed, trying multi-Region replica in us-west-2/,
	'fallback is logged');

stop_emulator($west);
done_testing();
