# Protected columns: what a backend caches (the catalog row of each
# protected column, src/kms_columns.c) follows changes committed by other
# sessions at its next statement, with no timer:
#
#  - a key move (kms_rotate_column): the next INSERT, through the table and
#    through the view, seals under the new key (this only changes a row of
#    kms_protected_columns: its statement trigger invalidates the caches);
#  - a key changed in kms_protected_columns directly, under
#    session_replication_role = replica (the trigger is ENABLE ALWAYS);
#  - kms_protect_column of another column, a renamed context column,
#    kms_unprotect_column: the next INSERT does what the table now says.
#
# Session A keeps prepared INSERTs (table and view) and runs them after
# each change made by session B.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use KmsPgKeyring;

my $node = PostgreSQL::Test::Cluster->new('main');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'kms_pg'\n" . master_key_conf('a'));
$node->start;
$node->safe_psql(
	'postgres', q{
CREATE EXTENSION kms_pg;
SET kms_pg.provider = local;
SELECT kms_create_key('alias/t088a');
SELECT kms_create_key('alias/t088b');
SELECT kms_create_key('alias/t088c');
CREATE TABLE p (id int PRIMARY KEY, tenant int NOT NULL, ssn text, note text);
CALL kms_protect_column('p', 'ssn', '{id,tenant}', key_id => 'alias/t088a');
});
my %key = map {
	$_ => $node->safe_psql('postgres', "SELECT key_id FROM kms_keys WHERE alias = 'alias/t088$_'")
} qw(a b c);

my $a = $node->background_psql('postgres', on_error_stop => 0);
$a->query_safe(q{SET kms_pg.provider = local});
$a->query_safe(q{PREPARE ins(int, text, text) AS INSERT INTO p VALUES ($1, 1, $2, $3)});
$a->query_safe(q{PREPARE insv(int, text, text) AS INSERT INTO p_decrypted VALUES ($1, 1, $2, $3)});

# The key a row's protected value is sealed under, by id.
sub key_of
{
	my ($id, $col) = @_;
	$col //= 'ssn';
	return $node->safe_psql('postgres',
		"SELECT (kms_ciphertext_info(${col}::bytea)).key_id FROM p WHERE id = $id");
}

sub writes
{
	my ($id) = @_;
	$a->query_safe("EXECUTE ins($id, 's$id', 'n$id')");
	$a->query_safe("EXECUTE insv(" . ($id + 1) . ", 's" . ($id + 1) . "', 'n" . ($id + 1) . "')");
}

writes(1);
is(key_of(1), $key{a}, 'before: table INSERT under key a');
is(key_of(2), $key{a}, 'before: view INSERT under key a');

# B moves the key: only a catalog row changes.
$node->safe_psql('postgres', q{SET kms_pg.provider = local; CALL kms_rotate_column('p', 'ssn', 'alias/t088b')});
writes(3);
is(key_of(3), $key{b}, 'after kms_rotate_column in another session: table INSERT under the new key');
is(key_of(4), $key{b}, 'after kms_rotate_column in another session: view INSERT under the new key');

# B changes the catalog row by hand, triggers of replicas off.
$node->safe_psql('postgres',
	qq{SET session_replication_role = replica; UPDATE kms_protected_columns SET key_id = '$key{c}' WHERE relid = 'p'::regclass});
writes(5);
is(key_of(5), $key{c}, 'after a catalog UPDATE under session_replication_role = replica: new key');
is(key_of(6), $key{c}, 'same through the view');

# B protects another column, then renames a context column.
$node->safe_psql('postgres', q{SET kms_pg.provider = local; CALL kms_protect_column('p', 'note', '{id}', key_id => 'alias/t088a')});
writes(7);
is($node->safe_psql('postgres', q{SELECT count(*) FROM p WHERE id IN (7, 8) AND kms_is_ciphertext(note::bytea)}),
	'2', 'after kms_protect_column of another column: it is sealed too');
$node->safe_psql('postgres', q{ALTER TABLE p RENAME COLUMN tenant TO org});
writes(9);
is($node->safe_psql('postgres', q{SELECT string_agg(id || ':' || ssn || ':' || note, ',' ORDER BY id) FROM p_decrypted WHERE id >= 7}),
	'7:s7:n7,8:s8:n8,9:s9:n9,10:s10:n10', 'after a context column rename: the values read back');

# B unprotects ssn: A's next INSERT stores plaintext.
$node->safe_psql('postgres', q{SET kms_pg.provider = local; SELECT kms_unprotect_column('p', 'ssn')});
writes(11);
is($node->safe_psql('postgres', q{SELECT string_agg(ssn, ',' ORDER BY id) FROM p WHERE id IN (11, 12)}),
	's11,s12', 'after kms_unprotect_column in another session: plaintext stored');

is($node->safe_psql('postgres', q{SELECT count(*) FROM p_decrypted WHERE ssn = 's' || id AND note = 'n' || id}),
	'12', 'every row reads back');
$a->quit;
$node->stop;
done_testing();
