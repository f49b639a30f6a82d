# The shared DEK cache keeps databases apart: the same alias names a
# different local key in each database, and a value copied from one
# database to another never opens there from the warm cache.  (Before, the
# second database's encryption by alias reused the first database's DEK: its
# values named the other database's key and failed to decrypt after a
# restart.)
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use KmsPgKeyring;

my $node = PostgreSQL::Test::Cluster->new('cache_databases');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'kms_pg'\n" . master_key_conf('a'));
$node->start;

my %key;
for my $db (qw(db1 db2))
{
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, 'CREATE EXTENSION kms_pg');
	$key{$db} = $node->safe_psql($db, q{SELECT kms_create_key('alias/same')});
}
isnt($key{db1}, $key{db2}, 'alias/same names a different key in each database');

sub gen_calls { $node->safe_psql($_[0], 'SELECT generate_calls FROM kms_cache_stats') }

my $g0 = gen_calls('db1');
for my $db (qw(db1 db2))
{
	$node->safe_psql($db, q{
		CREATE TABLE t AS SELECT i, kms_encrypt_text('v' || i, '{"k":"v"}', 'alias/same') AS ct
		FROM generate_series(1, 10) i});
}
is(gen_calls('db1') - $g0, 2, 'one GenerateDataKey per database: no DEK shared between them');
for my $db (qw(db1 db2))
{
	is($node->safe_psql($db, 'SELECT DISTINCT (kms_ciphertext_info(ct)).key_id FROM t'),
		$key{$db}, "$db: its values name its own key");
}

# A value of db1 copied into db2, while db1's DEK is warm in shared memory.
my $hex = $node->safe_psql('db1', q{SELECT encode(ct, 'hex') FROM t WHERE i = 1});
is($node->safe_psql('db1', q{SELECT kms_decrypt_text(ct, '{"k":"v"}') FROM t WHERE i = 1}), 'v1',
	'db1 reads its value (DEK warm)');
my ($rc, $out, $err) = $node->psql('db2', qq{SELECT kms_decrypt_text('\\x$hex'::bytea, '{"k":"v"}')});
isnt($rc, 0, "db2 cannot open db1's value from the warm cache");
like($err, qr/ERROR:  kms_pg local key "$key{db1}" does not exist/, "... it fails as it would cold: db2 has no such key");

# After a restart (cache cold) every value still opens in its database.
$node->restart;
for my $db (qw(db1 db2))
{
	is($node->safe_psql($db, q{SELECT count(*) FROM t WHERE kms_decrypt_text(ct, '{"k":"v"}') = 'v' || i}),
		'10', "$db: all values decrypt after a restart");
}
$node->stop;
done_testing();
