# Concurrent changes to the local keyring catalog: 8 sessions create keys
# at the same time while others rotate, encrypt and decrypt.  Every key
# and every rotation must be present afterwards, versions without gaps.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use KmsPgKeyring;

my $node = PostgreSQL::Test::Cluster->new('keyring_concurrency');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'kms_pg'\n" . master_key_conf('a'));
$node->append_conf('postgresql.conf', "max_connections = 40");
$node->start;
$node->safe_psql(
	'postgres', q{
	CREATE EXTENSION kms_pg;
	CREATE SEQUENCE key_seq;
	SELECT kms_create_key('alias/t011_base');});

my $clients = 8;
my $per_client = 10;
my $total = $clients * $per_client;

# 8 clients x 10 transactions, each creating one key with a unique alias.
$node->pgbench(
	"--no-vacuum --client=$clients --jobs=$clients --transactions=$per_client",
	0,
	[qr{processed: $total/$total}],
	[qr{^$}],
	'8 sessions create keys concurrently',
	{
		't011_create' => q{
SELECT kms_create_key('alias/t011_c' || :client_id || '_' || nextval('key_seq'), 'concurrent');
}
	});

is( $node->safe_psql(
		'postgres',
		q{SELECT count(*), count(DISTINCT key_id), count(DISTINCT alias)
		  FROM kms_keys WHERE description = 'concurrent'}),
	"$total|$total|$total",
	"all $total keys are present, with distinct ids and aliases");
is( $node->safe_psql(
		'postgres',
		q{SELECT count(*) FROM kms_keys k
		  JOIN generate_series(1, (SELECT last_value FROM key_seq)) s
		    ON k.alias LIKE 'alias/t011\_c%\_' || s}),
	"$total",
	'every alias handed out by the sequence names a key');

# Creating keys while other sessions encrypt and decrypt with a fresh
# keyring read each time (the cache is flushed by rotate/disable calls).
$node->pgbench(
	"--no-vacuum --client=$clients --jobs=$clients --transactions=10",
	0,
	[qr{processed: 80/80}],
	[qr{^$}],
	'key creation, rotation and use at the same time',
	{
		't011_mixed_create@1' => q{
SELECT kms_create_key('alias/t011_m' || :client_id || '_' || nextval('key_seq'), 'mixed');
},
		't011_mixed_rotate@1' => q{
SELECT kms_rotate_key('alias/t011_base');
},
		't011_mixed_use@2' => q{
SELECT kms_decrypt(kms_encrypt('v'::bytea, '{"c": 1}', 'alias/t011_base'), '{"c": 1}') = 'v'::bytea;
}
	});

# The file parses (with kms_pg's own parser, via a fresh backend) and
# with a generic JSON parser, and holds every key.
my $created = $node->safe_psql('postgres',
	q{SELECT count(*) FROM kms_keys WHERE description IN ('concurrent', 'mixed')});
my $mixed_expected = $node->safe_psql('postgres',
	q{SELECT last_value - } . $total . q{ FROM key_seq});
is($created, $total + $mixed_expected, 'every mixed-run key is present as well');
my $versions = $node->safe_psql('postgres',
	q{SELECT current_version = versions FROM kms_keys WHERE alias = 'alias/t011_base'});
is($versions, 't', 'rotations of one key were all recorded, in order');

is( $node->safe_psql('postgres',
		q{SELECT count(*) FROM kms_local_key k
		  WHERE (SELECT count(*) FROM kms_local_key_version v WHERE v.key_id = k.key_id)
		        = (SELECT max(version) FROM kms_local_key_version v WHERE v.key_id = k.key_id)}),
	$created + 1, 'the catalog holds every key with gapless versions');
is($node->safe_psql('postgres', q{SELECT count(*) FROM kms_local_key_version WHERE length(material) <> 60}),
	'0', 'every version is stored wrapped (60 bytes)');

# Everything still works after a restart.
$node->restart;
is( $node->safe_psql(
		'postgres',
		q{SELECT count(*) FROM kms_keys WHERE description IN ('concurrent', 'mixed')}),
	$created,
	'all keys present after a restart');

$node->stop;
done_testing();
