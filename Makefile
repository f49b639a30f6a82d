# kms_pg: PGXS build.  The version lives once, in kms_pg.control.
EXTENSION = kms_pg
EXTVERSION = $(shell sed -n "s/^default_version *= *'\(.*\)'/\1/p" $(EXTENSION).control)

MODULE_big = kms_pg
OBJS = \
	src/kms_pg.o \
	src/kms_guc.o \
	src/kms_errors.o \
	src/kms_secure_mem.o \
	src/kms_context.o \
	src/kms_envelope.o \
	src/kms_provider.o \
	src/kms_provider_local.o \
	src/kms_master_key.o \
	src/kms_local_catalog.o \
	src/kms_sql_keyring.o \
	src/kms_citus.o \
	src/kms_dek_cache.o \
	src/kms_dek_registry.o \
	src/kms_key_grants.o \
	src/kms_sql_api.o \
	src/kms_columns.o \
	src/kms_provider_aws.o \
	src/kms_aws_json.o \
	src/kms_credentials.o \
	src/kms_aws_config.o \
	src/kms_http.o \
	src/kms_sigv4.o

# The install script is assembled from one file per concern, and so is the
# update script from the last released version.  Released install scripts are
# kept frozen in sql/versions/ so that upgrades from them can be tested.
INSTALL_PARTS = $(sort $(wildcard sql/install/*.sql))
UPDATE_PARTS = $(sort $(wildcard sql/update/1.0--$(EXTVERSION)/*.sql))
DATA_built = $(EXTENSION)--$(EXTVERSION).sql $(EXTENSION)--1.0--$(EXTVERSION).sql
DATA = $(wildcard sql/versions/$(EXTENSION)--*.sql)

REGRESS = $(patsubst sql/%.sql,%,$(sort $(wildcard sql/[0-9]*.sql)))
KMS_REGRESS_CONF ?= test/regress.conf
REGRESS_OPTS = --encoding=UTF8 --temp-instance=tmp_check --temp-config=$(KMS_REGRESS_CONF) --load-extension=$(EXTENSION)

PG_CONFIG ?= pg_config
# -Wno-unused-parameter: every V1 function receives fcinfo, used or not (as in core).
PG_CPPFLAGS = -Isrc -Wall -Wextra -Wno-unused-parameter
SHLIB_LINK = -lcurl -lcrypto
EXTRA_CLEAN = tmp_check results regression.diffs regression.out $(EXTENSION)--1.0--$(EXTVERSION).sql.tmp

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

$(EXTENSION)--$(EXTVERSION).sql: $(INSTALL_PARTS)
	cat $^ > $@

# The update script: its parts, with each "-- @install" marker replaced by
# the object it names, taken from the install parts (scripts/update_expand.pl),
# so that what 1.1 adds or replaces whole is written once.
UPDATE_EXPAND = scripts/update_expand.pl
UPDATE_BASE = sql/versions/$(EXTENSION)--1.0.sql
$(EXTENSION)--1.0--$(EXTVERSION).sql: $(UPDATE_PARTS) $(INSTALL_PARTS) $(UPDATE_BASE) $(UPDATE_EXPAND)
	perl $(UPDATE_EXPAND) sql/install $(UPDATE_BASE) $(UPDATE_PARTS) > $@.tmp || { rm -f $@.tmp; exit 1; }
	mv $@.tmp $@

.PHONY: unitcheck
unitcheck:
	$(MAKE) -C test/unit check

# Fuzzing (fuzz/README.md) and sanitizer runs (test/sanitize.sh).
.PHONY: fuzz fuzz-long sanitize
fuzz:
	$(MAKE) -C fuzz run-short
fuzz-long:
	$(MAKE) -C fuzz run-long BIN=/tmp/kms_pg_fuzz
sanitize:
	bash test/sanitize.sh
