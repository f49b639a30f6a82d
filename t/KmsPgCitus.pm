# The opt-in Citus clusters of kms_pg's TAP tests (t/090, t/091, t/093;
# docs/citus.md).  A test runs only when KMS_CITUS_PG_CONFIG names the
# pg_config of a PostgreSQL installation with Citus and kms_pg installed;
# otherwise citus_install() skips the whole test.  Nothing of Citus is part
# of kms_pg.
package KmsPgCitus;

use strict;
use warnings;

use File::Basename qw(dirname);
use PostgreSQL::Test::Cluster;
use Test::More;
use KmsPgKeyring;

use Exporter 'import';
our @EXPORT = qw(citus_install citus_node citus_add_worker citus_cluster);

my $install;

# The installation's directory, or skip_all.
sub citus_install
{
	return $install if defined $install;
	my $pg_config = $ENV{KMS_CITUS_PG_CONFIG};
	plan skip_all => 'Citus test: set KMS_CITUS_PG_CONFIG to the pg_config of a PostgreSQL with Citus'
	  unless $pg_config;
	my $bindir = `$pg_config --bindir`;
	chomp $bindir;
	my $pkglibdir = `$pg_config --pkglibdir`;
	chomp $pkglibdir;
	plan skip_all => "Citus test: no citus.so in $pkglibdir" unless -f "$pkglibdir/citus.so";
	$install = dirname($bindir);
	return $install;
}

# A started node with the citus extension, master key $mk ('a' unless
# given) and $extra lines of postgresql.conf.
sub citus_node
{
	my ($name, $mk, $extra) = @_;
	my $n = PostgreSQL::Test::Cluster->new($name, install_path => citus_install());
	$n->init;
	$n->append_conf('postgresql.conf',
		    "shared_preload_libraries = 'citus, kms_pg'\n"
		  . "max_prepared_transactions = 20\n"
		  . "listen_addresses = '127.0.0.1'\n"
		  . ($extra // '')
		  . master_key_conf($mk // 'a'));
	$n->start;
	$n->safe_psql('postgres', 'CREATE EXTENSION citus');
	return $n;
}

sub citus_add_worker
{
	my ($coord, $w) = @_;
	$coord->safe_psql('postgres', "SELECT citus_add_node('127.0.0.1', " . $w->port . ")");
}

# A coordinator in the Citus metadata and two workers, all with master key
# 'a' and $extra configuration: ($coord, @workers).
sub citus_cluster
{
	my ($extra) = @_;
	my $coord = citus_node('coord', 'a', $extra);
	my @workers = (citus_node('w1', 'a', $extra), citus_node('w2', 'a', $extra));
	$coord->safe_psql('postgres',
		"SELECT citus_set_coordinator_host('127.0.0.1', " . $coord->port . ")");
	citus_add_worker($coord, $_) for @workers;
	note 'Citus ' . $coord->safe_psql('postgres', 'SELECT citus_version()');
	return ($coord, @workers);
}

1;
