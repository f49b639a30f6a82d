# Format 2 encrypting cache entries outlive the header ring (issue 15/19).
#
# A cache entry used for encryption keeps its v1 envelope header in a ring
# of 128 bytes per slot.  Headers longer than that (AWS: about 300 bytes;
# here a long provider-context key name) make the ring wrap before the
# slots run out; an entry whose header was overwritten cannot seal a v1
# value, so the next v1 value of that tenant gets a new DEK.  A format 2
# entry is also found by its registry reference, and its header is rebuilt
# from the registry row: the tenant keeps its DEK, with no provider call.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use KmsPgTest;
use KmsPgKeyring;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $ctxkey = 'tenant_identifier_' . ('x' x 42);    # 60 bytes: headers of about 170 bytes
my $node = PostgreSQL::Test::Cluster->new('v2_ring');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'kms_pg'
kms_pg.provider = 'local'
kms_pg.cache_entries = 1024
kms_pg.kms_context_keys = '$ctxkey'
} . master_key_conf('a'));
$node->start;
$node->safe_psql('postgres', q{
CREATE EXTENSION kms_pg;
SELECT kms_create_key('alias/t092v1');
SELECT kms_create_key('alias/t092v2');
CREATE TABLE vals (id int, fmt int, tenant int, ct bytea NOT NULL);
});

sub ctx { my ($t) = @_; return "jsonb_build_object('$ctxkey', $t)"; }

sub ins
{
	my ($fmt, $key, $lo, $hi) = @_;
	return "SET kms_pg.format = $fmt; INSERT INTO vals SELECT i, $fmt, i % 1000, "
	  . "kms_encrypt(convert_to('v' || i, 'UTF8'), " . ctx('i % 1000') . ", '$key')"
	  . " FROM generate_series($lo, $hi) i;";
}

sub gen
{
	return $node->safe_psql('postgres', 'SELECT generate_calls + decrypt_calls FROM kms_cache_stats');
}

# Format 1: 1,000 tenants overwrite the ring; the first 100 again need new DEKs.
$node->safe_psql('postgres', ins(1, 'alias/t092v1', 0, 999));
my $c0 = gen();
$node->safe_psql('postgres', ins(1, 'alias/t092v1', 1000, 1099));
my $v1_calls = gen() - $c0;
cmp_ok($v1_calls, '>=', 50, "format 1: tenants whose header the ring overwrote get new DEKs ($v1_calls calls)");

# Format 2: the same, and the tenants keep their DEKs without a provider call.
$node->safe_psql('postgres', 'SELECT kms_cache_flush()');    # room for 1,000 entries
$node->safe_psql('postgres', ins(2, 'alias/t092v2', 0, 999));
my $rows = $node->safe_psql('postgres', 'SELECT count(*) FROM kms_dek_registry');
is($rows, '1000', 'format 2: one registry row per tenant');
$c0 = gen();
$node->safe_psql('postgres', ins(2, 'alias/t092v2', 1000, 1099));
is(gen() - $c0, 0, 'format 2: no provider call for tenants whose header the ring overwrote');
is($node->safe_psql('postgres', 'SELECT count(*) FROM kms_dek_registry'), $rows, 'format 2: no new registry row');
is($node->safe_psql('postgres',
		"SELECT count(*) FROM vals a JOIN vals b ON a.tenant = b.tenant AND a.fmt = 2 AND b.fmt = 2"
		  . " AND a.id < 100 AND b.id >= 1000 WHERE substr(a.ct, 6, 7) = substr(b.ct, 6, 7)"),
	'100', 'format 2: the values before and after share each tenant\'s DEK');

# Everything decrypts from a cold cache in a new session.
$node->safe_psql('postgres', 'SELECT kms_cache_flush()');
is($node->safe_psql('postgres',
		"SELECT count(*) FILTER (WHERE convert_from(kms_decrypt(ct, " . ctx('tenant') . "), 'UTF8') = 'v' || id) || '/' || count(*) FROM vals"),
	'2200/2200', 'every value decrypts cold');

$node->stop;
done_testing();
