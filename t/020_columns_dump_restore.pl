# Protected columns through pg_dump and restore: a custom-format dump
# restored with pg_restore into a fresh database of another cluster that
# has the same master key (the keys themselves travel in the dump: the
# keyring catalog is extension configuration data), and a plain-format
# dump restored with psql
# into a fresh database of the same cluster.  Every value decrypts to the
# same plaintext, the stored ciphertexts are byte for byte the ones dumped
# (nothing encrypted twice), the catalog rows, trigger, view and blind
# index come back, and the restored tables keep working.  The source table
# had a dropped column, so attribute numbers differ after the restore.
# Restored into a cluster with another master key, nothing decrypts and
# the error says why (28P01).
use strict;
use warnings;

use File::Copy;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use KmsPgKeyring;

my $src = PostgreSQL::Test::Cluster->new('columns_src');
$src->init;
$src->append_conf('postgresql.conf', "shared_preload_libraries = 'kms_pg'\n" . master_key_conf('a'));
$src->start;
$src->safe_psql('postgres', 'CREATE DATABASE app');
$src->safe_psql('app', q{
CREATE EXTENSION kms_pg;
SELECT kms_create_key('alias/col-test');
ALTER DATABASE app SET kms_pg.key_id = 'alias/col-test';
});

$src->safe_psql('app', q{
CREATE TABLE patient (
    id      int PRIMARY KEY,
    junk    int,
    tenant  text NOT NULL,
    ssn     text,
    born    date,
    photo   bytea,
    note    text
);
ALTER TABLE patient DROP COLUMN junk;
INSERT INTO patient
SELECT g, 'tenant' || (g % 4),
       CASE WHEN g % 17 = 0 THEN NULL ELSE format('%s-%s', 100 + g % 900, g) END,
       date '1950-01-01' + g * 7,
       CASE WHEN g % 5 = 0 THEN NULL ELSE sha256(int4send(g)) END,
       'note ' || g
FROM generate_series(1, 500) g;
CALL kms_protect_column('patient', 'ssn', '{id,tenant}', blind_index => true, batch_size => 100,
                        view_name => 'patient_clear');
CALL kms_protect_column('patient', 'born', '{id}');
CALL kms_protect_column('patient', 'photo', '{tenant,id}');
});

# What must survive: plaintexts (through the view), ciphertext bytes,
# blind indexes, and the catalog.
my $plain_q = q{SELECT md5(string_agg(format('%s|%s|%s|%s|%s|%s', id, tenant, ssn, born,
                                            encode(photo, 'hex'), note), ',' ORDER BY id))
                FROM patient_clear};
my $cipher_q = q{SELECT md5(string_agg(format('%s|%s|%s|%s|%s', id, encode(ssn, 'hex'),
                                             encode(born, 'hex'), encode(photo, 'hex'),
                                             encode(ssn_bidx, 'hex')), ',' ORDER BY id))
                 FROM patient};
my $catalog_q = q{SELECT string_agg(format('%s %s %s %s %s %s %s', column_id, table_name, column_name,
                                           original_type, context_columns, view_name,
                                           blind_index_column), E'\n' ORDER BY column_name)
                  FROM kms_protected_columns_info};
my $plain = $src->safe_psql('app', $plain_q);
my $cipher = $src->safe_psql('app', $cipher_q);
my $catalog = $src->safe_psql('app', $catalog_q);
is($src->safe_psql('app', q{SELECT count(*) FROM patient
                            WHERE (ssn IS NOT NULL AND NOT kms_is_ciphertext(ssn))
                               OR NOT kms_is_ciphertext(born)
                               OR (photo IS NOT NULL AND NOT kms_is_ciphertext(photo))}),
   '0', 'source: every value is a ciphertext');
like($catalog, qr/ssn_bidx/, 'source: catalog lists the blind index');

# Checks for a restored database.
sub check_restored
{
	my ($node, $db, $label) = @_;
	is($node->safe_psql($db, $catalog_q), $catalog, "$label: catalog rows restored");
	is($node->safe_psql($db, $cipher_q), $cipher,
		"$label: ciphertexts and blind indexes restored byte for byte (nothing encrypted twice)");
	is($node->safe_psql($db, $plain_q), $plain, "$label: every value decrypts to the same plaintext");
	is($node->safe_psql($db, q{SELECT count(*) FROM pg_trigger
	                           WHERE tgrelid = 'patient'::regclass AND tgname LIKE 'kms_protect_%'}),
		'3', "$label: the three generated triggers are there");
	is($node->safe_psql($db, q{SET enable_seqscan = off; SET enable_bitmapscan = off;
	      EXPLAIN (COSTS OFF) SELECT id FROM patient
	      WHERE ssn_bidx = kms_blind_index('patient', 'ssn', '107-7')}) =~ /Index Scan using patient_ssn_bidx_idx/
		? 1 : 0, 1, "$label: the blind index is used");
	is($node->safe_psql($db, q{SELECT string_agg(id::text, ',' ORDER BY id) FROM patient_clear
	                           WHERE ssn_bidx = kms_blind_index('patient', 'ssn', '107-7')}),
		'7', "$label: blind index search finds the row");
	# Writes after the restore: plaintext is encrypted, a context change re-seals.
	$node->safe_psql($db, q{
		INSERT INTO patient_clear (id, tenant, ssn, born, photo) VALUES (1000, 'tenantX', 'new-1000', '2001-02-03', '\x0102');
		UPDATE patient SET tenant = 'moved' WHERE id = 1;
	});
	is($node->safe_psql($db, q{SELECT format('%s %s %s %s', ssn, born, encode(photo, 'hex'), tenant)
	                           FROM patient_clear WHERE id IN (1, 1000) ORDER BY id}),
		join("\n",
			$src->safe_psql('app', q{SELECT format('%s %s %s', ssn, born, encode(photo, 'hex')) FROM patient_clear WHERE id = 1}) . ' moved',
			'new-1000 2001-02-03 0102 tenantX'),
		"$label: writes after the restore encrypt and re-seal");
	is($node->safe_psql($db, q{SELECT count(*) FROM patient WHERE NOT kms_is_ciphertext(born)}),
		'0', "$label: still no plaintext");
}

# 1. Custom format, pg_restore into another cluster with the same master key.
my $dumpfile = $src->basedir . '/app.dump';
$src->command_ok([ 'pg_dump', '-Fc', '-f', $dumpfile, '-d', $src->connstr('app') ],
	'pg_dump -Fc');

my $dst = PostgreSQL::Test::Cluster->new('columns_dst');
$dst->init;
$dst->append_conf('postgresql.conf', "shared_preload_libraries = 'kms_pg'\n" . master_key_conf('a'));
$dst->start;
$dst->safe_psql('postgres', 'CREATE DATABASE app');
$dst->command_ok([ 'pg_restore', '--exit-on-error', '-d', $dst->connstr('app'), $dumpfile ],
	'pg_restore into a fresh database');
$dst->safe_psql('postgres', q{ALTER DATABASE app SET kms_pg.key_id = 'alias/col-test'});
isnt($dst->safe_psql('app', q{SELECT string_agg(attnum::text, ',' ORDER BY attnum) FROM pg_attribute
                              WHERE attrelid = 'patient'::regclass AND attnum > 0 AND NOT attisdropped}),
	$src->safe_psql('app', q{SELECT string_agg(attnum::text, ',' ORDER BY attnum) FROM pg_attribute
                              WHERE attrelid = 'patient'::regclass AND attnum > 0 AND NOT attisdropped}),
	'attribute numbers differ after the restore');
check_restored($dst, 'app', 'pg_restore');

# 2. Plain format, psql into a fresh database of the same cluster.
my $sqlfile = $src->basedir . '/app.sql';
$src->command_ok([ 'pg_dump', '-Fp', '-f', $sqlfile, '-d', $src->connstr('app') ], 'pg_dump -Fp');
$src->safe_psql('postgres', 'CREATE DATABASE app2');
$src->command_ok([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-f', $sqlfile, '-d', $src->connstr('app2') ],
	'psql restores the plain dump');
$src->safe_psql('postgres', q{ALTER DATABASE app2 SET kms_pg.key_id = 'alias/col-test'});
check_restored($src, 'app2', 'psql');

# 3. The same dump into a cluster with another master key: a clear error.
my $other = PostgreSQL::Test::Cluster->new('columns_other_master');
$other->init;
$other->append_conf('postgresql.conf', "shared_preload_libraries = 'kms_pg'\n" . master_key_conf('b'));
$other->start;
$other->safe_psql('postgres', 'CREATE DATABASE app');
$other->command_ok([ 'pg_restore', '--exit-on-error', '-d', $other->connstr('app'), $dumpfile ],
	'pg_restore into a cluster with another master key');
is($other->safe_psql('app', 'SELECT count(*) FROM kms_local_key_version'),
	$src->safe_psql('app', 'SELECT count(*) FROM kms_local_key_version'), 'the keyring rows were restored');
{
	my ($ret, $out, $err) = $other->psql('app', 'SELECT ssn FROM patient_clear WHERE id = 1',
		extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	like($err, qr/28P01: wrong kms_pg master key for key "[-0-9a-f]+" version 1/,
		'with another master key nothing decrypts: 28P01');
	is($out, '', 'and no value is returned');
}
$other->stop;

# Unprotecting the restored copy gives back the original plaintext table.
is($dst->safe_psql('app', q{
	SELECT kms_unprotect_column('patient', 'ssn') + kms_unprotect_column('patient', 'born')
	       + kms_unprotect_column('patient', 'photo');
	SELECT count(*) FROM kms_protected_columns;
	SELECT pg_typeof(ssn)::text || ' ' || pg_typeof(born)::text || ' ' || pg_typeof(photo)::text
	FROM patient WHERE id = 2;
	SELECT ssn FROM patient WHERE id = 2}),
	"1374\n0\ntext date bytea\n102-2", 'unprotect after the restore: original types and values');

$src->stop;
$dst->stop;
done_testing();
